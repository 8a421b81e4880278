//! The simulator's HTTP surface: the OneView REST subset under `/rest` and the control API
//! under `/sim`.

// Request checks hand back the finished error response; boxing it would only add noise on a
// path that answers one request.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post, put};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::filter::{self, Pred};
use super::store::{AlertSpec, GenerateSpec, SortField};
use super::{Faults, PageUriStyle, SimError, SimHandle};
use crate::model::AlertState;
use crate::oneview::collection::{encode, format_timestamp};

/// The simulator's router (REST API + control API).
pub fn router(handle: SimHandle) -> Router {
    let rest = Router::new()
        .route("/rest/version", get(version))
        .route("/rest/login-sessions", post(login).delete(logout))
        .route("/rest/alerts", get(list_alerts))
        .route(
            "/rest/alerts/{id}",
            get(get_alert).put(put_alert).delete(delete_alert),
        )
        .route("/rest/certificates/ca", get(certificates_ca))
        .route(
            "/rest/certificates/client/rabbitmq/keypair/default",
            get(rabbitmq_keypair),
        )
        .route(
            "/rest/certificates/client/rabbitmq",
            post(rabbitmq_generate),
        )
        .route("/rest/tasks", get(list_tasks))
        .route("/rest/tasks/{id}", get(get_task))
        .route("/rest/{*rest}", any(rest_not_found))
        .layer(middleware::from_fn_with_state(handle.clone(), rest_layer));
    let control = Router::new()
        .route("/", get(ui_page))
        .route("/sim", get(sim_status))
        .route("/sim/counters", get(sim_counters))
        .route("/sim/counters/reset", post(sim_counters_reset))
        .route("/sim/alerts", post(sim_add_alerts))
        .route("/sim/alerts/generate", post(sim_generate))
        .route(
            "/sim/alerts/{id}",
            patch(sim_modify_alert)
                .delete(sim_delete_alert)
                .get(sim_get_alert),
        )
        .route("/sim/alerts/{id}/clear", post(sim_clear_alert))
        .route("/sim/alerts/{id}/corrupt", post(sim_corrupt_alert))
        .route("/sim/tasks", post(sim_add_task))
        .route("/sim/tasks/{id}/state", post(sim_task_state))
        .route("/sim/faults", put(sim_set_faults).get(sim_get_faults))
        .route("/sim/sessions/expire", post(sim_expire_sessions))
        .route("/sim/config", get(sim_get_config).patch(sim_patch_config));
    rest.merge(control).with_state(handle)
}

/// A OneView error answer.
fn ov_error(status: StatusCode, code: &str, message: &str, actions: &[&str]) -> Response {
    (
        status,
        axum::Json(json!({
            "errorCode": code,
            "message": message,
            "details": "",
            "recommendedActions": actions,
            "nestedErrors": [],
            "errorSource": null,
            "data": {},
        })),
    )
        .into_response()
}

fn unauthorized(h: &SimHandle) -> Response {
    h.counters_mut().unauthorized += 1;
    ov_error(
        StatusCode::UNAUTHORIZED,
        "AUTHORIZATION",
        "Authorization error: User not authorized for this operation.",
        &["Verify that the session is valid and log in again if it expired."],
    )
}

fn endpoint_of(method: &Method, path: &str) -> &'static str {
    match path {
        "/rest/version" => "version",
        "/rest/login-sessions" if method == Method::DELETE => "logout",
        "/rest/login-sessions" => "login",
        "/rest/alerts" => "alerts",
        p if p.starts_with("/rest/alerts/") => "alert",
        "/rest/certificates/ca" => "ca",
        "/rest/certificates/client/rabbitmq/keypair/default" => "keypair",
        "/rest/certificates/client/rabbitmq" => "keypair_generate",
        p if p.starts_with("/rest/tasks/") => "task",
        "/rest/tasks" => "tasks",
        _ => "other",
    }
}

