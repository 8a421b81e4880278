//! Retention keeps the state file bounded: 200,000 alerts raised, accepted, cleared and
//! resolved in rounds, with a prune between rounds, and the file stops growing once freed
//! pages are reused.
//!
//! Also home of an ignored throughput measurement (no timing assertions anywhere):
//! `cargo test --release --test state_retention -- --ignored --nocapture throughput`.

mod state_common;

use std::time::{Duration, Instant};

use bridge::state::{Action, FileStore, Op, OutboxEntry, StateStore};
use state_common::t;

const ALERTS: u64 = 200_000;
const ROUNDS: u64 = 10;
const BATCH: u64 = 2000;
/// Seconds between rounds on the simulated clock.
const ROUND_SECS: u64 = 86_400;

/// A realistic event body (about 600 bytes), built cheaply: 400,000 of them are made.
fn event(key: &str, action: Action) -> String {
    let action = match action {
        Action::Trigger => "trigger",
        Action::Resolve => "resolve",
    };
    format!(
        r#"{{"routing_key":"<routing key>","event_action":"{action}","dedup_key":"oneview:{key}","payload":{{"summary":"Alert {key}: {}","source":"enclosure-1, bay 3","severity":"critical","custom_details":{{"alertTypeID":"Trap.cpqHeThermalTempFailed"}}}},"links":[{{"href":"https://ov1.example.com/#/activity/r/rest/alerts/1","text":"OneView"}}]}}"#,
        "Temperature sensor 12 reports a critical condition. ".repeat(6)
    )
}

fn outbox(seq: u64, key: &str, action: Action, at: u64) -> Op {
    Op::Enqueue(OutboxEntry {
        seq,
        key: key.to_owned(),
        action,
        priority: 0,
        enqueued_at: t(at),
        fingerprint: format!("{seq:016x}"),
        payload: event(key, action),
    })
}

fn accepted(seq: u64, key: &str, action: Action, at: u64) -> Op {
    Op::Accepted {
        seq,
        key: key.to_owned(),
        action,
        fingerprint: format!("{seq:016x}"),
        at: t(at),
        route: "default".to_owned(),
    }
}

#[test]
fn file_size_levels_off_with_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = FileStore::open(&path).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let per_round = ALERTS / ROUNDS;
    let mut seq = 0;
    let mut sizes = vec![size()];
    for round in 0..ROUNDS {
        let now = round * ROUND_SECS;
        // Every alert of the round is a new one: new keys, as OneView issues new alert ids.
        let keys: Vec<String> = (round * per_round..(round + 1) * per_round)
            .map(|i| format!("ov1/rest/alerts/{i}"))
            .collect();
        for chunk in keys.chunks(BATCH as usize) {
            let first = seq;
            // Trigger written before the send ...
            let batch: Vec<Op> = chunk
                .iter()
                .enumerate()
                .map(|(j, k)| outbox(first + j as u64, k, Action::Trigger, now))
                .collect();
            store.apply(&batch).unwrap();
            // ... accepted by PagerDuty, then the alert clears and the resolve is queued ...
            let mut batch: Vec<Op> = Vec::new();
            for (j, k) in chunk.iter().enumerate() {
                batch.push(accepted(first + j as u64, k, Action::Trigger, now));
                batch.push(outbox(
                    first + (chunk.len() + j) as u64,
                    k,
                    Action::Resolve,
                    now,
                ));
            }
            store.apply(&batch).unwrap();
            // ... and accepted.
            let batch: Vec<Op> = chunk
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    accepted(
                        first + (chunk.len() + j) as u64,
                        k,
                        Action::Resolve,
                        now + 60,
                    )
                })
                .collect();
            store.apply(&batch).unwrap();
            seq += 2 * chunk.len() as u64;
        }
        // Retention of one round: the previous round's resolves go now, this round's stay.
        let pruned = store.prune(t(now)).unwrap();
        let expect = if round == 0 { 0 } else { per_round as usize };
        assert_eq!(pruned, expect, "round {round}");
        sizes.push(size());
    }
    let snap = store.load().unwrap();
    assert!(snap.outbox.is_empty());
    assert_eq!(
        snap.ledger.len() as u64,
        per_round,
        "only the last round is retained"
    );

    let growth: Vec<i64> = sizes
        .windows(2)
        .map(|w| w[1] as i64 - w[0] as i64)
        .collect();
    println!("file size after each round of {per_round} alerts (bytes): {sizes:?}");
    println!("growth per round (bytes): {growth:?}");
    let first = growth[0];
    assert!(first > 0);
    // Round 1 still holds round 0's entries while writing its own (one round retained), so
    // the steady state starts at round 2.
    for (round, g) in growth.iter().enumerate().skip(2) {
        assert!(
            *g * 10 < first,
            "round {round} grew the file by {g} bytes, more than 10% of the first round's {first}; sizes {sizes:?}"
        );
    }
}

#[test]
#[ignore = "a measurement, not a test: run in release with --nocapture"]
fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(&dir.path().join("state.redb")).unwrap();
    let events = 100_000u64;
    let batch = 256u64;
    // Only the time inside apply() counts: building events is the pipeline's cost.
    let mut in_store = Duration::ZERO;
    let mut seq = 0;
    while seq < events {
        let keys: Vec<String> = (seq..seq + batch)
            .map(|i| format!("ov1/rest/alerts/{i}"))
            .collect();
        let enq: Vec<Op> = keys
            .iter()
            .enumerate()
            .map(|(j, k)| outbox(seq + j as u64, k, Action::Trigger, 0))
            .collect();
        let acc: Vec<Op> = keys
            .iter()
            .enumerate()
            .map(|(j, k)| accepted(seq + j as u64, k, Action::Trigger, 1))
            .collect();
        let started = Instant::now();
        store.apply(&enq).unwrap();
        store.apply(&acc).unwrap();
        in_store += started.elapsed();
        seq += batch;
    }
    let secs = in_store.as_secs_f64();
    println!(
        "{seq} events, each enqueued then accepted in batches of {batch} ({} durable commits): {secs:.2}s in the store, {:.0} events/s",
        2 * seq / batch,
        seq as f64 / secs
    );
}
