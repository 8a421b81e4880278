//! End to end through the assembled bridge (role `all`, `App::build` + `App::run`, the same path
//! as `main`): alerts raised, changed and cleared in the OneView simulator become incidents,
//! updates and resolves in the PagerDuty simulator, over real HTTP on loopback.

use std::time::Duration;

use bridge::config::{self, RawConfig, Role};
use bridge::sim::oneview::{self as ovsim, AlertSpec, GenerateSpec, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults, IncidentStatus};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

const ROUTING_KEY: &str = "E2EROUTINGKEY0000000000000000001";
const WAIT: Duration = Duration::from_secs(20);

struct Running {
    ov: ovsim::RunningSim,
    pd: pdsim::SimHandle,
    bridge: String,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

async fn start(pd_faults: Faults) -> Running {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let sim_cfg = SimConfig::default();
    let (user, pass) = (sim_cfg.username.clone(), sim_cfg.password.clone());
    let ov = ovsim::start(sim_cfg, loopback).await.unwrap();
    let pd = pdsim::start(loopback, pd_faults).await.unwrap();
    let mut raw = RawConfig::default();
    raw.oneview.url = Some(ov.url());
    raw.oneview.name = Some("synergy-e2e".into());
    raw.oneview.username = Some(user);
    raw.oneview.password = Some(SecretString::from(pass));
    raw.pagerduty.routing_key = Some(SecretString::from(ROUTING_KEY.to_owned()));
    raw.pagerduty.events_url = pd.events_url();
    raw.pagerduty.retry_initial_delay = Duration::from_millis(50);
    raw.pagerduty.retry_max_delay = Duration::from_millis(200);
    raw.pagerduty.rate_limit_per_minute = 100_000;
    raw.poller.interval = Duration::from_secs(1);
    raw.poller.watermark_overlap = Duration::from_millis(500);
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.shutdown_timeout = Duration::from_secs(3);
    let cfg = config::validate(raw, Role::All).unwrap();
    let app = bridge::App::build(cfg).await.unwrap();
    let bridge = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let app = tokio::spawn(async move { app.run(s).await.unwrap() });
    Running {
        ov,
        pd,
        bridge,
        stop,
        app,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.app)
            .await
            .expect("bridge stops within its shutdown timeout")
            .unwrap();
        self.pd.shutdown();
        self.ov.stop().await;
    }

    fn open_incidents(&self) -> usize {
        self.pd
            .incidents()
            .iter()
            .filter(|i| i.status != IncidentStatus::Resolved)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raised_changed_cleared_alerts_become_incidents_updates_and_resolves() {
    let r = start(Faults::default()).await;
    let ids: Vec<u64> =
        r.ov.handle
            .generate(&GenerateSpec {
                count: 25,
                ..Default::default()
            })
            .collect();
    // Old cleared history and an unwatched severity never page.
    r.ov.handle.generate(&GenerateSpec {
        count: 200,
        state: Some("Cleared".into()),
        max_age_ms: 86_400_000,
        ..Default::default()
    });
    r.ov.handle.add_alert(AlertSpec {
        severity: Some("OK".into()),
        description: Some("Power restored.".into()),
        ..Default::default()
    });

    assert!(
        r.pd.wait_until(WAIT, |pd| pd.incidents().len() == 25).await,
        "25 alerts -> 25 incidents, got {}",
        r.pd.incidents().len()
    );
    // Readiness: session established and first sync finished.
    let ready = reqwest::get(format!("{}/ready", r.bridge)).await.unwrap();
    assert_eq!(ready.status(), 200);

    // A severity change: one more trigger on the same incident, no new incident.
    let changed = ids[0];
    let before = r.ov.handle.alert(changed).unwrap();
    let new_sev = if before["severity"] == "Critical" {
        "Warning"
    } else {
        "Critical"
    };
    r.ov.handle.set_severity(changed, new_sev).unwrap();
    let dedup = format!("oneview:synergy-e2e:/rest/alerts/{changed}");
    assert!(
        r.pd.wait_until(WAIT, |pd| pd
            .incidents()
            .iter()
            .any(|i| i.dedup_key == dedup && i.triggers == 2))
            .await,
        "severity change re-triggers the same incident"
    );
    assert_eq!(r.pd.incidents().len(), 25, "still one incident per alert");
    let inc =
        r.pd.incidents()
            .into_iter()
            .find(|i| i.dedup_key == dedup)
            .unwrap();
    assert_eq!(inc.severity, new_sev.to_lowercase());

    // Clears resolve their incidents, and only theirs.
    for id in &ids[..10] {
        r.ov.handle.clear(*id).unwrap();
    }
    assert!(
        r.pd.wait_until(WAIT, |_| r.open_incidents() == 15).await,
        "10 cleared -> 10 resolved, open now {}",
        r.open_incidents()
    );

    // Nothing more happens while nothing changes: no duplicate trigger for open alerts.
    let accepted = r.pd.counters().accepted;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        r.pd.counters().accepted,
        accepted,
        "idle polls send nothing"
    );
    assert_eq!(r.pd.incidents().len(), 25);

    let metrics = reqwest::get(format!("{}/metrics", r.bridge))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains("bridge_pagerduty_events_total{action=\"trigger\",outcome=\"accepted\"} 26")
    );
    assert!(
        metrics
            .contains("bridge_pagerduty_events_total{action=\"resolve\",outcome=\"accepted\"} 10")
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_errors_delay_but_never_lose_or_duplicate() {
    let r = start(Faults {
        error_rate: 0.3,
        ..Default::default()
    })
    .await;
    let ids: Vec<u64> =
        r.ov.handle
            .generate(&GenerateSpec {
                count: 40,
                ..Default::default()
            })
            .collect();
    assert!(
        r.pd.wait_until(WAIT, |pd| pd.incidents().len() == 40).await,
        "all 40 delivered despite 30% errors"
    );
    for id in &ids {
        r.ov.handle.clear(*id).unwrap();
    }
    assert!(
        r.pd.wait_until(WAIT, |_| r.open_incidents() == 0).await,
        "all resolved"
    );
    assert!(r.pd.counters().injected_errors > 0, "faults were injected");
    for i in r.pd.incidents() {
        assert_eq!(i.triggers, 1, "one trigger per incident: {i:?}");
    }
    assert_eq!(r.pd.incidents().len(), 40, "no duplicate incident");
    r.stop().await;
}
