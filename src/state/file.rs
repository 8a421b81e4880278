//! The file-backed [`StateStore`] on [redb](https://www.redb.org).
//!
//! ## Why redb rather than SQLite
//! The state is five key-value maps read whole at startup and written in small batches; nothing
//! needs SQL, joins or ad-hoc queries. redb is pure Rust (no C toolchain, no bundled SQLite to
//! keep patched, a static musl build stays trivial), has ACID transactions with copy-on-write
//! B-trees and checksummed commits, so a crash leaves the last committed transaction, and it
//! takes an exclusive file lock, so two pollers cannot share one file by mistake. SQLite
//! (rusqlite, bundled) would be equally durable and is better known to operators, but it costs
//! a C build, a schema in SQL strings and WAL/journal side files next to the state file. Both
//! reach thousands of events per second with one transaction per batch.
//!
//! ## Layout
//! Tables `meta` (`schema_version`, `next_seq`), `ledger` (alert key -> JSON [`LedgerEntry`]),
//! `outbox` (seq -> JSON [`OutboxEntry`]; redb orders `u64` keys numerically), `watermarks`
//! (appliance -> value), `dead_letters` (alert key -> [`DeadLetter`]) and `silences` (id ->
//! JSON [`SilenceRecord`]; added without a schema bump: opening an older file creates it). Records are JSON so a
//! field can be added with a serde default without a migration; [`SCHEMA_VERSION`] guards
//! every other change. Outbox entries and dead letters carry an event payload that is JSON
//! already; escaping it into a JSON string would cost CPU and a third more bytes, so those
//! records are stored as `[header length: u32 LE][JSON header, payload empty][payload bytes]`.
//!
//! The crate uses redb 2.6, the newest line whose minimum Rust (1.85) matches ours; files are
//! created in redb's v3 file format, which redb 3 and 4 open directly, so moving to a newer
//! redb needs no file upgrade.
//!
//! After a failed write (disk full, I/O error) redb refuses further writes until the file is
//! reopened; what was committed before stays intact. So a failed write marks the store for a
//! reopen, which the next write attempts (at most every [`REOPEN_EVERY`]): once the volume has
//! room again the store recovers on its own, and the journal writes what it kept meanwhile
//! (see `journal`). Until then writes answer [`StateError::Poisoned`].

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use redb::{
    Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
    WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    Counts, DeadLetter, LedgerEntry, Op, OutboxEntry, SCHEMA_VERSION, SilenceRecord, Snapshot,
    StateError, StateStore, check_seqs,
};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEDGER: TableDefinition<&str, &[u8]> = TableDefinition::new("ledger");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const WATERMARKS: TableDefinition<&str, &str> = TableDefinition::new("watermarks");
const DEAD_LETTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("dead_letters");
const SILENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("silences");
const TABLES: [&str; 6] = [
    "meta",
    "ledger",
    "outbox",
    "watermarks",
    "dead_letters",
    "silences",
];

const SCHEMA_KEY: &str = "schema_version";
const NEXT_SEQ_KEY: &str = "next_seq";

