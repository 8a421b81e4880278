//! The public API of the web role (`/api/v1/...`) and the status page route, with their
//! guards: bearer tokens, per-client-IP rate limiting, body limits, content types, timeouts.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use moka::sync::Cache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor;

use crate::config::Config;
use crate::http::ApiError;
use crate::model::Alert;
use crate::secret::Secret;
use crate::web::auth::ApiTokens;
use crate::web::control::{AlertQuery, Control, WritebackOutcome};
use crate::web::signature::SignatureError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

/// Routes under a rate limit (the webhook only with `web.webhook_rate_limit_per_second`); the
/// metric's `route` label is one of these.
const API_ROUTES: &[&str] = &[
    "/api/v1/alerts",
    WEBHOOK_ROUTE,
    "/api/v1/deliveries/dead-letter",
    "/api/v1/deliveries/dead-letter/{key}/retry",
    "/api/v1/poll",
    "/api/v1/test-event",
    "/api/v1/silences",
    "/api/v1/silences/{id}",
];

const VERIFY_OUTCOMES: &[&str] = &["valid", "missing", "malformed", "mismatch", "no_secrets"];

/// The `bridge_web_writebacks` outcome of a verified delivery refused with 503 because the
/// write-back queue was full (no write-back was attempted; PagerDuty delivers it again).
pub const QUEUE_FULL: &str = "queue_full";

/// The `bridge_web_writebacks` outcome of a write-back acknowledged (202) but not done when
/// the replica stopped (`server.shutdown_timeout` ran out).
pub const DROPPED_AT_SHUTDOWN: &str = "dropped_at_shutdown";

/// The `bridge_web_*` metric families.
#[derive(Clone)]
pub struct WebMetrics {
    verifications: Family<OutcomeLabels, Counter>,
    writebacks: Family<OutcomeLabels, Counter>,
    rate_limited: Family<RouteLabels, Counter>,
    /// Verified deliveries waiting for a write-back slot.
    pub(crate) writeback_queue_depth: Gauge,
}

impl WebMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            verifications: Family::default(),
            writebacks: Family::default(),
            rate_limited: Family::default(),
            writeback_queue_depth: Gauge::default(),
        };
        for o in VERIFY_OUTCOMES {
            let _ = m.verifications.get_or_create(&OutcomeLabels { outcome: o });
        }
        for o in WritebackOutcome::ALL
            .iter()
            .map(|o| o.label())
            .chain([QUEUE_FULL, DROPPED_AT_SHUTDOWN])
        {
            let _ = m.writebacks.get_or_create(&OutcomeLabels { outcome: o });
        }
        for r in API_ROUTES {
            let _ = m.rate_limited.get_or_create(&RouteLabels { route: r });
        }
        registry.register(
            "bridge_web_webhook_verifications",
            "PagerDuty webhook deliveries by signature verification outcome",
            m.verifications.clone(),
        );
        registry.register(
            "bridge_web_writebacks",
            "PagerDuty incident changes written back to OneView, by outcome (queue_full: refused with 503 before any write-back, PagerDuty delivers again)",
            m.writebacks.clone(),
        );
        registry.register(
            "bridge_web_writeback_queue_depth",
            "Verified PagerDuty webhook deliveries waiting for a write-back slot (web.writeback_queue bounds it)",
            m.writeback_queue_depth.clone(),
        );
        registry.register(
            "bridge_web_rate_limited",
            "API requests refused with 429 by the per-client rate limit, by route",
            m.rate_limited.clone(),
        );
        m
    }

    pub(crate) fn verification(&self, outcome: Result<(), SignatureError>) {
        let o = match outcome {
            Ok(()) => "valid",
            Err(e) => e.label(),
        };
        self.verifications
            .get_or_create(&OutcomeLabels { outcome: o })
            .inc();
    }

    pub(crate) fn writeback(&self, o: WritebackOutcome) {
        self.writebacks
            .get_or_create(&OutcomeLabels { outcome: o.label() })
            .inc();
    }

    pub(crate) fn writeback_queue_full(&self) {
        self.writebacks
            .get_or_create(&OutcomeLabels {
                outcome: QUEUE_FULL,
            })
            .inc();
    }

    pub(crate) fn writebacks_dropped(&self, n: usize) {
        self.writebacks
            .get_or_create(&OutcomeLabels {
                outcome: DROPPED_AT_SHUTDOWN,
            })
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    fn rate_limited(&self, route: &str) {
        let route = API_ROUTES
            .iter()
            .copied()
            .find(|r| *r == route)
            .unwrap_or("other");
        self.rate_limited
            .get_or_create(&RouteLabels { route })
            .inc();
    }
}

