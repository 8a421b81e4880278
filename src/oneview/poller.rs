//! The alert poller: a full sync first and every `poller.resync_interval`, incremental polls
//! (`modified` at or after a watermark, minus an overlap) in between, and the diff that turns
//! what OneView returns into typed [`AlertChange`]s on a bounded channel.
//!
//! What it remembers: the watched open alerts (uri -> last seen version) and, for the overlap
//! window, the `modified` stamp of every alert it has already processed, so overlapping polls
//! do not repeat changes. After a restart the memory is empty: the full sync re-raises what is
//! open (the delivery side deduplicates) and clears seen in later windows are passed on even
//! for alerts the poller never knew.
//!
//! The watermark is the appliance's own clock when a walk's first page was served (its `Date`
//! header minus the round trip), falling back to the newest `modified` seen when the appliance
//! sends no `Date` (see [`next_watermark`]): an idle appliance then answers an incremental poll
//! with zero members, and changes behind a slow walk are read by the next poll.
//!
//! A full sync settles the tracked alerts it did not see. Up to [`VERIFY_ABSENT_MAX`] are
//! checked one by one; more than that is either a real mass clear or a glitch (appliances
//! answer `200` with `total: 0` while their services restart), so a random sample of
//! [`PLAUSIBILITY_SAMPLE`] is checked: if any is still open the snapshot is discarded (the
//! cycle fails with `implausible_snapshot`, nothing is resolved) and read again next cycle; a
//! mass clear the sample confirms resolves at once.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bus::BusLink;
use super::client::OneViewClient;
use super::collection::{AlertQuery, Walker, format_timestamp, parse_timestamp};
use super::error::OneViewError;
use super::metrics::OneViewMetrics;
use super::scmb::{BusState, Handled, ScmbChange};
use crate::config::PollerConfig;
use crate::model::{
    Alert, AlertChange, AlertKey, AlertState, Appliance, ChangeKind, Severity, Stamp,
};
use crate::readiness::Readiness;
use crate::recent::{FastMap, FastSet, shrink_if_sparse};

/// Readiness condition unmet while no appliance has finished its first full sync.
pub const READY_SYNC: &str = crate::readiness::INITIAL_SYNC;

/// Tracked alerts missing from a full sync that are checked one by one before they count as
/// cleared.
pub const VERIFY_ABSENT_MAX: usize = 50;

/// Alerts checked one by one when more than [`VERIFY_ABSENT_MAX`] are missing from a full
/// sync. If the snapshot is a glitch that left out most open alerts, one look finds it; if it
/// left out a third of them wrongly, 20 looks miss that with a chance of 0.03 %.
pub const PLAUSIBILITY_SAMPLE: usize = 20;

/// Time the logout on shutdown may take.
const LOGOUT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PollKind {
    Full,
    Incremental,
}

impl PollKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PollKind::Full => "full",
            PollKind::Incremental => "incremental",
        }
    }
}

/// Session state as shown on a status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    #[default]
    NotLoggedIn,
    LoggedIn,
    LoginFailed,
}

/// A snapshot of the poller for status pages.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PollerStatusSnapshot {
    pub session: SessionState,
    pub api_version: Option<u32>,
    pub last_successful_poll: Option<DateTime<Utc>>,
    pub last_poll_kind: Option<PollKind>,
    /// The last failure in plain words; cleared by the next success.
    pub last_error: Option<String>,
    pub open_alerts: usize,
    pub watermark: Option<String>,
    /// Poll cycles finished, successful or not.
    pub cycles: u64,
    /// The message bus, when `scmb.enabled`.
    pub bus: Option<BusView>,
    /// The interval polls run at now (`scmb.poll_interval` while the bus is up), in seconds;
    /// 0 before the first cycle.
    pub poll_interval_seconds: u64,
}

