//! What the delivery pipeline writes to the state store, and how it reads it back at startup.
//!
//! The store treats payloads as opaque; this module owns their shape: a [`StoredEvent`] is the
//! event without its routing key (a secret never goes to disk) plus the route name that picks
//! the key again when the event is resumed, so a rotated routing key is used for it.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use serde_json::value::RawValue;

use super::event::{self, Encoded, Event};
use super::status;
use crate::state::{self, Op, OutboxEntry};

/// The payload of an outbox entry or a dead letter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub route: String,
    /// HTTP status of a dead letter (0 when there was no answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub event: Event,
}

/// [`StoredEvent`] as written: the event's JSON is copied as is rather than serialized again.
#[derive(Serialize)]
struct StoredEventOut<'a> {
    route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    event: &'a RawValue,
}

/// The pipeline's action as the store spells it; `None` for acknowledge (never persisted).
pub(crate) fn to_state(a: event::Action) -> Option<state::Action> {
    match a {
        event::Action::Trigger => Some(state::Action::Trigger),
        event::Action::Resolve => Some(state::Action::Resolve),
        event::Action::Acknowledge => None,
    }
}

pub(crate) fn from_state(a: state::Action) -> event::Action {
    match a {
        state::Action::Trigger => event::Action::Trigger,
        state::Action::Resolve => event::Action::Resolve,
    }
}

pub(crate) fn fingerprint_str(fp: u64) -> String {
    format!("{fp:016x}")
}

pub(crate) fn parse_fingerprint(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// The `Enqueue` op of an event about to be queued.
pub(crate) fn enqueue_op(
    seq: u64,
    key: &str,
    route: &str,
    priority: u8,
    fingerprint: u64,
    ev: &Encoded,
) -> Option<Op> {
    let action = to_state(ev.action)?;
    let payload = serde_json::to_string(&StoredEventOut {
        route,
        status: None,
        message: None,
        event: ev.json(),
    })
    .ok()?;
    Some(Op::Enqueue(OutboxEntry {
        seq,
        key: key.to_owned(),
        action,
        priority,
        enqueued_at: SystemTime::now(),
        fingerprint: fingerprint_str(fingerprint),
        payload,
    }))
}

/// The `Accepted` op after PagerDuty's 202.
pub(crate) fn accepted_op(
    seq: u64,
    key: &str,
    route: &str,
    fingerprint: u64,
    action: event::Action,
) -> Op {
    match to_state(action) {
        Some(action) => Op::Accepted {
            seq,
            key: key.to_owned(),
            action,
            fingerprint: fingerprint_str(fingerprint),
            at: SystemTime::now(),
            route: route.to_owned(),
        },
        None => Op::Cancelled { seq },
    }
}

/// The `DeadLetter` op for a rejected event (or one whose route is gone); `reason` is the one
/// line an operator reads.
pub(crate) fn dead_letter_op(seq: u64, d: &status::DeadLetter, ev: &Encoded, reason: &str) -> Op {
    let payload = serde_json::to_string(&StoredEventOut {
        route: &d.route,
        status: Some(d.status),
        message: d.message.as_deref(),
        event: ev.json(),
    })
    .unwrap_or_default();
    match to_state(d.action) {
        Some(action) => Op::DeadLetter {
            seq,
            entry: state::DeadLetter {
                key: d.dedup_key.clone(),
                action,
                reason: reason.to_owned(),
                errors: d.errors.clone(),
                at: SystemTime::now(),
                payload,
            },
        },
        None => Op::Cancelled { seq },
    }
}

/// A stored dead letter as the status page shows it.
pub(crate) fn dead_letter_status(d: &state::DeadLetter) -> status::DeadLetter {
    let stored: Option<StoredEvent> = serde_json::from_str(&d.payload).ok();
    status::DeadLetter {
        dedup_key: d.key.clone(),
        action: from_state(d.action),
        route: stored
            .as_ref()
            .map(|s| s.route.clone())
            .unwrap_or_else(|| super::routing::DEFAULT_ROUTE.to_owned()),
        status: stored.as_ref().and_then(|s| s.status).unwrap_or(0),
        message: stored
            .and_then(|s| s.message)
            .or_else(|| Some(d.reason.clone())),
        errors: d.errors.clone(),
        time: chrono::DateTime::<chrono::Utc>::from(d.at),
    }
}

/// Decodes an outbox entry; `None` when its payload is not a stored event of this version.
pub(crate) fn decode(e: &OutboxEntry) -> Option<StoredEvent> {
    serde_json::from_str(&e.payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_events_read_back() {
        let ev = event::Event {
            event_action: event::Action::Trigger,
            dedup_key: "oneview:ov1:/rest/alerts/1".into(),
            payload: event::Payload {
                summary: "Critical: x - y".into(),
                source: "x".into(),
                severity: "critical".into(),
                timestamp: None,
                component: None,
                group: None,
                class: None,
                custom_details: serde_json::Map::new(),
            },
            client: None,
            client_url: None,
            links: vec![],
        };
        let Some(Op::Enqueue(entry)) = enqueue_op(3, "k", "default", 0, 42, &Encoded::new(&ev))
        else {
            panic!("a trigger is persisted");
        };
        let back = decode(&entry).unwrap();
        assert_eq!(back.route, "default");
        assert_eq!(back.event, ev);
        assert_eq!(parse_fingerprint(&entry.fingerprint), Some(42));
    }

    #[test]
    fn fingerprints_round_trip() {
        for fp in [0, 1, u64::MAX, 0xdead_beef] {
            assert_eq!(parse_fingerprint(&fingerprint_str(fp)), Some(fp));
        }
    }
}
