//! Write-backs and pushes where they meet the hostile or the unlucky: one PagerDuty event
//! delivered five times at once, a replica stopping with acknowledged write-backs, a pushed
//! alert URI that leaves `/rest/alerts`, a push bigger than its queue, a push of garbage.
//! The assembled bridge (role `all`) against both simulators over real HTTP on loopback.

mod web_support;

use std::time::Duration;

use bridge::config::Role;
use bridge::sim::oneview::AlertSpec;
use bridge::sim::pagerduty::{Faults, Outage};
use serde_json::{Value, json};
use web_support::*;

fn ack(event_id: &str, uri: &str) -> Vec<u8> {
    serde_json::to_vec(&incident_event(
        event_id,
        "incident.acknowledged",
        &dedup(uri),
        "user_reference",
    ))
    .unwrap()
}

fn critical(s: &Sims, what: &str) -> String {
    s.ov.handle.add_alert(AlertSpec {
        severity: Some("Critical".into()),
        description: Some(what.into()),
        ..Default::default()
    })
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f().await
}

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
async fn five_deliveries_of_one_event_write_one_note() {
    let s = sims().await;
    // An appliance that does not check eTags: idempotency must not rest on it.
    s.ov.handle.configure(|c| c.check_etag = false);
    let b = start(raw(Some(&s)), Role::All).await;
    let uri = critical(&s, "PSU 1 failed");
    assert!(eventually(|| s.pd.incidents().len() == 1).await);
    // Every request on the alert waits until released, so the five deliveries overlap.
    s.ov.handle.update_faults(|f| f.hold_alert_requests = true);
    for i in 0..5 {
        let r = post_webhook(
            &b.url,
            &ack("EV-SAME", &uri),
            WEBHOOK_SECRET,
            &format!("wh-{i}"),
        )
        .await;
        assert_eq!(r.status(), 202, "delivery {i}");
    }
    assert!(eventually(|| s.ov.handle.held_requests() >= 1).await);
    // Give the other four every chance to reach OneView too (they must not).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        s.ov.handle.held_requests(),
        1,
        "one write-back per event reaches OneView at a time"
    );
    s.ov.handle.update_faults(|f| f.hold_alert_requests = false);
    let id = id_of(&uri);
    assert!(
        eventually_async(|| async {
            let m = metrics(&b.url).await;
            sample(&m, "bridge_web_writebacks_total{outcome=\"written\"}") == Some(1.0)
                && sample(&m, "bridge_web_writebacks_total{outcome=\"duplicate\"}") == Some(4.0)
        })
        .await,
        "{}",
        metrics(&b.url).await
    );
    assert_eq!(
        notes(&s.ov, id).len(),
        1,
        "one note: {:?}",
        notes(&s.ov, id)
    );
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writebacks_are_finished_when_the_replica_stops() {
    let s = sims().await;
    let mut r = raw(Some(&s));
    r.web.writeback_concurrency = 1;
    r.server.shutdown_timeout = std::time::Duration::from_secs(5);
    let b = start(r, Role::All).await;
    let uris: Vec<String> = (0..3)
        .map(|i| critical(&s, &format!("fan {i} failed")))
        .collect();
    assert!(eventually(|| s.pd.incidents().len() == 3).await);
    s.ov.handle.update_faults(|f| f.hold_alert_requests = true);
    for (i, uri) in uris.iter().enumerate() {
        let r = post_webhook(
            &b.url,
            &ack(&format!("EV-STOP-{i}"), uri),
            WEBHOOK_SECRET,
            &format!("wh-stop-{i}"),
        )
        .await;
        assert_eq!(r.status(), 202);
    }
    // One in progress (held by OneView), two queued: all three were answered 202.
    assert!(eventually(|| s.ov.handle.held_requests() == 1).await);
    let url = b.url.clone();
    let ov = s.ov.handle.clone();
    let release = tokio::spawn(async move {
        // Once the replica has begun to stop (readiness 503), OneView answers again.
        loop {
            let r = reqwest::get(format!("{url}/ready")).await;
            if r.map(|r| r.status() == 503).unwrap_or(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ov.update_faults(|f| f.hold_alert_requests = false);
    });
    b.stop().await;
    release.await.unwrap();
    for uri in &uris {
        assert_eq!(
            notes(&s.ov, id_of(uri)).len(),
            1,
            "{uri}: an acknowledged write-back is done before the replica exits"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_uri_outside_rest_alerts_is_refused_and_never_written_to() {
    let s = sims().await;
    let b = start(raw(Some(&s)), Role::All).await;
    let c = client();
    let evil = "/rest/alerts/1/../../../rest/server-hardware/ABC";
    let r = c
        .post(format!("{}/api/v1/alerts", b.url))
        .bearer_auth(TOKEN)
        .json(&json!({"uri": evil, "severity": "Critical", "alertState": "Active"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("canonical"),
        "{v}"
    );
    // A signed webhook naming that key finds nothing to write to.
    let before = s.ov.handle.counters();
    let body = serde_json::to_vec(&incident_event(
        "EV-EVIL",
        "incident.acknowledged",
        &format!("oneview:{APPLIANCE}:{evil}"),
        "user_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&b.url, &body, WEBHOOK_SECRET, "wh-evil")
            .await
            .status(),
        202
    );
    assert!(
        eventually_async(|| async {
            sample(
                &metrics(&b.url).await,
                "bridge_web_writebacks_total{outcome=\"ignored\"}",
            ) == Some(1.0)
        })
        .await
    );
    let after = s.ov.handle.counters();
    assert_eq!(
        after.requests("alert") + after.requests("other"),
        before.requests("alert") + before.requests("other"),
        "no request to any single resource"
    );
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_bigger_than_its_queue_is_answered_at_once_with_429() {
    let s = sims().await;
    // PagerDuty hangs, so nothing leaves the pipeline: its queue and the push queue fill up.
    s.pd.set_faults(Faults {
        outage: Some(Outage::Hang),
        ..Default::default()
    });
    let mut r = raw(Some(&s));
    r.pagerduty.queue_capacity = 5;
    r.web.push_queue = 10;
    let b = start(r, Role::All).await;
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"uri": format!("/rest/alerts/{}", 9000 + i), "severity": "Critical", "alertState": "Active"}))
        .collect();
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        client()
            .post(format!("{}/api/v1/alerts", b.url))
            .bearer_auth(TOKEN)
            .json(&items)
            .send(),
    )
    .await
    .expect("answered at once, not after the request timeout")
    .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    let accepted = v["accepted"].as_array().unwrap().len();
    let not_admitted = v["not_admitted"].as_u64().unwrap() as usize;
    assert_eq!(accepted + not_admitted, 50, "{v}");
    assert!(
        (10..=20).contains(&accepted),
        "the push queue and the pushes' share of the pipeline, no more: {v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("web.push_queue"),
        "{v}"
    );
    s.pd.set_faults(Faults::default());
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_garbage_gets_a_short_answer() {
    let s = sims().await;
    let b = start(raw(Some(&s)), Role::All).await;
    // `[0,0,...]`: half a million bad items in just under the 1 MiB body limit.
    let n = 500_000;
    let mut body = String::with_capacity(2 * n + 2);
    body.push('[');
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push('0');
    }
    body.push(']');
    let resp = client()
        .post(format!("{}/api/v1/alerts", b.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let text = resp.text().await.unwrap();
    assert!(text.len() < 8_000, "an answer of {} bytes", text.len());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["errors"].as_array().unwrap().len(), 20);
    assert_eq!(v["error_count"], n);
    b.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_refused_on_a_closing_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = sims().await;
    let b = start(raw(Some(&s)), Role::All).await;
    let addr = b.url.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // Declares 2 MiB (over server.api_body_limit) and sends only the head: the body stays
    // unread, so the answer must say the connection closes, or a keep-alive client would send
    // its next request into it.
    let head = format!(
        "POST /api/v1/alerts HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    b.stop().await;
    s.stop().await;
}
