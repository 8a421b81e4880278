//! The PostgreSQL [`StateStore`] (`state.backend = "postgres"`): the same ledger, outbox, dead
//! letters and watermarks as the file, in a database several pollers can share, plus the
//! leadership lease row those pollers elect their leader with ([`PostgresStore::acquire`]).
//!
//! This module owns the schema (versioned migrations applied at open under an advisory lock),
//! the connection pool and its TLS, the sync-to-async bridge, and the fencing of writes by the
//! lease epoch. Who leads and when to stop sending is decided elsewhere, on top of the lease
//! primitives here.
//!
//! The [`StateStore`] trait is synchronous and is called from blocking threads (the journal's
//! writer thread, `spawn_blocking` at startup). The store therefore owns a small tokio runtime
//! of its own for its connections: a call spawns its future there and waits on a std channel,
//! which works from any thread (a plain thread, a `spawn_blocking` thread, even an async worker,
//! where it would only block that worker) and can never panic with "cannot block inside a
//! runtime".
//!
//! Errors name the database as `host:port/dbname`, never the URL (which may hold a password).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, IsolationLevel};
use tokio_rustls::rustls;

use super::{
    Action, Counts, DeadLetter, LedgerEntry, Op, OutboxEntry, SilenceRecord, Snapshot, StateError,
    StateStore,
};

/// Version of the database schema this build writes; see [`MIGRATIONS`].
pub const PG_SCHEMA_VERSION: u64 = 2;

/// Held (per transaction) while migrating, so two pollers starting at once do not both create
/// the tables. Any fixed number works; this one spells "ovpdbrdg".
const MIGRATION_LOCK: i64 = 0x6f76_7064_6272_6467;

/// `(version, SQL)`: each step brings the schema from `version - 1` to `version`, applied in one
/// transaction with the version row. Never edit a released step; add one.
const MIGRATIONS: &[(u64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE bridge_meta (
    id smallint PRIMARY KEY CHECK (id = 1),
    next_seq bigint NOT NULL
);
INSERT INTO bridge_meta (id, next_seq) VALUES (1, 0);
CREATE TABLE bridge_outbox (
    seq bigint PRIMARY KEY,
    key text NOT NULL,
    action smallint NOT NULL,
    priority smallint NOT NULL,
    enqueued_at_ns bigint NOT NULL,
    fingerprint text NOT NULL,
    payload text NOT NULL
);
CREATE TABLE bridge_ledger (
    key text PRIMARY KEY,
    action smallint NOT NULL,
    fingerprint text NOT NULL,
    at_ns bigint NOT NULL,
    route text NOT NULL
);
CREATE INDEX bridge_ledger_prune ON bridge_ledger (at_ns) WHERE action = 1;
CREATE TABLE bridge_dead_letters (
    key text PRIMARY KEY,
    action smallint NOT NULL,
    reason text NOT NULL,
    errors text[] NOT NULL,
    at_ns bigint NOT NULL,
    payload text NOT NULL
);
CREATE INDEX bridge_dead_letters_prune ON bridge_dead_letters (at_ns);
CREATE TABLE bridge_watermarks (
    appliance text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE bridge_lease (
    name text PRIMARY KEY,
    holder text NOT NULL,
    epoch bigint NOT NULL,
    advertise_url text NOT NULL,
    expires_at timestamptz NOT NULL
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE bridge_silences (
    id text PRIMARY KEY,
    ends_at_ns bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX bridge_silences_prune ON bridge_silences (ends_at_ns);
"#,
    ),
];

/// How the connection is protected, libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, no certificate check (libpq's default).
    Prefer,
    /// TLS, certificate not checked unless `state.ca_file` is set (then as `VerifyCa`).
    Require,
    /// TLS, the certificate chain must lead to `state.ca_file` (or a system root); any name.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host of the URL.
    VerifyFull,
}

/// A `state.url`, understood: what to connect to and how, and how to name it in messages.
pub struct ParsedUrl {
    config: tokio_postgres::Config,
    pub sslmode: SslMode,
    /// `host:port/dbname`: the only way the database is named in errors and logs.
    pub target: String,
}

impl fmt::Debug for ParsedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedUrl")
            .field("target", &self.target)
            .field("sslmode", &self.sslmode)
            .finish_non_exhaustive()
    }
}

/// Parses a libpq-style URL (`postgres://user:pass@host:5432/db?sslmode=require`). The error
/// never repeats the URL: it may hold a password.
pub fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let mut u = url::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme `{}` is not postgres:// or postgresql://",
            u.scheme()
        ));
    }
    let mut sslmode = SslMode::Prefer;
    let mut rest = Vec::new();
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                sslmode = match v.as_ref() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode `{other}` is not supported (use disable, prefer, require, verify-ca or verify-full)"
                        ));
                    }
                }
            }
            "sslrootcert" | "sslcert" | "sslkey" => {
                return Err(format!(
                    "the URL parameter `{k}` is not supported; give the CA with state.ca_file"
                ));
            }
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    if rest.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(rest);
    }
    // tokio-postgres' own parser knows libpq's other parameters and percent-decoding; its
    // messages do not quote the input.
    let mut config: tokio_postgres::Config = u
        .as_str()
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("not a PostgreSQL URL ({e})"))?;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => return Err("names no host (write postgres://user@host:5432/db)".to_owned()),
    };
    if config.get_user().is_none() {
        return Err("names no user (write postgres://user@host:5432/db)".to_owned());
    }
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let dbname = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default()
        .to_owned();
    config.ssl_mode(match sslmode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Prefer => PgSslMode::Prefer,
        _ => PgSslMode::Require,
    });
    if config.get_application_name().is_none() {
        config.application_name("oneview-pagerduty-bridge");
    }
    Ok(ParsedUrl {
        config,
        sslmode,
        target: format!("{host}:{port}/{dbname}"),
    })
}

