//! The behaviour every [`StateStore`] must have, run against all implementations: each
//! `fn` below is one behaviour, and `suite!` turns it into a test for `MemoryStore`, one for
//! `FileStore` and one for `PostgresStore` (on a real PostgreSQL, see `tests/pg_support`).

mod pg_support;
mod state_common;

use std::sync::Arc;
use std::thread;

use bridge::state::{
    Action, FileStore, LedgerEntry, MemoryStore, Op, PostgresOptions, PostgresStore, SilenceRecord,
    Snapshot, StateError, StateStore,
};
use state_common::{accepted, dead_letter, enqueue, entry, t};

/// The store under test plus whatever must outlive it (the file store's directory).
struct Subject {
    store: Arc<dyn StateStore>,
    _dir: Option<tempfile::TempDir>,
}

fn memory() -> Subject {
    Subject {
        store: Arc::new(MemoryStore::new()),
        _dir: None,
    }
}

fn file() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("state.redb")).unwrap();
    Subject {
        store: Arc::new(store),
        _dir: Some(dir),
    }
}

/// A store on a fresh database of the binary's shared server; `None` (SKIPPED printed)
/// without PostgreSQL.
fn postgres(test: &str) -> Option<Subject> {
    let server = pg_support::shared(test)?;
    let (url, _) = server.fresh_database();
    let store = PostgresStore::open(&PostgresOptions::new(url.into())).unwrap();
    Some(Subject {
        store: Arc::new(store),
        _dir: None,
    })
}

