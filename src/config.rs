//! Configuration: loading (defaults < TOML file < `BRIDGE_*` environment), validation that
//! reports every problem at once, and the resolved, typed settings the rest of the crate uses.
//!
//! "At once" spans the stages: a TOML syntax error (named by file, line and column), unknown
//! keys and values of the wrong type are reported and set aside, so the rest is still
//! extracted and validated in the same run ([`load_layers`]). Of a secret and its `_file`
//! twin, the higher source's replaces the lower one's; both in one source is an error.
//!
//! Two layers live here. [`RawConfig`] is the shape of the file and of the environment; it is
//! what `check-config` prints (with secrets redacted). [`Config`] is the validated result: URLs
//! are parsed, secrets are [`Secret`]s, and sections a role does not need may be absent.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::secret::Secret;

mod change_events;
pub use change_events::{
    ChangeEventsConfig, DEFAULT_CATEGORIES as DEFAULT_CHANGE_CATEGORIES,
    DEFAULT_NAMES as DEFAULT_CHANGE_NAMES, RawChangeEvents, RawChangeEventsOverride,
    change_url_beside,
};

/// Which parts of the bridge a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Poller, sender and web API in one process (`docker run`, the demo).
    All,
    /// The single writer: polls OneView and delivers to PagerDuty.
    Poller,
    /// A stateless front door: web API and status page.
    Web,
}

impl Role {
    /// Whether this role talks to OneView and PagerDuty on its own.
    pub fn polls(self) -> bool {
        matches!(self, Role::All | Role::Poller)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Poller => "poller",
            Role::Web => "web",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Raw shape (file + environment)
// ---------------------------------------------------------------------------------------------

/// The configuration exactly as written in the file and the environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// One appliance (the single-appliance form, kept for compatibility).
    pub oneview: RawOneView,
    /// Several appliances, `[[appliances]]`; giving both this and `[oneview]` is an error.
    pub appliances: Vec<RawAppliance>,
    pub pagerduty: RawPagerDuty,
    pub poller: RawPoller,
    pub dedup: RawDedup,
    pub server: RawServer,
    pub web: RawWeb,
    pub sync: RawSync,
    pub log: RawLog,
    pub state: RawState,
    pub lease: RawLease,
    pub scmb: RawScmb,
    /// `[change_events]`: completed OneView tasks as PagerDuty Change Events (off by default).
    pub change_events: RawChangeEvents,
    /// `[flap]`: flap damping (on by default).
    pub flap: RawFlap,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawOneView {
    /// Appliance base URL, `https://oneview.example.com`.
    pub url: Option<String>,
    /// Name used in incidents (`group`) and in the dedup key; defaults to the URL's host.
    pub name: Option<String>,
    pub username: Option<String>,
    #[serde(serialize_with = "redact")]
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    pub auth_login_domain: Option<String>,
    /// `"auto"` or an API version number such as 4600.
    pub api_version: ApiVersionSetting,
    pub ca_file: Option<PathBuf>,
    pub tls_insecure_skip_verify: bool,
    #[serde(with = "humantime_serde")]
    pub session_refresh: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// The most bytes one OneView response body may have; a longer one fails its request.
    pub max_response_bytes: u64,
}

/// Default of `oneview.max_response_bytes`: a 5,000-alert page of real alert content is about
/// 6 MB (measured with the simulator's templates), so this leaves ten times that for long
/// change logs and descriptions while bounding what a runaway answer can cost.
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Bounds of `oneview.max_response_bytes`.
const MIN_RESPONSE_BYTES: u64 = 1024 * 1024;
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024 * 1024;
/// A generous size of one alert in a collection page, for the page-size-vs-cap warning.
const ALERT_BYTES_GENEROUS: u64 = 4 * 1024;

impl Default for RawOneView {
    fn default() -> Self {
        Self {
            url: None,
            name: None,
            username: None,
            password: None,
            password_file: None,
            auth_login_domain: None,
            api_version: ApiVersionSetting::Auto,
            ca_file: None,
            tls_insecure_skip_verify: false,
            session_refresh: Duration::from_secs(23 * 3600),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// One `[[appliances]]` entry: an appliance with the keys of `[oneview]` (its `name` required,
/// being part of every dedup key) and optional overrides of `poller.interval`,
/// `poller.severities` and `poller.page_size`. The `[oneview]` keys are repeated rather than
/// a `#[serde(flatten)] RawOneView`: serde cannot deny unknown fields through a flatten, and a
/// misspelt key in an appliance must be an error that names it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAppliance {
    pub name: Option<String>,
    pub url: Option<String>,
    pub username: Option<String>,
    #[serde(serialize_with = "redact")]
    pub password: Option<SecretString>,
    pub password_file: Option<PathBuf>,
    pub auth_login_domain: Option<String>,
    pub api_version: ApiVersionSetting,
    pub ca_file: Option<PathBuf>,
    pub tls_insecure_skip_verify: bool,
    #[serde(with = "humantime_serde")]
    pub session_refresh: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub max_response_bytes: u64,
    /// Overrides `poller.interval` for this appliance.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// Overrides `poller.severities` for this appliance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severities: Option<Vec<String>>,
    /// Overrides `poller.page_size` for this appliance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// `[appliances.scmb]`: this appliance's message bus, overriding `[scmb]` key by key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scmb: Option<RawScmbOverride>,
    /// `[appliances.change_events]`: overrides `[change_events]` key by key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_events: Option<RawChangeEventsOverride>,
}

impl Default for RawAppliance {
    fn default() -> Self {
        let o = RawOneView::default();
        Self {
            name: None,
            url: None,
            username: None,
            password: None,
            password_file: None,
            auth_login_domain: None,
            api_version: o.api_version,
            ca_file: None,
            tls_insecure_skip_verify: false,
            session_refresh: o.session_refresh,
            connect_timeout: o.connect_timeout,
            request_timeout: o.request_timeout,
            max_response_bytes: o.max_response_bytes,
            interval: None,
            severities: None,
            page_size: None,
            scmb: None,
            change_events: None,
        }
    }
}

impl RawAppliance {
    /// The `[oneview]` keys of this entry, for the validation both forms share.
    fn oneview(&self) -> RawOneView {
        RawOneView {
            url: self.url.clone(),
            name: self.name.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            password_file: self.password_file.clone(),
            auth_login_domain: self.auth_login_domain.clone(),
            api_version: self.api_version,
            ca_file: self.ca_file.clone(),
            tls_insecure_skip_verify: self.tls_insecure_skip_verify,
            session_refresh: self.session_refresh,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            max_response_bytes: self.max_response_bytes,
        }
    }
}

impl RawOneView {
    /// Whether the single-appliance form was used at all.
    fn is_given(&self) -> bool {
        self.url.is_some()
            || self.name.is_some()
            || self.username.is_some()
            || self.password.is_some()
            || self.password_file.is_some()
    }
}

/// `api_version = "auto"` or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersionSetting {
    Auto,
    Fixed(u32),
}

impl Serialize for ApiVersionSetting {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ApiVersionSetting::Auto => s.serialize_str("auto"),
            ApiVersionSetting::Fixed(v) => s.serialize_u32(*v),
        }
    }
}

impl<'de> Deserialize<'de> for ApiVersionSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(i64),
            Str(String),
        }
        let bad = || {
            serde::de::Error::custom(
                "expected \"auto\" or an API version number such as 4600 (OneView 8.0)",
            )
        };
        match Repr::deserialize(d)? {
            Repr::Num(n) => u32::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .map(ApiVersionSetting::Fixed)
                .ok_or_else(bad),
            Repr::Str(s) if s.eq_ignore_ascii_case("auto") => Ok(ApiVersionSetting::Auto),
            Repr::Str(s) => s
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(ApiVersionSetting::Fixed)
                .ok_or_else(bad),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPagerDuty {
    #[serde(serialize_with = "redact")]
    pub routing_key: Option<SecretString>,
    pub routing_key_file: Option<PathBuf>,
    pub events_url: String,
    /// Webhooks v3 signing secrets, one per line (several during a rotation).
    #[serde(serialize_with = "redact")]
    pub webhook_secrets: Option<SecretString>,
    pub webhook_secrets_file: Option<PathBuf>,
    /// Optional routing rules; the first match wins, else `routing_key`.
    pub routes: Vec<RawRoute>,
    /// OneView severity -> PagerDuty severity. Merged over the built-in table.
    pub severity_map: BTreeMap<String, String>,
    /// `client` shown in PagerDuty ("oneview-pagerduty-bridge" by default).
    pub client: Option<String>,
    /// `client_url`: the bridge's status page, when reachable by on-call engineers.
    pub client_url: Option<String>,
    /// Base URL of the OneView web UI used in incident links; defaults to `oneview.url`.
    pub oneview_ui_url: Option<String>,
    /// Events in flight at once across different dedup keys.
    pub concurrency: usize,
    /// Client-side limit per routing key.
    pub rate_limit_per_minute: u32,
    /// Events waiting between the poller and the sender before the poller waits.
    pub queue_capacity: usize,
    #[serde(with = "humantime_serde")]
    pub retry_initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for RawPagerDuty {
    fn default() -> Self {
        Self {
            routing_key: None,
            routing_key_file: None,
            events_url: "https://events.pagerduty.com/v2/enqueue".to_owned(),
            webhook_secrets: None,
            webhook_secrets_file: None,
            routes: Vec::new(),
            severity_map: BTreeMap::new(),
            client: None,
            client_url: None,
            oneview_ui_url: None,
            concurrency: 8,
            rate_limit_per_minute: 120,
            queue_capacity: 10_000,
            retry_initial_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// One `[[pagerduty.routes]]` entry. Every given matcher must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRoute {
    /// A name for logs and metrics (bounded label); defaults to `route-<n>`.
    pub name: Option<String>,
    /// OneView severities (`Critical`, `Warning`, ...).
    pub severities: Vec<String>,
    /// Resource categories (`server-hardware`, `enclosures`, `storage-systems`, ...).
    pub resource_categories: Vec<String>,
    /// Alert type ids, glob patterns allowed (`Trap.cpqDa*`).
    pub alert_types: Vec<String>,
    /// Resource name glob (`SGH817*`).
    pub resource_name: Option<String>,
    /// Appliance name globs (`dc1-*`).
    pub appliances: Vec<String>,
    #[serde(serialize_with = "redact")]
    pub routing_key: Option<SecretString>,
    pub routing_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPoller {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub severities: Vec<String>,
    pub page_size: u32,
    #[serde(with = "humantime_serde")]
    pub resync_interval: Duration,
    /// How far before the watermark an incremental poll starts again.
    #[serde(with = "humantime_serde")]
    pub watermark_overlap: Duration,
}

impl Default for RawPoller {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            severities: vec!["Critical".to_owned(), "Warning".to_owned()],
            page_size: 500,
            resync_interval: Duration::from_secs(3600),
            watermark_overlap: Duration::from_secs(2),
        }
    }
}

/// `[flap]`: an alert that raises and clears more than `max_transitions` times within
/// `window` is flapping; its incident stays open until it stays cleared for `settle`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawFlap {
    pub enabled: bool,
    pub max_transitions: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
}

impl Default for RawFlap {
    fn default() -> Self {
        let d = crate::pipeline::FlapSettings::default();
        Self {
            enabled: d.enabled,
            max_transitions: d.max_transitions,
            window: d.window,
            settle: d.settle,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDedup {
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for RawDedup {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawServer {
    pub listen: String,
    /// Time in-flight work gets after SIGTERM before the process exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Time /ready answers 503 after SIGTERM before the bridge stops its work, so that load
    /// balancers stop routing to it first.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Bearer tokens for the web API, one per line (several during a rotation).
    #[serde(serialize_with = "redact")]
    pub api_tokens: Option<SecretString>,
    pub api_tokens_file: Option<PathBuf>,
    /// Serve the status page and the read API without a token.
    pub status_public: bool,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed; empty = use the peer address.
    pub trusted_proxies: Vec<String>,
    /// Per-client-IP rate limit on `/api/*`: sustained requests per second and burst.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// Time a request may take before it is answered 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest accepted body on `/api/*` and on the PagerDuty webhook, in bytes.
    pub api_body_limit: usize,
    pub webhook_body_limit: usize,
    /// Time a client has to send a request's line and headers, counted from the connection's
    /// accept for its first request and from the first byte for later ones.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; at the cap the longest-idle one is closed to make room.
    pub max_connections: usize,
    /// Longest request target (path and query), in bytes; longer ones get a JSON 414.
    pub max_uri_length: usize,
    /// Largest request line plus headers, in bytes; larger ones get a JSON 431.
    pub max_header_bytes: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".to_owned(),
            shutdown_timeout: Duration::from_secs(20),
            drain_delay: Duration::ZERO,
            api_tokens: None,
            api_tokens_file: None,
            status_public: false,
            trusted_proxies: Vec::new(),
            rate_limit_per_second: 20,
            rate_limit_burst: 40,
            request_timeout: Duration::from_secs(30),
            api_body_limit: 1024 * 1024,
            webhook_body_limit: 256 * 1024,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 512,
            max_uri_length: 8 * 1024,
            max_header_bytes: 32 * 1024,
        }
    }
}

/// How a web replica reaches the poller, and how it paces PagerDuty webhook write-backs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawWeb {
    /// The poller's internal API, `http://bridge-poller:8080`.
    pub poller_url: Option<String>,
    /// Shared token between web replicas and the poller's internal API.
    #[serde(serialize_with = "redact")]
    pub poller_token: Option<SecretString>,
    pub poller_token_file: Option<PathBuf>,
    /// Verified webhook deliveries waiting for a write-back slot; beyond it the webhook answers
    /// 503 with `Retry-After` and PagerDuty delivers again later.
    pub writeback_queue: usize,
    /// Write-backs in progress at once (requests to OneView, or to the poller from a replica).
    pub writeback_concurrency: usize,
    /// Per-client-IP limit of the webhook route alone; 0 = no limit (the default: the
    /// signature is the gate, see `web::api::routes`).
    pub webhook_rate_limit_per_second: u32,
    /// Burst of that limit; 0 = twice `webhook_rate_limit_per_second`.
    pub webhook_rate_limit_burst: u32,
    /// Pushed alerts (`POST /api/v1/alerts`) waiting for the delivery pipeline, apart from the
    /// poller's; beyond it a push is answered 429 with `Retry-After` for what did not fit.
    pub push_queue: usize,
}

/// Default of `web.writeback_queue`.
pub const DEFAULT_WRITEBACK_QUEUE: usize = 10_000;
/// Largest `web.writeback_queue`: a waiting job is a few hundred bytes, so this bounds the
/// queue's memory to some hundreds of MB.
pub const MAX_WRITEBACK_QUEUE: usize = 1_000_000;
/// Default of `web.writeback_concurrency`.
pub const DEFAULT_WRITEBACK_CONCURRENCY: usize = 8;
/// Largest `web.writeback_concurrency`: more would be a flood for one appliance.
pub const MAX_WRITEBACK_CONCURRENCY: usize = 64;
/// Default of `web.push_queue`.
pub const DEFAULT_PUSH_QUEUE: usize = 1_000;
/// Largest `web.push_queue`.
pub const MAX_PUSH_QUEUE: usize = 100_000;
/// Largest `web.webhook_rate_limit_per_second` (the limiter's period is 1 s / rate, in ns).
pub const MAX_RATE_LIMIT_PER_SECOND: u32 = 1_000_000;

impl Default for RawWeb {
    fn default() -> Self {
        Self {
            poller_url: None,
            poller_token: None,
            poller_token_file: None,
            writeback_queue: DEFAULT_WRITEBACK_QUEUE,
            writeback_concurrency: DEFAULT_WRITEBACK_CONCURRENCY,
            webhook_rate_limit_per_second: 0,
            webhook_rate_limit_burst: 0,
            push_queue: DEFAULT_PUSH_QUEUE,
        }
    }
}

/// Two-way sync: what PagerDuty webhooks write back to OneView.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSync {
    /// Add a note to the OneView alert's change log on acknowledge/resolve/reassign/annotate.
    pub notes: bool,
    /// Also set the OneView alert `Cleared` when its incident is resolved in PagerDuty.
    pub clear_on_resolve: bool,
}

impl Default for RawSync {
    fn default() -> Self {
        Self {
            notes: true,
            clear_on_resolve: false,
        }
    }
}

/// `[state]`: where the poller keeps what PagerDuty was told, so that a restart neither loses a
/// resolve nor re-pages an alert PagerDuty already heard about.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawState {
    /// `memory`, `file` or `postgres`. Unset: `file` when `path` is set, else `memory`.
    pub backend: Option<StateBackend>,
    /// State file (redb), like `/var/lib/oneview-pagerduty-bridge/state.redb`. Unset: state is
    /// kept in memory only and a restart forgets it. Its directory must exist; on Kubernetes
    /// mount a volume there.
    pub path: Option<PathBuf>,
    /// How long the ledger remembers an alert after its incident was resolved; older entries
    /// (and dead letters) are pruned so the file stops growing.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The PostgreSQL database (backend `postgres`), a libpq-style URL:
    /// `postgres://user:password@host:5432/dbname?sslmode=verify-full`.
    #[serde(serialize_with = "redact")]
    pub url: Option<SecretString>,
    pub url_file: Option<PathBuf>,
    /// PEM CA bundle the database's certificate must chain to (`sslmode=verify-ca`/`verify-full`,
    /// and `require`, which then verifies the chain too). Unset: the system's CAs.
    pub ca_file: Option<PathBuf>,
    /// Connections to the database at most.
    pub pool_size: usize,
    /// Connecting to the database (TCP, TLS, authentication) gives up after this long.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Name of the leadership lease row: pollers sharing the database and this name elect one
    /// leader.
    pub lease_name: String,
}

impl Default for RawState {
    fn default() -> Self {
        Self {
            backend: None,
            path: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            url: None,
            url_file: None,
            ca_file: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(5),
            lease_name: "poller".to_owned(),
        }
    }
}

/// `[lease]`: the leadership lease of pollers sharing a PostgreSQL state database
/// (`crate::leader`). Ignored by the other backends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLease {
    /// How long a lease lasts without renewal: a dead leader is replaced after at most this.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How often the leader renews (and a standby tries to take over).
    #[serde(with = "humantime_serde")]
    pub renew_interval: Duration,
    /// This poller's name in the lease row; default: `$HOSTNAME` (the pod name) plus a random
    /// suffix, so a restarted pod never mistakes its predecessor's lease for its own.
    pub holder: Option<String>,
    /// The URL other replicas reach this poller at, kept in the lease row for operators.
    pub advertise_url: Option<String>,
}

impl Default for RawLease {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            holder: None,
            advertise_url: None,
        }
    }
}