/// The message bus as a status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BusView {
    /// `starting`, `connected` or `down`.
    pub state: &'static str,
    /// When it entered that state.
    pub since: DateTime<Utc>,
    /// Why it is down.
    pub reason: Option<String>,
    /// Connections made so far (a reconnect adds one).
    pub connections: u64,
}

/// Shared, cheap-to-read poller status.
#[derive(Debug, Default)]
pub struct PollerStatus {
    inner: Mutex<PollerStatusSnapshot>,
}

impl PollerStatus {
    pub fn snapshot(&self) -> PollerStatusSnapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut PollerStatusSnapshot)) {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// The poller's memory.
#[derive(Default)]
struct Memory {
    /// Watched open alerts by uri.
    open: OpenAlerts,
    /// uri -> `modified` (unix ms) of alerts already processed inside the overlap window.
    recent: FastMap<Arc<str>, i64>,
    /// Unix ms; `None` until the first full sync.
    watermark: Option<i64>,
    /// The watermark right after the first full sync (appliance clock, unix ms). An alert
    /// created after it cannot have been paged by an earlier run of the bridge.
    synced_from: Option<i64>,
    last_full: Option<Instant>,
    last_success: Option<Instant>,
}

/// The watched open alerts, keyed by their own `uri`: with 50,000 open alerts a separate key
/// would be a second copy of every URI (BENCHMARKS.md, section 9).
#[derive(Default)]
struct OpenAlerts(FastSet<ByUri>);

struct ByUri(Arc<Alert>);

impl PartialEq for ByUri {
    fn eq(&self, other: &Self) -> bool {
        self.0.uri == other.0.uri
    }
}

impl Eq for ByUri {}

impl Hash for ByUri {
    // As `str` hashes, which `Borrow<str>` requires.
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.uri.as_str().hash(h);
    }
}

impl Borrow<str> for ByUri {
    fn borrow(&self) -> &str {
        &self.0.uri
    }
}

impl OpenAlerts {
    fn get(&self, uri: &str) -> Option<&Arc<Alert>> {
        self.0.get(uri).map(|b| &b.0)
    }

    /// Adds the alert or replaces the one with its uri.
    fn insert(&mut self, a: Arc<Alert>) {
        self.0.replace(ByUri(a));
    }

    fn remove(&mut self, uri: &str) {
        self.0.remove(uri);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn uris(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|b| b.0.uri.as_str())
    }

    /// See [`shrink_if_sparse`].
    fn shrink_if_sparse(&mut self) {
        if self.0.capacity() > 1024 && self.0.len() * 8 < self.0.capacity() {
            self.0.shrink_to(self.0.len() * 2);
        }
    }
}

pub(crate) struct Poller {
    pub(crate) client: Arc<OneViewClient>,
    pub(crate) appliance: Appliance,
    pub(crate) cfg: PollerConfig,
    pub(crate) watched: Vec<Severity>,
    pub(crate) metrics: OneViewMetrics,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) status: Arc<PollerStatus>,
    pub(crate) changes: mpsc::Sender<AlertChange>,
    mem: Memory,
    /// The appliance's message bus, when `scmb.enabled`.
    bus: Option<BusLink>,
}

