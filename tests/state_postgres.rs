//! The PostgreSQL state store on a real PostgreSQL (`tests/pg_support`): schema migrations,
//! a newer schema refused, outages (stopped mid-use, restarted: the pool reconnects, the
//! journal catches up), the leadership lease and its fencing, the sync API from any thread,
//! and no password in any message.

mod pg_support;
mod state_common;

use std::sync::Arc;
use std::time::Duration;

use bridge::readiness::Readiness;
use bridge::state::{
    Acquired, Action, Journal, Op, PostgresOptions, PostgresStore, StateError, StateStore,
};
use pg_support::{PASSWORD, PgServer};
use state_common::{accepted, enqueue, t};

fn open(url: &str) -> Result<PostgresStore, StateError> {
    PostgresStore::open(&opts(url))
}

fn opts(url: &str) -> PostgresOptions {
    let mut o = PostgresOptions::new(url.to_owned().into());
    o.connect_timeout = Duration::from_secs(2);
    o.operation_timeout = Duration::from_secs(5);
    o
}

fn no_password(text: &str) {
    for leak in [PASSWORD, "S3cr", "pw%2F"] {
        assert!(!text.contains(leak), "password leaked: {text}");
    }
}

fn batch(from: u64, n: u64) -> Vec<Op> {
    (from..from + n)
        .map(|i| enqueue(i, &format!("ov1/rest/alerts/{i}"), Action::Trigger))
        .collect()
}

#[test]
fn migrations_create_the_schema_once_and_reopen_keeps_the_data() {
    let Some(pg) =
        pg_support::shared("migrations_create_the_schema_once_and_reopen_keeps_the_data")
    else {
        return;
    };
    let (url, db) = pg.fresh_database();
    // Two pollers starting at once: the advisory lock keeps them from racing the CREATEs.
    let both: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || open(&url))
        })
        .collect();
    let stores: Vec<PostgresStore> = both
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    assert_eq!(
        pg.psql_in(&db, "SELECT id || ':' || version FROM bridge_schema")
            .trim(),
        "1:2"
    );
    let s = &stores[0];
    s.apply(&batch(0, 10)).unwrap();
    s.apply(&[accepted(3, "ov1/rest/alerts/3", Action::Trigger, t(5))])
        .unwrap();
    let before = s.load().unwrap();
    assert_eq!(before.outbox.len(), 9);
    drop(stores);
    let again = open(&url).unwrap();
    assert_eq!(again.load().unwrap(), before, "reopen keeps everything");
    assert_eq!(again.counts().unwrap().outbox, 9);
    assert_eq!(again.counts().unwrap().ledger, 1);
    assert!(
        pg.psql_in(
            &db,
            "SELECT indexname FROM pg_indexes WHERE tablename = 'bridge_ledger'"
        )
        .contains("bridge_ledger_prune")
    );
    // A database of schema 1 (before silences) is migrated at open and keeps its data.
    drop(again);
    pg.psql_in(
        &db,
        "DROP TABLE bridge_silences; UPDATE bridge_schema SET version = 1",
    );
    let migrated = open(&url).unwrap();
    assert_eq!(
        pg.psql_in(&db, "SELECT version FROM bridge_schema").trim(),
        "2"
    );
    let mut expected = before.clone();
    assert_eq!(
        migrated.load().unwrap(),
        expected,
        "migration 2 keeps the data"
    );
    let silence = bridge::state::SilenceRecord {
        id: "s1".into(),
        ends_at: t(9),
        body: "{}".into(),
    };
    migrated.apply(&[Op::Silence(silence.clone())]).unwrap();
    expected.silences.insert("s1".into(), silence);
    assert_eq!(migrated.load().unwrap(), expected);
}

