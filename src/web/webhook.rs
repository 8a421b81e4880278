//! `POST /api/v1/pagerduty/webhook`: PagerDuty Webhooks v3 in, OneView write-back out.
//!
//! The signature is verified on the raw body before anything is parsed. The answer (202) goes
//! out at once; the write-back runs in the background, because PagerDuty gives a delivery 5 s
//! and OneView may be slower. Deliveries are de-duplicated by `X-Webhook-Id` on this replica;
//! across replicas and restarts the write-back itself is idempotent (it looks for the event's
//! marker in the alert's change log before adding a note).

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backon::{ExponentialBuilder, Retryable};
use serde_json::{Value, json};

use crate::http::ApiError;
use crate::web::api::{WebState, read_json_body};
use crate::web::control::{WritebackOutcome, WritebackReport, WritebackRequest};
use crate::web::signature::{self, SignatureError};

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
pub fn writeback_request(envelope: &Value) -> Option<WritebackRequest> {
    let event = envelope.get("event")?;
    let event_type = str_at(event, &["event_type"])?;
    if !HANDLED.contains(&event_type.as_str()) {
        return None;
    }
    let data = event.get("data").cloned().unwrap_or_default();
    let note_event = data.get("type").and_then(Value::as_str) == Some("incident_note");
    let incident = if note_event {
        data.get("incident").cloned().unwrap_or_default()
    } else {
        data.clone()
    };
    Some(WritebackRequest {
        event_id: str_at(event, &["id"])?,
        event_type,
        incident_id: str_at(&incident, &["id"]),
        incident_key: str_at(&incident, &["incident_key"]),
        incident_number: incident.get("number").and_then(Value::as_u64),
        incident_url: str_at(&incident, &["html_url"]),
        incident_title: str_at(&incident, &["title"]).or_else(|| str_at(&incident, &["summary"])),
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
        note: note_event.then(|| str_at(&data, &["content"])).flatten(),
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
    let event_id = req.event_id.clone();
    tokio::spawn(async move {
        let control = s.control.clone();
        let attempt = || {
            let control = control.clone();
            let req = req.clone();
            async move {
                let r = control.writeback(req).await;
                match r.outcome {
                    WritebackOutcome::Failed | WritebackOutcome::Unavailable => Err(r),
                    _ => Ok(r),
                }
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
                tracing::error!(event_id = %event_id, detail = %r.detail, "PagerDuty write-back to OneView failed");
                r
            }
        };
        s.metrics.writeback(report.outcome);
        tracing::info!(event_id = %event_id, outcome = report.outcome.label(), detail = %report.detail, "PagerDuty webhook processed");
    });
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