/// Counting, faults and the `Date` header (from the simulator's clock) for every `/rest` call.
async fn rest_layer(State(h): State<SimHandle>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_of(req.method(), req.uri().path());
    h.count(endpoint);
    if endpoint == "alert" {
        h.wait_while_held().await;
    }
    let auth = req
        .headers()
        .get("auth")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (latency, fail, drop, echo) = {
        let mut f = h.faults_mut();
        let fail = if f.fail_next > 0 {
            f.fail_next -= 1;
            Some(StatusCode::SERVICE_UNAVAILABLE)
        } else if f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate {
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        } else {
            None
        };
        let drop = if fail.is_none() && f.drop_next > 0 {
            f.drop_next -= 1;
            true
        } else {
            fail.is_none() && f.drop_rate > 0.0 && rand::random::<f64>() < f.drop_rate
        };
        let echo = match auth {
            Some(token) if fail.is_none() && !drop && f.echo_auth_next > 0 => {
                f.echo_auth_next -= 1;
                Some(token)
            }
            _ => None,
        };
        (f.latency_ms, fail, drop, echo)
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let mut resp = if let Some(status) = fail {
        h.counters_mut().faults_injected += 1;
        ov_error(
            status,
            "SIM_INJECTED_FAILURE",
            "The simulator injected this server error.",
            &["Retry the request."],
        )
    } else if let Some(token) = echo {
        h.counters_mut().faults_injected += 1;
        if endpoint == "alerts" {
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/html")],
                format!(
                    "<html><body>Session {token} is not allowed through this proxy.</body></html>"
                ),
            )
                .into_response()
        } else {
            ov_error(
                StatusCode::BAD_REQUEST,
                "SIM_ECHOED_SESSION",
                &format!("The session {token} may not do this."),
                &[&format!("Log in again; the session {token} is refused.")],
            )
        }
    } else if drop {
        h.counters_mut().faults_injected += 1;
        // Headers go out, then the body fails: the client sees the connection break mid-answer.
        let body = Body::from_stream(futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated dropped connection",
            ))
        }));
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .unwrap_or_default()
    } else {
        next.run(req).await
    };
    let date = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(h.now_ms())
        .unwrap_or_default()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    if let Ok(v) = HeaderValue::from_str(&date) {
        resp.headers_mut().insert(header::DATE, v);
    }
    if let Some(len) = resp.body().size_hint().exact() {
        *h.counters_mut()
            .response_bytes
            .entry(endpoint.to_owned())
            .or_insert(0) += len;
    }
    resp
}

/// `X-API-Version` rules: missing -> 404 (the API defaults to version 1), outside
/// [minimum, current] -> 412.
fn check_version(h: &SimHandle, headers: &HeaderMap) -> Result<u32, Response> {
    let cfg = h.config();
    let Some(raw) = headers.get("x-api-version") else {
        return Err(ov_error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            "The requested resource could not be found (no X-API-Version header: the request defaults to API version 1).",
            &["Send the X-API-Version header."],
        ));
    };
    let Some(v) = raw.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok()) else {
        return Err(ov_error(
            StatusCode::BAD_REQUEST,
            "INVALID_API_VERSION",
            "The X-API-Version header is not a number.",
            &["Send a version such as 4600."],
        ));
    };
    if v > cfg.current_version || v < cfg.minimum_version {
        return Err(ov_error(
            StatusCode::PRECONDITION_FAILED,
            "UNSUPPORTED_API_VERSION",
            &format!(
                "The API version {v} is not supported. Supported versions are {} to {}.",
                cfg.minimum_version, cfg.current_version
            ),
            &["Use a supported X-API-Version; GET /rest/version lists the range."],
        ));
    }
    Ok(v)
}

fn authenticate(h: &SimHandle, headers: &HeaderMap) -> Result<String, Response> {
    let token = headers
        .get("auth")
        .or_else(|| headers.get("session-id"))
        .and_then(|v| v.to_str().ok());
    match token.and_then(|t| h.touch_session(t)) {
        Some(user) => Ok(user),
        None => Err(unauthorized(h)),
    }
}

fn guard(h: &SimHandle, headers: &HeaderMap) -> Result<String, Response> {
    check_version(h, headers)?;
    authenticate(h, headers)
}

async fn version(State(h): State<SimHandle>) -> Response {
    let c = h.config();
    axum::Json(json!({
        "currentVersion": c.current_version,
        "minimumVersion": c.minimum_version,
    }))
    .into_response()
}

async fn login(State(h): State<SimHandle>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_version(&h, &headers) {
        return r;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return ov_error(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            "The request body is not JSON.",
            &["Send {\"userName\", \"password\", \"loginMsgAck\": true}."],
        );
    };
    let cfg = h.config();
    let user = v.get("userName").and_then(Value::as_str).unwrap_or("");
    let password = v.get("password").and_then(Value::as_str).unwrap_or("");
    let ack = v
        .get("loginMsgAck")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if cfg.login_banner && !ack {
        h.counters_mut().login_failures += 1;
        return ov_error(
            StatusCode::BAD_REQUEST,
            "AUTHN_LOGIN_MESSAGE_ACKNOWLEDGMENT_REQUIRED",
            "The login message must be acknowledged before logging in.",
            &["Set loginMsgAck to true in the login request."],
        );
    }
    if user != cfg.username || password != cfg.password {
        h.counters_mut().login_failures += 1;
        return ov_error(
            StatusCode::BAD_REQUEST,
            "AUTHN_AUTH_FAIL",
            "Authentication failed: invalid user name or password.",
            &["Enter a valid user name and password, and try again."],
        );
    }
    let id = h.open_session(user);
    h.counters_mut().logins += 1;
    axum::Json(json!({"sessionID": id, "partnerData": {}})).into_response()
}

async fn logout(State(h): State<SimHandle>, headers: HeaderMap) -> Response {
    if let Err(r) = check_version(&h, &headers) {
        return r;
    }
    let token = headers.get("auth").and_then(|v| v.to_str().ok());
    match token {
        Some(t) if h.close_session(t) => {
            h.counters_mut().logouts += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => unauthorized(&h),
    }
}

async fn rest_not_found(State(h): State<SimHandle>, req: Request) -> Response {
    let _ = h;
    ov_error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &format!(
            "The resource {} is not part of the simulator.",
            req.uri().path()
        ),
        &[
            "The simulator implements /rest/version, /rest/login-sessions, /rest/alerts, /rest/tasks and /rest/certificates/ca.",
        ],
    )
}