/// What [`PostgresStore::open`] needs (from `[state]`).
#[derive(Clone)]
pub struct PostgresOptions {
    pub url: SecretString,
    /// PEM CA bundle for `verify-ca` / `verify-full` (and `require`, which then verifies).
    pub ca_file: Option<PathBuf>,
    pub pool_size: usize,
    /// Connecting (TCP + TLS + auth) gives up after this long.
    pub connect_timeout: Duration,
    /// Any one call (`apply`, `load`, `acquire`, ...) gives up after this long, so a database
    /// that stops answering turns into an error instead of a hung writer thread.
    pub operation_timeout: Duration,
    /// The lease row's name: pollers sharing a database and a name elect one leader.
    pub lease_name: String,
}

impl PostgresOptions {
    pub fn new(url: SecretString) -> Self {
        Self {
            url,
            ca_file: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            lease_name: "poller".to_owned(),
        }
    }
}

impl fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = parse_url(self.url.expose_secret())
            .map(|p| p.target)
            .unwrap_or_else(|_| "<unparsable url>".to_owned());
        f.debug_struct("PostgresOptions")
            .field("url", &format_args!("postgres://<redacted>@{target}"))
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("lease_name", &self.lease_name)
            .finish()
    }
}

/// Who holds the leadership lease of the pollers sharing one database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    pub epoch: u64,
    pub advertise_url: String,
    /// By the DATABASE clock.
    pub expires_at: SystemTime,
    /// `expires_at` is still ahead of the database clock when the row was read.
    pub live: bool,
}

/// The outcome of [`PostgresStore::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Granted { epoch: u64 },
    Held(LeaseHolder),
}

/// What the tasks on the store's runtime need: cheap to clone, `'static`.
#[derive(Clone)]
struct Ctx {
    pool: Pool,
    target: Arc<str>,
    lease: Arc<str>,
}

impl Ctx {
    fn err(&self, op: &'static str, e: impl fmt::Display) -> StateError {
        StateError::Database {
            target: self.target.to_string(),
            op,
            detail: e.to_string(),
        }
    }

    fn pg(&self, op: &'static str) -> impl Fn(tokio_postgres::Error) -> StateError + '_ {
        move |e| self.err(op, pg_detail(&e))
    }

    async fn client(&self, op: &'static str) -> Result<deadpool_postgres::Object, StateError> {
        self.pool.get().await.map_err(|e| {
            let detail = match &e {
                deadpool_postgres::PoolError::Backend(b) => pg_detail(b),
                other => other.to_string(),
            };
            self.err(op, detail)
        })
    }
}

/// A driver error with the server's SQLSTATE when there is one.
fn pg_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => {
            // "error connecting to server" alone does not say why; the cause chain does.
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                let c_text = c.to_string();
                if !s.contains(&c_text) {
                    s.push_str(": ");
                    s.push_str(&c_text);
                }
                src = c.source();
            }
            s
        }
    }
}