/// redb's page cache. The default (1 GiB) is sized for databases, not for a few megabytes of
/// delivery state in a pod with a memory limit.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// How often a store whose write failed tries to reopen its file.
pub const REOPEN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The redb file at `state.path`. Every `apply` is one durable (fsync'd) transaction.
pub struct FileStore {
    /// `None` between closing a database that failed a write and reopening it.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    /// Set after a failed write: the database must be reopened before the next write; holds
    /// when the last attempt was.
    reopen: Mutex<Option<Option<Instant>>>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens the state file at `path`, creating it (not its directory) when missing, and
    /// checks that it is a bridge state file this version can read.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let path = path.to_owned();
        let db = guard(&path, true, || open_db(&path))?;
        let store = Self {
            db: RwLock::new(Some(Arc::new(db))),
            path,
            reopen: Mutex::new(None),
        };
        guard(&store.path, true, || store.init())?;
        Ok(store)
    }

    /// The open database, or `Poisoned` while it is closed for a reopen.
    fn db(&self) -> Result<Arc<Database>, StateError> {
        self.db
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| StateError::Poisoned {
                path: self.path.clone(),
            })
    }

    /// After a failed write: closes and reopens the file (redb takes no write after an I/O
    /// error until then), at most every [`REOPEN_EVERY`].
    fn reopen_if_needed(&self) -> Result<(), StateError> {
        let mut pending = self.reopen.lock().unwrap_or_else(|e| e.into_inner());
        let Some(last) = *pending else {
            return Ok(());
        };
        if last.is_some_and(|t| t.elapsed() < REOPEN_EVERY) {
            return Err(StateError::Poisoned {
                path: self.path.clone(),
            });
        }
        *pending = Some(Some(Instant::now()));
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        // Close first: the file lock must be released before the file can be opened again.
        // Every user of the database is on this (the writer's) thread, so ours is the last
        // handle once taken out of the slot.
        if let Some(old) = slot.take()
            && let Err(still_used) = Arc::try_unwrap(old)
        {
            *slot = Some(still_used);
            return Err(StateError::Poisoned {
                path: self.path.clone(),
            });
        }
        let db = guard(&self.path, false, || open_db(&self.path))?;
        *slot = Some(Arc::new(db));
        *pending = None;
        tracing::info!(path = %self.path.display(), "state file reopened after a failed write");
        Ok(())
    }

    /// Marks the store for a reopen when a write failed for the file's sake.
    fn note_write_error(&self, e: Option<&StateError>) {
        if matches!(e, Some(StateError::Io { .. } | StateError::Poisoned { .. })) {
            let mut pending = self.reopen.lock().unwrap_or_else(|e| e.into_inner());
            if pending.is_none() {
                *pending = Some(None);
            }
        }
    }

    /// Stamps a new file with the schema version, or checks an existing file's.
    fn init(&self) -> Result<(), StateError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.err("open", e))?;
        let version = {
            let meta = txn.open_table(META).map_err(|e| self.err("open", e))?;
            meta.get(SCHEMA_KEY)
                .map_err(|e| self.err("open", e))?
                .map(|v| v.value())
        };
        match version {
            None => {
                // `open_table(META)` just created `meta`; anything else means this is some
                // other program's redb file, which must not be written over.
                let foreign: Vec<String> = txn
                    .list_tables()
                    .map_err(|e| self.err("open", e))?
                    .map(|t| t.name().to_owned())
                    .filter(|n| !TABLES.contains(&n.as_str()))
                    .collect();
                if !foreign.is_empty() {
                    return Err(self.corrupt(format!(
                        "a redb file but not a bridge state file (it has tables {foreign:?})"
                    )));
                }
                self.create_tables(&txn)?;
                let mut meta = txn
                    .open_table(META)
                    .map_err(|e| self.err("initialize", e))?;
                meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
                    .map_err(|e| self.err("initialize", e))?;
                drop(meta);
                txn.commit().map_err(|e| self.err("initialize", e))?;
                tracing::info!(path = %self.path.display(), schema = SCHEMA_VERSION, "created state file");
            }
            Some(v) if v > SCHEMA_VERSION => {
                return Err(StateError::NewerSchema {
                    path: self.path.clone(),
                    found: v,
                    supported: SCHEMA_VERSION,
                });
            }
            Some(0) => return Err(self.corrupt("schema version 0".to_owned())),
            // Migrations from older schema versions go here, in this transaction.
            Some(_) => {
                self.create_tables(&txn)?;
                txn.commit().map_err(|e| self.err("open", e))?;
            }
        }
        Ok(())
    }

    fn create_tables(&self, txn: &WriteTransaction) -> Result<(), StateError> {
        let e = |e: redb::TableError| self.err("initialize", e);
        txn.open_table(META).map_err(e)?;
        txn.open_table(LEDGER).map_err(e)?;
        txn.open_table(OUTBOX).map_err(e)?;
        txn.open_table(WATERMARKS).map_err(e)?;
        txn.open_table(DEAD_LETTERS).map_err(e)?;
        txn.open_table(SILENCES).map_err(e)?;
        Ok(())
    }

    fn err(&self, op: &'static str, e: impl Into<redb::Error>) -> StateError {
        redb_error(&self.path, op, e.into())
    }

    fn corrupt(&self, detail: String) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StateError> {
        serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(format!("{what} record {key:?} does not decode: {e}")))
    }

    /// Decodes a record written by [`encode_with_payload`].
    fn decode_with_payload<T: DeserializeOwned>(
        &self,
        what: &str,
        key: &str,
        bytes: &[u8],
        payload: impl FnOnce(&mut T) -> &mut String,
    ) -> Result<T, StateError> {
        let bad = |why: &str| self.corrupt(format!("{what} record {key:?} does not decode: {why}"));
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("shorter than its header length"))?;
        let len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| bad("header length"))?;
        if len > rest.len() {
            return Err(bad("header length beyond the record"));
        }
        let (header, body) = rest.split_at(len);
        let mut value: T = self.decode(what, key, header)?;
        *payload(&mut value) =
            String::from_utf8(body.to_vec()).map_err(|_| bad("payload is not UTF-8"))?;
        Ok(value)
    }

    fn load_inner(&self) -> Result<Snapshot, StateError> {
        let db = self.db()?;
        let txn = db.begin_read().map_err(|e| self.err("read", e))?;
        let read = |e: redb::Error| redb_error(&self.path, "read", e);
        let mut snap = Snapshot::default();

        let meta = txn.open_table(META).map_err(|e| read(e.into()))?;
        snap.next_seq = meta
            .get(NEXT_SEQ_KEY)
            .map_err(|e| read(e.into()))?
            .map_or(0, |v| v.value());

        let ledger = txn.open_table(LEDGER).map_err(|e| read(e.into()))?;
        for row in ledger.iter().map_err(|e| read(e.into()))? {
            let (k, v) = row.map_err(|e| read(e.into()))?;
            let entry: LedgerEntry = self.decode("ledger", k.value(), v.value())?;
            snap.ledger.insert(k.value().to_owned(), entry);
        }

        let outbox = txn.open_table(OUTBOX).map_err(|e| read(e.into()))?;
        for row in outbox.iter().map_err(|e| read(e.into()))? {
            let (k, v) = row.map_err(|e| read(e.into()))?;
            let entry: OutboxEntry = self.decode_with_payload(
                "outbox",
                &k.value().to_string(),
                v.value(),
                |e: &mut OutboxEntry| &mut e.payload,
            )?;
            if entry.seq != k.value() {
                return Err(self.corrupt(format!(
                    "outbox record {} holds sequence number {}",
                    k.value(),
                    entry.seq
                )));
            }
            snap.outbox.push(entry);
        }

        let watermarks = txn.open_table(WATERMARKS).map_err(|e| read(e.into()))?;
        for row in watermarks.iter().map_err(|e| read(e.into()))? {
            let (k, v) = row.map_err(|e| read(e.into()))?;
            snap.watermarks
                .insert(k.value().to_owned(), v.value().to_owned());
        }

        let dead = txn.open_table(DEAD_LETTERS).map_err(|e| read(e.into()))?;
        for row in dead.iter().map_err(|e| read(e.into()))? {
            let (k, v) = row.map_err(|e| read(e.into()))?;
            let entry: DeadLetter = self.decode_with_payload(
                "dead letter",
                k.value(),
                v.value(),
                |e: &mut DeadLetter| &mut e.payload,
            )?;
            snap.dead_letters.insert(k.value().to_owned(), entry);
        }

        let silences = txn.open_table(SILENCES).map_err(|e| read(e.into()))?;
        for row in silences.iter().map_err(|e| read(e.into()))? {
            let (k, v) = row.map_err(|e| read(e.into()))?;
            let r: SilenceRecord = self.decode("silence", k.value(), v.value())?;
            snap.silences.insert(k.value().to_owned(), r);
        }
        Ok(snap)
    }

    fn apply_inner(&self, batch: &[Op]) -> Result<(), StateError> {
        let db = self.db()?;
        let txn = db.begin_write().map_err(|e| self.err("write", e))?;
        let w = |e: redb::Error| redb_error(&self.path, "write", e);
        {
            let mut meta = txn.open_table(META).map_err(|e| w(e.into()))?;
            let next_seq = meta
                .get(NEXT_SEQ_KEY)
                .map_err(|e| w(e.into()))?
                .map_or(0, |v| v.value());
            let new_next_seq = check_seqs(batch, next_seq)?;
            let mut ledger = txn.open_table(LEDGER).map_err(|e| w(e.into()))?;
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| w(e.into()))?;
            let mut watermarks = txn.open_table(WATERMARKS).map_err(|e| w(e.into()))?;
            let mut dead = txn.open_table(DEAD_LETTERS).map_err(|e| w(e.into()))?;
            let mut silences = txn.open_table(SILENCES).map_err(|e| w(e.into()))?;
            for op in batch {
                match op {
                    Op::Enqueue(e) => {
                        let bytes = encode_outbox(e)?;
                        outbox
                            .insert(e.seq, bytes.as_slice())
                            .map_err(|e| w(e.into()))?;
                    }
                    Op::Accepted { seq, .. } => {
                        outbox.remove(*seq).map_err(|e| w(e.into()))?;
                        if let Some((key, entry)) = op.ledger_entry() {
                            // PagerDuty took an event for this key: an older rejection is moot.
                            dead.remove(key).map_err(|e| w(e.into()))?;
                            let bytes = encode("ledger entry", &entry)?;
                            ledger
                                .insert(key, bytes.as_slice())
                                .map_err(|e| w(e.into()))?;
                        }
                    }
                    Op::Cancelled { seq } => {
                        outbox.remove(*seq).map_err(|e| w(e.into()))?;
                    }
                    Op::DeadLetter { seq, entry } => {
                        outbox.remove(*seq).map_err(|e| w(e.into()))?;
                        let bytes = encode_dead_letter(entry)?;
                        dead.insert(entry.key.as_str(), bytes.as_slice())
                            .map_err(|e| w(e.into()))?;
                    }
                    Op::RemoveDeadLetter { key } => {
                        dead.remove(key.as_str()).map_err(|e| w(e.into()))?;
                    }
                    Op::Watermark { appliance, value } => {
                        watermarks
                            .insert(appliance.as_str(), value.as_str())
                            .map_err(|e| w(e.into()))?;
                    }
                    Op::ForgetKey { key } => {
                        ledger.remove(key.as_str()).map_err(|e| w(e.into()))?;
                        dead.remove(key.as_str()).map_err(|e| w(e.into()))?;
                    }
                    Op::Silence(r) => {
                        let bytes = encode("silence", r)?;
                        silences
                            .insert(r.id.as_str(), bytes.as_slice())
                            .map_err(|e| w(e.into()))?;
                    }
                }
            }
            if new_next_seq != next_seq {
                meta.insert(NEXT_SEQ_KEY, new_next_seq)
                    .map_err(|e| w(e.into()))?;
            }
        }
        // Any early return above drops `txn`, which aborts it: nothing of the batch is kept.
        txn.commit().map_err(|e| self.err("commit", e))
    }

    fn prune_inner(&self, older_than: SystemTime) -> Result<usize, StateError> {
        // Find candidates in a read transaction so the writer is not blocked during the scan;
        // each is checked again under the write transaction, as it may have changed since.
        let db = self.db()?;
        let (ledger_keys, dead_keys, silence_ids) = {
            let txn = db.begin_read().map_err(|e| self.err("read", e))?;
            let read = |e: redb::Error| redb_error(&self.path, "read", e);
            let mut ledger_keys = Vec::new();
            let ledger = txn.open_table(LEDGER).map_err(|e| read(e.into()))?;
            for row in ledger.iter().map_err(|e| read(e.into()))? {
                let (k, v) = row.map_err(|e| read(e.into()))?;
                let entry: LedgerEntry = self.decode("ledger", k.value(), v.value())?;
                if entry.prunable(older_than) {
                    ledger_keys.push(k.value().to_owned());
                }
            }
            let mut dead_keys = Vec::new();
            let dead = txn.open_table(DEAD_LETTERS).map_err(|e| read(e.into()))?;
            for row in dead.iter().map_err(|e| read(e.into()))? {
                let (k, v) = row.map_err(|e| read(e.into()))?;
                let entry: DeadLetter = self.decode_with_payload(
                    "dead letter",
                    k.value(),
                    v.value(),
                    |e: &mut DeadLetter| &mut e.payload,
                )?;
                if entry.at < older_than {
                    dead_keys.push(k.value().to_owned());
                }
            }
            let mut silence_ids = Vec::new();
            let silences = txn.open_table(SILENCES).map_err(|e| read(e.into()))?;
            for row in silences.iter().map_err(|e| read(e.into()))? {
                let (k, v) = row.map_err(|e| read(e.into()))?;
                let r: SilenceRecord = self.decode("silence", k.value(), v.value())?;
                if r.ends_at < older_than {
                    silence_ids.push(k.value().to_owned());
                }
            }
            (ledger_keys, dead_keys, silence_ids)
        };
        if ledger_keys.is_empty() && dead_keys.is_empty() && silence_ids.is_empty() {
            return Ok(0);
        }

        let txn = db.begin_write().map_err(|e| self.err("write", e))?;
        let w = |e: redb::Error| redb_error(&self.path, "write", e);
        let mut removed = 0;
        {
            let mut ledger = txn.open_table(LEDGER).map_err(|e| w(e.into()))?;
            for key in &ledger_keys {
                let still = match ledger.get(key.as_str()).map_err(|e| w(e.into()))? {
                    Some(v) => self
                        .decode::<LedgerEntry>("ledger", key, v.value())?
                        .prunable(older_than),
                    None => false,
                };
                if still {
                    ledger.remove(key.as_str()).map_err(|e| w(e.into()))?;
                    removed += 1;
                }
            }
            let mut dead = txn.open_table(DEAD_LETTERS).map_err(|e| w(e.into()))?;
            for key in &dead_keys {
                let still = match dead.get(key.as_str()).map_err(|e| w(e.into()))? {
                    Some(v) => {
                        self.decode_with_payload(
                            "dead letter",
                            key,
                            v.value(),
                            |e: &mut DeadLetter| &mut e.payload,
                        )?
                        .at < older_than
                    }
                    None => false,
                };
                if still {
                    dead.remove(key.as_str()).map_err(|e| w(e.into()))?;
                    removed += 1;
                }
            }
            let mut silences = txn.open_table(SILENCES).map_err(|e| w(e.into()))?;
            for id in &silence_ids {
                // Extended since the scan: kept.
                let still = match silences.get(id.as_str()).map_err(|e| w(e.into()))? {
                    Some(v) => {
                        self.decode::<SilenceRecord>("silence", id, v.value())?
                            .ends_at
                            < older_than
                    }
                    None => false,
                };
                if still {
                    silences.remove(id.as_str()).map_err(|e| w(e.into()))?;
                    removed += 1;
                }
            }
        }
        txn.commit().map_err(|e| self.err("commit", e))?;
        Ok(removed)
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<Snapshot, StateError> {
        guard(&self.path, true, || self.load_inner())
    }

    fn apply(&self, batch: &[Op]) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.reopen_if_needed()?;
        let r = guard(&self.path, false, || self.apply_inner(batch));
        self.note_write_error(r.as_ref().err());
        r
    }

    fn prune(&self, older_than: SystemTime) -> Result<usize, StateError> {
        self.reopen_if_needed()?;
        let r = guard(&self.path, false, || self.prune_inner(older_than));
        self.note_write_error(r.as_ref().err());
        r
    }

    fn counts(&self) -> Result<Counts, StateError> {
        guard(&self.path, true, || {
            let db = self.db()?;
            let txn = db.begin_read().map_err(|e| self.err("read", e))?;
            let read = |e: redb::Error| redb_error(&self.path, "read", e);
            // redb keeps each table's length in its header: O(1).
            let ledger = txn.open_table(LEDGER).map_err(|e| read(e.into()))?;
            let outbox = txn.open_table(OUTBOX).map_err(|e| read(e.into()))?;
            Ok(Counts {
                outbox: usize::try_from(outbox.len().map_err(|e| read(e.into()))?)
                    .unwrap_or(usize::MAX),
                ledger: usize::try_from(ledger.len().map_err(|e| read(e.into()))?)
                    .unwrap_or(usize::MAX),
            })
        })
    }

    fn kind(&self) -> &'static str {
        "file"
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

