//! Group commit: the one writer of a [`StateStore`] in a running bridge.
//!
//! The delivery pipeline submits [`Op`]s without waiting (a submission returns a ticket); a
//! dedicated OS thread takes everything queued since its last commit and applies it as one
//! transaction, so one fsync covers the ops of many events and thousands of events per second
//! stay possible while no async worker ever blocks on the disk. Whoever must not act before its
//! ops are durable (a send must follow its outbox entry) awaits [`Journal::durable`].
//!
//! A failed commit is logged with the store's message (which names the file and the way out),
//! turns the readiness condition [`READY_STATE`] unmet (503) and does not stop delivery: the
//! outbox on disk keeps what the last good commit left, and the bridge goes on paging from memory
//! rather than dying in a crash loop. The ops of failed commits are kept (compacted: an outbox
//! entry written and removed meanwhile is dropped, only the last ledger entry of a key stays)
//! and tried again with the next commit, and every [`RETRY_EVERY`] while nothing new comes, so
//! when the volume has room again the store catches up with what PagerDuty accepted meanwhile and
//! readiness recovers, without a restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::mpsc;

use tokio::sync::watch;

use super::{Op, StateStore};
use crate::readiness::Readiness;

/// Readiness condition unmet while the state store refuses writes.
pub const READY_STATE: &str = "state_store";

/// At most this many ops go into one transaction.
const MAX_BATCH_OPS: usize = 20_000;
/// How long the writer waits after the first op for more to join its commit.
const GATHER: Duration = Duration::from_millis(2);
/// How often kept ops are tried again while the store fails and nothing new arrives.
pub const RETRY_EVERY: Duration = Duration::from_secs(2);
/// Ops kept across failed commits before the oldest are given up (each is a few hundred bytes,
/// an outbox entry a few KB): memory stays bounded through a long outage of the volume.
const MAX_KEPT_OPS: usize = 200_000;
/// How often ledger entries older than `state.retention` are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The `bridge_state_*` metric families.
#[derive(Clone)]
struct Metrics {
    writes: Family<OutcomeLabels, Counter>,
    commit: Histogram,
    outbox: Gauge<i64, std::sync::atomic::AtomicI64>,
    ledger: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            writes: Family::default(),
            commit: crate::metrics::latency_histogram(),
            outbox: Gauge::default(),
            ledger: Gauge::default(),
        };
        for o in ["ok", "error"] {
            let _ = m.writes.get_or_create(&OutcomeLabels { outcome: o });
        }
        registry.register(
            "bridge_state_writes",
            "Transactions committed to the state store (one per group of ops), by outcome",
            m.writes.clone(),
        );
        registry.register(
            "bridge_state_commit_duration_seconds",
            "Time to commit one group of ops to the state store, fsync included",
            m.commit.clone(),
        );
        registry.register(
            "bridge_state_outbox_entries",
            "Events in the durable outbox (written, not yet accepted by PagerDuty)",
            m.outbox.clone(),
        );
        registry.register(
            "bridge_state_ledger_entries",
            "Alert keys in the ledger of what PagerDuty accepted",
            m.ledger.clone(),
        );
        m
    }
}

enum Msg {
    Ops { ticket: u64, ops: Vec<Op> },
    Prune { older_than: SystemTime },
}

struct Submit {
    next_ticket: u64,
    tx: Option<mpsc::Sender<Msg>>,
}

/// Handle to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    submit: Arc<Mutex<Submit>>,
    committed: watch::Receiver<u64>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("committed", &*self.committed.borrow())
            .finish()
    }
}

