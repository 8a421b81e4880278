//! A PagerDuty Events API v2 simulator: `POST /v2/enqueue` with PagerDuty's validation and
//! incident model, fault injection, and an inspection/control API under `/sim/`.
//!
//! Semantics (from PagerDuty's docs and OpenAPI file):
//! - 202 `{"status":"success","message":"Event processed","dedup_key":...}` for a valid event;
//!   400 `{"status":"invalid event","message":"Event object is invalid","errors":[...]}` for an
//!   invalid one (32-character `routing_key`, `event_action` enum, `payload` with `summary` of at
//!   most 1024 characters, `source` and `severity` enum for triggers, `dedup_key` of at most 255
//!   characters and required unless triggering, body under 512,000 bytes); 400
//!   `Unrecognized object` for a body that is not a JSON object.
//! - A trigger on a key with an open incident joins it; a trigger after a resolve opens a new
//!   incident; acknowledge/resolve on a key without an open incident is answered 202 and
//!   dropped.
//! - Faults ([`Faults`]): latency, a rate of 429/5xx answers (429s with an optional
//!   `Retry-After`), a per-routing-key rate limit (PagerDuty's is about 120/min), a full outage
//!   (answer a status, hang, or drop the connection of every event; the control API keeps
//!   working), and 400s for chosen dedup keys.
//!
//! - `POST /v2/change/enqueue` takes Change Events (OpenAPI `createChangeEvent`): 202
//!   `{"status":"success","message":"Event processed"}`, or 400 with `errors` for a body
//!   without a 32-character `routing_key`, a `payload` object, a `payload.summary` of 1 to
//!   1024 characters, a `timestamp` that is a date-time, an object `custom_details`, or
//!   `links[].href`. The same faults apply (the rate limit counts both endpoints per routing
//!   key, as PagerDuty's does); accepted change events are kept apart from alert events
//!   ([`SimHandle::changes`], `GET /sim/changes`), they open no incident.
//!
//! Control API: `GET /sim/incidents`, `GET /sim/events`, `GET /sim/changes`, `GET /sim/counters`,
//! `GET|PUT /sim/faults`, `POST /sim/reset`. The same operations exist in-process on
//! [`SimHandle`]. Only the simulator stores routing keys (they are fake); it never logs them.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Bodies kept in the event log: older entries keep their fields but drop the body, so a
/// benchmark's 100,000 events do not hold 100,000 JSON documents.
pub const BODIES_KEPT: usize = 10_000;
/// PagerDuty's body limit.
pub const MAX_BODY_BYTES: usize = 512_000;
const SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];

/// How a full outage looks from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Outage {
    /// Every request is answered with this status (say 503).
    Status { code: u16 },
    /// Requests are never answered (the client times out).
    Hang,
    /// Connections are closed at once, open keep-alive ones included.
    Drop,
}

/// Injected faults. All off by default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every answer of `/v2/enqueue`, in milliseconds.
    pub latency_ms: u64,
    /// Fraction (0..=1) of requests answered with one of `error_statuses`.
    pub error_rate: f64,
    /// Statuses used by `error_rate`, picked at random.
    pub error_statuses: Vec<u16>,
    /// `Retry-After` seconds sent with 429s (injected or rate-limited).
    pub retry_after_secs: Option<u64>,
    /// Per-routing-key limit over a sliding minute; above it: 429.
    pub rate_limit_per_minute: Option<u32>,
    pub outage: Option<Outage>,
    /// Events whose dedup_key contains this text get a 400.
    pub reject_dedup_key_containing: Option<String>,
    /// Change events whose `payload.summary` contains this text get a 400.
    pub reject_change_summary_containing: Option<String>,
    /// Seed of the random choices, for reproducible runs.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            error_rate: 0.0,
            error_statuses: vec![429, 500, 502, 503],
            retry_after_secs: None,
            rate_limit_per_minute: None,
            outage: None,
            reject_dedup_key_containing: None,
            reject_change_summary_containing: None,
            seed: 42,
        }
    }
}

