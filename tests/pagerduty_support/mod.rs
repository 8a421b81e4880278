//! Shared helpers of the `pagerduty_*` tests: alerts from the real fixtures, a validated config
//! pointed at the PagerDuty simulator, and a running delivery pipeline.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bridge::config::{self, Config, RawConfig, Role};
use bridge::model::{
    Alert, AlertChange, AlertKey, AlertState, Appliance, AssociatedResource, ChangeKind, Severity,
};
use bridge::pagerduty::{self, DeliveryStatus, Tuning};
use bridge::readiness::Readiness;
use bridge::sim::pagerduty::{self as pdsim, Faults, SimHandle};
use prometheus_client::registry::Registry;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const ROUTING_KEY: &str = "R0UT1NGKEYdefault000000000000001";
pub const STORAGE_KEY: &str = "R0UT1NGKEYstorage000000000000002";
pub const TRAP_KEY: &str = "R0UT1NGKEYtraps00000000000000003";

pub fn appliance() -> Appliance {
    Appliance {
        id: Arc::from("ov-lab.example.com"),
        ui_url: Arc::from("https://ov-lab.example.com"),
    }
}

/// The alerts of `real_appliance_alerts_syslog.txt` (a lab Synergy's real alert texts): syslog
/// priority 2 is Critical, 4 Warning; `[resource] [id|type|state|...] [description]`.
pub fn fixture_alerts() -> Vec<Alert> {
    let text = include_str!("../fixtures/oneview/real_appliance_alerts_syslog.txt");
    let mut entries: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with('<') {
            entries.push(line.to_owned());
        } else if let Some(last) = entries.last_mut() {
            last.push('\n');
            last.push_str(line);
        }
    }
    entries
        .iter()
        .map(|e| {
            let prio = &e[1..2];
            let mut parts = e.splitn(6, ' ');
            let _ = parts.next();
            let created = parts.next().unwrap().to_owned();
            let _ip = parts.next();
            let _ov = parts.next();
            let category = parts.next().unwrap().to_owned();
            let rest = parts.next().unwrap();
            let brackets: Vec<&str> = split_brackets(rest);
            let fields: Vec<&str> = brackets[1].split('|').collect();
            Alert {
                uri: format!("/rest/alerts/{}", fields[0]),
                severity: if prio == "2" {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                alert_state: AlertState::parse(fields[2]),
                description: Some(brackets[2].into()),
                alert_type_id: Some(format!("Trap.{}", fields[1]).into()),
                urgency: Some("High".into()),
                health_category: Some(fields[1].into()),
                created: Some(created),
                associated_resource: Some(AssociatedResource {
                    resource_name: Some(brackets[0].into()),
                    resource_category: Some(category.into()),
                    resource_uri: Some(format!("/rest/resources/{}", fields[0]).into()),
                    association_type: Some("HAS_A".into()),
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn split_brackets(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '[' => {
                if depth == 0 {
                    start = i + 1;
                }
                depth += 1;
            }
            ']' => {
                depth -= 1;
                if depth == 0 {
                    out.push(&s[start..i]);
                }
            }
            _ => {}
        }
    }
    out
}

/// The SCMB fixture's alert (a cleared `Trap.coldStart`).
pub fn scmb_alert() -> Alert {
    let msg: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/oneview/scmb_alert_message.json")).unwrap();
    serde_json::from_value(msg["resource"].clone()).unwrap()
}

/// `n` distinct open alerts based on the fixtures (uris made unique).
pub fn many_alerts(n: usize) -> Vec<Alert> {
    let base = fixture_alerts();
    (0..n)
        .map(|i| {
            let mut a = base[i % base.len()].clone();
            a.uri = format!("/rest/alerts/{}", 10_000 + i);
            a
        })
        .collect()
}

pub fn change(kind: ChangeKind, alert: &Alert) -> AlertChange {
    let app = appliance();
    AlertChange {
        kind,
        key: AlertKey::new(&app, &alert.uri),
        appliance: app,
        alert: Arc::new(alert.clone()),
    }
}

pub fn dedup_key(alert: &Alert) -> String {
    pagerduty::event::dedup_key(&appliance().id, &alert.uri)
}

/// A poller config sending to `events_url`, with fast retries.
pub fn config(events_url: &str, tweak: impl FnOnce(&mut RawConfig)) -> Config {
    let mut r = RawConfig::default();
    r.oneview.url = Some("https://ov-lab.example.com".into());
    r.oneview.username = Some("bridge".into());
    r.oneview.password = Some(SecretString::from("pw".to_owned()));
    r.pagerduty.routing_key = Some(SecretString::from(ROUTING_KEY.to_owned()));
    r.pagerduty.events_url = events_url.to_owned();
    r.pagerduty.retry_initial_delay = Duration::from_millis(5);
    r.pagerduty.retry_max_delay = Duration::from_millis(40);
    r.pagerduty.request_timeout = Duration::from_secs(2);
    r.pagerduty.rate_limit_per_minute = 100_000;
    tweak(&mut r);
    config::validate(r, Role::Poller).expect("valid test config")
}

pub struct Harness {
    pub sim: SimHandle,
    pub changes: mpsc::Sender<AlertChange>,
    pub status: Arc<DeliveryStatus>,
    pub registry: Registry,
    pub readiness: Arc<Readiness>,
    pub work: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Harness {
    pub async fn start(faults: Faults, tweak: impl FnOnce(&mut RawConfig)) -> Self {
        Self::start_tuned(faults, tweak, Tuning::default()).await
    }

    pub async fn start_tuned(
        faults: Faults,
        tweak: impl FnOnce(&mut RawConfig),
        tuning: Tuning,
    ) -> Self {
        let sim = pdsim::start("127.0.0.1:0".parse().unwrap(), faults)
            .await
            .unwrap();
        let cfg = config(&sim.events_url(), tweak);
        let mut registry = Registry::default();
        let readiness = Arc::new(Readiness::new());
        let work = CancellationToken::new();
        let d =
            pagerduty::assemble_tuned(&cfg, &mut registry, readiness.clone(), work.clone(), tuning)
                .unwrap();
        let task = tokio::spawn(d.task);
        Self {
            sim,
            changes: d.changes,
            status: d.status,
            registry,
            readiness,
            work,
            task,
        }
    }

    pub async fn send(&self, kind: ChangeKind, alert: &Alert) {
        self.changes.send(change(kind, alert)).await.unwrap();
    }

    pub fn metrics(&self) -> String {
        bridge::metrics::encode_openmetrics(&self.registry)
    }

    /// Waits until the simulator accepted `n` events (10 s at most).
    pub async fn wait_accepted(&self, n: usize) {
        let ok = self
            .sim
            .wait_until(Duration::from_secs(10), |s| s.accepted().len() >= n)
            .await;
        assert!(
            ok,
            "expected {n} accepted events, got {:?}",
            self.sim.accepted().len()
        );
    }

    /// Waits until the pipeline's queue is empty.
    pub async fn wait_idle(&self) {
        for _ in 0..2000 {
            if self.status.queue_depth() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("queue did not drain: {:?}", self.status.snapshot());
    }

    /// Cancels the work token and waits for the pipeline to finish.
    pub async fn stop(self) -> SimHandle {
        self.work.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("delivery task ends after cancellation")
            .unwrap();
        self.sim
    }
}

/// A metric sample's value from OpenMetrics text (`name{labels}` exactly as written).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
