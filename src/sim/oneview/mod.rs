//! A OneView appliance simulator: enough of the REST API to drive the bridge (version, login
//! with optional banner, `Auth` sessions with idle expiry, `X-API-Version` rules, `/rest/alerts`
//! paging with the real envelope and filters, alert GET/PUT/DELETE, `/rest/tasks` with the same
//! filters and paging ([`tasks`]: a few finished tasks of history, more added and moved on
//! through `POST /sim/tasks` and `POST /sim/tasks/{id}/state`), logout), plus a control API
//! under `/sim/...` and the same operations as methods on [`SimHandle`] to add, change and
//! clear alerts, inject faults and read counters.
//!
//! Served over HTTPS ([`start_with`]), it also answers `GET /rest/certificates/ca` with its
//! CA in the shape of the requested API version (a PEM string before 600, a collection from 600
//! on), so the README's command that saves an appliance's CA can be tried against it.
//!
//! It is product code: the tests, the benchmarks and the `demo` command use it, and users run
//! it alone (`oneview-pagerduty-bridge simulate oneview --listen 127.0.0.1:9443`) to try their
//! setup. An estate is several simulators, one per port, each with its own store, sessions,
//! credentials and [`Site`] (how its alerts name the hardware), see [`site`]. Time comes from tokio's clock (anchored to the wall clock at start), so tests with
//! paused time control session expiry and `modified` stamps.

pub mod filter;
pub mod scmb;
mod server;
pub mod site;
pub mod store;
pub mod tasks;
pub mod templates;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use scmb::{Keypair, ScmbCa, ScmbPublisher, start_publisher};
pub use server::router;
pub use site::{Site, estate, estate_password};
use store::Store;
pub use store::{AlertSpec, GenerateSpec};
pub use tasks::TaskSpec;
pub use tls::TlsFiles;

use crate::model::{AlertState, Severity};

/// How the simulator writes an absent page URI (real appliances do both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PageUriStyle {
    #[default]
    Null,
    Empty,
}

/// Simulator settings. All can be changed at run time with [`SimHandle::configure`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    pub username: String,
    #[serde(skip_serializing)]
    pub password: String,
    pub current_version: u32,
    pub minimum_version: u32,
    /// Require `loginMsgAck: true` like appliances with a login banner.
    pub login_banner: bool,
    pub idle_timeout: Duration,
    /// The most members a page holds, whatever `count` asks.
    pub max_page_size: usize,
    /// Members per page without `count`.
    pub default_page_size: usize,
    pub page_uri_style: PageUriStyle,
    /// Whether alert updates check their `eTag` (412 on a mismatch). Off: the last writer
    /// wins, as with appliances that ignore it; a client must not rely on it for idempotency.
    pub check_etag: bool,
    /// The appliance's name in an estate (shown on its page and at `/sim`); `None` alone.
    pub name: Option<String>,
    /// How generated alerts name the hardware; read at start only.
    pub site: Site,
    /// The appliance's internal CA (certificate and key): it issues the RabbitMQ client
    /// keypair of `/rest/certificates/client/rabbitmq/...` and the publisher's own, and is
    /// served at `/rest/certificates/ca` when the simulator has no TLS CA of its own. Never
    /// serialised. Without it the keypair endpoints answer 404 and generating fails.
    #[serde(skip)]
    pub scmb_ca: Option<ScmbCa>,
    /// Whether the keypair exists from the start (read at start); false: 404 until `POST`
    /// generates it.
    pub scmb_keypair_at_start: bool,
    /// `POST /rest/certificates/client/rabbitmq` is refused (403 `AUTHORIZATION`), as for a
    /// user without the Infrastructure administrator role.
    pub scmb_generate_denied: bool,
    /// GETs of the generate task that answer `Running` before it completes.
    pub scmb_task_polls: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            username: "administrator".to_owned(),
            password: "sim-password".to_owned(),
            current_version: 6600,
            minimum_version: 120,
            login_banner: true,
            idle_timeout: Duration::from_secs(24 * 3600),
            max_page_size: 1000,
            default_page_size: 25,
            page_uri_style: PageUriStyle::Null,
            check_etag: true,
            name: None,
            site: Site::default(),
            scmb_ca: None,
            scmb_keypair_at_start: true,
            scmb_generate_denied: false,
            scmb_task_polls: 1,
        }
    }
}

