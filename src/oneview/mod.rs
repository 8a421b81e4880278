//! The OneView side: the REST client and its session ([`client`], [`session`]), collection
//! paging ([`collection`]), the alert poller ([`poller`]), tasks ([`tasks`], for change events)
//! and their metrics. [`assemble`] builds
//! the poller task that `App::build` runs; its output is a stream of [`AlertChange`]s.
//!
//! Identity: every change carries `Appliance { id: oneview.name, ui_url: oneview.url }` and an
//! [`AlertKey`](crate::model::AlertKey) made of that id and the alert URI, so several
//! appliances can share one bridge without key collisions.

pub(crate) mod bus;
pub mod certs;
pub mod client;
pub mod collection;
pub mod error;
pub mod metrics;
pub mod poller;
pub mod scmb;
pub(crate) mod session;
pub mod tasks;
pub mod tls;

use std::collections::HashSet;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use client::{AlertUpdate, ApplianceVersion, OneViewClient, TESTED_MAX_API_VERSION};
pub use error::OneViewError;
pub use metrics::{OneViewFamilies, OneViewMetrics};
pub use poller::{PollKind, PollerStatus, PollerStatusSnapshot, READY_SYNC, SessionState};

use crate::config::Config;
use crate::model::{AlertChange, Appliance};
use crate::readiness::Readiness;

/// The running parts of one appliance's OneView side, handed to `App::build`.
pub struct PollerHandle {
    /// Runs until `work` is cancelled, then logs out (bounded by a short timeout) and returns.
    pub task: crate::task::Task,
    /// `notify_one()` runs a poll cycle now.
    pub poll_now: Arc<Notify>,
    /// Cheap snapshot for a status page.
    pub status: Arc<PollerStatus>,
    /// The appliance's client (session included), for the PagerDuty write-back (`PUT`
    /// notes/clear) of its alerts.
    pub client: Arc<OneViewClient>,
    /// The appliance's identity in alert keys.
    pub appliance: Appliance,
    /// Its effective `poller` settings.
    pub poller: crate::config::PollerConfig,
}

/// The appliance identity used in alert keys.
pub fn appliance(cfg: &crate::config::OneViewConfig) -> Appliance {
    Appliance {
        id: Arc::from(cfg.name.as_str()),
        ui_url: Arc::from(cfg.url.as_str().trim_end_matches('/')),
    }
}

/// Builds the first appliance's client and poller task (one-appliance tools and tests; see
/// [`assemble_all`]).
pub fn assemble(
    cfg: &Config,
    registry: &mut Registry,
    readiness: Arc<Readiness>,
    changes: mpsc::Sender<AlertChange>,
    work: CancellationToken,
) -> Result<PollerHandle, OneViewError> {
    let families = OneViewFamilies::register(registry);
    let a = cfg.appliances.first().ok_or_else(missing)?;
    let bus = a
        .scmb
        .enabled
        .then(|| scmb::ScmbFamilies::register(registry));
    assemble_one(
        a,
        &families,
        bus.as_ref(),
        readiness,
        changes,
        work,
        &HashSet::new(),
    )
}

fn missing() -> OneViewError {
    OneViewError::Setup {
        key: "oneview",
        detail: "no appliance is configured ([oneview] with url, username, password, or [[appliances]]); the poller cannot start".to_owned(),
    }
}

/// Builds every configured appliance's client and poller task: its own session, backoff,
/// watermark, readiness and metrics (`appliance` label), feeding the delivery pipeline through
/// `intake(appliance id)`. `ledger_open` are the dedup keys the state store says are open in
/// PagerDuty ([`crate::state::Snapshot::open_keys`]): each appliance's first full sync resolves
/// those of its own that OneView shows cleared or no longer has.
pub fn assemble_all(
    cfg: &Config,
    registry: &mut Registry,
    readiness: Arc<Readiness>,
    intake: impl Fn(&str) -> mpsc::Sender<AlertChange>,
    work: CancellationToken,
    ledger_open: &HashSet<String>,
) -> Result<Vec<PollerHandle>, OneViewError> {
    if cfg.appliances.is_empty() {
        return Err(missing());
    }
    let families = OneViewFamilies::register(registry);
    // `bridge_scmb_*` series exist for the appliances whose bus is enabled only, so that
    // `bridge_scmb_connected == 0` means "enabled and down".
    let bus = cfg
        .appliances
        .iter()
        .any(|a| a.scmb.enabled)
        .then(|| scmb::ScmbFamilies::register(registry));
    cfg.appliances
        .iter()
        .map(|a| {
            assemble_one(
                a,
                &families,
                bus.as_ref(),
                readiness.clone(),
                intake(&a.oneview.name),
                work.clone(),
                ledger_open,
            )
        })
        .collect()
}

fn assemble_one(
    a: &crate::config::ApplianceConfig,
    families: &OneViewFamilies,
    bus_families: Option<&scmb::ScmbFamilies>,
    readiness: Arc<Readiness>,
    changes: mpsc::Sender<AlertChange>,
    work: CancellationToken,
    ledger_open: &HashSet<String>,
) -> Result<PollerHandle, OneViewError> {
    let ov = &a.oneview;
    let metrics = families.appliance(&ov.name);
    let client = Arc::new(OneViewClient::new(ov, metrics.clone())?);
    readiness.register_appliance(&ov.name);
    let status = Arc::new(PollerStatus::default());
    let poll_now = Arc::new(Notify::new());
    let mut poller = poller::Poller::new(
        client.clone(),
        appliance(ov),
        a.poller.clone(),
        metrics,
        readiness.clone(),
        status.clone(),
        changes,
    )
    .with_ledger_open(ledger_open);
    let mut bus_task = None;
    if a.scmb.enabled
        && let Some(f) = bus_families
    {
        let (link, task) = bus::start(
            a,
            client.clone(),
            f.appliance(&ov.name),
            readiness,
            status.clone(),
            work.clone(),
        );
        poller = poller.with_bus(link);
        bus_task = Some(task);
    }
    let run = poller.run(work, poll_now.clone());
    let task: crate::task::Task = match bus_task {
        None => Box::pin(run),
        Some(b) => Box::pin(async move {
            tokio::join!(run, b);
        }),
    };
    Ok(PollerHandle {
        task,
        poll_now,
        status,
        client,
        appliance: appliance(ov),
        poller: a.poller.clone(),
    })
}