/// `state.backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    Memory,
    File,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON unless stdout is a terminal.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    pub format: LogFormat,
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            level: "info".to_owned(),
        }
    }
}

fn redact<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

/// `[scmb]`: OneView's State-Change Message Bus (AMQPS at the appliance host), see
/// [`crate::oneview::scmb`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawScmb {
    pub enabled: bool,
    pub port: u16,
    /// How often the appliance is still polled while the bus is healthy (a safety net).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Unacknowledged messages the broker may send ahead.
    pub prefetch: u16,
    /// PEM files that replace the keypair and CA read over REST.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl Default for RawScmb {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 5671,
            poll_interval: Duration::from_secs(300),
            prefetch: 100,
            client_cert_file: None,
            client_key_file: None,
            ca_file: None,
        }
    }
}

/// `[appliances.scmb]`: the keys of `[scmb]`, each optional, overriding it for one appliance.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawScmbOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub poll_interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl RawScmbOverride {
    /// This appliance's effective bus settings: `global` with these keys replaced, the given
    /// keys validated under `prefix` (`appliances[2].scmb`). A certificate and its key are
    /// replaced together, so one level never pairs its certificate with the other's key.
    fn apply(&self, c: &mut Checker, prefix: &str, global: &ScmbConfig) -> ScmbConfig {
        let d = RawScmb::default();
        // Only the keys given here are checked here: `[scmb]`'s own are checked once, as such.
        let own = RawScmb {
            enabled: self.enabled.unwrap_or(d.enabled),
            port: self.port.unwrap_or(d.port),
            poll_interval: self.poll_interval.unwrap_or(d.poll_interval),
            prefetch: self.prefetch.unwrap_or(d.prefetch),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            ca_file: self.ca_file.clone(),
        };
        validate_scmb(c, prefix, &own);
        let pair_given = self.client_cert_file.is_some() || self.client_key_file.is_some();
        ScmbConfig {
            enabled: self.enabled.unwrap_or(global.enabled),
            port: self.port.unwrap_or(global.port),
            poll_interval: self.poll_interval.unwrap_or(global.poll_interval),
            prefetch: self.prefetch.unwrap_or(global.prefetch),
            client_cert_file: if pair_given {
                self.client_cert_file.clone()
            } else {
                global.client_cert_file.clone()
            },
            client_key_file: if pair_given {
                self.client_key_file.clone()
            } else {
                global.client_key_file.clone()
            },
            ca_file: self.ca_file.clone().or_else(|| global.ca_file.clone()),
        }
    }
}

/// The validated `[scmb]` section.
#[derive(Debug, Clone)]
pub struct ScmbConfig {
    pub enabled: bool,
    pub port: u16,
    pub poll_interval: Duration,
    pub prefetch: u16,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

impl Default for ScmbConfig {
    fn default() -> Self {
        let r = RawScmb::default();
        Self {
            enabled: r.enabled,
            port: r.port,
            poll_interval: r.poll_interval,
            prefetch: r.prefetch,
            client_cert_file: None,
            client_key_file: None,
            ca_file: None,
        }
    }
}

fn validate_scmb(c: &mut Checker, prefix: &str, s: &RawScmb) -> ScmbConfig {
    let key = |k: &str| format!("{prefix}.{k}");
    if s.port == 0 {
        c.problem(
            &key("port"),
            Some("0"),
            "is not a port",
            "remove it to use OneView's 5671",
        );
    }
    if s.prefetch == 0 || s.prefetch > 10_000 {
        c.problem(
            &key("prefetch"),
            Some(&s.prefetch.to_string()),
            "must be 1 to 10000 (0 would let the broker send without bound)",
            "remove it to use 100",
        );
    }
    if s.poll_interval < Duration::from_secs(10) || s.poll_interval > Duration::from_secs(86_400) {
        c.problem(
            &key("poll_interval"),
            Some(&humantime::format_duration(s.poll_interval).to_string()),
            "must be 10s to 24h (polling is the safety net while the bus is up)",
            "remove it to use 5m",
        );
    }
    if s.client_cert_file.is_some() != s.client_key_file.is_some() {
        let (given, missing) = if s.client_cert_file.is_some() {
            (key("client_cert_file"), key("client_key_file"))
        } else {
            (key("client_key_file"), key("client_cert_file"))
        };
        c.problem(
            &missing,
            None,
            &format!("is needed with {given}: a certificate and its key go together"),
            "give both, or neither to read the keypair from the appliance",
        );
    }
    for (name, file) in [
        ("client_cert_file", &s.client_cert_file),
        ("client_key_file", &s.client_key_file),
        ("ca_file", &s.ca_file),
    ] {
        if let Some(f) = file
            && !f.is_file()
        {
            c.problem(
                &key(name),
                Some(&f.display().to_string()),
                "is not a readable file",
                "point it at a PEM file, or remove it to read this from the appliance",
            );
        }
    }
    ScmbConfig {
        enabled: s.enabled,
        port: s.port,
        poll_interval: s.poll_interval,
        prefetch: s.prefetch,
        client_cert_file: s.client_cert_file.clone(),
        client_key_file: s.client_key_file.clone(),
        ca_file: s.ca_file.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// Problems
// ---------------------------------------------------------------------------------------------

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, `poller.interval`.
    pub key: String,
    /// The offending value, when it is not a secret.
    pub value: Option<String>,
    pub why: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.key)?;
        if let Some(v) = &self.value {
            write!(f, " = {v:?}")?;
        }
        write!(f, ": {}; {}", self.why, self.fix)
    }
}

/// Loading or validating the configuration failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

// ---------------------------------------------------------------------------------------------
// Resolved configuration
// ---------------------------------------------------------------------------------------------

/// The validated configuration for one role.
#[derive(Debug, Clone)]
pub struct Config {
    pub role: Role,
    pub raw: RawConfig,
    /// The appliances the role watches (`[[appliances]]`, or the one `[oneview]`); empty for
    /// role `web`, which talks to none.
    pub appliances: Vec<ApplianceConfig>,
    /// Present when the role sends to PagerDuty.
    pub pagerduty: Option<PagerDutyConfig>,
    /// The `[poller]` settings; each appliance's effective ones are in [`ApplianceConfig`].
    pub poller: PollerConfig,
    pub dedup_ttl: Duration,
    pub server: ServerConfig,
    pub web: WebConfig,
    pub log: RawLog,
    pub state: StateConfig,
    pub lease: LeaseConfig,
    /// `[scmb]`: the message bus (off by default).
    pub scmb: ScmbConfig,
    /// `[change_events]` (off by default); each appliance's effective ones are in
    /// [`ApplianceConfig`].
    pub change_events: ChangeEventsConfig,
    /// `[flap]`: flap damping.
    pub flap: crate::pipeline::FlapSettings,
    /// Non-fatal findings (plain-HTTP URLs, disabled TLS verification) logged at start.
    pub warnings: Vec<String>,
}

/// One appliance to watch: how to reach it, and how to poll it.
#[derive(Debug, Clone)]
pub struct ApplianceConfig {
    pub oneview: OneViewConfig,
    /// `[poller]` with this appliance's overrides applied.
    pub poller: PollerConfig,
    /// `[scmb]` with this appliance's `[appliances.scmb]` applied.
    pub scmb: ScmbConfig,
    /// `[change_events]` with this appliance's `[appliances.change_events]` applied.
    pub change_events: ChangeEventsConfig,
}

#[derive(Debug, Clone)]
pub struct OneViewConfig {
    pub url: Url,
    pub name: String,
    pub username: String,
    pub password: Arc<Secret>,
    pub auth_login_domain: Option<String>,
    pub api_version: ApiVersionSetting,
    pub ca_file: Option<PathBuf>,
    pub tls_insecure_skip_verify: bool,
    pub session_refresh: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct PagerDutyConfig {
    pub routing_key: Arc<Secret>,
    pub events_url: Url,
    pub routes: Vec<RouteConfig>,
    /// OneView severity (as written by OneView) -> PagerDuty severity.
    pub severity_map: BTreeMap<String, String>,
    pub client: String,
    pub client_url: Option<Url>,
    pub oneview_ui_url: Option<Url>,
    pub concurrency: usize,
    pub rate_limit_per_minute: u32,
    pub queue_capacity: usize,
    pub retry_initial_delay: Duration,
    pub retry_max_delay: Duration,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub severities: Vec<String>,
    pub resource_categories: Vec<String>,
    pub alert_types: Vec<String>,
    pub resource_name: Option<String>,
    pub appliances: Vec<String>,
    pub routing_key: Arc<Secret>,
}

#[derive(Debug, Clone)]
pub struct PollerConfig {
    pub interval: Duration,
    pub severities: Vec<String>,
    pub page_size: u32,
    pub resync_interval: Duration,
    pub watermark_overlap: Duration,
}

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// `None`: in-memory state (lost on restart). Only with backend `file`.
    pub path: Option<PathBuf>,
    pub retention: Duration,
    /// Set with backend `postgres` only.
    pub postgres: Option<PostgresConfig>,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackend::Memory,
            path: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            postgres: None,
        }
    }
}