/// State of the public routes.
#[derive(Clone)]
pub struct WebState {
    pub config: Arc<Config>,
    pub control: Control,
    pub tokens: ApiTokens,
    pub metrics: WebMetrics,
    pub webhook_secrets: Option<Arc<Secret>>,
    /// `X-Webhook-Id`s this replica already took (PagerDuty redelivers on timeouts).
    pub seen_webhooks: Cache<String, ()>,
    /// The queue of webhook write-backs ([`crate::web::webhook::dispatcher`]), bounded by
    /// `web.writeback_queue`.
    pub writebacks: tokio::sync::mpsc::Sender<crate::web::webhook::WritebackJob>,
}

impl WebState {
    /// Read access: open when `server.status_public`, else a token.
    pub fn check_read(&self, h: &HeaderMap) -> Result<(), ApiError> {
        if self.config.server.status_public {
            return Ok(());
        }
        self.tokens.check(h).map_err(ApiError::from)
    }

    pub fn check_write(&self, h: &HeaderMap) -> Result<(), ApiError> {
        self.tokens.check(h).map_err(ApiError::from)
    }
}

/// Refuses a body that is not JSON (415), and reads at most `limit` bytes (413).
pub async fn read_json_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime != "application/json" && !(mime.starts_with("application/") && mime.ends_with("+json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send the body as `Content-Type: application/json` (got `{}`)",
                if ct.is_empty() { "none" } else { ct }
            ),
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than the limit of {limit} bytes (server.api_body_limit / server.webhook_body_limit)"
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    // Either way the rest of the body stays unread on the connection, which therefore closes.
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large().closing());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large().closing())
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Validates one pushed item: an alert, or an SCMB message whose `resource` is one, with the
/// `appliance` it comes from (beside the alert's fields, or beside `resource`). Whether the
/// appliance is configured and the severity watched there is the poller's to say.
fn parse_item(v: &Value) -> Result<(Option<String>, Alert), String> {
    let (resource, deleted) = match v.get("resource") {
        Some(r) => (
            r,
            v.get("changeType").and_then(Value::as_str) == Some("Deleted"),
        ),
        None => (v, false),
    };
    if !resource.is_object() {
        return Err(
            "not a JSON object (send a OneView alert or an SCMB message with `resource`)"
                .to_owned(),
        );
    }
    let appliance = match v.get("appliance").or_else(|| resource.get("appliance")) {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => Some(a.clone()),
        Some(_) => return Err("`appliance` must be the name of a configured appliance".to_owned()),
    };
    let mut alert: Alert = serde_json::from_value(resource.clone())
        .map_err(|e| format!("not a OneView alert: {e}"))?;
    if !crate::model::is_canonical_alert_uri(&alert.uri) {
        return Err(format!(
            "`uri` must be the alert's canonical `/rest/alerts/{{id}}` (one id of letters, digits or `-`; got `{}`)",
            crate::pagerduty::event::truncate_chars(&alert.uri, 200)
        ));
    }
    if deleted {
        alert.alert_state = crate::model::AlertState::Cleared;
    }
    Ok((appliance, alert))
}

