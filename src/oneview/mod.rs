//! The OneView side: the REST client and its session ([`client`], [`session`]), collection
//! paging ([`collection`]), the alert poller ([`poller`]) and their metrics. [`assemble`] builds
//! the poller task that `App::build` runs; its output is a stream of [`AlertChange`]s.
//!
//! Identity: every change carries `Appliance { id: oneview.name, ui_url: oneview.url }` and an
//! [`AlertKey`](crate::model::AlertKey) made of that id and the alert URI, so several
//! appliances can share one bridge without key collisions.

pub mod client;
pub mod collection;
pub mod error;
pub mod metrics;
pub mod poller;
pub(crate) mod session;

use std::collections::HashSet;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use client::{AlertUpdate, ApplianceVersion, OneViewClient, TESTED_MAX_API_VERSION};
pub use error::OneViewError;
pub use metrics::OneViewMetrics;
pub use poller::{PollKind, PollerStatus, PollerStatusSnapshot, READY_SYNC, SessionState};

use crate::config::Config;
use crate::model::{AlertChange, Appliance};
use crate::readiness::Readiness;

/// The running parts of the OneView side, handed to `App::build`.
pub struct PollerHandle {
    /// Runs until `work` is cancelled, then logs out (bounded by a short timeout) and returns.
    pub task: crate::task::Task,
    /// `notify_one()` runs a poll cycle now.
    pub poll_now: Arc<Notify>,
    /// Cheap snapshot for a status page.
    pub status: Arc<PollerStatus>,
    /// The shared client (session included), for the PagerDuty write-back (`PUT` notes/clear).
    pub client: Arc<OneViewClient>,
}

/// The appliance identity used in alert keys.
pub fn appliance(cfg: &crate::config::OneViewConfig) -> Appliance {
    Appliance {
        id: Arc::from(cfg.name.as_str()),
        ui_url: Arc::from(cfg.url.as_str().trim_end_matches('/')),
    }
}

/// Builds the OneView client and the poller task, registers the metrics and the readiness
/// appliance's readiness (see [`crate::readiness`]).
pub fn assemble(
    cfg: &Config,
    registry: &mut Registry,
    readiness: Arc<Readiness>,
    changes: mpsc::Sender<AlertChange>,
    work: CancellationToken,
) -> Result<PollerHandle, OneViewError> {
    assemble_with_ledger(cfg, registry, readiness, changes, work, &HashSet::new())
}

/// [`assemble`], with the dedup keys the state store says are open in PagerDuty
/// ([`crate::state::Snapshot::open_keys`]): the first full sync resolves those OneView shows
/// cleared or no longer has.
pub fn assemble_with_ledger(
    cfg: &Config,
    registry: &mut Registry,
    readiness: Arc<Readiness>,
    changes: mpsc::Sender<AlertChange>,
    work: CancellationToken,
    ledger_open: &HashSet<String>,
) -> Result<PollerHandle, OneViewError> {
    let ov = cfg.oneview.as_ref().ok_or(OneViewError::Setup {
        key: "oneview",
        detail:
            "the [oneview] section (url, username, password) is missing; the poller cannot start"
                .to_owned(),
    })?;
    let metrics = OneViewMetrics::register(registry, &ov.name);
    let client = Arc::new(OneViewClient::new(ov, metrics.clone())?);
    readiness.register_appliance(&ov.name);
    let status = Arc::new(PollerStatus::default());
    let poll_now = Arc::new(Notify::new());
    let poller = poller::Poller::new(
        client.clone(),
        appliance(ov),
        cfg.poller.clone(),
        metrics,
        readiness,
        status.clone(),
        changes,
    )
    .with_ledger_open(ledger_open);
    let task: crate::task::Task = Box::pin(poller.run(work, poll_now.clone()));
    Ok(PollerHandle {
        task,
        poll_now,
        status,
        client,
    })
}