impl Poller {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: Arc<OneViewClient>,
        appliance: Appliance,
        cfg: PollerConfig,
        metrics: OneViewMetrics,
        readiness: Arc<Readiness>,
        status: Arc<PollerStatus>,
        changes: mpsc::Sender<AlertChange>,
    ) -> Self {
        let watched = cfg.severities.iter().map(|s| Severity::parse(s)).collect();
        Self {
            client,
            appliance,
            cfg,
            watched,
            metrics,
            readiness,
            status,
            changes,
            mem: Memory::default(),
            bus: None,
        }
    }

    /// Takes alert changes from the appliance's message bus as well (see [`super::bus`]).
    pub(crate) fn with_bus(mut self, bus: BusLink) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Alerts the state store's ledger says PagerDuty has an open incident for (dedup keys).
    /// Those of this appliance are remembered as open before the first full sync, so that one
    /// resolves the ones OneView shows cleared or no longer has (the ordinary "gone" path) and
    /// passes the others on as updates, which delivery drops when PagerDuty already has them.
    pub(crate) fn with_ledger_open(mut self, keys: &std::collections::HashSet<String>) -> Self {
        let prefix = crate::pagerduty::event::dedup_key(&self.appliance.id, "");
        let mut seeded = 0usize;
        let mut unknown = 0usize;
        for k in keys {
            // Keys too long for the plain form are hashed and cannot name their alert; the
            // full sync then only re-raises them while they are open.
            let Some(uri) = k.strip_prefix(prefix.as_str()) else {
                unknown += 1;
                continue;
            };
            if self.mem.open.get(uri).is_none() {
                seeded += 1;
                self.mem.open.insert(Arc::new(Alert {
                    uri: uri.to_owned(),
                    ..Alert::default()
                }));
            }
        }
        if seeded > 0 || unknown > 0 {
            tracing::info!(
                open_in_pagerduty = seeded,
                not_of_this_appliance = unknown,
                "the first full sync checks the alerts the state store says are open in PagerDuty"
            );
        }
        self
    }

    fn failure_backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.cfg.interval)
            .with_max_delay(self.cfg.interval.max(Duration::from_secs(300)))
            .without_max_times()
            .build()
    }

    fn next_kind(&self) -> PollKind {
        match (self.mem.watermark, self.mem.last_full) {
            (Some(_), Some(t)) if t.elapsed() < self.cfg.resync_interval => PollKind::Incremental,
            _ => PollKind::Full,
        }
    }

    /// Runs until `work` is cancelled, then logs out (bounded) and returns.
    ///
    /// With a message bus, its changes are applied between poll cycles (one task owns the
    /// poller's memory, so a change and a poll never race), each bus connection is followed by
    /// a full sync (the queue lost what was published before it), and the next poll is due
    /// `scmb.poll_interval` after the last one while the bus is up, `poller.interval` after it
    /// the moment the bus is down.
    pub(crate) async fn run(mut self, work: CancellationToken, poll_now: Arc<Notify>) {
        let mut backoff: Option<ExponentialBackoff> = None;
        let mut bus = self.bus.take();
        // The bus connection the last successful full sync started after: a newer one needs
        // a REST sync of its own.
        let mut synced_connection = 0u64;
        'outer: loop {
            let connection = bus.as_ref().and_then(|b| connected(&b.state.borrow()));
            let resync = connection.is_some_and(|n| n > synced_connection);
            let kind = if resync {
                PollKind::Full
            } else {
                self.next_kind()
            };
            if resync {
                tracing::info!(
                    appliance = %self.appliance.id,
                    "message bus (re)connected: a full sync reads what it did not carry"
                );
            }
            let result = tokio::select! {
                biased;
                _ = work.cancelled() => break 'outer,
                r = self.cycle(kind) => r,
            };
            let ended = Instant::now();
            let failed = match result {
                Ok(()) => {
                    backoff = None;
                    if kind == PollKind::Full
                        && let Some(n) = connection
                    {
                        synced_connection = synced_connection.max(n);
                    }
                    None
                }
                Err(OneViewError::ChannelClosed) => {
                    tracing::error!("the alert change channel closed; the OneView poller stops");
                    break 'outer;
                }
                Err(e) => {
                    let b = backoff.get_or_insert_with(|| self.failure_backoff());
                    let d = b.next().unwrap_or(self.cfg.interval);
                    tracing::warn!(kind = kind.as_str(), error = %e, retry_in = ?d, "OneView poll failed");
                    Some(d)
                }
            };
            // After a failure the backoff decides; otherwise the bus state, as it changes.
            let interval = self.cfg.interval;
            let due = |bus: &Option<BusLink>| match failed {
                Some(d) => ended + d,
                None => ended + interval_now(interval, bus),
            };
            let mut wake = due(&bus);
            self.status.update(|s| {
                s.poll_interval_seconds = interval_now(self.cfg.interval, &bus).as_secs().max(1);
            });
            loop {
                let Some(b) = bus.as_mut() else {
                    tokio::select! {
                        _ = work.cancelled() => break 'outer,
                        _ = tokio::time::sleep_until(wake) => break,
                        _ = poll_now.notified() => {
                            tracing::debug!("poll requested");
                            break;
                        }
                    }
                };
                tokio::select! {
                    biased;
                    _ = work.cancelled() => break 'outer,
                    changed = b.state.changed() => {
                        if changed.is_err() {
                            // The bus task ended (shutdown): polling carries on alone.
                            bus = None;
                            wake = due(&bus);
                            continue;
                        }
                        let now = connected(&b.state.borrow_and_update());
                        if now.is_some_and(|n| n > synced_connection) {
                            break;
                        }
                        wake = due(&bus);
                        self.status.update(|s| {
                            s.poll_interval_seconds = interval_now(self.cfg.interval, &bus).as_secs().max(1);
                        });
                    }
                    // Before the bus: a steady stream of messages must not starve the
                    // safety-net poll.
                    _ = tokio::time::sleep_until(wake) => break,
                    _ = poll_now.notified() => {
                        tracing::debug!("poll requested");
                        break;
                    }
                    change = b.changes.recv() => {
                        let Some(change) = change else {
                            bus = None;
                            wake = due(&bus);
                            continue;
                        };
                        match self.apply_bus(change).await {
                            Ok(()) => {}
                            Err(OneViewError::ChannelClosed) => {
                                tracing::error!("the alert change channel closed; the OneView poller stops");
                                break 'outer;
                            }
                            Err(e) => tracing::warn!(error = %e, "message bus change not applied"),
                        }
                    }
                }
            }
        }
        match tokio::time::timeout(LOGOUT_TIMEOUT, self.client.logout()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(timeout = ?LOGOUT_TIMEOUT, "OneView logout timed out; the session will expire on its own")
            }
        }
        self.metrics.session_age.set(0.0);
        self.status
            .update(|s| s.session = SessionState::NotLoggedIn);
    }

    /// One change from the message bus, through the path of an incremental poll; acked once
    /// it is in the delivery pipeline (or found stale).
    async fn apply_bus(&mut self, mut change: ScmbChange) -> Result<(), OneViewError> {
        let mut modified = change
            .alert
            .modified
            .as_ref()
            .and_then(Stamp::millis)
            .or(change.timestamp_ms);
        let mut alert = change.alert.clone();
        if change.change_type == "Deleted" {
            // Gone from the appliance: whatever its last state, nothing is open any more. The
            // resource is the alert as it last was, so its `modified` is one already processed:
            // a deletion is final and skips the version check.
            alert.alert_state = AlertState::Cleared;
            modified = None;
        }
        let outcome = match self.apply_incremental(modified, alert).await? {
            Applied::Stale => Handled::Stale,
            Applied::Done => Handled::Delivered,
        };
        if outcome == Handled::Stale {
            tracing::debug!(alert_uri = %change.alert.uri, change = %change.change_type, "message bus change already processed; skipped");
        }
        // Not awaited here: an ack waits for lapin's I/O loop to write it, and awaiting each
        // one before the next change held the bus to ~3,000 messages/s. The change is in the
        // pipeline already; the ack only releases the broker's copy.
        tokio::spawn(async move {
            if let Err(e) = change.done(outcome).await {
                // The connection is going; the resync after the reconnect reads it again.
                tracing::debug!(alert_uri = %change.alert.uri, error = %e, "message bus ack failed");
            }
        });
        Ok(())
    }

    /// What readiness shows for a failed cycle: the error, and for how long polls have failed.
    fn problem(&self, err: &str) -> String {
        match self.mem.last_success {
            None => format!("the first full sync of OneView alerts has not finished: {err}"),
            Some(last) => format!(
                "no successful OneView poll for {}: {err}",
                humantime::format_duration(Duration::from_secs(last.elapsed().as_secs()))
            ),
        }
    }

    async fn cycle(&mut self, kind: PollKind) -> Result<(), OneViewError> {
        let start = Instant::now();
        let result = match kind {
            PollKind::Full => self.full_sync().await,
            PollKind::Incremental => self.incremental().await,
        };
        let secs = start.elapsed().as_secs_f64();
        self.metrics.poll_duration(kind.as_str()).observe(secs);
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics.poll(kind.as_str(), outcome).inc();
        let logged_in = self.client.is_logged_in();
        self.metrics.session_age.set(
            self.client
                .session_age()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        );
        self.metrics.open_alerts.set(self.mem.open.len() as i64);
        match &result {
            Ok(()) => {
                let now = Utc::now();
                self.mem.last_success = Some(Instant::now());
                if kind == PollKind::Full {
                    self.mem.last_full = Some(Instant::now());
                }
                self.metrics
                    .last_successful_poll
                    .set(now.timestamp_millis() as f64 / 1000.0);
                let synced = self.mem.last_full.is_some();
                self.readiness.update_appliance(&self.appliance.id, |a| {
                    a.session = true;
                    a.synced |= synced;
                    a.problem = None;
                });
                let wm = self.mem.watermark.map(format_timestamp);
                let open = self.mem.open.len();
                let api = self.client.api_version();
                self.status.update(|s| {
                    s.session = SessionState::LoggedIn;
                    s.api_version = api;
                    s.last_successful_poll = Some(now);
                    s.last_poll_kind = Some(kind);
                    s.last_error = None;
                    s.open_alerts = open;
                    s.watermark = wm;
                    s.cycles += 1;
                });
            }
            Err(e) => {
                let msg = e.to_string();
                let problem = self.problem(&msg);
                self.readiness.update_appliance(&self.appliance.id, |a| {
                    a.session = logged_in;
                    a.problem = Some(problem);
                });
                let open = self.mem.open.len();
                self.status.update(|s| {
                    s.session = if logged_in {
                        SessionState::LoggedIn
                    } else if matches!(
                        e,
                        OneViewError::AuthFailed { .. } | OneViewError::LoginBackoff { .. }
                    ) {
                        SessionState::LoginFailed
                    } else {
                        SessionState::NotLoggedIn
                    };
                    s.last_poll_kind = Some(kind);
                    s.last_error = Some(msg);
                    s.open_alerts = open;
                    s.cycles += 1;
                });
            }
        }
        result
    }

    fn is_open_watched(&self, a: &Alert) -> bool {
        matches!(a.alert_state, AlertState::Active | AlertState::Locked)
            && !a.is_cleared()
            && self.watched.contains(&a.severity)
    }

    fn full_query(&self) -> AlertQuery {
        let sev = self
            .watched
            .iter()
            .map(|s| format!("severity='{s}'"))
            .collect::<Vec<_>>()
            .join(" OR ");
        AlertQuery {
            filters: vec!["alertState='Active' OR alertState='Locked'".to_owned(), sev],
            sort: None,
            page_size: self.cfg.page_size,
        }
    }

    async fn full_sync(&mut self) -> Result<(), OneViewError> {
        let query = self.full_query();
        // Pages are acted on as they arrive (memory stays flat however many alerts are open):
        // new and changed open alerts are passed on at once, and `seen` collects what is open
        // so that the known alerts missing from it can be settled at the end.
        let mut seen: HashSet<Arc<str>> = HashSet::new();
        // The walker borrows these while `self` changes under it.
        let (client, metrics) = (self.client.clone(), self.metrics.clone());
        let mut members = 0usize;
        let mut pages = 0usize;
        let mut malformed = 0usize;
        let mut max_modified: Option<i64> = None;
        let mut walk_start: Option<i64> = None;
        // Alerts cleared while the pages were read shift later pages; read again (twice at
        // most) rather than miss open alerts. The union of the walks counts as open: a page
        // shift can then never make an open alert look gone.
        for walk_no in 0..3 {
            if walk_no > 0 {
                tracing::debug!(
                    "the open alert set changed during the full sync; reading it again"
                );
            }
            let mut w = Walker::new(&client, &query, &metrics);
            while let Some(page) = w.next_page().await? {
                for a in page {
                    if let Some(m) = a.modified.as_ref().and_then(Stamp::millis) {
                        max_modified = max_modified.max(Some(m));
                    }
                    if !self.is_open_watched(&a) {
                        continue;
                    }
                    let uri: Arc<str> = Arc::from(a.uri.as_str());
                    if !seen.insert(uri.clone()) {
                        continue;
                    }
                    let a = kept(a);
                    let kind = match self.mem.open.get(&uri) {
                        None => Some(ChangeKind::Raised),
                        Some(t) if differs(t, &a) => Some(ChangeKind::Updated),
                        Some(_) => None,
                    };
                    if let Some(k) = kind {
                        self.emit(k, a.clone()).await?;
                    }
                    self.mem.open.insert(a);
                }
            }
            if walk_no == 0 {
                walk_start = w.appliance_clock_floor_ms;
            }
            members += w.members;
            pages += w.pages;
            malformed += w.malformed;
            if !w.shifted() {
                break;
            }
        }
        self.metrics.alerts_in_last_poll.set(members as i64);
        // Known open alerts that are not in the open set any more: cleared, deleted, or moved
        // to an unwatched severity. A few are checked one by one, so that a page shift can
        // never resolve an incident that is still open; a mass clear is taken as it is.
        let mut gone: Vec<Arc<str>> = self
            .mem
            .open
            .uris()
            .filter(|u| !seen.contains(*u))
            .map(Arc::from)
            .collect();
        drop(seen);
        gone.sort();
        let verify = gone.len() <= VERIFY_ABSENT_MAX;
        if !verify {
            self.check_plausible(&gone).await?;
        }
        for uri in gone {
            let Some(last) = self.mem.open.get(&uri).cloned() else {
                continue;
            };
            let current = if verify {
                match self.client.get_alert(&uri).await {
                    Ok(a) => Some(kept(a)),
                    Err(e) if e.status() == Some(404) => None,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            match current {
                Some(a) if self.is_open_watched(&a) => {
                    if differs(&last, &a) {
                        self.emit(ChangeKind::Updated, a.clone()).await?;
                    }
                    self.mem.open.insert(a);
                }
                Some(a) => {
                    self.emit(ChangeKind::Cleared, a).await?;
                    self.mem.open.remove(&uri);
                }
                None => {
                    self.emit(ChangeKind::Cleared, last).await?;
                    self.mem.open.remove(&uri);
                }
            }
        }
        self.mem.open.shrink_if_sparse();
        self.advance_watermark(next_watermark(walk_start, max_modified));
        if self.mem.synced_from.is_none() {
            self.mem.synced_from = self.mem.watermark;
        }
        tracing::info!(
            open = self.mem.open.len(),
            members,
            pages,
            malformed,
            "OneView full sync finished"
        );
        Ok(())
    }

    /// Checks a random sample of the alerts a full sync left out; any still open makes the
    /// snapshot implausible (see the module docs).
    async fn check_plausible(&self, gone: &[Arc<str>]) -> Result<(), OneViewError> {
        let sample: Vec<&Arc<str>> = {
            let mut rng = rand::rng();
            rand::seq::IndexedRandom::choose_multiple(gone, &mut rng, PLAUSIBILITY_SAMPLE).collect()
        };
        let mut still_open = Vec::new();
        for uri in &sample {
            match self.client.get_alert(uri).await {
                Ok(a) if self.is_open_watched(&a) => still_open.push(uri.to_string()),
                Ok(_) => {}
                Err(e) if e.status() == Some(404) => {}
                Err(e) => return Err(e),
            }
        }
        if still_open.is_empty() {
            tracing::info!(
                missing = gone.len(),
                open = self.mem.open.len(),
                sampled = sample.len(),
                "a full sync left out many open alerts and every sampled one is cleared or gone: a mass clear, resolving them"
            );
            return Ok(());
        }
        self.metrics.implausible_snapshots.inc();
        let e = OneViewError::ImplausibleSnapshot {
            missing: gone.len(),
            open: self.mem.open.len(),
            sampled: sample.len(),
            still_open: still_open.len(),
            example: still_open[0].clone(),
        };
        tracing::warn!(alert_uri = %still_open[0], error = %e, "OneView full sync discarded");
        Err(e)
    }

    async fn incremental(&mut self) -> Result<(), OneViewError> {
        let Some(wm) = self.mem.watermark else {
            return self.full_sync().await;
        };
        let overlap = i64::try_from(self.cfg.watermark_overlap.as_millis()).unwrap_or(0);
        let since = wm - overlap;
        let query = AlertQuery {
            filters: vec![format!("modified >= '{}'", format_timestamp(since))],
            sort: None,
            page_size: self.cfg.page_size,
        };
        // The walker borrows these while `self` changes under it.
        let (client, metrics) = (self.client.clone(), self.metrics.clone());
        let mut w = Walker::new(&client, &query, &metrics);
        let mut max_modified: Option<i64> = None;
        // Page by page (see `full_sync`); the watermark moves only once the walk is complete,
        // so a failed poll is read again from the same point and `recent` skips what was done.
        loop {
            // Versions already processed (the overlap window) are not even decoded.
            let recent = &self.mem.recent;
            let done = |uri: &str, modified: Option<&str>| {
                modified
                    .and_then(parse_timestamp)
                    .is_some_and(|m| recent.get(uri).is_some_and(|seen| *seen >= m))
            };
            let Some(page) = w.next_page_skipping(&done).await? else {
                break;
            };
            let mut alerts: Vec<(Option<i64>, Alert)> = page
                .into_iter()
                .map(|a| (a.modified.as_ref().and_then(Stamp::millis), a))
                .collect();
            alerts.sort_by_key(|(m, _)| *m);
            for (modified, a) in alerts {
                max_modified = max_modified.max(modified);
                let _ = self.apply_incremental(modified, a).await?;
            }
        }
        self.metrics.alerts_in_last_poll.set(w.members as i64);
        self.advance_watermark(next_watermark(w.appliance_clock_floor_ms, max_modified));
        if let Some(new_wm) = self.mem.watermark {
            let floor = new_wm - overlap;
            self.mem.recent.retain(|_, m| *m >= floor);
            shrink_if_sparse(&mut self.mem.recent);
        }
        self.mem.open.shrink_if_sparse();
        tracing::debug!(
            members = w.members,
            pages = w.pages,
            since = %format_timestamp(since),
            "OneView incremental poll finished"
        );
        Ok(())
    }

    /// One alert of an incremental poll or the message bus.
    async fn apply_incremental(
        &mut self,
        modified: Option<i64>,
        a: Alert,
    ) -> Result<Applied, OneViewError> {
        let uri: Arc<str> = Arc::from(a.uri.as_str());
        if let Some(m) = modified {
            // The same version again (overlap window, a message sent twice), or an older one
            // (a page shift showed it twice, a message overtaken by a poll or another
            // message): nothing new.
            let open_newer = self.mem.open.get(&uri).is_some_and(|t| {
                t.modified
                    .as_ref()
                    .and_then(Stamp::millis)
                    .is_some_and(|seen| seen > m)
            });
            if open_newer || self.mem.recent.get(&uri).is_some_and(|seen| *seen >= m) {
                return Ok(Applied::Stale);
            }
            self.mem.recent.insert(uri.clone(), m);
        }
        let open_watched = self.is_open_watched(&a);
        let known = self.mem.open.get(&uri).cloned();
        let a = kept(a);
        match (known, open_watched) {
            (None, true) => {
                self.emit(ChangeKind::Raised, a.clone()).await?;
                self.mem.open.insert(a);
            }
            (None, false) => {
                // A cleared alert this run never saw open may still have an incident from
                // an earlier run (memory is lost on restart), so its resolve goes out,
                // unless the alert was created after this run's first full sync: then it
                // was raised and cleared between two polls and nobody was paged.
                let created = a.created.as_ref().and_then(Stamp::millis);
                let born_after_sync = matches!(
                    (created, self.mem.synced_from),
                    (Some(c), Some(f)) if c >= f
                );
                if a.is_cleared() && !born_after_sync {
                    self.emit(ChangeKind::Cleared, a).await?;
                }
            }
            (Some(t), true) => {
                if differs(&t, &a) {
                    self.emit(ChangeKind::Updated, a.clone()).await?;
                }
                self.mem.open.insert(a);
            }
            (Some(_), false) => {
                self.emit(ChangeKind::Cleared, a).await?;
                self.mem.open.remove(&uri);
            }
        }
        Ok(Applied::Done)
    }

    fn advance_watermark(&mut self, candidate: Option<i64>) {
        self.mem.watermark = self.mem.watermark.max(candidate);
    }

    async fn emit(&self, kind: ChangeKind, alert: Arc<Alert>) -> Result<(), OneViewError> {
        let key = AlertKey::new(&self.appliance, &alert.uri);
        tracing::info!(
            alert_key = %key,
            alert_uri = %alert.uri,
            change = ?kind,
            severity = %alert.severity,
            state = %alert.alert_state,
            "alert change"
        );
        self.changes
            .send(AlertChange {
                kind,
                key,
                appliance: self.appliance.clone(),
                alert,
            })
            .await
            .map_err(|_| OneViewError::ChannelClosed)
    }
}

/// What became of one alert's change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    /// A version already processed: nothing done.
    Stale,
    /// Compared with what the poller knew, and passed on if it was news.
    Done,
}

