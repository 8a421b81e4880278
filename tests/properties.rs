//! Property tests over untrusted input: the alert parser, the collection page parser and the
//! event builder never panic, and every event built is one PagerDuty accepts (checked with the
//! simulator's validator, which follows the Events API v2 rules) and fits its size limit.

use std::collections::BTreeMap;
use std::sync::Arc;

use bridge::model::{Alert, Appliance, AssociatedResource, Severity};
use bridge::oneview::collection::parse_page;
use bridge::pagerduty::event::{self, Action, EventContext};
use proptest::prelude::*;
use serde_json::{Value, json};

const ROUTING_KEY: &str = "PROPROUTINGKEY000000000000000001";

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly the field names an alert has, so values of every type land on real fields.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "uri", "severity", "alertState", "description", "correctiveAction", "alertTypeID",
            "urgency", "healthCategory", "created", "modified", "eTag", "resourceUri",
            "associatedResource", "resourceName", "resourceCategory", "changeLog",
            "members", "total", "nextPageUri", "count", "lifeCycle",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Strings that hurt: empty, multi-byte, control characters, and sometimes huge.
fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[\\x00-\\x1f\\u{7f}\\u{202e}\\u{feff}é漢🚨\"\\\\]{0,64}",
        1 => (any::<String>(), 1usize..20_000).prop_map(|(s, n)| {
            let unit = if s.is_empty() { "🚨".to_owned() } else { s };
            unit.repeat(n).chars().take(300_000).collect()
        }),
    ]
}

fn opt_nasty() -> impl Strategy<Value = Option<String>> {
    prop::option::of(nasty_string())
}

fn arb_alert() -> impl Strategy<Value = Alert> {
    (
        nasty_string(),
        prop::sample::select(vec![
            "Critical",
            "Warning",
            "OK",
            "Unknown",
            "Disabled",
            "",
            "Catastrophic",
        ]),
        opt_nasty(),
        opt_nasty(),
        opt_nasty(),
        opt_nasty(),
        opt_nasty(),
        opt_nasty(),
        prop::option::of(any::<String>()),
    )
        .prop_map(
            |(
                uri,
                sev,
                description,
                corrective,
                type_id,
                category,
                name,
                resource_uri,
                created,
            )| {
                let mut a = Alert {
                    uri,
                    severity: Severity::parse(sev),
                    description: description.map(Into::into),
                    corrective_action: corrective.map(Into::into),
                    alert_type_id: type_id.map(Into::into),
                    health_category: category.clone().map(Into::into),
                    resource_uri: resource_uri.map(Into::into),
                    created: created.map(Into::into),
                    ..Alert::default()
                };
                a.associated_resource = Some(
                    AssociatedResource {
                        resource_name: name.map(Into::into),
                        resource_category: category.map(Into::into),
                        ..Default::default()
                    }
                    .into(),
                );
                a
            },
        )
}

fn ctx() -> EventContext {
    let mut severity_map = BTreeMap::new();
    for (ov, pd) in [
        ("Critical", "critical"),
        ("Warning", "warning"),
        ("OK", "info"),
    ] {
        severity_map.insert(ov.to_owned(), pd.to_owned());
    }
    EventContext {
        severity_map,
        client: Some("oneview-pagerduty-bridge".into()),
        client_url: None,
        oneview_ui_url: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_alert_parser_never_panics(v in arb_json()) {
        let _ = serde_json::from_value::<Alert>(v);
    }

    #[test]
    fn the_collection_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_page(&bytes);
    }

    #[test]
    fn the_collection_parser_counts_every_member(
        members in prop::collection::vec(arb_json(), 0..16),
        total in prop::option::of(any::<u64>()),
        next in opt_nasty(),
    ) {
        let body = serde_json::to_vec(&json!({
            "members": members, "total": total, "nextPageUri": next, "uri": "/rest/alerts"
        })).unwrap();
        let page = parse_page(&body).unwrap();
        prop_assert_eq!(page.received, members.len());
        prop_assert_eq!(page.alerts.len() + page.malformed.len(), members.len());
        prop_assert!(page.alerts.iter().all(|a| !a.uri.is_empty()));
    }

    #[test]
    fn every_event_built_is_valid_and_fits(
        alert in arb_alert(),
        appliance_id in nasty_string(),
        ui_url in nasty_string(),
    ) {
        let appliance = Appliance { id: Arc::from(appliance_id.as_str()), ui_url: Arc::from(ui_url.as_str()) };
        let key = event::dedup_key(&appliance.id, &alert.uri);
        prop_assert!(key.chars().count() <= 255);
        for action in [Action::Trigger, Action::Resolve] {
            let ev = event::build(action, &alert, &appliance, &ctx());
            prop_assert_eq!(&ev.dedup_key, &key);
            let body = ev.to_body(ROUTING_KEY);
            prop_assert!(body.len() <= bridge::pagerduty::event::MAX_BODY_BYTES, "{} bytes", body.len());
            let v: Value = serde_json::from_slice(&body).unwrap();
            let errors = bridge::sim::pagerduty::validate(&v);
            prop_assert!(errors.is_empty(), "{:?}", errors);
        }
    }
}
