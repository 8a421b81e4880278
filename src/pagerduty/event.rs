//! Events API v2 wire types and how a OneView alert becomes one: the `dedup_key` (whose format
//! is a compatibility promise), the severity mapping, the summary an on-call engineer reads, the
//! payload fields PagerDuty event rules route on, and the 512,000-byte request cap.
//!
//! The routing key is not part of [`Event`]: it is a secret, read from its [`Secret`] at send
//! time and only ever written into the request body (see [`Encoded::to_body`]).
//!
//! [`Secret`]: crate::secret::Secret

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use url::Url;

use crate::model::{Alert, Appliance};

/// PagerDuty truncates nothing for us: a summary above this many characters is a 400.
pub const MAX_SUMMARY_CHARS: usize = 1024;
/// Longest `source`, `component`, `group`, `class` and link `href` kept: the values come from
/// OneView (and `oneview.name`) unchecked, and one huge field must not push the event over
/// PagerDuty's body limit, which only `custom_details` can give way for.
pub const MAX_FIELD_CHARS: usize = 1024;
/// PagerDuty's limit on `dedup_key`, in characters.
pub const MAX_DEDUP_KEY_CHARS: usize = 255;
/// PagerDuty rejects request bodies of this many bytes or more.
pub const MAX_BODY_BYTES: usize = 512_000;
/// Room kept for the routing key and its JSON field when sizing an event before the key is known.
const ROUTING_KEY_ALLOWANCE: usize = 128;
/// Longest string kept in `custom_details` when an event has to shrink.
const SHRUNK_DETAIL_CHARS: usize = 1024;

/// What an event asks PagerDuty to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Trigger,
    Acknowledge,
    Resolve,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Trigger => "trigger",
            Action::Acknowledge => "acknowledge",
            Action::Resolve => "resolve",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `payload` of an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub summary: String,
    pub source: String,
    pub severity: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty", default)]
    pub custom_details: Map<String, Value>,
}

/// One `links[]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub href: String,
    pub text: String,
}

/// An Events API v2 event without its routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_action: Action,
    pub dedup_key: String,
    pub payload: Payload,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_url: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub links: Vec<Link>,
}

impl Event {
    /// The request body: the event with `routing_key` added.
    pub fn to_body(&self, routing_key: &str) -> Vec<u8> {
        Encoded::new(self).to_body(routing_key)
    }

    /// Exact size of the body once a routing key of ordinary length is added.
    fn estimated_size(&self) -> usize {
        serde_json::to_vec(self).map(|v| v.len()).unwrap_or(0) + ROUTING_KEY_ALLOWANCE
    }

    /// A bound the body size cannot exceed, without serializing: a JSON string takes at most
    /// six bytes per input byte (`\u00XX`) plus its quotes. `None` when a detail is not a
    /// plain string (only resumed events from an older outbox can have one).
    fn size_upper_bound(&self) -> Option<usize> {
        fn s(x: &str) -> usize {
            2 + 6 * x.len()
        }
        fn o(x: &Option<String>) -> usize {
            x.as_deref().map_or(0, s)
        }
        let p = &self.payload;
        // Field names, punctuation and the action: under 400 bytes in all.
        let mut n = STRUCTURE_ALLOWANCE + ROUTING_KEY_ALLOWANCE;
        n += s(&self.dedup_key) + s(&p.summary) + s(&p.source) + s(&p.severity);
        n += o(&p.timestamp) + o(&p.component) + o(&p.group) + o(&p.class);
        n += o(&self.client) + o(&self.client_url);
        for l in &self.links {
            n += 32 + s(&l.href) + s(&l.text);
        }
        for (k, v) in &p.custom_details {
            let Value::String(v) = v else { return None };
            n += 2 + s(k) + s(v);
        }
        Some(n)
    }
}

/// Bytes of field names and punctuation an event can have besides its string values.
const STRUCTURE_ALLOWANCE: usize = 512;

/// An event serialized once, when it is queued: the same JSON goes to the state store's outbox
/// and, with the routing key spliced in front, to PagerDuty. Keeping the bytes rather than the
/// [`Event`] also makes a long queue cheaper in memory.
#[derive(Debug)]
pub struct Encoded {
    pub action: Action,
    /// For the status page and the delivery log.
    pub summary: Box<str>,
    pub severity: Box<str>,
    /// The event without its routing key: a JSON object with at least `event_action`.
    json: Box<serde_json::value::RawValue>,
}

