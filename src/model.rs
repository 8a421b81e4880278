//! The domain types shared by the OneView side and the PagerDuty side: a OneView alert as the
//! REST API (and SCMB) deliver it, the identity of an alert across appliances, and the typed
//! changes the poller emits.
//!
//! OneView adds enum values between releases and tells clients to ignore unknown ones, so
//! severities and states are open enums: an unknown value is kept as a string, never a parse
//! failure. Every field but `uri` is optional for the same reason.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod intern;
pub mod stamp;

pub use stamp::Stamp;

macro_rules! open_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
            /// A value this version of the bridge does not know, kept as sent.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $text,)+
                    $name::Other(s) => s.as_str(),
                }
            }

            pub fn parse(s: &str) -> Self {
                match s {
                    $($text => $name::$variant,)+
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Read borrowed where the format allows: a known value allocates nothing.
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a string")
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$name, E> {
                        Ok($name::parse(s))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

open_enum!(
    /// OneView alert severity.
    Severity {
        Ok => "OK",
        Warning => "Warning",
        Critical => "Critical",
        #[default]
        Unknown => "Unknown",
        Disabled => "Disabled",
    }
);

open_enum!(
    /// OneView alert state. `Locked` is active and cannot be cleared by a user.
    AlertState {
        #[default]
        Active => "Active",
        Locked => "Locked",
        Cleared => "Cleared",
    }
);

/// The resource an alert is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AssociatedResource {
    #[serde(deserialize_with = "intern::deserialize")]
    pub resource_uri: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub resource_name: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub resource_category: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub association_type: Option<Arc<str>>,
}

/// One entry of an alert's change log (notes, clears).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ChangeLogEntry {
    pub uri: Option<String>,
    pub created: Option<String>,
    pub notes: Option<String>,
    pub user_entered: Option<bool>,
    pub username: Option<String>,
}

/// A OneView alert (`AlertResourceV3` and later), as a member of `/rest/alerts` or the
/// `resource` of an SCMB message. Fields the bridge does not use are not kept.
///
/// The poller keeps one per open alert, so it is kept small (BENCHMARKS.md, section 9): texts
/// that repeat across alerts are shared ([`intern`]), so is the resource an alert is about,
/// and the timestamps and `eTag` are [`Stamp`]s. It serializes to the same JSON as the texts
/// it was decoded from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Alert {
    /// `/rest/alerts/{id}`: unique within one appliance only.
    pub uri: String,
    pub severity: Severity,
    pub alert_state: AlertState,
    #[serde(deserialize_with = "intern::deserialize")]
    pub description: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub corrective_action: Option<Arc<str>>,
    #[serde(rename = "alertTypeID", deserialize_with = "intern::deserialize")]
    pub alert_type_id: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub urgency: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub health_category: Option<Arc<str>>,
    pub created: Option<Stamp>,
    pub modified: Option<Stamp>,
    pub e_tag: Option<Stamp>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub resource_uri: Option<Arc<str>>,
    /// Shared by the alerts about the same resource (see [`intern::resource`]).
    #[serde(deserialize_with = "intern::deserialize_resource")]
    pub associated_resource: Option<Arc<AssociatedResource>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub physical_resource_type: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub assigned_to_user: Option<Arc<str>>,
    #[serde(deserialize_with = "intern::deserialize")]
    pub cleared_by_user: Option<Arc<str>>,
    pub cleared_time: Option<Stamp>,
    pub life_cycle: Option<bool>,
    pub change_log: Option<Vec<ChangeLogEntry>>,
}

/// Whether `uri` is an alert's canonical URI, `/rest/alerts/{id}` with one plain id segment
/// (OneView's ids are numbers; letters, digits and `-` are accepted): no `..`, no further
/// segment, no query, no percent-encoding, nothing that could name another resource when the
/// bridge writes to it with its own session.
pub fn is_canonical_alert_uri(uri: &str) -> bool {
    let Some(id) = uri.strip_prefix("/rest/alerts/") else {
        return false;
    };
    (1..=64).contains(&id.len())
        && id != "schema"
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Alert {
    /// True when OneView considers the alert over: state `Cleared`, or severity `OK` (which
    /// OneView auto-clears).
    pub fn is_cleared(&self) -> bool {
        self.alert_state == AlertState::Cleared || self.severity == Severity::Ok
    }

    pub fn resource_name(&self) -> Option<&str> {
        self.associated_resource
            .as_ref()
            .and_then(|r| r.resource_name.as_deref())
            .filter(|s| !s.is_empty())
    }

    pub fn resource_category(&self) -> Option<&str> {
        self.associated_resource
            .as_ref()
            .and_then(|r| r.resource_category.as_deref())
            .filter(|s| !s.is_empty())
            .or(self.physical_resource_type.as_deref())
    }
}

/// The appliance an alert came from. Its `id` is part of every alert key and dedup key, so it
/// must stay stable: it is `oneview.name` when set, else the host of `oneview.url`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Appliance {
    pub id: Arc<str>,
    /// Base URL of the appliance's web UI, used for links in incidents.
    pub ui_url: Arc<str>,
}