async fn push_alerts(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.check_write(&headers)?;
    let bytes = read_json_body(&headers, body, s.config.server.api_body_limit).await?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the body is not valid JSON: {e}")))?;
    let items = match v {
        Value::Array(items) => items,
        other => vec![other],
    };
    if items.is_empty() {
        return Err(bad_request("the array holds no alert".to_owned()));
    }
    // A body of a million bad items must not become a million error objects: the first
    // PUSH_ERRORS_SHOWN are listed, the rest counted.
    let mut errors = Vec::new();
    let mut error_count = 0usize;
    let mut alerts = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match parse_item(item) {
            Ok((appliance, alert)) => alerts.push(crate::web::control::PushedAlert {
                appliance,
                index,
                alert,
            }),
            Err(message) => {
                error_count += 1;
                if errors.len() < PUSH_ERRORS_SHOWN {
                    errors.push(json!({"index": index, "message": message}));
                }
            }
        }
    }
    drop(items);
    let outcome = if alerts.is_empty() {
        crate::web::control::PushOutcome::default()
    } else {
        s.control.push(alerts).await.map_err(ApiError::from)?
    };
    // The poller's refusals join the parse errors, in request order.
    for e in &outcome.errors {
        error_count += 1;
        if errors.len() < PUSH_ERRORS_SHOWN {
            errors.push(json!({"index": e.index, "message": e.message}));
        }
    }
    errors.sort_by_key(|e| e["index"].as_u64());
    let mut body = json!({
        "accepted": outcome.accepted,
        "errors": errors,
        "error_count": error_count,
    });
    if outcome.not_admitted > 0 {
        // What did not fit is the tail of the request: the caller sends it again.
        body["not_admitted"] = json!(outcome.not_admitted);
        body["error"] = json!("push_queue_full");
        body["message"] = json!(format!(
            "{} alert(s) accepted, {} not admitted because the push queue (web.push_queue) is full; send those (the last of the request) again after Retry-After",
            body["accepted"].as_array().map_or(0, Vec::len),
            outcome.not_admitted
        ));
        body["request_id"] = json!(crate::http::current_request_id());
        let mut r = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(PUSH_RETRY_AFTER_SECS),
        );
        return Ok(r);
    }
    let status = if body["accepted"].as_array().is_some_and(|a| !a.is_empty()) {
        StatusCode::ACCEPTED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((status, axum::Json(body)).into_response())
}

/// Per-item errors listed in a push's answer; beyond it they are only counted.
pub const PUSH_ERRORS_SHOWN: usize = 20;
/// `Retry-After` of a push refused because the push queue is full: the pipeline takes
/// thousands of changes a second, so a short pause is enough.
const PUSH_RETRY_AFTER_SECS: &str = "1";

async fn list_alerts(
    State(s): State<WebState>,
    headers: HeaderMap,
    Query(q): Query<AlertQuery>,
) -> Result<Response, ApiError> {
    s.check_read(&headers)?;
    Ok(axum::Json(s.control.alerts(&q).await.map_err(ApiError::from)?).into_response())
}

async fn dead_letters(State(s): State<WebState>, headers: HeaderMap) -> Result<Response, ApiError> {
    s.check_read(&headers)?;
    let list = s.control.dead_letters().await.map_err(ApiError::from)?;
    Ok(axum::Json(json!({"total": list.len(), "dead_letters": list})).into_response())
}

async fn retry_dead_letter(
    State(s): State<WebState>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    s.check_write(&headers)?;
    let v = s.control.retry(&key).await.map_err(ApiError::from)?;
    Ok((StatusCode::ACCEPTED, axum::Json(v)).into_response())
}

async fn poll(State(s): State<WebState>, headers: HeaderMap) -> Result<Response, ApiError> {
    s.check_write(&headers)?;
    let v = s.control.poll().await.map_err(ApiError::from)?;
    Ok((StatusCode::ACCEPTED, axum::Json(v)).into_response())
}

async fn test_event(State(s): State<WebState>, headers: HeaderMap) -> Result<Response, ApiError> {
    s.check_write(&headers)?;
    let v = s.control.test_event().await.map_err(ApiError::from)?;
    let ok = v
        .as_array()
        .is_some_and(|a| a.iter().all(|r| r["accepted"] == true));
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_GATEWAY
    };
    Ok((status, axum::Json(json!({"accepted": ok, "results": v}))).into_response())
}

async fn list_silences(
    State(s): State<WebState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    s.check_read(&headers)?;
    Ok(axum::Json(s.control.silences().await.map_err(ApiError::from)?).into_response())
}