/// `[state]` of backend `postgres`, validated.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// `state.url` / `state.url_file`; `Debug` shows only its key.
    pub url: Arc<Secret>,
    /// `host:port/dbname` of the URL, for logs.
    pub target: String,
    pub ca_file: Option<PathBuf>,
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub lease_name: String,
}

/// See [`RawLease`].
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub ttl: Duration,
    pub renew_interval: Duration,
    pub holder: String,
    pub advertise_url: String,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    pub api_tokens: Option<Arc<Secret>>,
    pub status_public: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub request_timeout: Duration,
    pub api_body_limit: usize,
    pub webhook_body_limit: usize,
    /// Connection limits and timeouts of the HTTP listener (`crate::http::serve`).
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_uri_length: usize,
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct WebConfig {
    pub poller_url: Option<Url>,
    pub poller_token: Option<Arc<Secret>>,
    /// PagerDuty webhook signing secrets (file content: one per line).
    pub webhook_secrets: Option<Arc<Secret>>,
    pub sync_notes: bool,
    pub clear_on_resolve: bool,
    pub writeback_queue: usize,
    pub writeback_concurrency: usize,
    /// Per-client limit of the webhook route: `(per second, burst)`, `None` = no limit.
    pub webhook_rate_limit: Option<(u32, u32)>,
    /// Admission of pushed alerts into the pipeline (see [`RawWeb::push_queue`]).
    pub push_queue: usize,
}

/// Bounds of `server.max_connections`: a handful leaves room for probes, a million is beyond
/// any descriptor limit worth having.
pub const SERVER_MAX_CONNECTIONS: (usize, usize) = (4, 1_000_000);
/// Bounds of `server.max_uri_length`, in bytes: hyper refuses request targets of 65,534 bytes
/// and more on its own.
pub const SERVER_MAX_URI_LENGTH: (usize, usize) = (1024, 60 * 1024);
/// Bounds of `server.max_header_bytes`, in bytes.
pub const SERVER_MAX_HEADER_BYTES: (usize, usize) = (4 * 1024, 1024 * 1024);

/// OneView severities a user may watch. `OK` is not one: an OK alert is a cleared alert.
pub const WATCHABLE_SEVERITIES: &[&str] = &["Critical", "Warning", "Unknown", "Disabled"];
/// PagerDuty's severity enum (Events API v2).
pub const PAGERDUTY_SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];

/// The built-in OneView -> PagerDuty severity table; `pagerduty.severity_map` overrides entries.
pub fn default_severity_map() -> BTreeMap<String, String> {
    [
        ("Critical", "critical"),
        ("Warning", "warning"),
        ("Unknown", "error"),
        ("Disabled", "info"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_owned(), b.to_owned()))
    .collect()
}

/// Environment variables that belong to the command line, not to the configuration tree.
const ENV_IGNORED: &[&str] = &["CONFIG", "ROLE"];

/// The `BRIDGE_*` environment layer.
fn env_provider() -> Env {
    Env::prefixed("BRIDGE_").split("__").ignore(ENV_IGNORED)
}

/// Builds the layered figment: defaults < file < environment.
pub fn figment(file: Option<&Path>) -> Figment {
    let mut f = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(path) = file {
        f = f.merge(Toml::file_exact(path));
    }
    f.merge(env_provider())
}

/// One configuration source above the defaults, as far as precedence between a secret and its
/// `_file` twin needs it: which `section.key`s it sets.
#[derive(Debug, Clone, Default)]
pub struct Layer {
    keys: std::collections::BTreeSet<String>,
}

impl Layer {
    /// The keys `provider` sets (its `data()` read once more; a few small maps).
    pub fn of(provider: &impl Provider) -> Self {
        let mut keys = std::collections::BTreeSet::new();
        if let Ok(data) = provider.data() {
            for dict in data.values() {
                for (section, v) in dict {
                    keys.insert(section.clone());
                    if let Some(d) = v.as_dict() {
                        keys.extend(d.keys().map(|k| format!("{section}.{k}")));
                    }
                }
            }
        }
        Self { keys }
    }

    fn sets(&self, key: &str) -> bool {
        self.keys.contains(key)
    }
}

/// Loads the configuration for `role` from `file` (if any) and the process environment,
/// reporting every problem of every stage (syntax, unknown keys, bad values, validation) in
/// one error.
pub fn load(file: Option<&Path>, role: Role) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
    let mut layers = Vec::new();
    let mut syntax = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            path: path.to_owned(),
            source,
        })?;
        // figment's own parse error names neither the file nor, reliably, the position; and a
        // file that does not parse is left out so that the environment is still checked.
        match text.parse::<toml::Table>() {
            Ok(_) => {
                let provider = Toml::file_exact(path);
                layers.push(Layer::of(&provider));
                fig = fig.merge(provider);
            }
            Err(e) => syntax.push(toml_syntax_problem(path, &text, &e)),
        }
    }
    let env = env_provider();
    layers.push(Layer::of(&env));
    fig = fig.merge(env);
    let mut loaded = load_layers(&fig, &layers);
    if !syntax.is_empty() {
        // Without the file, "missing" findings would only be noise: report what was read.
        syntax.append(&mut loaded.problems);
        return Err(ConfigError::Invalid(syntax));
    }
    loaded.validate(role)
}

