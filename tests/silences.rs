//! Silences (maintenance windows) end to end: the assembled bridge (role `all`) between the
//! OneView and PagerDuty simulators over real HTTP on loopback, silences created and expired
//! through `/api/v1/silences` and the `silence` CLI. Assertions are on what PagerDuty heard
//! (counts and order), never on wall-clock timing.

mod bridge_proc;
mod inproc;

use std::path::PathBuf;
use std::time::Duration;

use bridge::sim::oneview::AlertSpec;
use bridge::sim::pagerduty::{self as pdsim, IncidentStatus};
use inproc::{Bridge, Sims, WAIT, eventually, sims};
use serde_json::{Value, json};

const ROUTING_KEY: &str = "SILENCEROUTINGKEY000000000000001";
const APPLIANCE: &str = "synergy-silence";
const TOKEN: &str = "silence-test-token-0123456789abcdef";

async fn bridge(s: &Sims, state: Option<PathBuf>) -> Bridge {
    inproc::start(inproc::raw_config(s, APPLIANCE, ROUTING_KEY, TOKEN, state)).await
}

impl Bridge {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    async fn silence(&self, body: Value) -> String {
        let (status, v) = self
            .call(reqwest::Method::POST, "/api/v1/silences", Some(body))
            .await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn expire(&self, id: &str) {
        let (status, v) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/api/v1/silences/{id}?expired_by=test"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["state"], "expired");
    }

    /// Dedup key -> the silence holding it, from `GET /api/v1/alerts`.
    async fn held(&self) -> std::collections::BTreeMap<String, Option<String>> {
        let (_, v) = self
            .call(reqwest::Method::GET, "/api/v1/alerts?per_page=1000", None)
            .await;
        v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["dedup_key"].as_str().unwrap().to_owned(),
                    a["silenced_by"].as_str().map(str::to_owned),
                )
            })
            .collect()
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or_else(|| panic!("metric {name} missing from /metrics"))
    }
}

fn key(uri: &str) -> String {
    format!("oneview:{APPLIANCE}:{uri}")
}

fn alert(name: &str, severity: &str) -> AlertSpec {
    AlertSpec {
        severity: Some(severity.into()),
        description: Some(format!("{name}: fan failed")),
        resource_name: Some(name.into()),
        resource_category: Some("server-hardware".into()),
        ..Default::default()
    }
}

fn id_of(uri: &str) -> u64 {
    uri.rsplit('/').next().unwrap().parse().unwrap()
}

/// PagerDuty events (accepted) for a dedup key, as their actions in order.
fn actions(pd: &pdsim::SimHandle, dedup: &str) -> Vec<String> {
    pd.accepted()
        .into_iter()
        .filter(|e| e.dedup_key.as_deref() == Some(dedup))
        .map(|e| e.event_action.unwrap_or_default())
        .collect()
}