impl Journal {
    /// Starts the writer thread over `store`. `outbox` and `ledger` are the entry counts of the
    /// loaded snapshot (the gauges start there).
    pub fn start(
        store: Arc<dyn StateStore>,
        registry: &mut Registry,
        readiness: Arc<Readiness>,
        outbox: usize,
        ledger: usize,
    ) -> Result<Self, std::io::Error> {
        let metrics = Metrics::register(registry);
        metrics
            .outbox
            .set(i64::try_from(outbox).unwrap_or(i64::MAX));
        metrics
            .ledger
            .set(i64::try_from(ledger).unwrap_or(i64::MAX));
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = watch::channel(0u64);
        let thread = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || writer(store, rx, done_tx, metrics, readiness))?;
        Ok(Self {
            submit: Arc::new(Mutex::new(Submit {
                next_ticket: 1,
                tx: Some(tx),
            })),
            committed: done_rx,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Submit> {
        // A counter and a channel handle: nothing a panic could leave half-updated.
        self.submit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `ops` for the next commit and returns their ticket (see [`Journal::durable`]).
    /// Never blocks. Ops submitted after [`Journal::close`] are dropped (ticket 0).
    pub fn submit(&self, ops: Vec<Op>) -> u64 {
        let mut g = self.lock();
        let ticket = g.next_ticket;
        let Some(tx) = g.tx.as_ref() else { return 0 };
        if tx.send(Msg::Ops { ticket, ops }).is_err() {
            return 0;
        }
        g.next_ticket += 1;
        ticket
    }

    /// Asks the writer to prune what is older than `older_than`.
    pub fn prune(&self, older_than: SystemTime) {
        let g = self.lock();
        if let Some(tx) = g.tx.as_ref() {
            let _ = tx.send(Msg::Prune { older_than });
        }
    }

    /// Resolves once the commit holding `ticket` was attempted (whether it succeeded or not:
    /// a failing store must not stop delivery; see the module docs). Returns at once when the
    /// writer is gone.
    pub async fn durable(&self, ticket: u64) {
        let mut rx = self.committed.clone();
        let _ = rx.wait_for(|c| *c >= ticket).await;
    }

    /// Waits until everything submitted so far was committed.
    pub async fn flush(&self) {
        let last = self.lock().next_ticket.saturating_sub(1);
        self.durable(last).await;
    }

    /// Stops accepting ops, lets the writer commit what is queued and waits for it (blocking:
    /// call from a blocking context or at the very end).
    pub fn close(&self) {
        self.lock().tx = None;
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn writer(
    store: Arc<dyn StateStore>,
    rx: mpsc::Receiver<Msg>,
    done: watch::Sender<u64>,
    metrics: Metrics,
    readiness: Arc<Readiness>,
) {
    let mut failing = false;
    let mut carry: Option<Msg> = None;
    // Ops of failed commits, applied before the next ones.
    let mut kept: Vec<Op> = Vec::new();
    // While failing, commits are tried at most every RETRY_EVERY: a storm of events must not
    // become a storm of doomed commits, each re-reading what is kept.
    let mut next_try = Instant::now();
    let mut compacted_len = 0usize;
    let mut closed = false;
    loop {
        let first = match carry.take() {
            Some(m) => Some(m),
            None if kept.is_empty() => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => break,
            },
            // Failing with ops kept: try again even when nothing new comes, so the store
            // recovers as soon as the volume does.
            None => match rx.recv_timeout(RETRY_EVERY) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closed = true;
                    None
                }
            },
        };
        let (mut ops, mut last) = match first {
            Some(Msg::Prune { older_than }) => {
                if kept.is_empty() {
                    prune(&*store, older_than, &metrics);
                }
                continue;
            }
            Some(Msg::Ops { ticket, ops }) => (ops, ticket),
            None => (Vec::new(), 0),
        };
        if last > 0 {
            // A moment for the ops of other events to arrive: one fsync then covers all of
            // them. Short next to a PagerDuty round trip, long next to the dispatcher's turn.
            std::thread::sleep(GATHER);
            while ops.len() < MAX_BATCH_OPS {
                match rx.try_recv() {
                    Ok(Msg::Ops { ticket, ops: more }) => {
                        ops.extend(more);
                        last = ticket;
                    }
                    Ok(p @ Msg::Prune { .. }) => {
                        carry = Some(p);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if failing && Instant::now() < next_try && !closed {
            kept.extend(ops);
            if kept.len() > 2 * compacted_len.max(1024) {
                kept = compact(std::mem::take(&mut kept));
                compacted_len = kept.len();
            }
            if last > 0 {
                done.send_replace(last);
            }
            continue;
        }
        if !kept.is_empty() {
            let mut all = std::mem::take(&mut kept);
            all.extend(ops);
            ops = all;
        }
        if !ops.is_empty() {
            let t0 = Instant::now();
            let res = store.apply(&ops);
            metrics.commit.observe(t0.elapsed().as_secs_f64());
            match res {
                Ok(()) => {
                    metrics
                        .writes
                        .get_or_create(&OutcomeLabels { outcome: "ok" })
                        .inc();
                    set_counts(&*store, &metrics);
                    if failing {
                        failing = false;
                        readiness.set_met(READY_STATE);
                        tracing::info!(
                            ops = ops.len(),
                            "state store writes succeed again; what was kept during the failure is written"
                        );
                    }
                }
                Err(e) => {
                    metrics
                        .writes
                        .get_or_create(&OutcomeLabels { outcome: "error" })
                        .inc();
                    kept = compact(ops);
                    compacted_len = kept.len();
                    next_try = Instant::now() + RETRY_EVERY;
                    if kept.len() > MAX_KEPT_OPS {
                        let over = kept.len() - MAX_KEPT_OPS;
                        kept.drain(..over);
                        tracing::error!(
                            dropped = over,
                            "the state store has failed for so long that the oldest kept ops are given up; the state file will miss some of what PagerDuty accepted (a full sync repairs it after a restart)"
                        );
                    }
                    if !failing {
                        tracing::error!(
                            error = %e,
                            kept = kept.len(),
                            "cannot write the delivery state; delivery goes on from memory and the writes are kept and tried again until the volume recovers"
                        );
                    } else {
                        tracing::debug!(error = %e, kept = kept.len(), "state store write failed again");
                    }
                    // Once failing, the store may answer "poisoned" until it could reopen the
                    // file; readiness keeps showing the cause (disk full, read-only) an
                    // operator can act on.
                    if !failing || !matches!(e, super::StateError::Poisoned { .. }) {
                        readiness.set_unmet(READY_STATE, e.to_string());
                    }
                    failing = true;
                }
            }
        }
        if last > 0 {
            done.send_replace(last);
        }
        if closed {
            break;
        }
    }
}

/// The ops of failed commits, without what has become moot: an outbox entry enqueued and
/// removed (accepted, cancelled, dead-lettered) within them, and all but the last ledger
/// entry of a key. Order is kept.
fn compact(ops: Vec<Op>) -> Vec<Op> {
    use std::collections::{HashMap, HashSet};
    let enqueued: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Enqueue(e) => Some(e.seq),
            _ => None,
        })
        .collect();
    let removed: HashSet<u64> = ops
        .iter()
        .filter_map(|o| match o {
            Op::Accepted { seq, .. } | Op::Cancelled { seq } | Op::DeadLetter { seq, .. } => {
                Some(*seq)
            }
            _ => None,
        })
        .collect();
    // Ops that change a key's ledger or dead letter otherwise make the order of its accepts
    // matter; then nothing of theirs is merged.
    let keyed_elsewhere = ops
        .iter()
        .any(|o| matches!(o, Op::ForgetKey { .. } | Op::RemoveDeadLetter { .. }));
    let mut last_accept: HashMap<&str, usize> = HashMap::new();
    if !keyed_elsewhere {
        for (i, o) in ops.iter().enumerate() {
            if let Op::Accepted { key, .. } = o {
                last_accept.insert(key.as_str(), i);
            }
        }
    }
    let superseded: HashSet<usize> = ops
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Op::Accepted { key, .. } if last_accept.get(key.as_str()).is_some_and(|l| *l != i) => {
                Some(i)
            }
            _ => None,
        })
        .collect();
    ops.into_iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Op::Enqueue(e) if removed.contains(&e.seq) => None,
            Op::Cancelled { seq } if enqueued.contains(&seq) => None,
            // An earlier accept of a key: only its outbox removal still matters.
            Op::Accepted { seq, .. } if superseded.contains(&i) => {
                (!enqueued.contains(&seq)).then_some(Op::Cancelled { seq })
            }
            o => Some(o),
        })
        .collect()
}