fn encode_outbox(e: &OutboxEntry) -> Result<Vec<u8>, StateError> {
    let header = OutboxEntry {
        seq: e.seq,
        key: e.key.clone(),
        action: e.action,
        priority: e.priority,
        enqueued_at: e.enqueued_at,
        fingerprint: e.fingerprint.clone(),
        payload: String::new(),
    };
    encode_with_payload("outbox entry", &header, &e.payload)
}

fn encode_dead_letter(d: &DeadLetter) -> Result<Vec<u8>, StateError> {
    let header = DeadLetter {
        key: d.key.clone(),
        action: d.action,
        reason: d.reason.clone(),
        errors: d.errors.clone(),
        at: d.at,
        payload: String::new(),
    };
    encode_with_payload("dead letter", &header, &d.payload)
}

/// `[header length: u32 LE][JSON header][payload]`: the payload is stored as is.
fn encode_with_payload<T: Serialize>(
    what: &'static str,
    header: &T,
    payload: &str,
) -> Result<Vec<u8>, StateError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, header).map_err(|e| StateError::Encode {
        what,
        detail: e.to_string(),
    })?;
    let len = u32::try_from(out.len() - 4).map_err(|_| StateError::Encode {
        what,
        detail: "header larger than 4 GiB".to_owned(),
    })?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload.as_bytes());
    Ok(out)
}

