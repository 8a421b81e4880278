//! The web role over real HTTP: the public API, its guards (401/403/413/415/429), PagerDuty
//! webhooks (signatures, redeliveries, write-back into the OneView simulator), role `web`
//! talking to role `poller` over the internal API, and the poller-unreachable path.
//!
//! Clocks: the request-timeout test runs on paused tokio time. The rate limits read the real
//! clock (governor), so their tests stay on it and bound what passed by the measured elapsed
//! time (`web_support::Burst`) instead of assuming the requests took less than a second.

mod web_support;

use bridge::config::Role;
use bridge::sim::oneview::AlertSpec;
use bridge::sim::pagerduty::{Faults, IncidentStatus};
use serde_json::{Value, json};
use web_support::*;

const VECTOR_SECRET: &str = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK";
const VECTOR_BODY: &[u8] = include_bytes!("fixtures/pagerduty/webhookv3-test-vector-body.json");
const VECTOR_SIG: &str = "v1=0c0b9495b893a39e70d1fea2fe11fbe0a825f88b9f67846f6cc07dd2bc5476cd";

fn alert(id: &str, severity: &str) -> Value {
    json!({"uri": format!("/rest/alerts/{id}"), "severity": severity, "alertState": "Active",
           "description": format!("pushed alert {id}"), "created": "2026-11-22T06:00:00.000Z"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_list_dead_letter_retry_poll_and_test_event() {
    let s = sims().await;
    let b = start(raw(Some(&s)), Role::All).await;
    let c = client();
    let api = |p: &str| format!("{}{p}", b.url);

    // Authentication and content checks on the push endpoint.
    let r = c
        .post(api("/api/v1/alerts"))
        .json(&alert("p1", "Critical"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(body["request_id"].is_string());
    let r = c
        .post(api("/api/v1/alerts"))
        .bearer_auth("wrong")
        .json(&alert("p1", "Critical"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(api("/api/v1/alerts"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_media_type"
    );
    let big = format!(
        "[{}]",
        vec![alert("x", "Critical").to_string(); 20_000].join(",")
    );
    let r = c
        .post(api("/api/v1/alerts"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );

    // One good alert, one bad one, one SCMB message; the old token still works (rotation).
    let scmb: Value =
        serde_json::from_str(include_str!("fixtures/oneview/scmb_alert_message.json")).unwrap();
    let mut scmb_active = scmb.clone();
    scmb_active["resource"]["alertState"] = json!("Active");
    scmb_active["resource"]["severity"] = json!("Warning");
    scmb_active["resource"]["uri"] = json!("/rest/alerts/scmb-7");
    let r = c
        .post(api("/api/v1/alerts"))
        .bearer_auth("old-token")
        .json(&json!([alert("p1", "Critical"), {"uri": "/not/an/alert"}, scmb_active, alert("p2", "OK")]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["accepted"],
        json!([
            dedup("/rest/alerts/p1"),
            dedup("/rest/alerts/scmb-7"),
            dedup("/rest/alerts/p2")
        ])
    );
    assert_eq!(body["errors"][0]["index"], 1);
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/rest/alerts/")
    );
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().len() == 2).await,
        "two incidents"
    );

    // The read API needs a token (status_public is off); filters and pages work.
    assert_eq!(
        c.get(api("/api/v1/alerts")).send().await.unwrap().status(),
        401
    );
    assert!(
        eventually_async(|| async {
            let v: Value = c
                .get(api("/api/v1/alerts?severity=critical"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["total"] == 1 && v["alerts"][0]["pagerduty"]["outcome"] == "accepted"
        })
        .await,
        "pushed critical alert listed with its PagerDuty state"
    );
    let v: Value = c
        .get(api("/api/v1/alerts?per_page=1&page=2"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 2);
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(v["page"], 2);
    let v: Value = c
        .get(api("/api/v1/alerts?appliance=elsewhere"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 0);

    // A rejected event becomes a dead letter; a retry re-sends it once PagerDuty accepts it.
    s.pd.set_faults(Faults {
        reject_dedup_key_containing: Some("reject-me".into()),
        ..Default::default()
    });
    let r = c
        .post(api("/api/v1/alerts"))
        .bearer_auth(TOKEN)
        .json(&alert("reject-me", "Critical"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        eventually_async(|| async {
            let v: Value = c
                .get(api("/api/v1/deliveries/dead-letter"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["total"] == 1
        })
        .await
    );
    let key = dedup("/rest/alerts/reject-me");
    let v: Value = c
        .get(api("/api/v1/deliveries/dead-letter"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["dead_letters"][0]["dedup_key"], key);
    assert_eq!(v["dead_letters"][0]["retryable"], true);
    s.pd.set_faults(Faults::default());
    let enc: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
    let r = c
        .post(api(&format!("/api/v1/deliveries/dead-letter/{enc}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "retry needs a token");
    let r = c
        .post(api(&format!("/api/v1/deliveries/dead-letter/{enc}/retry")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == key))
            .await,
        "retried dead letter delivered"
    );
    let r = c
        .post(api(&format!("/api/v1/deliveries/dead-letter/{enc}/retry")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "nothing left to retry");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");

    // Force a poll, and a test event.
    assert_eq!(
        c.post(api("/api/v1/poll")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        c.post(api("/api/v1/poll"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let r = c
        .post(api("/api/v1/test-event"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["accepted"], true);
    assert_eq!(
        v["results"].as_array().unwrap().len(),
        2,
        "trigger and resolve"
    );

    // A pushed clear resolves.
    let mut cleared = alert("p1", "Critical");
    cleared["alertState"] = json!("Cleared");
    assert_eq!(
        c.post(api("/api/v1/alerts"))
            .bearer_auth(TOKEN)
            .json(&cleared)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let p1 = dedup("/rest/alerts/p1");
    assert!(
        s.pd.wait_until(WAIT, |pd| pd
            .incidents()
            .iter()
            .any(|i| i.dedup_key == p1 && i.status == IncidentStatus::Resolved))
            .await
    );
    b.stop().await;
    s.stop().await;
}

async fn eventually_async<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tokens_configured_is_403_and_status_public_opens_reads() {
    let mut r = raw(None);
    r.server.api_tokens = None;
    r.server.status_public = true;
    r.web.poller_url = Some("http://127.0.0.1:9".into());
    let b = start(r, Role::Web).await;
    let c = client();
    let resp = c
        .post(format!("{}/api/v1/alerts", b.url))
        .bearer_auth("x")
        .json(&alert("1", "Critical"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "forbidden");
    // Reads are public, and answer 503 because the poller is not there.
    let resp = c
        .get(format!("{}/api/v1/alerts", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after_per_client() {
    let mut r = raw(None);
    r.server.rate_limit_per_second = 1;
    r.server.rate_limit_burst = 2;
    r.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    r.web.poller_url = Some("http://127.0.0.1:9".into());
    let b = start(r, Role::Web).await;
    let c = client();
    let get = |xff: &'static str| {
        c.get(format!("{}/api/v1/alerts", b.url))
            .bearer_auth(TOKEN)
            .header("x-forwarded-for", xff)
            .send()
    };
    // Real clock (see `Burst`): 2 pass and the third is refused unless a second went by.
    let r = Burst::until_refused(22, |_| async { get("203.0.113.1").await.unwrap() })
        .await
        .refused_by(1, 2, "server.rate_limit_per_second");
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "rate_limited");
    // Another client behind the same trusted proxy has its own bucket; /health is not limited.
    assert_ne!(get("198.51.100.7").await.unwrap().status(), 429);
    for _ in 0..5 {
        assert_eq!(
            c.get(format!("{}/health", b.url))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let m = metrics(&b.url).await;
    assert!(
        m.contains("bridge_web_rate_limited_total{route=\"/api/v1/alerts\"} 1"),
        "{m}"
    );
    assert!(m.contains("bridge_web_rate_limited_total{route=\"/api/v1/poll\"} 0"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peer_cannot_choose_its_bucket_with_x_forwarded_for() {
    let mut r = raw(None);
    r.server.rate_limit_per_second = 1;
    r.server.rate_limit_burst = 1;
    r.web.poller_url = Some("http://127.0.0.1:9".into());
    let b = start(r, Role::Web).await;
    let c = client();
    // A new X-Forwarded-For every time: if the bridge believed it, every request would find a
    // fresh bucket and none would be refused (real clock, see `Burst`).
    let r = Burst::until_refused(21, |i| {
        let send = c
            .get(format!("{}/api/v1/alerts", b.url))
            .bearer_auth(TOKEN)
            .header("x-forwarded-for", format!("203.0.113.{}", i + 1))
            .send();
        async move { send.await.unwrap() }
    })
    .await
    .refused_by(1, 1, "server.rate_limit_per_second");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "rate_limited");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_vector_tamper_missing_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("webhook-secrets");
    std::fs::write(&secrets, format!("# current\n{VECTOR_SECRET}\n")).unwrap();
    let mut r = raw(None);
    r.pagerduty.webhook_secrets = None;
    r.pagerduty.webhook_secrets_file = Some(secrets.clone());
    r.web.poller_url = Some("http://127.0.0.1:9".into());
    let b = start(r, Role::Web).await;
    let c = client();
    let post = |body: Vec<u8>, sig: Option<String>, id: &str| {
        let mut rb = c
            .post(format!("{}/api/v1/pagerduty/webhook", b.url))
            .header("content-type", "application/json")
            .header("x-webhook-id", id)
            .body(body);
        if let Some(s) = sig {
            rb = rb.header("x-pagerduty-signature", s);
        }
        rb.send()
    };
    // PagerDuty's published test vector (an event type the bridge does not act on).
    let r = post(VECTOR_BODY.to_vec(), Some(VECTOR_SIG.into()), "w1")
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ignored");
    // Tampered body, missing header, wrong secret.
    let mut tampered = VECTOR_BODY.to_vec();
    tampered[120] ^= 1;
    let r = post(tampered, Some(VECTOR_SIG.into()), "w2").await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "invalid_signature"
    );
    assert_eq!(
        post(VECTOR_BODY.to_vec(), None, "w3")
            .await
            .unwrap()
            .status(),
        401
    );
    let rotated = bridge::web::signature::sign("whsec-next", VECTOR_BODY);
    assert_eq!(
        post(VECTOR_BODY.to_vec(), Some(rotated.clone()), "w4")
            .await
            .unwrap()
            .status(),
        401
    );
    // Rotation: the new secret is added to the file; both are valid until the old goes.
    std::fs::write(&secrets, format!("whsec-next\n{VECTOR_SECRET}\n")).unwrap();
    assert_eq!(
        post(VECTOR_BODY.to_vec(), Some(rotated), "w5")
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        post(VECTOR_BODY.to_vec(), Some(VECTOR_SIG.into()), "w6")
            .await
            .unwrap()
            .status(),
        202
    );
    // Content type and size are checked before anything else.
    let r = c
        .post(format!("{}/api/v1/pagerduty/webhook", b.url))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    let big = vec![b' '; 300 * 1024];
    assert_eq!(
        post(big, Some(VECTOR_SIG.into()), "w7")
            .await
            .unwrap()
            .status(),
        413
    );
    let m = metrics(&b.url).await;
    assert!(
        m.contains("bridge_web_webhook_verifications_total{outcome=\"valid\"} 3"),
        "{m}"
    );
    assert!(m.contains("bridge_web_webhook_verifications_total{outcome=\"mismatch\"} 2"));
    assert!(m.contains("bridge_web_webhook_verifications_total{outcome=\"missing\"} 1"));
    assert!(m.contains("bridge_web_writebacks_total{outcome=\"written\"} 0"));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_writeback_is_visible_in_oneview_idempotent_and_never_echoes() {
    let s = sims().await;
    let mut r = raw(Some(&s));
    r.sync.clear_on_resolve = true;
    let b = start(r, Role::All).await;
    let spec = |d: &str| AlertSpec {
        severity: Some("Critical".into()),
        description: Some(d.into()),
        ..Default::default()
    };
    let uri_a = s.ov.handle.add_alert(spec("PSU 1 failed"));
    let uri_b = s.ov.handle.add_alert(spec("Fan 3 failed"));
    let (a, bb) = (id_of(&uri_a), id_of(&uri_b));
    assert!(s.pd.wait_until(WAIT, |pd| pd.incidents().len() == 2).await);

    // Acknowledged: one note naming who, what, the incident number and link.
    let ack = serde_json::to_vec(&incident_event(
        "EV-ACK-1",
        "incident.acknowledged",
        &dedup(&uri_a),
        "user_reference",
    ))
    .unwrap();
    let r = post_webhook(&b.url, &ack, WEBHOOK_SECRET, "wh-1").await;
    assert_eq!(r.status(), 202);
    assert!(
        eventually(|| !notes(&s.ov, a).is_empty()).await,
        "note written"
    );
    let n = notes(&s.ov, a);
    assert_eq!(n.len(), 1);
    assert!(n[0].contains("acknowledged by Ada Oncall"), "{n:?}");
    assert!(n[0].contains("#42") && n[0].contains("https://acme.pagerduty.com/incidents/PINC042"));
    // Redelivery (same X-Webhook-Id): answered, not processed again.
    let r = post_webhook(&b.url, &ack, WEBHOOK_SECRET, "wh-1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "duplicate");
    // The same event through another replica (unknown X-Webhook-Id): the change-log marker
    // stops a second note.
    assert_eq!(
        post_webhook(&b.url, &ack, WEBHOOK_SECRET, "wh-1-other-replica")
            .await
            .status(),
        202
    );
    let m = || async { metrics(&b.url).await };
    assert!(
        eventually_async(|| async {
            m().await
                .contains("bridge_web_writebacks_total{outcome=\"duplicate\"} 1")
        })
        .await
    );
    assert_eq!(notes(&s.ov, a).len(), 1, "no second note");

    // Reassigned and annotated (the note event has no incident key: matched by incident id).
    let re = serde_json::to_vec(&incident_event(
        "EV-RE-1",
        "incident.reassigned",
        &dedup(&uri_a),
        "user_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&b.url, &re, WEBHOOK_SECRET, "wh-2")
            .await
            .status(),
        202
    );
    assert!(eventually(|| notes(&s.ov, a).len() == 2).await);
    assert!(notes(&s.ov, a)[1].contains("reassigned to Grace Backup"));
    let note = json!({"event": {"id": "EV-NOTE-1", "event_type": "incident.annotated", "resource_type": "incident",
        "agent": {"summary": "Ada Oncall", "type": "user_reference"},
        "data": {"type": "incident_note", "id": "PNOTE1", "content": "Swapping the PSU now",
                 "incident": {"id": "PINC042", "html_url": "https://acme.pagerduty.com/incidents/PINC042", "type": "incident_reference"}}}});
    assert_eq!(
        post_webhook(
            &b.url,
            &serde_json::to_vec(&note).unwrap(),
            WEBHOOK_SECRET,
            "wh-3"
        )
        .await
        .status(),
        202
    );
    assert!(eventually(|| notes(&s.ov, a).len() == 3).await);
    assert!(notes(&s.ov, a)[2].contains("Swapping the PSU now"));

    // Resolved by a person: note + Cleared (clear_on_resolve = true).
    let res = serde_json::to_vec(&incident_event(
        "EV-RES-1",
        "incident.resolved",
        &dedup(&uri_a),
        "user_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&b.url, &res, WEBHOOK_SECRET, "wh-4")
            .await
            .status(),
        202
    );
    assert!(
        eventually(|| s.ov.handle.alert(a).unwrap()["alertState"] == "Cleared").await,
        "cleared in OneView"
    );
    assert_eq!(notes(&s.ov, a).len(), 4);
    // Its redelivery through another replica neither clears again nor adds a note.
    assert_eq!(
        post_webhook(&b.url, &res, WEBHOOK_SECRET, "wh-4b")
            .await
            .status(),
        202
    );

    // The bridge's own resolve (agent = the integration/service) is never echoed.
    s.ov.handle.clear(bb).unwrap();
    let bkey = dedup(&uri_b);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd
            .incidents()
            .iter()
            .any(|i| i.dedup_key == bkey && i.status == IncidentStatus::Resolved))
            .await
    );
    let own = serde_json::to_vec(&incident_event(
        "EV-RES-2",
        "incident.resolved",
        &bkey,
        "service_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&b.url, &own, WEBHOOK_SECRET, "wh-5")
            .await
            .status(),
        202
    );
    // An incident the bridge did not create is ignored.
    let other = serde_json::to_vec(&incident_event(
        "EV-X",
        "incident.acknowledged",
        "d3640fbd41094207a1c11e58e46b1662",
        "user_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&b.url, &other, WEBHOOK_SECRET, "wh-6")
            .await
            .status(),
        202
    );
    assert!(
        eventually_async(|| async {
            let t = m().await;
            t.contains("bridge_web_writebacks_total{outcome=\"skipped\"} 1")
                && t.contains("bridge_web_writebacks_total{outcome=\"ignored\"} 1")
                && t.contains("bridge_web_writebacks_total{outcome=\"duplicate\"} 2")
                && t.contains("bridge_web_writebacks_total{outcome=\"written\"} 4")
        })
        .await,
        "{}",
        m().await
    );
    assert!(
        notes(&s.ov, bb).is_empty(),
        "no write-back for the bridge's own resolve"
    );
    assert_eq!(
        notes(&s.ov, a).len(),
        4,
        "redelivered resolve added nothing"
    );
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_web_works_through_the_pollers_internal_api() {
    let s = sims().await;
    let poller = start(raw(Some(&s)), Role::Poller).await;
    let mut r = raw(None);
    r.web.poller_url = Some(poller.url.clone());
    let web = start(r, Role::Web).await;
    let c = client();

    // The internal API wants the poller token.
    let r = c
        .get(format!("{}/internal/v1/status", poller.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The poller does not serve the public API.
    assert_eq!(
        c.get(format!("{}/api/v1/alerts", poller.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let uri = s.ov.handle.add_alert(AlertSpec {
        severity: Some("Critical".into()),
        description: Some("Blade 4 overheating".into()),
        ..Default::default()
    });
    let r = c
        .post(format!("{}/api/v1/alerts", web.url))
        .bearer_auth(TOKEN)
        .json(&alert("pushed-via-web", "Warning"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap()["accepted"][0],
        dedup("/rest/alerts/pushed-via-web")
    );
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().len() == 2).await,
        "polled + pushed"
    );
    let v: Value = c
        .get(format!("{}/api/v1/alerts", web.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 2, "{v}");
    let v: Value = c
        .get(format!("{}/api/v1/deliveries/dead-letter", web.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 0);
    assert_eq!(
        c.post(format!("{}/api/v1/poll", web.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let page = c
        .get(format!("{}/?token={TOKEN}", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Blade 4 overheating"),
        "status page through the poller"
    );

    // A webhook on the web replica writes back through the poller.
    let ack = serde_json::to_vec(&incident_event(
        "EV-WEB-1",
        "incident.acknowledged",
        &dedup(&uri),
        "user_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&web.url, &ack, WEBHOOK_SECRET, "wh-web-1")
            .await
            .status(),
        202
    );
    assert!(
        eventually(|| notes(&s.ov, id_of(&uri)).len() == 1).await,
        "write-back via the poller"
    );
    assert_eq!(
        reqwest::get(format!("{}/ready", web.url))
            .await
            .unwrap()
            .status(),
        200
    );

    // A web replica with the wrong poller token gets 503, not the caller's fault.
    let mut r = raw(None);
    r.web.poller_url = Some(poller.url.clone());
    r.web.poller_token = Some(secrecy::SecretString::from("wrong".to_owned()));
    let bad = start(r, Role::Web).await;
    let resp = c
        .get(format!("{}/api/v1/alerts", bad.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    bad.stop().await;
    web.stop().await;
    poller.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_unreachable_is_503_json_and_web_stays_ready() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut r = raw(None);
    r.web.poller_url = Some(format!("http://127.0.0.1:{port}"));
    let b = start(r, Role::Web).await;
    let c = client();
    for (method, path) in [
        ("POST", "/api/v1/alerts"),
        ("GET", "/api/v1/alerts"),
        ("GET", "/api/v1/deliveries/dead-letter"),
        ("POST", "/api/v1/deliveries/dead-letter/k/retry"),
        ("POST", "/api/v1/poll"),
        ("POST", "/api/v1/test-event"),
    ] {
        let rb = if method == "POST" {
            c.post(format!("{}{path}", b.url))
                .json(&alert("1", "Critical"))
        } else {
            c.get(format!("{}{path}", b.url))
        };
        let r = rb.bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 503, "{method} {path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "poller_unavailable", "{method} {path}");
        assert!(v["message"].as_str().unwrap().contains("web.poller_url"));
        assert!(v["request_id"].is_string());
    }
    let page = c
        .get(format!("{}/", b.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("id=\"poller-down\""));
    let ready = reqwest::get(format!("{}/ready", b.url)).await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "a web replica's readiness does not depend on the poller"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_needs_a_token_and_sets_a_nonce_csp() {
    let s = sims().await;
    let b = start(raw(Some(&s)), Role::All).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/", b.url)).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        c.get(format!("{}/?token=nope", b.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = c
        .get(format!("{}/?token={TOKEN}", b.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(html.contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(!csp.contains("unsafe-inline"));
    assert!(html.contains("name=\"viewport\""));
    b.stop().await;
    s.stop().await;
}

// On paused time: the poller call's timeout, the server's request timeout and the bridge's
// connection timers all run on tokio's clock, so the answer comes at a known virtual instant.
#[tokio::test(start_paused = true)]
async fn a_poller_that_never_answers_is_cut_by_the_request_timeout() {
    let pace = pace_paused_clock();
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let request_timeout = std::time::Duration::from_millis(1500);
    let mut r = raw(None);
    r.web.poller_url = Some(format!("http://{addr}"));
    r.server.request_timeout = request_timeout;
    let b = start(r, Role::Web).await;
    let started = tokio::time::Instant::now();
    // Without any timeout the request would hang; the clock then runs on to this one.
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        client()
            .get(format!("{}/api/v1/alerts", b.url))
            .bearer_auth(TOKEN)
            .send(),
    )
    .await
    .expect("answered before a minute of virtual time")
    .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    // Within server.request_timeout of virtual time, exactly: by the replica's own poller call
    // (it gives up 500 ms before, at least after a second, so the caller learns which side
    // failed) or at the latest by the server's backstop.
    assert!(
        (std::time::Duration::from_secs(1)..=request_timeout).contains(&took),
        "answered after {took:?}"
    );
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"] == "poller_unavailable" || v["error"] == "timeout",
        "{v}"
    );
    hold.abort();
    b.stop().await;
    pace.abort();
}

/// One metric sample of the classic text format, `None` when the series is absent.
fn sample(m: &str, series: &str) -> Option<f64> {
    m.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_writeback_queue_is_503_with_retry_after_and_the_redelivery_is_taken_later() {
    let s = sims().await;
    let mut r = raw(Some(&s));
    r.web.writeback_concurrency = 2;
    r.web.writeback_queue = 2;
    let b = start(r, Role::All).await;
    let m = metrics(&b.url).await;
    assert_eq!(
        sample(&m, "bridge_web_writeback_queue_depth"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "bridge_web_writebacks_total{outcome=\"queue_full\"}"),
        Some(0.0)
    );
    let uris: Vec<String> = (0..5)
        .map(|i| {
            s.ov.handle.add_alert(AlertSpec {
                severity: Some("Critical".into()),
                description: Some(format!("PSU {i} failed")),
                ..Default::default()
            })
        })
        .collect();
    // PagerDuty only sends events of incidents the bridge opened.
    assert!(eventually(|| s.pd.incidents().len() == 5).await);
    let ack = |i: usize| {
        serde_json::to_vec(&incident_event(
            &format!("EV-Q-{i}"),
            "incident.acknowledged",
            &dedup(&uris[i]),
            "user_reference",
        ))
        .unwrap()
    };
    // The appliance holds every write-back's first request: two take the two slots ...
    s.ov.handle.update_faults(|f| f.hold_alert_requests = true);
    for i in 0..2 {
        let r = post_webhook(&b.url, &ack(i), WEBHOOK_SECRET, &format!("wh-q-{i}")).await;
        assert_eq!(r.status(), 202);
    }
    assert!(
        eventually(|| s.ov.handle.held_requests() == 2).await,
        "both slots busy"
    );
    // ... two wait in the queue ...
    for i in 2..4 {
        let r = post_webhook(&b.url, &ack(i), WEBHOOK_SECRET, &format!("wh-q-{i}")).await;
        assert_eq!(r.status(), 202);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "accepted");
    }
    let m = metrics(&b.url).await;
    assert_eq!(
        sample(&m, "bridge_web_writeback_queue_depth"),
        Some(2.0),
        "{m}"
    );
    // ... and the fifth is refused before it is acknowledged, twice: a refused delivery is not
    // recorded as seen (a redelivery is not a "duplicate").
    for _ in 0..2 {
        let r = post_webhook(&b.url, &ack(4), WEBHOOK_SECRET, "wh-q-4").await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "5");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "queue_full", "{v}");
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("web.writeback_queue"), "{msg}");
        assert!(v["request_id"].is_string(), "{v}");
    }
    let m = metrics(&b.url).await;
    assert_eq!(
        sample(&m, "bridge_web_writebacks_total{outcome=\"queue_full\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        s.ov.handle.held_requests(),
        2,
        "nothing else reached OneView"
    );

    // Released: the four taken ones are written, the queue empties, and PagerDuty's next
    // delivery of the refused one is taken.
    s.ov.handle.update_faults(|f| f.hold_alert_requests = false);
    for (i, uri) in uris.iter().enumerate().take(4) {
        let id = id_of(uri);
        assert!(
            eventually(|| notes(&s.ov, id).len() == 1).await,
            "note of delivery {i}"
        );
    }
    assert!(
        eventually_async(|| async {
            sample(&metrics(&b.url).await, "bridge_web_writeback_queue_depth") == Some(0.0)
        })
        .await
    );
    let r = post_webhook(&b.url, &ack(4), WEBHOOK_SECRET, "wh-q-4").await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "accepted");
    let last = id_of(&uris[4]);
    assert!(eventually(|| notes(&s.ov, last).len() == 1).await);
    assert!(notes(&s.ov, last)[0].contains("[pagerduty-event EV-Q-4]"));
    // Now it is seen: the next redelivery is a duplicate.
    let r = post_webhook(&b.url, &ack(4), WEBHOOK_SECRET, "wh-q-4").await;
    assert_eq!(r.status(), 200);
    assert!(
        eventually_async(|| async {
            sample(
                &metrics(&b.url).await,
                "bridge_web_writebacks_total{outcome=\"written\"}",
            ) == Some(5.0)
        })
        .await
    );
    let m = metrics(&b.url).await;
    assert_eq!(
        sample(&m, "bridge_web_writebacks_total{outcome=\"queue_full\"}"),
        Some(2.0)
    );
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_are_not_under_the_api_rate_limit_unless_given_their_own() {
    // The rest of /api/* at 1/s burst 2: 300 webhooks from one client would take about 300 s
    // under it, so none being refused does not depend on how fast this machine is.
    let mut r = raw(None);
    r.server.rate_limit_per_second = 1;
    r.server.rate_limit_burst = 2;
    r.web.poller_url = Some("http://127.0.0.1:9".into());
    let b = start(r.clone(), Role::Web).await;
    // An event type the bridge does not act on: answered 202 without a write-back.
    let body = VECTOR_BODY.to_vec();
    let c = client();
    let post = |url: &str, id: String| {
        c.post(format!("{url}/api/v1/pagerduty/webhook"))
            .header("content-type", "application/json")
            .header(
                "x-pagerduty-signature",
                bridge::web::signature::sign(WEBHOOK_SECRET, &body),
            )
            .header("x-webhook-id", id)
            .body(body.clone())
            .send()
    };
    for i in 0..300 {
        let resp = post(&b.url, format!("wh-rl-{i}")).await.unwrap();
        assert_eq!(resp.status(), 202, "delivery {i}");
    }
    // The other routes keep their limit (real clock, see `Burst`), untouched by the webhooks.
    Burst::until_refused(22, |_| async {
        c.get(format!("{}/api/v1/alerts", b.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
    })
    .await
    .refused_by(1, 2, "server.rate_limit_per_second");
    let m = metrics(&b.url).await;
    assert_eq!(
        sample(
            &m,
            "bridge_web_rate_limited_total{route=\"/api/v1/pagerduty/webhook\"}"
        ),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "bridge_web_webhook_verifications_total{outcome=\"valid\"}"
        ),
        Some(300.0)
    );
    b.stop().await;

    // With a limit of its own (web.webhook_rate_limit_*), the webhook is limited by that one.
    r.web.webhook_rate_limit_per_second = 1;
    r.web.webhook_rate_limit_burst = 3;
    r.server.rate_limit_per_second = 1000;
    r.server.rate_limit_burst = 1000;
    let b = start(r, Role::Web).await;
    let resp = Burst::until_refused(23, |i| {
        let send = post(&b.url, format!("wh-own-{i}"));
        async move {
            let resp = send.await.unwrap();
            assert!(resp.status() == 202 || resp.status() == 429, "{resp:?}");
            resp
        }
    })
    .await
    .refused_by(1, 3, "web.webhook_rate_limit_per_second");
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("web.webhook_rate_limit_per_second"),
        "{v}"
    );
    let m = metrics(&b.url).await;
    assert_eq!(
        sample(
            &m,
            "bridge_web_rate_limited_total{route=\"/api/v1/pagerduty/webhook\"}"
        ),
        Some(1.0),
        "{m}"
    );
    b.stop().await;
}

/// Issue 17, part 4, through role `web` (the page's data comes from the poller's status JSON):
/// the 24-hour picture counts pages (not the update of an open incident) and resolves, each
/// open alert shows its age and, once a webhook gave it, its incident link; text from OneView
/// and a non-http `html_url` come out inert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_web_status_page_shows_history_ages_incident_links_and_stays_inert() {
    let s = sims().await;
    let c = client();
    let spec = |sev: &str, d: &str, age_ms: i64| AlertSpec {
        severity: Some(sev.into()),
        description: Some(d.into()),
        age_ms: Some(age_ms),
        ..Default::default()
    };
    let hostile = s.ov.handle.add_alert(spec(
        "Critical",
        "<script>alert(\"pwn\")</script> & 'quoted'",
        (3 * 3600 + 12 * 60 + 2) * 1000,
    ));
    let fan =
        s.ov.handle
            .add_alert(spec("Warning", "Fan 5 degraded", 60_000));
    let psu =
        s.ov.handle
            .add_alert(spec("Critical", "PSU 2 failed", 300_000));
    // Raised before the bridge starts: their `modified` is as old as they are, so the first
    // full sync finds them (an incremental poll asks for changes since its start).
    let poller = start(raw(Some(&s)), Role::Poller).await;
    let mut r = raw(None);
    r.web.poller_url = Some(poller.url.clone());
    let web = start(r, Role::Web).await;
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.counters().incidents_opened == 3)
            .await
    );
    // A changed description re-triggers the open incident: an update, which pages nobody.
    s.ov.handle
        .set_description(id_of(&fan), "Fan 5 degraded, 40 % airflow")
        .unwrap();
    assert!(s.pd.wait_until(WAIT, |pd| pd.accepted().len() == 4).await);
    s.ov.handle.clear(id_of(&psu)).unwrap();
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.counters().incidents_resolved == 1)
            .await
    );
    assert_eq!(s.pd.counters().incidents_opened, 3);

    // Webhooks through the web replica: one with PagerDuty's https page, one whose html_url
    // is a script URL.
    let ack = serde_json::to_vec(&incident_event(
        "EV-HIST-1",
        "incident.acknowledged",
        &dedup(&hostile),
        "user_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&web.url, &ack, WEBHOOK_SECRET, "wh-hist-1")
            .await
            .status(),
        202
    );
    let mut evil = incident_event(
        "EV-HIST-2",
        "incident.acknowledged",
        &dedup(&fan),
        "user_reference",
    );
    evil["event"]["data"]["id"] = json!("PINC043");
    evil["event"]["data"]["html_url"] = json!("javascript:alert(document.cookie)");
    let evil = serde_json::to_vec(&evil).unwrap();
    assert_eq!(
        post_webhook(&web.url, &evil, WEBHOOK_SECRET, "wh-hist-2")
            .await
            .status(),
        202
    );
    assert!(
        eventually(
            || notes(&s.ov, id_of(&hostile)).len() == 1 && notes(&s.ov, id_of(&fan)).len() == 1
        )
        .await,
        "both write-backs done"
    );

    // The status JSON the web replica reads from the poller.
    let status = || async {
        c.get(format!("{}/internal/v1/status", poller.url))
            .bearer_auth(POLLER_TOKEN)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let sum = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>()
    };
    let st = status().await;
    let h = &st["history"];
    assert_eq!(h["bucket_seconds"], 900);
    assert_eq!(h["appliances"].as_array().unwrap().len(), 1);
    let a = &h["appliances"][0];
    assert_eq!(a["appliance"], APPLIANCE);
    assert_eq!(a["pages"].as_array().unwrap().len(), 96);
    assert_eq!(
        sum(&a["pages"]),
        3,
        "three incidents opened, the update is no page: {h}"
    );
    assert_eq!(sum(&a["resolves"]), 1, "{h}");
    let alerts = st["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 2, "{st}");
    let of = |uri: &str| alerts.iter().find(|a| a["uri"] == uri).unwrap();
    assert_eq!(
        of(&hostile)["incident_url"],
        "https://acme.pagerduty.com/incidents/PINC042"
    );
    assert!(
        of(&fan).get("incident_url").is_none(),
        "not http(s): not kept"
    );
    assert_eq!(of(&fan)["markers"], json!([]));

    // The page the web replica renders from it.
    let page = c
        .get(format!("{}/?token={TOKEN}", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("id=\"history-svg\""), "{page}");
    assert!(page.contains("data-series=\"2\""));
    assert!(page.contains(&format!(
        "<g class=\"series pages\" data-appliance=\"{APPLIANCE}\" data-total=\"3\">"
    )));
    assert!(page.contains(&format!(
        "<g class=\"series resolves\" data-appliance=\"{APPLIANCE}\" data-total=\"1\">"
    )));
    assert!(page.contains(">open for 3 h 12 min<"), "{page}");
    assert!(page.contains(">open for 1 min<"), "{page}");
    assert_eq!(page.matches("class=\"incident\"").count(), 1);
    assert!(page.contains(
        "<a class=\"incident\" href=\"https://acme.pagerduty.com/incidents/PINC042\" rel=\"noopener noreferrer\">"
    ));
    assert!(!page.contains("javascript:"));
    assert!(!page.contains("<script>alert"), "OneView text escaped");
    assert!(
        page.contains("&lt;script&gt;alert(&quot;pwn&quot;)&lt;/script&gt; &amp; &#39;quoted&#39;")
    );
    assert_eq!(
        page.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(page.contains("data-severity=\"Critical\">Critical <b>1</b>"));
    assert!(page.contains("data-severity=\"Warning\">Warning <b>1</b>"));

    // A resolve webhook forgets the link: the next incident of the alert is another one.
    let mut resolved = incident_event(
        "EV-HIST-3",
        "incident.resolved",
        &dedup(&hostile),
        "user_reference",
    );
    resolved["event"]["data"]["status"] = json!("resolved");
    let resolved = serde_json::to_vec(&resolved).unwrap();
    assert_eq!(
        post_webhook(&web.url, &resolved, WEBHOOK_SECRET, "wh-hist-3")
            .await
            .status(),
        202
    );
    assert!(
        eventually_async(|| async {
            let st = status().await;
            st["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a.get("incident_url").is_none())
        })
        .await,
        "the resolved incident's link is gone"
    );
    web.stop().await;
    poller.stop().await;
    s.stop().await;
}

/// Silences on a web replica: created, listed and expired on the poller through its internal
/// API; a 422 from the poller keeps its `field`; the alert list says which silence holds what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_web_forwards_silences_to_the_poller() {
    let s = sims().await;
    let poller = start(raw(Some(&s)), Role::Poller).await;
    let mut r = raw(None);
    r.web.poller_url = Some(poller.url.clone());
    let web = start(r, Role::Web).await;
    let c = client();
    let post = |body: Value| {
        c.post(format!("{}/api/v1/silences", web.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    let r = post(json!({
        "matchers": {"appliance": "nowhere"},
        "duration": "1h",
        "created_by": "ops",
        "comment": "c",
    }))
    .await
    .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["field"], "matchers.appliance", "{v}");
    assert!(v["message"].as_str().unwrap().contains(APPLIANCE), "{v}");

    let r = post(json!({
        "matchers": {"resource_name": "SGH8*"},
        "duration": "1h",
        "created_by": "ops",
        "comment": "firmware",
    }))
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = s.ov.handle.add_alert(AlertSpec {
        severity: Some("Critical".into()),
        resource_name: Some("SGH8-1".into()),
        description: Some("held".into()),
        ..Default::default()
    });
    let held = || async {
        let v: Value = c
            .get(format!("{}/api/v1/alerts", web.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["uri"] == uri.as_str() && a["silenced_by"] == id.as_str())
    };
    assert!(
        eventually_async(held).await,
        "the web replica lists the alert as held"
    );
    let v: Value = c
        .get(format!("{}/api/v1/silences", web.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["silences"][0]["id"], id.as_str());
    assert_eq!(v["silences"][0]["state"], "active");
    assert!(s.pd.incidents().is_empty(), "held: nobody paged");
    let r = c
        .delete(format!("{}/api/v1/silences/{id}?expired_by=ops", web.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().len() == 1).await,
        "expired through the web replica: the held alert pages"
    );
    let r = c
        .delete(format!("{}/api/v1/silences/no-such-id", web.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{}/api/v1/silences", web.url))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a token is required");
}