fn parse_sort(s: &str) -> Result<(SortField, bool), String> {
    let (field, dir) = s.split_once(':').unwrap_or((s, "ascending"));
    let field = match field.trim() {
        "created" => SortField::Created,
        "modified" => SortField::Modified,
        "severity" => SortField::Severity,
        "uri" | "id" => SortField::Id,
        other => return Err(format!("cannot sort by {other:?}")),
    };
    let desc = match dir.trim().to_ascii_lowercase().as_str() {
        "asc" | "ascending" => false,
        "desc" | "descending" => true,
        other => return Err(format!("unknown sort direction {other:?}")),
    };
    Ok((field, desc))
}

/// `start`, `count`, `filter`/`query` and `sort` of a collection request, as appliances read
/// them; the rest is carried into the page URIs.
struct CollectionQuery {
    start: usize,
    count: usize,
    pred: Option<Pred>,
    sort: Option<(SortField, bool)>,
    /// Everything but start/count, re-encoded, for the page URIs.
    carried: Vec<(String, String)>,
}

impl CollectionQuery {
    fn parse(query: Option<&str>, cfg: &super::SimConfig) -> Result<Self, Response> {
        let mut start = 0usize;
        let mut count = cfg.default_page_size;
        let mut preds: Vec<Pred> = Vec::new();
        let mut sort = None;
        // Everything but start/count, re-encoded, for the page URIs.
        let mut carried: Vec<(String, String)> = Vec::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "start" => start = v.trim().parse().unwrap_or(0),
                "count" => {
                    let c: i64 = v.trim().parse().unwrap_or(0);
                    // count <= 0 gets the default page, like appliances (count=-1 gives 25).
                    if c > 0 {
                        count = usize::try_from(c).unwrap_or(usize::MAX);
                    }
                }
                "filter" | "query" => {
                    match filter::parse(&v) {
                        Ok(p) => preds.push(p),
                        Err(e) => {
                            return Err(ov_error(
                                StatusCode::BAD_REQUEST,
                                "INVALID_FILTER",
                                &format!("The {k} {v:?} is not valid: {e}."),
                                &[
                                    "Correct the filter expression, for example filter=\"alertState='Active'\".",
                                ],
                            ));
                        }
                    }
                    carried.push((k.into_owned(), v.into_owned()));
                }
                "sort" => {
                    match parse_sort(&v) {
                        Ok(s) => sort = Some(s),
                        Err(e) => {
                            return Err(ov_error(
                                StatusCode::BAD_REQUEST,
                                "INVALID_SORT",
                                &format!("The sort {v:?} is not valid: {e}."),
                                &["Use sort=created:descending or similar."],
                            ));
                        }
                    }
                    carried.push((k.into_owned(), v.into_owned()));
                }
                _ => carried.push((k.into_owned(), v.into_owned())),
            }
        }
        let count = count.min(cfg.max_page_size);
        let pred = match preds.len() {
            0 => None,
            1 => preds.pop(),
            _ => Some(Pred::And(preds)),
        };
        Ok(Self {
            start,
            count,
            pred,
            sort,
            carried,
        })
    }

    /// The URI of the page starting at `start` of `collection`, with the same query.
    fn page_uri(&self, collection: &str, start: usize) -> String {
        let mut u = format!("{collection}?start={start}&count={}", self.count);
        for (k, v) in &self.carried {
            u.push('&');
            u.push_str(k);
            u.push('=');
            u.push_str(&encode(v));
        }
        u
    }
}

/// `GET /rest/tasks`: the task list with the filters, sort and paging of `/rest/alerts`.
async fn list_tasks(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(r) = guard(&h, &headers) {
        return r;
    }
    let cfg = h.config();
    let q = match CollectionQuery::parse(query.as_deref(), &cfg) {
        Ok(q) => q,
        Err(r) => return r,
    };
    let (total, members) = {
        let store = h.tasks();
        let (total, page) = store.query(q.pred.as_ref(), q.sort, q.start, q.count);
        let members: Vec<Box<RawValue>> = page
            .iter()
            .filter_map(|t| serde_json::value::to_raw_value(&t.to_json()).ok())
            .collect();
        (total, members)
    };
    let absent = match cfg.page_uri_style {
        PageUriStyle::Null => Value::Null,
        PageUriStyle::Empty => Value::String(String::new()),
    };
    let next = if q.start.saturating_add(q.count) < total {
        Value::String(q.page_uri("/rest/tasks", q.start + q.count))
    } else {
        absent.clone()
    };
    let prev = if q.start > 0 {
        Value::String(q.page_uri("/rest/tasks", q.start.saturating_sub(q.count)))
    } else {
        absent
    };
    let now = format_timestamp(h.now_ms());
    axum::Json(Envelope {
        kind: "TaskResourceCollectionV2",
        count: members.len(),
        members,
        total,
        start: q.start,
        prev_page_uri: prev,
        next_page_uri: next,
        uri: q.page_uri("/rest/tasks", q.start),
        category: "tasks",
        e_tag: now.clone(),
        created: now.clone(),
        modified: now,
    })
    .into_response()
}