/// The shared PostgreSQL state store. See the module docs.
pub struct PostgresStore {
    ctx: Ctx,
    fence: Mutex<Option<(String, u64)>>,
    operation_timeout: Duration,
    /// `Some` until drop; shut down in the background so dropping the store in async code is
    /// fine too.
    rt: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.ctx.target)
            .field("lease", &self.ctx.lease)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl PostgresStore {
    /// Connects, applies the migrations this build knows and checks the schema is not newer.
    pub fn open(opts: &PostgresOptions) -> Result<Self, StateError> {
        let store = Self::connect(opts)?;
        let ctx = store.ctx.clone();
        store.run("migrate", migrate(ctx))?;
        Ok(store)
    }

    /// Builds the pool without touching the schema: for web replicas, which only read the
    /// lease row (the pollers own the schema; a web replica of another version must not
    /// migrate it). Connects lazily, so a database that is down now is not an error here.
    pub fn connect(opts: &PostgresOptions) -> Result<Self, StateError> {
        let parsed =
            parse_url(opts.url.expose_secret()).map_err(|detail| StateError::Database {
                target: "state.url".to_owned(),
                op: "parse state.url",
                detail: format!("{detail}; fix state.url (or the file of state.url_file)"),
            })?;
        let target: Arc<str> = Arc::from(parsed.target.as_str());
        let tls = tls_config(parsed.sslmode, opts.ca_file.as_deref()).map_err(|detail| {
            StateError::Database {
                target: target.to_string(),
                op: "set up TLS",
                detail,
            }
        })?;
        let mut config = parsed.config;
        config.connect_timeout(opts.connect_timeout);
        // A peer that vanished (failover to another address, a partition) is noticed by the
        // kernel rather than after TCP's 15 minutes of retransmissions.
        config.keepalives_idle(Duration::from_secs(30));
        #[cfg(target_os = "linux")]
        config.tcp_user_timeout(opts.operation_timeout);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bridge-postgres")
            .enable_all()
            .build()
            .map_err(|e| StateError::Database {
                target: target.to_string(),
                op: "start the database client threads",
                detail: e.to_string(),
            })?;
        let mgr = Manager::from_config(
            config,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The pool's timers need the runtime the pool runs on.
        let pool = {
            let _guard = rt.enter();
            Pool::builder(mgr)
                .max_size(opts.pool_size.max(1))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(opts.operation_timeout))
                .create_timeout(Some(opts.connect_timeout))
                .recycle_timeout(Some(opts.connect_timeout))
                .build()
                .map_err(|e| StateError::Database {
                    target: target.to_string(),
                    op: "build the connection pool",
                    detail: e.to_string(),
                })?
        };
        let store = Self {
            ctx: Ctx {
                pool,
                target,
                lease: Arc::from(opts.lease_name.as_str()),
            },
            fence: Mutex::new(None),
            operation_timeout: opts.operation_timeout,
            rt: Some(rt),
        };
        Ok(store)
    }

    /// `host:port/dbname`.
    pub fn target(&self) -> &str {
        &self.ctx.target
    }

    /// Runs `f` on the store's runtime and waits for it on this thread (see the module docs).
    fn run<T, F>(&self, op: &'static str, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        let ctx = self.ctx.clone();
        let Some(rt) = self.rt.as_ref() else {
            return Err(ctx.err(op, "the store is shutting down"));
        };
        let timeout = self.operation_timeout;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let task_ctx = ctx.clone();
        rt.spawn(async move {
            let r = match tokio::time::timeout(timeout, f).await {
                Ok(r) => r,
                Err(_) => {
                    // The connection that did not answer went back to the pool with the
                    // dropped future; a black-holed peer never closes it, so the next call
                    // would wait on it again. Drop every idle connection: the next call
                    // connects afresh (and fails fast if the database is really gone).
                    task_ctx.pool.retain(|_, _| false);
                    Err(task_ctx.err(
                        op,
                        format!("no answer within {}", humantime::format_duration(timeout)),
                    ))
                }
            };
            let _ = tx.send(r);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(ctx.err(op, "the database client threads stopped")))
    }

    fn fence(&self) -> Option<(String, u64)> {
        self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// From now on every `apply`/`prune` checks, in its own transaction (a share lock on the
    /// lease row), that the lease is still `holder`'s at `epoch`; otherwise the whole batch is
    /// refused with [`StateError::Fenced`] and nothing is written. `None`: no fencing (single
    /// poller).
    pub fn set_fence(&self, fence: Option<(String, u64)>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Takes the lease when it is free, expired (database clock: `now() > expires_at`) or
    /// already ours; a takeover (holder changes or the lease was free/expired) increments the
    /// epoch; re-acquiring our own live lease keeps the epoch. Sets `expires_at = now() + ttl`.
    pub fn acquire(
        &self,
        holder: &str,
        advertise_url: &str,
        ttl: Duration,
    ) -> Result<Acquired, StateError> {
        let ctx = self.ctx.clone();
        let (holder, url) = (holder.to_owned(), advertise_url.to_owned());
        self.run("acquire the lease", async move {
            const OP: &str = "acquire the lease";
            let client = ctx.client(OP).await?;
            // One statement: the row lock taken by ON CONFLICT serialises concurrent acquires,
            // and the second one re-evaluates the WHERE against the first one's row.
            let row = client
                .query_opt(
                    "INSERT INTO bridge_lease AS l (name, holder, epoch, advertise_url, expires_at)
                     VALUES ($1, $2, 1, $3, now() + make_interval(secs => $4))
                     ON CONFLICT (name) DO UPDATE SET
                       epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > now()
                                    THEN l.epoch ELSE l.epoch + 1 END,
                       holder = excluded.holder,
                       advertise_url = excluded.advertise_url,
                       expires_at = excluded.expires_at
                     WHERE l.holder = excluded.holder OR l.expires_at <= now()
                     RETURNING epoch",
                    &[&&*ctx.lease, &holder, &url, &ttl.as_secs_f64()],
                )
                .await
                .map_err(ctx.pg(OP))?;
            match row {
                Some(r) => Ok(Acquired::Granted {
                    epoch: epoch_of(&ctx, OP, r.try_get(0).map_err(ctx.pg(OP))?)?,
                }),
                None => match current_lease(&ctx, &**client, OP).await? {
                    Some(h) => Ok(Acquired::Held(h)),
                    // Released and deleted between the two statements is impossible (rows are
                    // never deleted); say so rather than pretend.
                    None => Err(ctx.err(OP, "the lease row vanished")),
                },
            }
        })
    }

    /// Extends our lease iff holder AND epoch still match and it has not expired; `Ok(false)`
    /// means it is lost.
    pub fn renew(&self, holder: &str, epoch: u64, ttl: Duration) -> Result<bool, StateError> {
        let ctx = self.ctx.clone();
        let holder = holder.to_owned();
        self.run("renew the lease", async move {
            const OP: &str = "renew the lease";
            let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
            let client = ctx.client(OP).await?;
            let n = client
                .execute(
                    "UPDATE bridge_lease SET expires_at = now() + make_interval(secs => $4)
                     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                    &[&&*ctx.lease, &holder, &epoch, &ttl.as_secs_f64()],
                )
                .await
                .map_err(ctx.pg(OP))?;
            Ok(n == 1)
        })
    }

    /// Gives the lease up at once (graceful stop) iff it is still ours: it expires now, the
    /// epoch stays, so the next acquire (anyone's) is a takeover.
    pub fn release(&self, holder: &str, epoch: u64) -> Result<(), StateError> {
        let ctx = self.ctx.clone();
        let holder = holder.to_owned();
        self.run("release the lease", async move {
            const OP: &str = "release the lease";
            let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
            let client = ctx.client(OP).await?;
            client
                .execute(
                    "UPDATE bridge_lease SET expires_at = now()
                     WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > now()",
                    &[&&*ctx.lease, &holder, &epoch],
                )
                .await
                .map_err(ctx.pg(OP))?;
            Ok(())
        })
    }

    /// The lease row as the database has it (also when expired); `None` before anyone took it.
    pub fn current(&self) -> Result<Option<LeaseHolder>, StateError> {
        let ctx = self.ctx.clone();
        self.run("read the lease", async move {
            const OP: &str = "read the lease";
            let client = ctx.client(OP).await?;
            current_lease(&ctx, &**client, OP).await
        })
    }
}

fn epoch_of(ctx: &Ctx, op: &'static str, v: i64) -> Result<u64, StateError> {
    u64::try_from(v).map_err(|_| ctx.err(op, format!("lease epoch {v} is negative")))
}

async fn current_lease(
    ctx: &Ctx,
    client: &impl GenericClient,
    op: &'static str,
) -> Result<Option<LeaseHolder>, StateError> {
    let row = match client
        .query_opt(
            "SELECT holder, epoch, advertise_url, expires_at, expires_at > now()
             FROM bridge_lease WHERE name = $1",
            &[&&*ctx.lease],
        )
        .await
    {
        Ok(row) => row,
        // A web replica may read before any poller created the schema: nobody leads yet.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(None);
        }
        Err(e) => return Err(ctx.pg(op)(e)),
    };
    let Some(r) = row else { return Ok(None) };
    Ok(Some(LeaseHolder {
        holder: r.try_get(0).map_err(ctx.pg(op))?,
        epoch: epoch_of(ctx, op, r.try_get(1).map_err(ctx.pg(op))?)?,
        advertise_url: r.try_get(2).map_err(ctx.pg(op))?,
        expires_at: r.try_get(3).map_err(ctx.pg(op))?,
        live: r.try_get(4).map_err(ctx.pg(op))?,
    }))
}

/// Creates or upgrades the schema, or refuses a newer one.
async fn migrate(ctx: Ctx) -> Result<(), StateError> {
    const OP: &str = "migrate the schema";
    let mut client = ctx.client(OP).await?;
    let tx = client.transaction().await.map_err(ctx.pg(OP))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(ctx.pg(OP))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS bridge_schema (
             id smallint PRIMARY KEY CHECK (id = 1),
             version bigint NOT NULL
         )",
    )
    .await
    .map_err(ctx.pg(OP))?;
    let found: i64 = tx
        .query_opt("SELECT version FROM bridge_schema WHERE id = 1", &[])
        .await
        .map_err(ctx.pg(OP))?
        .map(|r| r.try_get(0))
        .transpose()
        .map_err(ctx.pg(OP))?
        .unwrap_or(0);
    let found = u64::try_from(found).unwrap_or(0);
    if found > PG_SCHEMA_VERSION {
        return Err(StateError::NewerDatabaseSchema {
            target: ctx.target.to_string(),
            found,
            supported: PG_SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        tx.batch_execute(sql).await.map_err(ctx.pg(OP))?;
        let v = i64::try_from(*version).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO bridge_schema (id, version) VALUES (1, $1)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            &[&v],
        )
        .await
        .map_err(ctx.pg(OP))?;
    }
    tx.commit().await.map_err(ctx.pg(OP))
}

fn nanos(what: &'static str, t: SystemTime) -> Result<i64, StateError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| StateError::Encode {
            what,
            detail: "time before 1970".to_owned(),
        })?;
    i64::try_from(d.as_nanos()).map_err(|_| StateError::Encode {
        what,
        detail: "time after 2262".to_owned(),
    })
}

