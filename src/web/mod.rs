//! The web role's inbound side: the public API (`/api/v1/...`), PagerDuty webhooks and their
//! write-back to OneView, the status page, and the guards around them (tokens, signatures,
//! rate limits, body limits).
//!
//! The poller is the single writer of delivery state; web replicas are stateless and reach it
//! through [`control::Control`]: in-process in role `all`, over the poller's internal API
//! (`/internal/v1/...`) in role `web`. [`assemble`] builds the routes for a role.

pub mod api;
pub mod auth;
pub mod control;
pub mod history;
pub mod page;
pub mod signature;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Role, StateBackend};
use control::{Control, LeaseLocator, Local, PollerLocator, Remote};

/// The routes and background tasks of the web side for one role.
pub struct WebParts {
    pub router: Router,
    pub tasks: Vec<crate::task::Task>,
}

/// Builds the web side: role `all` serves the public API on `local`; role `poller` serves only
/// the internal API for web replicas; role `web` serves the public API through the poller's
/// internal API at `web.poller_url`, or of the leading poller the lease row names (state
/// backend `postgres`). Fails only when the state database's client cannot be set up (its TLS
/// configuration).
pub fn assemble(
    config: &Arc<Config>,
    local: Option<Arc<Local>>,
    registry: &mut Registry,
    work: CancellationToken,
) -> Result<WebParts, crate::state::StateError> {
    let control = match (config.role, local) {
        (Role::Poller, Some(l)) => {
            return Ok(WebParts {
                router: control::internal_routes(l, config.web.poller_token.clone()),
                tasks: Vec::new(),
            });
        }
        (Role::Poller, None) => {
            return Ok(WebParts {
                router: Router::new(),
                tasks: Vec::new(),
            });
        }
        (_, Some(l)) => Control::Local(l),
        (_, None) => Control::Remote(Remote::new(
            if config.state.backend == StateBackend::Postgres {
                PollerLocator::Lease(Arc::new(LeaseLocator::connect(&config.state, registry)?))
            } else {
                PollerLocator::Fixed(config.web.poller_url.clone())
            },
            config.web.poller_token.clone(),
            config
                .server
                .request_timeout
                .saturating_sub(Duration::from_millis(500))
                .max(Duration::from_secs(1)),
        )),
    };
    let metrics = api::WebMetrics::register(registry);
    // Bounded: a full queue answers 503 (PagerDuty delivers again) instead of growing memory.
    // Validation keeps the size within 1..=MAX_WRITEBACK_QUEUE; `max` guards `channel`'s panic.
    let (writebacks, queue) = tokio::sync::mpsc::channel(config.web.writeback_queue.max(1));
    let state = api::WebState {
        config: config.clone(),
        control,
        tokens: auth::ApiTokens::new(config.server.api_tokens.clone()),
        metrics,
        webhook_secrets: config.web.webhook_secrets.clone(),
        seen_webhooks: moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(24 * 3600))
            .build(),
        writebacks,
    };
    let dispatcher = webhook::dispatcher(state.clone(), queue, work.clone());
    let (router, task) = api::routes(state, work);
    Ok(WebParts {
        router,
        tasks: vec![task, dispatcher],
    })
}