async fn list_alerts(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(r) = guard(&h, &headers) {
        return r;
    }
    let cfg = h.config();
    let CollectionQuery {
        start,
        count,
        pred,
        sort,
        carried,
    } = match CollectionQuery::parse(query.as_deref(), &cfg) {
        Ok(q) => q,
        Err(r) => return r,
    };

    // Body faults for collection pages.
    {
        let mut f = h.faults_mut();
        let fault = if f.garbage_next > 0 {
            f.garbage_next -= 1;
            Some(1)
        } else if f.html_next > 0 {
            f.html_next -= 1;
            Some(2)
        } else if f.bad_envelope_next > 0 {
            f.bad_envelope_next -= 1;
            Some(3)
        } else if f.empty_next > 0 {
            f.empty_next -= 1;
            Some(4)
        } else if f.endless_page_next > 0 {
            f.endless_page_next -= 1;
            Some(5)
        } else {
            None
        };
        drop(f);
        if let Some(kind) = fault {
            h.counters_mut().faults_injected += 1;
            return match kind {
                1 => (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"type\":\"AlertResourceCollectionV3\",\"members\":[{\"uri\":\"/rest/alerts/1\",\"sever",
                )
                    .into_response(),
                2 => (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><head><title>502 Proxy Error</title></head><body><h1>Proxy Error</h1></body></html>",
                )
                    .into_response(),
                3 => axum::Json(json!({"type": "AlertResourceCollectionV3", "total": 1}))
                    .into_response(),
                4 => axum::Json(json!({
                    "type": "AlertResourceCollectionV3", "category": "alerts",
                    "count": 0, "total": 0, "start": start, "members": [],
                    "nextPageUri": null, "prevPageUri": null, "uri": "/rest/alerts",
                }))
                .into_response(),
                _ => endless_page(h.clone()),
            };
        }
    }

    let page_uri = |s: usize| -> String {
        let mut u = format!("/rest/alerts?start={s}&count={count}");
        for (k, v) in &carried {
            u.push('&');
            u.push_str(k);
            u.push('=');
            u.push_str(&encode(v));
        }
        u
    };
    let absent = match cfg.page_uri_style {
        PageUriStyle::Null => Value::Null,
        PageUriStyle::Empty => Value::String(String::new()),
    };
    let next_origin = h.faults().next_page_origin.unwrap_or_default();
    let (total, members) = {
        let store = h.store();
        let page = store.query(pred.as_ref(), sort, start, count);
        // Each member is serialized once: its bytes are counted and copied into the page as
        // they are (the simulator must never be what a benchmark measures).
        let members: Vec<Box<RawValue>> = page
            .members
            .iter()
            .filter_map(|a| serde_json::value::to_raw_value(&a.to_json()).ok())
            .collect();
        (page.total, members)
    };
    let member_bytes: usize = members.iter().map(|m| m.get().len()).sum();
    {
        let mut c = h.counters_mut();
        c.members_sent += members.len() as u64;
        c.member_bytes += member_bytes as u64;
    }
    let next = if start.saturating_add(count) < total {
        Value::String(format!("{next_origin}{}", page_uri(start + count)))
    } else {
        absent.clone()
    };
    let prev = if start > 0 {
        Value::String(page_uri(start.saturating_sub(count)))
    } else {
        absent
    };
    let now = format_timestamp(h.now_ms());
    axum::Json(Envelope {
        kind: "AlertResourceCollectionV3",
        count: members.len(),
        members,
        total,
        start,
        prev_page_uri: prev,
        next_page_uri: next,
        uri: page_uri(start),
        category: "alerts",
        e_tag: now.clone(),
        created: now.clone(),
        modified: now,
    })
    .into_response()
}

