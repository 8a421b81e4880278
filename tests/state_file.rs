//! The file store across process lifetimes and on bad files: reopening keeps everything, and a
//! file the bridge cannot use is refused with an error naming it, never replaced by an empty
//! state and never a panic.

mod state_common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge::config::StateConfig;
use bridge::state::{self, Action, FileStore, Op, SCHEMA_VERSION, StateError, StateStore};
use state_common::{accepted, dead_letter, enqueue, t};

fn state_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("state.redb")
}

/// A state with something in every table.
fn fill(s: &dyn StateStore) {
    s.apply(&[
        enqueue(0, "ov1/rest/alerts/1", Action::Trigger),
        enqueue(1, "ov1/rest/alerts/2", Action::Trigger),
        enqueue(2, "ov1/rest/alerts/3", Action::Trigger),
        Op::Watermark {
            appliance: "ov1".into(),
            value: "2026-11-22T05:00:00.000Z".into(),
        },
    ])
    .unwrap();
    s.apply(&[
        accepted(0, "ov1/rest/alerts/1", Action::Trigger, t(1)),
        Op::DeadLetter {
            seq: 1,
            entry: dead_letter("ov1/rest/alerts/2", t(2)),
        },
        enqueue(7, "ov1/rest/alerts/1", Action::Resolve),
    ])
    .unwrap();
}

fn expect_err<T>(r: Result<T, StateError>) -> StateError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

/// The message tells the operator which file and how to recover.
fn assert_names_file_and_recovery(msg: &str, path: &Path) {
    let p = path.display().to_string();
    assert!(msg.contains(&p), "message does not name {p}: {msg}");
    assert!(
        msg.contains(&format!("mv {p} {p}.corrupt")),
        "message does not say how to move it aside: {msg}"
    );
    assert!(msg.contains("full sync"), "{msg}");
}

#[test]
fn open_picks_the_store_from_config() {
    let mem = state::open(&StateConfig {
        path: None,
        retention: Duration::from_secs(3600),
        ..StateConfig::default()
    })
    .unwrap();
    assert_eq!(mem.kind(), "memory");
    assert!(mem.path().is_none());

    let dir = tempfile::tempdir().unwrap();
    let file = state::open(&StateConfig {
        path: Some(state_path(&dir)),
        retention: Duration::from_secs(3600),
        ..StateConfig::default()
    })
    .unwrap();
    assert_eq!(file.kind(), "file");
    assert_eq!(file.path(), Some(state_path(&dir).as_path()));
    assert!(state_path(&dir).is_file());
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = FileStore::open(&state_path(&dir)).unwrap();
        fill(&s);
        s.load().unwrap()
        // Dropped here without any shutdown call: there is none, every apply is durable.
    };
    assert_eq!(before.outbox.len(), 2);
    assert_eq!(before.next_seq, 8);

    let s = FileStore::open(&state_path(&dir)).unwrap();
    assert_eq!(s.load().unwrap(), before);
    // And it keeps working: seq numbering continues, reuse is still refused.
    assert!(matches!(
        s.apply(&[enqueue(3, "x", Action::Trigger)]),
        Err(StateError::SeqReused {
            seq: 3,
            next_seq: 8
        })
    ));
    s.apply(&[enqueue(8, "x", Action::Trigger)]).unwrap();
    drop(s);
    let s = FileStore::open(&state_path(&dir)).unwrap();
    assert_eq!(s.load().unwrap().next_seq, 9);
}

#[test]
fn garbage_file_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    // Deterministic noise (xorshift), big enough to look like a real file, and a short one.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let noise: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    for content in [noise.as_slice(), b"not a database\n".as_slice()] {
        std::fs::write(&path, content).unwrap();
        let err = expect_err(FileStore::open(&path));
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        assert_names_file_and_recovery(&err.to_string(), &path);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            content,
            "a refused file must not be modified"
        );
        println!("{err}");
    }
}

#[test]
fn a_truncated_state_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    fill(&FileStore::open(&path).unwrap());
    let bytes = std::fs::read(&path).unwrap();
    // Keep the header but cut the body: what a half-copied backup looks like.
    std::fs::write(&path, &bytes[..bytes.len().min(700)]).unwrap();
    match FileStore::open(&path).and_then(|s| s.load()) {
        Err(err) => {
            println!("{err}");
            assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
            assert_names_file_and_recovery(&err.to_string(), &path);
        }
        Ok(snap) => panic!("a truncated file opened as {snap:?}"),
    }
}

