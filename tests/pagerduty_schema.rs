//! Every event the bridge builds from the real fixtures validates against PagerDuty's official
//! Events API v2 OpenAPI schema (with its `$ref`s to the components resolved here), and passes
//! the simulator's checks of what the schema cannot say (lengths, size).

mod pagerduty_support;

use bridge::pagerduty::event::{self, Action, EventContext};
use bridge::sim::pagerduty::validate;
use pagerduty_support::*;
use serde_json::Value;

/// The `/enqueue` request schema with every `#/components/...` reference inlined.
fn enqueue_schema() -> Value {
    let doc: Value =
        serde_json::from_str(include_str!("fixtures/pagerduty/events-v2-openapiv3.json")).unwrap();
    let schema =
        doc["paths"]["/enqueue"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            .clone();
    inline_refs(schema, &doc)
}

fn inline_refs(v: Value, doc: &Value) -> Value {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let path = r.strip_prefix("#/").expect("local reference");
                let target = path.split('/').fold(doc, |node, part| &node[part]);
                assert!(!target.is_null(), "unresolved {r}");
                return inline_refs(target.clone(), doc);
            }
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, inline_refs(v, doc)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|v| inline_refs(v, doc)).collect()),
        other => other,
    }
}

fn ctx() -> EventContext {
    EventContext {
        severity_map: bridge::config::default_severity_map(),
        client: Some("oneview-pagerduty-bridge".into()),
        client_url: Some("https://bridge.example.com/status".into()),
        oneview_ui_url: None,
    }
}

#[test]
fn the_schema_itself_rejects_a_broken_event() {
    let schema = enqueue_schema();
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let bad = serde_json::json!({"routing_key": ROUTING_KEY, "event_action": "explode",
        "payload": {"summary": "x", "source": "y", "severity": "fatal"}});
    assert!(!v.is_valid(&bad));
    let sample: Value = serde_json::from_str(include_str!(
        "fixtures/pagerduty/events-v2-enqueue-trigger-request.json"
    ))
    .unwrap();
    // PagerDuty's sample writes its timestamp offset as `+0000`, which is not RFC 3339: the
    // sample passes the schema's structure, and our events pass the stricter format check too.
    let structural = jsonschema::validator_for(&schema).unwrap();
    assert!(
        structural.is_valid(&sample),
        "PagerDuty's own sample is valid"
    );
}

#[test]
fn trigger_and_resolve_from_the_fixtures_validate() {
    let schema = enqueue_schema();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let mut alerts = fixture_alerts();
    alerts.push(scmb_alert());
    // An alert with almost nothing set must still build a valid event.
    alerts.push(bridge::model::Alert {
        uri: "/rest/alerts/1".into(),
        severity: bridge::model::Severity::Other("Catastrophic".into()),
        ..Default::default()
    });
    let mut checked = 0;
    for a in &alerts {
        for action in [Action::Trigger, Action::Resolve] {
            let ev = event::build(action, a, &appliance(), &ctx());
            let body: Value = serde_json::from_slice(&ev.to_body(ROUTING_KEY)).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&body)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{action} for {}: {errors:?}\n{body:#}",
                a.uri
            );
            assert_eq!(validate(&body), Vec::<String>::new(), "{body:#}");
            assert_eq!(
                body["payload"]["summary"].as_str().unwrap(),
                ev.payload.summary
            );
            assert!(
                body["dedup_key"]
                    .as_str()
                    .unwrap()
                    .starts_with("oneview:ov-lab.example.com:/rest/alerts/")
            );
            checked += 1;
        }
    }
    assert!(checked >= 12);
}

#[test]
fn the_scmb_fixture_builds_the_documented_fields() {
    let a = scmb_alert();
    let ev = event::build(Action::Resolve, &a, &appliance(), &ctx());
    let p = &ev.payload;
    assert_eq!(p.summary, "OK: 0000A66101, bay 3 - Cold Start.");
    assert_eq!(p.source, "0000A66101, bay 3");
    assert_eq!(p.component.as_deref(), Some("server-hardware"));
    assert_eq!(p.group.as_deref(), Some("ov-lab.example.com"));
    assert_eq!(p.class.as_deref(), Some("Trap.coldStart"));
    assert_eq!(p.timestamp.as_deref(), Some("2018-02-12T20:12:03.207Z"));
    assert_eq!(p.custom_details["alertUri"], "/rest/alerts/49");
    assert_eq!(p.custom_details["healthCategory"], "None");
    assert_eq!(
        ev.client_url.as_deref(),
        Some("https://bridge.example.com/status")
    );
    assert_eq!(
        ev.links[0].href,
        "https://ov-lab.example.com/#/activity/r/rest/alerts/49"
    );
}