#[test]
fn state_open_picks_postgres_from_the_config() {
    let Some(pg) = pg_support::shared("state_open_picks_postgres_from_the_config") else {
        return;
    };
    let (url, db) = pg.fresh_database();
    let cfg = bridge::config::StateConfig {
        backend: bridge::config::StateBackend::Postgres,
        postgres: Some(bridge::config::PostgresConfig {
            url: Arc::new(bridge::secret::Secret::inline("state.url", url.into())),
            target: pg.target(&db),
            ca_file: None,
            pool_size: 2,
            connect_timeout: Duration::from_secs(2),
            lease_name: "poller".into(),
        }),
        ..Default::default()
    };
    let s = bridge::state::open(&cfg).unwrap();
    assert_eq!(s.kind(), "postgres");
    assert!(s.path().is_none());
    s.apply(&batch(0, 1)).unwrap();
    assert_eq!(s.counts().unwrap().outbox, 1);
}

#[test]
fn a_newer_schema_is_refused_naming_the_database_without_the_password() {
    let Some(pg) = pg_support::shared("a_newer_schema_is_refused_naming_the_database") else {
        return;
    };
    let (url, db) = pg.fresh_database();
    drop(open(&url).unwrap());
    pg.psql_in(&db, "UPDATE bridge_schema SET version = 99");
    let err = open(&url).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::NewerDatabaseSchema {
                found: 99,
                supported: 2,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(&pg.target(&db)), "{msg}");
    assert!(msg.contains("newer version"), "{msg}");
    no_password(&msg);
    no_password(&format!("{err:?}"));
}

#[test]
fn errors_and_debug_never_show_the_password() {
    let Some(pg) = pg_support::shared("errors_and_debug_never_show_the_password") else {
        return;
    };
    let (url, db) = pg.fresh_database();
    // Wrong password.
    let wrong = url.replace("pw%2FS3cr%40t-7", "pw%2FS3cr%40t-8");
    let err = open(&wrong).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&pg.target(&db)), "{msg}");
    assert!(msg.contains("password authentication failed"), "{msg}");
    no_password(&msg);
    no_password(&format!("{err:?}"));
    // Nobody listening.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nowhere = url.replace(&format!(":{}/", pg.port), &format!(":{port}/"));
    let err = open(&nowhere).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}/{db}")), "{msg}");
    assert!(msg.contains("refused"), "{msg}");
    no_password(&msg);
    // A good store's Debug and its options'.
    let s = open(&url).unwrap();
    no_password(&format!("{s:?}"));
    no_password(&format!("{:?}", opts(&url)));
    assert!(format!("{s:?}").contains(&pg.target(&db)));
    // An unparsable URL names the key, not the value.
    let err = open("postgres://bridge:pw%2FS3cr%40t-7@127.0.0.1:5432/x?sslmode=allow").unwrap_err();
    assert!(err.to_string().contains("state.url"), "{err}");
    no_password(&err.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_api_works_from_spawn_blocking_and_plain_threads_and_drops_anywhere() {
    let Some(pg) = pg_support::shared("the_sync_api_works_from_spawn_blocking") else {
        return;
    };
    let (url, _) = pg.fresh_database();
    let s = Arc::new(
        tokio::task::spawn_blocking(move || open(&url))
            .await
            .unwrap()
            .unwrap(),
    );
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || s2.apply(&batch(0, 5)))
        .await
        .unwrap()
        .unwrap();
    let s3 = s.clone();
    std::thread::spawn(move || s3.apply(&batch(5, 5)))
        .join()
        .unwrap()
        .unwrap();
    // A current-thread runtime's blocking pool too.
    let s4 = s.clone();
    let n = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async move {
                tokio::task::spawn_blocking(move || s4.load().map(|s| s.outbox.len()))
                    .await
                    .unwrap()
            })
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(n, 10);
    // Dropping the last handle inside async code must not panic (the store's runtime shuts
    // down in the background).
    drop(s);
}