/// A collection page that never ends (the `endless_page_next` fault): the envelope's start,
/// then one realistic member after another in 64 KiB chunks until the client hangs up.
fn endless_page(h: SimHandle) -> Response {
    let member = json!({
        "type": "AlertResourceV3",
        "uri": "/rest/alerts/1",
        "category": "alerts",
        "alertState": "Active",
        "severity": "Critical",
        "description": "The logical enclosure has an IPv4 address mismatch on one or more of its enclosures.",
        "correctiveAction": "Correct the IPv4 address configuration of the enclosures.",
        "alertTypeID": "crm.logicalEnclosure.ipv4AddressMismatch",
        "healthCategory": "Operational",
        "associatedResource": {
            "resourceUri": "/rest/logical-enclosures/1",
            "resourceName": "LE-1",
            "resourceCategory": "logical-enclosures",
            "associationType": "HAS_A",
        },
    })
    .to_string();
    let mut chunk = String::with_capacity(64 * 1024 + member.len() + 1);
    while chunk.len() < 64 * 1024 {
        chunk.push_str(&member);
        chunk.push(',');
    }
    let head = Bytes::from_static(b"{\"type\":\"AlertResourceCollectionV3\",\"members\":[");
    let chunks = std::iter::once(head).chain(std::iter::repeat(Bytes::from(chunk)));
    let body = futures::StreamExt::map(futures::stream::iter(chunks), move |b| {
        // Counted as hyper takes it for the connection: what the client could have read.
        h.counters_mut().streamed_bytes += b.len() as u64;
        Ok::<Bytes, std::io::Error>(b)
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

/// `GET /rest/certificates/ca`: the simulator's CA, as appliances serve theirs. Before API 600
/// the answer is the PEM as a JSON string; from 600 on a collection whose members carry it in
/// `certificateDetails.base64Data` when `If-Req-CertDetails: true` asks for the details (as
/// the python SDK does); `filter=certType:INTERNAL` keeps the appliance's internal CA, the only
/// one the simulator has.
async fn certificates_ca(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let version = match check_version(&h, &headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(r) = authenticate(&h, &headers) {
        return r;
    }
    let Some(pem) = h.ca_pem() else {
        return ov_error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            "The simulator serves plain HTTP and has no certificate authority.",
            &["Start the simulator with a TLS certificate."],
        );
    };
    if version < 600 {
        return axum::Json(Value::String(pem)).into_response();
    }
    let internal_only = url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "filter")
        .all(|(_, v)| v.trim().trim_matches('"') == "certType:INTERNAL");
    let details = headers
        .get("if-req-certdetails")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut certificate_details = json!({
        "type": "CertificateDetailV2",
        "aliasName": "localhostInternalRootCA",
        "commonName": "OneView simulator CA",
    });
    if details {
        certificate_details["base64Data"] = Value::String(pem);
    }
    let members = if internal_only {
        vec![json!({
            "type": "CertificateAuthorityInfo",
            "certType": "INTERNAL",
            "uri": "/rest/certificates/ca/localhostInternalRootCA",
            "certificateDetails": certificate_details,
        })]
    } else {
        Vec::new()
    };
    axum::Json(json!({
        "type": "CertificateAuthorityInfoCollection",
        "count": members.len(),
        "total": members.len(),
        "start": 0,
        "members": members,
        "uri": "/rest/certificates/ca",
        "nextPageUri": null,
        "prevPageUri": null,
    }))
    .into_response()
}

/// `GET /rest/certificates/client/rabbitmq/keypair/default`: the RabbitMQ client keypair, 404
/// until one exists.
async fn rabbitmq_keypair(State(h): State<SimHandle>, headers: HeaderMap) -> Response {
    if let Err(r) = guard(&h, &headers) {
        return r;
    }
    match h.scmb_keypair() {
        Some(kp) => axum::Json(json!({
            "type": "RabbitMqClientCertV2",
            "uri": "/rest/certificates/client/rabbitmq/keypair/default",
            "commonName": "default",
            "base64SSLCertData": kp.cert_pem,
            "base64SSLKeyData": kp.key_pem,
        }))
        .into_response(),
        None => ov_error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            "The RabbitMQ client certificate default does not exist.",
            &["Generate it with POST /rest/certificates/client/rabbitmq."],
        ),
    }
}

/// `POST /rest/certificates/client/rabbitmq`: starts the task that generates the keypair;
/// `RABBITMQ_CLIENTCERT_CONFLICT` when it exists, 403 `AUTHORIZATION` when generation is denied.
async fn rabbitmq_generate(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = guard(&h, &headers) {
        return r;
    }
    let cfg = h.config();
    if cfg.scmb_generate_denied {
        return ov_error(
            StatusCode::FORBIDDEN,
            "AUTHORIZATION",
            "Authorization error: User not authorized for this operation.",
            &["Log in as a user with the Infrastructure administrator role."],
        );
    }
    let ok_body = serde_json::from_slice::<Value>(&body).is_ok_and(|v| {
        v.get("type").and_then(Value::as_str) == Some("RabbitMqClientCertV2")
            && v.get("commonName").and_then(Value::as_str) == Some("default")
    });
    if !ok_body {
        return ov_error(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "The request must be {\"type\":\"RabbitMqClientCertV2\",\"commonName\":\"default\"}.",
            &["Send type RabbitMqClientCertV2 and commonName default."],
        );
    }
    if h.scmb_keypair().is_some() {
        return ov_error(
            StatusCode::CONFLICT,
            "RABBITMQ_CLIENTCERT_CONFLICT",
            "The RabbitMQ client certificate already exists.",
            &["Read it with GET /rest/certificates/client/rabbitmq/keypair/default."],
        );
    }
    if cfg.scmb_ca.is_none() {
        return ov_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SIM_NO_CA",
            "The simulator has no SCMB CA to issue the certificate with.",
            &["Start the simulator with an SCMB CA."],
        );
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    h.scmb().tasks.insert(id.clone(), cfg.scmb_task_polls);
    let uri = format!("/rest/tasks/{id}");
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, uri.clone())],
        axum::Json(task_json(&uri, "Running", 0)),
    )
        .into_response()
}