async fn get_silence(
    State(s): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.check_read(&headers)?;
    let list = s.control.silences().await.map_err(ApiError::from)?;
    match list.silences.into_iter().find(|v| v.silence.id == id) {
        Some(v) => Ok(axum::Json(v).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no silence with id {id}; GET /api/v1/silences lists them"),
        )),
    }
}

/// `POST /api/v1/silences`: `{"matchers": {"resource_name": "SGH8*"}, "duration": "2h",
/// "created_by": "...", "comment": "..."}` (or `ends_at`, and optionally `starts_at`, RFC
/// 3339). 201 with the silence; 422 naming the field that is wrong.
async fn create_silence(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    s.check_write(&headers)?;
    let bytes = read_json_body(&headers, body, s.config.server.api_body_limit).await?;
    let v: Value = serde_json::from_slice(&bytes)
        .map_err(|e| bad_request(format!("the body is not valid JSON: {e}")))?;
    let req = parse_new_silence(v)?;
    let created = s
        .control
        .create_silence(req)
        .await
        .map_err(ApiError::from)?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// The request's shape, with a 422 naming the field that does not fit.
fn parse_new_silence(v: Value) -> Result<crate::pipeline::silence::NewSilence, ApiError> {
    use crate::web::control::INVALID_SILENCE;
    let unprocessable = |field: &str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, INVALID_SILENCE, message).field(field)
    };
    let Value::Object(obj) = &v else {
        return Err(unprocessable(
            "body",
            "the body must be a JSON object with matchers, duration or ends_at, created_by and comment".to_owned(),
        ));
    };
    const FIELDS: [&str; 6] = [
        "matchers",
        "starts_at",
        "ends_at",
        "duration",
        "created_by",
        "comment",
    ];
    for k in obj.keys() {
        if !FIELDS.contains(&k.as_str()) {
            return Err(unprocessable(
                k,
                format!("unknown field `{k}`; the fields are {}", FIELDS.join(", ")),
            ));
        }
    }
    if let Some(m) = obj.get("matchers") {
        let Value::Object(m) = m else {
            return Err(unprocessable(
                "matchers",
                "matchers must be an object of matcher name to value, e.g. {\"resource_name\": \"SGH8*\"}".to_owned(),
            ));
        };
        for (k, v) in m {
            if !v.is_string() {
                return Err(unprocessable(
                    &format!("matchers.{k}"),
                    format!("matcher `{k}` must be a string"),
                ));
            }
        }
    }
    for f in FIELDS.iter().skip(1) {
        match obj.get(*f) {
            None | Some(Value::Null | Value::String(_)) => {}
            Some(_) => {
                return Err(unprocessable(f, format!("{f} must be a string")));
            }
        }
    }
    // With the types checked above, only a time that is not RFC 3339 is left to fail.
    let field = ["starts_at", "ends_at"]
        .into_iter()
        .find(|f| {
            obj.get(*f)
                .and_then(Value::as_str)
                .is_some_and(|t| chrono::DateTime::parse_from_rfc3339(t).is_err())
        })
        .unwrap_or("body");
    serde_json::from_value(v.clone()).map_err(|e| {
        unprocessable(
            field,
            format!("{field}: {e} (times are RFC 3339, e.g. 2026-12-02T06:00:00Z)"),
        )
    })
}

async fn expire_silence(
    State(s): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<crate::web::control::ExpireQuery>,
) -> Result<Response, ApiError> {
    s.check_write(&headers)?;
    let v = s
        .control
        .expire_silence(&id, q.expired_by)
        .await
        .map_err(ApiError::from)?;
    Ok(axum::Json(v).into_response())
}

/// The client a request is counted against: the peer address, or, when the peer is a trusted
/// proxy, the right-most `X-Forwarded-For` hop that is not itself a trusted proxy.
#[derive(Clone)]
pub struct ClientIp {
    trusted: Arc<Vec<ipnet::IpNet>>,
}

impl ClientIp {
    pub fn new(trusted: Vec<ipnet::IpNet>) -> Self {
        Self {
            trusted: Arc::new(trusted),
        }
    }