/// Incident status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    Triggered,
    Acknowledged,
    Resolved,
}

/// One incident.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub routing_key: String,
    pub dedup_key: String,
    pub status: IncidentStatus,
    /// Summary and severity of the latest trigger.
    pub summary: String,
    pub severity: String,
    /// Triggers that opened or joined this incident.
    pub triggers: u32,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// One request to `/v2/enqueue`, as received.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Order of arrival, from 0.
    pub seq: u64,
    pub received_at: DateTime<Utc>,
    /// Milliseconds since the simulator started (monotonic).
    pub received_ms: u64,
    /// The same in microseconds, for latency benchmarks ([`SimHandle::started`] is the origin).
    #[serde(default)]
    pub received_us: u64,
    /// The status answered.
    pub status: u16,
    pub routing_key: Option<String>,
    pub event_action: Option<String>,
    pub dedup_key: Option<String>,
    pub severity: Option<String>,
    pub summary: Option<String>,
    /// The incident the event opened, joined or resolved.
    pub incident: Option<u64>,
    /// The whole body, when it was JSON (only for the last [`BODIES_KEPT`] events).
    pub body: Option<Arc<Value>>,
    /// The query string of the request URL: tests give each sender its own events URL
    /// (`/v2/enqueue?from=a`) to tell which process sent what.
    #[serde(default)]
    pub source: Option<String>,
}

/// Request counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub requests: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub injected_errors: u64,
    pub rate_limited: u64,
    pub outage: u64,
    pub dropped_connections: u64,
    pub incidents_opened: u64,
    pub incidents_resolved: u64,
    /// Change events answered 202 (`/v2/change/enqueue`).
    #[serde(default)]
    pub changes_accepted: u64,
}

struct Inner {
    faults: Faults,
    rng: StdRng,
    incidents: Vec<Incident>,
    /// (routing key, dedup key) -> index in `incidents` of the open incident.
    open: HashMap<(String, String), usize>,
    events: Vec<LoggedEvent>,
    /// Every request to `/v2/change/enqueue`, whatever the answer.
    changes: Vec<LoggedEvent>,
    counters: Counters,
    windows: HashMap<String, VecDeque<Instant>>,
}

impl Inner {
    fn new(faults: Faults) -> Self {
        Self {
            rng: StdRng::seed_from_u64(faults.seed),
            faults,
            incidents: Vec::new(),
            open: HashMap::new(),
            events: Vec::new(),
            changes: Vec::new(),
            counters: Counters::default(),
            windows: HashMap::new(),
        }
    }
}

struct Sim {
    inner: Mutex<Inner>,
    started: Instant,
}

impl Sim {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is plain data; a panicking handler cannot leave it half-written in a way
        // that matters to a simulator.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_faults(&self, f: Faults) {
        let mut g = self.lock();
        if g.faults.seed != f.seed {
            g.rng = StdRng::seed_from_u64(f.seed);
        }
        g.faults = f;
    }
}