/// Identity of an alert across appliances: alert URIs such as `/rest/alerts/49` repeat from one
/// appliance to the next, so the appliance id is part of the key. Displayed as `{appliance}{uri}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlertKey {
    pub appliance: Arc<str>,
    pub uri: Arc<str>,
}

impl AlertKey {
    pub fn new(appliance: &Appliance, uri: &str) -> Self {
        Self {
            appliance: appliance.id.clone(),
            uri: Arc::from(uri),
        }
    }
}

impl fmt::Display for AlertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.appliance, self.uri)
    }
}

/// What happened to an alert since the poller last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ChangeKind {
    /// A watched alert is open and the bridge had not seen it open before.
    Raised,
    /// A watched open alert changed severity or description.
    Updated,
    /// An alert became `Cleared` (or severity `OK`), or vanished from the appliance.
    Cleared,
}

/// One typed change, as the poller (or the push API) hands it to the delivery side.
#[derive(Debug, Clone)]
pub struct AlertChange {
    pub kind: ChangeKind,
    pub key: AlertKey,
    pub appliance: Appliance,
    pub alert: Arc<Alert>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_enum_values_are_kept() {
        let a: Alert = serde_json::from_value(serde_json::json!({
            "uri": "/rest/alerts/1",
            "severity": "Catastrophic",
            "alertState": "Pending",
            "alertTypeID": "Trap.x",
        }))
        .unwrap();
        assert_eq!(a.severity, Severity::Other("Catastrophic".into()));
        assert_eq!(a.alert_state.as_str(), "Pending");
        assert_eq!(a.alert_type_id.as_deref(), Some("Trap.x"));
    }

    #[test]
    fn canonical_alert_uris() {
        for ok in [
            "/rest/alerts/49",
            "/rest/alerts/12345",
            "/rest/alerts/a1-b2",
        ] {
            assert!(is_canonical_alert_uri(ok), "{ok}");
        }
        for bad in [
            "/rest/alerts/",
            "/rest/alerts/1/../../../rest/server-hardware/ABC",
            "/rest/alerts/1/",
            "/rest/alerts/1?x=1",
            "/rest/alerts/%2e%2e",
            "/rest/alerts/schema",
            "/rest/alerts/AlertChangeLog/3",
            "/rest/server-hardware/1",
            "https://evil/rest/alerts/1",
            "rest/alerts/1",
        ] {
            assert!(!is_canonical_alert_uri(bad), "{bad}");
        }
    }

    /// The JSON the `Alert` of `String` timestamps and an unshared resource (before the
    /// compact fields) wrote for the real SCMB fixture's alert and two variants of it: the
    /// push API forwards alerts to the leader in this form, and it must not change.
    const WRITTEN_BEFORE: [&str; 3] = [
        r#"{"uri":"/rest/alerts/49","severity":"OK","alertState":"Cleared","description":"Cold Start.","correctiveAction":null,"alertTypeID":"Trap.coldStart","urgency":"None","healthCategory":"None","created":"2018-02-12T20:12:03.207Z","modified":"2018-02-12T20:12:03.207Z","eTag":"2018-02-12T20:12:03.207Z","resourceUri":"/rest/server-hardware/30373737-3237-4D32-3230-313530314752","associatedResource":{"resourceUri":"/rest/server-hardware/30373737-3237-4D32-3230-313530314752","resourceName":"0000A66101, bay 3","resourceCategory":"server-hardware","associationType":"HAS_A"},"physicalResourceType":"server-hardware","assignedToUser":null,"clearedByUser":"System","clearedTime":"2018-02-12T20:12:03.206Z","lifeCycle":true,"changeLog":[{"uri":null,"created":null,"notes":"CLEARED","userEntered":false,"username":"System"}]}"#,
        r#"{"uri":"/rest/alerts/49","severity":"Critical","alertState":"Locked","description":"Cold Start.","correctiveAction":null,"alertTypeID":"Trap.coldStart","urgency":"None","healthCategory":"None","created":"2018-02-12T21:12:03.207+01:00","modified":"2018-02-12T20:12:03Z","eTag":"1234567","resourceUri":"/rest/server-hardware/30373737-3237-4D32-3230-313530314752","associatedResource":null,"physicalResourceType":"server-hardware","assignedToUser":null,"clearedByUser":"System","clearedTime":null,"lifeCycle":true,"changeLog":null}"#,
        r#"{"uri":"/rest/alerts/49","severity":"Catastrophic","alertState":"Cleared","description":"Cold Start.","correctiveAction":null,"alertTypeID":"Trap.coldStart","urgency":"None","healthCategory":"None","created":"","modified":"2018-02-12T20:12:03.207Z","eTag":"007","resourceUri":"/rest/server-hardware/30373737-3237-4D32-3230-313530314752","associatedResource":{"resourceUri":"/rest/server-hardware/30373737-3237-4D32-3230-313530314752","resourceName":"0000A66101, bay 3","resourceCategory":"server-hardware","associationType":"HAS_A"},"physicalResourceType":"server-hardware","assignedToUser":null,"clearedByUser":"System","clearedTime":"2018-02-12T20:12:03.206Z","lifeCycle":true,"changeLog":[{"uri":null,"created":null,"notes":"CLEARED","userEntered":false,"username":"System"}]}"#,
    ];