fn from_nanos(ctx: &Ctx, n: i64) -> Result<SystemTime, StateError> {
    u64::try_from(n)
        .ok()
        .and_then(|n| UNIX_EPOCH.checked_add(Duration::from_nanos(n)))
        .ok_or_else(|| ctx.err("load", format!("stored time {n} ns is out of range")))
}

fn seq_i64(seq: u64) -> Result<i64, StateError> {
    i64::try_from(seq).map_err(|_| StateError::Encode {
        what: "outbox seq",
        detail: format!("{seq} does not fit a bigint"),
    })
}

fn action_code(a: Action) -> i16 {
    match a {
        Action::Trigger => 0,
        Action::Resolve => 1,
    }
}

fn action_of(ctx: &Ctx, code: i16) -> Result<Action, StateError> {
    match code {
        0 => Ok(Action::Trigger),
        1 => Ok(Action::Resolve),
        n => Err(ctx.err("load", format!("stored action {n} is unknown"))),
    }
}

/// Refuses the transaction unless the lease row still says `fence`; the share lock keeps a
/// takeover from committing until this transaction is done.
async fn check_fence(
    ctx: &Ctx,
    tx: &impl GenericClient,
    fence: &Option<(String, u64)>,
    op: &'static str,
) -> Result<(), StateError> {
    let Some((holder, epoch)) = fence else {
        return Ok(());
    };
    let row = tx
        .query_opt(
            "SELECT holder, epoch FROM bridge_lease WHERE name = $1 FOR SHARE",
            &[&&*ctx.lease],
        )
        .await
        .map_err(ctx.pg(op))?;
    let current = match row {
        Some(r) => {
            let h: String = r.try_get(0).map_err(ctx.pg(op))?;
            let e = epoch_of(ctx, op, r.try_get(1).map_err(ctx.pg(op))?)?;
            if h == *holder && e == *epoch {
                return Ok(());
            }
            Some(e)
        }
        None => None,
    };
    Err(StateError::Fenced {
        target: ctx.target.to_string(),
        epoch: *epoch,
        current,
    })
}

