//! `POST /api/v1/pagerduty/webhook`: PagerDuty Webhooks v3 in, OneView write-back out.
//!
//! The signature is verified on the raw body before anything is parsed. The answer (202) goes
//! out at once; the write-back runs in the background, because PagerDuty gives a delivery 5 s
//! and OneView may be slower. Deliveries are de-duplicated by `X-Webhook-Id` on this replica;
//! across replicas and restarts the write-back itself is idempotent (it looks for the event's
//! marker in the alert's change log before adding a note). Write-backs wait in a bounded queue
//! (`web.writeback_queue`) for one of `web.writeback_concurrency` slots, so that a burst of
//! deliveries does not become a burst of requests to the appliance, nor unbounded memory: when
//! the queue is full the delivery is answered 503 with `Retry-After` and not recorded as seen,
//! so PagerDuty's redelivery is taken once there is room.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::ApiError;
use crate::web::api::{WebState, read_json_body};
use crate::web::control::{WritebackOutcome, WritebackReport, WritebackRequest};
use crate::web::signature::{self, SignatureError};

/// `Retry-After` of a delivery refused because the write-back queue is full. PagerDuty retries
/// on its own schedule; other senders get a hint that is short next to a write-back's seconds.
pub const QUEUE_FULL_RETRY_AFTER_SECS: u64 = 5;

/// A verified delivery waiting for its write-back: small (a few hundred bytes), unlike the task
/// that runs it, so a long queue costs little memory.
pub struct WritebackJob {
    req: WritebackRequest,
    webhook_id: Option<String>,
}

/// Runs the queued write-backs, `web.writeback_concurrency` at a time (a task per delivery,
/// unbounded, turned a burst of deliveries into as many concurrent requests, each on a
/// connection of its own: 1,400 open sockets at 3,000 deliveries/s in the web benchmark, a flood
/// for a real appliance), in arrival order.
///
/// When `work` is cancelled (SIGTERM: the HPA scales web replicas in all the time) the queue is
/// closed, so new deliveries are answered 503 and PagerDuty delivers them to another replica,
/// and what was already answered 202 is still written back, within `server.shutdown_timeout`.
/// What is left then is counted (`bridge_web_writebacks_total{outcome="dropped_at_shutdown"}`)
/// and logged: PagerDuty's next change of those incidents is written back as usual.
pub fn dispatcher(
    s: WebState,
    mut queue: mpsc::Receiver<WritebackJob>,
    work: CancellationToken,
) -> crate::task::Task {
    Box::pin(async move {
        let slots = Arc::new(Semaphore::new(s.config.web.writeback_concurrency.max(1)));
        let running = TaskTracker::new();
        loop {
            // A slot first, then a job: a job stays in the queue (and counts in its depth and
            // its bound) until a slot is free for it.
            let slot = tokio::select! {
                _ = work.cancelled() => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let job = tokio::select! {
                _ = work.cancelled() => break,
                job = queue.recv() => match job {
                    Some(job) => job,
                    None => break,
                },
            };
            s.metrics.writeback_queue_depth.dec();
            let st = s.clone();
            running.spawn(async move {
                write_back(&st, job).await;
                drop(slot);
            });
        }
        // Shutting down: take no new deliveries, finish those already acknowledged.
        queue.close();
        let timeout = s.config.server.shutdown_timeout;
        // Leave the app a moment to count and log before it stops waiting for us.
        let deadline = Instant::now() + timeout.saturating_sub((timeout / 4).min(DRAIN_MARGIN));
        let queued_at_stop = queue.len();
        if queued_at_stop > 0 || !running.is_empty() {
            tracing::info!(
                queued = queued_at_stop,
                in_progress = running.len(),
                "shutdown: finishing the acknowledged PagerDuty write-backs"
            );
        }
        loop {
            let slot = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let Ok(job) = queue.try_recv() else { break };
            s.metrics.writeback_queue_depth.dec();
            let st = s.clone();
            running.spawn(async move {
                write_back(&st, job).await;
                drop(slot);
            });
        }
        running.close();
        let _ = tokio::time::timeout_at(deadline, running.wait()).await;
        let mut left = running.len();
        while queue.try_recv().is_ok() {
            s.metrics.writeback_queue_depth.dec();
            left += 1;
        }
        if left > 0 {
            s.metrics.writebacks_dropped(left);
            tracing::warn!(
                left,
                timeout = ?timeout,
                "stopping with PagerDuty write-backs not done within server.shutdown_timeout; they are not written to OneView"
            );
        }
    })
}

/// How long before `server.shutdown_timeout` the drain gives up, so that it can count what is
/// left before the application stops waiting.
const DRAIN_MARGIN: Duration = Duration::from_millis(500);

async fn write_back(s: &WebState, job: WritebackJob) {
    let WritebackJob { req, webhook_id } = job;
    let attempt = || async {
        let r = s.control.writeback(&req).await;
        match r.outcome {
            WritebackOutcome::Failed | WritebackOutcome::Unavailable => Err(r),
            _ => Ok(r),
        }
    };
    let result = attempt
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(Duration::from_secs(10))
                .with_max_times(3),
        )
        .await;
    let report: WritebackReport = match result {
        Ok(r) => r,
        Err(r) => {
            // Let a redelivery by PagerDuty try again.
            if let Some(id) = &webhook_id {
                s.seen_webhooks.invalidate(id);
            }
            tracing::error!(event_id = %req.event_id, detail = %r.detail, "PagerDuty write-back to OneView failed");
            r
        }
    };
    s.metrics.writeback(report.outcome);
    tracing::info!(event_id = %req.event_id, outcome = report.outcome.label(), detail = %report.detail, "PagerDuty webhook processed");
}