/// A running simulator. Dropping the handle does not stop it; call [`SimHandle::shutdown`].
#[derive(Clone)]
pub struct SimHandle {
    sim: Arc<Sim>,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle")
            .field("addr", &self.addr)
            .finish()
    }
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// When the simulator started: the origin of [`LoggedEvent::received_ms`] and `received_us`.
    pub fn started(&self) -> std::time::Instant {
        self.sim.started.into_std()
    }

    /// `http://{addr}/v2/enqueue`, for `pagerduty.events_url`.
    pub fn events_url(&self) -> String {
        format!("http://{}/v2/enqueue", self.addr)
    }

    pub fn incidents(&self) -> Vec<Incident> {
        self.sim.lock().incidents.clone()
    }

    pub fn events(&self) -> Vec<LoggedEvent> {
        self.sim.lock().events.clone()
    }

    /// Events PagerDuty accepted (202), in order of arrival.
    pub fn accepted(&self) -> Vec<LoggedEvent> {
        self.sim
            .lock()
            .events
            .iter()
            .filter(|e| e.status == 202)
            .cloned()
            .collect()
    }

    /// Every change event request (`/v2/change/enqueue`), in arrival order, with its answer.
    pub fn changes(&self) -> Vec<LoggedEvent> {
        self.sim.lock().changes.clone()
    }

    /// The change events answered 202.
    pub fn accepted_changes(&self) -> Vec<LoggedEvent> {
        self.sim
            .lock()
            .changes
            .iter()
            .filter(|e| e.status == 202)
            .cloned()
            .collect()
    }

    /// The Change Events URL.
    pub fn change_url(&self) -> String {
        format!("http://{}/v2/change/enqueue", self.addr)
    }

    pub fn counters(&self) -> Counters {
        self.sim.lock().counters.clone()
    }

    pub fn faults(&self) -> Faults {
        self.sim.lock().faults.clone()
    }

    pub fn set_faults(&self, f: Faults) {
        self.sim.set_faults(f);
    }

    /// Acknowledges the open incident of a key, as a responder would.
    pub fn acknowledge(&self, routing_key: &str, dedup_key: &str) -> bool {
        let mut g = self.sim.lock();
        match g.open.get(&(routing_key.to_owned(), dedup_key.to_owned())) {
            Some(&i) => {
                g.incidents[i].status = IncidentStatus::Acknowledged;
                true
            }
            None => false,
        }
    }

    /// Forgets incidents, events and counters, and clears the faults.
    pub fn reset(&self) {
        *self.sim.lock() = Inner::new(Faults::default());
    }

    /// Waits (polling every 5 ms) until `pred` holds or `timeout` passes; returns whether it held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&SimHandle) -> bool,
    ) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if pred(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

/// Starts the simulator on `listen` (port 0 picks a free port).
pub async fn start(listen: SocketAddr, faults: Faults) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim {
        inner: Mutex::new(Inner::new(faults)),
        started: Instant::now(),
    });
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, sim.clone(), stop.clone()));
    Ok(SimHandle { sim, addr, stop })
}

fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v2/enqueue", post(enqueue))
        .route("/v2/change/enqueue", post(change_enqueue))
        .route("/sim/changes", get(list_changes))
        .route("/sim/incidents", get(list_incidents))
        .route("/sim/events", get(list_events))
        .route("/sim/counters", get(counters))
        .route(
            "/sim/faults",
            get(get_faults).put(put_faults).post(put_faults),
        )
        .route("/sim/reset", post(reset))
        .layer(DefaultBodyLimit::max(4 * MAX_BODY_BYTES))
        .with_state(sim)
}

/// Lets a request handler close the connection it arrived on (outage mode `drop`).
#[derive(Clone)]
struct ConnKill(CancellationToken);