/// A batch reduced to its net effect per table: the tables are independent, and within one
/// table only the last op on a row counts, so a batch of any size becomes at most a handful of
/// bulk statements (`unnest` of arrays) instead of one statement per op.
#[derive(Default)]
struct Net<'a> {
    /// New outbox rows (seqs not used before this batch), minus those removed again.
    enqueue: BTreeMap<u64, &'a OutboxEntry>,
    /// Outbox rows to remove that this batch did not add (run before the inserts, so removing a
    /// seq the batch enqueues later is the no-op it is in the other stores).
    delete_seqs: BTreeSet<u64>,
    /// Per key, the ledger entry to keep (`None`: forget it).
    ledger: BTreeMap<&'a str, Option<LedgerRow<'a>>>,
    /// Per key, the dead letter to keep (`None`: forget it).
    dead: BTreeMap<&'a str, Option<&'a DeadLetter>>,
    watermarks: BTreeMap<&'a str, &'a str>,
    silences: BTreeMap<&'a str, &'a SilenceRecord>,
}

struct LedgerRow<'a> {
    action: Action,
    fingerprint: &'a str,
    at: SystemTime,
    route: &'a str,
}

impl<'a> Net<'a> {
    fn add(&mut self, op: &'a Op) {
        match op {
            Op::Enqueue(e) => {
                self.enqueue.insert(e.seq, e);
            }
            Op::Accepted {
                seq,
                key,
                action,
                fingerprint,
                at,
                route,
            } => {
                self.remove_seq(*seq);
                // PagerDuty took an event for this key: an older rejection is moot.
                self.dead.insert(key, None);
                self.ledger.insert(
                    key,
                    Some(LedgerRow {
                        action: *action,
                        fingerprint,
                        at: *at,
                        route,
                    }),
                );
            }
            Op::Cancelled { seq } => self.remove_seq(*seq),
            Op::DeadLetter { seq, entry } => {
                self.remove_seq(*seq);
                self.dead.insert(&entry.key, Some(entry));
            }
            Op::RemoveDeadLetter { key } => {
                self.dead.insert(key, None);
            }
            Op::Watermark { appliance, value } => {
                self.watermarks.insert(appliance, value);
            }
            Op::ForgetKey { key } => {
                self.ledger.insert(key, None);
                self.dead.insert(key, None);
            }
            Op::Silence(r) => {
                self.silences.insert(&r.id, r);
            }
        }
    }

    fn remove_seq(&mut self, seq: u64) {
        if self.enqueue.remove(&seq).is_none() {
            self.delete_seqs.insert(seq);
        }
    }

