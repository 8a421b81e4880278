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
        "1:1"
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
                supported: 1,
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
    assert!(msg.contains("retries"), "{msg}");
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