impl Encoded {
    pub fn new(ev: &Event) -> Self {
        // Plain strings and string maps always serialize; the fallback keeps the object shape
        // `to_body` relies on.
        let json = serde_json::value::to_raw_value(ev).unwrap_or_else(|_| {
            serde_json::value::to_raw_value(&serde_json::json!({"event_action": ev.event_action}))
                .unwrap_or_default()
        });
        Self {
            action: ev.event_action,
            summary: ev.payload.summary.as_str().into(),
            severity: ev.payload.severity.as_str().into(),
            json,
        }
    }

    /// The event as stored (no routing key).
    pub fn json(&self) -> &serde_json::value::RawValue {
        &self.json
    }

    /// The request body: `{"routing_key":"…",` followed by the event's fields.
    pub fn to_body(&self, routing_key: &str) -> Vec<u8> {
        let event = self.json.get().as_bytes();
        let mut out = Vec::with_capacity(event.len() + routing_key.len() + 20);
        out.extend_from_slice(b"{\"routing_key\":");
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, routing_key);
        match event.get(1..) {
            // `event` is an object with at least one field: `{"event_action":…}`.
            Some(rest) if event.first() == Some(&b'{') && rest.first() != Some(&b'}') => {
                out.push(b',');
                out.extend_from_slice(rest);
            }
            _ => out.push(b'}'),
        }
        out
    }
}

/// Everything event building needs from the configuration.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// OneView severity -> PagerDuty severity; anything missing maps to `error`.
    pub severity_map: BTreeMap<String, String>,
    pub client: Option<String>,
    pub client_url: Option<String>,
    /// Overrides the appliance's own UI URL in incident links.
    pub oneview_ui_url: Option<Url>,
}

impl EventContext {
    pub fn from_config(pd: &crate::config::PagerDutyConfig) -> Self {
        Self {
            severity_map: pd.severity_map.clone(),
            client: Some(pd.client.clone()).filter(|c| !c.is_empty()),
            client_url: pd.client_url.as_ref().map(Url::to_string),
            oneview_ui_url: pd.oneview_ui_url.clone(),
        }
    }

    /// PagerDuty severity of a OneView severity; unknown values become `error` so that a new
    /// OneView severity still pages instead of being dropped.
    pub fn pd_severity(&self, oneview: &str) -> String {
        self.severity_map
            .get(oneview)
            .cloned()
            .unwrap_or_else(|| "error".to_owned())
    }
}

/// The `dedup_key` of an alert.
///
/// Format (stable forever: changing it would orphan every open incident, whose resolves would
/// then carry a key PagerDuty has never seen):
///
/// - `oneview:{appliance id}:{alert uri}`, for example `oneview:ov1.example.com:/rest/alerts/49`,
///   where the appliance id is `oneview.name` or else the host of `oneview.url`;
/// - when that would exceed 255 characters: `oneview:sha256:{hex}` where `{hex}` is the
///   lowercase SHA-256 of `{appliance id}\n{alert uri}` (78 characters).
pub fn dedup_key(appliance_id: &str, alert_uri: &str) -> String {
    let plain = format!("oneview:{appliance_id}:{alert_uri}");
    if plain.chars().count() <= MAX_DEDUP_KEY_CHARS {
        return plain;
    }
    let mut h = Sha256::new();
    h.update(appliance_id.as_bytes());
    h.update(b"\n");
    h.update(alert_uri.as_bytes());
    format!("oneview:sha256:{}", hex::encode(h.finalize()))
}

/// At most `max` characters of `s`, cut on a character boundary, with `…` as the last
/// character when something was cut.
pub fn truncate_chars(s: &str, max: usize) -> String {
    if max == 0 {
        return String::new();
    }
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some(_) => {
            let keep = s
                .char_indices()
                .nth(max - 1)
                .map(|(i, _)| i)
                .unwrap_or(s.len());
            let mut out = String::with_capacity(keep + 3);
            out.push_str(&s[..keep]);
            out.push('…');
            out
        }
    }
}

/// `{Severity}: {resource name} - {description}`, at most [`MAX_SUMMARY_CHARS`] characters.
pub fn summary(alert: &Alert, appliance: &Appliance) -> String {
    let what = alert
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .or(alert.alert_type_id.as_deref())
        .unwrap_or("OneView alert");
    let resource = alert.resource_name().unwrap_or(&appliance.id);
    let text = format!("{}: {} - {}", alert.severity, resource, what);
    truncate_chars(&text, MAX_SUMMARY_CHARS)
}

