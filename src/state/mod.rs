//! Durable delivery state: what PagerDuty has accepted per alert (the ledger), the events not
//! yet accepted (the outbox), the per-appliance poll watermark, the dead letters and the
//! silences (maintenance windows).
//!
//! This module owns the storage only; the delivery pipeline decides what to write and when.
//! Everything goes through [`StateStore`], a deliberately small, batch-oriented trait: the
//! pipeline collects the [`Op`]s of many events and hands them to [`StateStore::apply`], which
//! commits them in one transaction (group commit), so a single fsync covers a whole batch.
//!
//! Three implementations, picked by [`open`] from `state.backend`:
//! - [`MemoryStore`] when no path is set: same semantics, forgotten on restart.
//! - [`FileStore`], an embedded [redb](https://www.redb.org) file.
//! - [`PostgresStore`], a PostgreSQL database several pollers can share, with the leadership
//!   lease they elect their leader with and the fencing of writes by its epoch.
//!
//! ## Guarantees
//! - A batch is atomic: after a crash at any instant (SIGKILL, power loss) a reopened store
//!   holds either all of a batch or none of it. Every committed batch is durable (fsync'd)
//!   before `apply` returns, so graceful shutdown has nothing left to flush.
//! - `Accepted` removes the outbox entry and records the ledger entry in the same transaction:
//!   there is no instant at which PagerDuty's 202 is forgotten while the event is still queued.
//! - A corrupt or unreadable file, or one written by a newer schema, is refused with an error
//!   naming the file and the recovery; the store never silently starts empty.
//!
//! Keys are the display form of [`crate::model::AlertKey`] (`{appliance}{uri}`). Event
//! payloads are opaque serialized JSON: the pipeline owns their shape.

mod file;
pub mod journal;
mod memory;
pub mod postgres;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::{StateBackend, StateConfig};

pub use file::FileStore;
pub use journal::{Journal, READY_STATE};
pub use memory::MemoryStore;
pub use postgres::{Acquired, LeaseHolder, PostgresOptions, PostgresStore};

/// Version of the record layout this build writes. Bump it when a stored type changes shape;
/// older files are migrated on open, newer ones are refused.
pub const SCHEMA_VERSION: u64 = 1;

/// What the store hands back at startup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Per alert key, the last event PagerDuty accepted.
    pub ledger: BTreeMap<String, LedgerEntry>,
    /// Events written but not yet accepted, in `seq` order (which is enqueue order).
    pub outbox: Vec<OutboxEntry>,
    /// Per appliance id, the poll watermark (opaque to the store).
    pub watermarks: BTreeMap<String, String>,
    /// Per alert key, the event PagerDuty rejected for good.
    pub dead_letters: BTreeMap<String, DeadLetter>,
    /// The first sequence number not used yet; the pipeline numbers new entries from here.
    pub next_seq: u64,
    /// Per silence id, the silence (active, upcoming, or expired and not pruned yet).
    #[serde(default)]
    pub silences: BTreeMap<String, SilenceRecord>,
}

impl Snapshot {
    /// Keys PagerDuty has, or may have, an open incident for: the last event written for them
    /// (the outbox tail, else the ledger) is a trigger. An outbox trigger counts because it may
    /// have been accepted just before a crash.
    pub fn open_keys(&self) -> std::collections::HashSet<String> {
        let mut last: BTreeMap<&str, Action> = self
            .ledger
            .iter()
            .map(|(k, e)| (k.as_str(), e.action))
            .collect();
        for e in &self.outbox {
            last.insert(e.key.as_str(), e.action);
        }
        last.into_iter()
            .filter(|(_, a)| *a == Action::Trigger)
            .map(|(k, _)| k.to_owned())
            .collect()
    }
}

/// The Events API v2 `event_action`s that change an incident's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Trigger,
    Resolve,
}

/// The ledger's memory of one alert: the last event PagerDuty accepted for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub action: Action,
    /// Fingerprint of the event content, so an unchanged alert is not sent again.
    pub fingerprint: String,
    /// When PagerDuty answered 202.
    #[serde(with = "unix_nanos")]
    pub at: SystemTime,
    /// Name of the route (routing key) the event went to; a route change means a new incident.
    pub route: String,
}

/// An event on its way to PagerDuty: written before the send, removed after the 202.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Unique and increasing; taken from [`Snapshot::next_seq`] onwards. Never reused.
    pub seq: u64,
    pub key: String,
    pub action: Action,
    /// Lower sends first when the pipeline is behind (resolves before triggers, for example).
    pub priority: u8,
    #[serde(with = "unix_nanos")]
    pub enqueued_at: SystemTime,
    pub fingerprint: String,
    /// The serialized Events API v2 body, opaque to the store.
    pub payload: String,
}