/// Injected faults. `*_next` counters apply to the next N matching requests; rates apply to
/// every `/rest` request at random.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added before every `/rest` answer.
    pub latency_ms: u64,
    /// Fraction of `/rest` requests answered 500.
    pub error_rate: f64,
    /// The next N `/rest` requests are answered 503.
    pub fail_next: u32,
    /// Fraction of `/rest` requests whose connection drops mid-answer.
    pub drop_rate: f64,
    /// The connection of the next N `/rest` requests drops mid-answer.
    pub drop_next: u32,
    /// The next N alert collection pages are truncated JSON.
    pub garbage_next: u32,
    /// The next N alert collection pages are an HTML error page (HTTP 200, like some proxies).
    pub html_next: u32,
    /// The next N alert collection pages are JSON without `members`.
    pub bad_envelope_next: u32,
    /// The next N alert collection pages are a well-formed, empty answer (`total: 0`, no
    /// members), as appliances give while their services restart.
    pub empty_next: u32,
    /// The next N alert collection pages never end: a valid envelope start, then realistic
    /// members, streamed until the client hangs up (a runaway appliance, or whatever answers
    /// in its place). [`Counters::streamed_bytes`] counts what was handed to the connection.
    pub endless_page_next: u32,
    /// While set (an origin such as `http://127.0.0.1:9000`), collection pages give their
    /// `nextPageUri` as an absolute URI on that origin, as a hostile or misconfigured appliance
    /// or proxy might.
    pub next_page_origin: Option<String>,
    /// The next N `/rest` requests that carry an `Auth` header are answered with text that
    /// quotes it, as a careless proxy might: collection pages with an HTTP 200 HTML page,
    /// everything else with a 400 OneView error.
    pub echo_auth_next: u32,
    /// While true, requests on one alert (`/rest/alerts/{id}`: reads and write-backs) wait,
    /// unanswered, until it is set back to false: keeps a client's requests in flight for as long
    /// as a test needs, without timing. [`SimHandle::held_requests`] counts the waiting ones.
    pub hold_alert_requests: bool,
}

/// Request and traffic counters, for assertions and benchmarks.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Requests by endpoint: version, login, logout, alerts, alert, other, control.
    pub requests: BTreeMap<String, u64>,
    pub logins: u64,
    pub login_failures: u64,
    pub logouts: u64,
    /// 401 answers.
    pub unauthorized: u64,
    /// Alerts sent as collection members.
    pub members_sent: u64,
    /// Bytes of those members (their JSON, without the envelope).
    pub member_bytes: u64,
    /// Bytes of `/rest` response bodies by endpoint.
    pub response_bytes: BTreeMap<String, u64>,
    /// Bytes of endless pages ([`Faults::endless_page_next`]) handed to the connection before
    /// the client hung up.
    pub streamed_bytes: u64,
    pub faults_injected: u64,
}

impl Counters {
    pub fn requests(&self, endpoint: &str) -> u64 {
        self.requests.get(endpoint).copied().unwrap_or(0)
    }
}

/// An error of a control operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no alert with id {0}")]
    NoSuchAlert(u64),
    #[error("{0}")]
    Invalid(String),
    #[error("no such {0}")]
    NotFound(String),
}

/// Collection request times kept by [`SimHandle::alert_poll_instants`].
pub const ALERT_POLLS_KEPT: usize = 100_000;

struct SimSession {
    username: String,
    last_used: Instant,
}

pub(crate) struct Inner {
    cfg: Mutex<SimConfig>,
    store: Mutex<Store>,
    sessions: Mutex<HashMap<String, SimSession>>,
    faults: Mutex<Faults>,
    /// Wakes held requests when the faults change.
    faults_changed: tokio::sync::Notify,
    held: std::sync::atomic::AtomicUsize,
    counters: Mutex<Counters>,
    /// Arrival times of `GET /rest/alerts` (collection) requests, for latency benchmarks.
    alert_polls: Mutex<Vec<std::time::Instant>>,
    clock_base_ms: i64,
    clock_start: Instant,
    /// The CA served at `/rest/certificates/ca` (PEM), when serving HTTPS.
    ca_pem: Mutex<Option<String>>,
    /// The SCMB keypair, generate tasks and publisher.
    scmb: Mutex<scmb::SimScmb>,
    /// `/rest/tasks`.
    tasks: Mutex<tasks::TaskStore>,
}