/// The fields whose change makes an update worth a new trigger: PagerDuty severity and
/// description. Kept per open incident (and in the ledger) as a short hash.
pub fn fingerprint(pd_severity: &str, alert: &Alert) -> u64 {
    let mut h = Sha256::new();
    h.update(pd_severity.as_bytes());
    h.update([0]);
    h.update(alert.description.as_deref().unwrap_or("").as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// Whether `s` parses as an RFC 3339 date-time, which the schema asks of `timestamp`.
fn is_rfc3339(s: &str) -> bool {
    chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

fn ui_link(base: &str, alert_uri: &str) -> Option<String> {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        return None;
    }
    // OneView's web UI opens a resource's page at `#/<view>/r<resource uri>`.
    Some(format!("{base}/#/activity/r{alert_uri}"))
}

/// Builds the event PagerDuty must hear for `alert` (a trigger, or a resolve: resolves carry
/// the same payload because event rules route on it).
pub fn build(action: Action, alert: &Alert, appliance: &Appliance, ctx: &EventContext) -> Event {
    // A cleared alert often carries severity `OK`, which has no PagerDuty equivalent: the
    // resolve then says `info` rather than the `error` an unknown severity would map to.
    let severity = if action == Action::Resolve && alert.severity == crate::model::Severity::Ok {
        "info".to_owned()
    } else {
        ctx.pd_severity(alert.severity.as_str())
    };
    let source = alert
        .resource_name()
        .or(Some(&*appliance.id).filter(|s| !s.trim().is_empty()))
        .map(|s| truncate_chars(s, MAX_FIELD_CHARS))
        .unwrap_or_else(|| "oneview".to_owned());
    let mut details = Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            details.insert(k.to_owned(), Value::String(v.to_owned()));
        }
    };
    put("description", alert.description.as_deref());
    put("correctiveAction", alert.corrective_action.as_deref());
    put("urgency", alert.urgency.as_deref());
    put("healthCategory", alert.health_category.as_deref());
    put("alertState", Some(alert.alert_state.as_str()));
    put("severity", Some(alert.severity.as_str()));
    put("alertUri", Some(&alert.uri));
    put(
        "resourceUri",
        alert
            .associated_resource
            .as_ref()
            .and_then(|r| r.resource_uri.as_deref())
            .or(alert.resource_uri.as_deref()),
    );
    put("appliance", Some(&appliance.id));
    let ui_base = ctx
        .oneview_ui_url
        .as_ref()
        .map(Url::as_str)
        .unwrap_or(&appliance.ui_url);
    let links = ui_link(ui_base, &alert.uri)
        .filter(|href| href.len() <= MAX_FIELD_CHARS)
        .map(|href| Link {
            href,
            text: "Alert in HPE OneView".to_owned(),
        })
        .into_iter()
        .collect();
    let mut event = Event {
        event_action: action,
        dedup_key: dedup_key(&appliance.id, &alert.uri),
        payload: Payload {
            summary: summary(alert, appliance),
            source,
            severity,
            timestamp: alert
                .created
                .as_ref()
                .map(ToString::to_string)
                .filter(|t| is_rfc3339(t)),
            component: alert
                .resource_category()
                .map(|c| truncate_chars(c, MAX_FIELD_CHARS)),
            group: Some(truncate_chars(&appliance.id, MAX_FIELD_CHARS)).filter(|g| !g.is_empty()),
            class: alert
                .alert_type_id
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(|c| truncate_chars(c, MAX_FIELD_CHARS)),
            custom_details: details,
        },
        client: ctx.client.clone(),
        client_url: ctx.client_url.clone(),
        links,
    };
    fit_size(&mut event);
    event
}

