//! The whole estate in one bridge: several OneView appliances (`[[appliances]]`), each with its
//! own session, poller, readiness and metrics, sharing one delivery pipeline. The assembled
//! bridge (role `all`) against one OneView simulator per appliance and one PagerDuty simulator,
//! over real HTTP on loopback. Isolation is asserted by orderings, not by wall-clock time.

mod web_support;

use std::time::Duration;

use bridge::config::{self, RawAppliance, RawConfig, RawRoute, Role};
use bridge::sim::oneview::{self as ovsim, AlertSpec, GenerateSpec, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults, SimHandle};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use web_support::{TOKEN, WEBHOOK_SECRET, incident_event, post_webhook};

const DEFAULT_KEY: &str = "ESTATEDEFAULTKEY0000000000000001";
const LAB_KEY: &str = "ESTATELABKEY00000000000000000002";
const WAIT: Duration = Duration::from_secs(30);

struct Estate {
    ovs: Vec<ovsim::RunningSim>,
    pd: SimHandle,
    url: String,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

fn appliance(name: &str, ov: &ovsim::RunningSim) -> RawAppliance {
    let sim = ov.handle.config();
    RawAppliance {
        name: Some(name.into()),
        url: Some(ov.url()),
        username: Some(sim.username.clone()),
        password: Some(SecretString::from(sim.password.clone())),
        interval: Some(Duration::from_secs(1)),
        ..Default::default()
    }
}

async fn start(
    names: &[&str],
    pd_faults: Faults,
    tweak: impl FnOnce(&mut RawConfig, &[ovsim::RunningSim]),
) -> Estate {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let mut ovs = Vec::new();
    for _ in names {
        ovs.push(ovsim::start(SimConfig::default(), loopback).await.unwrap());
    }
    let pd = pdsim::start(loopback, pd_faults).await.unwrap();
    let mut raw = RawConfig {
        appliances: names
            .iter()
            .zip(&ovs)
            .map(|(n, ov)| appliance(n, ov))
            .collect(),
        ..Default::default()
    };
    raw.pagerduty.routing_key = Some(SecretString::from(DEFAULT_KEY.to_owned()));
    raw.pagerduty.events_url = pd.events_url();
    raw.pagerduty.retry_initial_delay = Duration::from_millis(50);
    raw.pagerduty.retry_max_delay = Duration::from_millis(200);
    raw.pagerduty.rate_limit_per_minute = 1_000_000;
    raw.pagerduty.webhook_secrets = Some(SecretString::from(WEBHOOK_SECRET.to_owned()));
    raw.poller.interval = Duration::from_secs(1);
    raw.poller.watermark_overlap = Duration::from_millis(500);
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.shutdown_timeout = Duration::from_secs(3);
    raw.server.api_tokens = Some(SecretString::from(TOKEN.to_owned()));
    raw.server.status_public = true;
    tweak(&mut raw, &ovs);
    let cfg = config::validate(raw, Role::All).unwrap();
    let app = bridge::App::build(cfg).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let app = tokio::spawn(async move { app.run(s).await.unwrap() });
    Estate {
        ovs,
        pd,
        url,
        stop,
        app,
    }
}

impl Estate {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.app)
            .await
            .expect("bridge stops")
            .unwrap();
        self.pd.shutdown();
        for ov in self.ovs {
            ov.stop().await;
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn prefix_count(pd: &SimHandle, prefix: &str) -> usize {
    pd.incidents()
        .iter()
        .filter(|i| i.dedup_key.starts_with(prefix))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_appliance_pages_with_its_own_keys_status_metrics_routes_and_writebacks() {
    let e = start(&["dc1", "lab-2"], Faults::default(), |raw, _| {
        raw.pagerduty.routes = vec![RawRoute {
            name: Some("lab".into()),
            appliances: vec!["lab-*".into()],
            routing_key: Some(SecretString::from(LAB_KEY.to_owned())),
            ..Default::default()
        }];
    })
    .await;
    for ov in &e.ovs {
        ov.handle.generate(&GenerateSpec {
            count: 3,
            severity: Some("Critical".into()),
            ..Default::default()
        });
    }
    assert!(
        e.pd.wait_until(WAIT, |pd| pd.incidents().len() == 6).await,
        "{:?}",
        e.pd.incidents().len()
    );
    assert_eq!(prefix_count(&e.pd, "oneview:dc1:/rest/alerts/"), 3);
    assert_eq!(prefix_count(&e.pd, "oneview:lab-2:/rest/alerts/"), 3);
    for i in e.pd.incidents() {
        let want = if i.dedup_key.starts_with("oneview:lab-2:") {
            LAB_KEY
        } else {
            DEFAULT_KEY
        };
        assert_eq!(
            i.routing_key, want,
            "{} routed by its appliance",
            i.dedup_key
        );
    }

    // /ready lists both; the status names both; metrics carry the appliance.
    let (code, ready) = e.get("/ready").await;
    assert_eq!(code, 200, "{ready}");
    let names: Vec<&str> = ready["appliances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dc1", "lab-2"]);
    let (_, alerts) = e.get("/api/v1/alerts?appliance=lab-2").await;
    assert_eq!(alerts["total"], 3, "{alerts}");
    assert_eq!(alerts["alerts"][0]["route"], "lab");
    let m = e.metrics().await;
    for a in ["dc1", "lab-2"] {
        assert!(
            m.contains(&format!(
                "bridge_oneview_open_alerts{{appliance=\"{a}\"}} 3"
            )),
            "{a}: {}",
            m.lines()
                .filter(|l| l.starts_with("bridge_oneview_open_alerts"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    // A PagerDuty acknowledgement of a lab incident is written to the lab appliance only.
    let lab_incident =
        e.pd.incidents()
            .into_iter()
            .find(|i| i.dedup_key.starts_with("oneview:lab-2:"))
            .unwrap();
    let uri = lab_incident
        .dedup_key
        .trim_start_matches("oneview:lab-2:")
        .to_owned();
    let body = serde_json::to_vec(&incident_event(
        "EV-LAB-1",
        "incident.acknowledged",
        &lab_incident.dedup_key,
        "user_reference",
    ))
    .unwrap();
    assert_eq!(
        post_webhook(&e.url, &body, WEBHOOK_SECRET, "wh-lab-1")
            .await
            .status(),
        202
    );
    let id: u64 = uri.rsplit('/').next().unwrap().parse().unwrap();
    let lab_notes = || {
        e.ovs[1].handle.alert(id).unwrap()["changeLog"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert!(e.pd.wait_until(WAIT, |_| lab_notes() == 1).await);
    assert_eq!(
        e.ovs[0].handle.counters().requests("alert"),
        0,
        "nothing was written to the other appliance (which has an alert with that id too)"
    );

    // Pushes name their appliance; an unknown one is refused.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/alerts", e.url))
        .bearer_auth(TOKEN)
        .json(&json!([
            {"appliance": "lab-2", "uri": "/rest/alerts/900", "severity": "Critical", "alertState": "Active", "description": "pushed"},
            {"appliance": "nowhere", "uri": "/rest/alerts/901", "severity": "Critical", "alertState": "Active"},
            {"uri": "/rest/alerts/902", "severity": "Critical", "alertState": "Active"},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["accepted"],
        json!(["oneview:lab-2:/rest/alerts/900"]),
        "{v}"
    );
    assert_eq!(v["error_count"], 2, "{v}");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown appliance `nowhere`"),
        "{v}"
    );
    assert!(
        v["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("`appliance` is required"),
        "{v}"
    );
    assert!(
        e.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key
            == "oneview:lab-2:/rest/alerts/900"
            && i.routing_key == LAB_KEY))
            .await
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_on_one_appliance_does_not_hold_back_another_appliances_page() {
    // PagerDuty answers in 10 ms and the bridge sends 8 at a time: a 4,000-alert storm takes
    // seconds to deliver, long enough for the other appliance's poll to find its alert.
    let storm = 4000usize;
    let e = start(
        &["storm", "quiet"],
        Faults {
            latency_ms: 10,
            ..Default::default()
        },
        |_, _| {},
    )
    .await;
    e.ovs[0].handle.generate(&GenerateSpec {
        count: storm,
        severity: Some("Warning".into()),
        ..Default::default()
    });
    assert!(
        e.pd.wait_until(WAIT, |pd| pd.accepted().len() >= 100).await,
        "the storm is being delivered"
    );
    let uri = e.ovs[1].handle.add_alert(AlertSpec {
        severity: Some("Warning".into()),
        description: Some("PSU failed on the quiet appliance".into()),
        ..Default::default()
    });
    let key = format!("oneview:quiet:{uri}");
    assert!(
        e.pd.wait_until(Duration::from_secs(120), |pd| pd
            .accepted()
            .iter()
            .any(|ev| ev.dedup_key.as_deref() == Some(key.as_str())))
            .await
    );
    let accepted = e.pd.accepted();
    let position = accepted
        .iter()
        .position(|ev| ev.dedup_key.as_deref() == Some(key.as_str()))
        .unwrap();
    assert!(
        position < storm / 2,
        "the quiet appliance's page was accepted as event {position} of the storm's {storm}: it waited behind half the storm"
    );
    e.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_slow_or_garbled_appliance_is_a_warning_and_does_not_delay_the_others() {
    let e = start(
        &["slow", "down", "garbled", "fine"],
        Faults::default(),
        |raw, ovs| {
            // The slow one answers its alert collection in 30 s; the down one refuses
            // connections; the garbled one answers every alert page with truncated JSON.
            ovs[0].handle.update_faults(|f| f.latency_ms = 30_000);
            raw.appliances[0].request_timeout = Duration::from_secs(60);
            raw.appliances[1].url = Some("http://127.0.0.1:9/".into());
            ovs[2].handle.update_faults(|f| f.garbage_next = u32::MAX);
        },
    )
    .await;
    let uri = e.ovs[3].handle.add_alert(AlertSpec {
        severity: Some("Critical".into()),
        ..Default::default()
    });
    let key = format!("oneview:fine:{uri}");
    assert!(
        e.pd.wait_until(WAIT, |pd| pd.incidents().iter().any(|i| i.dedup_key == key))
            .await
    );
    // Paged while the slow appliance has not even finished its first request.
    let slow = e.ovs[0].handle.counters();
    assert!(
        slow.requests("version") + slow.requests("login") <= 2,
        "{slow:?}"
    );
    let (code, ready) = e.get("/ready").await;
    assert_eq!(code, 200, "one appliance synced is enough: {ready}");
    let warnings: Vec<&str> = ready["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["condition"].as_str().unwrap())
        .collect();
    assert!(warnings.contains(&"appliance:down"), "{ready}");
    assert!(
        e.pd.wait_until(WAIT, |_| e.ovs[2].handle.counters().requests("alerts") >= 2)
            .await,
        "the garbled appliance is polled again"
    );
    let (_, ready) = e.get("/ready").await;
    let warnings: Vec<&str> = ready["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["condition"].as_str().unwrap())
        .collect();
    assert!(warnings.contains(&"appliance:garbled"), "{ready}");
    // The status lists the failing appliances first.
    let (_, status) = e.get("/api/v1/alerts").await;
    assert_eq!(status["total"], 1);
    let page = reqwest::get(format!("{}/", e.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let down_at = page.find("data-appliance=\"down\"").unwrap();
    let fine_at = page
        .find("class=\"card appliance\" data-appliance=\"fine\"")
        .unwrap();
    assert!(down_at < fine_at, "failing appliances first");
    e.stop().await;
}