    /// The statements, in an order that gives the same result as applying the ops one by one,
    /// with their parameters (encoded here, so an unencodable record fails before any write).
    fn statements(&self) -> Result<Vec<(&'static str, Vec<Param<'a>>)>, StateError> {
        let mut out: Vec<(&'static str, Vec<Param<'a>>)> = Vec::new();
        if !self.delete_seqs.is_empty() {
            let seqs = self
                .delete_seqs
                .iter()
                .map(|s| seq_i64(*s))
                .collect::<Result<Vec<i64>, _>>()?;
            out.push((
                "DELETE FROM bridge_outbox WHERE seq = ANY($1)",
                vec![Box::new(seqs)],
            ));
        }
        if !self.enqueue.is_empty() {
            let n = self.enqueue.len();
            let (mut seq, mut key, mut action, mut prio, mut at, mut fp, mut payload) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for e in self.enqueue.values() {
                seq.push(seq_i64(e.seq)?);
                key.push(e.key.as_str());
                action.push(action_code(e.action));
                prio.push(i16::from(e.priority));
                at.push(nanos("outbox enqueued_at", e.enqueued_at)?);
                fp.push(e.fingerprint.as_str());
                payload.push(e.payload.as_str());
            }
            out.push((
                "INSERT INTO bridge_outbox (seq, key, action, priority, enqueued_at_ns, fingerprint, payload)
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::int2[], $4::int2[], $5::int8[], $6::text[], $7::text[])",
                vec![
                    Box::new(seq),
                    Box::new(key),
                    Box::new(action),
                    Box::new(prio),
                    Box::new(at),
                    Box::new(fp),
                    Box::new(payload),
                ],
            ));
        }
        let forget: Vec<&str> = self
            .ledger
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !forget.is_empty() {
            out.push((
                "DELETE FROM bridge_ledger WHERE key = ANY($1)",
                vec![Box::new(forget)],
            ));
        }
        let (mut key, mut action, mut fp, mut at, mut route) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, row) in &self.ledger {
            if let Some(r) = row {
                key.push(*k);
                action.push(action_code(r.action));
                fp.push(r.fingerprint);
                at.push(nanos("ledger at", r.at)?);
                route.push(r.route);
            }
        }
        if !key.is_empty() {
            out.push((
                "INSERT INTO bridge_ledger (key, action, fingerprint, at_ns, route)
                 SELECT * FROM unnest($1::text[], $2::int2[], $3::text[], $4::int8[], $5::text[])
                 ON CONFLICT (key) DO UPDATE SET action = excluded.action,
                   fingerprint = excluded.fingerprint, at_ns = excluded.at_ns, route = excluded.route",
                vec![
                    Box::new(key),
                    Box::new(action),
                    Box::new(fp),
                    Box::new(at),
                    Box::new(route),
                ],
            ));
        }
        let forget: Vec<&str> = self
            .dead
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !forget.is_empty() {
            out.push((
                "DELETE FROM bridge_dead_letters WHERE key = ANY($1)",
                vec![Box::new(forget)],
            ));
        }
        // Dead letters are rare and carry an array each (which `unnest` cannot take apart
        // row by row): one statement per letter.
        for d in self.dead.values().flatten() {
            out.push((
                "INSERT INTO bridge_dead_letters (key, action, reason, errors, at_ns, payload)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key) DO UPDATE SET action = excluded.action, reason = excluded.reason,
                   errors = excluded.errors, at_ns = excluded.at_ns, payload = excluded.payload",
                vec![
                    Box::new(d.key.as_str()),
                    Box::new(action_code(d.action)),
                    Box::new(d.reason.as_str()),
                    Box::new(d.errors.as_slice()),
                    Box::new(nanos("dead letter at", d.at)?),
                    Box::new(d.payload.as_str()),
                ],
            ));
        }
        if !self.watermarks.is_empty() {
            let (apps, values): (Vec<&str>, Vec<&str>) =
                self.watermarks.iter().map(|(a, v)| (*a, *v)).unzip();
            out.push((
                "INSERT INTO bridge_watermarks (appliance, value)
                 SELECT * FROM unnest($1::text[], $2::text[])
                 ON CONFLICT (appliance) DO UPDATE SET value = excluded.value",
                vec![Box::new(apps), Box::new(values)],
            ));
        }
        if !self.silences.is_empty() {
            let mut ids = Vec::with_capacity(self.silences.len());
            let mut ends = Vec::with_capacity(self.silences.len());
            let mut bodies = Vec::with_capacity(self.silences.len());
            for r in self.silences.values() {
                ids.push(r.id.as_str());
                ends.push(nanos("silence ends_at", r.ends_at)?);
                bodies.push(r.body.as_str());
            }
            out.push((
                "INSERT INTO bridge_silences (id, ends_at_ns, body)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
                 ON CONFLICT (id) DO UPDATE SET ends_at_ns = excluded.ends_at_ns, body = excluded.body",
                vec![Box::new(ids), Box::new(ends), Box::new(bodies)],
            ));
        }
        Ok(out)
    }
}

type Param<'a> = Box<dyn ToSql + Sync + Send + 'a>;

/// Whether outbox row `e.seq` is already stored exactly as `e`: the replay of a batch whose
/// commit reached the database but whose answer did not (a connection cut at the wrong
/// moment). The journal then applies the same ops again; refusing them as a reused seq would
/// wedge it for good.
async fn is_replay(
    ctx: &Ctx,
    tx: &impl GenericClient,
    e: &OutboxEntry,
) -> Result<bool, StateError> {
    const OP: &str = "apply a batch";
    let row = tx
        .query_opt(
            "SELECT key, action, priority, enqueued_at_ns, fingerprint, payload
             FROM bridge_outbox WHERE seq = $1",
            &[&seq_i64(e.seq)?],
        )
        .await
        .map_err(ctx.pg(OP))?;
    let Some(r) = row else { return Ok(false) };
    let key: &str = r.try_get(0).map_err(ctx.pg(OP))?;
    let action: i16 = r.try_get(1).map_err(ctx.pg(OP))?;
    let priority: i16 = r.try_get(2).map_err(ctx.pg(OP))?;
    let at: i64 = r.try_get(3).map_err(ctx.pg(OP))?;
    let fingerprint: &str = r.try_get(4).map_err(ctx.pg(OP))?;
    let payload: &str = r.try_get(5).map_err(ctx.pg(OP))?;
    Ok(key == e.key
        && action == action_code(e.action)
        && priority == i16::from(e.priority)
        && Ok(at) == nanos("outbox enqueued_at", e.enqueued_at).map_err(|_| ())
        && fingerprint == e.fingerprint
        && payload == e.payload)
}

type Pending<'a> = Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