/// A handle on a simulator's state; cheap to clone. Tests, the demo and the control API use it.
#[derive(Clone)]
pub struct SimHandle {
    pub(crate) inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The simulator's state stays consistent between statements; recover from a poisoned lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimHandle {
    pub fn new(cfg: SimConfig) -> Self {
        let store = Store::new(cfg.site.clone());
        let keypair_at_start = cfg.scmb_keypair_at_start;
        let h = Self {
            inner: Arc::new(Inner {
                cfg: Mutex::new(cfg),
                store: Mutex::new(store),
                sessions: Mutex::new(HashMap::new()),
                faults: Mutex::new(Faults::default()),
                faults_changed: tokio::sync::Notify::new(),
                held: std::sync::atomic::AtomicUsize::new(0),
                counters: Mutex::new(Counters::default()),
                alert_polls: Mutex::new(Vec::new()),
                clock_base_ms: chrono::Utc::now().timestamp_millis(),
                clock_start: Instant::now(),
                ca_pem: Mutex::new(None),
                scmb: Mutex::new(scmb::SimScmb::default()),
                tasks: Mutex::new(tasks::TaskStore::with_history(
                    chrono::Utc::now().timestamp_millis(),
                )),
            }),
        };
        if keypair_at_start {
            h.generate_scmb_keypair();
        }
        h
    }