#[test]
fn a_record_that_does_not_decode_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    fill(&FileStore::open(&path).unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("ledger");
            let mut t = txn.open_table(def).unwrap();
            t.insert("ov1/rest/alerts/1", b"{not json".as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let err = expect_err(FileStore::open(&path).and_then(|s| s.load()));
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("ov1/rest/alerts/1"), "{msg}");
    assert_names_file_and_recovery(&msg, &path);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    fill(&FileStore::open(&path).unwrap());
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
            let mut t = txn.open_table(def).unwrap();
            t.insert("schema_version", SCHEMA_VERSION + 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = expect_err(FileStore::open(&path));
    println!("{err}");
    assert!(
        matches!(err, StateError::NewerSchema { found, supported, .. } if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("newer version of the bridge"), "{msg}");
    assert_names_file_and_recovery(&msg, &path);
}

#[test]
fn another_programs_redb_file_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("users");
            txn.open_table(def).unwrap().insert("alice", "x").unwrap();
        }
        txn.commit().unwrap();
    }
    let err = expect_err(FileStore::open(&path));
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("not a bridge state file"), "{err}");
}

#[test]
fn a_second_opener_is_told_the_file_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = state_path(&dir);
    let _first = FileStore::open(&path).unwrap();
    let err = expect_err(FileStore::open(&path));
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
}

/// A directory the bridge may not write into. Root ignores permission bits, so when the test
/// runs as root it falls back to sysfs, which refuses file creation to everyone.
fn unwritable_dir(tmp: &tempfile::TempDir) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    if std::fs::write(ro.join("probe"), b"").is_err() {
        return Some(ro);
    }
    let sys = PathBuf::from("/sys");
    if sys.is_dir() && std::fs::write(sys.join("bridge-probe"), b"").is_err() {
        return Some(sys);
    }
    None
}

#[test]
fn a_read_only_directory_is_a_clear_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(dir) = unwritable_dir(&tmp) else {
        eprintln!("skipped: no unwritable directory available to this user");
        return;
    };
    let path = dir.join("state.redb");
    let err = expect_err(FileStore::open(&path));
    println!("{err}");
    let StateError::Io { source, .. } = &err else {
        panic!("expected an I/O error, got {err:?}")
    };
    assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied);
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("writable"), "{msg}");
}

#[test]
fn a_path_that_is_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = expect_err(FileStore::open(dir.path()));
    assert!(matches!(err, StateError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
}

#[test]
fn a_device_that_cannot_hold_a_file_is_an_error_not_a_panic() {
    // /dev/full opens, then refuses to be sized or written (ENOSPC on write).
    let path = Path::new("/dev/full");
    if !path.exists() {
        return;
    }
    let err = expect_err(
        FileStore::open(path).and_then(|s| s.apply(&[enqueue(0, "a", Action::Trigger)])),
    );
    println!("{err}");
    assert!(err.to_string().contains("/dev/full"), "{err}");
}

/// Disk full for real needs a small filesystem, which a test cannot mount on its own. Run it
/// against one: `mount -t tmpfs -o size=2m tmpfs /mnt/small &&
/// BRIDGE_TEST_SMALL_FS=/mnt/small cargo test --test state_file -- --ignored disk_full`.
#[test]
#[ignore = "needs BRIDGE_TEST_SMALL_FS pointing at a small, empty filesystem"]
fn disk_full_is_a_clear_error_and_keeps_what_was_committed() {
    let Some(dir) = std::env::var_os("BRIDGE_TEST_SMALL_FS") else {
        panic!("set BRIDGE_TEST_SMALL_FS");
    };
    let path = PathBuf::from(dir).join("state.redb");
    let _ = std::fs::remove_file(&path);
    let s = FileStore::open(&path).unwrap();
    let mut committed = 0u64;
    let err = loop {
        let batch: Vec<Op> = (committed..committed + 64)
            .map(|i| {
                let mut e =
                    state_common::entry(i, &format!("ov1/rest/alerts/{i}"), Action::Trigger);
                e.payload = state_common::payload(&e.key, Action::Trigger, 2000);
                Op::Enqueue(e)
            })
            .collect();
        match s.apply(&batch) {
            Ok(()) => committed += 64,
            Err(e) => break e,
        }
        assert!(committed < 10_000_000, "the filesystem never filled up");
    };
    println!("after {committed} entries: {err}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    // Later writes fail cleanly too (no panic), whatever state the engine is in.
    let again = s.apply(&[enqueue(committed + 1_000_000, "x", Action::Trigger)]);
    println!("next write: {again:?}");
    assert!(again.is_err());
    drop(s);
    // After a restart everything that was committed is there.
    let s = FileStore::open(&path).unwrap();
    assert_eq!(s.load().unwrap().outbox.len() as u64, committed);
}
