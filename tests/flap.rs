//! Flap damping end to end (issue 17 §2): the assembled bridge (role `all`) between the OneView
//! and PagerDuty simulators over real HTTP on loopback. An alert is raised and cleared on the
//! OneView simulator; each transition is waited for in the bridge's own alert list
//! (`GET /api/v1/alerts`), and the assertions are on what PagerDuty heard (counts and order),
//! never on wall-clock windows.

mod inproc;

use std::time::Duration;

use bridge::config;
use bridge::sim::oneview::AlertSpec;
use bridge::sim::pagerduty::{self as pdsim, IncidentStatus};
use inproc::{Bridge, Sims, WAIT, eventually, sims};
use serde_json::Value;

const ROUTING_KEY: &str = "FLAPROUTINGKEY000000000000000001";
const APPLIANCE: &str = "synergy-flap";
const TOKEN: &str = "flap-test-token-0123456789abcdef";
const CYCLES: usize = 10;

async fn bridge(s: &Sims, flap: impl FnOnce(&mut config::RawFlap)) -> Bridge {
    bridge_on(s, None, flap).await
}

async fn bridge_on(
    s: &Sims,
    state: Option<std::path::PathBuf>,
    flap: impl FnOnce(&mut config::RawFlap),
) -> Bridge {
    let mut raw = inproc::raw_config(s, APPLIANCE, ROUTING_KEY, TOKEN, state);
    // Short, but longer than a poll or two on a busy machine: a re-raise soon after a clear
    // must come before the settle.
    raw.flap.settle = Duration::from_secs(4);
    flap(&mut raw.flap);
    inproc::start(raw).await
}