async fn apply_batch(
    ctx: Ctx,
    fence: Option<(String, u64)>,
    batch: Vec<Op>,
) -> Result<(), StateError> {
    const OP: &str = "apply a batch";
    let mut client = ctx.client(OP).await?;
    let tx = client.transaction().await.map_err(ctx.pg(OP))?;
    check_fence(&ctx, &*tx, &fence, OP).await?;
    let stored: i64 = tx
        .query_one(
            "SELECT next_seq FROM bridge_meta WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(ctx.pg(OP))?
        .try_get(0)
        .map_err(ctx.pg(OP))?;
    let stored = u64::try_from(stored).unwrap_or(0);

    // Validate everything before the first write, like the other stores (a refused batch
    // rolls back anyway, but the error must be the caller's, not the database's).
    let mut next_seq = stored;
    let mut net = Net::default();
    for op in &batch {
        if let Op::Enqueue(e) = op {
            if e.seq < next_seq {
                if e.seq < stored && is_replay(&ctx, &*tx, e).await? {
                    continue;
                }
                return Err(StateError::SeqReused {
                    seq: e.seq,
                    next_seq,
                });
            }
            next_seq = e.seq.saturating_add(1);
        }
        net.add(op);
    }
    let plan = net.statements()?;
    let next_seq_param = seq_i64(next_seq)?;

    let mut statements = Vec::with_capacity(plan.len());
    for (sql, _) in &plan {
        statements.push(tx.prepare_cached(sql).await.map_err(ctx.pg(OP))?);
    }
    // Sent back to back without waiting for each answer (tokio-postgres pipelines the
    // requests of futures polled together, in the order they are first polled, and the server
    // runs them in that order).
    let pending: Vec<Pending<'_>> = plan
        .iter()
        .zip(&statements)
        .map(|((_, params), st)| -> Pending<'_> {
            Box::pin(tx.execute_raw(st, params.iter().map(|p| &**p as &(dyn ToSql + Sync))))
        })
        .collect();
    futures::future::try_join_all(pending)
        .await
        .map_err(ctx.pg(OP))?;
    if next_seq != stored {
        tx.execute(
            "UPDATE bridge_meta SET next_seq = $1 WHERE id = 1",
            &[&next_seq_param],
        )
        .await
        .map_err(ctx.pg(OP))?;
    }
    tx.commit().await.map_err(ctx.pg(OP))
}

async fn load_all(ctx: Ctx) -> Result<Snapshot, StateError> {
    const OP: &str = "load";
    let mut client = ctx.client(OP).await?;
    // One consistent view of all tables.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(ctx.pg(OP))?;
    let pg = ctx.pg(OP);
    let next_seq: i64 = tx
        .query_one("SELECT next_seq FROM bridge_meta WHERE id = 1", &[])
        .await
        .map_err(&pg)?
        .try_get(0)
        .map_err(&pg)?;
    let mut snap = Snapshot {
        next_seq: u64::try_from(next_seq).unwrap_or(0),
        ..Snapshot::default()
    };
    for r in tx
        .query(
            "SELECT seq, key, action, priority, enqueued_at_ns, fingerprint, payload
             FROM bridge_outbox ORDER BY seq",
            &[],
        )
        .await
        .map_err(&pg)?
    {
        let seq: i64 = r.try_get(0).map_err(&pg)?;
        let priority: i16 = r.try_get(3).map_err(&pg)?;
        snap.outbox.push(OutboxEntry {
            seq: u64::try_from(seq).map_err(|_| ctx.err(OP, format!("outbox seq {seq}")))?,
            key: r.try_get(1).map_err(&pg)?,
            action: action_of(&ctx, r.try_get(2).map_err(&pg)?)?,
            priority: u8::try_from(priority)
                .map_err(|_| ctx.err(OP, format!("outbox priority {priority}")))?,
            enqueued_at: from_nanos(&ctx, r.try_get(4).map_err(&pg)?)?,
            fingerprint: r.try_get(5).map_err(&pg)?,
            payload: r.try_get(6).map_err(&pg)?,
        });
    }
    for r in tx
        .query(
            "SELECT key, action, fingerprint, at_ns, route FROM bridge_ledger",
            &[],
        )
        .await
        .map_err(&pg)?
    {
        snap.ledger.insert(
            r.try_get(0).map_err(&pg)?,
            LedgerEntry {
                action: action_of(&ctx, r.try_get(1).map_err(&pg)?)?,
                fingerprint: r.try_get(2).map_err(&pg)?,
                at: from_nanos(&ctx, r.try_get(3).map_err(&pg)?)?,
                route: r.try_get(4).map_err(&pg)?,
            },
        );
    }
    for r in tx
        .query("SELECT appliance, value FROM bridge_watermarks", &[])
        .await
        .map_err(&pg)?
    {
        snap.watermarks
            .insert(r.try_get(0).map_err(&pg)?, r.try_get(1).map_err(&pg)?);
    }
    for r in tx
        .query(
            "SELECT key, action, reason, errors, at_ns, payload FROM bridge_dead_letters",
            &[],
        )
        .await
        .map_err(&pg)?
    {
        let key: String = r.try_get(0).map_err(&pg)?;
        snap.dead_letters.insert(
            key.clone(),
            DeadLetter {
                key,
                action: action_of(&ctx, r.try_get(1).map_err(&pg)?)?,
                reason: r.try_get(2).map_err(&pg)?,
                errors: r.try_get(3).map_err(&pg)?,
                at: from_nanos(&ctx, r.try_get(4).map_err(&pg)?)?,
                payload: r.try_get(5).map_err(&pg)?,
            },
        );
    }
    for r in tx
        .query("SELECT id, ends_at_ns, body FROM bridge_silences", &[])
        .await
        .map_err(&pg)?
    {
        let id: String = r.try_get(0).map_err(&pg)?;
        snap.silences.insert(
            id.clone(),
            SilenceRecord {
                id,
                ends_at: from_nanos(&ctx, r.try_get(1).map_err(&pg)?)?,
                body: r.try_get(2).map_err(&pg)?,
            },
        );
    }
    tx.commit().await.map_err(&pg)?;
    Ok(snap)
}