/// The poll interval now: `scmb.poll_interval` while the bus is up, else `poller.interval`.
fn interval_now(poller_interval: Duration, bus: &Option<BusLink>) -> Duration {
    match bus {
        Some(b) if b.state.borrow().is_connected() => b.poll_interval,
        _ => poller_interval,
    }
}

/// The connection number of a bus that is up.
fn connected(s: &BusState) -> Option<u64> {
    match s {
        BusState::Connected { connection, .. } => Some(*connection),
        _ => None,
    }
}

/// Where the next incremental poll starts (before the overlap is taken off): the appliance's
/// clock when this walk's first page was served, when the appliance says (`Date`).
///
/// Not the newest `modified` seen: a walk is not a snapshot. While a long walk is read (a
/// storm, with delivery's backpressure slowing it down), alerts on pages already passed can
/// change, or enter the filtered set ahead of the offset, and are not read; a later change
/// that the walk does read can carry a stamp far past theirs. A watermark at that stamp
/// skipped them until the hourly resync (seen in the 100,000-alert storm benchmark: 13,849
/// resolves late). Anything the walk can have missed changed after its first page, so the
/// next poll reads from there. Only an appliance that sends no `Date` falls back to the
/// newest stamp seen, and the overlap.
fn next_watermark(walk_start: Option<i64>, max_modified: Option<i64>) -> Option<i64> {
    walk_start.or(max_modified)
}

/// The alert as the poller keeps and passes it on: without its change log, which nothing
/// downstream reads (a write-back reads the alert afresh) and which grows with every note.
fn kept(mut a: Alert) -> Arc<Alert> {
    a.change_log = None;
    Arc::new(a)
}

/// A change worth an `Updated`: severity or description.
fn differs(old: &Alert, new: &Alert) -> bool {
    old.severity != new.severity || old.description != new.description
}