#[test]
fn a_stopped_database_fails_apply_whole_and_the_pool_reconnects_after_restart() {
    let Some(pg) = PgServer::start("a_stopped_database_fails_apply_whole") else {
        return;
    };
    let (url, db) = pg.fresh_database();
    let s = open(&url).unwrap();
    s.apply(&batch(0, 3)).unwrap();
    let before = s.load().unwrap();

    pg.stop();
    let err = s
        .apply(&[
            accepted(0, "ov1/rest/alerts/0", Action::Trigger, t(1)),
            enqueue(3, "ov1/rest/alerts/3", Action::Trigger),
        ])
        .unwrap_err();
    assert!(matches!(err, StateError::Database { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&pg.target(&db)), "{msg}");
    assert!(msg.contains("retried every 2s"), "{msg}");
    no_password(&msg);
    assert!(s.load().is_err());

    pg.start_again();
    // The pool drops its dead connections and makes new ones: no restart of the store.
    assert_eq!(s.load().unwrap(), before, "the failed batch left nothing");
    s.apply(&[
        accepted(0, "ov1/rest/alerts/0", Action::Trigger, t(1)),
        enqueue(3, "ov1/rest/alerts/3", Action::Trigger),
    ])
    .unwrap();
    let after = s.load().unwrap();
    assert_eq!(after.outbox.len(), 3);
    assert_eq!(after.ledger.len(), 1);
    assert_eq!(after.next_seq, 4);
}

#[test]
fn a_database_that_stops_answering_is_an_error_within_the_operation_timeout() {
    let Some(pg) = PgServer::start("a_database_that_stops_answering") else {
        return;
    };
    let (url, db) = pg.fresh_database();
    let mut o = opts(&url);
    o.operation_timeout = Duration::from_secs(1);
    o.connect_timeout = Duration::from_millis(500);
    let s = PostgresStore::open(&o).unwrap();
    s.apply(&batch(0, 2)).unwrap();
    let before = s.load().unwrap();

    pg.freeze();
    let started = std::time::Instant::now();
    let res = s.apply(&batch(2, 2));
    let took = started.elapsed();
    pg.thaw();
    let err = res.unwrap_err();
    assert!(matches!(err, StateError::Database { .. }), "{err}");
    assert!(err.to_string().contains("no answer within 1s"), "{err}");
    assert!(err.to_string().contains(&pg.target(&db)), "{err}");
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    assert_eq!(
        s.load().unwrap(),
        before,
        "nothing of the batch was written"
    );
    s.apply(&batch(2, 2)).unwrap();
    assert_eq!(s.load().unwrap().outbox.len(), 4);
}

#[test]
fn a_replayed_batch_whose_commit_was_not_acknowledged_is_accepted() {
    let Some(pg) = pg_support::shared("a_replayed_batch_whose_commit_was_not_acknowledged") else {
        return;
    };
    let (url, _) = pg.fresh_database();
    let s = open(&url).unwrap();
    let b = batch(0, 4);
    s.apply(&b).unwrap();
    // The journal applies the same ops again when it could not tell whether a commit landed.
    s.apply(&b).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.outbox.len(), 4);
    assert_eq!(snap.next_seq, 4);
    // A different entry under a used seq is still refused.
    let err = s
        .apply(&[enqueue(2, "ov1/rest/alerts/other", Action::Trigger)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::SeqReused {
                seq: 2,
                next_seq: 4
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_over_postgres_catches_up_after_a_database_restart() {
    let Some(pg) = PgServer::start("the_journal_over_postgres_catches_up") else {
        return;
    };
    let (url, _) = pg.fresh_database();
    let store: Arc<PostgresStore> = Arc::new(
        tokio::task::spawn_blocking(move || open(&url))
            .await
            .unwrap()
            .unwrap(),
    );
    let readiness = Arc::new(Readiness::new());
    let mut registry = prometheus_client::registry::Registry::default();
    let j = Journal::start(store.clone(), &mut registry, readiness.clone(), 0, 0).unwrap();
    for seq in 0..50 {
        let t = j.submit(vec![enqueue(
            seq,
            &format!("ov1/rest/alerts/{seq}"),
            Action::Trigger,
        )]);
        j.durable(t).await;
    }
    assert!(readiness.report().ready);

    let pg = Arc::new(pg);
    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.stop())
        .await
        .unwrap();
    // During the outage: 25 accepted, 50 new events.
    for seq in 0..25 {
        j.submit(vec![accepted(
            seq,
            &format!("ov1/rest/alerts/{seq}"),
            Action::Trigger,
            t(seq),
        )]);
    }
    for seq in 50..100 {
        j.submit(vec![enqueue(
            seq,
            &format!("ov1/rest/alerts/{seq}"),
            Action::Trigger,
        )]);
    }
    j.flush().await;
    assert!(
        !readiness.report().ready,
        "a database that is down is a 503"
    );

    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.start_again())
        .await
        .unwrap();
    // Nothing new is submitted: the journal's own retry (every 2 s) writes the kept ops.
    let mut recovered = false;
    for _ in 0..100 {
        if readiness.report().ready {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "readiness recovers without a restart");
    let s2 = store.clone();
    let snap = tokio::task::spawn_blocking(move || s2.load())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.ledger.len(), 25, "accepted during the outage");
    assert_eq!(
        snap.outbox.len(),
        75,
        "25 left of the first 50, and the 50 new"
    );
    assert_eq!(snap.next_seq, 100);
    j.close();
}

#[test]
fn the_lease_elects_one_holder_expires_by_the_database_clock_and_fences_old_writers() {
    let Some(pg) = pg_support::shared("the_lease_elects_one_holder") else {
        return;
    };
    let (url, _) = pg.fresh_database();
    let a = open(&url).unwrap();
    let b = open(&url).unwrap();
    let ttl = Duration::from_secs(1);

    assert_eq!(a.current().unwrap(), None);
    assert_eq!(
        a.acquire("a", "http://a:8080", ttl).unwrap(),
        Acquired::Granted { epoch: 1 }
    );
    match b.acquire("b", "http://b:8080", ttl).unwrap() {
        Acquired::Held(h) => {
            assert_eq!((h.holder.as_str(), h.epoch), ("a", 1));
            assert_eq!(h.advertise_url, "http://a:8080");
        }
        other => panic!("b must see a's lease: {other:?}"),
    }
    assert!(a.renew("a", 1, ttl).unwrap());
    assert_eq!(
        a.acquire("a", "http://a:8080", ttl).unwrap(),
        Acquired::Granted { epoch: 1 },
        "re-acquiring a live lease of ours keeps the epoch"
    );
    a.set_fence(Some(("a".into(), 1)));
    a.apply(&batch(0, 2)).unwrap();

    // a stops renewing; after the TTL (database clock) b takes over.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        b.acquire("b", "http://b:8080", ttl).unwrap(),
        Acquired::Granted { epoch: 2 }
    );
    assert!(!a.renew("a", 1, ttl).unwrap(), "a's lease is lost");
    let before = b.load().unwrap();
    let err = a.apply(&batch(2, 3)).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Fenced {
                epoch: 1,
                current: Some(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no longer the leader"), "{err}");
    assert!(matches!(
        a.prune(t(1_000_000)),
        Err(StateError::Fenced { .. })
    ));
    assert_eq!(b.load().unwrap(), before, "the fenced batch wrote nothing");
    b.set_fence(Some(("b".into(), 2)));
    b.apply(&batch(2, 3)).unwrap();
    assert_eq!(b.load().unwrap().outbox.len(), 5);

    // A graceful stop: a can take it at once, as a takeover.
    b.release("b", 2).unwrap();
    a.release("a", 1).unwrap(); // not a's any more: no effect
    assert_eq!(
        a.acquire("a", "http://a:8080", ttl).unwrap(),
        Acquired::Granted { epoch: 3 }
    );
    let cur = b.current().unwrap().unwrap();
    assert_eq!((cur.holder.as_str(), cur.epoch), ("a", 3));
    assert!(cur.expires_at > std::time::SystemTime::now() - Duration::from_secs(60));
    assert!(matches!(
        b.apply(&batch(5, 1)),
        Err(StateError::Fenced {
            epoch: 2,
            current: Some(3),
            ..
        })
    ));
    b.set_fence(None);
    b.apply(&batch(5, 1)).unwrap();
}

#[test]
fn concurrent_acquires_have_exactly_one_winner() {
    let Some(pg) = pg_support::shared("concurrent_acquires_have_exactly_one_winner") else {
        return;
    };
    for _ in 0..5 {
        let (url, _) = pg.fresh_database();
        let stores: Vec<Arc<PostgresStore>> =
            (0..4).map(|_| Arc::new(open(&url).unwrap())).collect();
        let barrier = Arc::new(std::sync::Barrier::new(stores.len()));
        let results: Vec<Acquired> = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    s.acquire(&format!("p{i}"), "http://x", Duration::from_secs(30))
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let winners = results
            .iter()
            .filter(|r| matches!(r, Acquired::Granted { epoch: 1 }))
            .count();
        assert_eq!(winners, 1, "{results:?}");
        assert_eq!(
            results
                .iter()
                .filter(|r| matches!(r, Acquired::Held(h) if h.epoch == 1))
                .count(),
            3
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The built binary with state.backend = postgres.

mod bridge_proc;

mod process {
    use std::collections::HashMap;
    use std::time::Duration;

    use bridge::sim::oneview::{self as ovsim, GenerateSpec, SimConfig};
    use bridge::sim::pagerduty::{self as pdsim, Faults, IncidentStatus};
    use bridge::state::StateStore;

    use super::bridge_proc::{BridgeEnv, dedup_key, sigkill, sigterm};
    use super::pg_support::{PASSWORD, PgServer};

    fn incidents_by_key(pd: &pdsim::SimHandle) -> HashMap<String, Vec<IncidentStatus>> {
        let mut m: HashMap<String, Vec<IncidentStatus>> = HashMap::new();
        for i in pd.incidents() {
            m.entry(i.dedup_key.clone()).or_default().push(i.status);
        }
        m
    }

    fn env_for(
        ov: &ovsim::RunningSim,
        pd: &pdsim::SimHandle,
        dir: &std::path::Path,
        url: &str,
    ) -> BridgeEnv {
        let mut env = BridgeEnv::new(ov.url(), pd.events_url(), dir);
        env.state_path = None;
        env.set("BRIDGE_STATE__BACKEND", "postgres");
        env.set("BRIDGE_STATE__URL", url);
        env.set("BRIDGE_PAGERDUTY__CONCURRENCY", "32");
        env
    }

    /// Polls `f` off the async workers (it talks to the database) until it holds.
    async fn eventually(within: Duration, f: impl Fn() -> bool + Send + Sync + 'static) -> bool {
        let f = std::sync::Arc::new(f);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let g = f.clone();
            if tokio::task::spawn_blocking(move || g()).await.unwrap() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigkill_and_restart_on_postgres_pages_nothing_twice_and_resolves_the_cleared() {
        let Some(pg) = PgServer::start("sigkill_and_restart_on_postgres") else {
            return;
        };
        let (url, _) = pg.fresh_database();
        let loopback = "127.0.0.1:0".parse().unwrap();
        let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
        let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = env_for(&ov, &pd, dir.path(), &url);
        let ids: Vec<u64> = ov
            .handle
            .generate(&GenerateSpec {
                count: 50,
                ..Default::default()
            })
            .collect();

        let mut child = env.spawn();
        let reader = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || super::open(&url).unwrap())
                .await
                .unwrap()
        };
        let reader = std::sync::Arc::new(reader);
        assert!(
            pd.wait_until(Duration::from_secs(30), |pd| pd.incidents().len() == 50)
                .await,
            "50 incidents:\n{}",
            env.log()
        );
        // Killed only once the ledger has all 50 in the database: what survives is the point.
        let r = reader.clone();
        assert!(
            eventually(Duration::from_secs(10), move || r
                .counts()
                .is_ok_and(|c| c.ledger == 50))
            .await
        );
        sigkill(&mut child);

        let cleared: Vec<u64> = ids.iter().copied().take(10).collect();
        for id in &cleared {
            ov.handle.clear(*id).unwrap();
        }
        let mut child = env.spawn();
        let resolved = pd
            .wait_until(Duration::from_secs(30), |pd| {
                pd.counters().incidents_resolved == 10
            })
            .await;
        // A little longer, so a re-page after the restart would have happened by now.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let status = sigterm(&mut child, Duration::from_secs(10));
        let by_key = incidents_by_key(&pd);
        let c = pd.counters();
        eprintln!(
            "postgres restart: {} events accepted, {} incidents opened, {} resolved",
            c.accepted, c.incidents_opened, c.incidents_resolved
        );
        assert!(resolved, "the cleared ones resolve:\n{}", env.log());
        assert_eq!(c.incidents_opened, 50, "nothing opened twice");
        assert_eq!(
            c.accepted, 60,
            "50 triggers + 10 resolves, nothing sent again"
        );
        for id in &ids {
            let want = if cleared.contains(id) {
                IncidentStatus::Resolved
            } else {
                IncidentStatus::Triggered
            };
            assert_eq!(by_key[&dedup_key(*id)], vec![want], "alert {id}");
        }
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        let log = env.log();
        assert!(!log.contains(PASSWORD), "the password reached the log");
        assert!(log.contains("postgres"), "the log names the backend");
        pd.shutdown();
        ov.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgres_restart_in_the_middle_of_a_storm_loses_and_doubles_nothing() {
        const STORM: usize = 1000;
        let Some(pg) = PgServer::start("a_postgres_restart_in_the_middle_of_a_storm") else {
            return;
        };
        let pg = std::sync::Arc::new(pg);
        let (url, _) = pg.fresh_database();
        let loopback = "127.0.0.1:0".parse().unwrap();
        let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
        let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let env = env_for(&ov, &pd, dir.path(), &url);
        let mut child = env.spawn();
        // The bridge is up (its first sync done) before the storm starts.
        for _ in 0..300 {
            if env.log().contains("OneView full sync finished") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ids: Vec<u64> = ov
            .handle
            .generate(&GenerateSpec {
                count: STORM,
                ..Default::default()
            })
            .collect();
        pd.wait_until(Duration::from_secs(30), |pd| {
            pd.incidents().len() >= STORM / 10
        })
        .await;
        let at_restart = pd.incidents().len();
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.restart())
            .await
            .unwrap();

        let all = pd
            .wait_until(Duration::from_secs(60), |pd| pd.incidents().len() >= STORM)
            .await;
        let reader = std::sync::Arc::new({
            let url = url.clone();
            tokio::task::spawn_blocking(move || super::open(&url).unwrap())
                .await
                .unwrap()
        });
        let r = reader.clone();
        let caught_up = eventually(Duration::from_secs(20), move || {
            r.counts().is_ok_and(|c| c.ledger == STORM && c.outbox == 0)
        })
        .await;
        let status = sigterm(&mut child, Duration::from_secs(10));
        let c = pd.counters();
        let by_key = incidents_by_key(&pd);
        eprintln!(
            "postgres restart mid-storm: restarted after {at_restart} of {STORM} incidents; {} events accepted, {} incidents opened",
            c.accepted, c.incidents_opened
        );
        assert!(all, "every alert paged:\n{}", env.log());
        assert!(
            at_restart < STORM,
            "the restart fell in the middle of the storm"
        );
        assert_eq!(c.incidents_opened, STORM as u64, "nothing opened twice");
        assert_eq!(c.accepted, STORM as u64, "nothing sent twice");
        assert!(ids.iter().all(|id| by_key[&dedup_key(*id)].len() == 1));
        assert!(
            caught_up,
            "the ledger in PostgreSQL has all {STORM} and the outbox is empty: {:?}",
            reader.counts()
        );
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        let log = env.log();
        assert!(
            log.contains("state database 127.0.0.1:"),
            "the outage was felt (a failed commit logged, naming the database)"
        );
        assert!(!log.contains(PASSWORD));
        pd.shutdown();
        ov.stop().await;
    }
}

#[test]
fn tls_sslmodes_verify_the_server_as_libpq_does() {
    let Some(pg) = PgServer::start_tls("tls_sslmodes_verify_the_server_as_libpq_does") else {
        return;
    };
    let (_, db) = pg.fresh_database();
    let with = |host: &str, mode: &str, ca: bool| {
        let mut o = opts(&pg.url_with(&db, host, mode));
        if ca {
            o.ca_file = Some(PgServer::tls_ca());
        }
        PostgresStore::open(&o)
    };
    // The role is let in over TLS only (hostssl): each Ok below is a TLS session.
    for (host, mode, ca) in [
        ("127.0.0.1", "verify-full", true),
        ("localhost", "verify-full", true),
        ("127.0.0.1", "verify-ca", true),
        ("127.0.0.1", "require", true),
        ("127.0.0.1", "require", false),
        ("127.0.0.1", "prefer", false),
    ] {
        let s = with(host, mode, ca).unwrap_or_else(|e| panic!("{host} {mode} ca={ca}: {e}"));
        s.apply(&batch(0, 1)).ok();
        assert_eq!(s.load().unwrap().next_seq, 1, "{host} {mode}");
    }
    // Not our CA: the system roots do not know the test CA.
    let err = with("127.0.0.1", "verify-full", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");
    no_password(&err);
    // Plain TCP is refused by the server (hostssl only).
    let err = with("127.0.0.1", "disable", false).unwrap_err().to_string();
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
    no_password(&err);
}

#[test]
fn random_batches_leave_postgres_exactly_as_memory() {
    use rand::{Rng, SeedableRng};
    let Some(pg) = pg_support::shared("random_batches_leave_postgres_exactly_as_memory") else {
        return;
    };
    let (url, _) = pg.fresh_database();
    let p = open(&url).unwrap();
    let m = bridge::state::MemoryStore::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut next = 0u64;
    let key = |rng: &mut rand::rngs::StdRng| format!("ov1/rest/alerts/{}", rng.random_range(0..8));
    for round in 0..300 {
        let mut ops = Vec::new();
        let mut batch_next = next;
        for _ in 0..rng.random_range(0..12) {
            let seq_near =
                |rng: &mut rand::rngs::StdRng, top: u64| top.saturating_sub(rng.random_range(0..6));
            let op = match rng.random_range(0..11) {
                0..=2 => {
                    let seq = if rng.random_range(0..40) == 0 {
                        seq_near(&mut rng, batch_next) // sometimes a reused seq
                    } else {
                        batch_next + rng.random_range(0..2)
                    };
                    batch_next = batch_next.max(seq + 1);
                    enqueue(seq, &key(&mut rng), Action::Trigger)
                }
                3 | 4 => {
                    let action = if rng.random_bool(0.5) {
                        Action::Trigger
                    } else {
                        Action::Resolve
                    };
                    accepted(
                        seq_near(&mut rng, batch_next),
                        &key(&mut rng),
                        action,
                        t(rng.random_range(0..100)),
                    )
                }
                5 => Op::Cancelled {
                    seq: seq_near(&mut rng, batch_next),
                },
                6 => {
                    let k = key(&mut rng);
                    Op::DeadLetter {
                        seq: seq_near(&mut rng, batch_next),
                        entry: state_common::dead_letter(&k, t(rng.random_range(0..100))),
                    }
                }
                7 => Op::RemoveDeadLetter { key: key(&mut rng) },
                8 => Op::Watermark {
                    appliance: format!("ov{}", rng.random_range(0..3)),
                    value: rng.random_range(0..1000).to_string(),
                },
                9 => Op::ForgetKey { key: key(&mut rng) },
                _ => Op::Silence(bridge::state::SilenceRecord {
                    id: format!("silence-{}", rng.random_range(0..5)),
                    ends_at: t(rng.random_range(0..100)),
                    body: format!("{{\"n\":{}}}", rng.random_range(0..1000)),
                }),
            };
            ops.push(op);
        }
        let (pr, mr) = (p.apply(&ops), m.apply(&ops));
        assert_eq!(
            pr.as_ref().map_err(|e| e.to_string()),
            mr.as_ref().map_err(|e| e.to_string()),
            "round {round}: {ops:?}"
        );
        if round % 50 == 49 {
            let cutoff = t(50);
            assert_eq!(p.prune(cutoff).unwrap(), m.prune(cutoff).unwrap());
        }
        assert_eq!(
            p.load().unwrap(),
            m.load().unwrap(),
            "round {round}: {ops:?}"
        );
        next = m.load().unwrap().next_seq;
    }
    let snap = m.load().unwrap();
    assert!(
        !snap.ledger.is_empty()
            && !snap.dead_letters.is_empty()
            && !snap.outbox.is_empty()
            && !snap.silences.is_empty(),
        "the rounds exercised every table"
    );
}
