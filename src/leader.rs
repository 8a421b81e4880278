//! Leadership of the pollers that share one PostgreSQL state database: exactly one of them
//! polls, writes and sends to PagerDuty; the others stand by, connected and ready, and take over
//! when the leader's lease expires.
//!
//! This module owns the lease loop and the send gate, not the lease row itself (that is the
//! store's, [`LeaseStore`]: its expiry is judged by the database clock, and every write
//! transaction of the leader checks the fencing epoch there).
//!
//! ## Why a leader stops on its own clock
//! A leader that was paused (GC, SIGSTOP, a partition) cannot know it was replaced until it
//! talks to the database again, and it must not page in the meantime. So it stops sending the
//! moment its lease *could* have expired, measured on its own monotonic clock: a renewal begun
//! at `t0` keeps the gate open until `t0 + ttl - margin`. The database set the lease's expiry to
//! its `now() + ttl`, and its `now()` is at or after our `t0`, so our deadline always comes
//! first; the margin covers the time between the gate check and the request leaving. Writes are
//! fenced in the database as well, so even an event that slips through cannot be recorded.
//!
//! A leader that lost its lease (or could not renew it before the deadline) does not try to
//! become a standby in place: it closes the gate, stops its work and exits with an error, so the
//! supervisor (Kubernetes, systemd, compose `restart:`) starts it again as a clean standby. This
//! is what client-go's leader election does for the Kubernetes controllers, and it leaves no
//! half-stopped pipeline behind.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::LeaseConfig;
use crate::readiness::Readiness;
use crate::state::StateError;

/// The readiness warning a standby shows (it is ready: it is healthy, just not leading).
pub const READY_LEADERSHIP: &str = "leadership";

pub use crate::state::{Acquired, LeaseHolder};

/// The lease row and the fencing of writes, implemented by the PostgreSQL store. Methods block
/// (they run a transaction): call them from blocking threads.
pub trait LeaseStore: Send + Sync + 'static {
    /// Takes the lease when it is free, expired or already ours; a takeover increments the epoch.
    fn acquire(
        &self,
        holder: &str,
        advertise_url: &str,
        ttl: Duration,
    ) -> Result<Acquired, StateError>;
    /// Extends our lease iff holder and epoch still match and it has not expired.
    fn renew(&self, holder: &str, epoch: u64, ttl: Duration) -> Result<bool, StateError>;
    /// Gives the lease up at once, iff still ours.
    fn release(&self, holder: &str, epoch: u64) -> Result<(), StateError>;
    /// From now on every write checks that the lease epoch is still `epoch`.
    fn set_fence(&self, fence: Option<(String, u64)>);
}

impl LeaseStore for crate::state::PostgresStore {
    fn acquire(
        &self,
        holder: &str,
        advertise_url: &str,
        ttl: Duration,
    ) -> Result<Acquired, StateError> {
        crate::state::PostgresStore::acquire(self, holder, advertise_url, ttl)
    }
    fn renew(&self, holder: &str, epoch: u64, ttl: Duration) -> Result<bool, StateError> {
        crate::state::PostgresStore::renew(self, holder, epoch, ttl)
    }
    fn release(&self, holder: &str, epoch: u64) -> Result<(), StateError> {
        crate::state::PostgresStore::release(self, holder, epoch)
    }
    fn set_fence(&self, fence: Option<(String, u64)>) {
        crate::state::PostgresStore::set_fence(self, fence);
    }
}

/// Whether this process may send to PagerDuty right now. Checked before every request.
#[derive(Debug)]
pub struct SendGate {
    base: Instant,
    /// Nanoseconds after `base` until which sending is allowed; 0 = closed.
    until: AtomicU64,
}

impl Default for SendGate {
    fn default() -> Self {
        Self::new()
    }
}

impl SendGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            until: AtomicU64::new(0),
        }
    }

    /// Open until `deadline` (monotonic).
    pub fn open_until(&self, deadline: Instant) {
        let n = deadline
            .saturating_duration_since(self.base)
            .as_nanos()
            .min(u128::from(u64::MAX)) as u64;
        self.until.store(n.max(1), Ordering::SeqCst);
    }

    pub fn close(&self) {
        self.until.store(0, Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        let until = self.until.load(Ordering::SeqCst);
        until != 0 && (self.base.elapsed().as_nanos() as u64) < until
    }

    /// How long the gate stays open from now (zero when closed).
    pub fn remaining(&self) -> Duration {
        let until = self.until.load(Ordering::SeqCst);
        Duration::from_nanos(until.saturating_sub(self.base.elapsed().as_nanos() as u64))
    }
}