/// An event PagerDuty refused for good (400, or retries exhausted), kept for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub key: String,
    pub action: Action,
    /// One line for people: "HTTP 400 from PagerDuty", "gave up after 12 attempts".
    pub reason: String,
    /// PagerDuty's `errors` array, when it sent one.
    pub errors: Vec<String>,
    #[serde(with = "unix_nanos")]
    pub at: SystemTime,
    pub payload: String,
}

/// A silence (maintenance window) as the store keeps it: the id and end are all the store
/// needs (pruning); the matchers and the rest are the pipeline's JSON (`pipeline::silence`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SilenceRecord {
    pub id: String,
    /// After this the silence holds nothing; `state.retention` later it is pruned.
    #[serde(with = "unix_nanos")]
    pub ends_at: SystemTime,
    /// The serialized silence, opaque to the store.
    pub body: String,
}

/// One step of a batch. [`StateStore::apply`] applies a batch's ops in order, all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Queue an event before sending it. Its `seq` must not be below [`Snapshot::next_seq`]
    /// (nor below any seq enqueued since): reusing a sequence number fails the whole batch.
    Enqueue(OutboxEntry),
    /// PagerDuty answered 202: drop outbox entry `seq`, record the ledger entry for `key` and
    /// forget a dead letter of `key` (the later event made it moot).
    Accepted {
        seq: u64,
        key: String,
        action: Action,
        fingerprint: String,
        at: SystemTime,
        route: String,
    },
    /// The event is no longer needed (superseded before it was sent): drop outbox entry `seq`.
    Cancelled { seq: u64 },
    /// Drop outbox entry `seq` and keep `entry` as the dead letter of its key (replacing any).
    DeadLetter { seq: u64, entry: DeadLetter },
    /// The operator retries: forget the dead letter of `key`.
    RemoveDeadLetter { key: String },
    /// Store the poll watermark of one appliance.
    Watermark { appliance: String, value: String },
    /// Forget the ledger entry and dead letter of `key` (outbox entries stay).
    ForgetKey { key: String },
    /// Store a silence, replacing the one with its id (expiring a silence early stores it
    /// again with an earlier `ends_at`).
    Silence(SilenceRecord),
}

/// Entry counts of a store, see [`StateStore::counts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub outbox: usize,
    pub ledger: usize,
}

/// The delivery state, shared by the poller and the sender. Methods block on disk I/O: call them
/// from `tokio::task::spawn_blocking` (or a dedicated writer thread) in async code.
///
/// Removing an outbox entry that is not there (`Accepted`, `Cancelled`, `DeadLetter`) is not an
/// error, so replaying a batch after an uncertain failure is safe.
pub trait StateStore: Send + Sync + 'static {
    /// Everything needed at startup.
    fn load(&self) -> Result<Snapshot, StateError>;
    /// Applies `batch` in order in one transaction: after `Ok`, all of it is durable; after
    /// `Err` (or a crash), none of it happened.
    fn apply(&self, batch: &[Op]) -> Result<(), StateError>;
    /// Removes ledger entries whose last accepted action is a resolve older than `older_than`,
    /// dead letters older than it and silences that ended before it. Returns how many records were removed.
    fn prune(&self, older_than: SystemTime) -> Result<usize, StateError>;
    /// How many outbox and ledger entries there are (the gauges). Stores answer from their
    /// own bookkeeping; this default loads everything.
    fn counts(&self) -> Result<Counts, StateError> {
        self.load().map(|s| Counts {
            outbox: s.outbox.len(),
            ledger: s.ledger.len(),
        })
    }
    /// The leadership lease kept beside the state, when the store is shared by several pollers
    /// (`crate::leader`); `None` for stores only one process can use.
    fn lease(self: Arc<Self>) -> Option<Arc<dyn crate::leader::LeaseStore>> {
        None
    }
    /// `"memory"`, `"file"` or `"postgres"`, for logs.
    fn kind(&self) -> &'static str;
    /// The state file, when there is one.
    fn path(&self) -> Option<&Path>;
}

/// Opens the store `cfg` asks for: the file at `state.path` (created when missing), the
/// database at `state.url` (schema migrated), or memory.
pub fn open(cfg: &StateConfig) -> Result<Arc<dyn StateStore>, StateError> {
    Ok(match cfg.backend {
        StateBackend::Postgres => Arc::new(open_postgres(cfg)?),
        StateBackend::File | StateBackend::Memory => match &cfg.path {
            Some(path) => Arc::new(FileStore::open(path)?),
            None => Arc::new(MemoryStore::new()),
        },
    })
}

/// The [`PostgresStore`] of `cfg` as its own type, for the lease primitives.
pub fn open_postgres(cfg: &StateConfig) -> Result<PostgresStore, StateError> {
    PostgresStore::open(&postgres_options(cfg)?)
}