fn task_json(uri: &str, state: &str, percent: u32) -> Value {
    json!({
        "type": "TaskResourceV2",
        "category": "tasks",
        "uri": uri,
        "name": "Create RabbitMQ client certificate",
        "taskState": state,
        "percentComplete": percent,
        "taskErrors": [],
        "associatedResource": {"resourceUri": "/rest/certificates/client/rabbitmq/keypair/default"},
    })
}

/// `GET /rest/tasks/{id}`: the generate task, `Running` for `scmb_task_polls` GETs, then
/// `Completed` with the keypair issued.
async fn get_task(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = guard(&h, &headers) {
        return r;
    }
    let uri = format!("/rest/tasks/{id}");
    let left = {
        let mut s = h.scmb();
        match s.tasks.get_mut(&id) {
            None => None,
            Some(0) => Some(0),
            Some(n) => {
                *n -= 1;
                Some(*n + 1)
            }
        }
    };
    match left {
        None => match h.task(&uri) {
            Some(t) => axum::Json(t).into_response(),
            None => ov_error(
                StatusCode::NOT_FOUND,
                "RESOURCE_NOT_FOUND",
                &format!("The task {uri} does not exist."),
                &["Check the task URI."],
            ),
        },
        Some(0) => {
            if h.scmb_keypair().is_none() && !h.generate_scmb_keypair() {
                return axum::Json(json!({
                    "type": "TaskResourceV2", "category": "tasks", "uri": uri,
                    "taskState": "Error", "percentComplete": 100,
                    "taskErrors": [{"errorCode": "SIM_NO_CA", "message": "The simulator could not issue the certificate."}],
                }))
                .into_response();
            }
            axum::Json(task_json(&uri, "Completed", 100)).into_response()
        }
        Some(_) => axum::Json(task_json(&uri, "Running", 50)).into_response(),
    }
}

/// A collection page as OneView shapes it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(rename = "type")]
    kind: &'static str,
    members: Vec<Box<RawValue>>,
    count: usize,
    total: usize,
    start: usize,
    prev_page_uri: Value,
    next_page_uri: Value,
    uri: String,
    category: &'static str,
    e_tag: String,
    created: String,
    modified: String,
}

fn parse_id(h: &SimHandle, raw: &str) -> Result<u64, Response> {
    let _ = h;
    raw.parse::<u64>().map_err(|_| {
        ov_error(
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            &format!("The alert {raw} does not exist."),
            &["Check the alert URI."],
        )
    })
}

fn alert_not_found(id: u64) -> Response {
    ov_error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        &format!("The alert /rest/alerts/{id} does not exist."),
        &["Check the alert URI; the alert may have been deleted."],
    )
}