impl Bridge {
    /// The bridge's open alert of `dedup`, as `GET /api/v1/alerts` lists it.
    async fn listed(&self, dedup: &str) -> Option<Value> {
        let v: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/alerts?per_page=1000", self.url))
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
            .find(|a| a["dedup_key"] == dedup)
            .cloned()
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

    async fn status_page(&self) -> String {
        reqwest::Client::new()
            .get(format!("{}/", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn key(uri: &str) -> String {
    format!("oneview:{APPLIANCE}:{uri}")
}

fn alert(name: &str) -> AlertSpec {
    AlertSpec {
        severity: Some("Critical".into()),
        description: Some(format!("{name}: power supply lost redundancy")),
        resource_name: Some(name.into()),
        resource_category: Some("server-hardware".into()),
        ..Default::default()
    }
}

fn id_of(uri: &str) -> u64 {
    uri.rsplit('/').next().unwrap().parse().unwrap()
}

/// The events PagerDuty accepted for a dedup key, in order.
fn accepted(pd: &pdsim::SimHandle, dedup: &str) -> Vec<pdsim::LoggedEvent> {
    pd.accepted()
        .into_iter()
        .filter(|e| e.dedup_key.as_deref() == Some(dedup))
        .collect()
}

fn actions(pd: &pdsim::SimHandle, dedup: &str) -> Vec<String> {
    accepted(pd, dedup)
        .into_iter()
        .map(|e| e.event_action.unwrap_or_default())
        .collect()
}

fn flapping_detail(e: &pdsim::LoggedEvent) -> Option<Value> {
    e.body
        .as_ref()
        .and_then(|b| b["payload"]["custom_details"].get("flapping").cloned())
}

/// Raises an unrelated alert and waits for its page: everything the pipeline took before it
/// has been decided (and, for one key, sent in order) by then.
async fn sentinel(s: &Sims, name: &str) {
    let uri = s.ov.handle.add_alert(alert(name));
    let k = key(&uri);
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == k))
            .await,
        "sentinel {name} pages"
    );
}

/// Raises (again) and clears the alert `cycles` times, each transition waited for in the
/// bridge's alert list; ends cleared. `each_clear` runs after every clear was seen.
async fn cycle<F, Fut>(s: &Sims, b: &Bridge, uri: &str, cycles: usize, each_clear: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let k = key(uri);
    for n in 0..cycles {
        if n > 0 {
            s.ov.handle.set_state(id_of(uri), "Active").unwrap();
        }
        assert!(
            eventually(|| async { b.listed(&k).await.is_some() }).await,
            "raise {n} seen by the bridge"
        );
        s.ov.handle.clear(id_of(uri)).unwrap();
        assert!(
            eventually(|| async { b.listed(&k).await.is_none() }).await,
            "clear {n} seen by the bridge"
        );
        each_clear(n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_alert_opens_one_incident_and_resolves_once_after_settling() {
    let s = sims().await;
    // Damped from its second transition (the first clear), so the whole run is one incident.
    let b = bridge(&s, |f| f.max_transitions = 1).await;
    for m in [
        "bridge_flapping_alerts",
        "bridge_flap_held_resolves_total",
        "bridge_flap_settled_total",
    ] {
        assert_eq!(b.metric(m).await, 0.0, "{m} is created at zero");
    }
    let uri = s.ov.handle.add_alert(alert("SGH-flappy"));
    let k = key(&uri);
    let pd = &s.pd;
    let k_ref = &k;
    let b_ref = &b;
    cycle(&s, &b, &uri, CYCLES, |n| async move {
        // Once the bridge saw the clear, no resolve is sent for it while it flaps.
        assert!(
            !actions(pd, k_ref).contains(&"resolve".to_owned()),
            "no resolve while flapping (after clear {n})"
        );
        assert_eq!(b_ref.metric("bridge_flapping_alerts").await, 1.0);
    })
    .await;
    // Re-raised once more, it is listed as flapping, on the API and on the status page.
    s.ov.handle.set_state(id_of(&uri), "Active").unwrap();
    assert!(
        eventually(|| async { b.listed(&k).await.is_some_and(|a| a["flapping"] == true) }).await,
        "GET /api/v1/alerts says flapping: {:?}",
        b.listed(&k).await
    );
    let a = b.listed(&k).await.unwrap();
    assert!(
        a["markers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["kind"] == "flapping"),
        "{a}"
    );
    let page = b.status_page().await;
    assert!(
        page.contains("marker marker-flapping"),
        "the status page marks the flapping alert"
    );
    s.ov.handle.clear(id_of(&uri)).unwrap();
    assert!(eventually(|| async { b.listed(&k).await.is_none() }).await);

    // It stays cleared: after flap.settle (4 s) it resolves, once.
    assert!(
        s.pd.wait_until(WAIT, |pd| pd
            .incidents()
            .iter()
            .any(|i| i.dedup_key == k && i.status == IncidentStatus::Resolved))
            .await,
        "the flapping alert resolves after settling"
    );
    sentinel(&s, "CZ-other").await;
    assert_eq!(
        actions(&s.pd, &k),
        ["trigger", "trigger", "resolve"],
        "one trigger, one update carrying flapping, one resolve"
    );
    let events = accepted(&s.pd, &k);
    let incidents: std::collections::BTreeSet<u64> =
        events.iter().filter_map(|e| e.incident).collect();
    assert_eq!(incidents.len(), 1, "one incident: {events:?}");
    assert_eq!(flapping_detail(&events[0]), None, "not known to flap yet");
    assert_eq!(
        flapping_detail(&events[1]),
        Some(Value::Bool(true)),
        "the update PagerDuty holds says flapping"
    );
    let held_for =
        s.pd.incidents()
            .into_iter()
            .filter(|i| i.dedup_key == k)
            .count();
    assert_eq!(held_for, 1);
    assert!(
        b.metric("bridge_flap_held_resolves_total").await >= (CYCLES + 1) as f64,
        "every clear while flapping was held"
    );
    assert_eq!(b.metric("bridge_flap_settled_total").await, 1.0);
    assert_eq!(b.metric("bridge_flapping_alerts").await, 0.0);

    // Settled means forgotten: raised again later, it is a new incident without the flag.
    s.ov.handle.set_state(id_of(&uri), "Active").unwrap();
    assert!(
        s.pd.wait_until(WAIT, |pd| actions(pd, &k).len() == 4).await,
        "raised after settling: paged"
    );
    let events = accepted(&s.pd, &k);
    assert_eq!(events[3].event_action.as_deref(), Some("trigger"));
    assert_eq!(flapping_detail(&events[3]), None);
    assert_ne!(events[3].incident, events[0].incident, "a new incident");

    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_flap_damping_off_every_raise_and_clear_pages() {
    let s = sims().await;
    let b = bridge(&s, |f| {
        f.enabled = false;
        f.max_transitions = 1;
    })
    .await;
    let uri = s.ov.handle.add_alert(alert("SGH-flappy"));
    let k = key(&uri);
    let pd = &s.pd;
    let k_ref = &k;
    cycle(&s, &b, &uri, CYCLES, |n| async move {
        // Each clear is resolved before the next raise, so PagerDuty opens a new incident
        // every time.
        assert!(
            pd.wait_until(WAIT, |pd| actions(pd, k_ref).len() == 2 * (n + 1))
                .await,
            "cycle {n}: {:?}",
            actions(pd, k_ref)
        );
    })
    .await;
    sentinel(&s, "CZ-other").await;
    let got = actions(&s.pd, &k);
    let want: Vec<&str> = ["trigger", "resolve"].repeat(CYCLES);
    assert_eq!(got, want);
    let incidents: std::collections::BTreeSet<u64> = accepted(&s.pd, &k)
        .iter()
        .filter_map(|e| e.incident)
        .collect();
    assert_eq!(incidents.len(), CYCLES);
    assert!(
        accepted(&s.pd, &k)
            .iter()
            .all(|e| flapping_detail(e).is_none())
    );
    assert_eq!(b.metric("bridge_flap_held_resolves_total").await, 0.0);

    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_that_clears_no_more_than_max_transitions_times_behaves_as_before() {
    let s = sims().await;
    // The defaults: more than 4 transitions within 30 minutes flap; two cycles are 4.
    let b = bridge(&s, |_| {}).await;
    let uri = s.ov.handle.add_alert(alert("SGH-steady"));
    let k = key(&uri);
    let pd = &s.pd;
    let k_ref = &k;
    cycle(&s, &b, &uri, 2, |n| async move {
        assert!(
            pd.wait_until(WAIT, |pd| actions(pd, k_ref).len() == 2 * (n + 1))
                .await,
            "cycle {n}: resolved at once, {:?}",
            actions(pd, k_ref)
        );
    })
    .await;
    assert_eq!(
        actions(&s.pd, &k),
        ["trigger", "resolve", "trigger", "resolve"]
    );
    assert!(
        accepted(&s.pd, &k)
            .iter()
            .all(|e| flapping_detail(e).is_none())
    );
    assert_eq!(b.metric("bridge_flapping_alerts").await, 0.0);

    // The fifth transition within the window makes it flap: the re-raise pages (the incident
    // was resolved) with the flag, and its clear is held.
    s.ov.handle.set_state(id_of(&uri), "Active").unwrap();
    assert!(pd.wait_until(WAIT, |pd| actions(pd, &k).len() == 5).await);
    let events = accepted(&s.pd, &k);
    assert_eq!(flapping_detail(&events[4]), Some(Value::Bool(true)));
    assert_eq!(b.metric("bridge_flapping_alerts").await, 1.0);
    s.ov.handle.clear(id_of(&uri)).unwrap();
    assert!(eventually(|| async { b.listed(&k).await.is_none() }).await);
    assert_eq!(actions(&s.pd, &k).len(), 5, "the clear is held");
    assert!(
        pd.wait_until(WAIT, |pd| actions(pd, &k).len() == 6).await,
        "and resolved after settling"
    );
    assert_eq!(actions(&s.pd, &k)[5], "resolve");

    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

/// Runs `check-config` with a clean environment plus `env`.
fn check_config(file: &std::path::Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_oneview-pagerduty-bridge"));
    cmd.arg("check-config")
        .arg("--config")
        .arg(file)
        .env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn flap_config_defaults_file_environment_and_wrong_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridge.toml");
    let base = format!(
        "[oneview]\nurl = \"https://ov.example.com\"\nusername = \"u\"\npassword = \"p\"\n[pagerduty]\nrouting_key = \"{ROUTING_KEY}\"\n"
    );
    std::fs::write(&file, &base).unwrap();
    let (code, out, err) = check_config(&file, &[]);
    assert_eq!(code, 0, "{err}");
    for line in [
        "[flap]",
        "enabled = true",
        "max_transitions = 4",
        "window = \"30m\"",
        "settle = \"10m\"",
    ] {
        assert!(out.contains(line), "default {line} missing:\n{out}");
    }

    std::fs::write(
        &file,
        format!("{base}[flap]\nmax_transitions = 6\nsettle = \"5m\"\n"),
    )
    .unwrap();
    let (code, out, err) = check_config(
        &file,
        &[
            ("BRIDGE_FLAP__ENABLED", "false"),
            ("BRIDGE_FLAP__SETTLE", "90s"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_transitions = 6"), "{out}");
    assert!(out.contains("enabled = false"), "{out}");
    assert!(
        out.contains("settle = \"1m 30s\""),
        "the environment wins:\n{out}"
    );

    // A misspelt key and out-of-range values are each named.
    std::fs::write(
        &file,
        format!("{base}[flap]\nmax_transition = 6\nwindow = \"0s\"\n"),
    )
    .unwrap();
    let (code, _, err) = check_config(&file, &[("BRIDGE_FLAP__MAX_TRANSITIONS", "0")]);
    assert_ne!(code, 0);
    for k in ["flap.max_transition", "flap.window", "flap.max_transitions"] {
        assert!(err.contains(k), "{k} not named:\n{err}");
    }
    assert!(err.contains("unknown key"), "{err}");
    assert!(err.contains("must be between 1 and 1000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_held_for_settling_is_not_lost_across_a_restart() {
    let s = sims().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    // A settle far beyond the test: the resolve is still held when the bridge stops.
    let b = bridge_on(&s, Some(state.clone()), |f| {
        f.max_transitions = 1;
        f.settle = Duration::from_secs(3600);
    })
    .await;
    let uri = s.ov.handle.add_alert(alert("SGH-restart"));
    let k = key(&uri);
    cycle(&s, &b, &uri, 3, |_| async {}).await;
    sentinel(&s, "CZ-before").await;
    let before = actions(&s.pd, &k);
    assert_eq!(before.first().map(String::as_str), Some("trigger"));
    assert!(
        !before.contains(&"resolve".to_owned()),
        "held while flapping: {before:?}"
    );
    b.stop().await;

    // The flap state is not durable: the next start rebuilds it. The ledger says the incident
    // is open and OneView has the alert cleared, so it is resolved, at the latest after
    // flap.settle (here 4 s, and max_transitions = 1 damps even that first clear).
    let b = bridge_on(&s, Some(state), |f| f.max_transitions = 1).await;
    assert!(
        s.pd.wait_until(WAIT, |pd| actions(pd, &k).contains(&"resolve".to_owned()))
            .await,
        "resolved after the restart: {:?}",
        actions(&s.pd, &k)
    );
    sentinel(&s, "CZ-after").await;
    let after = actions(&s.pd, &k);
    assert_eq!(
        after.iter().filter(|a| *a == "resolve").count(),
        1,
        "once: {after:?}"
    );
    assert_eq!(after.last().map(String::as_str), Some("resolve"));
    let open =
        s.pd.incidents()
            .into_iter()
            .filter(|i| i.dedup_key == k && i.status != IncidentStatus::Resolved)
            .count();
    assert_eq!(open, 0, "no incident left open");

    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_flapping_alert_sends_no_update_and_still_resolves_once_after_settling() {
    let s = sims().await;
    let b = bridge(&s, |f| f.max_transitions = 1).await;
    let uri = s.ov.handle.add_alert(alert("SGH-quiet"));
    let k = key(&uri);
    assert!(
        s.pd.wait_until(WAIT, |pd| actions(pd, &k) == ["trigger"])
            .await,
        "paged before the silence"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/silences", b.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({
            "matchers": {"resource_name": "SGH-quiet"},
            "duration": "1h",
            "created_by": "test",
            "comment": "flapping under maintenance",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Flapping while silenced: the clears are held by flap damping, the re-raises (which
    // would update the incident with the flag) by the silence.
    let pd = &s.pd;
    let k_ref = &k;
    let b_ref = &b;
    cycle(&s, &b, &uri, 4, |n| async move {
        assert_eq!(actions(pd, k_ref), ["trigger"], "nothing sent (clear {n})");
        assert_eq!(b_ref.metric("bridge_flapping_alerts").await, 1.0);
    })
    .await;
    assert!(b.metric("bridge_silence_suppressed_triggers_total").await >= 1.0);
    // Settled, still silenced: the resolve of the open incident flows, once.
    assert!(
        s.pd.wait_until(WAIT, |pd| actions(pd, &k).len() == 2).await,
        "resolved after settling although silenced"
    );
    sentinel(&s, "CZ-other-2").await;
    assert_eq!(actions(&s.pd, &k), ["trigger", "resolve"]);

    b.stop().await;
    s.pd.shutdown();
    s.ov.stop().await;
}