/// Incident events that are written back to OneView.
pub const HANDLED: &[&str] = &[
    "incident.acknowledged",
    "incident.resolved",
    "incident.reassigned",
    "incident.annotated",
];

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_owned)
}

/// Builds the write-back request from a verified envelope; `None` for events not handled.
/// Reads the envelope in place: copying the incident out of it cost as much as parsing it.
pub fn writeback_request(envelope: &Value) -> Option<WritebackRequest> {
    let event = envelope.get("event")?;
    let event_type = str_at(event, &["event_type"])?;
    if !HANDLED.contains(&event_type.as_str()) {
        return None;
    }
    let data = event.get("data").unwrap_or(&Value::Null);
    let note_event = data.get("type").and_then(Value::as_str) == Some("incident_note");
    let incident = if note_event {
        data.get("incident").unwrap_or(&Value::Null)
    } else {
        data
    };
    Some(WritebackRequest {
        event_id: str_at(event, &["id"])?,
        event_type,
        incident_id: str_at(incident, &["id"]),
        incident_key: str_at(incident, &["incident_key"]),
        incident_number: incident.get("number").and_then(Value::as_u64),
        incident_url: str_at(incident, &["html_url"]),
        incident_title: str_at(incident, &["title"]).or_else(|| str_at(incident, &["summary"])),
        agent_name: str_at(event, &["agent", "summary"]),
        agent_type: str_at(event, &["agent", "type"]),
        assignees: incident
            .get("assignees")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.get("summary").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        note: note_event.then(|| str_at(data, &["content"])).flatten(),
    })
}

/// What a verified delivery asks for: the write-back request (`None` for events not handled) and
/// the event type, for the log.
fn parse_delivery(raw: &[u8]) -> Result<(Option<WritebackRequest>, String), serde_json::Error> {
    if let Ok(fast::Obj(env)) = serde_json::from_slice::<fast::Obj<fast::Envelope<'_>>>(raw) {
        return Ok(env.into_request());
    }
    // Anything the typed reading does not take (another JSON type where a string or an object
    // is expected, a duplicate key, invalid JSON) goes the general way, with its error message.
    let envelope: Value = serde_json::from_slice(raw)?;
    let event_type = envelope["event"]["event_type"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    Ok((writeback_request(&envelope), event_type))
}