fn encode<T: Serialize>(what: &'static str, v: &T) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(v).map_err(|e| StateError::Encode {
        what,
        detail: e.to_string(),
    })
}

/// Runs a storage call, turning a panic inside the storage engine (which a damaged file can
/// provoke) into an error: the bridge must report a bad file, not crash-loop on it. `reading`
/// says whether a panic points at the file's content (corrupt) or at a write (poisoned).
fn guard<T>(
    path: &Path,
    reading: bool,
    f: impl FnOnce() -> Result<T, StateError>,
) -> Result<T, StateError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            tracing::error!(path = %path.display(), panic = %msg, "state store panicked");
            if reading {
                Err(StateError::Corrupt {
                    path: path.to_owned(),
                    detail: format!("the storage engine failed reading it: {msg}"),
                })
            } else {
                Err(StateError::Poisoned {
                    path: path.to_owned(),
                })
            }
        }
    }
}

fn open_db(path: &Path) -> Result<Database, StateError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create_with_file_format_v3(true)
        .create(path)
        .map_err(|e| open_error(path, e))
}

fn open_error(path: &Path, e: DatabaseError) -> StateError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StateError::Locked {
            path: path.to_owned(),
        },
        DatabaseError::UpgradeRequired(v) => StateError::Corrupt {
            path: path.to_owned(),
            detail: format!("redb file format {v} is too old for this bridge"),
        },
        DatabaseError::RepairAborted => StateError::Corrupt {
            path: path.to_owned(),
            detail: "repair after a crash was aborted".to_owned(),
        },
        other => redb_error(path, "open", other.into()),
    }
}

fn redb_error(path: &Path, op: &'static str, e: redb::Error) -> StateError {
    let path = path.to_owned();
    match e {
        redb::Error::Io(source) => match source.kind() {
            // redb reports a file that is too short or not a redb file this way.
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                StateError::Corrupt {
                    path,
                    detail: source.to_string(),
                }
            }
            _ => StateError::Io { path, op, source },
        },
        redb::Error::Corrupted(detail) => StateError::Corrupt { path, detail },
        redb::Error::DatabaseAlreadyOpen => StateError::Locked { path },
        redb::Error::PreviousIo | redb::Error::LockPoisoned(_) => StateError::Poisoned { path },
        redb::Error::ValueTooLarge(n) => StateError::Encode {
            what: "record",
            detail: format!("{n} bytes is more than the store accepts"),
        },
        // Table type mismatches and the like: the file is not laid out as this bridge expects.
        other => StateError::Corrupt {
            path,
            detail: other.to_string(),
        },
    }
}
