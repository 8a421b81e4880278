//! Crash atomicity: a child process applies batches to a file store in a loop and is killed with
//! SIGKILL at an arbitrary instant, several times over. After every kill the reopened store
//! holds whole batches only, and everything the child had reported committed.
//!
//! Each batch `i` accepts every event of batch `i - 1` (outbox -> ledger), enqueues `EVENTS`
//! new events and sets the watermark to `i`. So the only valid states are "batch `w` was the
//! last one": outbox = exactly batch `w`'s events, ledger = every event of batches `0..w`.
//! The assertions hold wherever the kill lands; nothing depends on timing.

mod state_common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use bridge::state::{Action, FileStore, Op, StateStore};
use state_common::{accepted, entry, payload, t};

const EVENTS: u64 = 64;
const CHILD_ENV: &str = "BRIDGE_STATE_CRASH_CHILD";

fn key(batch: u64, j: u64) -> String {
    format!("ov1/rest/alerts/{batch}-{j}")
}

fn batch_ops(i: u64) -> Vec<Op> {
    let mut ops = Vec::new();
    if i > 0 {
        for j in 0..EVENTS {
            ops.push(accepted(
                (i - 1) * EVENTS + j,
                &key(i - 1, j),
                Action::Trigger,
                t(i),
            ));
        }
    }
    for j in 0..EVENTS {
        let mut e = entry(i * EVENTS + j, &key(i, j), Action::Trigger);
        // Big enough that a batch spans many pages, so a kill can land inside a commit.
        e.payload = payload(&e.key, Action::Trigger, 1500);
        ops.push(Op::Enqueue(e));
    }
    ops.push(Op::Watermark {
        appliance: "ov1".into(),
        value: i.to_string(),
    });
    ops
}

/// Not a test on its own: the body of the child process, which `crash_*` starts.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = FileStore::open(Path::new(&path)).unwrap();
    let start = store
        .load()
        .unwrap()
        .watermarks
        .get("ov1")
        .map_or(0, |w| w.parse::<u64>().unwrap() + 1);
    let mut out = std::io::stdout().lock();
    for i in start.. {
        store.apply(&batch_ops(i)).unwrap();
        writeln!(out, "committed {i}").unwrap();
        out.flush().unwrap();
    }
}

/// Checks the store holds exactly the state after some whole batch; returns that batch.
fn check_whole_batches(path: &Path) -> u64 {
    let store = FileStore::open(path).unwrap();
    let snap = store.load().unwrap();
    let w: u64 = snap.watermarks["ov1"].parse().unwrap();
    let outbox: Vec<(u64, String)> = snap.outbox.iter().map(|e| (e.seq, e.key.clone())).collect();
    let want: Vec<(u64, String)> = (0..EVENTS).map(|j| (w * EVENTS + j, key(w, j))).collect();
    assert_eq!(outbox, want, "outbox after last batch {w}");
    for e in &snap.outbox {
        assert_eq!(
            e.payload,
            payload(&e.key, Action::Trigger, 1500),
            "payload intact"
        );
    }
    assert_eq!(
        snap.ledger.len() as u64,
        w * EVENTS,
        "ledger after last batch {w}"
    );
    for b in 0..w {
        for j in 0..EVENTS {
            let l = &snap.ledger[&key(b, j)];
            assert_eq!((l.action, l.at), (Action::Trigger, t(b + 1)));
        }
    }
    assert_eq!(snap.next_seq, (w + 1) * EVENTS);
    w
}

#[test]
fn sigkill_at_any_instant_leaves_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let exe = std::env::current_exe().unwrap();
    let mut last_reported = None;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "crash_child_writer",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Let each round commit a different number of batches, then kill it mid-flight.
        let wanted = 5 + round * 3;
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest prints "test crash_child_writer ... " in front of the first line.
            if let Some((_, n)) = line.rsplit_once("committed ") {
                last_reported = Some(n.parse::<u64>().unwrap());
                seen += 1;
                if seen == wanted {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL: no destructor, no flush, no unlock.
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "the child must have been killed: {status}"
        );
        let reported = last_reported.expect("the child committed nothing");

        let w = check_whole_batches(&path);
        // Reported means apply() returned, so it is durable; one more may have landed.
        assert!(
            w == reported || w == reported + 1,
            "round {round}: child reported batch {reported}, store holds {w}"
        );
        println!("round {round}: child reported {reported}, store holds whole batch {w}");
    }
}