/// A typed, borrowing reading of the envelope: only the fields [`writeback_request`] looks at,
/// without building a `Value` tree (its allocations were the largest cost of receiving a
/// delivery in the web benchmark's profile). It either gives what [`writeback_request`] gives
/// or fails, and [`parse_delivery`] then takes the general way.
mod fast {
    use std::borrow::Cow;
    use std::marker::PhantomData;

    use serde::Deserialize;
    use serde::de::{Deserializer, MapAccess, Visitor};

    use super::{HANDLED, WritebackRequest};

    /// A JSON object only: a derived struct would also take an array, positionally, where
    /// `Value::get` finds nothing.
    pub(super) struct Obj<T>(pub T);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<T>(PhantomData<T>);
            impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
                type Value = Obj<T>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Obj<T>, A::Error> {
                    T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Obj)
                }
            }
            d.deserialize_map(V(PhantomData))
        }
    }

    type Str<'a> = Option<Cow<'a, str>>;

    fn owned(s: &Str<'_>) -> Option<String> {
        s.as_deref().map(str::to_owned)
    }

    #[derive(Deserialize)]
    pub(super) struct Envelope<'a> {
        #[serde(borrow)]
        event: Option<Obj<Event<'a>>>,
    }

    #[derive(Deserialize)]
    struct Event<'a> {
        #[serde(borrow)]
        id: Str<'a>,
        #[serde(borrow)]
        event_type: Str<'a>,
        #[serde(borrow)]
        agent: Option<Obj<Ref<'a>>>,
        #[serde(borrow)]
        data: Option<Obj<Data<'a>>>,
    }

    #[derive(Deserialize)]
    struct Ref<'a> {
        #[serde(borrow)]
        summary: Str<'a>,
        #[serde(borrow, rename = "type")]
        kind: Str<'a>,
    }

    /// `data`: the incident itself, or (`type` = `incident_note`) a note with its `incident`.
    #[derive(Deserialize)]
    struct Data<'a> {
        #[serde(borrow, rename = "type")]
        kind: Str<'a>,
        #[serde(borrow)]
        id: Str<'a>,
        #[serde(borrow)]
        incident_key: Str<'a>,
        number: Option<u64>,
        #[serde(borrow)]
        html_url: Str<'a>,
        #[serde(borrow)]
        title: Str<'a>,
        #[serde(borrow)]
        summary: Str<'a>,
        #[serde(borrow)]
        assignees: Option<Vec<Obj<Ref<'a>>>>,
        #[serde(borrow)]
        content: Str<'a>,
        #[serde(borrow)]
        incident: Option<Obj<Box<Data<'a>>>>,
    }

    impl Envelope<'_> {
        pub(super) fn into_request(self) -> (Option<WritebackRequest>, String) {
            let Some(Obj(event)) = self.event else {
                return (None, "unknown".to_owned());
            };
            let event_type = owned(&event.event_type);
            let label = event_type.clone().unwrap_or_else(|| "unknown".to_owned());
            let Some(event_type) = event_type.filter(|t| HANDLED.contains(&t.as_str())) else {
                return (None, label);
            };
            let Some(event_id) = owned(&event.id) else {
                return (None, label);
            };
            let data = event.data.map(|Obj(d)| d);
            let note_event = data
                .as_ref()
                .is_some_and(|d| d.kind.as_deref() == Some("incident_note"));
            let incident: Option<&Data<'_>> = if note_event {
                data.as_ref()
                    .and_then(|d| d.incident.as_ref())
                    .map(|Obj(i)| &**i)
            } else {
                data.as_ref()
            };
            let agent = event.agent.as_ref().map(|Obj(a)| a);
            let req = WritebackRequest {
                event_id,
                event_type,
                incident_id: incident.and_then(|i| owned(&i.id)),
                incident_key: incident.and_then(|i| owned(&i.incident_key)),
                incident_number: incident.and_then(|i| i.number),
                incident_url: incident.and_then(|i| owned(&i.html_url)),
                incident_title: incident
                    .and_then(|i| owned(&i.title).or_else(|| owned(&i.summary))),
                agent_name: agent.and_then(|a| owned(&a.summary)),
                agent_type: agent.and_then(|a| owned(&a.kind)),
                assignees: incident
                    .and_then(|i| i.assignees.as_ref())
                    .map(|a| a.iter().filter_map(|Obj(r)| owned(&r.summary)).collect())
                    .unwrap_or_default(),
                note: if note_event {
                    data.as_ref().and_then(|d| owned(&d.content))
                } else {
                    None
                },
            };
            (Some(req), label)
        }
    }
}