/// What loading found before validation.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration with every offending key left at its default.
    pub raw: RawConfig,
    /// Unknown keys and values of the wrong type or shape.
    pub problems: Vec<Problem>,
    /// Keys whose problem is already reported: validation findings about them (a bad
    /// `oneview.password` reads as missing once it is dropped) are left out.
    dropped: Vec<String>,
    /// False when a value could not be set aside (no key to blame): validating the defaults
    /// in its place would only add noise.
    complete: bool,
    /// Secrets one source gave that replaced the other twin from a lower source.
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Validates for `role`; the loading problems come first, then validation's own.
    pub fn validate(self, role: Role) -> Result<Config, ConfigError> {
        let Loaded {
            raw,
            mut problems,
            dropped,
            complete,
            warnings,
        } = self;
        if !complete {
            return Err(ConfigError::Invalid(problems));
        }
        match validate(raw, role) {
            Ok(mut cfg) if problems.is_empty() => {
                cfg.warnings.splice(0..0, warnings);
                Ok(cfg)
            }
            Ok(_) => Err(ConfigError::Invalid(problems)),
            Err(ConfigError::Invalid(more)) => {
                problems.extend(more.into_iter().filter(|p| !covered(&dropped, &p.key)));
                Err(ConfigError::Invalid(problems))
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether `key` is, or lies under, or is the secret twin of, one of `dropped`.
fn covered(dropped: &[String], key: &str) -> bool {
    dropped.iter().any(|d| {
        let d = d.strip_suffix("_file").unwrap_or(d);
        let k = key.strip_suffix("_file").unwrap_or(key);
        k == d || k.starts_with(&format!("{d}.")) || k.starts_with(&format!("{d}["))
    })
}

/// Extracts [`RawConfig`], reporting every unknown key and every bad value (no precedence
/// between secret twins: that needs the layers, see [`load_layers`]).
pub fn extract(fig: &Figment) -> Result<RawConfig, ConfigError> {
    let loaded = load_layers(fig, &[]);
    if loaded.problems.is_empty() && loaded.complete {
        Ok(loaded.raw)
    } else {
        Err(ConfigError::Invalid(loaded.problems))
    }
}

/// Bound on extraction attempts: each one sets one offending key aside.
const MAX_EXTRACT_ATTEMPTS: usize = 200;

/// Reads `fig` (defaults < `layers`, lowest first) into a [`RawConfig`] without stopping at
/// the first problem: unknown keys and bad values are reported and left out, so the rest of
/// the configuration is still extracted and validated in the same run. Of a secret and its
/// `_file` twin given by different layers, the higher layer's wins.
pub fn load_layers(fig: &Figment, layers: &[Layer]) -> Loaded {
    let mut loaded = Loaded {
        raw: RawConfig::default(),
        problems: Vec::new(),
        dropped: Vec::new(),
        complete: true,
        warnings: Vec::new(),
    };
    let known = serde_json::to_value(RawConfig::default()).unwrap_or_default();
    let mut dict = match fig.data() {
        Ok(data) => data
            .into_values()
            .fold(figment::value::Dict::new(), |mut acc, d| {
                acc.extend(d);
                acc
            }),
        Err(e) => {
            loaded
                .problems
                .extend(e.into_iter().map(|e| value_problem(fig, &known, &e)));
            loaded.complete = false;
            return loaded;
        }
    };
    take_unknown_keys(fig, &known, &mut dict, "", &mut loaded.problems);
    resolve_secret_twins(fig, &known, layers, &mut dict, &mut loaded.warnings);

    for _ in 0..MAX_EXTRACT_ATTEMPTS {
        let errors = match Figment::from(Serialized::defaults(&dict)).extract::<RawConfig>() {
            Ok(raw) => {
                loaded.raw = raw;
                return loaded;
            }
            Err(errors) => errors,
        };
        let mut set_aside = false;
        for e in errors {
            loaded.problems.push(value_problem(fig, &known, &e));
            // The whole `section.key` goes (a bad list item or route takes its list along):
            // what remains is still a valid shape.
            let top: Vec<&str> = e.path.iter().take(2).map(String::as_str).collect();
            if !top.is_empty() && remove_path(&mut dict, &top) {
                loaded.dropped.push(top.join("."));
                set_aside = true;
            }
        }
        if !set_aside {
            break;
        }
    }
    loaded.complete = false;
    loaded
}

/// Removes `section.key` (or a whole section) from `dict`; false when it was not there.
fn remove_path(dict: &mut figment::value::Dict, path: &[&str]) -> bool {
    match path {
        [section] => dict.remove(*section).is_some(),
        [section, key, ..] => match dict.get_mut(*section) {
            Some(figment::value::Value::Dict(_, d)) => d.remove(*key).is_some(),
            _ => false,
        },
        [] => false,
    }
}

/// Whether the value at `path` may be a secret: its key has a `_file` twin in [`RawConfig`].
fn is_secret(known: &serde_json::Value, path: &[String]) -> bool {
    let [section, key, rest @ ..] = path else {
        return false;
    };
    if section == "pagerduty" && key == "routes" {
        // A route's `routing_key`, or a route (or the list) as a whole, which may hold one.
        const PLAIN: &[&str] = &[
            "name",
            "severities",
            "resource_categories",
            "alert_types",
            "resource_name",
            "routing_key_file",
        ];
        return !rest.iter().any(|k| PLAIN.contains(&k.as_str()));
    }
    known
        .get(section.as_str())
        .is_some_and(|n| n.get(key.as_str()).is_some() && n.get(format!("{key}_file")).is_some())
}

/// Where a key's value came from, for the message: the file's path or the variable's name.
fn origin(fig: &Figment, path: &[&str]) -> String {
    let top: Vec<&str> = path.iter().take(2).copied().collect();
    let Some(m) = fig.find_metadata(&top.join(".")) else {
        return String::new();
    };
    match &m.source {
        Some(figment::Source::File(p)) => format!(" (from {} {})", m.name, p.display()),
        _ if m.name.contains("environment") => {
            let var = path
                .iter()
                .map(|k| k.to_ascii_uppercase())
                .collect::<Vec<_>>()
                .join("__");
            format!(" (from environment variable BRIDGE_{var})")
        }
        _ => format!(" (from {})", m.name),
    }
}

/// `pagerduty.routes.0.severities` as a user writes it: `pagerduty.routes[0].severities`.
fn display_key(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() && !out.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    if out.is_empty() {
        "<config>".to_owned()
    } else {
        out
    }
}

/// Reports, and removes from `dict`, every key [`RawConfig`] does not have.
fn take_unknown_keys(
    fig: &Figment,
    known: &serde_json::Value,
    dict: &mut figment::value::Dict,
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    let unknown: Vec<String> = dict
        .keys()
        .filter(|k| known.get(k.as_str()).is_none())
        .cloned()
        .collect();
    for k in unknown {
        dict.remove(&k);
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let parts: Vec<&str> = path.split('.').collect();
        out.push(Problem {
            key: path.clone(),
            value: None,
            why: format!("unknown key{}", origin(fig, &parts)),
            fix: "check the spelling against the configuration reference in README.md".to_owned(),
        });
    }
    for (k, v) in dict.iter_mut() {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (path.as_str(), v) {
            // Tables whose keys are free-form (maps) are not checked further.
            ("pagerduty.severity_map", _) => {}
            // Route entries are tables inside an array; check their keys against a default route.
            ("pagerduty.routes", figment::value::Value::Array(_, items)) => {
                let route = serde_json::to_value(RawRoute::default()).unwrap_or_default();
                for (i, item) in items.iter_mut().enumerate() {
                    if let figment::value::Value::Dict(_, d) = item {
                        let bad: Vec<String> = d
                            .keys()
                            .filter(|k| route.get(k.as_str()).is_none())
                            .cloned()
                            .collect();
                        for k in bad {
                            d.remove(&k);
                            out.push(Problem {
                                key: format!("pagerduty.routes[{i}].{k}"),
                                value: None,
                                why: format!(
                                    "unknown key{}",
                                    origin(fig, &["pagerduty", "routes"])
                                ),
                                fix: "route keys are name, severities, resource_categories, alert_types, resource_name, appliances, routing_key, routing_key_file".to_owned(),
                            });
                        }
                    }
                }
            }
            // Appliance entries likewise, against a default appliance.
            ("appliances", figment::value::Value::Array(_, items)) => {
                let appliance = serde_json::to_value(RawAppliance::default()).unwrap_or_default();
                // `[appliances.scmb]` takes the keys of `[scmb]`.
                let scmb = serde_json::to_value(RawScmb::default()).unwrap_or_default();
                for (i, item) in items.iter_mut().enumerate() {
                    if let figment::value::Value::Dict(_, d) = item {
                        if let Some(figment::value::Value::Dict(_, bus)) = d.get_mut("scmb") {
                            let bad: Vec<String> = bus
                                .keys()
                                .filter(|k| scmb.get(k.as_str()).is_none())
                                .cloned()
                                .collect();
                            for k in bad {
                                bus.remove(&k);
                                out.push(Problem {
                                    key: format!("appliances[{i}].scmb.{k}"),
                                    value: None,
                                    why: format!("unknown key{}", origin(fig, &["appliances"])),
                                    fix: "[appliances.scmb] keys are those of [scmb]: enabled, port, poll_interval, prefetch, client_cert_file, client_key_file, ca_file".to_owned(),
                                });
                            }
                        }
                        if let Some(figment::value::Value::Dict(_, ce)) = d.get_mut("change_events")
                        {
                            let bad: Vec<String> = ce
                                .keys()
                                .filter(|k| {
                                    !matches!(
                                        k.as_str(),
                                        "enabled"
                                            | "categories"
                                            | "names"
                                            | "interval"
                                            | "page_size"
                                    )
                                })
                                .cloned()
                                .collect();
                            for k in bad {
                                ce.remove(&k);
                                out.push(Problem {
                                    key: format!("appliances[{i}].change_events.{k}"),
                                    value: None,
                                    why: format!("unknown key{}", origin(fig, &["appliances"])),
                                    fix: format!(
                                        "[appliances.change_events] keys are: {}",
                                        change_events::KEYS
                                    ),
                                });
                            }
                        }
                        let bad: Vec<String> = d
                            .keys()
                            .filter(|k| {
                                appliance.get(k.as_str()).is_none()
                                    && !matches!(
                                        k.as_str(),
                                        "interval"
                                            | "severities"
                                            | "page_size"
                                            | "scmb"
                                            | "change_events"
                                    )
                            })
                            .cloned()
                            .collect();
                        for k in bad {
                            d.remove(&k);
                            out.push(Problem {
                                key: format!("appliances[{i}].{k}"),
                                value: None,
                                why: format!("unknown key{}", origin(fig, &["appliances"])),
                                fix: "appliance keys are those of [oneview] (name, url, username, password, password_file, auth_login_domain, api_version, ca_file, tls_insecure_skip_verify, session_refresh, connect_timeout, request_timeout, max_response_bytes), interval, severities, page_size and the tables scmb and change_events".to_owned(),
                            });
                        }
                    }
                }
            }
            (_, figment::value::Value::Dict(_, d)) => {
                if let Some(node @ serde_json::Value::Object(_)) = known.get(k.as_str()) {
                    take_unknown_keys(fig, node, d, &path, out);
                }
            }
            _ => {}
        }
    }
}

/// Environment variables take precedence over the file, and that holds for a secret given
/// inline in one source and as `_file` in another: the higher source's twin replaces the
/// lower one's (removed from `dict`, with a warning naming both). Both twins in the same
/// source stay an error, reported by validation.
fn resolve_secret_twins(
    fig: &Figment,
    known: &serde_json::Value,
    layers: &[Layer],
    dict: &mut figment::value::Dict,
    warnings: &mut Vec<String>,
) {
    let Some(sections) = known.as_object() else {
        return;
    };
    for (section, keys) in sections {
        let Some(keys) = keys.as_object() else {
            continue;
        };
        for key in keys.keys() {
            let file_key = format!("{key}_file");
            if !keys.contains_key(&file_key) {
                continue;
            }
            let inline = format!("{section}.{key}");
            let file = format!("{section}.{file_key}");
            let Some(top) = layers
                .iter()
                .rposition(|l| l.sets(&inline) || l.sets(&file))
            else {
                continue;
            };
            let (winner, loser) = match (layers[top].sets(&inline), layers[top].sets(&file)) {
                (true, false) => ((&inline, key), (&file, &file_key)),
                (false, true) => ((&file, &file_key), (&inline, key)),
                _ => continue,
            };
            if !layers[..top].iter().any(|l| l.sets(loser.0)) {
                continue;
            }
            let loser_from = origin(fig, &[section, loser.1]);
            if remove_path(dict, &[section, loser.1]) {
                let winner_from = origin(fig, &[section, winner.1]);
                warnings.push(format!(
                    "{}{winner_from} replaces {}{loser_from}: a higher source overrides the other form of the same secret",
                    winner.0, loser.0
                ));
            }
        }
    }
}

/// A TOML syntax error, with the file, line and column, without the offending line itself
/// (it may hold a secret).
fn toml_syntax_problem(path: &Path, text: &str, e: &toml::de::Error) -> Problem {
    let at = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Problem {
        key: path.display().to_string(),
        value: None,
        why: format!("not valid TOML{}: {message}", at.unwrap_or_default()),
        fix:
            "fix the syntax there (strings in quotes, sections as [name], one key = value per line)"
                .to_owned(),
    }
}

/// One figment error as a [`Problem`], the origin from the original figment (`fig`).
fn value_problem(fig: &Figment, known: &serde_json::Value, e: &figment::Error) -> Problem {
    let parts: Vec<&str> = e.path.iter().map(String::as_str).collect();
    let key = display_key(&e.path);
    let (why, fix) = if is_secret(known, &e.path) {
        // The serde message may quote the value; do not echo a secret.
        (
            "invalid value".to_owned(),
            format!(
                "give the secret as a quoted string, or the path of a file holding it as `{}_file`",
                key.rsplit('.').next().unwrap_or(&key)
            ),
        )
    } else {
        (e.kind.to_string(), fix_hint(&e.kind))
    };
    Problem {
        value: None,
        why: format!("{why}{}", origin(fig, &parts)),
        fix,
        key,
    }
}

fn fix_hint(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::UnknownField(_, expected) => {
            format!("known keys here: {}", expected.join(", "))
        }
        Kind::InvalidValue(_, expected) | Kind::InvalidType(_, expected)
            if expected.contains("duration") =>
        {
            "durations are strings like \"30s\", \"5m\" or \"23h\"".to_owned()
        }
        Kind::InvalidValue(..) | Kind::InvalidType(..) => {
            "see the key's type in the configuration tables of README.md".to_owned()
        }
        Kind::UnknownVariant(_, expected) => format!("use one of: {}", expected.join(", ")),
        Kind::Message(m) if m.contains("TOML") || m.contains("parse") => {
            "fix the TOML syntax at the position shown".to_owned()
        }
        _ => "see the configuration reference in README.md".to_owned(),
    }
}

/// Validates a secret's value; returns why it is wrong.
type SecretCheck<'a> = &'a dyn Fn(&str) -> Option<String>;

struct Checker {
    problems: Vec<Problem>,
    warnings: Vec<String>,
}

impl Checker {
    fn problem(&mut self, key: &str, value: Option<&str>, why: &str, fix: &str) {
        self.problems.push(Problem {
            key: key.to_owned(),
            value: value.map(str::to_owned),
            why: why.to_owned(),
            fix: fix.to_owned(),
        });
    }

    /// Parses an http(s) URL, warning on plain HTTP.
    fn url(&mut self, key: &str, raw: &str) -> Option<Url> {
        match Url::parse(raw) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                if u.scheme() == "http" {
                    self.warnings.push(format!(
                        "{key} uses plain http ({raw}); traffic and credentials are not encrypted. Use https outside simulators and tests"
                    ));
                }
                Some(u)
            }
            Ok(_) => {
                self.problem(
                    key,
                    Some(raw),
                    "not an http(s) URL with a host",
                    "write it like https://oneview.example.com",
                );
                None
            }
            Err(e) => {
                self.problem(
                    key,
                    Some(raw),
                    &format!("not a valid URL ({e})"),
                    "write it with a scheme and a host, like https://oneview.example.com",
                );
                None
            }
        }
    }

    /// Resolves an inline-or-file secret pair. `required` reports a missing secret.
    fn secret(
        &mut self,
        key: &str,
        inline: &Option<SecretString>,
        file: &Option<PathBuf>,
        required: bool,
        check: Option<SecretCheck<'_>>,
    ) -> Option<Arc<Secret>> {
        let file_key = format!("{key}_file");
        let secret = match (inline, file) {
            (Some(_), Some(_)) => {
                self.problem(
                    key,
                    None,
                    &format!("both `{key}` and `{file_key}` are set in the same source"),
                    &format!(
                        "keep only one; `{file_key}` is preferred for Kubernetes Secrets and Vault (across sources the higher one wins: environment over file)"
                    ),
                );
                return None;
            }
            (Some(v), None) => Secret::inline(key, v.clone()),
            (None, Some(p)) => Secret::file(key, p.clone()),
            (None, None) => {
                if required {
                    self.problem(
                        key,
                        None,
                        "missing",
                        &format!("set `{file_key}` to a file holding the secret, or `{key}` (environment: BRIDGE_{})", key.to_uppercase().replace('.', "__")),
                    );
                }
                return None;
            }
        };
        match secret.current() {
            Ok(v) => {
                if let Some(why) = check.and_then(|c| c(v.expose_secret())) {
                    self.problem(
                        key,
                        None,
                        &why,
                        "copy the key again from the PagerDuty service's Events API v2 integration",
                    );
                    return None;
                }
            }
            Err(e) => {
                self.problem(
                    &file_key,
                    file.as_ref().map(|p| p.display().to_string()).as_deref(),
                    &e.to_string(),
                    "mount the secret file or fix the path",
                );
                return None;
            }
        }
        Some(Arc::new(secret))
    }
}

fn routing_key_check(v: &str) -> Option<String> {
    let n = v.chars().count();
    (n != 32).then(|| format!("a PagerDuty routing key has 32 characters, this one has {n}"))
}

/// Validates one appliance's connection settings (`[oneview]`, or an `[[appliances]]` entry
/// under `prefix`); `None` when something needed is missing or wrong (reported on `c`).
fn validate_oneview(
    c: &mut Checker,
    prefix: &str,
    ov: &RawOneView,
    needs_backends: bool,
    page_size: u32,
) -> Option<OneViewConfig> {
    let ov_url = match &ov.url {
        Some(u) => c.url(&format!("{prefix}.url"), u),
        None => {
            if needs_backends {
                c.problem(&format!("{prefix}.url"), None, "missing", &format!("set it to the appliance address, like https://oneview.example.com (environment: {})", env_name(prefix, "url")));
            }
            None
        }
    };
    if needs_backends && ov.username.as_deref().is_none_or(str::is_empty) {
        c.problem(&format!("{prefix}.username"), None, "missing", "set the OneView user the bridge logs in as (a read-only user is enough unless write-back is enabled)");
    }
    let password = c.secret(
        &format!("{prefix}.password"),
        &ov.password,
        &ov.password_file,
        needs_backends,
        None,
    );
    if let ApiVersionSetting::Fixed(v) = ov.api_version
        && v < 120
    {
        c.problem(
            &format!("{prefix}.api_version"),
            Some(&v.to_string()),
            "OneView API versions start at 120",
            "use \"auto\" or the appliance's version, for example 4600 for OneView 8.0",
        );
    }
    if let Some(ca) = &ov.ca_file
        && let Err(e) = std::fs::metadata(ca)
    {
        c.problem(
            &format!("{prefix}.ca_file"),
            Some(&ca.display().to_string()),
            &format!("cannot read it: {e}"),
            "point it at a PEM file with the appliance's CA certificate",
        );
    }
    if ov.tls_insecure_skip_verify {
        c.warnings.push(format!("{prefix}.tls_insecure_skip_verify = true: the appliance's TLS certificate is NOT verified; anyone on the path can read the OneView password. Use {prefix}.ca_file instead"));
    }
    if ov.session_refresh < Duration::from_secs(60) {
        c.problem(&format!("{prefix}.session_refresh"), Some(&humantime::format_duration(ov.session_refresh).to_string()), "must be at least 1m", "the default 23h suits the appliance's 24h idle timeout; lower it only if your admin lowered that timeout");
    }
    for (key, d) in [
        ("connect_timeout", ov.connect_timeout),
        ("request_timeout", ov.request_timeout),
    ] {
        if d.is_zero() {
            c.problem(
                &format!("{prefix}.{key}"),
                Some("0s"),
                "must be positive",
                "use something like \"5s\"",
            );
        }
    }
    if !(MIN_RESPONSE_BYTES..=MAX_RESPONSE_BYTES).contains(&ov.max_response_bytes) {
        c.problem(
            &format!("{prefix}.max_response_bytes"),
            Some(&ov.max_response_bytes.to_string()),
            "must be between 1048576 (1 MiB) and 1073741824 (1 GiB)",
            &format!("the default {DEFAULT_MAX_RESPONSE_BYTES} (64 MiB) holds a 5,000-alert page ten times over; raise it only if the bridge reports a larger page"),
        );
    } else if ov.max_response_bytes < u64::from(page_size) * ALERT_BYTES_GENEROUS {
        c.warnings.push(format!(
            "{prefix}.max_response_bytes = {} may be too small for a page size of {page_size} (poller.page_size, or the appliance's page_size): alerts with long change logs take up to about {} KiB each, and a longer page fails its poll. Raise {prefix}.max_response_bytes or lower the page size",
            ov.max_response_bytes,
            ALERT_BYTES_GENEROUS / 1024
        ));
    }
    match (ov_url, ov.username.clone(), password) {
        (Some(url), Some(username), Some(password)) if !username.is_empty() => {
            let name = ov
                .name
                .clone()
                .or_else(|| url.host_str().map(str::to_owned))
                .unwrap_or_default();
            Some(OneViewConfig {
                url,
                name,
                username,
                password,
                auth_login_domain: ov.auth_login_domain.clone().filter(|s| !s.is_empty()),
                api_version: ov.api_version,
                ca_file: ov.ca_file.clone(),
                tls_insecure_skip_verify: ov.tls_insecure_skip_verify,
                session_refresh: ov.session_refresh,
                connect_timeout: ov.connect_timeout,
                request_timeout: ov.request_timeout,
                max_response_bytes: ov.max_response_bytes,
            })
        }
        _ => None,
    }
}