/// The `bridge_leader_*` metrics.
#[derive(Clone, Default)]
pub struct LeaderMetrics {
    leader: Gauge,
    epoch: Gauge,
    takeovers: Counter,
    renew_failures: Counter,
    since_renewal: Gauge<f64, std::sync::atomic::AtomicU64>,
    database_up: Gauge,
}

impl LeaderMetrics {
    /// Whether the state database answered the last attempt to use it.
    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bridge_leader",
            "1 while this poller holds the leadership lease and may send, 0 while it stands by",
            self.leader.clone(),
        );
        registry.register(
            "bridge_leader_epoch",
            "Fencing epoch of the lease this poller holds or last saw held",
            self.epoch.clone(),
        );
        registry.register(
            "bridge_leader_takeovers",
            "Times this poller took the lease (each increments the epoch)",
            self.takeovers.clone(),
        );
        registry.register(
            "bridge_leader_lease_renew_failures",
            "Lease renewals that failed (database unreachable or slow)",
            self.renew_failures.clone(),
        );
        registry.register(
            "bridge_leader_seconds_since_renewal",
            "Seconds since the lease was last renewed (or taken) by this poller; 0 while standing by",
            self.since_renewal.clone(),
        );
        registry.register(
            "bridge_state_database_up",
            "1 when the last lease acquire or renew reached the state database, 0 when it failed",
            self.database_up.clone(),
        );
    }
}

/// Why the lease loop ended the leadership.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeadershipError {
    #[error(
        "leadership lost: another poller took the lease (epoch {epoch} is no longer ours); this poller stopped sending and exits so that it restarts as a standby"
    )]
    Lost { epoch: u64 },
    #[error(
        "leadership given up: the lease (epoch {epoch}) could not be renewed before it could have expired ({detail}); this poller stopped sending and exits so that it restarts as a standby. Check the state database (state.url) is reachable"
    )]
    Expired { epoch: u64, detail: String },
}

/// One poller's side of the election.
pub struct Leadership {
    store: Arc<dyn LeaseStore>,
    cfg: LeaseConfig,
    gate: Arc<SendGate>,
    metrics: LeaderMetrics,
    readiness: Arc<Readiness>,
    last_renewal: std::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("holder", &self.cfg.holder)
            .finish_non_exhaustive()
    }
}