/// Keeps the request under [`MAX_BODY_BYTES`]: long `custom_details` strings are cut first,
/// then `custom_details` is replaced by a note. The key and the summary are never touched.
pub fn fit_size(event: &mut Event) {
    // The bound spares the serialization for every ordinary event.
    if event.size_upper_bound().is_some_and(|n| n < MAX_BODY_BYTES)
        || event.estimated_size() < MAX_BODY_BYTES
    {
        return;
    }
    for v in event.payload.custom_details.values_mut() {
        if let Value::String(s) = v {
            if s.chars().count() > SHRUNK_DETAIL_CHARS {
                *s = truncate_chars(s, SHRUNK_DETAIL_CHARS);
            }
        } else {
            let text = v.to_string();
            if text.len() > SHRUNK_DETAIL_CHARS {
                *v = Value::String(truncate_chars(&text, SHRUNK_DETAIL_CHARS));
            }
        }
    }
    if event.estimated_size() < MAX_BODY_BYTES {
        return;
    }
    let mut note = Map::new();
    note.insert(
        "truncated".to_owned(),
        Value::String("custom_details removed: the event exceeded PagerDuty's 512,000-byte limit; see the alert in OneView".to_owned()),
    );
    event.payload.custom_details = note;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AssociatedResource, Severity};
    use std::sync::Arc;

    fn appliance() -> Appliance {
        Appliance {
            id: Arc::from("ov1"),
            ui_url: Arc::from("https://ov1.example.com"),
        }
    }

    fn ctx() -> EventContext {
        EventContext {
            severity_map: crate::config::default_severity_map(),
            client: Some("bridge".into()),
            client_url: None,
            oneview_ui_url: None,
        }
    }

    #[test]
    fn dedup_key_format_is_stable_and_bounded() {
        assert_eq!(
            dedup_key("ov1.example.com", "/rest/alerts/49"),
            "oneview:ov1.example.com:/rest/alerts/49"
        );
        let long = "x".repeat(300);
        let k = dedup_key(&long, "/rest/alerts/1");
        assert!(k.starts_with("oneview:sha256:"));
        assert_eq!(k.len(), 15 + 64);
        assert_eq!(k, dedup_key(&long, "/rest/alerts/1"));
        assert_ne!(k, dedup_key(&long, "/rest/alerts/2"));
    }

    #[test]
    fn truncation_respects_char_boundaries() {
        let s = "é".repeat(2000);
        let t = truncate_chars(&s, 1024);
        assert_eq!(t.chars().count(), 1024);
        assert!(t.ends_with('…'));
        assert_eq!(truncate_chars("short", 1024), "short");
        assert_eq!(truncate_chars(&"a".repeat(1024), 1024).len(), 1024);
    }

    #[test]
    fn summary_reads_like_the_issue_example() {
        let a = Alert {
            uri: "/rest/alerts/1".into(),
            severity: Severity::Critical,
            description: Some("The iLO for the server hardware reports a failed fan".into()),
            associated_resource: Some(
                AssociatedResource {
                    resource_name: Some("SGH817YECA, bay 5".into()),
                    ..Default::default()
                }
                .into(),
            ),
            ..Default::default()
        };
        assert_eq!(
            summary(&a, &appliance()),
            "Critical: SGH817YECA, bay 5 - The iLO for the server hardware reports a failed fan"
        );
        let e = build(Action::Trigger, &a, &appliance(), &ctx());
        assert_eq!(e.payload.severity, "critical");
        assert_eq!(
            e.links[0].href,
            "https://ov1.example.com/#/activity/r/rest/alerts/1"
        );
    }

    #[test]
    fn spliced_body_is_the_event_plus_the_routing_key() {
        let a = Alert {
            uri: "/rest/alerts/7".into(),
            severity: Severity::Critical,
            description: Some("quote \" backslash \\ and é".into()),
            ..Default::default()
        };
        let e = build(Action::Trigger, &a, &appliance(), &ctx());
        let body: Value = serde_json::from_slice(&e.to_body("key\"1")).unwrap();
        let mut want = serde_json::to_value(&e).unwrap();
        want["routing_key"] = Value::String("key\"1".into());
        assert_eq!(body, want);
        let enc = Encoded::new(&e);
        assert_eq!(enc.action, Action::Trigger);
        assert_eq!(&*enc.summary, e.payload.summary);
        let back: Event = serde_json::from_str(enc.json().get()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn size_bound_is_never_below_the_real_size() {
        for text in ["plain", "\u{1}\u{2}\u{1f}", "é\"\\\n", ""] {
            let a = Alert {
                uri: format!("/rest/alerts/{text}"),
                severity: Severity::Warning,
                description: Some(text.repeat(100).into()),
                corrective_action: Some(text.repeat(50).into()),
                ..Default::default()
            };
            let e = build(Action::Resolve, &a, &appliance(), &ctx());
            let bound = e.size_upper_bound().unwrap();
            assert!(bound >= e.to_body(&"k".repeat(32)).len(), "{text:?}");
        }
    }

    #[test]
    fn unknown_severity_maps_to_error() {
        assert_eq!(ctx().pd_severity("Catastrophic"), "error");
    }

    #[test]
    fn oversized_details_shrink_but_key_and_summary_stay() {
        let a = Alert {
            uri: "/rest/alerts/1".into(),
            severity: Severity::Warning,
            description: Some("d".repeat(600_000).into()),
            corrective_action: Some("c".repeat(600_000).into()),
            ..Default::default()
        };
        let e = build(Action::Trigger, &a, &appliance(), &ctx());
        assert!(e.to_body(&"k".repeat(32)).len() < MAX_BODY_BYTES);
        assert_eq!(e.payload.summary.chars().count(), MAX_SUMMARY_CHARS);
        assert_eq!(e.dedup_key, "oneview:ov1:/rest/alerts/1");
    }
}
