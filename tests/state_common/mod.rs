//! Builders shared by the state store tests.
#![allow(dead_code)] // Each test crate uses a different part.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bridge::state::{Action, DeadLetter, Op, OutboxEntry};

/// A fixed instant, so records compare equal after a round trip.
pub fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::new(1_790_000_000 + secs, 123_456_789)
}

/// A PagerDuty-event-shaped payload of about `pad` extra bytes.
pub fn payload(key: &str, action: Action, pad: usize) -> String {
    let action = match action {
        Action::Trigger => "trigger",
        Action::Resolve => "resolve",
    };
    serde_json::json!({
        "routing_key": "<routing key>",
        "event_action": action,
        "dedup_key": format!("oneview:{key}"),
        "payload": {
            "summary": format!("Alert {key}: {}", "x".repeat(pad)),
            "source": "enclosure-1, bay 3",
            "severity": "critical",
        },
    })
    .to_string()
}

pub fn entry(seq: u64, key: &str, action: Action) -> OutboxEntry {
    OutboxEntry {
        seq,
        key: key.to_owned(),
        action,
        priority: if action == Action::Resolve { 0 } else { 1 },
        enqueued_at: t(seq),
        fingerprint: format!("fp-{key}"),
        payload: payload(key, action, 16),
    }
}

pub fn enqueue(seq: u64, key: &str, action: Action) -> Op {
    Op::Enqueue(entry(seq, key, action))
}

pub fn accepted(seq: u64, key: &str, action: Action, at: SystemTime) -> Op {
    Op::Accepted {
        seq,
        key: key.to_owned(),
        action,
        fingerprint: format!("fp-{key}"),
        at,
        route: "default".to_owned(),
    }
}

pub fn dead_letter(key: &str, at: SystemTime) -> DeadLetter {
    DeadLetter {
        key: key.to_owned(),
        action: Action::Trigger,
        reason: "HTTP 400 from PagerDuty".to_owned(),
        errors: vec!["'payload.summary' is missing".to_owned()],
        at,
        payload: payload(key, Action::Trigger, 0),
    }
}
