//! The OneView REST client: API version negotiation, the session (login, proactive refresh,
//! single-flight re-login on 401 with one replay, logout), TLS and timeouts, OneView error
//! bodies, and per-request metrics. The poller and the PagerDuty write-back both use it.
//!
//! What it refuses, whoever answers in the appliance's place: a body longer than
//! `oneview.max_response_bytes` (read chunk by chunk and dropped at the limit, never buffered
//! whole; error bodies are cut at [`ERROR_BODY_BYTES`]), a request to any origin other than
//! that of `oneview.url` (the session token goes with every request), and the session id or
//! password in any error text. TLS failures are reported as such, with their fix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, DATE, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use url::Url;

use super::error::{OneViewError, api_error, snippet, tls_problem};
use super::metrics::{Endpoint, OneViewMetrics};
use super::session::{Session, SessionSlot};
use crate::config::{ApiVersionSetting, OneViewConfig};
use crate::model::Alert;
use crate::secret::Secret;

/// The highest OneView REST API version this bridge has been tested against (OneView 11.20,
/// per the python SDK's changelog). With `api_version = "auto"` the bridge uses the
/// appliance's `currentVersion` capped at this value: the alert resource is stable across
/// versions, and newer enum values are kept as strings anyway.
pub const TESTED_MAX_API_VERSION: u32 = 8400;

/// The most of an error answer's body that is read: enough for any OneView error JSON or the
/// start of a proxy's HTML page, which is all an error message uses.
pub const ERROR_BODY_BYTES: u64 = 64 * 1024;

/// How long a connection to the appliance is kept open unused. Its read buffer grew to the
/// size of an alert page (256-400 KB) and stays that size while the connection is pooled: 13 MB
/// of a bridge's 50 appliances between two polls at the default 30 s interval (BENCHMARKS.md,
/// section 9). Shorter intervals and write-back bursts still reuse their connection.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// `GET /rest/version`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ApplianceVersion {
    pub current_version: u32,
    pub minimum_version: u32,
}

/// An alert update for `PUT /rest/alerts/{id}` (used by the PagerDuty write-back). Only the
/// given fields are sent.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertUpdate {
    /// `Active` or `Cleared`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_state: Option<String>,
    /// A note; OneView adds it to the alert's change log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_urgency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
}

/// An HTTP answer. Its `Debug` leaves the body out: a login answer holds the session id.
#[derive(Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    /// The URL that was requested (no secrets in it).
    pub url: String,
    /// The appliance's clock at answer time (`Date` header, second precision), unix millis.
    pub date_ms: Option<i64>,
    /// Round-trip time as measured here.
    pub elapsed: Duration,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("url", &self.url)
            .field("body_len", &self.body.len())
            .field("date_ms", &self.date_ms)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoginBody<'a> {
    user_name: &'a str,
    password: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth_login_domain: Option<&'a str>,
    /// Appliances with a login banner refuse logins without it.
    login_msg_ack: bool,
}

#[derive(Deserialize)]
struct LoginReply {
    #[serde(rename = "sessionID")]
    session_id: Option<String>,
}

/// One OneView appliance's REST API.
pub struct OneViewClient {
    http: reqwest::Client,
    base: Url,
    username: String,
    password: Arc<Secret>,
    auth_login_domain: Option<String>,
    api_setting: ApiVersionSetting,
    /// 0 until negotiated.
    api_version: AtomicU32,
    version_lock: tokio::sync::Mutex<()>,
    session_refresh: Duration,
    session: SessionSlot,
    metrics: OneViewMetrics,
    max_response_bytes: u64,
    /// `oneview.ca_file`, for the advice of a certificate error.
    ca_file: Option<String>,
}