impl Leadership {
    pub fn new(
        store: Arc<dyn LeaseStore>,
        cfg: LeaseConfig,
        metrics: LeaderMetrics,
        readiness: Arc<Readiness>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            cfg,
            gate: Arc::new(SendGate::new()),
            metrics,
            readiness,
            last_renewal: std::sync::Mutex::new(None),
        })
    }

    /// The gate the PagerDuty sender checks before every request.
    pub fn gate(&self) -> Arc<SendGate> {
        self.gate.clone()
    }

    pub fn holder(&self) -> &str {
        &self.cfg.holder
    }

    fn margin(&self) -> Duration {
        self.cfg.ttl / 5
    }

    fn renewed(&self, t0: Instant) {
        self.gate
            .open_until(t0 + self.cfg.ttl.saturating_sub(self.margin()));
        *self.last_renewal.lock().unwrap_or_else(|e| e.into_inner()) = Some(t0);
        self.metrics.since_renewal.set(0.0);
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn LeaseStore) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        // A hung database must not hold the loop past the gate's deadline.
        let limit = self
            .cfg
            .ttl
            .saturating_sub(self.margin())
            .max(Duration::from_millis(100));
        match tokio::time::timeout(limit, tokio::task::spawn_blocking(move || f(&*store))).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(e)) => Err(format!("lease task failed: {e}")),
            Err(_) => Err(format!(
                "the state database did not answer within {}",
                humantime::format_duration(limit)
            )),
        }
    }

    /// Stands by until this poller holds the lease; `None` when `shutdown` fired first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Option<u64> {
        let mut announced: Option<(String, u64)> = None;
        loop {
            let t0 = Instant::now();
            let (holder, url, ttl) = (
                self.cfg.holder.clone(),
                self.cfg.advertise_url.clone(),
                self.cfg.ttl,
            );
            match self.blocking(move |s| s.acquire(&holder, &url, ttl)).await {
                Ok(Acquired::Granted { epoch }) => {
                    self.metrics.database_up.set(1);
                    self.store.set_fence(Some((self.cfg.holder.clone(), epoch)));
                    self.renewed(t0);
                    self.metrics.leader.set(1);
                    self.metrics.epoch.set(epoch as i64);
                    self.metrics.takeovers.inc();
                    self.readiness.set_warning(READY_LEADERSHIP, None);
                    tracing::info!(holder = %self.cfg.holder, epoch, "took the leadership lease; this poller now polls and pages");
                    return Some(epoch);
                }
                Ok(Acquired::Held(h)) => {
                    self.metrics.database_up.set(1);
                    self.metrics.epoch.set(h.epoch as i64);
                    let msg = format!(
                        "standby: the leadership lease is held by {} (epoch {}{}); this poller takes over when it expires",
                        h.holder,
                        h.epoch,
                        if h.advertise_url.is_empty() {
                            String::new()
                        } else {
                            format!(", {}", h.advertise_url)
                        }
                    );
                    self.readiness.set_warning(READY_LEADERSHIP, Some(msg));
                    if announced.as_ref() != Some(&(h.holder.clone(), h.epoch)) {
                        tracing::info!(leader = %h.holder, epoch = h.epoch, "standing by: another poller leads");
                        announced = Some((h.holder.clone(), h.epoch));
                    }
                }
                Err(e) => {
                    self.metrics.database_up.set(0);
                    self.readiness.set_warning(
                        READY_LEADERSHIP,
                        Some(format!(
                            "standby: cannot reach the lease in the state database: {e}"
                        )),
                    );
                    tracing::warn!(error = %e, "cannot read the leadership lease; trying again");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(self.cfg.renew_interval) => {}
            }
        }
    }

    /// Keeps the lease of `epoch` until `work` is cancelled (then returns `Ok`; the caller
    /// releases after its work drained) or until it is lost or could have expired (then the gate
    /// is closed before this returns the reason).
    pub async fn keep(&self, epoch: u64, work: CancellationToken) -> Result<(), LeadershipError> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_renew = tokio::time::Instant::now() + self.cfg.renew_interval;
        loop {
            let deadline = tokio::time::Instant::now() + self.gate.remaining();
            tokio::select! {
                _ = work.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(deadline) => {}
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(next_renew) => {
                    next_renew = tokio::time::Instant::now() + self.cfg.renew_interval;
                    let t0 = Instant::now();
                    let (holder, ttl) = (self.cfg.holder.clone(), self.cfg.ttl);
                    match self.blocking(move |s| s.renew(&holder, epoch, ttl)).await {
                        Ok(true) => {
                            self.metrics.database_up.set(1);
                            self.renewed(t0);
                        }
                        Ok(false) => {
                            self.metrics.database_up.set(1);
                            self.step_down();
                            let e = LeadershipError::Lost { epoch };
                            tracing::error!(error = %e, "leadership lost");
                            return Err(e);
                        }
                        Err(detail) => {
                            self.metrics.database_up.set(0);
                            self.metrics.renew_failures.inc();
                            tracing::warn!(error = %detail, epoch, remaining = ?self.gate.remaining(), "lease renewal failed; trying again until the lease could expire");
                        }
                    }
                }
            }
            if let Some(t) = *self.last_renewal.lock().unwrap_or_else(|e| e.into_inner()) {
                self.metrics.since_renewal.set(t.elapsed().as_secs_f64());
            }
            if !self.gate.is_open() {
                self.step_down();
                let e = LeadershipError::Expired {
                    epoch,
                    detail: "no successful renewal in time".into(),
                };
                tracing::error!(error = %e, "leadership given up");
                return Err(e);
            }
        }
    }

    fn step_down(&self) {
        self.gate.close();
        self.metrics.leader.set(0);
        self.store.set_fence(None);
    }

    /// Gives the lease up (graceful stop, after the work drained), so a standby takes over at once.
    pub async fn release(&self, epoch: u64) {
        self.gate.close();
        self.metrics.leader.set(0);
        let holder = self.cfg.holder.clone();
        match self.blocking(move |s| s.release(&holder, epoch)).await {
            Ok(()) => tracing::info!(epoch, "leadership lease released"),
            Err(e) => {
                tracing::warn!(error = %e, epoch, "could not release the leadership lease; a standby takes over when it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_is_closed_until_opened_and_after_its_deadline() {
        let g = SendGate::new();
        assert!(!g.is_open());
        g.open_until(Instant::now() + Duration::from_secs(60));
        assert!(g.is_open());
        assert!(g.remaining() > Duration::from_secs(59));
        g.open_until(Instant::now());
        assert!(!g.is_open());
        assert_eq!(g.remaining(), Duration::ZERO);
        g.open_until(Instant::now() + Duration::from_secs(60));
        g.close();
        assert!(!g.is_open());
    }
}
