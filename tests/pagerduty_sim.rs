//! The PagerDuty simulator's own contract: PagerDuty's answers, incident model, faults and
//! control API, over real HTTP.

mod pagerduty_support;

use std::time::Duration;

use bridge::sim::pagerduty::{self as pdsim, Faults, IncidentStatus, SimHandle};
use pagerduty_support::ROUTING_KEY;
use serde_json::{Value, json};

async fn sim() -> (SimHandle, reqwest::Client) {
    let s = pdsim::start("127.0.0.1:0".parse().unwrap(), Faults::default())
        .await
        .unwrap();
    (s, reqwest::Client::new())
}

async fn post(c: &reqwest::Client, s: &SimHandle, body: Value) -> (u16, Value) {
    let r = c.post(s.events_url()).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn trigger(key: &str) -> Value {
    json!({"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": key,
        "payload": {"summary": "disk full", "source": "host", "severity": "critical"}})
}

fn action(a: &str, key: &str) -> Value {
    json!({"routing_key": ROUTING_KEY, "event_action": a, "dedup_key": key})
}

#[tokio::test]
async fn incident_model_follows_pagerduty() {
    let (s, c) = sim().await;
    let (st, body) = post(&c, &s, trigger("a")).await;
    assert_eq!(st, 202);
    assert_eq!(
        body,
        json!({"status": "success", "message": "Event processed", "dedup_key": "a"})
    );
    post(&c, &s, trigger("a")).await;
    assert_eq!(s.incidents().len(), 1, "a trigger on an open key joins it");
    assert_eq!(s.incidents()[0].triggers, 2);
    post(&c, &s, action("acknowledge", "a")).await;
    assert_eq!(s.incidents()[0].status, IncidentStatus::Acknowledged);
    post(&c, &s, action("resolve", "a")).await;
    assert_eq!(s.incidents()[0].status, IncidentStatus::Resolved);
    post(&c, &s, trigger("a")).await;
    assert_eq!(
        s.incidents().len(),
        2,
        "a trigger after a resolve opens a new incident"
    );
    let (st, _) = post(&c, &s, action("resolve", "unknown")).await;
    assert_eq!(st, 202, "resolve on an unknown key is accepted and dropped");
    assert_eq!(s.incidents().len(), 2);
    // A trigger without dedup_key gets one.
    let mut t = trigger("x");
    t.as_object_mut().unwrap().remove("dedup_key");
    let (_, body) = post(&c, &s, t).await;
    assert_eq!(body["dedup_key"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn invalid_events_get_pagerdutys_400() {
    let (s, c) = sim().await;
    let (st, body) = post(
        &c,
        &s,
        json!({"routing_key": "short", "event_action": "trigger"}),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(body["status"], "invalid event");
    assert_eq!(body["message"], "Event object is invalid");
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(errors.contains(&"Length of 'routing_key' is incorrect (should be 32 characters)"));
    assert!(errors.iter().any(|e| e.contains("payload")));
    let big = "x".repeat(600_000);
    let mut t = trigger("big");
    t["payload"]["custom_details"] = json!({"blob": big});
    let (st, body) = post(&c, &s, t).await;
    assert_eq!(st, 400);
    assert!(body["errors"][0].as_str().unwrap().contains("too large"));
    let r = c
        .post(s.events_url())
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(s.counters().rejected, 3);
    assert!(s.incidents().is_empty());
}

#[tokio::test]
async fn rate_limit_and_faults_over_the_control_api() {
    let (s, c) = sim().await;
    let base = format!("http://{}", s.addr());
    let r = c
        .put(format!("{base}/sim/faults"))
        .json(&json!({"rate_limit_per_minute": 2, "retry_after_secs": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(post(&c, &s, trigger("1")).await.0, 202);
    assert_eq!(post(&c, &s, trigger("2")).await.0, 202);
    let r = c
        .post(s.events_url())
        .json(&trigger("3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let counters: Value = c
        .get(format!("{base}/sim/counters"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["rate_limited"], 1);
    assert_eq!(counters["accepted"], 2);

    c.put(format!("{base}/sim/faults"))
        .json(&json!({"outage": {"mode": "status", "code": 503}}))
        .send()
        .await
        .unwrap();
    assert_eq!(post(&c, &s, trigger("4")).await.0, 503);
    c.put(format!("{base}/sim/faults"))
        .json(&json!({"outage": {"mode": "drop"}}))
        .send()
        .await
        .unwrap();
    let fresh = reqwest::Client::new();
    let r = fresh
        .post(s.events_url())
        .json(&trigger("5"))
        .timeout(Duration::from_secs(2))
        .send()
        .await;
    assert!(r.is_err(), "connections are dropped");
    let bad = c
        .put(format!("{base}/sim/faults"))
        .json(&json!({"error_rate": 2.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let events: Value = c
        .get(format!("{base}/sim/events"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events.as_array().unwrap().len(), 4);
    assert!(events[0]["received_at"].is_string());
    assert_eq!(
        c.post(format!("{base}/sim/reset"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert!(s.events().is_empty() && s.incidents().is_empty());
    assert_eq!(s.faults().outage, None);
    assert_eq!(post(&reqwest::Client::new(), &s, trigger("6")).await.0, 202);
}