/// The appliances to watch: every `[[appliances]]` entry, or the one `[oneview]` (named after
/// its host unless `oneview.name` is set, so dedup keys stay what they were). Each gets the
/// `[poller]` settings with its own overrides.
fn validate_appliances(
    c: &mut Checker,
    raw: &RawConfig,
    poller: &PollerConfig,
    scmb: &ScmbConfig,
    needs_backends: bool,
) -> Vec<ApplianceConfig> {
    if raw.appliances.is_empty() {
        return validate_oneview(c, "oneview", &raw.oneview, needs_backends, poller.page_size)
            .map(|oneview| {
                vec![ApplianceConfig {
                    oneview,
                    poller: poller.clone(),
                    scmb: scmb.clone(),
                    change_events: ChangeEventsConfig::default(),
                }]
            })
            .unwrap_or_default();
    }
    if raw.oneview.is_given() {
        c.problem(
            "oneview",
            None,
            "both [oneview] and [[appliances]] are given",
            "use one form: move the [oneview] appliance into [[appliances]] with name = its current name (oneview.name, else the host of oneview.url), so its open incidents keep their dedup keys",
        );
    }
    let mut out = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for (i, a) in raw.appliances.iter().enumerate() {
        let prefix = format!("appliances[{i}]");
        let before = c.problems.len();
        let name = match a.name.as_deref().map(str::trim) {
            None | Some("") => {
                c.problem(
                    &format!("{prefix}.name"),
                    None,
                    "missing",
                    "give every appliance a short, stable name such as `dc1-synergy`: it is part of every dedup key, so changing it later re-opens that appliance's incidents",
                );
                None
            }
            Some(n) if !valid_appliance_name(n) => {
                c.problem(
                    &format!("{prefix}.name"),
                    Some(n),
                    "must be 1 to 63 letters, digits, `.`, `-` or `_`, starting with a letter or digit",
                    "it ends up in dedup keys, metric labels and logs unchanged",
                );
                None
            }
            Some(n) if names.iter().any(|x| x == n) => {
                c.problem(
                    &format!("{prefix}.name"),
                    Some(n),
                    "is used by an earlier appliance",
                    "appliance names must be unique: two appliances with one name would share dedup keys",
                );
                None
            }
            Some(n) => {
                names.push(n.to_owned());
                Some(n.to_owned())
            }
        };
        validate_poller_keys(c, &prefix, a.interval, a.severities.as_deref(), a.page_size);
        let effective = PollerConfig {
            interval: a.interval.unwrap_or(poller.interval),
            severities: a
                .severities
                .clone()
                .unwrap_or_else(|| poller.severities.clone()),
            page_size: a.page_size.unwrap_or(poller.page_size),
            resync_interval: poller.resync_interval.max(a.interval.unwrap_or_default()),
            watermark_overlap: poller.watermark_overlap,
        };
        let oneview = validate_oneview(
            c,
            &prefix,
            &a.oneview(),
            needs_backends,
            effective.page_size,
        );
        let bus = match &a.scmb {
            Some(o) => o.apply(c, &format!("{prefix}.scmb"), scmb),
            None => scmb.clone(),
        };
        // Say which appliance each problem is about, by name as well as by position.
        if let Some(n) = &name {
            for p in &mut c.problems[before..] {
                p.why = format!("{} (appliance `{n}`)", p.why);
            }
        }
        if let (Some(name), Some(mut oneview)) = (name, oneview) {
            oneview.name = name;
            out.push(ApplianceConfig {
                oneview,
                poller: effective,
                scmb: bus,
                change_events: ChangeEventsConfig::default(),
            });
        }
    }
    out
}

/// The environment variable of `key` in section `prefix` (`BRIDGE_ONEVIEW__URL`); for an
/// `[[appliances]]` entry, the whole list is one variable.
fn env_name(prefix: &str, key: &str) -> String {
    if prefix.starts_with("appliances[") {
        "BRIDGE_APPLIANCES, a TOML list of tables".to_owned()
    } else {
        format!("BRIDGE_{}__{}", prefix.to_uppercase(), key.to_uppercase())
    }
}

/// A name that can be part of a dedup key, a metric label and a log field unchanged.
fn valid_appliance_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// Checks poller settings under `prefix` (`poller`, or an appliance's overrides).
fn validate_poller_keys(
    c: &mut Checker,
    prefix: &str,
    interval: Option<Duration>,
    severities: Option<&[String]>,
    page_size: Option<u32>,
) {
    if let Some(i) = interval
        && i < Duration::from_secs(1)
    {
        c.problem(
            &format!("{prefix}.interval"),
            Some(&humantime::format_duration(i).to_string()),
            "must be at least 1s",
            "the default is 30s; polling faster only loads the appliance",
        );
    }
    if let Some(sev) = severities {
        if sev.is_empty() {
            c.problem(
                &format!("{prefix}.severities"),
                Some("[]"),
                "no severity is watched, so nothing would ever page",
                "list at least one of Critical, Warning, Unknown, Disabled",
            );
        }
        for s in sev {
            if s == "OK" {
                c.problem(
                    &format!("{prefix}.severities"),
                    Some(s),
                    "OK alerts are cleared alerts and never page",
                    "remove OK; clears are always followed",
                );
            } else if !WATCHABLE_SEVERITIES.contains(&s.as_str()) {
                c.problem(
                    &format!("{prefix}.severities"),
                    Some(s),
                    "unknown OneView severity",
                    "use Critical, Warning, Unknown or Disabled (case matters)",
                );
            }
        }
    }
    if let Some(n) = page_size
        && (n == 0 || n > 5000)
    {
        c.problem(
            &format!("{prefix}.page_size"),
            Some(&n.to_string()),
            "must be between 1 and 5000",
            "the default 500 keeps each page small",
        );
    }
}