/// Raises an unrelated alert and waits for its page: everything the pipeline took before it
/// has been decided by then.
async fn sentinel(s: &Sims, name: &str) {
    let uri = s.ov.handle.add_alert(alert(name, "Critical"));
    let k = key(&uri);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == k))
            .await,
        "sentinel {name} pages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_holds_raises_and_updates_lets_resolves_through_and_pages_the_still_open_once_when_expired()
 {
    let s = sims().await;
    let b = bridge(&s, None).await;
    for m in [
        "bridge_silences_active",
        "bridge_silenced_alerts",
        "bridge_silence_suppressed_triggers_total",
    ] {
        assert_eq!(b.metric(m).await, 0.0, "{m} is created at zero");
    }

    // Open before the silence: paged.
    let before = s.ov.handle.add_alert(alert("SGH8-before", "Critical"));
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().len() == 1).await,
        "the alert raised before the silence pages"
    );

    let id = b
        .silence(json!({
            "matchers": {"resource_name": "sgh8*"},
            "duration": "2h",
            "created_by": "ops@example.com",
            "comment": "firmware update CHG-1",
        }))
        .await;
    assert_eq!(b.metric("bridge_silences_active").await, 1.0);

    // Raised during the silence: held. Another resource: paged.
    let during = s.ov.handle.add_alert(alert("SGH8-during", "Critical"));
    let cleared = s.ov.handle.add_alert(alert("SGH8-gone", "Warning"));
    sentinel(&s, "CZ-other").await;
    assert!(
        eventually(|| async {
            let h = b.held().await;
            h.get(&key(&during)) == Some(&Some(id.clone()))
                && h.get(&key(&cleared)) == Some(&Some(id.clone()))
        })
        .await,
        "GET /api/v1/alerts names the silence holding the alerts raised during it: {:?}",
        b.held().await
    );
    assert_eq!(
        b.held().await.get(&key(&before)),
        Some(&Some(id.clone())),
        "an alert open before the silence is held too (its updates do not page)"
    );
    // An update of the alert paged before: not sent.
    s.ov.handle.set_severity(id_of(&before), "Warning").unwrap();
    assert!(
        eventually(|| async { b.metric("bridge_silence_suppressed_triggers_total").await == 3.0 })
            .await,
        "two raises and one update suppressed"
    );
    assert!(
        eventually(|| async { b.metric("bridge_silenced_alerts").await == 3.0 }).await,
        "three open alerts held"
    );

    // A resolve of the open incident flows while silenced; a clear of a held alert sends nothing.
    s.ov.handle.clear(id_of(&before)).unwrap();
    s.ov.handle.clear(id_of(&cleared)).unwrap();
    let kb = key(&before);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd
            .incidents()
            .iter()
            .any(|i| i.dedup_key == kb && i.status == IncidentStatus::Resolved))
            .await,
        "the resolve of an incident opened before the silence flows"
    );
    assert_eq!(actions(&s.pd, &kb), ["trigger", "resolve"]);
    sentinel(&s, "CZ-other-2").await;
    assert!(
        actions(&s.pd, &key(&cleared)).is_empty(),
        "raised and cleared while held: nothing sent"
    );
    assert!(actions(&s.pd, &key(&during)).is_empty());
    assert!(
        eventually(|| async { b.metric("bridge_silenced_alerts").await == 1.0 }).await,
        "one open alert still held"
    );

    // Expired: the alert still open and held pages now, once; the cleared one never.
    b.expire(&id).await;
    let kd = key(&during);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == kd))
            .await,
        "expiring the silence pages the alert it held"
    );
    sentinel(&s, "CZ-other-3").await;
    assert_eq!(actions(&s.pd, &kd), ["trigger"], "exactly once");
    assert!(actions(&s.pd, &key(&cleared)).is_empty());
    assert_eq!(b.metric("bridge_silences_active").await, 0.0);
    assert!(eventually(|| async { b.metric("bridge_silenced_alerts").await == 0.0 }).await);
    let (_, list) = b.call(reqwest::Method::GET, "/api/v1/silences", None).await;
    assert_eq!(list["silences"][0]["state"], "expired");
    assert_eq!(list["silences"][0]["expired_by"], "test");

    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upcoming_silence_holds_from_its_start_and_its_end_pages_what_is_still_open() {
    let s = sims().await;
    let b = bridge(&s, None).await;
    let now = chrono::Utc::now();
    let id = b
        .silence(json!({
            "matchers": {"severity": "critical", "appliance": APPLIANCE},
            "starts_at": (now + chrono::Duration::seconds(2)).to_rfc3339(),
            "ends_at": (now + chrono::Duration::seconds(12)).to_rfc3339(),
            "created_by": "ops",
            "comment": "window",
        }))
        .await;
    let (_, v) = b
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/silences/{id}"),
            None,
        )
        .await;
    assert_eq!(v["state"], "pending");
    // Before its start: paged.
    let early = s.ov.handle.add_alert(alert("early", "Critical"));
    let ke = key(&early);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == ke))
            .await
    );
    assert!(
        eventually(|| async {
            b.call(
                reqwest::Method::GET,
                &format!("/api/v1/silences/{id}"),
                None,
            )
            .await
            .1["state"]
                == "active"
        })
        .await
    );
    // While it lasts: held, and one cleared again before its end.
    let held = s.ov.handle.add_alert(alert("held", "Critical"));
    let gone = s.ov.handle.add_alert(alert("gone", "Critical"));
    assert!(
        eventually(|| async {
            let h = b.held().await;
            h.get(&key(&held)) == Some(&Some(id.clone())) && h.contains_key(&key(&gone))
        })
        .await
    );
    s.ov.handle.clear(id_of(&gone)).unwrap();
    assert!(
        eventually(|| async { !b.held().await.contains_key(&key(&gone)) }).await,
        "the clear was taken"
    );
    // Its end pages the alert still open, once.
    let kh = key(&held);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == kh))
            .await,
        "the end of the silence pages the alert it held"
    );
    sentinel(&s, "after").await;
    assert_eq!(actions(&s.pd, &kh), ["trigger"]);
    assert!(actions(&s.pd, &key(&gone)).is_empty());
    assert_eq!(actions(&s.pd, &ke), ["trigger"], "the early one paged once");
    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_survive_a_restart_with_the_file_backend() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let s = sims().await;
    let b = bridge(&s, Some(state.clone())).await;
    let id = b
        .silence(json!({
            "matchers": {"resource_name": "SGH8*"},
            "duration": "1h",
            "created_by": "ops",
            "comment": "firmware",
        }))
        .await;
    let held = s.ov.handle.add_alert(alert("SGH8-1", "Critical"));
    assert!(
        eventually(|| async { b.held().await.get(&key(&held)) == Some(&Some(id.clone())) }).await
    );
    b.stop().await;

    // The next process loads the silence: the alert stays held through its first full sync.
    let b = bridge(&s, Some(state)).await;
    let (_, list) = b.call(reqwest::Method::GET, "/api/v1/silences", None).await;
    assert_eq!(list["silences"][0]["id"], id.as_str());
    assert_eq!(list["silences"][0]["state"], "active");
    sentinel(&s, "CZ-restart").await;
    assert_eq!(b.held().await.get(&key(&held)), Some(&Some(id.clone())));
    assert!(
        actions(&s.pd, &key(&held)).is_empty(),
        "held across the restart"
    );
    let page = reqwest::Client::new()
        .get(format!("{}/", b.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"silences\"") && page.contains("firmware"),
        "the status page lists it"
    );
    assert!(
        page.contains("data-marker=\"silenced\""),
        "and marks the alert it holds"
    );

    b.expire(&id).await;
    let k = key(&held);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == k))
            .await
    );
    sentinel(&s, "CZ-restart-2").await;
    assert_eq!(actions(&s.pd, &k), ["trigger"]);
    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_bad_silences_with_422_naming_the_field_and_requires_a_token() {
    let s = sims().await;
    let b = bridge(&s, None).await;
    let ok = || {
        json!({
            "matchers": {"resource_name": "SGH8*"},
            "duration": "1h",
            "created_by": "ops",
            "comment": "c",
        })
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut v = ok();
                v["matchers"] = json!({"hostname": "x"});
                v
            },
            "matchers.hostname",
        ),
        (
            {
                let mut v = ok();
                v["matchers"] = json!({});
                v
            },
            "matchers",
        ),
        (
            {
                let mut v = ok();
                v["matchers"] = json!({"resource_name": "SGH[8"});
                v
            },
            "matchers.resource_name",
        ),
        (
            {
                let mut v = ok();
                v["matchers"] = json!({"appliance": "nowhere"});
                v
            },
            "matchers.appliance",
        ),
        (
            {
                let mut v = ok();
                v.as_object_mut().unwrap().remove("duration");
                let now = chrono::Utc::now();
                v["starts_at"] = json!((now + chrono::Duration::hours(2)).to_rfc3339());
                v["ends_at"] = json!((now + chrono::Duration::hours(1)).to_rfc3339());
                v
            },
            "ends_at",
        ),
        (
            {
                let mut v = ok();
                v["starts_at"] = json!("tomorrow");
                v
            },
            "starts_at",
        ),
        (
            {
                let mut v = ok();
                v["duration"] = json!("a while");
                v
            },
            "duration",
        ),
        (
            {
                let mut v = ok();
                v["starts_at"] = json!("2099-01-01T00:00:00Z");
                v
            },
            "starts_at",
        ),
        (
            {
                let mut v = ok();
                v["comment"] = json!("");
                v
            },
            "comment",
        ),
        (
            {
                let mut v = ok();
                v["colour"] = json!("red");
                v
            },
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (status, v) = b
            .call(
                reqwest::Method::POST,
                "/api/v1/silences",
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body} -> {v}");
        assert_eq!(v["error"], "invalid_silence", "{v}");
        assert_eq!(v["field"], field, "{body} -> {v}");
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/silences", b.url))
        .json(&ok())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a silence needs a token");
    let (status, _) = b
        .call(reqwest::Method::DELETE, "/api/v1/silences/unknown-id", None)
        .await;
    assert_eq!(status, 404);
    let (_, list) = b.call(reqwest::Method::GET, "/api/v1/silences", None).await;
    assert_eq!(
        list["silences"].as_array().unwrap().len(),
        0,
        "nothing was stored"
    );
    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

/// The `silence` CLI of the built binary against a running bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_adds_lists_and_expires_silences_and_names_the_url_and_status_on_errors() {
    let s = sims().await;
    let b = bridge(&s, None).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // `token`: 0 none, 1 `--token-file`, 2 `BRIDGE_API_TOKEN`.
    let run = |args: Vec<String>, token: u8| {
        let url = b.url.clone();
        let token_file = token_file.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut cmd = std::process::Command::new(bridge_proc::BIN);
                cmd.arg("silence")
                    .args(&args)
                    .env_clear()
                    .env("BRIDGE_URL", &url)
                    .env("USER", "cli-user");
                match token {
                    1 => {
                        cmd.arg("--token-file").arg(&token_file);
                    }
                    2 => {
                        cmd.env("BRIDGE_API_TOKEN", TOKEN);
                    }
                    _ => {}
                }
                let out = cmd.output().unwrap();
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .await
            .unwrap()
        }
    };
    let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let (ok, out, err) = run(
        args(&[
            "add",
            "--match",
            "resource_name=SGH8*",
            "--match",
            "severity=Critical",
            "--duration",
            "2h",
            "--comment",
            "firmware update",
        ]),
        1,
    )
    .await;
    assert!(ok, "{err}");
    let id = out.trim().to_owned();
    assert_eq!(id.len(), 36, "prints the id: {out}");
    let (_, v) = b
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/silences/{id}"),
            None,
        )
        .await;
    assert_eq!(v["created_by"], "cli-user", "created_by defaults to $USER");
    assert_eq!(v["matchers"]["severity"], "Critical");

    let (ok, out, err) = run(args(&["list"]), 2).await;
    assert!(ok, "{err}");
    assert!(
        !out.contains(TOKEN) && !err.contains(TOKEN),
        "the token is never printed"
    );
    assert!(
        out.contains(&id) && out.contains("active") && out.contains("firmware update"),
        "{out}"
    );

    // Errors name the URL and the HTTP status, and never print the token.
    let (ok, _, err) = run(args(&["add", "--match", "host=x", "--comment", "c"]), 1).await;
    assert!(!ok);
    assert!(
        err.contains(&format!("{}/api/v1/silences", b.url)) && err.contains("422"),
        "{err}"
    );
    let (ok, _, err) = run(args(&["list"]), 0).await;
    assert!(!ok);
    assert!(err.contains("401"), "{err}");
    assert!(!err.contains(TOKEN));

    let (ok, out, err) = run(args(&["expire", &id]), 1).await;
    assert!(ok, "{err}");
    assert!(out.contains(&id));
    let (_, v) = b
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/silences/{id}"),
            None,
        )
        .await;
    assert_eq!(v["state"], "expired");
    assert_eq!(v["expired_by"], "cli-user");
    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silence_that_ended_while_the_bridge_was_down_pages_its_alert_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    let s = sims().await;
    let b = bridge(&s, Some(state.clone())).await;
    let ends_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let id = b
        .silence(json!({
            "matchers": {"resource_name": "SGH8*"},
            "ends_at": ends_at.to_rfc3339(),
            "created_by": "ops",
            "comment": "short window",
        }))
        .await;
    let held = s.ov.handle.add_alert(alert("SGH8-down", "Critical"));
    assert!(
        eventually(|| async { b.held().await.get(&key(&held)) == Some(&Some(id.clone())) }).await
    );
    b.stop().await;
    assert!(actions(&s.pd, &key(&held)).is_empty());
    // Down past the end of the window.
    while chrono::Utc::now() <= ends_at + chrono::Duration::milliseconds(200) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = bridge(&s, Some(state)).await;
    let k = key(&held);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == k))
            .await,
        "the first sync after the restart pages what the ended silence held"
    );
    sentinel(&s, "CZ-down").await;
    assert_eq!(actions(&s.pd, &k), ["trigger"]);
    let (_, list) = b.call(reqwest::Method::GET, "/api/v1/silences", None).await;
    assert_eq!(
        list["silences"][0]["state"], "expired",
        "kept, expired, until the retention"
    );
    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}