pub async fn receive(
    State(s): State<WebState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let raw = read_json_body(&headers, body, s.config.server.webhook_body_limit).await?;
    let secrets = match &s.webhook_secrets {
        None => Vec::new(),
        Some(sec) => match sec.current() {
            Ok(v) => signature::parse_secrets(&v),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the webhook secrets");
                Vec::new()
            }
        },
    };
    let header = headers
        .get("x-pagerduty-signature")
        .and_then(|v| v.to_str().ok());
    let verdict = signature::verify(&secrets, header, &raw);
    s.metrics.verification(verdict);
    if let Err(e) = verdict {
        tracing::warn!(reason = e.label(), "PagerDuty webhook refused");
        let status = if e == SignatureError::NoSecrets {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNAUTHORIZED
        };
        return Err(ApiError::new(
            status,
            "invalid_signature",
            format!(
                "{e}; the webhook subscription's signing secret must be in pagerduty.webhook_secrets_file"
            ),
        ));
    }
    let (req, event_type) = parse_delivery(&raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the webhook body is not JSON: {e}"),
        )
    })?;
    let webhook_id = headers
        .get("x-webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let duplicate = |id: &str| {
        tracing::info!(webhook_id = %id, "PagerDuty webhook redelivered; already taken");
        Ok((StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response())
    };
    if let Some(id) = &webhook_id
        && s.seen_webhooks.contains_key(id)
    {
        return duplicate(id);
    }
    let Some(req) = req else {
        if let Some(id) = webhook_id {
            s.seen_webhooks.insert(id, ());
        }
        let t = event_type.as_str();
        tracing::debug!(event_type = t, "PagerDuty webhook event not handled");
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"status": "ignored"})),
        )
            .into_response());
    };
    // A place in the queue before the id is recorded: a delivery refused for want of room must
    // not be taken for a duplicate when PagerDuty delivers it again.
    let permit = match s.writebacks.try_reserve() {
        Ok(p) => p,
        Err(mpsc::error::TrySendError::Full(())) => {
            s.metrics.writeback_queue_full();
            let id = webhook_id.as_deref().unwrap_or("");
            if warn_now() {
                tracing::warn!(
                    event_id = %req.event_id,
                    webhook_id = id,
                    queue = s.config.web.writeback_queue,
                    "PagerDuty webhooks refused with 503: the write-back queue is full (bridge_web_writebacks_total{{outcome=\"queue_full\"}} counts them)"
                );
            } else {
                tracing::debug!(event_id = %req.event_id, webhook_id = id, "PagerDuty webhook refused: the write-back queue is full");
            }
            return Ok(queue_full(&s));
        }
        Err(mpsc::error::TrySendError::Closed(())) => {
            // The dispatcher stopped: the bridge is shutting down. PagerDuty retries elsewhere.
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the bridge is stopping; PagerDuty delivers the webhook again",
            ));
        }
    };
    if let Some(id) = &webhook_id {
        // Atomic: of two concurrent deliveries of one id, one is queued, the other a duplicate.
        if !s.seen_webhooks.entry(id.clone()).or_insert(()).is_fresh() {
            return duplicate(id);
        }
    }
    // Counted before the send, so that the dispatcher's decrement never comes first.
    s.metrics.writeback_queue_depth.inc();
    permit.send(WritebackJob { req, webhook_id });
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "accepted"})),
    )
        .into_response())
}