/// The [`PostgresOptions`] of `cfg` (the URL read from its file now), for callers that tune
/// what the config does not set (the per-call timeout, for instance) before
/// [`PostgresStore::open`].
pub fn postgres_options(cfg: &StateConfig) -> Result<PostgresOptions, StateError> {
    let Some(pg) = &cfg.postgres else {
        return Err(StateError::Database {
            target: "state.url".to_owned(),
            op: "open",
            detail: "state.backend is postgres but state.url is not set; set state.url_file (or state.url)".to_owned(),
        });
    };
    let url = pg.url.current().map_err(|e| StateError::Database {
        target: "state.url".to_owned(),
        op: "read state.url_file",
        detail: e.to_string(),
    })?;
    let mut opts = PostgresOptions::new(url);
    opts.ca_file = pg.ca_file.clone();
    opts.pool_size = pg.pool_size;
    opts.connect_timeout = pg.connect_timeout;
    opts.lease_name = pg.lease_name.clone();
    Ok(opts)
}

/// What an operator can do about a state file the bridge cannot use. Delivery state can always
/// be rebuilt, so moving the file aside is safe.
const RECOVERY: &str = "the bridge cannot use it and will not start with empty state on its own. To recover, move it aside (mv FILE FILE.corrupt) and restart: the bridge rebuilds from a full sync; open incidents whose alerts are still active are not re-triggered as new incidents because the dedup_key is stable";

fn recovery(path: &Path) -> String {
    let p = path.display().to_string();
    RECOVERY.replace("FILE", &p)
}

/// A state store failure. Every variant that concerns the file names it.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file is not a readable bridge state file (garbage, truncated, checksum failure,
    /// a record that does not decode).
    #[error("state file {path} is corrupt or unreadable ({detail}); {}", recovery(.path))]
    Corrupt { path: PathBuf, detail: String },
    /// The file was written by a newer bridge.
    #[error("state file {path} was written by a newer version of the bridge (state schema {found}, this version reads up to {supported}); run that newer version, or {}", recovery(.path))]
    NewerSchema {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// Another process (a second poller, a stuck old pod) holds the file's lock.
    #[error(
        "state file {path} is locked by another process; only one poller may use a state file: stop the other one (on Kubernetes: the poller Deployment must use strategy Recreate and 1 replica)"
    )]
    Locked { path: PathBuf },
    /// The OS refused a read or write: permissions, read-only mount, disk full, I/O error.
    #[error("state file {path}: {op} failed: {source}; {}", io_hint(.source))]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// An earlier write failed in this process; the store refuses further writes until the
    /// bridge restarts, so the outbox on disk stays as the last good commit left it.
    #[error(
        "state file {path}: an earlier write failed, so no further writes are accepted; fix the cause reported before and restart the bridge (nothing committed is lost)"
    )]
    Poisoned { path: PathBuf },
    /// A batch reused a sequence number: a bug in the caller, nothing was written.
    #[error(
        "outbox sequence number {seq} was already used (next free is {next_seq}); the batch was not applied"
    )]
    SeqReused { seq: u64, next_seq: u64 },
    /// The state database refused or did not answer: unreachable, wrong credentials, TLS,
    /// a timeout. `target` is `host:port/dbname` (never the URL, which may hold a password).
    /// Nothing of the failed call was written; the journal keeps its ops and retries.
    #[error(
        "state database {target}: {op} failed: {detail}; check that PostgreSQL is up and reachable from the bridge and that state.url (user, password, database) and state.ca_file are right; while the bridge runs, writes that fail are kept in memory and retried every 2s"
    )]
    Database {
        target: String,
        op: &'static str,
        detail: String,
    },
    /// The database was migrated by a newer bridge.
    #[error(
        "state database {target} was written by a newer version of the bridge (database schema {found}, this version reads up to {supported}); run that newer version, or point state.url at a new empty database (the bridge rebuilds from a full sync; open incidents are not re-triggered as new ones because the dedup_key is stable)"
    )]
    NewerDatabaseSchema {
        target: String,
        found: u64,
        supported: u64,
    },
    /// Another poller took the leadership lease over (its epoch is `current`): this one must
    /// stop writing and sending. Nothing of the refused batch was written.
    #[error(
        "state database {target}: the leadership lease moved on (this poller held epoch {epoch}, the lease is now at {}); the batch was refused and nothing was written: this poller is no longer the leader", current.map_or_else(|| "no holder".to_owned(), |c| format!("epoch {c}"))
    )]
    Fenced {
        target: String,
        epoch: u64,
        current: Option<u64>,
    },
    /// A record could not be encoded (a time before 1970, for instance); nothing was written.
    #[error("cannot encode {what} for the state store: {detail}; the batch was not applied")]
    Encode { what: &'static str, detail: String },
}