async fn serve(listener: TcpListener, sim: Arc<Sim>, stop: CancellationToken) {
    let app = router(sim);
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "PagerDuty simulator: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        // Without it, delayed ACKs cap each connection at about 25 answers a second.
        let _ = stream.set_nodelay(true);
        let kill = CancellationToken::new();
        let app = app.clone();
        let k = kill.clone();
        let svc =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnKill(k.clone()));
                app.clone().oneshot(req)
            });
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            // Dropping the connection future closes the socket without an answer.
            tokio::select! {
                _ = conn => {}
                _ = kill.cancelled() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Runs the simulator until `shutdown` fires (the `simulate pagerduty` command).
pub async fn run(
    listen: SocketAddr,
    faults: Faults,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let h = start(listen, faults).await?;
    tracing::info!(addr = %h.addr(), events_url = %h.events_url(), "PagerDuty simulator listening");
    shutdown.cancelled().await;
    h.shutdown();
    Ok(())
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn invalid(errors: Vec<String>) -> Response {
    answer(
        StatusCode::BAD_REQUEST,
        json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
    )
}

/// Validates an event body the way PagerDuty documents it.
pub fn validate(v: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(o) = v.as_object() else {
        return vec!["Event object must be a JSON object".to_owned()];
    };
    match o.get("routing_key").and_then(Value::as_str) {
        None => errors.push("'routing_key' is missing or blank".to_owned()),
        Some(k) if k.chars().count() != 32 => {
            errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".to_owned())
        }
        Some(_) => {}
    }
    let action = o.get("event_action").and_then(Value::as_str);
    match action {
        Some("trigger" | "acknowledge" | "resolve") => {}
        Some(_) => errors.push(
            "'event_action' is invalid (must be one of: trigger, acknowledge, resolve)".to_owned(),
        ),
        None => errors.push("'event_action' is missing or blank".to_owned()),
    }
    match o.get("dedup_key") {
        None | Some(Value::Null) => {
            if matches!(action, Some("acknowledge" | "resolve")) {
                errors.push("'dedup_key' is missing or blank".to_owned());
            }
        }
        Some(Value::String(k)) => {
            if k.chars().count() > 255 {
                errors.push("'dedup_key' is too long (maximum is 255 characters)".to_owned());
            }
            if k.is_empty() && matches!(action, Some("acknowledge" | "resolve")) {
                errors.push("'dedup_key' is missing or blank".to_owned());
            }
        }
        Some(_) => errors.push("'dedup_key' must be a string".to_owned()),
    }
    let payload = o.get("payload");
    if action == Some("trigger") {
        match payload.and_then(Value::as_object) {
            None => errors.push("'payload' is missing or not an object".to_owned()),
            Some(p) => {
                match p.get("summary").and_then(Value::as_str) {
                    None | Some("") => {
                        errors.push("'payload.summary' is missing or blank".to_owned())
                    }
                    Some(s) if s.chars().count() > 1024 => errors.push(
                        "'payload.summary' is too long (maximum is 1024 characters)".to_owned(),
                    ),
                    Some(_) => {}
                }
                match p.get("source").and_then(Value::as_str) {
                    None | Some("") => {
                        errors.push("'payload.source' is missing or blank".to_owned())
                    }
                    Some(_) => {}
                }
                match p.get("severity").and_then(Value::as_str) {
                    Some(s) if SEVERITIES.contains(&s) => {}
                    Some(_) => errors.push(
                        "'payload.severity' is invalid (must be one of: critical, error, warning, info)"
                            .to_owned(),
                    ),
                    None => errors.push("'payload.severity' is missing or blank".to_owned()),
                }
                if let Some(cd) = p.get("custom_details")
                    && !cd.is_object()
                    && !cd.is_null()
                    && !cd.is_string()
                {
                    errors.push("'payload.custom_details' must be an object".to_owned());
                }
            }
        }
    }
    if let Some(links) = o.get("links") {
        match links.as_array() {
            Some(ls) => {
                if ls
                    .iter()
                    .any(|l| l.get("href").and_then(Value::as_str).is_none())
                {
                    errors.push("'links[].href' is missing".to_owned());
                }
            }
            None => errors.push("'links' must be an array".to_owned()),
        }
    }
    errors
}

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Alert,
    Change,
}

/// Validates a Change Event body the way PagerDuty's OpenAPI file (`createChangeEvent`,
/// `ChangeEventPayload`) and its documented limits describe it.
pub fn validate_change(v: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(o) = v.as_object() else {
        return vec!["Event object must be a JSON object".to_owned()];
    };
    match o.get("routing_key").and_then(Value::as_str) {
        None => errors.push("'routing_key' is missing or blank".to_owned()),
        Some(k) if k.chars().count() != 32 => {
            errors.push("Length of 'routing_key' is incorrect (should be 32 characters)".to_owned())
        }
        Some(_) => {}
    }
    match o.get("payload").and_then(Value::as_object) {
        None => errors.push("'payload' is missing or not an object".to_owned()),
        Some(p) => {
            match p.get("summary").and_then(Value::as_str) {
                None | Some("") => errors.push("'payload.summary' is missing or blank".to_owned()),
                Some(s) if s.chars().count() > 1024 => errors
                    .push("'payload.summary' is too long (maximum is 1024 characters)".to_owned()),
                Some(_) => {}
            }
            if let Some(t) = p.get("timestamp") {
                let ok = t.as_str().is_some_and(|t| {
                    DateTime::parse_from_rfc3339(t).is_ok()
                        || DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%z").is_ok()
                });
                if !ok {
                    errors.push("'payload.timestamp' is not a valid date-time".to_owned());
                }
            }
            if p.get("source").is_some_and(|s| !s.is_string()) {
                errors.push("'payload.source' must be a string".to_owned());
            }
            if p.get("custom_details").is_some_and(|c| !c.is_object()) {
                errors.push("'payload.custom_details' must be an object".to_owned());
            }
        }
    }
    if let Some(links) = o.get("links") {
        match links.as_array() {
            Some(ls)
                if ls
                    .iter()
                    .all(|l| l.get("href").and_then(Value::as_str).is_some()) => {}
            Some(_) => errors.push("'links[].href' is missing".to_owned()),
            None => errors.push("'links' must be an array".to_owned()),
        }
    }
    errors
}

async fn list_changes(State(sim): State<Arc<Sim>>) -> Json<Vec<LoggedEvent>> {
    Json(sim.lock().changes.clone())
}

async fn enqueue(
    State(sim): State<Arc<Sim>>,
    conn: Option<Extension<ConnKill>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    receive(Kind::Alert, sim, conn, uri, body).await
}

async fn change_enqueue(
    State(sim): State<Arc<Sim>>,
    conn: Option<Extension<ConnKill>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    receive(Kind::Change, sim, conn, uri, body).await
}

async fn receive(
    kind: Kind,
    sim: Arc<Sim>,
    conn: Option<Extension<ConnKill>>,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let received = sim.started.elapsed();
    let received_ms = u64::try_from(received.as_millis()).unwrap_or(u64::MAX);
    let received_us = u64::try_from(received.as_micros()).unwrap_or(u64::MAX);
    let (faults, roll, pick) = {
        let mut g = sim.lock();
        g.counters.requests += 1;
        let roll: f64 = g.rng.random();
        let pick: usize = g.rng.random_range(0..usize::MAX);
        (g.faults.clone(), roll, pick)
    };
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    // Parsed once and shared with the event log (no deep copy per request).
    let parsed: Option<Arc<Value>> = serde_json::from_slice(&body).ok().map(Arc::new);
    let field = |k: &str| {
        parsed
            .as_deref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let payload_field = |k: &str| {
        parsed
            .as_deref()
            .and_then(|v| v.get("payload"))
            .and_then(|p| p.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut logged = LoggedEvent {
        seq: 0,
        received_at: Utc::now(),
        received_ms,
        received_us,
        status: 0,
        routing_key: field("routing_key"),
        event_action: field("event_action"),
        dedup_key: field("dedup_key"),
        severity: payload_field("severity"),
        summary: payload_field("summary"),
        incident: None,
        body: parsed.clone(),
        source: uri.query().map(str::to_owned),
    };

    // Faults first: a real outage or throttle does not look at the body.
    match faults.outage {
        Some(Outage::Status { code }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            sim.lock().counters.outage += 1;
            return finish(&sim, kind, logged, status.as_u16(), || {
                answer(
                    status,
                    json!({"status": "unavailable", "message": "Simulated outage"}),
                )
            });
        }
        Some(Outage::Drop) if conn.is_some() => {
            {
                let mut g = sim.lock();
                g.counters.outage += 1;
                g.counters.dropped_connections += 1;
            }
            if let Some(Extension(k)) = conn {
                k.0.cancel();
            }
            // The connection task drops this request with its connection.
            return std::future::pending().await;
        }
        Some(Outage::Hang) | Some(Outage::Drop) => {
            sim.lock().counters.outage += 1;
            // Answer only once the outage is over.
            while sim.lock().faults.outage.is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        None => {}
    }
    if faults.error_rate > 0.0 && roll < faults.error_rate && !faults.error_statuses.is_empty() {
        let code = faults.error_statuses[pick % faults.error_statuses.len()];
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        sim.lock().counters.injected_errors += 1;
        return finish(&sim, kind, logged, status.as_u16(), || {
            let mut r = answer(
                status,
                json!({"status": "error", "message": "Simulated failure"}),
            );
            if code == 429 {
                add_retry_after(&mut r, faults.retry_after_secs);
            }
            r
        });
    }
    if let (Some(limit), Some(rk)) = (faults.rate_limit_per_minute, logged.routing_key.as_ref()) {
        let now = Instant::now();
        let mut g = sim.lock();
        let w = g.windows.entry(rk.clone()).or_default();
        while w
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            w.pop_front();
        }
        if w.len() >= limit as usize {
            g.counters.rate_limited += 1;
            drop(g);
            return finish(&sim, kind, logged, 429, || {
                let mut r = answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly.  Please retry later."}),
                );
                add_retry_after(&mut r, faults.retry_after_secs);
                r
            });
        }
        w.push_back(now);
    }

    if body.len() >= MAX_BODY_BYTES {
        sim.lock().counters.rejected += 1;
        let n = body.len();
        return finish(&sim, kind, logged, 400, || {
            invalid(vec![format!(
                "Request body is too large ({n} bytes; must be under {MAX_BODY_BYTES})"
            )])
        });
    }
    let Some(v) = parsed else {
        sim.lock().counters.rejected += 1;
        return finish(&sim, kind, logged, 400, || {
            answer(
                StatusCode::BAD_REQUEST,
                json!({"status": "Unrecognized object", "message": "Event object format is unrecognized", "errors": ["JSON parse error"]}),
            )
        });
    };
    if kind == Kind::Change {
        let mut errors = validate_change(&v);
        if let (Some(pat), Some(summary)) = (
            faults.reject_change_summary_containing.as_deref(),
            logged.summary.as_deref(),
        ) && summary.contains(pat)
        {
            errors.push("'payload.summary' rejected by the simulator's fault injection".to_owned());
        }
        let mut g = sim.lock();
        if !errors.is_empty() {
            g.counters.rejected += 1;
            drop(g);
            return finish(&sim, kind, logged, 400, || invalid(errors));
        }
        g.counters.changes_accepted += 1;
        drop(g);
        return finish(&sim, kind, logged, 202, || {
            answer(
                StatusCode::ACCEPTED,
                json!({"status": "success", "message": "Event processed"}),
            )
        });
    }
    let mut errors = validate(&v);
    if let (Some(pat), Some(k)) = (
        faults.reject_dedup_key_containing.as_deref(),
        logged.dedup_key.as_deref(),
    ) && k.contains(pat)
    {
        errors.push("'dedup_key' rejected by the simulator's fault injection".to_owned());
    }
    if !errors.is_empty() {
        sim.lock().counters.rejected += 1;
        return finish(&sim, kind, logged, 400, || invalid(errors));
    }

    // Accepted: apply the incident model.
    let rk = logged.routing_key.clone().unwrap_or_default();
    let action = logged.event_action.clone().unwrap_or_default();
    let dedup_key = logged
        .dedup_key
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    logged.dedup_key = Some(dedup_key.clone());
    {
        let mut g = sim.lock();
        g.counters.accepted += 1;
        let k = (rk.clone(), dedup_key.clone());
        match action.as_str() {
            "trigger" => {
                let summary = logged.summary.clone().unwrap_or_default();
                let severity = logged.severity.clone().unwrap_or_default();
                if let Some(&i) = g.open.get(&k) {
                    let inc = &mut g.incidents[i];
                    inc.triggers += 1;
                    inc.summary = summary;
                    inc.severity = severity;
                    logged.incident = Some(inc.id);
                } else {
                    let id = g.incidents.len() as u64 + 1;
                    g.incidents.push(Incident {
                        id,
                        routing_key: rk,
                        dedup_key: dedup_key.clone(),
                        status: IncidentStatus::Triggered,
                        summary,
                        severity,
                        triggers: 1,
                        created_at: Utc::now(),
                        resolved_at: None,
                    });
                    let idx = g.incidents.len() - 1;
                    g.open.insert(k, idx);
                    g.counters.incidents_opened += 1;
                    logged.incident = Some(id);
                }
            }
            "acknowledge" => {
                if let Some(&i) = g.open.get(&k) {
                    g.incidents[i].status = IncidentStatus::Acknowledged;
                    logged.incident = Some(g.incidents[i].id);
                }
            }
            _ => {
                if let Some(i) = g.open.remove(&k) {
                    g.incidents[i].status = IncidentStatus::Resolved;
                    g.incidents[i].resolved_at = Some(Utc::now());
                    g.counters.incidents_resolved += 1;
                    logged.incident = Some(g.incidents[i].id);
                }
            }
        }
    }
    finish(&sim, kind, logged, 202, || {
        answer(
            StatusCode::ACCEPTED,
            json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
        )
    })
}

fn add_retry_after(r: &mut Response, secs: Option<u64>) {
    if let Some(s) = secs
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

fn finish(
    sim: &Sim,
    kind: Kind,
    mut logged: LoggedEvent,
    status: u16,
    respond: impl FnOnce() -> Response,
) -> Response {
    logged.status = status;
    let mut g = sim.lock();
    let log = match kind {
        Kind::Alert => &mut g.events,
        Kind::Change => &mut g.changes,
    };
    logged.seq = log.len() as u64;
    log.push(logged);
    if let Some(i) = log.len().checked_sub(BODIES_KEPT + 1) {
        log[i].body = None;
    }
    drop(g);
    respond()
}

async fn list_incidents(State(sim): State<Arc<Sim>>) -> Json<Vec<Incident>> {
    Json(sim.lock().incidents.clone())
}

async fn list_events(State(sim): State<Arc<Sim>>) -> Json<Vec<LoggedEvent>> {
    Json(sim.lock().events.clone())
}

async fn counters(State(sim): State<Arc<Sim>>) -> Json<Counters> {
    Json(sim.lock().counters.clone())
}

async fn get_faults(State(sim): State<Arc<Sim>>) -> Json<Faults> {
    Json(sim.lock().faults.clone())
}

async fn put_faults(
    State(sim): State<Arc<Sim>>,
    body: Bytes,
) -> Result<Json<Faults>, (StatusCode, Json<Value>)> {
    let f: Faults = serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("invalid faults: {e}")})),
        )
    })?;
    if !(0.0..=1.0).contains(&f.error_rate) {
        return Err((
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "error_rate must be between 0 and 1"})),
        ));
    }
    sim.set_faults(f.clone());
    Ok(Json(f))
}

async fn reset(State(sim): State<Arc<Sim>>) -> Result<StatusCode, Infallible> {
    *sim.lock() = Inner::new(Faults::default());
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_matches_the_docs() {
        let ok = json!({"routing_key": "a".repeat(32), "event_action": "trigger",
            "payload": {"summary": "s", "source": "x", "severity": "critical"}});
        assert!(validate(&ok).is_empty());
        let bad = json!({"routing_key": "short", "event_action": "explode",
            "dedup_key": "k".repeat(256)});
        let e = validate(&bad);
        assert_eq!(e.len(), 3, "{e:?}");
        let resolve_without_key = json!({"routing_key": "a".repeat(32), "event_action": "resolve"});
        assert_eq!(validate(&resolve_without_key).len(), 1);
        let long_summary = json!({"routing_key": "a".repeat(32), "event_action": "trigger",
            "payload": {"summary": "é".repeat(1025), "source": "x", "severity": "fatal"}});
        assert_eq!(validate(&long_summary).len(), 2);
    }
}