macro_rules! suite {
    ($($name:ident),+ $(,)?) => {
        mod memory_store {
            $(#[test] fn $name() { super::$name(&*super::memory().store) })+
        }
        mod file_store {
            $(#[test] fn $name() { let s = super::file(); super::$name(&*s.store) })+
        }
        mod postgres_store {
            $(#[test] fn $name() {
                let Some(s) = super::postgres(concat!("postgres_store::", stringify!($name))) else { return };
                super::$name(&*s.store)
            })+
        }
    };
}

suite!(
    a_new_store_is_empty,
    outbox_comes_back_in_seq_order_and_next_seq_follows,
    accepted_moves_the_event_from_outbox_to_ledger,
    enqueue_and_accepted_in_one_batch,
    cancelled_and_dead_letter_remove_from_outbox,
    dead_letters_replace_and_can_be_removed,
    watermarks_are_per_appliance,
    forget_key_drops_ledger_and_dead_letter_but_not_outbox,
    removing_an_absent_seq_is_not_an_error,
    a_batch_that_reuses_a_seq_changes_nothing,
    prune_removes_old_resolves_and_old_dead_letters_only,
    empty_batch_is_a_no_op,
    concurrent_writers_from_threads,
    silences_are_stored_replaced_and_pruned_after_they_end,
);

fn a_new_store_is_empty(s: &dyn StateStore) {
    assert_eq!(s.load().unwrap(), Snapshot::default());
    assert_eq!(s.prune(t(1_000_000)).unwrap(), 0);
}

fn outbox_comes_back_in_seq_order_and_next_seq_follows(s: &dyn StateStore) {
    // More than 255 entries, so a byte-wise key order would differ from the numeric one.
    let first: Vec<Op> = (0..300)
        .map(|i| enqueue(i, &format!("ov1/rest/alerts/{i}"), Action::Trigger))
        .collect();
    s.apply(&first).unwrap();
    s.apply(&[enqueue(1000, "ov1/rest/alerts/x", Action::Resolve)])
        .unwrap();
    let snap = s.load().unwrap();
    let seqs: Vec<u64> = snap.outbox.iter().map(|e| e.seq).collect();
    let mut want: Vec<u64> = (0..300).collect();
    want.push(1000);
    assert_eq!(seqs, want);
    assert_eq!(
        snap.next_seq, 1001,
        "a gap is allowed, the next seq follows the highest"
    );
    assert_eq!(
        snap.outbox[7],
        entry(7, "ov1/rest/alerts/7", Action::Trigger)
    );
}

fn accepted_moves_the_event_from_outbox_to_ledger(s: &dyn StateStore) {
    let k = "ov1/rest/alerts/49";
    s.apply(&[enqueue(0, k, Action::Trigger)]).unwrap();
    s.apply(&[accepted(0, k, Action::Trigger, t(10))]).unwrap();
    let snap = s.load().unwrap();
    assert!(snap.outbox.is_empty());
    assert_eq!(
        snap.ledger[k],
        LedgerEntry {
            action: Action::Trigger,
            fingerprint: format!("fp-{k}"),
            at: t(10),
            route: "default".into(),
        }
    );

    s.apply(&[enqueue(1, k, Action::Resolve)]).unwrap();
    assert_eq!(s.load().unwrap().ledger[k].action, Action::Trigger);
    s.apply(&[accepted(1, k, Action::Resolve, t(20))]).unwrap();
    let snap = s.load().unwrap();
    assert!(snap.outbox.is_empty());
    assert_eq!(snap.ledger[k].action, Action::Resolve);
    assert_eq!(snap.ledger[k].at, t(20));
    assert_eq!(snap.next_seq, 2);
}

fn enqueue_and_accepted_in_one_batch(s: &dyn StateStore) {
    s.apply(&[
        enqueue(0, "a", Action::Trigger),
        enqueue(1, "b", Action::Trigger),
        accepted(0, "a", Action::Trigger, t(1)),
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.outbox.len(), 1);
    assert_eq!(snap.outbox[0].key, "b");
    assert_eq!(snap.ledger.keys().collect::<Vec<_>>(), ["a"]);
}

fn cancelled_and_dead_letter_remove_from_outbox(s: &dyn StateStore) {
    s.apply(&[
        enqueue(0, "a", Action::Trigger),
        enqueue(1, "b", Action::Trigger),
        enqueue(2, "c", Action::Trigger),
    ])
    .unwrap();
    s.apply(&[
        Op::Cancelled { seq: 0 },
        Op::DeadLetter {
            seq: 1,
            entry: dead_letter("b", t(5)),
        },
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.outbox.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    assert_eq!(snap.dead_letters["b"], dead_letter("b", t(5)));
    assert!(
        snap.ledger.is_empty(),
        "neither cancel nor dead letter is an acceptance"
    );
}

fn dead_letters_replace_and_can_be_removed(s: &dyn StateStore) {
    s.apply(&[
        enqueue(0, "a", Action::Trigger),
        Op::DeadLetter {
            seq: 0,
            entry: dead_letter("a", t(1)),
        },
    ])
    .unwrap();
    let mut newer = dead_letter("a", t(2));
    newer.reason = "gave up after 12 attempts".into();
    s.apply(&[
        enqueue(1, "a", Action::Trigger),
        Op::DeadLetter {
            seq: 1,
            entry: newer.clone(),
        },
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.dead_letters.len(), 1);
    assert_eq!(snap.dead_letters["a"], newer);

    s.apply(&[Op::RemoveDeadLetter { key: "a".into() }])
        .unwrap();
    // Removing what is not there is fine too.
    s.apply(&[Op::RemoveDeadLetter { key: "zz".into() }])
        .unwrap();
    assert!(s.load().unwrap().dead_letters.is_empty());
}

fn watermarks_are_per_appliance(s: &dyn StateStore) {
    let wm = |a: &str, v: &str| Op::Watermark {
        appliance: a.into(),
        value: v.into(),
    };
    s.apply(&[
        wm("ov1", "2026-11-22T05:00:00Z"),
        wm("ov2", "2026-11-22T04:00:00Z"),
    ])
    .unwrap();
    s.apply(&[wm("ov1", "2026-11-22T05:01:00Z")]).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.watermarks["ov1"], "2026-11-22T05:01:00Z");
    assert_eq!(snap.watermarks["ov2"], "2026-11-22T04:00:00Z");
}

fn forget_key_drops_ledger_and_dead_letter_but_not_outbox(s: &dyn StateStore) {
    s.apply(&[
        enqueue(0, "a", Action::Trigger),
        accepted(0, "a", Action::Trigger, t(1)),
        enqueue(1, "a", Action::Resolve),
        enqueue(2, "b", Action::Trigger),
        Op::DeadLetter {
            seq: 2,
            entry: dead_letter("a", t(1)),
        },
        accepted(3, "b", Action::Trigger, t(1)),
    ])
    .unwrap();
    s.apply(&[Op::ForgetKey { key: "a".into() }]).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.ledger.keys().collect::<Vec<_>>(), ["b"]);
    assert!(snap.dead_letters.is_empty());
    assert_eq!(snap.outbox.len(), 1);
    assert_eq!(snap.outbox[0].key, "a");
}

fn removing_an_absent_seq_is_not_an_error(s: &dyn StateStore) {
    // A replayed batch after an uncertain failure must go through, and the 202 still counts.
    s.apply(&[
        accepted(42, "a", Action::Trigger, t(1)),
        Op::Cancelled { seq: 43 },
        Op::DeadLetter {
            seq: 44,
            entry: dead_letter("b", t(1)),
        },
    ])
    .unwrap();
    let snap = s.load().unwrap();
    assert_eq!(snap.ledger["a"].action, Action::Trigger);
    assert!(snap.dead_letters.contains_key("b"));
    assert_eq!(snap.next_seq, 0, "only Enqueue moves next_seq");
}

fn a_batch_that_reuses_a_seq_changes_nothing(s: &dyn StateStore) {
    s.apply(&[
        enqueue(0, "a", Action::Trigger),
        accepted(0, "a", Action::Trigger, t(1)),
    ])
    .unwrap();
    let before = s.load().unwrap();

    // Seq 0 is gone from the outbox but was used: reusing it would confuse a resumed outbox.
    let err = s
        .apply(&[
            Op::Watermark {
                appliance: "ov1".into(),
                value: "w".into(),
            },
            enqueue(1, "b", Action::Trigger),
            accepted(1, "b", Action::Trigger, t(2)),
            enqueue(0, "c", Action::Trigger),
        ])
        .unwrap_err();
    assert!(
        matches!(
            err,
            StateError::SeqReused {
                seq: 0,
                next_seq: 2
            }
        ),
        "{err}"
    );
    assert_eq!(s.load().unwrap(), before, "a failed batch leaves no trace");

    let err = s
        .apply(&[
            enqueue(5, "d", Action::Trigger),
            enqueue(5, "e", Action::Trigger),
        ])
        .unwrap_err();
    assert!(matches!(err, StateError::SeqReused { seq: 5, .. }), "{err}");
    assert_eq!(s.load().unwrap(), before);
}

fn prune_removes_old_resolves_and_old_dead_letters_only(s: &dyn StateStore) {
    s.apply(&[
        accepted(0, "old-resolved", Action::Resolve, t(10)),
        accepted(0, "cutoff-resolved", Action::Resolve, t(100)),
        accepted(0, "new-resolved", Action::Resolve, t(200)),
        // An incident still open in PagerDuty is never forgotten, however old.
        accepted(0, "old-triggered", Action::Trigger, t(1)),
        Op::DeadLetter {
            seq: 0,
            entry: dead_letter("old-dead", t(10)),
        },
        Op::DeadLetter {
            seq: 0,
            entry: dead_letter("new-dead", t(200)),
        },
        enqueue(0, "queued", Action::Trigger),
    ])
    .unwrap();
    assert_eq!(s.prune(t(100)).unwrap(), 2);
    let snap = s.load().unwrap();
    assert_eq!(
        snap.ledger.keys().collect::<Vec<_>>(),
        ["cutoff-resolved", "new-resolved", "old-triggered"]
    );
    assert_eq!(snap.dead_letters.keys().collect::<Vec<_>>(), ["new-dead"]);
    assert_eq!(snap.outbox.len(), 1, "prune never touches the outbox");
    assert_eq!(s.prune(t(100)).unwrap(), 0);
}

fn empty_batch_is_a_no_op(s: &dyn StateStore) {
    s.apply(&[]).unwrap();
    assert_eq!(s.load().unwrap(), Snapshot::default());
}

fn concurrent_writers_from_threads(s: &dyn StateStore) {
    // The store is shared behind an Arc by poller and sender threads; batches must not
    // interleave partially. Each thread owns one appliance's watermark and a range of keys.
    thread::scope(|scope| {
        for n in 0..4 {
            scope.spawn(move || {
                for i in 0..25 {
                    let key = format!("ov{n}/rest/alerts/{i}");
                    s.apply(&[
                        accepted(0, &key, Action::Trigger, t(i)),
                        Op::Watermark {
                            appliance: format!("ov{n}"),
                            value: i.to_string(),
                        },
                    ])
                    .unwrap();
                }
            });
        }
    });
    let snap = s.load().unwrap();
    assert_eq!(snap.ledger.len(), 100);
    for n in 0..4 {
        assert_eq!(snap.watermarks[&format!("ov{n}")], "24");
    }
}

fn silences_are_stored_replaced_and_pruned_after_they_end(s: &dyn StateStore) {
    let silence = |id: &str, ends: u64, body: &str| {
        Op::Silence(SilenceRecord {
            id: id.to_owned(),
            ends_at: t(ends),
            body: body.to_owned(),
        })
    };
    s.apply(&[
        silence("a", 50, r#"{"comment":"firmware"}"#),
        silence("b", 500, "{}"),
        enqueue(0, "k", Action::Trigger),
    ])
    .unwrap();
    // Expiring early stores the silence again with an earlier end.
    s.apply(&[silence("b", 90, r#"{"expired":true}"#)]).unwrap();
    let snap = s.load().unwrap();
    assert_eq!(
        snap.silences.values().cloned().collect::<Vec<_>>(),
        [
            SilenceRecord {
                id: "a".into(),
                ends_at: t(50),
                body: r#"{"comment":"firmware"}"#.into()
            },
            SilenceRecord {
                id: "b".into(),
                ends_at: t(90),
                body: r#"{"expired":true}"#.into()
            },
        ]
    );
    assert_eq!(snap.outbox.len(), 1);
    // Kept for the retention after they end, then pruned.
    assert_eq!(s.prune(t(50)).unwrap(), 0);
    assert_eq!(s.prune(t(60)).unwrap(), 1);
    assert_eq!(s.load().unwrap().silences.keys().collect::<Vec<_>>(), ["b"]);
    assert_eq!(s.prune(t(100)).unwrap(), 1);
    assert!(s.load().unwrap().silences.is_empty());
}
