//! One appliance's message bus as its poller uses it: the supervisor that reads the SCMB
//! certificates ([`super::certs`]), runs the consumer ([`super::scmb::run`]) and reads the
//! certificates again when the broker refused them (a keypair regenerated on the appliance, a
//! renewed CA, a rotated Secret); and the observer that shows the bus state on the status page
//! and as a `/ready` warning (`scmb:<appliance>`: polling covers a down bus, so never a 503).
//!
//! What the poller does with it (in [`super::poller`]): applies every change through the same
//! path as an incremental poll, acks it once it is in the delivery pipeline, runs a REST sync
//! after every (re)connect, and polls every `scmb.poll_interval` while the bus is up, every
//! `poller.interval` the moment it is not.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::certs::{self, TaskWait};
use super::client::OneViewClient;
use super::poller::{BusView, PollerStatus};
use super::scmb::{self, BusState, ScmbChange, ScmbMetrics, ScmbSettings};
use crate::config::ApplianceConfig;
use crate::readiness::Readiness;

/// The poller's end of the bus.
pub(crate) struct BusLink {
    pub(crate) changes: mpsc::Receiver<ScmbChange>,
    pub(crate) state: watch::Receiver<BusState>,
    /// `scmb.poll_interval`: how often the appliance is still polled while the bus is up.
    pub(crate) poll_interval: Duration,
}

/// How long to wait before reading the certificates again after a failure: they change when a
/// person acts (grants a role, generates a keypair, fixes a file), so minutes, not seconds.
const CERT_RETRY_MIN: Duration = Duration::from_secs(30);
const CERT_RETRY_MAX: Duration = Duration::from_secs(600);

/// Starts the appliance's bus: returns the poller's end and the task (supervisor and observer)
/// that runs until `work` is cancelled.
pub(crate) fn start(
    a: &ApplianceConfig,
    client: Arc<OneViewClient>,
    metrics: ScmbMetrics,
    readiness: Arc<Readiness>,
    status: Arc<PollerStatus>,
    work: CancellationToken,
) -> (BusLink, crate::task::Task) {
    let settings = ScmbSettings::new(&a.oneview, &a.scmb);
    let (tx, rx) = mpsc::channel(usize::from(a.scmb.prefetch).max(1));
    let (state_tx, state_rx) = scmb::state_channel();
    let scmb_cfg = a.scmb.clone();
    let supervisor = {
        let work = work.clone();
        async move {
            let retries = || {
                ExponentialBuilder::new()
                    .with_jitter()
                    .with_min_delay(CERT_RETRY_MIN)
                    .with_max_delay(CERT_RETRY_MAX)
                    .without_max_times()
                    .build()
            };
            let mut delays = retries();
            // The first refusal of material that worked (or of the first material read) is
            // most likely a change on the appliance: read again at once, not in 30 s.
            let mut reread_at_once = true;
            loop {
                let fetched = tokio::select! {
                    _ = work.cancelled() => break,
                    r = certs::fetch_tls(&client, &scmb_cfg, TaskWait::default()) => r,
                };
                let why = match fetched {
                    Ok(tls) => {
                        tracing::info!(appliance = %settings.appliance, source = %tls.source, "SCMB certificates read");
                        let before = state_tx.borrow().connections();
                        let ended = scmb::run(
                            settings.clone(),
                            tls,
                            tx.clone(),
                            state_tx.clone(),
                            metrics.clone(),
                            work.clone(),
                        )
                        .await;
                        let Some(e) = ended else { break };
                        if state_tx.borrow().connections() > before {
                            delays = retries();
                            reread_at_once = true;
                        }
                        if std::mem::take(&mut reread_at_once) {
                            tracing::warn!(appliance = %settings.appliance, error = %e, "SCMB refused the certificates; reading them again");
                            continue;
                        }
                        e.to_string()
                    }
                    Err(e) => e.to_string(),
                };
                let delay = delays.next().unwrap_or(CERT_RETRY_MAX);
                tracing::warn!(appliance = %settings.appliance, error = %why, retry_in = ?delay, "SCMB certificates unusable; polling covers the appliance");
                let connections = state_tx.borrow().connections();
                state_tx.send_replace(BusState::Down {
                    reason: why,
                    since: Instant::now(),
                    connections,
                });
                tokio::select! {
                    _ = work.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    let observer = observe(
        a.oneview.name.clone(),
        state_rx.clone(),
        readiness,
        status,
        work,
    );
    let task: crate::task::Task = Box::pin(async move {
        tokio::join!(supervisor, observer);
    });
    (
        BusLink {
            changes: rx,
            state: state_rx,
            poll_interval: a.scmb.poll_interval,
        },
        task,
    )
}

/// Mirrors the bus state into the status page and readiness as it changes (the poller may be
/// in the middle of a long sync, so it is not the one to say).
async fn observe(
    appliance: String,
    mut state: watch::Receiver<BusState>,
    readiness: Arc<Readiness>,
    status: Arc<PollerStatus>,
    work: CancellationToken,
) {
    loop {
        let s = state.borrow_and_update().clone();
        let view = match &s {
            BusState::Starting => BusView {
                state: "starting",
                since: Utc::now(),
                reason: None,
                connections: 0,
            },
            BusState::Connected { connection, .. } => BusView {
                state: "connected",
                since: Utc::now(),
                reason: None,
                connections: *connection,
            },
            BusState::Down { reason, .. } => BusView {
                state: "down",
                since: Utc::now(),
                reason: Some(reason.clone()),
                connections: status.snapshot().bus.map(|b| b.connections).unwrap_or(0),
            },
        };
        let problem = match &s {
            BusState::Down { reason, .. } => Some(format!("the message bus is down: {reason}")),
            _ => None,
        };
        readiness.update_appliance(&appliance, |a| a.bus_problem = problem);
        status.update(|p| p.bus = Some(view));
        tokio::select! {
            _ = work.cancelled() => break,
            r = state.changed() => if r.is_err() { break },
        }
    }
}
