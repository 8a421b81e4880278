//! The delivery pipeline over a state store (real HTTP to the PagerDuty simulator): the outbox
//! survives a crash and is resumed, the ledger keeps unchanged alerts from being triggered again,
//! dead letters survive restarts, and a store that refuses writes (disk full, read-only) turns
//! readiness 503 while delivery goes on.

mod pagerduty_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bridge::model::ChangeKind;
use bridge::pagerduty::{self, Delivery, DurableState, Tuning};
use bridge::readiness::Readiness;
use bridge::sim::pagerduty::{self as pdsim, Faults, Outage};
use bridge::state::{self, FileStore, Op, Snapshot, StateError, StateStore};
use pagerduty_support::{change, config, many_alerts, sample};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

struct Run {
    d: Delivery,
    registry: Registry,
    readiness: Arc<Readiness>,
    work: CancellationToken,
}

fn start(events_url: &str, store: Arc<dyn StateStore>) -> Run {
    let cfg = config(events_url, |_| {});
    let mut registry = Registry::default();
    let readiness = Arc::new(Readiness::new());
    let work = CancellationToken::new();
    let snapshot = store.load().unwrap();
    let d = pagerduty::assemble_durable(
        &cfg,
        &mut registry,
        readiness.clone(),
        work.clone(),
        Tuning::default(),
        Some(DurableState {
            store,
            snapshot,
            retention: Duration::from_secs(3600),
            gate: None,
        }),
    )
    .unwrap();
    Run {
        d,
        registry,
        readiness,
        work,
    }
}

