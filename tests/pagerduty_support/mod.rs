//! Shared helpers of the `pagerduty_*` tests: alerts from the real fixtures, a validated config
//! pointed at the PagerDuty simulator, a running delivery pipeline, and waits that work on
//! paused tokio time.
//!
//! On paused time (`#[tokio::test(start_paused = true)]`) the clock jumps to the next timer
//! whenever the runtime has nothing to run, and the simulator's `received_ms`/`received_us`, the
//! rate limiter and the retry pauses all read that clock, so windows and pauses are exact. The
//! pipeline's journal commits on an OS thread, though: while it works the runtime is idle and
//! virtual time runs ahead at the pace of the nearest timer. So every wait here is bounded in
//! real time ([`REAL_WAIT`]), never by a deadline on the paused clock, which a commit of a few
//! milliseconds could carry past.
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
                created: Some(created.into()),
                associated_resource: Some(
                    AssociatedResource {
                        resource_name: Some(brackets[0].into()),
                        resource_category: Some(category.into()),
                        resource_uri: Some(format!("/rest/resources/{}", fields[0]).into()),
                        association_type: Some("HAS_A".into()),
                    }
                    .into(),
                ),
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

/// How long a test waits, in real time, for the pipeline to get somewhere before it fails.
pub const REAL_WAIT: Duration = Duration::from_secs(10);

/// Polls `pred` until it holds or [`REAL_WAIT`] of real time passed; returns whether it held.
///
/// Between polls it sleeps on tokio's clock (so paused time moves on while the test waits),
/// first for a millisecond, so a test notices a change within a millisecond of virtual time,
/// then longer, up to 20 ms, so waiting through a minute-long rate window stays cheap.
pub async fn wait_for(mut pred: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + REAL_WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        if pred() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Waits until `pred` holds without letting tokio's clock move ([`REAL_WAIT`] of real time at
/// most; returns whether it held). For phases that need no timer (sends into free rate-limit
/// slots and their answers): afterwards the test knows the virtual instant exactly, however
/// long the journal's thread took in real time.
pub async fn settle(mut pred: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + REAL_WAIT;
    loop {
        if pred() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        // Paused time only moves when the runtime has nothing to run; a task that yields is
        // always runnable. The short real sleep leaves the CPU to the journal's thread.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_micros(200));
    }
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
        let cfg = config(&sim.events_url(), |r| {
            // On paused time the clock also jumps while a request waits for its answer (to the
            // next timer: the dispatcher's 1 s tick, a rate window): a 2 s timeout could then
            // cut an answer that is already on its way. No test here is about the timeout.
            r.pagerduty.request_timeout = Duration::from_secs(3600);
            tweak(r);
        });
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

    /// Waits until the simulator accepted `n` events ([`REAL_WAIT`] at most).
    pub async fn wait_accepted(&self, n: usize) {
        let ok = wait_for(|| self.sim.accepted().len() >= n).await;
        assert!(
            ok,
            "expected {n} accepted events, got {:?}",
            self.sim.accepted().len()
        );
    }

    /// Waits until the pipeline's queue is empty.
    pub async fn wait_idle(&self) {
        let ok = wait_for(|| self.status.queue_depth() == 0).await;
        assert!(ok, "queue did not drain: {:?}", self.status.snapshot());
    }

    /// Tokio time since the simulator started: the clock of `received_ms`/`received_us`.
    pub fn sim_elapsed(&self) -> Duration {
        tokio::time::Instant::from_std(self.sim.started()).elapsed()
    }

    /// Sleeps until `at` after the simulator started (on its clock).
    pub async fn sleep_until_sim(&self, at: Duration) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(self.sim.started()) + at).await;
    }

    /// Cancels the work token and waits for the pipeline to finish.
    pub async fn stop(self) -> SimHandle {
        self.work.cancel();
        let mut task = self.task;
        let deadline = std::time::Instant::now() + REAL_WAIT;
        loop {
            tokio::select! {
                r = &mut task => {
                    r.unwrap();
                    return self.sim;
                }
                // Polled on tokio time, bounded in real time (see the module docs).
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "delivery task did not end within {REAL_WAIT:?} after cancellation: {:?}",
                self.status.snapshot()
            );
        }
    }
}

/// A metric sample's value from OpenMetrics text (`name{labels}` exactly as written).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