    fn is_trusted(&self, ip: &IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    pub fn client<T>(&self, req: &axum::http::Request<T>) -> Option<IpAddr> {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip())?;
        if !self.is_trusted(&peer) {
            return Some(peer);
        }
        let hops: Vec<IpAddr> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .collect();
        Some(
            hops.iter()
                .rev()
                .find(|ip| !self.is_trusted(ip))
                .copied()
                .unwrap_or(peer),
        )
    }
}

impl KeyExtractor for ClientIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<IpAddr, GovernorError> {
        self.client(req).ok_or(GovernorError::UnableToExtractKey)
    }
}

/// Marks a 429 answer of the limiter, so that the metrics layer tells it from a handler's.
#[derive(Clone)]
struct Throttled;

/// The 429 (or error) answer of a limiter whose settings are the config keys `keys`.
fn governor_error(e: GovernorError, keys: &str) -> Response {
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let wait = wait_time.max(1);
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("too many requests from this client; retry after {wait} s ({keys})"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r.extensions_mut().insert(Throttled);
            r
        }
        GovernorError::UnableToExtractKey => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "client_unknown",
            "cannot tell the client's address for rate limiting",
        )
        .into_response(),
        GovernorError::Other { code, msg, .. } => ApiError::new(
            code,
            "rate_limit_error",
            msg.unwrap_or_else(|| "rate limiting failed".to_owned()),
        )
        .into_response(),
    }
}

async fn count_throttled(State(m): State<WebMetrics>, req: Request, next: Next) -> Response {
    // A cheap clone (shared string): only a throttled answer needs the route.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    if resp.extensions().get::<Throttled>().is_some() {
        let route = route.as_ref().map_or("", MatchedPath::as_str);
        m.rate_limited(route);
        tracing::info!(route, "request rate-limited");
    }
    resp
}

/// Cuts a request that takes longer than `server.request_timeout` (a slow OneView or poller
/// must not pile up connections).
async fn timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than server.request_timeout ({}); retry later",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}

const WEBHOOK_ROUTE: &str = "/api/v1/pagerduty/webhook";