async fn wait(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

fn file_store(dir: &Path) -> Arc<dyn StateStore> {
    Arc::new(FileStore::open(&dir.join("state.redb")).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_resumes_the_outbox_and_unchanged_alerts_are_not_triggered_again() {
    let sim = pdsim::start(
        "127.0.0.1:0".parse().unwrap(),
        Faults {
            outage: Some(Outage::Status { code: 503 }),
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path());
    let alerts = many_alerts(300);

    // Run 1: PagerDuty is down; everything waits in the outbox, then the process "dies".
    let r = start(&sim.events_url(), store.clone());
    let task = tokio::spawn(r.d.task);
    for a in &alerts {
        r.d.changes
            .send(change(ChangeKind::Raised, a))
            .await
            .unwrap();
    }
    assert!(
        wait(Duration::from_secs(10), || store
            .load()
            .unwrap()
            .outbox
            .len()
            == 300)
        .await
    );
    task.abort();
    let _ = task.await;
    let snap = store.load().unwrap();
    assert_eq!(snap.outbox.len(), 300);
    assert_eq!(snap.open_keys().len(), 300);
    assert_eq!(sim.accepted().len(), 0);

    // Run 2: PagerDuty is back; the outbox is delivered before anything new, in order, and the
    // poller's resync of the same alerts adds nothing.
    sim.set_faults(Faults::default());
    let r = start(&sim.events_url(), store.clone());
    let task = tokio::spawn(r.d.task);
    for a in &alerts {
        r.d.changes
            .send(change(ChangeKind::Raised, a))
            .await
            .unwrap();
    }
    assert!(
        sim.wait_until(Duration::from_secs(20), |s| s.accepted().len() >= 300)
            .await
    );
    assert!(
        wait(Duration::from_secs(10), || {
            let s = store.load().unwrap();
            s.outbox.is_empty() && s.ledger.len() == 300
        })
        .await
    );
    let m = bridge::metrics::encode_openmetrics(&r.registry);
    assert_eq!(
        sample(&m, "bridge_state_ledger_entries"),
        Some(300.0),
        "{m}"
    );
    assert_eq!(sample(&m, "bridge_state_outbox_entries"), Some(0.0), "{m}");
    r.work.cancel();
    task.await.unwrap();
    assert_eq!(sim.accepted().len(), 300);

    // Run 3 (a restart with an empty dedup cache, seeded from the ledger): the resync of the
    // unchanged alerts sends nothing; a changed one and a cleared one do.
    let r = start(&sim.events_url(), store.clone());
    let task = tokio::spawn(r.d.task);
    for a in &alerts {
        r.d.changes
            .send(change(ChangeKind::Raised, a))
            .await
            .unwrap();
    }
    let mut changed = alerts[0].clone();
    changed.description = Some("Something else now".into());
    r.d.changes
        .send(change(ChangeKind::Updated, &changed))
        .await
        .unwrap();
    r.d.changes
        .send(change(ChangeKind::Cleared, &alerts[1]))
        .await
        .unwrap();
    assert!(
        sim.wait_until(Duration::from_secs(10), |s| s.accepted().len() >= 302)
            .await
    );
    r.work.cancel();
    task.await.unwrap();
    assert_eq!(
        sim.accepted().len(),
        302,
        "only the change and the clear went out"
    );
    assert_eq!(sim.counters().incidents_opened, 300);
    let snap = store.load().unwrap();
    assert_eq!(snap.open_keys().len(), 299);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_survive_a_restart() {
    let sim = pdsim::start(
        "127.0.0.1:0".parse().unwrap(),
        Faults {
            reject_dedup_key_containing: Some("/rest/alerts/10003".into()),
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path());
    let alerts = many_alerts(5);
    let r = start(&sim.events_url(), store.clone());
    let task = tokio::spawn(r.d.task);
    for a in &alerts {
        r.d.changes
            .send(change(ChangeKind::Raised, a))
            .await
            .unwrap();
    }
    assert!(
        sim.wait_until(Duration::from_secs(10), |s| s.events().len() >= 5)
            .await
    );
    r.work.cancel();
    task.await.unwrap();
    assert_eq!(store.load().unwrap().dead_letters.len(), 1);

    let r = start(&sim.events_url(), store.clone());
    let snap = r.d.status.snapshot();
    assert_eq!(snap.dead_letters.len(), 1, "{snap:?}");
    assert!(
        snap.dead_letters[0]
            .dedup_key
            .ends_with("/rest/alerts/10003")
    );
    assert_eq!(snap.dead_letters[0].status, 400);
    let m = bridge::metrics::encode_openmetrics(&r.registry);
    assert_eq!(
        sample(&m, "bridge_pagerduty_dead_letters"),
        Some(1.0),
        "{m}"
    );
    sim.shutdown();
}

/// A volume that is full (or mounted read-only): every commit fails the way redb reports it.
struct FullDisk {
    inner: state::MemoryStore,
}

impl StateStore for FullDisk {
    fn load(&self) -> Result<Snapshot, StateError> {
        self.inner.load()
    }
    fn apply(&self, _batch: &[Op]) -> Result<(), StateError> {
        Err(StateError::Io {
            path: "/var/lib/bridge/state.redb".into(),
            op: "commit",
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        })
    }
    fn prune(&self, _older_than: SystemTime) -> Result<usize, StateError> {
        Ok(0)
    }
    fn kind(&self) -> &'static str {
        "file"
    }
    fn path(&self) -> Option<&Path> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_readiness_503_and_delivery_goes_on() {
    let sim = pdsim::start("127.0.0.1:0".parse().unwrap(), Faults::default())
        .await
        .unwrap();
    let store: Arc<dyn StateStore> = Arc::new(FullDisk {
        inner: state::MemoryStore::new(),
    });
    let r = start(&sim.events_url(), store);
    let task = tokio::spawn(r.d.task);
    for a in &many_alerts(20) {
        r.d.changes
            .send(change(ChangeKind::Raised, a))
            .await
            .unwrap();
    }
    assert!(
        sim.wait_until(Duration::from_secs(10), |s| s.accepted().len() >= 20)
            .await
    );
    let report = r.readiness.report();
    assert!(!report.ready);
    let unmet = report
        .unmet
        .iter()
        .find(|u| u.condition == state::READY_STATE)
        .expect("state_store condition unmet");
    assert!(
        unmet.reason.contains("state.redb: commit failed"),
        "{}",
        unmet.reason
    );
    assert!(unmet.reason.contains("free space"), "{}", unmet.reason);
    let m = bridge::metrics::encode_openmetrics(&r.registry);
    assert!(
        sample(&m, "bridge_state_writes_total{outcome=\"error\"}").unwrap() >= 1.0,
        "{m}"
    );
    // Still running (no crash loop) and stops cleanly.
    r.work.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolved_entries_older_than_retention_are_pruned_at_start_and_open_ones_kept() {
    let sim = pdsim::start("127.0.0.1:0".parse().unwrap(), Faults::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = file_store(dir.path());
    let old = SystemTime::now() - Duration::from_secs(8 * 86_400);
    let mut ops = Vec::new();
    for (i, action) in [(0, state::Action::Resolve), (1, state::Action::Trigger)] {
        ops.push(Op::Enqueue(state::OutboxEntry {
            seq: i,
            key: format!("k{i}"),
            action,
            priority: 0,
            enqueued_at: old,
            fingerprint: "0".into(),
            payload: String::new(),
        }));
        ops.push(Op::Accepted {
            seq: i,
            key: format!("k{i}"),
            action,
            fingerprint: "0".into(),
            at: old,
            route: "default".into(),
        });
    }
    store.apply(&ops).unwrap();
    // `start` uses a one-hour retention; the first prune runs as the pipeline starts.
    let r = start(&sim.events_url(), store.clone());
    let task = tokio::spawn(r.d.task);
    assert!(
        wait(Duration::from_secs(10), || store
            .load()
            .unwrap()
            .ledger
            .len()
            == 1)
        .await
    );
    assert!(
        store.load().unwrap().ledger.contains_key("k1"),
        "an open incident is never pruned"
    );
    r.work.cancel();
    task.await.unwrap();
    sim.shutdown();
}

/// Not a benchmark (debug build, shared cores): shows that one commit covers many ops. Set
/// `MEMSTORE=1` to compare with the in-memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_events_through_the_file_store() {
    let sim = pdsim::start("127.0.0.1:0".parse().unwrap(), Faults::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = if std::env::var_os("MEMSTORE").is_some() {
        Arc::new(state::MemoryStore::new())
    } else {
        file_store(dir.path())
    };
    let r = start(&sim.events_url(), store.clone());
    let task = tokio::spawn(r.d.task);
    let alerts = many_alerts(5000);
    let t0 = std::time::Instant::now();
    for a in &alerts {
        r.d.changes
            .send(change(ChangeKind::Raised, a))
            .await
            .unwrap();
    }
    assert!(
        sim.wait_until(Duration::from_secs(60), |s| s.accepted().len() >= 5000)
            .await
    );
    let rate = 5000.0 / t0.elapsed().as_secs_f64();
    let m = bridge::metrics::encode_openmetrics(&r.registry);
    let commits = sample(&m, "bridge_state_writes_total{outcome=\"ok\"}").unwrap_or(0.0);
    eprintln!("5000 events with a file store: {rate:.0} events/s, {commits} commits");
    assert!(
        commits < 5000.0 * 2.0,
        "group commit: {commits} commits for 10,000 ops"
    );
    r.work.cancel();
    task.await.unwrap();
    assert!(store.load().unwrap().outbox.is_empty());
    sim.shutdown();
}
