//! `POST /api/v1/pagerduty/webhook`: PagerDuty Webhooks v3 in, OneView write-back out.
//!
//! The signature is verified on the raw body before anything is parsed. The answer (202) goes
//! out at once; the write-back runs in the background, because PagerDuty gives a delivery 5 s
//! and OneView may be slower. Deliveries are de-duplicated by `X-Webhook-Id` on this replica;
//! across replicas and restarts the write-back itself is idempotent (it looks for the event's
//! marker in the alert's change log before adding a note). Write-backs wait in a queue (in
//! memory, unbounded) for one of [`WRITEBACK_CONCURRENCY`] slots, so that a burst of deliveries
//! does not become a burst of requests to the appliance.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::http::ApiError;
use crate::web::api::{WebState, read_json_body};
use crate::web::control::{WritebackOutcome, WritebackReport, WritebackRequest};
use crate::web::signature::{self, SignatureError};

/// Write-backs in progress (with their retries) at once, talking to OneView or, on a web
/// replica, to the poller; the others wait in the queue. A task per delivery, unbounded, turned a
/// burst of deliveries into as many concurrent requests, each on a connection of its own (1,400
/// open sockets at 3,000 deliveries/s in the web benchmark): a flood for a real appliance.
pub const WRITEBACK_CONCURRENCY: usize = 8;

/// A verified delivery waiting for its write-back: small (a few hundred bytes), unlike the task
/// that runs it, so a long queue costs little memory.
pub struct WritebackJob {
    req: WritebackRequest,
    webhook_id: Option<String>,
}

/// Runs the queued write-backs, [`WRITEBACK_CONCURRENCY`] at a time, in arrival order, until
/// `work` is cancelled (write-backs still queued then are dropped and logged: PagerDuty's next
/// change of those incidents is written back as usual).
pub fn dispatcher(
    s: WebState,
    mut queue: mpsc::UnboundedReceiver<WritebackJob>,
    work: CancellationToken,
) -> crate::app::Task {
    Box::pin(async move {
        let slots = Arc::new(Semaphore::new(WRITEBACK_CONCURRENCY));
        loop {
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
            let s = s.clone();
            tokio::spawn(async move {
                write_back(&s, job).await;
                drop(slot);
            });
        }
        if !queue.is_empty() {
            tracing::warn!(
                queued = queue.len(),
                "stopping with PagerDuty write-backs still queued; they are not written to OneView"
            );
        }
    })
}

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
    let envelope: Value = serde_json::from_slice(&raw).map_err(|e| {
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
    if let Some(id) = &webhook_id {
        if s.seen_webhooks.contains_key(id) {
            tracing::info!(webhook_id = %id, "PagerDuty webhook redelivered; already taken");
            return Ok((StatusCode::OK, axum::Json(json!({"status": "duplicate"}))).into_response());
        }
        s.seen_webhooks.insert(id.clone(), ());
    }
    let Some(req) = writeback_request(&envelope) else {
        let t = envelope["event"]["event_type"]
            .as_str()
            .unwrap_or("unknown");
        tracing::debug!(event_type = t, "PagerDuty webhook event not handled");
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({"status": "ignored"})),
        )
            .into_response());
    };
    if let Err(mpsc::error::SendError(job)) = s.writebacks.send(WritebackJob { req, webhook_id }) {
        // The dispatcher stopped: the bridge is shutting down. PagerDuty retries elsewhere.
        if let Some(id) = &job.webhook_id {
            s.seen_webhooks.invalidate(id);
        }
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the bridge is stopping; PagerDuty delivers the webhook again",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"status": "accepted"})),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

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