    fn fixture_variants() -> [String; 3] {
        let msg: serde_json::Value = serde_json::from_str(include_str!(
            "../tests/fixtures/oneview/scmb_alert_message.json"
        ))
        .unwrap();
        let real = msg["resource"].clone();
        let mut v = real.clone();
        v["severity"] = "Critical".into();
        v["alertState"] = "Locked".into();
        v["eTag"] = "1234567".into();
        v["created"] = "2018-02-12T21:12:03.207+01:00".into();
        v["modified"] = "2018-02-12T20:12:03Z".into();
        v["clearedTime"] = serde_json::Value::Null;
        v["associatedResource"] = serde_json::Value::Null;
        v["changeLog"] = serde_json::Value::Null;
        let mut w = real.clone();
        w["severity"] = "Catastrophic".into();
        w["eTag"] = "007".into();
        w["created"] = "".into();
        [real.to_string(), v.to_string(), w.to_string()]
    }

    #[test]
    fn a_real_alert_serializes_byte_for_byte_as_before() {
        for (input, before) in fixture_variants().iter().zip(WRITTEN_BEFORE) {
            let a: Alert = serde_json::from_str(input).unwrap();
            let written = serde_json::to_string(&a).unwrap();
            assert_eq!(written, before);
            // What the leader decodes from a forwarded push is the same alert.
            let back: Alert = serde_json::from_str(&written).unwrap();
            assert_eq!(back, a);
            assert_eq!(serde_json::to_string(&back).unwrap(), before);
        }
        let a: Alert = serde_json::from_str(&fixture_variants()[0]).unwrap();
        assert_eq!(a.created.as_ref().unwrap(), "2018-02-12T20:12:03.207Z");
        assert_eq!(
            a.modified.as_ref().and_then(Stamp::millis),
            Some(1_518_466_323_207)
        );
        assert_eq!(
            a.e_tag.as_ref().unwrap().to_string(),
            "2018-02-12T20:12:03.207Z"
        );
        assert_eq!(a.cleared_time.as_ref().unwrap(), "2018-02-12T20:12:03.206Z");
    }

    #[test]
    fn alerts_about_one_resource_share_it() {
        let input = &fixture_variants()[0];
        let a: Alert = serde_json::from_str(input).unwrap();
        let b: Alert = serde_json::from_str(input).unwrap();
        assert!(Arc::ptr_eq(
            a.associated_resource.as_ref().unwrap(),
            b.associated_resource.as_ref().unwrap()
        ));
    }

    #[test]
    fn an_open_alert_is_small() {
        // 416 bytes and four timestamp allocations before the compact fields (BENCHMARKS.md,
        // section 9).
        assert!(
            std::mem::size_of::<Alert>() <= 320,
            "{}",
            std::mem::size_of::<Alert>()
        );
    }

    #[test]
    fn scmb_fixture_resource_parses() {
        let msg: serde_json::Value = serde_json::from_str(include_str!(
            "../tests/fixtures/oneview/scmb_alert_message.json"
        ))
        .unwrap();
        let a: Alert = serde_json::from_value(msg["resource"].clone()).unwrap();
        assert_eq!(a.uri, "/rest/alerts/49");
        assert!(a.is_cleared());
        assert_eq!(a.resource_name(), Some("0000A66101, bay 3"));
        assert_eq!(a.resource_category(), Some("server-hardware"));
    }
}
