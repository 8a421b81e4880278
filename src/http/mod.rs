//! The HTTP surface every role serves: `/health`, `/ready`, `/metrics`, JSON errors for unknown
//! paths and wrong methods, and the request context (request id, access log, metrics) around
//! every request, including the request-head limits (`server.max_uri_length`,
//! `server.max_header_bytes`) answered as JSON 414/431. Role-specific routes are merged in by
//! `App::build`; [`serve`] owns the listener and its connections.

pub mod serve;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;
use tracing::Instrument;

use crate::config::Role;
use crate::metrics::{HttpLabels, HttpMetrics, SharedRegistry};
use crate::readiness::Readiness;

/// The header carrying the request id, in and out.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    /// The current request's id, readable by error responses and handlers.
    static CURRENT_REQUEST_ID: String;
}

/// The id of the request being served, if called inside one.
pub fn current_request_id() -> Option<String> {
    CURRENT_REQUEST_ID.try_with(Clone::clone).ok()
}

/// State shared by the core routes.
#[derive(Clone)]
pub struct CoreState {
    pub role: Role,
    pub started: Instant,
    pub readiness: Arc<Readiness>,
    pub registry: SharedRegistry,
    /// Findings shown on `/health` (for example TLS verification turned off).
    pub health_warnings: Arc<Vec<String>>,
}

/// A JSON error body: `{error, message, request_id}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// A short machine-readable code, `not_found`.
    pub error: &'static str,
    pub message: String,
    /// Answer with `Connection: close`: the request body was not read, so the connection
    /// cannot carry another request (a keep-alive client would send its next request into
    /// the unread body otherwise).
    pub close: bool,
    /// Seconds for a `Retry-After` header: the condition is expected to pass by itself.
    pub retry_after: Option<u32>,
    /// The request field that is wrong (a validation error's `field`).
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            close: false,
            retry_after: None,
            field: None,
        }
    }

    /// The same error naming the request field to fix.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The same error with `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The same error, answered with `Connection: close`.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "error": self.error,
            "message": self.message,
            "request_id": current_request_id(),
        });
        if let Some(f) = &self.field {
            body["field"] = json!(f);
        }
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

/// The same JSON body for answers written below the router (see [`serve`]).
fn error_body(error: &str, message: &str, request_id: &str) -> String {
    json!({"error": error, "message": message, "request_id": request_id}).to_string()
}

/// The request-head limits; [`serve`] puts them on every request, the check is
/// [`head_limits`] (so the answer gets a request id, security headers and an access-log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    pub max_uri_length: usize,
    pub max_header_bytes: usize,
}

/// The request target's length as sent (origin form: path and query).
fn uri_length(uri: &axum::http::Uri) -> usize {
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len());
    let prefix = match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => s.len() + 3 + a.as_str().len(),
        _ => 0,
    };
    prefix + target
}

async fn head_limits(req: Request, next: Next) -> Response {
    let Some(l) = req.extensions().get::<HeadLimits>().copied() else {
        return next.run(req).await;
    };
    let uri = uri_length(req.uri());
    if uri > l.max_uri_length {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {uri} bytes; this server accepts at most {} (server.max_uri_length): send long input in a POST body",
                l.max_uri_length
            ),
        )
        .into_response();
    }
    // As on the wire: "METHOD target HTTP/1.1\r\n" and "name: value\r\n" per field.
    let head = req.method().as_str().len()
        + uri
        + 11
        + req
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if head > l.max_header_bytes {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request line and headers are {head} bytes; this server accepts at most {} (server.max_header_bytes): drop large cookies or headers",
                l.max_header_bytes
            ),
        )
        .into_response();
    }
    next.run(req).await
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    role: Role,
    version: &'static str,
    uptime_seconds: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: Vec<String>,
    /// A standby poller: who leads, or why the lease cannot be read. Healthy either way.
    #[serde(skip_serializing_if = "Option::is_none")]
    leadership: Option<String>,
}

async fn health(State(s): State<CoreState>) -> impl IntoResponse {
    axum::Json(Health {
        status: "ok",
        role: s.role,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: s.started.elapsed().as_secs(),
        warnings: s.health_warnings.as_ref().clone(),
        leadership: s.readiness.warning(crate::leader::READY_LEADERSHIP),
    })
}

async fn ready(State(s): State<CoreState>) -> impl IntoResponse {
    let r = s.readiness.report();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if r.ready { "ready" } else { "not_ready" },
        "role": s.role,
        "unmet": r.unmet,
        "warnings": r.warnings,
        "appliances": r.appliances,
    });
    (status, axum::Json(body))
}

async fn metrics(State(s): State<CoreState>, headers: HeaderMap) -> Response {
    let om = crate::metrics::encode_openmetrics(&s.registry);
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    if wants_openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            om,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::openmetrics_to_prometheus_text(&om),
        )
            .into_response()
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// The routes every role serves.
pub fn core_routes(state: CoreState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Wraps the complete router: fallbacks, route capture for metrics, and the request context.
pub fn finish(router: Router, http_metrics: HttpMetrics) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn(capture_route))
        .layer(middleware::from_fn(head_limits))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn_with_state(
            http_metrics,
            request_context,
        ))
}

/// The default Content-Security-Policy: nothing may load. The status page sets its own policy
/// (with a per-response nonce) and this layer leaves it alone.
const DEFAULT_CSP: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Security headers on every response; `Cache-Control: no-store` unless a handler chose
/// otherwise, because API answers describe live state and may be sensitive.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(DEFAULT_CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The matched route template, carried from the inner layer (which sees it) to the outer one.
#[derive(Clone)]
struct RouteTemplate(String);

async fn capture_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(RouteTemplate(r));
    }
    resp
}

/// A client-sent request id is kept when it is short and made of safe characters, so it can be
/// logged and echoed without letting anyone inject log lines or headers.
fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| s.to_owned())
}

async fn request_context(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(sane_request_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let start = Instant::now();
    let mut resp = CURRENT_REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let elapsed = start.elapsed();
    let status = resp.status();
    let route = resp
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".to_owned());
    let labels = HttpLabels {
        route: route.clone(),
        method: method.as_str().to_owned(),
        status_class: format!("{}xx", status.as_u16() / 100),
    };
    m.requests.get_or_create(&labels).inc();
    m.duration
        .get_or_create(&labels)
        .observe(elapsed.as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID.clone(), v);
    }
    span.in_scope(|| {
        let ms = elapsed.as_secs_f64() * 1000.0;
        if matches!(route.as_str(), "/health" | "/ready" | "/metrics") {
            tracing::debug!(
                status = status.as_u16(),
                route,
                duration_ms = ms,
                "request served"
            );
        } else {
            tracing::info!(
                status = status.as_u16(),
                route,
                duration_ms = ms,
                "request served"
            );
        }
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_sanity() {
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("abc-123_x.y:z")).as_deref(),
            Some("abc-123_x.y:z")
        );
        assert!(sane_request_id(&HeaderValue::from_static("has space")).is_none());
        assert!(sane_request_id(&HeaderValue::from_str(&"a".repeat(129)).unwrap()).is_none());
    }
}