/// At most one warning every 10 s for a full queue: a flood of refused deliveries must not
/// become a flood of log lines (the metric counts every one).
fn warn_now() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    (last == 0 || now.saturating_sub(last) >= 10)
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

/// 503 with `Retry-After`: PagerDuty treats any non-2xx as a failed delivery and delivers again.
fn queue_full(s: &WebState) -> Response {
    let mut r = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "queue_full",
        format!(
            "{} PagerDuty write-backs are already waiting (web.writeback_queue) for the {} in progress (web.writeback_concurrency); retry after {QUEUE_FULL_RETRY_AFTER_SECS} s, PagerDuty delivers the webhook again on its own",
            s.config.web.writeback_queue, s.config.web.writeback_concurrency
        ),
    )
    .into_response();
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(QUEUE_FULL_RETRY_AFTER_SECS),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The general reading of a body, as the handler did it before the typed one.
    fn general(raw: &[u8]) -> Option<(Option<Value>, String)> {
        let v: Value = serde_json::from_slice(raw).ok()?;
        let t = v["event"]["event_type"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned();
        Some((
            writeback_request(&v).map(|r| serde_json::to_value(r).unwrap()),
            t,
        ))
    }

    fn fast_path(raw: &[u8]) -> Option<(Option<Value>, String)> {
        let fast::Obj(env) = serde_json::from_slice::<fast::Obj<fast::Envelope<'_>>>(raw).ok()?;
        let (r, t) = env.into_request();
        Some((r.map(|r| serde_json::to_value(r).unwrap()), t))
    }

    #[test]
    fn typed_reading_agrees_with_the_general_one() {
        let incident: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/pagerduty/webhook-v3-data-incident.json"
        ))
        .unwrap();
        let note: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/pagerduty/webhook-v3-data-incident_note.json"
        ))
        .unwrap();
        let agent = json!({"summary": "Tenex Engineer", "type": "user_reference", "id": "P1"});
        let mut bodies: Vec<Vec<u8>> = vec![
            include_bytes!("../../tests/fixtures/pagerduty/webhookv3-test-vector-body.json")
                .to_vec(),
            include_bytes!(
                "../../tests/fixtures/pagerduty/webhook-v3-envelope-incident.priority_updated.json"
            )
            .to_vec(),
            include_bytes!(
                "../../tests/fixtures/pagerduty/webhook-v3-envelope-service.updated.json"
            )
            .to_vec(),
        ];
        for t in HANDLED {
            for data in [&incident, &note] {
                bodies.push(
                    json!({"event": {"id": "E1", "event_type": t, "agent": agent, "data": data}})
                        .to_string()
                        .into_bytes(),
                );
            }
        }
        // PagerDuty's own payloads all take the typed way.
        let regular = bodies.len();
        let acked = |data: Value| json!({"event": {"id": "E1", "event_type": "incident.acknowledged", "agent": null, "data": data}});
        // Escapes, nulls, missing parts, and every kind of unexpected JSON type.
        for v in [
            acked(
                json!({"id": "P\"1\u{e9}\n", "incident_key": "k", "number": 3, "title": null, "summary": "s"}),
            ),
            acked(json!({"id": "P1", "number": -1})),
            acked(json!({"id": "P1", "number": 2.5})),
            acked(json!({"id": 7, "incident_key": ["k"]})),
            acked(json!({"assignees": [{"summary": "A"}, "B", {"summary": 1}, {"x": 1}]})),
            acked(json!({"assignees": {"summary": "A"}})),
            acked(json!({"type": "incident_note", "content": "hi", "incident": "P1"})),
            acked(json!({"type": "incident_note", "content": 5, "incident": {"id": "P1"}})),
            acked(json!(["P1", "k"])),
            acked(json!("text")),
            acked(Value::Null),
            json!({"event": {"id": "E1", "event_type": "incident.resolved", "agent": ["A", "user_reference"], "data": {"id": "P1"}}}),
            json!({"event": {"id": null, "event_type": "incident.resolved"}}),
            json!({"event": {"id": "E1", "event_type": 1}}),
            json!({"event": {"id": "E1"}}),
            json!({"event": null}),
            json!({"event": "incident.resolved"}),
            json!({"event": [{"id": "E1", "event_type": "incident.resolved"}]}),
            json!([{"id": "E1", "event_type": "incident.resolved"}]),
            json!({}),
            json!(null),
        ] {
            bodies.push(v.to_string().into_bytes());
        }
        bodies.push(
            br#"{"event": {"id": "E1", "id": "E2", "event_type": "incident.resolved", "data": {}}}"#
                .to_vec(),
        );
        bodies.push(br#"{"event": {"id": "E1", "event_type": "incident.resolved"}} x"#.to_vec());
        bodies.push(
            br#"{"event": {"id": "E\u0031", "event_type": "incident.acknowledged", "data": {"id": "P\/1", "title": "caf\u00e9"}}}"#
                .to_vec(),
        );
        bodies.push(b"not json".to_vec());
        let mut fast_taken = 0;
        for (i, raw) in bodies.iter().enumerate() {
            let text = String::from_utf8_lossy(raw);
            assert!(i >= regular || fast_path(raw).is_some(), "{text}");
            let want = general(raw);
            if let Some(got) = fast_path(raw) {
                fast_taken += 1;
                assert_eq!(Some(&got), want.as_ref(), "{text}");
            }
            let got = parse_delivery(raw)
                .ok()
                .map(|(r, t)| (r.map(|r| serde_json::to_value(r).unwrap()), t));
            assert_eq!(got, want, "{text}");
        }
        assert!(
            fast_taken >= 12,
            "the typed reading took only {fast_taken} bodies"
        );
    }

    #[test]
    fn envelopes_become_writeback_requests() {
        let data: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/pagerduty/webhook-v3-data-incident.json"
        ))
        .unwrap();
        let env = json!({"event": {"id": "E1", "event_type": "incident.acknowledged",
            "agent": {"summary": "Tenex Engineer", "type": "user_reference"}, "data": data}});
        let r = writeback_request(&env).unwrap();
        assert_eq!(
            r.incident_key.as_deref(),
            Some("d3640fbd41094207a1c11e58e46b1662")
        );
        assert_eq!(r.incident_number, Some(2));
        assert_eq!(r.agent_name.as_deref(), Some("Tenex Engineer"));
        assert_eq!(r.assignees, ["User 123"]);
        let note: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/pagerduty/webhook-v3-data-incident_note.json"
        ))
        .unwrap();
        let env = json!({"event": {"id": "E2", "event_type": "incident.annotated", "data": note}});
        let r = writeback_request(&env).unwrap();
        assert_eq!(r.incident_id.as_deref(), Some("PGR0VU2"));
        assert!(r.incident_key.is_none());
        assert_eq!(
            r.note.as_deref(),
            Some("I sure am glad we are using PagerDuty!")
        );
        let vector: Value = serde_json::from_slice(include_bytes!(
            "../../tests/fixtures/pagerduty/webhookv3-test-vector-body.json"
        ))
        .unwrap();
        assert!(
            writeback_request(&vector).is_none(),
            "priority_updated is not handled"
        );
    }
}