/// Validates `raw` for `role`, collecting every problem.
pub fn validate(raw: RawConfig, role: Role) -> Result<Config, ConfigError> {
    let mut c = Checker {
        problems: Vec::new(),
        warnings: Vec::new(),
    };
    let needs_backends = role.polls();

    // [pagerduty]
    let pd = &raw.pagerduty;
    let routing_key = c.secret(
        "pagerduty.routing_key",
        &pd.routing_key,
        &pd.routing_key_file,
        needs_backends,
        Some(&routing_key_check),
    );
    let events_url = c.url("pagerduty.events_url", &pd.events_url);
    let mut severity_map = default_severity_map();
    for (k, v) in &pd.severity_map {
        if !PAGERDUTY_SEVERITIES.contains(&v.as_str()) {
            c.problem(
                &format!("pagerduty.severity_map.{k}"),
                Some(v),
                "not a PagerDuty severity",
                "use one of: critical, error, warning, info",
            );
        }
        severity_map.insert(k.clone(), v.clone());
    }
    let mut routes = Vec::new();
    for (i, r) in pd.routes.iter().enumerate() {
        let key: &'static str = "pagerduty.routes[].routing_key";
        let Some(rk) = c.secret(
            key,
            &r.routing_key,
            &r.routing_key_file,
            true,
            Some(&routing_key_check),
        ) else {
            continue;
        };
        for s in &r.severities {
            if !WATCHABLE_SEVERITIES.contains(&s.as_str()) {
                c.problem(
                    &format!("pagerduty.routes[{i}].severities"),
                    Some(s),
                    "not a OneView severity",
                    "use Critical, Warning, Unknown or Disabled",
                );
            }
        }
        for (what, pats) in [
            ("alert_types", r.alert_types.as_slice()),
            ("resource_name", r.resource_name.as_slice()),
            ("appliances", r.appliances.as_slice()),
        ] {
            for p in pats {
                if let Err(e) = globset::Glob::new(p) {
                    c.problem(
                        &format!("pagerduty.routes[{i}].{what}"),
                        Some(p),
                        &format!("not a valid glob: {e}"),
                        "use * and ? wildcards, like Trap.cpqDa*",
                    );
                }
            }
        }
        if r.severities.is_empty()
            && r.resource_categories.is_empty()
            && r.alert_types.is_empty()
            && r.resource_name.is_none()
            && r.appliances.is_empty()
        {
            c.problem(&format!("pagerduty.routes[{i}]"), None, "has no matcher, so it would catch every alert", "add severities, resource_categories, alert_types, resource_name or appliances, or set pagerduty.routing_key instead");
        }
        let name = match r.name.as_deref().map(str::trim) {
            Some(n)
                if n.is_empty()
                    || n.eq_ignore_ascii_case(crate::pagerduty::routing::DEFAULT_ROUTE) =>
            {
                c.problem(
                    &format!("pagerduty.routes[{i}].name"),
                    Some(n),
                    "must be a non-empty name other than `default` (the name of pagerduty.routing_key)",
                    "name the route after its service, such as `critical-hardware`",
                );
                continue;
            }
            Some(n) => n.to_owned(),
            None => {
                c.warnings.push(format!(
                    "pagerduty.routes[{i}] has no `name`, so it is called `route-{i}`: the bridge records which route holds each open incident, and reordering the routes would then orphan those incidents (their resolves are kept as dead letters); give every route a stable name"
                ));
                format!("route-{i}")
            }
        };
        if routes.iter().any(|x: &RouteConfig| x.name == name) {
            c.problem(
                &format!("pagerduty.routes[{i}].name"),
                Some(&name),
                "is used by an earlier route",
                "give every route its own name (the ledger records which route holds each incident)",
            );
            continue;
        }
        routes.push(RouteConfig {
            name,
            severities: r.severities.clone(),
            resource_categories: r.resource_categories.clone(),
            alert_types: r.alert_types.clone(),
            resource_name: r.resource_name.clone(),
            appliances: r.appliances.clone(),
            routing_key: rk,
        });
    }
    let client_url = pd
        .client_url
        .as_deref()
        .and_then(|u| c.url("pagerduty.client_url", u));
    let oneview_ui_url = pd
        .oneview_ui_url
        .as_deref()
        .and_then(|u| c.url("pagerduty.oneview_ui_url", u));
    if pd.concurrency == 0 || pd.concurrency > 256 {
        c.problem(
            "pagerduty.concurrency",
            Some(&pd.concurrency.to_string()),
            "must be between 1 and 256",
            "the default 8 keeps PagerDuty busy without bursts",
        );
    }
    if pd.rate_limit_per_minute == 0 {
        c.problem(
            "pagerduty.rate_limit_per_minute",
            Some("0"),
            "must be positive",
            "PagerDuty allows about 120 events per minute per routing key",
        );
    }
    if pd.queue_capacity == 0 {
        c.problem(
            "pagerduty.queue_capacity",
            Some("0"),
            "must be positive",
            "the default is 10000",
        );
    }
    if pd.retry_initial_delay.is_zero() || pd.retry_initial_delay > pd.retry_max_delay {
        c.problem(
            "pagerduty.retry_initial_delay",
            Some(&humantime::format_duration(pd.retry_initial_delay).to_string()),
            "must be positive and not above pagerduty.retry_max_delay",
            "the default is 1s",
        );
    }
    let pagerduty = match (routing_key, events_url) {
        (Some(routing_key), Some(events_url)) => Some(PagerDutyConfig {
            routing_key,
            events_url,
            routes,
            severity_map,
            client: pd
                .client
                .clone()
                .unwrap_or_else(|| "oneview-pagerduty-bridge".to_owned()),
            client_url,
            oneview_ui_url,
            concurrency: pd.concurrency,
            rate_limit_per_minute: pd.rate_limit_per_minute,
            queue_capacity: pd.queue_capacity,
            retry_initial_delay: pd.retry_initial_delay,
            retry_max_delay: pd.retry_max_delay,
            request_timeout: pd.request_timeout,
        }),
        _ => None,
    };

    // [poller]
    let p = &raw.poller;
    validate_poller_keys(
        &mut c,
        "poller",
        Some(p.interval),
        Some(&p.severities),
        Some(p.page_size),
    );
    if p.resync_interval < p.interval {
        c.problem(
            "poller.resync_interval",
            Some(&humantime::format_duration(p.resync_interval).to_string()),
            "must not be shorter than poller.interval",
            "the default is 1h",
        );
    }
    let poller = PollerConfig {
        interval: p.interval,
        severities: p.severities.clone(),
        page_size: p.page_size,
        resync_interval: p.resync_interval,
        watermark_overlap: p.watermark_overlap,
    };

    // [oneview] or [[appliances]]
    let scmb = validate_scmb(&mut c, "scmb", &raw.scmb);
    let appliances = validate_appliances(&mut c, &raw, &poller, &scmb, needs_backends);
    let (change_events, appliances) = change_events::layer(
        &mut c,
        &raw,
        pagerduty.as_ref().map(|p| &p.events_url),
        appliances,
    );
    if appliances.len() > 1 && raw.pagerduty.oneview_ui_url.is_some() {
        c.warnings.push("pagerduty.oneview_ui_url is set while several appliances are configured: every incident's OneView link points at that one UI; leave it unset so each appliance's links use its own url".to_owned());
    }

    // [server]
    let listen = match raw.server.listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            c.problem(
                "server.listen",
                Some(&raw.server.listen),
                "not an address:port",
                "write it like 0.0.0.0:8080 or 127.0.0.1:8080",
            );
            None
        }
    };
    if raw.server.shutdown_timeout.is_zero() {
        c.problem(
            "server.shutdown_timeout",
            Some("0s"),
            "must be positive",
            "the default 20s stays below Kubernetes' 30s grace period",
        );
    } else if raw.server.shutdown_timeout + raw.server.drain_delay >= Duration::from_secs(30) {
        c.warnings.push("server.shutdown_timeout + server.drain_delay reach 30s: raise terminationGracePeriodSeconds above it on Kubernetes".to_owned());
    }

    // [server] web API security
    let api_tokens = c.secret(
        "server.api_tokens",
        &raw.server.api_tokens,
        &raw.server.api_tokens_file,
        false,
        None,
    );
    let mut trusted_proxies = Vec::new();
    for p in &raw.server.trusted_proxies {
        match p
            .parse::<ipnet::IpNet>()
            .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(n) => trusted_proxies.push(n),
            Err(_) => c.problem(
                "server.trusted_proxies",
                Some(p),
                "not an IP address or CIDR",
                "list your ingress controller's addresses, like 10.0.0.0/8",
            ),
        }
    }
    if raw.server.rate_limit_per_second == 0 || raw.server.rate_limit_burst == 0 {
        c.problem(
            "server.rate_limit_per_second",
            Some(&format!(
                "{}/{}",
                raw.server.rate_limit_per_second, raw.server.rate_limit_burst
            )),
            "rate limit and burst must be positive",
            "the defaults are 20 per second with a burst of 40",
        );
    }
    if raw.server.request_timeout.is_zero() {
        c.problem(
            "server.request_timeout",
            Some("0s"),
            "must be positive",
            "the default is 30s",
        );
    }
    for (key, v) in [
        ("server.api_body_limit", raw.server.api_body_limit),
        ("server.webhook_body_limit", raw.server.webhook_body_limit),
    ] {
        if v < 1024 {
            c.problem(
                key,
                Some(&v.to_string()),
                "must be at least 1024 bytes",
                "the defaults are 1 MiB for the API and 256 KiB for webhooks",
            );
        }
    }
    // [server] connections: what a slow or hostile client may hold.
    for (key, v, default) in [
        (
            "server.header_read_timeout",
            raw.server.header_read_timeout,
            "10s",
        ),
        ("server.idle_timeout", raw.server.idle_timeout, "75s"),
    ] {
        if v.is_zero() {
            c.problem(
                key,
                Some("0s"),
                "must be positive (without it an idle or half-sent connection is held forever)",
                &format!("the default is {default}"),
            );
        }
    }
    let (lo, hi) = SERVER_MAX_CONNECTIONS;
    if !(lo..=hi).contains(&raw.server.max_connections) {
        c.problem(
            "server.max_connections",
            Some(&raw.server.max_connections.to_string()),
            &format!("must be between {lo} and {hi}"),
            "the default 512 stays well under a 1024 file-descriptor limit",
        );
    }
    let (lo, hi) = SERVER_MAX_URI_LENGTH;
    if !(lo..=hi).contains(&raw.server.max_uri_length) {
        c.problem(
            "server.max_uri_length",
            Some(&raw.server.max_uri_length.to_string()),
            &format!("must be between {lo} and {hi} bytes"),
            "the default is 8192",
        );
    }
    let (lo, hi) = SERVER_MAX_HEADER_BYTES;
    if !(lo..=hi).contains(&raw.server.max_header_bytes) {
        c.problem(
            "server.max_header_bytes",
            Some(&raw.server.max_header_bytes.to_string()),
            &format!("must be between {lo} and {hi} bytes"),
            "the default is 32768",
        );
    }
    // The poller role serves only the internal API (web.poller_token), never the public one.
    if api_tokens.is_none() && !raw.server.status_public && role != Role::Poller {
        c.warnings.push("no server.api_tokens_file: the status page, the read API and every mutating endpoint answer 401/403 (health, ready and metrics stay open)".to_owned());
    }

    // [web], webhook secrets, [sync]
    // In-cluster traffic to the poller is plain HTTP behind a NetworkPolicy; no warning.
    let poller_url = raw.web.poller_url.as_deref().and_then(|u| {
        let warnings = c.warnings.len();
        let url = c.url("web.poller_url", u);
        c.warnings.truncate(warnings);
        url
    });
    // With the shared database, web replicas follow the lease row to whichever poller leads.
    let finds_leader = role == Role::Web && raw.state.backend == Some(StateBackend::Postgres);
    let poller_token = c.secret(
        "web.poller_token",
        &raw.web.poller_token,
        &raw.web.poller_token_file,
        role == Role::Web && (raw.web.poller_url.is_some() || finds_leader),
        None,
    );
    if finds_leader && raw.web.poller_url.is_some() {
        c.problem(
            "web.poller_url",
            raw.web.poller_url.as_deref(),
            "is set but state.backend is postgres, where web replicas find the leading poller through the lease row (its lease.advertise_url)",
            "remove web.poller_url (several pollers: the lease names the leader), or remove state.backend and the state.url keys (one poller behind web.poller_url)",
        );
    }
    if role == Role::Web && raw.web.poller_url.is_none() && !finds_leader {
        c.warnings.push("web.poller_url is not set: endpoints that need the poller (alerts, poll, dead letters, webhook write-back) answer 503".to_owned());
    }
    if role == Role::Poller && poller_token.is_none() {
        c.warnings.push("web.poller_token_file is not set: the poller's internal API is disabled, so web replicas cannot reach it".to_owned());
    }
    let w = &raw.web;
    if !(1..=MAX_WRITEBACK_QUEUE).contains(&w.writeback_queue) {
        c.problem(
            "web.writeback_queue",
            Some(&w.writeback_queue.to_string()),
            &format!("must be between 1 and {MAX_WRITEBACK_QUEUE}"),
            "the default 10000 rides out a bulk action in PagerDuty; when it is full the webhook answers 503 and PagerDuty delivers again",
        );
    }
    if !(1..=MAX_PUSH_QUEUE).contains(&w.push_queue) {
        c.problem(
            "web.push_queue",
            Some(&w.push_queue.to_string()),
            &format!("must be between 1 and {MAX_PUSH_QUEUE}"),
            "the default 1000 takes a burst of pushes; beyond it a push is answered 429 with Retry-After for the alerts that did not fit",
        );
    }
    if !(1..=MAX_WRITEBACK_CONCURRENCY).contains(&w.writeback_concurrency) {
        c.problem(
            "web.writeback_concurrency",
            Some(&w.writeback_concurrency.to_string()),
            &format!("must be between 1 and {MAX_WRITEBACK_CONCURRENCY}"),
            "the default 8 keeps a burst of webhooks from flooding the appliance",
        );
    }
    if w.webhook_rate_limit_per_second > MAX_RATE_LIMIT_PER_SECOND {
        c.problem(
            "web.webhook_rate_limit_per_second",
            Some(&w.webhook_rate_limit_per_second.to_string()),
            &format!("must be at most {MAX_RATE_LIMIT_PER_SECOND}"),
            "use 0 for no per-client limit on the webhook (the default)",
        );
    }
    if w.webhook_rate_limit_per_second == 0 && w.webhook_rate_limit_burst != 0 {
        c.problem(
            "web.webhook_rate_limit_burst",
            Some(&w.webhook_rate_limit_burst.to_string()),
            "has no effect without web.webhook_rate_limit_per_second",
            "set web.webhook_rate_limit_per_second too, or remove the burst (no limit)",
        );
    }
    let webhook_rate_limit = (w.webhook_rate_limit_per_second > 0).then(|| {
        let burst = match w.webhook_rate_limit_burst {
            0 => w.webhook_rate_limit_per_second.saturating_mul(2),
            b => b,
        };
        (w.webhook_rate_limit_per_second, burst)
    });
    let webhook_secrets = c.secret(
        "pagerduty.webhook_secrets",
        &raw.pagerduty.webhook_secrets,
        &raw.pagerduty.webhook_secrets_file,
        false,
        None,
    );

    // [log]
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
        c.problem(
            "log.level",
            Some(&raw.log.level),
            &format!("not a level or filter directive ({e})"),
            "use error, warn, info, debug, trace, or a directive like info,bridge=debug",
        );
    }

    // [state]
    let st = &raw.state;
    let backend = st.backend.unwrap_or(if st.path.is_some() {
        StateBackend::File
    } else {
        StateBackend::Memory
    });
    if let Some(path) = &st.path {
        if backend == StateBackend::File {
            state_path_check(&mut c, path);
        } else {
            c.problem(
                "state.path",
                Some(&path.display().to_string()),
                &format!(
                    "is set but state.backend is {}",
                    if backend == StateBackend::Postgres {
                        "postgres"
                    } else {
                        "memory"
                    }
                ),
                "remove state.path (the database holds the state), or set state.backend = \"file\"",
            );
        }
    }
    if backend == StateBackend::File && st.path.is_none() {
        c.problem(
            "state.backend",
            Some("file"),
            "needs state.path",
            "set state.path to a file like /var/lib/oneview-pagerduty-bridge/state.redb",
        );
    }
    let postgres = state_postgres_check(&mut c, st, backend);
    if st.retention < Duration::from_secs(60) {
        c.problem(
            "state.retention",
            Some(&humantime::format_duration(st.retention).to_string()),
            "must be at least 1m",
            "the default 7d keeps resolved alerts long enough to ride out any restart",
        );
    }

    // [lease]
    let ls = &raw.lease;
    if ls.ttl < Duration::from_secs(2) || ls.ttl > Duration::from_secs(600) {
        c.problem(
            "lease.ttl",
            Some(&humantime::format_duration(ls.ttl).to_string()),
            "must be between 2s and 10m",
            "15s replaces a dead leader within 15 seconds without making a slow database look like one",
        );
    } else if ls.renew_interval.is_zero() || ls.renew_interval * 2 > ls.ttl {
        c.problem(
            "lease.renew_interval",
            Some(&humantime::format_duration(ls.renew_interval).to_string()),
            "must be more than zero and at most half of lease.ttl",
            "a third of lease.ttl (5s for 15s) leaves two renewals before the lease could lapse",
        );
    }
    if let Some(h) = &ls.holder
        && (h.trim().is_empty() || h.len() > 200)
    {
        c.problem(
            "lease.holder",
            Some(h),
            "must be 1 to 200 characters",
            "remove it to use the host name plus a random suffix",
        );
    }
    let flap = validate_flap(&mut c, &raw.flap);
    let lease = LeaseConfig {
        ttl: ls.ttl,
        renew_interval: ls.renew_interval,
        holder: ls.holder.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "poller".to_owned());
            let id = uuid::Uuid::new_v4().simple().to_string();
            format!("{host}-{}", &id[..8])
        }),
        advertise_url: ls.advertise_url.clone().unwrap_or_default(),
    };

    if !c.problems.is_empty() {
        return Err(ConfigError::Invalid(c.problems));
    }
    let server = ServerConfig {
        // Checked above: no problems means it parsed.
        listen: listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
        shutdown_timeout: raw.server.shutdown_timeout,
        drain_delay: raw.server.drain_delay,
        api_tokens,
        status_public: raw.server.status_public,
        trusted_proxies,
        rate_limit_per_second: raw.server.rate_limit_per_second,
        rate_limit_burst: raw.server.rate_limit_burst,
        request_timeout: raw.server.request_timeout,
        api_body_limit: raw.server.api_body_limit,
        webhook_body_limit: raw.server.webhook_body_limit,
        header_read_timeout: raw.server.header_read_timeout,
        idle_timeout: raw.server.idle_timeout,
        max_connections: raw.server.max_connections,
        max_uri_length: raw.server.max_uri_length,
        max_header_bytes: raw.server.max_header_bytes,
    };
    let web = WebConfig {
        poller_url,
        poller_token,
        webhook_secrets,
        sync_notes: raw.sync.notes,
        clear_on_resolve: raw.sync.clear_on_resolve,
        writeback_queue: raw.web.writeback_queue,
        writeback_concurrency: raw.web.writeback_concurrency,
        webhook_rate_limit,
        push_queue: raw.web.push_queue,
    };
    Ok(Config {
        role,
        poller,
        dedup_ttl: raw.dedup.ttl,
        server,
        web,
        log: raw.log.clone(),
        state: StateConfig {
            backend,
            path: raw.state.path.clone(),
            retention: raw.state.retention,
            postgres,
        },
        lease,
        scmb,
        change_events,
        flap,
        appliances,
        pagerduty,
        warnings: c.warnings,
        raw,
    })
}

/// `[flap]`: bounds that keep flap damping meaningful (a window shorter than a poll cannot see
/// two transitions; a settle of days keeps incidents open that should have closed).
fn validate_flap(c: &mut Checker, f: &RawFlap) -> crate::pipeline::FlapSettings {
    let day = Duration::from_secs(24 * 3600);
    if !(1..=1000).contains(&f.max_transitions) {
        c.problem(
            "flap.max_transitions",
            Some(&f.max_transitions.to_string()),
            "must be between 1 and 1000",
            "4 (the default) damps an alert from its fifth raise or clear within flap.window; set flap.enabled = false to turn damping off",
        );
    }
    for (key, v) in [("flap.window", f.window), ("flap.settle", f.settle)] {
        if v < Duration::from_secs(1) || v > day {
            c.problem(
                key,
                Some(&humantime::format_duration(v).to_string()),
                "must be between 1s and 24h",
                "the defaults are window = \"30m\" and settle = \"10m\"",
            );
        }
    }
    crate::pipeline::FlapSettings {
        enabled: f.enabled,
        max_transitions: f.max_transitions,
        window: f.window,
        settle: f.settle,
    }
}