/// The public routes plus a task that forgets idle rate-limit buckets.
pub fn routes(
    state: WebState,
    work: tokio_util::sync::CancellationToken,
) -> (Router, crate::task::Task) {
    let cfg = &state.config.server;
    // A per-client-IP limiter: `per_second` sustained, `burst` at once.
    let limiter = |per_second: u32, burst: u32| {
        let per_second = u64::from(per_second.max(1));
        let mut builder = GovernorConfigBuilder::default()
            .key_extractor(ClientIp::new(cfg.trusted_proxies.clone()));
        builder
            .period(Duration::from_nanos((1_000_000_000 / per_second).max(1)))
            .burst_size(burst.max(1));
        builder.finish().map(Arc::new)
    };
    let governor = limiter(cfg.rate_limit_per_second, cfg.rate_limit_burst);
    // The webhook route is not under the per-client limit of the rest of /api/*, and by default
    // under none at all (`web.webhook_rate_limit_per_second` = 0): PagerDuty sends every
    // delivery from a few published addresses (one, behind an ingress without trusted proxies),
    // so a bulk action of an operator (resolving 300 incidents) is hundreds of deliveries from
    // one "client", which 20/s burst 40 answered 429. Signature verification is the real gate:
    // nothing but the HMAC of a body of at most server.webhook_body_limit runs before it
    // (~15,000 verifications/s on one core, about the cost of serving the request at all), and
    // what a verified delivery costs downstream is bounded by web.writeback_queue (503 when
    // full) and web.writeback_concurrency. Where the endpoint is exposed without an ingress
    // limit, web.webhook_rate_limit_per_second / _burst give it a limit of its own.
    let webhook_governor = state
        .config
        .web
        .webhook_rate_limit
        .and_then(|(per_second, burst)| limiter(per_second, burst));
    let limiters: Vec<_> = governor
        .iter()
        .chain(webhook_governor.iter())
        .map(|g| g.limiter().clone())
        .collect();
    let task: crate::task::Task = Box::pin(async move {
        if limiters.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = work.cancelled() => return,
                _ = tick.tick() => limiters.iter().for_each(|l| l.retain_recent()),
            }
        }
    });
    let request_timeout = cfg.request_timeout;
    let metrics = state.metrics.clone();
    let mut api = Router::new()
        .route("/api/v1/alerts", post(push_alerts).get(list_alerts))
        .route("/api/v1/deliveries/dead-letter", get(dead_letters))
        .route(
            "/api/v1/deliveries/dead-letter/{key}/retry",
            post(retry_dead_letter),
        )
        .route("/api/v1/poll", post(poll))
        .route("/api/v1/test-event", post(test_event))
        .route("/api/v1/silences", post(create_silence).get(list_silences))
        .route(
            "/api/v1/silences/{id}",
            get(get_silence).delete(expire_silence),
        );
    if let Some(g) = governor {
        api = api.route_layer(GovernorLayer::new(g).error_handler(|e| {
            governor_error(e, "server.rate_limit_per_second / server.rate_limit_burst")
        }));
    }
    let mut webhook = Router::new().route(WEBHOOK_ROUTE, post(crate::web::webhook::receive));
    if let Some(g) = webhook_governor {
        webhook = webhook.route_layer(GovernorLayer::new(g).error_handler(|e| {
            governor_error(
                e,
                "web.webhook_rate_limit_per_second / web.webhook_rate_limit_burst",
            )
        }));
    }
    let api = api
        .merge(webhook)
        .route_layer(middleware::from_fn_with_state(metrics, count_throttled))
        .with_state(state.clone());
    let page = Router::new()
        .route("/", get(crate::web::page::page))
        .route("/favicon.svg", get(crate::web::page::favicon))
        .with_state(state);
    let router = api
        .merge(page)
        .route_layer(middleware::from_fn_with_state(request_timeout, timeout));
    (router, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_items_alert_scmb_appliance_and_invalid() {
        let (app, a) =
            parse_item(&json!({"uri": "/rest/alerts/7", "severity": "Critical"})).unwrap();
        assert_eq!(a.uri, "/rest/alerts/7");
        assert_eq!(app, None);
        let (app, _) = parse_item(
            &json!({"uri": "/rest/alerts/7", "severity": "Critical", "appliance": "dc2"}),
        )
        .unwrap();
        assert_eq!(app.as_deref(), Some("dc2"));
        let scmb: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/oneview/scmb_alert_message.json"
        ))
        .unwrap();
        assert!(parse_item(&scmb).unwrap().1.is_cleared());
        let deleted = json!({"changeType": "Deleted", "appliance": "dc1", "resource": {"uri": "/rest/alerts/8", "severity": "Critical"}});
        let (app, a) = parse_item(&deleted).unwrap();
        assert!(a.is_cleared());
        assert_eq!(app.as_deref(), Some("dc1"));
        assert!(parse_item(&json!({"uri": "/rest/alerts/"})).is_err());
        assert!(parse_item(&json!("text")).is_err());
        assert!(parse_item(&json!({"uri": "/rest/alerts/1", "appliance": 3})).is_err());
    }

    fn req(peer: &str, xff: Option<&str>) -> axum::http::Request<()> {
        let mut r = axum::http::Request::new(());
        r.extensions_mut()
            .insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        if let Some(x) = xff {
            r.headers_mut()
                .insert("x-forwarded-for", HeaderValue::from_str(x).unwrap());
        }
        r
    }

    #[test]
    fn client_ip_trusts_forwarded_for_only_from_trusted_proxies() {
        let none = ClientIp::new(Vec::new());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            none.client(&req("10.0.0.5:1", Some("1.2.3.4"))),
            Some(ip("10.0.0.5"))
        );
        let trusted = ClientIp::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            trusted.client(&req("10.0.0.5:1", Some("6.6.6.6, 1.2.3.4, 10.0.0.9"))),
            Some(ip("1.2.3.4")),
            "right-most untrusted hop; a client cannot spoof by prepending"
        );
        assert_eq!(
            trusted.client(&req("10.0.0.5:1", None)),
            Some(ip("10.0.0.5"))
        );
        assert_eq!(
            trusted.client(&req("192.0.2.1:1", Some("1.2.3.4"))),
            Some(ip("192.0.2.1"))
        );
    }
}
