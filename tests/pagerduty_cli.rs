//! The `send-test-event` and `simulate pagerduty` commands, run as the built binary.

mod pagerduty_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bridge::sim::pagerduty::{self as pdsim, Faults, IncidentStatus};
use pagerduty_support::*;

const BIN: &str = env!("CARGO_BIN_EXE_oneview-pagerduty-bridge");

fn write_config(dir: &std::path::Path, events_url: &str) -> std::path::PathBuf {
    let path = dir.join("bridge.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[pagerduty]
routing_key = "{ROUTING_KEY}"
events_url = "{events_url}"

[[pagerduty.routes]]
name = "storage"
resource_categories = ["storage-systems"]
routing_key = "{STORAGE_KEY}"
"#
        ),
    )
    .unwrap();
    path
}

async fn run_send_test_event(config: std::path::PathBuf) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("send-test-event")
            .arg("--config")
            .arg(config)
            .env_remove("BRIDGE_CONFIG")
            .env("BRIDGE_LOG__FORMAT", "pretty")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn send_test_event_triggers_and_resolves_on_every_routing_key() {
    let sim = pdsim::start("127.0.0.1:0".parse().unwrap(), Faults::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run_send_test_event(write_config(dir.path(), &sim.events_url())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok")).count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("HTTP 202"), "{stdout}");
    let incidents = sim.incidents();
    assert_eq!(incidents.len(), 2);
    assert!(
        incidents
            .iter()
            .all(|i| i.status == IncidentStatus::Resolved)
    );
    assert!(
        incidents
            .iter()
            .all(|i| i.dedup_key.starts_with("oneview-pagerduty-bridge:test:"))
    );
    let keys: Vec<_> = incidents.iter().map(|i| i.routing_key.as_str()).collect();
    assert_eq!(keys, vec![ROUTING_KEY, STORAGE_KEY]);
    assert!(!stdout.contains(ROUTING_KEY) && !stdout.contains(STORAGE_KEY));
}

#[tokio::test]
async fn send_test_event_fails_when_pagerduty_refuses() {
    let sim = pdsim::start(
        "127.0.0.1:0".parse().unwrap(),
        Faults {
            reject_dedup_key_containing: Some("test".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run_send_test_event(write_config(dir.path(), &sim.events_url())).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("FAIL") && stdout.contains("HTTP 400"),
        "{stdout}"
    );
    assert!(stderr.contains("pagerduty.routing_key"), "{stderr}");

    // Nothing listening: no answer at all, still a clean failure.
    let out = run_send_test_event(write_config(dir.path(), "http://127.0.0.1:9/v2/enqueue")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no answer"));
}

#[tokio::test]
async fn simulate_pagerduty_runs_standalone() {
    let mut child = Command::new(BIN)
        .args(["simulate", "pagerduty", "--listen", "127.0.0.1:0"])
        .env("BRIDGE_LOG__FORMAT", "pretty")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines
            .find_map(|l| {
                l.ok()
                    .and_then(|l| l.split("events URL ").nth(1).map(str::to_owned))
            })
            .unwrap()
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let r = client
        .post(&url)
        .json(&serde_json::json!({
            "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "k1",
            "payload": {"summary": "s", "source": "h", "severity": "info"}}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["dedup_key"], "k1");
    let bad = client.post(&url).body("{").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let incidents: serde_json::Value = client
        .get(url.replace("/v2/enqueue", "/sim/incidents"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(incidents.as_array().unwrap().len(), 1);
    child.kill().unwrap();
    child.wait().unwrap();
}