async fn prune_old(
    ctx: Ctx,
    fence: Option<(String, u64)>,
    older_than: SystemTime,
) -> Result<usize, StateError> {
    const OP: &str = "prune";
    let cutoff = nanos("prune cutoff", older_than)?;
    let mut client = ctx.client(OP).await?;
    let tx = client.transaction().await.map_err(ctx.pg(OP))?;
    check_fence(&ctx, &*tx, &fence, OP).await?;
    let ledger = tx
        .execute(
            "DELETE FROM bridge_ledger WHERE action = 1 AND at_ns < $1",
            &[&cutoff],
        )
        .await
        .map_err(ctx.pg(OP))?;
    let dead = tx
        .execute(
            "DELETE FROM bridge_dead_letters WHERE at_ns < $1",
            &[&cutoff],
        )
        .await
        .map_err(ctx.pg(OP))?;
    let silences = tx
        .execute(
            "DELETE FROM bridge_silences WHERE ends_at_ns < $1",
            &[&cutoff],
        )
        .await
        .map_err(ctx.pg(OP))?;
    tx.commit().await.map_err(ctx.pg(OP))?;
    Ok(usize::try_from(ledger + dead + silences).unwrap_or(usize::MAX))
}

impl StateStore for PostgresStore {
    fn lease(self: Arc<Self>) -> Option<Arc<dyn crate::leader::LeaseStore>> {
        Some(self)
    }
    fn load(&self) -> Result<Snapshot, StateError> {
        self.run("load", load_all(self.ctx.clone()))
    }

    fn apply(&self, batch: &[Op]) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.run(
            "apply a batch",
            apply_batch(self.ctx.clone(), self.fence(), batch.to_vec()),
        )
    }

    fn prune(&self, older_than: SystemTime) -> Result<usize, StateError> {
        self.run(
            "prune",
            prune_old(self.ctx.clone(), self.fence(), older_than),
        )
    }

    fn counts(&self) -> Result<Counts, StateError> {
        let ctx = self.ctx.clone();
        self.run("count", async move {
            const OP: &str = "count";
            let client = ctx.client(OP).await?;
            let r = client
                .query_one(
                    "SELECT (SELECT count(*) FROM bridge_outbox), (SELECT count(*) FROM bridge_ledger)",
                    &[],
                )
                .await
                .map_err(ctx.pg(OP))?;
            let n = |i: usize| -> Result<usize, StateError> {
                let v: i64 = r.try_get(i).map_err(ctx.pg(OP))?;
                Ok(usize::try_from(v).unwrap_or(0))
            };
            Ok(Counts {
                outbox: n(0)?,
                ledger: n(1)?,
            })
        })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn path(&self) -> Option<&Path> {
        None
    }
}

/// The rustls client configuration for `mode` (see the README's `[state]` table for how the
/// libpq modes map).
fn tls_config(mode: SslMode, ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify = match mode {
        SslMode::Disable | SslMode::Prefer => false,
        SslMode::Require => ca_file.is_some(),
        SslMode::VerifyCa | SslMode::VerifyFull => true,
    };
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth());
    }
    let roots = Arc::new(roots(ca_file)?);
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| format!("cannot use the CA certificates: {e}"))?;
    Ok(if mode == SslMode::VerifyFull {
        builder.with_webpki_verifier(webpki).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
            .with_no_client_auth()
    })
}

fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| {
                    format!(
                        "state.ca_file {}: cannot read PEM certificates ({e}); point it at the CA bundle of the database server",
                        path.display()
                    )
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "state.ca_file {}: holds no usable CA certificate; point it at the CA bundle (PEM) of the database server",
                    path.display()
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err("no system CA certificates found; set state.ca_file to the CA bundle (PEM) of the database server".to_owned());
            }
        }
    }
    Ok(roots)
}

/// `sslmode=prefer/require` without a CA: encrypted, the peer not authenticated (libpq's
/// meaning). Signatures are still checked, so the handshake itself is sound.
#[derive(Debug)]
struct EncryptOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must verify, the name in the certificate may be anything.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_named_without_their_password() {
        let p =
            parse_url("postgres://bridge:s3cr%40t@db.example.com:6432/state?sslmode=verify-full")
                .unwrap();
        assert_eq!(p.target, "db.example.com:6432/state");
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert!(!format!("{p:?}").contains("s3cr"));
        let p = parse_url("postgresql://bridge@db").unwrap();
        assert_eq!(p.target, "db:5432/bridge");
        assert_eq!(p.sslmode, SslMode::Prefer);
        let opts = PostgresOptions::new(SecretString::from(
            "postgres://bridge:hunter2@db:5432/x".to_owned(),
        ));
        let dbg = format!("{opts:?}");
        assert!(
            dbg.contains("db:5432/x") && !dbg.contains("hunter2"),
            "{dbg}"
        );
        for bad in [
            "postgres://u:hunter2@db/x?sslmode=allow",
            "mysql://u:hunter2@db/x",
            "postgres://u:hunter2@db/x?sslrootcert=/ca.pem",
            "not a url hunter2",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