async fn get_alert(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    if let Err(r) = guard(&h, &headers) {
        return r;
    }
    let id = match parse_id(&h, &raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match h.alert(id) {
        Some(v) => axum::Json(v).into_response(),
        None => alert_not_found(id),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct AlertPut {
    alert_state: Option<String>,
    alert_urgency: Option<String>,
    assigned_to_user: Option<String>,
    notes: Option<String>,
    e_tag: Option<String>,
}

async fn put_alert(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    body: Bytes,
) -> Response {
    let user = match guard(&h, &headers) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let id = match parse_id(&h, &raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let Ok(upd) = serde_json::from_slice::<AlertPut>(&body) else {
        return ov_error(
            StatusCode::BAD_REQUEST,
            "INVALID_JSON",
            "The request body is not a valid alert update.",
            &["Send alertState, alertUrgency, assignedToUser, notes or eTag."],
        );
    };
    let now = h.now_ms();
    let mut store = h.store();
    let Some(current) = store.get(id) else {
        return alert_not_found(id);
    };
    let if_match = headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let check_etag = h.config().check_etag;
    if let Some(tag) = upd.e_tag.clone().or(if_match).filter(|_| check_etag) {
        let tag = tag.trim_matches('"');
        if !tag.is_empty() && tag != "*" && tag != current.etag.to_string() {
            return ov_error(
                StatusCode::PRECONDITION_FAILED,
                "ETAG_MISMATCH",
                "The alert changed since it was read (eTag mismatch).",
                &["Read the alert again and retry with its current eTag."],
            );
        }
    }
    let locked = current.state == AlertState::Locked;
    let mut changed = false;
    if let Some(state) = upd.alert_state.as_deref() {
        match state {
            "Cleared" if locked => {
                return ov_error(
                    StatusCode::BAD_REQUEST,
                    "ALERT_LOCKED",
                    "The alert is locked and cannot be cleared by a user.",
                    &["Resolve the underlying condition; the appliance clears locked alerts."],
                );
            }
            "Cleared" => {
                if current.state != AlertState::Cleared {
                    store.clear(id, now, &user);
                    changed = true;
                }
            }
            "Active" => {
                if current.state != AlertState::Active {
                    store.modify(id, now, |a| {
                        a.state = AlertState::Active;
                        a.cleared_by_user = None;
                        a.cleared_time_ms = None;
                    });
                    changed = true;
                }
            }
            other => {
                return ov_error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ALERT_STATE",
                    &format!("alertState {other:?} cannot be set; use Active or Cleared."),
                    &["Use Active or Cleared."],
                );
            }
        }
    }
    if let Some(u) = upd.alert_urgency {
        let u: std::sync::Arc<str> = std::sync::Arc::from(u);
        store.modify(id, now, |a| a.urgency = u);
        changed = true;
    }
    if let Some(u) = upd.assigned_to_user {
        store.modify(id, now, |a| a.assigned_to_user = Some(u));
        changed = true;
    }
    if let Some(n) = upd.notes.filter(|n| !n.is_empty()) {
        store.add_note(id, now, &n, &user);
        changed = true;
    }
    if !changed {
        return StatusCode::OK.into_response();
    }
    match store.get(id) {
        Some(a) => {
            let v = a.to_json();
            // Under the store lock: the bus sees this change in the order it was made.
            h.publish_json(&v, "Updated");
            axum::Json(v).into_response()
        }
        None => alert_not_found(id),
    }
}

async fn delete_alert(
    State(h): State<SimHandle>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Response {
    if let Err(r) = guard(&h, &headers) {
        return r;
    }
    let id = match parse_id(&h, &raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    let mut store = h.store();
    match store.get(id).map(|a| a.state.clone()) {
        None => alert_not_found(id),
        Some(AlertState::Cleared) => {
            if let Some(v) = store.get(id).map(|a| a.to_json()) {
                h.publish_json(&v, "Deleted");
            }
            store.delete(id);
            StatusCode::NO_CONTENT.into_response()
        }
        Some(_) => ov_error(
            StatusCode::BAD_REQUEST,
            "ALERT_NOT_CLEARED",
            "Only cleared alerts can be deleted.",
            &["Clear the alert first."],
        ),
    }
}

// ---- control API ---------------------------------------------------------------------

fn sim_err(e: SimError) -> Response {
    let status = match e {
        SimError::NoSuchAlert(_) | SimError::NotFound(_) => StatusCode::NOT_FOUND,
        SimError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    (status, axum::Json(json!({"error": e.to_string()}))).into_response()
}

fn control_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": format!("invalid JSON body: {e}")})),
        )
            .into_response()
    })
}

/// A stand-in for the OneView web UI. Incident links are `{ui}/#/activity/r{alert uri}` and a
/// browser sends only `/` for them, so without this page every "Open in OneView" link of the
/// demo answered 404. It names the alert the link meant and where its JSON is; constant size,
/// whatever the store holds.
async fn ui_page(State(h): State<SimHandle>) -> Response {
    let cfg = h.config();
    let page = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>OneView simulator</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 2em auto">
<h1>OneView simulator{title}</h1>
<p>This is the bridge's OneView simulator, not an appliance: it has no web UI.
It plays {site} and holds {open} open alerts ({total} in all).</p>
<p id="alert">Links from incidents name an alert after <code>#/activity/r</code>.</p>
<ul>
<li><a href="/sim">/sim</a>: status, configuration, faults and counters</li>
<li><code>GET /sim/alerts/{{id}}</code>: one alert as the REST API serves it</li>
<li><code>/rest/alerts</code>: the REST API (needs a session from <code>POST /rest/login-sessions</code>)</li>
</ul>
<script>
const m = location.hash.match(/^#\/activity\/r(\/rest\/alerts\/(\d+))$/);
if (m) {{
  const p = document.getElementById("alert");
  p.textContent = "The link is for alert " + m[1] + ": ";
  const a = document.createElement("a");
  a.href = "/sim/alerts/" + m[2];
  a.textContent = "/sim/alerts/" + m[2];
  p.appendChild(a);
}}
</script>
</body></html>
"#,
        open = h.open_alert_count(),
        total = h.alert_count(),
        title = cfg
            .name
            .as_deref()
            .map(|n| format!(" {}", crate::web::page::esc(n)))
            .unwrap_or_default(),
        site = crate::web::page::esc(&cfg.site.description),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

async fn sim_status(State(h): State<SimHandle>) -> Response {
    h.count("control");
    axum::Json(json!({
        "alerts": h.alert_count(),
        "open_alerts": h.open_alert_count(),
        "sessions": h.session_count(),
        "now": format_timestamp(h.now_ms()),
        "config": h.config(),
        "faults": h.faults(),
        "counters": h.counters(),
    }))
    .into_response()
}

async fn sim_counters(State(h): State<SimHandle>) -> Response {
    axum::Json(h.counters()).into_response()
}

async fn sim_counters_reset(State(h): State<SimHandle>) -> Response {
    h.reset_counters();
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<AlertSpec>),
    One(Box<AlertSpec>),
}

async fn sim_add_alerts(State(h): State<SimHandle>, body: Bytes) -> Response {
    h.count("control");
    let specs = match control_json::<OneOrMany>(&body) {
        Ok(OneOrMany::Many(v)) => v,
        Ok(OneOrMany::One(s)) => vec![*s],
        Err(r) => return r,
    };
    let uris = h.add_alerts(&specs);
    (StatusCode::CREATED, axum::Json(json!({"uris": uris}))).into_response()
}

async fn sim_generate(State(h): State<SimHandle>, body: Bytes) -> Response {
    h.count("control");
    let spec = match control_json::<GenerateSpec>(&body) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let r = h.generate(&spec);
    (
        StatusCode::CREATED,
        axum::Json(json!({"first_id": r.start, "count": r.end - r.start})),
    )
        .into_response()
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct AlertPatch {
    severity: Option<String>,
    description: Option<String>,
    alert_state: Option<String>,
}

async fn sim_get_alert(State(h): State<SimHandle>, Path(id): Path<u64>) -> Response {
    match h.alert(id) {
        Some(v) => axum::Json(v).into_response(),
        None => sim_err(SimError::NoSuchAlert(id)),
    }
}

async fn sim_modify_alert(
    State(h): State<SimHandle>,
    Path(id): Path<u64>,
    body: Bytes,
) -> Response {
    h.count("control");
    let p = match control_json::<AlertPatch>(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut res = Ok(());
    if let Some(s) = &p.severity {
        res = res.and_then(|_| h.set_severity(id, s));
    }
    if let Some(d) = &p.description {
        res = res.and_then(|_| h.set_description(id, d));
    }
    if let Some(st) = &p.alert_state {
        res = res.and_then(|_| h.set_state(id, st));
    }
    match res {
        Ok(()) => sim_get_alert(State(h), Path(id)).await,
        Err(e) => sim_err(e),
    }
}

async fn sim_clear_alert(State(h): State<SimHandle>, Path(id): Path<u64>) -> Response {
    h.count("control");
    match h.clear(id) {
        Ok(()) => sim_get_alert(State(h), Path(id)).await,
        Err(e) => sim_err(e),
    }
}

async fn sim_corrupt_alert(State(h): State<SimHandle>, Path(id): Path<u64>) -> Response {
    h.count("control");
    match h.corrupt(id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sim_err(e),
    }
}

async fn sim_delete_alert(State(h): State<SimHandle>, Path(id): Path<u64>) -> Response {
    h.count("control");
    match h.delete(id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sim_err(e),
    }
}

/// `POST /sim/tasks`: adds one task ([`super::TaskSpec`], camelCase keys) or a list; answers
/// `{"uris": [...]}`.
async fn sim_add_task(State(h): State<SimHandle>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<super::TaskSpec>),
        One(Box<super::TaskSpec>),
    }
    let specs = match control_json::<OneOrMany>(&body) {
        Ok(OneOrMany::Many(v)) => v,
        Ok(OneOrMany::One(s)) => vec![*s],
        Err(r) => return r,
    };
    let uris: Vec<String> = specs.into_iter().map(|s| h.add_task(s)).collect();
    (StatusCode::CREATED, axum::Json(json!({ "uris": uris }))).into_response()
}

/// `POST /sim/tasks/{id}/state` with `{"taskState": "Completed"}`: the task moves on, and its
/// `modified` is stamped now.
async fn sim_task_state(
    State(h): State<SimHandle>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct StateBody {
        task_state: String,
    }
    let b = match control_json::<StateBody>(&body) {
        Ok(b) => b,
        Err(r) => return r,
    };
    match h.set_task_state(&format!("/rest/tasks/{id}"), &b.task_state) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => sim_err(e),
    }
}

async fn sim_set_faults(State(h): State<SimHandle>, body: Bytes) -> Response {
    h.count("control");
    match control_json::<Faults>(&body) {
        Ok(f) => {
            h.set_faults(f);
            axum::Json(h.faults()).into_response()
        }
        Err(r) => r,
    }
}

async fn sim_get_faults(State(h): State<SimHandle>) -> Response {
    axum::Json(h.faults()).into_response()
}

async fn sim_expire_sessions(State(h): State<SimHandle>) -> Response {
    h.count("control");
    let n = h.expire_sessions();
    axum::Json(json!({"expired": n})).into_response()
}

async fn sim_get_config(State(h): State<SimHandle>) -> Response {
    axum::Json(h.config()).into_response()
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ConfigPatch {
    current_version: Option<u32>,
    minimum_version: Option<u32>,
    login_banner: Option<bool>,
    idle_timeout_ms: Option<u64>,
    max_page_size: Option<usize>,
    page_uri_style: Option<PageUriStyle>,
}

async fn sim_patch_config(State(h): State<SimHandle>, body: Bytes) -> Response {
    h.count("control");
    let p = match control_json::<ConfigPatch>(&body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    h.configure(|c| {
        if let Some(v) = p.current_version {
            c.current_version = v;
        }
        if let Some(v) = p.minimum_version {
            c.minimum_version = v;
        }
        if let Some(v) = p.login_banner {
            c.login_banner = v;
        }
        if let Some(v) = p.idle_timeout_ms {
            c.idle_timeout = Duration::from_millis(v);
        }
        if let Some(v) = p.max_page_size {
            c.max_page_size = v.max(1);
        }
        if let Some(v) = p.page_uri_style {
            c.page_uri_style = v;
        }
    });
    axum::Json(h.config()).into_response()
}