/// The `state.url` & co. of backend `postgres`; with another backend they must be unset.
fn state_postgres_check(
    c: &mut Checker,
    st: &RawState,
    backend: StateBackend,
) -> Option<PostgresConfig> {
    if backend != StateBackend::Postgres {
        if st.url.is_some() || st.url_file.is_some() {
            c.problem(
                if st.url.is_some() { "state.url" } else { "state.url_file" },
                None,
                "is set but state.backend is not postgres",
                "set state.backend = \"postgres\" to keep state in that database, or remove the key",
            );
        }
        return None;
    }
    let url = c.secret("state.url", &st.url, &st.url_file, true, None)?;
    let target = match url.current() {
        Ok(v) => match crate::state::postgres::parse_url(v.expose_secret()) {
            Ok(p) => p.target,
            Err(why) => {
                c.problem(
                    "state.url",
                    None,
                    &why,
                    "write it like postgres://user:password@host:5432/dbname?sslmode=verify-full (percent-encode special characters of the password)",
                );
                return None;
            }
        },
        // Reported by `secret` already.
        Err(_) => return None,
    };
    if let Some(ca) = &st.ca_file
        && let Err(e) = std::fs::metadata(ca)
    {
        c.problem(
            "state.ca_file",
            Some(&ca.display().to_string()),
            &format!("cannot read it: {e}"),
            "point it at a PEM file with the CA certificate of the database server",
        );
    }
    if !(1..=64).contains(&st.pool_size) {
        c.problem(
            "state.pool_size",
            Some(&st.pool_size.to_string()),
            "must be between 1 and 64",
            "the default 4 is plenty: one writer thread commits for the whole poller",
        );
    }
    if st.connect_timeout < Duration::from_millis(100)
        || st.connect_timeout > Duration::from_secs(300)
    {
        c.problem(
            "state.connect_timeout",
            Some(&humantime::format_duration(st.connect_timeout).to_string()),
            "must be between 100ms and 5m",
            "the default 5s suits a database in the same region",
        );
    }
    if st.lease_name.trim().is_empty() {
        c.problem(
            "state.lease_name",
            Some(&st.lease_name),
            "empty",
            "remove the key for the default \"poller\"",
        );
    }
    Some(PostgresConfig {
        url,
        target,
        ca_file: st.ca_file.clone(),
        pool_size: st.pool_size,
        connect_timeout: st.connect_timeout,
        lease_name: st.lease_name.clone(),
    })
}

/// `state.path` must name a file in an existing directory; the file itself is created on start.
fn state_path_check(c: &mut Checker, path: &Path) {
    let shown = path.display().to_string();
    if path.as_os_str().is_empty() {
        c.problem(
            "state.path",
            Some(""),
            "empty",
            "remove the key to keep state in memory, or name a file like /var/lib/oneview-pagerduty-bridge/state.redb",
        );
        return;
    }
    if path.is_dir() {
        c.problem(
            "state.path",
            Some(&shown),
            "is a directory",
            "name a file inside it, like state.redb in that directory",
        );
        return;
    }
    // `state.redb` has the empty path as parent: the working directory.
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => c.problem(
            "state.path",
            Some(&shown),
            &format!("{} is not a directory", parent.display()),
            "point it at a file in an existing directory",
        ),
        Err(e) => c.problem(
            "state.path",
            Some(&shown),
            &format!("its directory {} cannot be used: {e}", parent.display()),
            "create the directory (on Kubernetes: mount a volume there) or fix the path",
        ),
    }
}