    /// The simulator's clock, unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.inner.clock_base_ms
            + i64::try_from(self.inner.clock_start.elapsed().as_millis()).unwrap_or(0)
    }

    /// The CA certificate (PEM) that `GET /rest/certificates/ca` serves, if any: the TLS CA,
    /// else the SCMB CA.
    pub fn ca_pem(&self) -> Option<String> {
        lock(&self.inner.ca_pem)
            .clone()
            .or_else(|| self.config().scmb_ca.map(|c| c.cert_pem))
    }

    pub fn set_ca_pem(&self, pem: Option<String>) {
        *lock(&self.inner.ca_pem) = pem;
    }

    pub fn config(&self) -> SimConfig {
        lock(&self.inner.cfg).clone()
    }

    pub fn configure(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut lock(&self.inner.cfg));
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.inner.store)
    }

    pub(crate) fn counters_mut(&self) -> MutexGuard<'_, Counters> {
        lock(&self.inner.counters)
    }

    pub(crate) fn faults_mut(&self) -> MutexGuard<'_, Faults> {
        lock(&self.inner.faults)
    }

    // ---- tasks -----------------------------------------------------------------------

    pub(crate) fn tasks(&self) -> MutexGuard<'_, tasks::TaskStore> {
        lock(&self.inner.tasks)
    }

    /// Adds a task (stamped now, less `spec.age_secs`); returns its URI.
    pub fn add_task(&self, spec: TaskSpec) -> String {
        let now = self.now_ms();
        self.tasks().add(&spec, now)
    }

    /// Moves task `uri` to `state` (`Running`, `Completed`, `Error`, ...), stamping `modified`.
    pub fn set_task_state(&self, uri: &str, state: &str) -> Result<(), SimError> {
        let now = self.now_ms();
        if self.tasks().set_state(uri, state, None, now) {
            Ok(())
        } else {
            Err(SimError::NotFound(format!("task {uri}")))
        }
    }

    /// A task as `/rest/tasks/{id}` serves it.
    pub fn task(&self, uri: &str) -> Option<serde_json::Value> {
        self.tasks().get(uri).map(tasks::SimTask::to_json)
    }

    // ---- alerts ----------------------------------------------------------------------

    /// Adds an alert; returns its URI.
    pub fn add_alert(&self, spec: AlertSpec) -> String {
        let now = self.now_ms();
        let id = self.store().add(&spec, now);
        self.publish([id], "Created");
        format!("/rest/alerts/{id}")
    }

    pub fn add_alerts(&self, specs: &[AlertSpec]) -> Vec<String> {
        let now = self.now_ms();
        let ids: Vec<u64> = {
            let mut s = self.store();
            specs.iter().map(|spec| s.add(spec, now)).collect()
        };
        self.publish(ids.iter().copied(), "Created");
        ids.iter().map(|id| format!("/rest/alerts/{id}")).collect()
    }

    /// Adds `spec.count` realistic alerts; returns the id range.
    pub fn generate(&self, spec: &GenerateSpec) -> std::ops::Range<u64> {
        let now = self.now_ms();
        let first = self.store().generate(spec, now);
        let ids = match first {
            Some(f) => f..f + spec.count as u64,
            None => 0..0,
        };
        self.publish(ids.clone(), "Created");
        ids
    }

    fn modify(&self, id: u64, f: impl FnOnce(&mut store::SimAlert)) -> Result<(), SimError> {
        let now = self.now_ms();
        if self.store().modify(id, now, f) {
            self.publish([id], "Updated");
            Ok(())
        } else {
            Err(SimError::NoSuchAlert(id))
        }
    }

    pub fn set_severity(&self, id: u64, severity: &str) -> Result<(), SimError> {
        let sev = Severity::parse(severity);
        self.modify(id, |a| a.severity = sev)
    }

    pub fn set_description(&self, id: u64, description: &str) -> Result<(), SimError> {
        let d: Arc<str> = Arc::from(description);
        self.modify(id, |a| a.description = d)
    }

    pub fn set_state(&self, id: u64, state: &str) -> Result<(), SimError> {
        let st = AlertState::parse(state);
        if st == AlertState::Cleared {
            return self.clear(id);
        }
        self.modify(id, |a| {
            a.state = st;
            a.cleared_by_user = None;
            a.cleared_time_ms = None;
        })
    }

    /// Clears an alert as the appliance would (`clearedByUser` System).
    pub fn clear(&self, id: u64) -> Result<(), SimError> {
        let now = self.now_ms();
        if self.store().clear(id, now, "System") {
            self.publish([id], "Updated");
            Ok(())
        } else {
            Err(SimError::NoSuchAlert(id))
        }
    }

    /// Clears an alert the way appliances usually report a recovery: severity `OK` and state
    /// `Cleared` in one change.
    pub fn clear_ok(&self, id: u64) -> Result<(), SimError> {
        let now = self.now_ms();
        self.modify(id, |a| {
            a.severity = Severity::Ok;
            a.state = AlertState::Cleared;
            a.cleared_by_user = Some("System".to_owned());
            a.cleared_time_ms = Some(now);
        })
    }

    /// Makes the alert serve a field of the wrong type (a malformed member).
    pub fn corrupt(&self, id: u64) -> Result<(), SimError> {
        self.modify(id, |a| a.corrupt = true)
    }

    pub fn delete(&self, id: u64) -> Result<(), SimError> {
        let json = self.alert(id);
        if self.store().delete(id) {
            if let Some(j) = json {
                self.publish_json(&j, "Deleted");
            }
            Ok(())
        } else {
            Err(SimError::NoSuchAlert(id))
        }
    }

    /// An alert as the REST API serves it.
    pub fn alert(&self, id: u64) -> Option<serde_json::Value> {
        self.store().get(id).map(store::SimAlert::to_json)
    }

    pub fn alert_count(&self) -> usize {
        self.store().len()
    }

    pub fn open_alert_count(&self) -> usize {
        self.store().open_count()
    }

    // ---- sessions, faults, counters ---------------------------------------------------

    /// Ends every session at once (clients get 401 next).
    pub fn expire_sessions(&self) -> usize {
        let mut s = lock(&self.inner.sessions);
        let n = s.len();
        s.clear();
        n
    }

    pub fn session_count(&self) -> usize {
        lock(&self.inner.sessions).len()
    }

    /// The ids of the live sessions (tests check that none leaks into an error or a log).
    pub fn session_ids(&self) -> Vec<String> {
        lock(&self.inner.sessions).keys().cloned().collect()
    }

    pub fn faults(&self) -> Faults {
        self.faults_mut().clone()
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults_mut() = f;
        self.inner.faults_changed.notify_waiters();
    }

    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.faults_mut());
        self.inner.faults_changed.notify_waiters();
    }

    /// Requests waiting because of [`Faults::hold_alert_requests`].
    pub fn held_requests(&self) -> usize {
        self.inner.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits while [`Faults::hold_alert_requests`] is set.
    pub(crate) async fn wait_while_held(&self) {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        /// Counts a held request until it goes on or its client gives up (the future drops).
        struct Held<'a>(&'a AtomicUsize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        let mut held = None;
        loop {
            let changed = self.inner.faults_changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a release between the check and the wait wakes it.
            changed.as_mut().enable();
            if !self.faults_mut().hold_alert_requests {
                return;
            }
            if held.is_none() {
                self.inner.held.fetch_add(1, SeqCst);
                held = Some(Held(&self.inner.held));
            }
            changed.await;
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters_mut().clone()
    }

    pub fn reset_counters(&self) {
        *self.counters_mut() = Counters::default();
    }

    /// Arrival times of the collection requests (`GET /rest/alerts`) so far (the latest
    /// [`ALERT_POLLS_KEPT`]).
    pub fn alert_poll_instants(&self) -> Vec<std::time::Instant> {
        lock(&self.inner.alert_polls).clone()
    }

    pub(crate) fn count(&self, endpoint: &str) {
        if endpoint == "alerts" {
            let mut p = lock(&self.inner.alert_polls);
            if p.len() >= ALERT_POLLS_KEPT {
                p.drain(..ALERT_POLLS_KEPT / 2);
            }
            p.push(std::time::Instant::now());
        }
        *self
            .counters_mut()
            .requests
            .entry(endpoint.to_owned())
            .or_insert(0) += 1;
    }

    /// Creates a session for `username`; returns its id.
    pub(crate) fn open_session(&self, username: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        lock(&self.inner.sessions).insert(
            id.clone(),
            SimSession {
                username: username.to_owned(),
                last_used: Instant::now(),
            },
        );
        id
    }

    /// The user of a live session, refreshing its idle timer; `None` when unknown or idle
    /// for longer than the idle timeout (the session is then gone).
    pub(crate) fn touch_session(&self, id: &str) -> Option<String> {
        let idle = self.config().idle_timeout;
        let mut s = lock(&self.inner.sessions);
        let live = s.get(id).map(|x| x.last_used.elapsed() <= idle)?;
        if !live {
            s.remove(id);
            return None;
        }
        let sess = s.get_mut(id)?;
        sess.last_used = Instant::now();
        Some(sess.username.clone())
    }

    pub(crate) fn close_session(&self, id: &str) -> bool {
        lock(&self.inner.sessions).remove(id).is_some()
    }
}

/// A simulator serving on a socket.
pub struct RunningSim {
    pub addr: SocketAddr,
    pub handle: SimHandle,
    tls: bool,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningSim {
    /// `http://127.0.0.1:PORT` (`https://` when serving TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        self.stop.cancel();
        // Clients' keep-alive connections would hold a graceful shutdown open indefinitely.
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Binds `listen` and serves the simulator over plain HTTP until [`RunningSim::stop`].
pub async fn start(cfg: SimConfig, listen: SocketAddr) -> std::io::Result<RunningSim> {
    start_with(cfg, listen, None).await
}

/// Like [`start`], over HTTPS with the given certificate when `tls` is set.
pub async fn start_with(
    cfg: SimConfig,
    listen: SocketAddr,
    tls: Option<TlsFiles>,
) -> std::io::Result<RunningSim> {
    let acceptor = tls.as_ref().map(TlsFiles::acceptor).transpose()?;
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = SimHandle::new(cfg);
    handle.set_ca_pem(tls.as_ref().and_then(TlsFiles::served_ca_pem));
    let stop = CancellationToken::new();
    let app = router(handle.clone());
    let stopped = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let task = match acceptor {
        Some(acceptor) => {
            let l = tls::TlsListener {
                tcp: listener,
                acceptor,
            };
            tokio::spawn(async move {
                if let Err(e) = axum::serve(l, app).with_graceful_shutdown(stopped).await {
                    tracing::error!(error = %e, "OneView simulator server failed");
                }
            })
        }
        None => tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "OneView simulator server failed");
            }
        }),
    };
    Ok(RunningSim {
        addr,
        handle,
        tls: tls.is_some(),
        stop,
        task,
    })
}