impl std::fmt::Debug for OneViewClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneViewClient")
            .field("base", &self.base.as_str())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl OneViewClient {
    /// Builds the client: rustls with the system roots plus `oneview.ca_file`, certificate
    /// checks off only with `oneview.tls_insecure_skip_verify`, and both timeouts.
    pub fn new(cfg: &OneViewConfig, metrics: OneViewMetrics) -> Result<Self, OneViewError> {
        let mut ca_certs = Vec::new();
        if let Some(path) = &cfg.ca_file {
            use tokio_rustls::rustls::pki_types::CertificateDer;
            use tokio_rustls::rustls::pki_types::pem::PemObject;
            let pem = std::fs::read(path).map_err(|e| OneViewError::Setup {
                key: "oneview.ca_file",
                detail: format!("cannot read {}: {e}", path.display()),
            })?;
            ca_certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| OneViewError::Setup {
                    key: "oneview.ca_file",
                    detail: format!("{} is not a PEM certificate bundle: {e}", path.display()),
                })?;
            if ca_certs.is_empty() {
                return Err(OneViewError::Setup {
                    key: "oneview.ca_file",
                    detail: format!("{} holds no PEM certificate", path.display()),
                });
            }
        }
        let tls =
            super::tls::client_config(ca_certs, cfg.tls_insecure_skip_verify).map_err(|e| {
                OneViewError::Setup {
                    key: "oneview.ca_file",
                    detail: e.to_string(),
                }
            })?;
        // One rustls configuration per client, but the system roots, provider and session
        // cache inside it are shared by every appliance (see `super::tls`).
        let builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(concat!(
                "oneview-pagerduty-bridge/",
                env!("CARGO_PKG_VERSION")
            ));
        let http = builder.build().map_err(|e| OneViewError::Setup {
            key: "oneview",
            detail: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(Self {
            http,
            base: cfg.url.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            auth_login_domain: cfg.auth_login_domain.clone(),
            api_setting: cfg.api_version,
            api_version: AtomicU32::new(0),
            version_lock: tokio::sync::Mutex::new(()),
            session_refresh: cfg.session_refresh,
            session: SessionSlot::new(),
            metrics,
            max_response_bytes: cfg.max_response_bytes,
            ca_file: cfg.ca_file.as_ref().map(|p| p.display().to_string()),
        })
    }

    /// The appliance base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The API version in use, once negotiated.
    pub fn api_version(&self) -> Option<u32> {
        match self.api_version.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v),
        }
    }

    /// Age of the current session, if logged in.
    pub fn session_age(&self) -> Option<Duration> {
        self.session.current().map(|s| s.since.elapsed())
    }

    pub fn is_logged_in(&self) -> bool {
        self.session.current().is_some()
    }

    fn url(&self, path: &str) -> Result<Url, OneViewError> {
        self.resolve(path, "a request")
    }

    /// `link` resolved against `oneview.url`, if it stays on the appliance. Relative links
    /// (what appliances send) always do; an absolute or scheme-relative one must have the
    /// scheme, host and port of `oneview.url`. `what` names where the link came from.
    pub fn resolve(&self, link: &str, what: &str) -> Result<Url, OneViewError> {
        let url = self
            .base
            .join(link)
            .map_err(|e| OneViewError::BadResponse {
                endpoint: "request",
                url: link.to_owned(),
                detail: format!("{what}: not a usable URI relative to {}: {e}", self.base),
            })?;
        if url.origin() != self.base.origin() {
            self.metrics.request_error("foreign_link");
            return Err(self.scrub(OneViewError::ForeignLink {
                what: what.to_owned(),
                link: link.to_owned(),
                appliance: self.base.origin().ascii_serialization(),
            }));
        }
        Ok(url)
    }

    /// `e` without the current session id or the password in its text (see
    /// [`OneViewError::redact`]), for errors built from what the appliance sent.
    pub fn scrub(&self, e: OneViewError) -> OneViewError {
        let session = self.session.current();
        let password = self.password.current().ok();
        let mut secrets: Vec<&str> = Vec::with_capacity(2);
        if let Some(s) = &session {
            secrets.push(s.id.expose_secret());
        }
        if let Some(p) = &password {
            secrets.push(p.expose_secret());
        }
        e.redact(&secrets)
    }

    /// `GET /rest/version` (no session, no version header).
    pub async fn appliance_version(&self) -> Result<ApplianceVersion, OneViewError> {
        let url = self.url("/rest/version")?;
        let r = self
            .send_once(Endpoint::Version, Method::GET, &url, None, None, None)
            .await?;
        if !(200..300).contains(&r.status) {
            return Err(api_error("version", &r.url, r.status, &r.body));
        }
        serde_json::from_slice(&r.body).map_err(|e| OneViewError::BadResponse {
            endpoint: "version",
            url: r.url.clone(),
            detail: format!(
                "expected {{currentVersion, minimumVersion}}: {e}; {}",
                snippet(&r.body)
            ),
        })
    }

    /// The version to send, negotiating it on first use.
    pub async fn negotiate_version(&self) -> Result<u32, OneViewError> {
        if let Some(v) = self.api_version() {
            return Ok(v);
        }
        let _g = self.version_lock.lock().await;
        if let Some(v) = self.api_version() {
            return Ok(v);
        }
        let v = match self.api_setting {
            ApiVersionSetting::Fixed(v) => v,
            ApiVersionSetting::Auto => {
                let av = self.appliance_version().await?;
                let chosen = av.current_version.min(TESTED_MAX_API_VERSION);
                tracing::info!(
                    appliance_current_version = av.current_version,
                    appliance_minimum_version = av.minimum_version,
                    tested_max = TESTED_MAX_API_VERSION,
                    api_version = chosen,
                    url = %self.base,
                    "negotiated the OneView API version"
                );
                chosen
            }
        };
        self.api_version.store(v, Ordering::Relaxed);
        Ok(v)
    }

    /// After a 412 for `used`: switch to the appliance's `currentVersion`. False when there is
    /// nothing better to switch to.
    async fn fall_back_version(&self, used: u32) -> Result<bool, OneViewError> {
        let _g = self.version_lock.lock().await;
        if self.api_version() != Some(used) {
            // Another request already fell back.
            return Ok(true);
        }
        let av = self.appliance_version().await?;
        if av.current_version == used {
            return Ok(false);
        }
        tracing::warn!(
            rejected = used,
            appliance_current_version = av.current_version,
            url = %self.base,
            "OneView refused the API version (HTTP 412); falling back to the appliance's currentVersion. Set oneview.api_version to \"auto\" or to {} to avoid this",
            av.current_version
        );
        self.api_version
            .store(av.current_version, Ordering::Relaxed);
        Ok(true)
    }

    /// One HTTP exchange with metrics; no retries.
    async fn send_once(
        &self,
        endpoint: Endpoint,
        method: Method,
        url: &Url,
        version: Option<u32>,
        session: Option<&Session>,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, OneViewError> {
        let mut req = self.http.request(method, url.clone());
        if let Some(v) = version {
            req = req.header("X-API-Version", v);
        }
        if endpoint == Endpoint::Certificates {
            // Without it, API 600+ leaves `certificateDetails.base64Data` (the CA) out.
            req = req.header("If-Req-CertDetails", "true");
        }
        if let Some(s) = session {
            let mut hv = HeaderValue::from_str(s.id.expose_secret()).map_err(|_| {
                OneViewError::BadResponse {
                    endpoint: "login",
                    url: url.to_string(),
                    detail: "the sessionID is not a valid header value".to_owned(),
                }
            })?;
            hv.set_sensitive(true);
            req = req.header("Auth", hv);
        }
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(b);
        }
        let start = Instant::now();
        let mut answered = None;
        let result = async {
            let mut resp = req.send().await.map_err(Failure::Http)?;
            let status = resp.status().as_u16();
            answered = Some(status);
            let date_ms = resp
                .headers()
                .get(DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
                .map(|d| d.timestamp_millis());
            let body = self.read_body(&mut resp).await?;
            Ok::<_, Failure>((status, date_ms, body))
        }
        .await;
        let elapsed = start.elapsed();
        self.metrics
            .observe_request(endpoint, answered, elapsed.as_secs_f64());
        let err = match result {
            Ok((status, date_ms, body)) => {
                return Ok(Reply {
                    status,
                    body,
                    url: url.to_string(),
                    date_ms,
                    elapsed,
                });
            }
            Err(Failure::TooLarge { declared }) => OneViewError::ResponseTooLarge {
                endpoint: endpoint.as_str(),
                url: url.to_string(),
                limit: self.max_response_bytes,
                declared,
            },
            Err(Failure::Http(e)) => match tls_problem(&e) {
                Some(problem) => OneViewError::Tls {
                    endpoint: endpoint.as_str(),
                    url: url.to_string(),
                    problem,
                    detail: error_chain(&e),
                    ca_file: self.ca_file.clone(),
                },
                None => OneViewError::Transport {
                    endpoint: endpoint.as_str(),
                    url: url.to_string(),
                    timeout: e.is_timeout(),
                    detail: error_chain(&e),
                },
            },
        };
        if let Some(reason) = err.reason() {
            self.metrics.request_error(reason);
        }
        Err(err)
    }

    /// The body, read chunk by chunk up to `oneview.max_response_bytes` (a success) or
    /// [`ERROR_BODY_BYTES`] (an error answer, cut there: only its start is ever shown). Past
    /// the limit the response is dropped unread, which closes its connection, so a runaway or
    /// hostile answer costs at most the limit, whatever it announces or sends.
    async fn read_body(&self, resp: &mut reqwest::Response) -> Result<Bytes, Failure> {
        let success = resp.status().is_success();
        let cap = if success {
            self.max_response_bytes
        } else {
            ERROR_BODY_BYTES.min(self.max_response_bytes)
        };
        let declared = resp.content_length();
        if success && declared.is_some_and(|d| d > cap) {
            return Err(Failure::TooLarge { declared });
        }
        let cap = usize::try_from(cap).unwrap_or(usize::MAX);
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(Failure::Http)? {
            let room = cap - buf.len();
            if chunk.len() > room {
                if success {
                    return Err(Failure::TooLarge { declared });
                }
                buf.extend_from_slice(&chunk[..room]);
                break;
            }
            if buf.capacity() - buf.len() < chunk.len() {
                // Grow by doubling but never past the cap, so the buffer stays within it.
                let want = (buf.len() + chunk.len())
                    .max(buf.capacity().saturating_mul(2))
                    .min(cap);
                buf.reserve_exact(want - buf.len());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    }

    fn transient_delays() -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(2)
            .build()
    }

    /// A session to use now: the current one, or a new one when there is none or it is due
    /// for its proactive refresh.
    async fn session_for_request(&self) -> Result<Arc<Session>, OneViewError> {
        if let Some(s) = self.session.current()
            && s.since.elapsed() < self.session_refresh
        {
            return Ok(s);
        }
        self.login_single_flight(None).await
    }

    /// Makes sure a session exists (logs in when needed).
    pub async fn ensure_session(&self) -> Result<(), OneViewError> {
        self.session_for_request().await.map(|_| ())
    }

    /// Logs in unless another caller already replaced the session `stale` (single flight).
    async fn login_single_flight(&self, stale: Option<u64>) -> Result<Arc<Session>, OneViewError> {
        let mut gate = self.session.gate.lock().await;
        let mut old = None;
        if let Some(s) = self.session.current() {
            let newer = stale.is_none_or(|g| s.generation > g);
            let fresh = s.since.elapsed() < self.session_refresh;
            if newer && fresh {
                return Ok(s);
            }
            if newer && !fresh {
                // Due for its proactive refresh: log in anew, then release the old one.
                old = Some(s);
            }
        }
        if let Some(left) = gate.wait_left() {
            if let Some(old) = old {
                // A refresh that cannot happen yet: the current session most likely still
                // works (only a 401 would prove otherwise).
                return Ok(old);
            }
            return Err(OneViewError::LoginBackoff {
                retry_in: left,
                last: gate.last_error.clone().unwrap_or_default(),
            });
        }
        if let Some(g) = stale {
            self.session.drop_generation(g);
        }
        match self.login_now().await {
            Ok(id) => {
                gate.succeeded();
                self.metrics.login("success");
                let s = self.session.install(id);
                tracing::info!(url = %self.base, user = %self.username, generation = s.generation, "logged in to OneView");
                if let Some(old) = old {
                    tracing::debug!(
                        generation = old.generation,
                        "session refreshed; logging out the old one"
                    );
                    let _ = self.logout_session(&old).await;
                }
                Ok(s)
            }
            Err(e) => {
                self.metrics.login(if e.is_auth_failure() {
                    "auth_failed"
                } else {
                    "error"
                });
                let delay = gate.failed(e.to_string());
                tracing::warn!(url = %self.base, error = %e, retry_in = ?delay, "OneView login failed");
                match old {
                    Some(old) => {
                        tracing::warn!(
                            generation = old.generation,
                            "session refresh failed; keeping the current session until it is refused"
                        );
                        Ok(old)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// `POST /rest/login-sessions`, with 412 fallback and a few quick retries on transient
    /// failures. Returns the session id.
    async fn login_now(&self) -> Result<SecretString, OneViewError> {
        let password = self.password.current()?;
        self.login_attempts(password.expose_secret())
            .await
            .map_err(|e| e.redact(&[password.expose_secret()]))
    }

    async fn login_attempts(&self, password: &str) -> Result<SecretString, OneViewError> {
        let url = self.url("/rest/login-sessions")?;
        let mut delays = Self::transient_delays();
        let mut version_retried = false;
        loop {
            let version = self.negotiate_version().await?;
            let body = serde_json::to_vec(&LoginBody {
                user_name: &self.username,
                password,
                auth_login_domain: self.auth_login_domain.as_deref(),
                login_msg_ack: true,
            })
            .map_err(|e| OneViewError::Setup {
                key: "oneview.username",
                detail: format!("cannot encode the login request: {e}"),
            })?;
            let result = self
                .send_once(
                    Endpoint::Login,
                    Method::POST,
                    &url,
                    Some(version),
                    None,
                    Some(body),
                )
                .await;
            let err = match result {
                Ok(r) if (200..300).contains(&r.status) => {
                    let parsed: Option<LoginReply> = serde_json::from_slice(&r.body).ok();
                    return match parsed.and_then(|p| p.session_id).filter(|s| !s.is_empty()) {
                        Some(id) => Ok(SecretString::from(id)),
                        None => Err(OneViewError::BadResponse {
                            endpoint: "login",
                            url: r.url,
                            detail: "no sessionID in the login answer".to_owned(),
                        }),
                    };
                }
                Ok(r) if r.status == 412 && !version_retried => {
                    version_retried = true;
                    if self.fall_back_version(version).await? {
                        continue;
                    }
                    api_error("login", &r.url, r.status, &r.body)
                }
                Ok(r) => {
                    let e = api_error("login", &r.url, r.status, &r.body);
                    if let Some(code) = e.error_code().filter(|c| c.starts_with("AUTHN_")) {
                        let message = match &e {
                            OneViewError::Api { message, .. } => message.clone(),
                            _ => String::new(),
                        };
                        return Err(OneViewError::AuthFailed {
                            url: r.url,
                            code: code.to_owned(),
                            message,
                        });
                    }
                    if r.status == 401 || r.status == 403 {
                        return Err(OneViewError::AuthFailed {
                            url: r.url,
                            code: format!("HTTP {}", r.status),
                            message: e.to_string(),
                        });
                    }
                    e
                }
                Err(e) => e,
            };
            match (err.is_transient(), delays.next()) {
                (true, Some(d)) => tokio::time::sleep(d).await,
                _ => return Err(err),
            }
        }
    }

    /// An authenticated call: replays once after a 401 (with a new session) and once after a
    /// 412 (with the appliance's version); retries transient failures of GETs twice.
    pub async fn call(
        &self,
        endpoint: Endpoint,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, OneViewError> {
        let url = self.url(path)?;
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| OneViewError::Setup {
                key: "oneview",
                detail: format!("cannot encode the request body: {e}"),
            })?),
            None => None,
        };
        let idempotent = method == Method::GET;
        let mut delays = Self::transient_delays();
        let mut replayed_401 = false;
        let mut version_retried = false;
        loop {
            let version = self.negotiate_version().await?;
            let session = self.session_for_request().await?;
            let result = self
                .send_once(
                    endpoint,
                    method.clone(),
                    &url,
                    Some(version),
                    Some(&session),
                    body.clone(),
                )
                .await;
            let err = match result {
                Ok(r) if (200..300).contains(&r.status) => return Ok(r),
                Ok(r) if r.status == 401 && !replayed_401 => {
                    replayed_401 = true;
                    tracing::info!(url = %r.url, generation = session.generation, "OneView answered 401; logging in again and replaying once");
                    self.login_single_flight(Some(session.generation)).await?;
                    continue;
                }
                Ok(r) if r.status == 412 && !version_retried => {
                    version_retried = true;
                    if self.fall_back_version(version).await? {
                        continue;
                    }
                    api_error(endpoint.as_str(), &r.url, r.status, &r.body)
                }
                Ok(r) => api_error(endpoint.as_str(), &r.url, r.status, &r.body),
                Err(e) => e,
            };
            let err = err.redact(&[session.id.expose_secret()]);
            match (idempotent && err.is_transient(), delays.next()) {
                (true, Some(d)) => {
                    tracing::debug!(error = %err, retry_in = ?d, "transient OneView failure; retrying");
                    tokio::time::sleep(d).await;
                }
                _ => return Err(self.scrub(err)),
            }
        }
    }

    /// `GET` of a collection page (`/rest/alerts?...` or a `nextPageUri`).
    pub async fn get_page(&self, path: &str) -> Result<Reply, OneViewError> {
        self.get_collection_page(Endpoint::Alerts, path).await
    }

    /// `GET` of a page of another collection (`/rest/tasks?...`), counted under `endpoint`.
    pub async fn get_collection_page(
        &self,
        endpoint: Endpoint,
        path: &str,
    ) -> Result<Reply, OneViewError> {
        self.call(endpoint, Method::GET, path, None).await
    }

    /// `GET /rest/alerts/{id}`.
    pub async fn get_alert(&self, uri: &str) -> Result<Alert, OneViewError> {
        let r = self.call(Endpoint::Alert, Method::GET, uri, None).await?;
        parse_alert(&r).map_err(|e| self.scrub(e))
    }

    /// `PUT /rest/alerts/{id}`: clear, add a note, assign. Returns the updated alert when the
    /// appliance sends it back (it answers with an empty body when nothing changed).
    pub async fn update_alert(
        &self,
        uri: &str,
        update: &AlertUpdate,
    ) -> Result<Option<Alert>, OneViewError> {
        let body = serde_json::to_value(update).map_err(|e| OneViewError::Setup {
            key: "oneview",
            detail: format!("cannot encode the alert update: {e}"),
        })?;
        let r = self
            .call(Endpoint::Alert, Method::PUT, uri, Some(&body))
            .await?;
        if r.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_alert(&r).map(Some).map_err(|e| self.scrub(e))
    }

    async fn logout_session(&self, s: &Session) -> Result<(), OneViewError> {
        let url = self.url("/rest/login-sessions")?;
        let version = self.api_version();
        let r = self
            .send_once(
                Endpoint::Logout,
                Method::DELETE,
                &url,
                version,
                Some(s),
                None,
            )
            .await?;
        if (200..300).contains(&r.status) {
            Ok(())
        } else {
            Err(api_error("logout", &r.url, r.status, &r.body).redact(&[s.id.expose_secret()]))
        }
    }

    /// `DELETE /rest/login-sessions`: appliances cap sessions per client, so the bridge frees
    /// its own on shutdown. A no-op when not logged in.
    pub async fn logout(&self) -> Result<(), OneViewError> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        let r = self.logout_session(&s).await;
        match &r {
            Ok(()) => tracing::info!(url = %self.base, "logged out of OneView"),
            Err(e) => tracing::warn!(url = %self.base, error = %e, "OneView logout failed"),
        }
        r
    }
}

fn parse_alert(r: &Reply) -> Result<Alert, OneViewError> {
    match serde_json::from_slice::<Alert>(&r.body) {
        Ok(a) if !a.uri.is_empty() => Ok(a),
        Ok(_) => Err(OneViewError::BadResponse {
            endpoint: "alert",
            url: r.url.clone(),
            detail: "the alert has no uri".to_owned(),
        }),
        Err(e) => Err(OneViewError::BadResponse {
            endpoint: "alert",
            url: r.url.clone(),
            detail: format!("not an alert: {e}; {}", snippet(&r.body)),
        }),
    }
}

/// Why an exchange produced no usable answer.
enum Failure {
    Http(reqwest::Error),
    /// The body passed the limit; `declared` is its `Content-Length`, if any.
    TooLarge {
        declared: Option<u64>,
    },
}

/// `reqwest::Error` plus its sources on one line ("error sending request: connection refused").
fn error_chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