/// The outbox and ledger gauges, from the store's own counts (O(1) for both stores).
fn set_counts(store: &dyn StateStore, metrics: &Metrics) {
    if let Ok(c) = store.counts() {
        metrics
            .outbox
            .set(i64::try_from(c.outbox).unwrap_or(i64::MAX));
        metrics
            .ledger
            .set(i64::try_from(c.ledger).unwrap_or(i64::MAX));
    }
}

fn prune(store: &dyn StateStore, older_than: SystemTime, metrics: &Metrics) {
    match store.prune(older_than) {
        Ok(n) => {
            tracing::info!(
                removed = n,
                "pruned delivery state older than state.retention"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot prune the delivery state");
        }
    }
    set_counts(store, metrics);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Action, MemoryStore, OutboxEntry, Snapshot, StateError};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A store whose every commit takes 20 ms, like an fsync on a slow volume.
    struct Slow {
        inner: MemoryStore,
        commits: AtomicUsize,
    }

    impl StateStore for Slow {
        fn load(&self) -> Result<Snapshot, StateError> {
            self.inner.load()
        }
        fn apply(&self, batch: &[Op]) -> Result<(), StateError> {
            std::thread::sleep(Duration::from_millis(20));
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.inner.apply(batch)
        }
        fn prune(&self, older_than: SystemTime) -> Result<usize, StateError> {
            self.inner.prune(older_than)
        }
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn path(&self) -> Option<&Path> {
            None
        }
    }

    fn enqueue(seq: u64) -> Op {
        Op::Enqueue(OutboxEntry {
            seq,
            key: format!("k{seq}"),
            action: Action::Trigger,
            priority: 0,
            enqueued_at: SystemTime::now(),
            fingerprint: String::new(),
            payload: String::new(),
        })
    }

    fn accepted(seq: u64, key: &str) -> Op {
        Op::Accepted {
            seq,
            key: key.to_owned(),
            action: Action::Trigger,
            fingerprint: String::new(),
            at: SystemTime::UNIX_EPOCH,
            route: "default".into(),
        }
    }

    #[test]
    fn kept_ops_drop_what_became_moot() {
        let fourth = enqueue(4);
        let ops = vec![
            enqueue(1),
            enqueue(2),
            accepted(1, "k1"),
            Op::Cancelled { seq: 2 },
            // An entry committed before the failure, accepted twice meanwhile.
            accepted(0, "k0"),
            enqueue(3),
            accepted(3, "k0"),
            fourth.clone(),
        ];
        let kept = compact(ops);
        assert_eq!(
            kept,
            vec![
                accepted(1, "k1"),
                Op::Cancelled { seq: 0 },
                accepted(3, "k0"),
                fourth,
            ]
        );
    }

    /// Fails every commit while `full` is set, like a full volume.
    struct Flaky {
        inner: MemoryStore,
        full: std::sync::atomic::AtomicBool,
    }

    impl StateStore for Flaky {
        fn load(&self) -> Result<Snapshot, StateError> {
            self.inner.load()
        }
        fn apply(&self, batch: &[Op]) -> Result<(), StateError> {
            if self.full.load(Ordering::SeqCst) {
                return Err(StateError::Io {
                    path: "/state/bridge.redb".into(),
                    op: "commit",
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                });
            }
            self.inner.apply(batch)
        }
        fn prune(&self, older_than: SystemTime) -> Result<usize, StateError> {
            self.inner.prune(older_than)
        }
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn path(&self) -> Option<&Path> {
            None
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ops_of_failed_commits_are_written_once_the_store_recovers() {
        let store = Arc::new(Flaky {
            inner: MemoryStore::new(),
            full: std::sync::atomic::AtomicBool::new(true),
        });
        let readiness = Arc::new(Readiness::new());
        let mut registry = Registry::default();
        let j = Journal::start(store.clone(), &mut registry, readiness.clone(), 0, 0).unwrap();
        for seq in 0..100 {
            let t = j.submit(vec![enqueue(seq)]);
            j.durable(t).await;
        }
        for seq in 0..50 {
            j.submit(vec![accepted(seq, &format!("k{seq}"))]);
        }
        j.flush().await;
        assert!(!readiness.report().ready, "a failing store is a 503");
        assert!(store.inner.load().unwrap().outbox.is_empty());
        // Space comes back; nothing new is submitted: the kept ops are written on their own.
        store.full.store(false, Ordering::SeqCst);
        let mut recovered = false;
        for _ in 0..100 {
            if readiness.report().ready {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(recovered, "readiness recovers without a restart");
        let snap = store.inner.load().unwrap();
        assert_eq!(
            snap.outbox.len(),
            50,
            "the 50 events not accepted are in the outbox"
        );
        assert_eq!(
            snap.ledger.len(),
            50,
            "the 50 accepted ones are in the ledger"
        );
        j.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_submissions_share_few_commits_and_all_become_durable() {
        let store = Arc::new(Slow {
            inner: MemoryStore::new(),
            commits: AtomicUsize::new(0),
        });
        let mut registry = Registry::default();
        let j = Journal::start(
            store.clone(),
            &mut registry,
            Arc::new(Readiness::new()),
            0,
            0,
        )
        .unwrap();
        let mut last = 0;
        for seq in 0..2000 {
            last = j.submit(vec![enqueue(seq)]);
        }
        j.durable(last).await;
        assert_eq!(store.load().unwrap().outbox.len(), 2000);
        let commits = store.commits.load(Ordering::Relaxed);
        assert!(commits <= 20, "2000 submissions took {commits} commits");
        // Accepting them all (one op each) moves the gauges.
        for seq in 0..2000 {
            j.submit(vec![Op::Accepted {
                seq,
                key: format!("k{seq}"),
                action: Action::Trigger,
                fingerprint: String::new(),
                at: SystemTime::now(),
                route: "default".into(),
            }]);
        }
        j.flush().await;
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("bridge_state_outbox_entries 0"), "{text}");
        assert!(text.contains("bridge_state_ledger_entries 2000"), "{text}");
        j.close();
        assert_eq!(j.submit(vec![enqueue(5000)]), 0, "closed: nothing accepted");
    }
}