impl Config {
    /// The effective configuration as TOML, every secret shown as `<redacted>`.
    pub fn to_toml(&self) -> String {
        let mut v = match toml::Value::try_from(&self.raw) {
            Ok(v) => v,
            Err(e) => return format!("# cannot render: {e}\n"),
        };
        // One form is in use: the other would only show defaults that do nothing.
        if let Some(t) = v.as_table_mut() {
            if self.raw.appliances.is_empty() {
                t.remove("appliances");
            } else {
                t.remove("oneview");
            }
        }
        toml::to_string_pretty(&v).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_ok() -> RawConfig {
        let mut r = RawConfig::default();
        r.oneview.url = Some("https://ov.example.com".into());
        r.oneview.username = Some("u".into());
        r.oneview.password = Some(SecretString::from("pw".to_owned()));
        r.pagerduty.routing_key = Some(SecretString::from("a".repeat(32)));
        r
    }

    #[test]
    fn scmb_is_off_by_default_and_its_bad_keys_are_named() {
        let c = validate(raw_ok(), Role::Poller).unwrap();
        assert!(!c.scmb.enabled);
        assert_eq!(c.scmb.port, 5671);
        assert_eq!(c.scmb.prefetch, 100);
        assert_eq!(c.scmb.poll_interval, Duration::from_secs(300));
        let mut r = raw_ok();
        r.scmb.port = 0;
        r.scmb.prefetch = 0;
        r.scmb.poll_interval = Duration::from_secs(1);
        r.scmb.client_cert_file = Some(PathBuf::from("/nonexistent/cert.pem"));
        let Err(ConfigError::Invalid(problems)) = validate(r, Role::Poller) else {
            panic!("invalid [scmb] accepted");
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "scmb.port",
            "scmb.prefetch",
            "scmb.poll_interval",
            "scmb.client_key_file",
            "scmb.client_cert_file",
        ] {
            assert!(keys.contains(&k), "{k} not named: {keys:?}");
        }
    }

    fn appliance(name: &str) -> RawAppliance {
        RawAppliance {
            name: Some(name.into()),
            url: Some(format!("https://{name}.example.com")),
            username: Some("u".into()),
            password: Some(SecretString::from("pw".to_owned())),
            ..Default::default()
        }
    }

    #[test]
    fn the_bus_is_overridden_per_appliance_and_bad_overrides_name_the_appliance() {
        let mut r = raw_ok();
        r.oneview = RawOneView::default();
        r.scmb.enabled = true;
        r.scmb.ca_file = Some(PathBuf::from("/etc/hosts"));
        let mut lab = appliance("lab");
        lab.scmb = Some(RawScmbOverride {
            enabled: Some(false),
            ..Default::default()
        });
        let mut dc2 = appliance("dc2");
        dc2.scmb = Some(RawScmbOverride {
            port: Some(5672),
            poll_interval: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        r.appliances = vec![appliance("dc1"), lab, dc2];
        let c = validate(r.clone(), Role::Poller).unwrap();
        let bus: Vec<(bool, u16, u64)> = c
            .appliances
            .iter()
            .map(|a| (a.scmb.enabled, a.scmb.port, a.scmb.poll_interval.as_secs()))
            .collect();
        assert_eq!(
            bus,
            [(true, 5671, 300), (false, 5671, 300), (true, 5672, 60)]
        );
        // What is not overridden comes from [scmb].
        assert_eq!(
            c.appliances[2].scmb.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/hosts"))
        );

        r.appliances[1].scmb = Some(RawScmbOverride {
            port: Some(0),
            client_key_file: Some(PathBuf::from("/etc/hosts")),
            ..Default::default()
        });
        let Err(ConfigError::Invalid(problems)) = validate(r, Role::Poller) else {
            panic!("a bad [appliances.scmb] accepted");
        };
        let named: Vec<(String, bool)> = problems
            .iter()
            .map(|p| (p.key.clone(), p.why.contains("appliance `lab`")))
            .collect();
        assert!(
            named.contains(&("appliances[1].scmb.port".to_owned(), true)),
            "{named:?}"
        );
        assert!(
            named.contains(&("appliances[1].scmb.client_cert_file".to_owned(), true)),
            "{named:?}"
        );
        assert_eq!(problems.len(), 2, "[scmb] itself is fine: {named:?}");
    }

    #[test]
    fn appliances_with_overrides_and_the_single_oneview_form_stays_the_same() {
        let c = validate(raw_ok(), Role::Poller).unwrap();
        assert_eq!(c.appliances.len(), 1);
        assert_eq!(
            c.appliances[0].oneview.name, "ov.example.com",
            "[oneview] keeps its dedup keys: named after its host"
        );
        let mut r = raw_ok();
        r.oneview = RawOneView::default();
        let mut lab = appliance("lab-1");
        lab.interval = Some(Duration::from_secs(120));
        lab.severities = Some(vec!["Critical".into()]);
        lab.page_size = Some(100);
        r.appliances = vec![appliance("dc1"), lab];
        let c = validate(r, Role::Poller).unwrap();
        let names: Vec<&str> = c
            .appliances
            .iter()
            .map(|a| a.oneview.name.as_str())
            .collect();
        assert_eq!(names, ["dc1", "lab-1"]);
        assert_eq!(c.appliances[0].poller.interval, Duration::from_secs(30));
        assert_eq!(c.appliances[1].poller.interval, Duration::from_secs(120));
        assert_eq!(c.appliances[1].poller.severities, ["Critical"]);
        assert_eq!(c.appliances[1].poller.page_size, 100);
        assert_eq!(
            c.appliances[1].poller.resync_interval,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn every_wrong_appliance_is_named_in_one_run() {
        let mut r = raw_ok();
        let mut no_url = appliance("dc2");
        no_url.url = None;
        let mut bad_interval = appliance("lab");
        bad_interval.interval = Some(Duration::from_millis(10));
        bad_interval.severities = Some(vec!["OK".into()]);
        let mut unnamed = appliance("x");
        unnamed.name = None;
        r.appliances = vec![
            appliance("dc1"),
            no_url,
            appliance("dc1"),
            bad_interval,
            unnamed,
            appliance("bad name!"),
        ];
        let Err(ConfigError::Invalid(p)) = validate(r, Role::Poller) else {
            panic!("must be refused")
        };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "oneview",
            "appliances[1].url",
            "appliances[2].name",
            "appliances[3].interval",
            "appliances[3].severities",
            "appliances[4].name",
            "appliances[5].name",
        ] {
            assert!(keys.contains(&k), "{k} missing in {keys:?}");
        }
        let url = p.iter().find(|p| p.key == "appliances[1].url").unwrap();
        assert!(url.why.contains("appliance `dc2`"), "{url:?}");
        assert!(
            p.iter()
                .find(|p| p.key == "oneview")
                .unwrap()
                .fix
                .contains("dedup keys"),
            "both forms given: the fix says how to keep the dedup keys"
        );
    }

    #[test]
    fn appliances_from_the_environment() {
        let fig = figment::Figment::from(figment::providers::Serialized::defaults(
            RawConfig::default(),
        ))
        .merge(figment::providers::Serialized::default(
            "appliances",
            serde_json::json!([{"name": "dc1", "url": "https://dc1", "username": "u", "password": "p", "interval": "1m"}]),
        ));
        let raw: RawConfig = fig.extract().unwrap();
        assert_eq!(raw.appliances[0].name.as_deref(), Some("dc1"));
        assert_eq!(raw.appliances[0].interval, Some(Duration::from_secs(60)));
        // The documented form: one variable holding a TOML list of tables.
        let env: figment::value::Value =
            r#"[{name="dc1", url="https://dc1", username="u", password_file="/run/ov1"}]"#
                .parse()
                .unwrap();
        let list = env.into_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            list[0].find_ref("name").and_then(|v| v.as_str()),
            Some("dc1")
        );
        // A misspelt key inside an entry is named with the entry's position.
        let fig = figment::Figment::from(figment::providers::Serialized::defaults(
            RawConfig::default(),
        ))
        .merge(figment::providers::Serialized::default(
            "appliances",
            serde_json::json!([{"name": "dc1", "pasword": "p"}]),
        ));
        let Err(ConfigError::Invalid(p)) = extract(&fig) else {
            panic!("an unknown key is refused")
        };
        assert_eq!(p[0].key, "appliances[0].pasword", "{p:?}");
    }

    #[test]
    fn defaults_validate_for_web_without_backends() {
        let c = validate(RawConfig::default(), Role::Web).unwrap();
        assert!(c.appliances.is_empty());
        assert_eq!(c.poller.interval, Duration::from_secs(30));
    }

    #[test]
    fn poller_needs_backends_and_reports_all_missing_at_once() {
        let Err(ConfigError::Invalid(p)) = validate(RawConfig::default(), Role::Poller) else {
            panic!("expected problems")
        };
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "oneview.url",
            "oneview.username",
            "oneview.password",
            "pagerduty.routing_key",
        ] {
            assert!(keys.contains(&k), "{keys:?}");
        }
    }

    #[test]
    fn full_config_validates() {
        let c = validate(raw_ok(), Role::All).unwrap();
        assert_eq!(c.appliances[0].oneview.name, "ov.example.com");
        assert_eq!(c.pagerduty.unwrap().severity_map["Critical"], "critical");
    }

    #[test]
    fn redacted_toml_has_no_secret() {
        let c = validate(raw_ok(), Role::All).unwrap();
        let t = c.to_toml();
        assert!(t.contains("<redacted>"));
        assert!(!t.contains(&"a".repeat(32)));
    }

    #[test]
    fn state_defaults_to_memory_with_seven_day_retention() {
        let c = validate(RawConfig::default(), Role::Web).unwrap();
        assert_eq!(c.state.path, None);
        assert_eq!(c.state.retention, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn server_connection_limits_have_defaults_and_bounds() {
        let c = validate(RawConfig::default(), Role::Web).unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(75));
        assert_eq!(c.server.max_connections, 512);
        assert_eq!(c.server.max_uri_length, 8192);
        assert_eq!(c.server.max_header_bytes, 32768);

        let mut r = RawConfig::default();
        r.server.header_read_timeout = Duration::ZERO;
        r.server.idle_timeout = Duration::ZERO;
        r.server.max_connections = 2;
        r.server.max_uri_length = 100_000;
        r.server.max_header_bytes = 100;
        let Err(ConfigError::Invalid(p)) = validate(r, Role::Web) else {
            panic!("expected problems")
        };
        let by_key = |k: &str| {
            p.iter()
                .find(|p| p.key == k)
                .unwrap_or_else(|| panic!("no problem for {k}: {p:?}"))
        };
        for k in ["server.header_read_timeout", "server.idle_timeout"] {
            assert!(by_key(k).why.contains("must be positive"), "{k}");
        }
        assert_eq!(by_key("server.max_connections").value.as_deref(), Some("2"));
        assert!(
            by_key("server.max_connections")
                .why
                .contains("between 4 and")
        );
        assert!(
            by_key("server.max_uri_length")
                .why
                .contains("between 1024 and")
        );
        assert!(
            by_key("server.max_header_bytes")
                .why
                .contains("between 4096 and")
        );
    }

    #[test]
    fn appliances_scmb_tables_load_from_a_file_and_their_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bridge.toml");
        let toml = |extra: &str| {
            format!(
                r#"
[pagerduty]
routing_key = "{key}"

[scmb]
enabled = true

[[appliances]]
name = "dc1"
url = "https://dc1.example.com"
username = "u"
password = "pw"

[appliances.scmb]
port = 5672
poll_interval = "2m"
{extra}

[[appliances]]
name = "lab"
url = "https://lab.example.com"
username = "u"
password = "pw"
scmb = {{ enabled = false }}
"#,
                key = "a".repeat(32)
            )
        };
        std::fs::write(&file, toml("")).unwrap();
        let c = load(Some(&file), Role::Poller).unwrap();
        let bus: Vec<(bool, u16, u64)> = c
            .appliances
            .iter()
            .map(|a| (a.scmb.enabled, a.scmb.port, a.scmb.poll_interval.as_secs()))
            .collect();
        assert_eq!(bus, [(true, 5672, 120), (false, 5671, 300)]);

        std::fs::write(&file, toml("prefech = 10")).unwrap();
        let Err(ConfigError::Invalid(p)) = load(Some(&file), Role::Poller) else {
            panic!("a misspelt [appliances.scmb] key accepted")
        };
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "appliances[0].scmb.prefech");
    }

    #[test]
    fn state_path_needs_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = RawConfig::default();
        r.state.path = Some(dir.path().join("state.redb"));
        let c = validate(r.clone(), Role::Web).unwrap();
        assert_eq!(c.state.path, Some(dir.path().join("state.redb")));

        for bad in [
            dir.path().join("missing").join("state.redb"),
            dir.path().to_owned(),
            PathBuf::new(),
        ] {
            r.state.path = Some(bad.clone());
            let Err(ConfigError::Invalid(p)) = validate(r.clone(), Role::Web) else {
                panic!("{bad:?} should be refused")
            };
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].key, "state.path");
        }
    }

    #[test]
    fn state_backend_postgres_keys_are_checked_and_the_url_stays_secret() {
        let r = RawConfig::default();
        assert_eq!(
            validate(r, Role::Web).unwrap().state.backend,
            StateBackend::Memory
        );

        let dir = tempfile::tempdir().unwrap();
        let url_file = dir.path().join("url");
        std::fs::write(
            &url_file,
            "postgres://bridge:hunter2@db.internal:6432/state?sslmode=verify-full\n",
        )
        .unwrap();
        let fig = figment(None).merge(figment::providers::Toml::string(&format!(
            "[state]\nbackend = \"postgres\"\nurl_file = {:?}\npool_size = 2\nconnect_timeout = \"3s\"\n[web]\npoller_token = \"t\"\n",
            url_file.display().to_string()
        )));
        let raw = extract(&fig).unwrap();
        let c = validate(raw.clone(), Role::Web).unwrap();
        assert_eq!(c.state.backend, StateBackend::Postgres);
        let pg = c.state.postgres.as_ref().unwrap();
        assert_eq!(pg.target, "db.internal:6432/state");
        assert_eq!(
            (pg.pool_size, pg.connect_timeout),
            (2, Duration::from_secs(3))
        );
        assert_eq!(pg.lease_name, "poller");
        assert!(!format!("{c:?}").contains("hunter2"));

        let refused = |r: RawConfig| -> Vec<Problem> {
            let Err(ConfigError::Invalid(p)) = validate(r, Role::Web) else {
                panic!("should be refused")
            };
            let text = ConfigError::Invalid(p.clone()).to_string();
            assert!(!text.contains("hunter2"), "{text}");
            p
        };
        let keys = |p: Vec<Problem>| p.into_iter().map(|p| p.key).collect::<Vec<_>>();
        let mut r = raw.clone();
        r.state.path = Some(dir.path().join("state.redb"));
        assert_eq!(keys(refused(r)), ["state.path"]);
        let mut r = raw.clone();
        r.state.url_file = None;
        assert_eq!(keys(refused(r)), ["state.url"]);
        let mut r = raw.clone();
        r.state.url_file = None;
        r.state.url = Some(SecretString::from("mysql://bridge:hunter2@db/x".to_owned()));
        assert_eq!(keys(refused(r)), ["state.url"]);
        let mut r = raw.clone();
        r.state.url = Some(SecretString::from(
            "postgres://bridge:hunter2@db/x?sslmode=allow".to_owned(),
        ));
        r.state.url_file = None;
        assert_eq!(keys(refused(r)), ["state.url"]);
        let mut r = raw.clone();
        r.state.pool_size = 0;
        r.state.connect_timeout = Duration::ZERO;
        r.state.ca_file = Some(dir.path().join("missing.pem"));
        assert_eq!(
            keys(refused(r)),
            ["state.ca_file", "state.pool_size", "state.connect_timeout"]
        );
        let mut r = raw.clone();
        r.state.backend = None;
        assert_eq!(keys(refused(r)), ["state.url_file"]);
        let mut r = RawConfig::default();
        r.state.backend = Some(StateBackend::File);
        assert_eq!(keys(refused(r)), ["state.backend"]);
    }

    #[test]
    fn web_replicas_with_the_shared_database_find_the_leader_not_a_fixed_url() {
        let base = "[state]\nbackend = \"postgres\"\nurl = \"postgres://b:pw@db:5432/s\"\n";
        let parse = |extra: &str| {
            let fig =
                figment(None).merge(figment::providers::Toml::string(&format!("{base}{extra}")));
            validate(extract(&fig).unwrap(), Role::Web)
        };
        let c = parse("[web]\npoller_token = \"t\"\n").unwrap();
        assert!(c.web.poller_url.is_none());
        assert!(
            !c.warnings.iter().any(|w| w.contains("web.poller_url")),
            "{:?}",
            c.warnings
        );
        let keys = |r: Result<Config, ConfigError>| match r {
            Err(ConfigError::Invalid(p)) => p.into_iter().map(|p| p.key).collect::<Vec<_>>(),
            other => panic!("should be refused: {:?}", other.map(|_| ())),
        };
        assert_eq!(
            keys(parse(
                "[web]\npoller_token = \"t\"\npoller_url = \"http://poller:8080\"\n"
            )),
            ["web.poller_url"]
        );
        // It calls the leader's internal API, which needs the shared token.
        assert_eq!(keys(parse("")), ["web.poller_token"]);
    }

    #[test]
    fn state_retention_parses_and_is_checked() {
        let fig = figment(None).merge(figment::providers::Toml::string(
            "[state]\nretention = \"1d\"\n",
        ));
        let raw = extract(&fig).unwrap();
        assert_eq!(raw.state.retention, Duration::from_secs(86_400));

        let mut r = RawConfig::default();
        r.state.retention = Duration::from_secs(1);
        let Err(ConfigError::Invalid(p)) = validate(r, Role::Web) else {
            panic!("1s retention should be refused")
        };
        assert_eq!(p[0].key, "state.retention");
    }

    #[test]
    fn extraction_sets_bad_values_aside_and_keeps_the_rest() {
        let fig = figment(None).merge(figment::providers::Toml::string(
            "[oneview]\nconnect_timeout = \"soon\"\nusername = \"svc\"\nbogus = 1\n\
             [poller]\npage_size = \"big\"\ninterval = \"45s\"\n\
             [[pagerduty.routes]]\nseverities = \"Critical\"\nrouting_key = \"k\"\n",
        ));
        let loaded = load_layers(&fig, &[]);
        let keys: Vec<&str> = loaded.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "oneview.bogus",
                "oneview.connect_timeout",
                "pagerduty.routes[0].severities",
                "poller.page_size"
            ]
        );
        assert!(loaded.complete);
        // What was fine is kept; what was not is at its default.
        assert_eq!(loaded.raw.oneview.username.as_deref(), Some("svc"));
        assert_eq!(loaded.raw.poller.interval, Duration::from_secs(45));
        assert_eq!(loaded.raw.poller.page_size, 500);
        assert_eq!(loaded.raw.oneview.connect_timeout, Duration::from_secs(5));
        assert!(loaded.raw.pagerduty.routes.is_empty());
        // Validation runs too, but says nothing again about what was set aside.
        let Err(ConfigError::Invalid(p)) = loaded.validate(Role::Poller) else {
            panic!("problems expected")
        };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"oneview.url"), "{keys:?}");
        assert_eq!(
            keys.iter()
                .filter(|k| k.starts_with("pagerduty.routes"))
                .count(),
            1,
            "{keys:?}"
        );
    }

    #[test]
    fn the_higher_layer_twin_replaces_the_lower_one_both_ways() {
        use figment::providers::Toml;
        let pw = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(pw.path(), "pw\n").unwrap();
        let file_form = format!("[oneview]\npassword_file = {:?}\n", pw.path());
        let inline_form = "[oneview]\npassword = \"inline\"\n".to_owned();
        for (low, high, want_file) in [
            (&file_form, &inline_form, false),
            (&inline_form, &file_form, true),
        ] {
            let (lo, hi) = (Toml::string(low), Toml::string(high));
            let layers = [Layer::of(&lo), Layer::of(&hi)];
            let fig = figment(None).merge(lo).merge(hi);
            let loaded = load_layers(&fig, &layers);
            assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
            assert_eq!(loaded.raw.oneview.password_file.is_some(), want_file);
            assert_eq!(loaded.raw.oneview.password.is_some(), !want_file);
            assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        }
        // Both forms in one layer: left for validation to refuse.
        let both = Toml::string(&format!("{file_form}password = \"inline\"\n"));
        let layers = [Layer::of(&both)];
        let fig = figment(None).merge(both);
        let loaded = load_layers(&fig, &layers);
        assert!(loaded.warnings.is_empty());
        let mut raw = raw_ok();
        raw.oneview = loaded.raw.oneview;
        raw.oneview.url = Some("https://ov.example.com".into());
        raw.oneview.username = Some("u".into());
        let Err(ConfigError::Invalid(p)) = validate(raw, Role::All) else {
            panic!("both in one source must stay an error")
        };
        assert_eq!(p[0].key, "oneview.password");
    }

    #[test]
    fn secrets_are_found_by_their_file_twin() {
        let known = serde_json::to_value(RawConfig::default()).unwrap();
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        for secret in [
            "oneview.password",
            "pagerduty.routing_key",
            "pagerduty.webhook_secrets",
            "server.api_tokens",
            "web.poller_token",
            "pagerduty.routes.0.routing_key",
            "pagerduty.routes.0",
        ] {
            assert!(is_secret(&known, &path(secret)), "{secret}");
        }
        for plain in [
            "oneview.password_file",
            "oneview.username",
            "poller.interval",
            "pagerduty.routes.0.severities",
        ] {
            assert!(!is_secret(&known, &path(plain)), "{plain}");
        }
    }

    #[test]
    fn writeback_queue_concurrency_and_webhook_rate_limit() {
        let c = validate(RawConfig::default(), Role::Web).unwrap();
        assert_eq!(c.web.writeback_queue, 10_000);
        assert_eq!(c.web.writeback_concurrency, 8);
        assert_eq!(
            c.web.webhook_rate_limit, None,
            "the webhook is exempt by default"
        );

        let fig = figment(None).merge(figment::providers::Toml::string(
            "[web]\nwriteback_queue = 3\nwriteback_concurrency = 64\nwebhook_rate_limit_per_second = 500\n",
        ));
        let c = validate(extract(&fig).unwrap(), Role::Web).unwrap();
        assert_eq!(c.web.writeback_queue, 3);
        assert_eq!(c.web.writeback_concurrency, 64);
        assert_eq!(
            c.web.webhook_rate_limit,
            Some((500, 1000)),
            "burst defaults to 2x"
        );

        let bad = |f: &dyn Fn(&mut RawWeb)| {
            let mut r = RawConfig::default();
            f(&mut r.web);
            let Err(ConfigError::Invalid(p)) = validate(r, Role::Web) else {
                panic!("should be refused")
            };
            assert_eq!(p.len(), 1, "{p:?}");
            p[0].key.clone()
        };
        assert_eq!(bad(&|w| w.writeback_queue = 0), "web.writeback_queue");
        assert_eq!(
            bad(&|w| w.writeback_queue = MAX_WRITEBACK_QUEUE + 1),
            "web.writeback_queue"
        );
        assert_eq!(
            bad(&|w| w.writeback_concurrency = 0),
            "web.writeback_concurrency"
        );
        assert_eq!(
            bad(&|w| w.writeback_concurrency = 65),
            "web.writeback_concurrency"
        );
        assert_eq!(
            bad(&|w| w.webhook_rate_limit_burst = 10),
            "web.webhook_rate_limit_burst"
        );
        assert_eq!(
            bad(&|w| w.webhook_rate_limit_per_second = MAX_RATE_LIMIT_PER_SECOND + 1),
            "web.webhook_rate_limit_per_second"
        );
    }

    #[test]
    fn max_response_bytes_defaults_bounds_and_page_size_warning() {
        let c = validate(raw_ok(), Role::Poller).unwrap();
        assert_eq!(
            c.appliances[0].oneview.max_response_bytes,
            DEFAULT_MAX_RESPONSE_BYTES
        );
        assert!(
            !c.warnings.iter().any(|w| w.contains("max_response_bytes")),
            "{:?}",
            c.warnings
        );
        for bad in [0, MIN_RESPONSE_BYTES - 1, MAX_RESPONSE_BYTES + 1] {
            let mut r = raw_ok();
            r.oneview.max_response_bytes = bad;
            let Err(ConfigError::Invalid(p)) = validate(r, Role::Poller) else {
                panic!("{bad} should be refused")
            };
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].key, "oneview.max_response_bytes");
        }
        let mut r = raw_ok();
        r.oneview.max_response_bytes = MIN_RESPONSE_BYTES;
        r.poller.page_size = 5000;
        let c = validate(r, Role::Poller).unwrap();
        assert!(
            c.warnings.iter().any(|w| w.contains("oneview.max_response_bytes")
                && w.contains("poller.page_size")),
            "{:?}",
            c.warnings
        );
    }
}