impl StateError {
    /// Whether trying again later can succeed without a change by the user: the database
    /// was unreachable, slow or refused the connection (it may be restarting), or the secret
    /// file of `state.url_file` is not mounted yet. A newer schema, a TLS setup that cannot
    /// work or a corrupt file are not.
    pub fn is_transient(&self) -> bool {
        match self {
            StateError::Database { op, .. } => !matches!(
                *op,
                "parse state.url" | "set up TLS" | "build the connection pool" | "open"
            ),
            _ => false,
        }
    }
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            "make the file and its directory writable by the bridge's user (on Kubernetes: fsGroup in the pod securityContext)"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            "mount the state volume read-write, or point state.path at a writable volume"
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            "free space on the volume or make it larger; the bridge keeps what it had committed"
        }
        io::ErrorKind::NotFound => "create the directory of state.path (mount the volume)",
        _ => "check the volume behind state.path",
    }
}

/// `SystemTime` as nanoseconds since the Unix epoch in a `u64` (exact, until the year 2554).
mod unix_nanos {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer, de, ser};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| ser::Error::custom("time before 1970"))?;
        let n = u64::try_from(d.as_nanos()).map_err(|_| ser::Error::custom("time after 2554"))?;
        s.serialize_u64(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let n = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_nanos(n))
            .ok_or_else(|| de::Error::custom("time out of range"))
    }
}

/// Checks a batch's sequence numbers against `next_seq` and returns the `next_seq` after it,
/// so both stores refuse the same batches before writing anything.
fn check_seqs(batch: &[Op], mut next_seq: u64) -> Result<u64, StateError> {
    for op in batch {
        if let Op::Enqueue(e) = op {
            if e.seq < next_seq {
                return Err(StateError::SeqReused {
                    seq: e.seq,
                    next_seq,
                });
            }
            next_seq = e.seq.saturating_add(1);
        }
    }
    Ok(next_seq)
}

impl Op {
    /// The ledger entry an `Accepted` op records.
    fn ledger_entry(&self) -> Option<(&str, LedgerEntry)> {
        match self {
            Op::Accepted {
                key,
                action,
                fingerprint,
                at,
                route,
                ..
            } => Some((
                key.as_str(),
                LedgerEntry {
                    action: *action,
                    fingerprint: fingerprint.clone(),
                    at: *at,
                    route: route.clone(),
                },
            )),
            _ => None,
        }
    }
}

impl LedgerEntry {
    fn prunable(&self, older_than: SystemTime) -> bool {
        self.action == Action::Resolve && self.at < older_than
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_round_trip_exactly() {
        let at = UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
        let e = LedgerEntry {
            action: Action::Resolve,
            fingerprint: "f".into(),
            at,
            route: "default".into(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"resolve\""), "{json}");
        assert_eq!(serde_json::from_str::<LedgerEntry>(&json).unwrap(), e);
    }

    #[test]
    fn times_before_1970_do_not_encode() {
        let e = LedgerEntry {
            action: Action::Trigger,
            fingerprint: String::new(),
            at: UNIX_EPOCH - Duration::from_secs(1),
            route: String::new(),
        };
        assert!(serde_json::to_vec(&e).is_err());
    }

    #[test]
    fn seq_check_refuses_reuse_within_and_across_batches() {
        let e = |seq| {
            Op::Enqueue(OutboxEntry {
                seq,
                key: "k".into(),
                action: Action::Trigger,
                priority: 0,
                enqueued_at: UNIX_EPOCH,
                fingerprint: String::new(),
                payload: String::new(),
            })
        };
        assert_eq!(check_seqs(&[e(3), e(7)], 3).unwrap(), 8);
        assert!(matches!(
            check_seqs(&[e(3), e(3)], 0),
            Err(StateError::SeqReused {
                seq: 3,
                next_seq: 4
            })
        ));
        assert!(matches!(
            check_seqs(&[e(2)], 3),
            Err(StateError::SeqReused { .. })
        ));
    }

    #[test]
    fn errors_name_the_file_and_the_way_out() {
        let p = PathBuf::from("/var/lib/bridge/state.redb");
        let msg = StateError::Corrupt {
            path: p.clone(),
            detail: "bad magic".into(),
        }
        .to_string();
        assert!(
            msg.contains("/var/lib/bridge/state.redb is corrupt"),
            "{msg}"
        );
        assert!(
            msg.contains("mv /var/lib/bridge/state.redb /var/lib/bridge/state.redb.corrupt"),
            "{msg}"
        );
        assert!(msg.contains("dedup_key is stable"), "{msg}");
        let msg = StateError::Io {
            path: p,
            op: "commit",
            source: io::Error::from(io::ErrorKind::StorageFull),
        }
        .to_string();
        assert!(msg.contains("state.redb: commit failed"), "{msg}");
        assert!(msg.contains("free space"), "{msg}");
    }
}
