//! Shared harness of the web tests: bridges of any role on the two simulators, over loopback.
#![allow(dead_code)]

use std::time::Duration;

use bridge::config::{self, RawConfig, Role};
use bridge::sim::oneview::{self as ovsim, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

pub const ROUTING_KEY: &str = "WEBROUTINGKEY0000000000000000001";
pub const TOKEN: &str = "ops-token-1";
pub const POLLER_TOKEN: &str = "internal-poller-token";
pub const WEBHOOK_SECRET: &str = "whsec-current";
pub const APPLIANCE: &str = "synergy-web";
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Sims {
    pub ov: ovsim::RunningSim,
    pub pd: pdsim::SimHandle,
}

pub async fn sims() -> Sims {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    Sims { ov, pd }
}

impl Sims {
    pub async fn stop(self) {
        self.pd.shutdown();
        self.ov.stop().await;
    }
}

pub struct Bridge {
    pub url: String,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

impl Bridge {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.app)
            .await
            .expect("bridge stops")
            .unwrap();
    }
}

/// A raw config for `role`; OneView and PagerDuty point at `sims` when given.
pub fn raw(sims: Option<&Sims>) -> RawConfig {
    let mut raw = RawConfig::default();
    if let Some(s) = sims {
        let sim_cfg = s.ov.handle.config();
        raw.oneview.url = Some(s.ov.url());
        raw.oneview.name = Some(APPLIANCE.into());
        raw.oneview.username = Some(sim_cfg.username.clone());
        raw.oneview.password = Some(SecretString::from(sim_cfg.password.clone()));
        raw.pagerduty.routing_key = Some(SecretString::from(ROUTING_KEY.to_owned()));
        raw.pagerduty.events_url = s.pd.events_url();
    }
    raw.pagerduty.retry_initial_delay = Duration::from_millis(50);
    raw.pagerduty.retry_max_delay = Duration::from_millis(200);
    raw.pagerduty.rate_limit_per_minute = 100_000;
    raw.pagerduty.webhook_secrets = Some(SecretString::from(WEBHOOK_SECRET.to_owned()));
    raw.poller.interval = Duration::from_secs(1);
    raw.poller.watermark_overlap = Duration::from_millis(500);
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.shutdown_timeout = Duration::from_secs(2);
    raw.server.drain_delay = Duration::ZERO;
    raw.server.api_tokens = Some(SecretString::from(format!("old-token\n{TOKEN}")));
    raw.server.rate_limit_per_second = 1000;
    raw.server.rate_limit_burst = 1000;
    raw.web.poller_token = Some(SecretString::from(POLLER_TOKEN.to_owned()));
    raw
}

pub async fn start(raw: RawConfig, role: Role) -> Bridge {
    let cfg = config::validate(raw, role).unwrap();
    let app = bridge::App::build(cfg).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let s = stop.clone();
    let app = tokio::spawn(async move { app.run(s).await.unwrap() });
    Bridge { url, stop, app }
}

/// Polls `f` every 50 ms until it holds or `WAIT` passes.
pub async fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// For tests on paused time: a task that keeps a timer due every millisecond, so the clock
/// moves in steps of at most a millisecond while sockets are busy. Tokio advances a paused
/// clock to the next timer whenever the runtime parks, also when the park only waits for
/// loopback bytes already on their way; without a near timer the next one could be the
/// bridge's 10 s header-read timeout, due before the request's first byte is read. Abort the
/// handle at the end of the test.
pub fn pace_paused_clock() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

/// What requests sent back to back met at one of the web role's rate limits.
///
/// Those limits (governor, via tower_governor) read the real clock, not tokio's, so these tests
/// cannot run on paused time. They assert on counts instead of assuming the requests took "less
/// than a second": a GCRA limit of `per_second` with `burst` lets through at least `burst` and
/// at most `burst + floor(elapsed × per_second)` requests of a fresh client in `elapsed`.
pub struct Burst {
    /// Requests answered with anything but 429 before the first 429.
    pub allowed: u32,
    /// The first 429, if one came.
    pub refused: Option<reqwest::Response>,
    /// Real time from before the first request to after the last answer.
    pub elapsed: Duration,
}

impl Burst {
    /// Sends `send(i)` for i = 0, 1, ... until the first 429, `max` requests at most.
    pub async fn until_refused<F, Fut>(max: u32, mut send: F) -> Self
    where
        F: FnMut(u32) -> Fut,
        Fut: std::future::Future<Output = reqwest::Response>,
    {
        let started = std::time::Instant::now();
        let mut allowed = 0;
        let mut refused = None;
        for i in 0..max {
            let r = send(i).await;
            if r.status() == 429 {
                refused = Some(r);
                break;
            }
            allowed += 1;
        }
        Self {
            allowed,
            refused,
            elapsed: started.elapsed(),
        }
    }

    /// Asserts that a limit of `per_second` with `burst` explains the count, then returns the
    /// 429. `max` in [`Burst::until_refused`] should exceed `burst` by far more than the number
    /// of seconds the requests could take, so a missing limit cannot pass for a slow machine.
    pub fn refused_by(self, per_second: u32, burst: u32, limit: &str) -> reqwest::Response {
        // Whole seconds only: a slot comes back every 1/per_second s, never a fraction of one.
        let most = u64::from(burst) + (self.elapsed.as_secs_f64() * f64::from(per_second)) as u64;
        assert!(
            self.allowed >= burst && u64::from(self.allowed) <= most,
            "{limit} = {per_second}/s burst {burst}: {} requests passed in {:?} (at most {most})",
            self.allowed,
            self.elapsed
        );
        self.refused
            .unwrap_or_else(|| panic!("{limit}: no 429 in {} requests", self.allowed))
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn dedup(uri: &str) -> String {
    format!("oneview:{APPLIANCE}:{uri}")
}

/// A PagerDuty Webhooks v3 envelope for an incident of `dedup_key`.
pub fn incident_event(
    event_id: &str,
    event_type: &str,
    dedup_key: &str,
    agent_type: &str,
) -> serde_json::Value {
    serde_json::json!({"event": {
        "id": event_id,
        "event_type": event_type,
        "resource_type": "incident",
        "occurred_at": "2026-11-22T06:00:00Z",
        "agent": {"id": "PUSER01", "summary": "Ada Oncall", "type": agent_type,
                  "html_url": "https://acme.pagerduty.com/users/PUSER01"},
        "client": null,
        "data": {
            "id": "PINC042", "type": "incident", "number": 42,
            "html_url": "https://acme.pagerduty.com/incidents/PINC042",
            "incident_key": dedup_key, "status": "acknowledged",
            "title": "Power supply failed",
            "assignees": [{"id": "PUSER02", "summary": "Grace Backup", "type": "user_reference"}]
        }
    }})
}

/// Posts a signed webhook.
pub async fn post_webhook(
    base: &str,
    body: &[u8],
    secret: &str,
    webhook_id: &str,
) -> reqwest::Response {
    client()
        .post(format!("{base}/api/v1/pagerduty/webhook"))
        .header("content-type", "application/json")
        .header(
            "x-pagerduty-signature",
            bridge::web::signature::sign(secret, body),
        )
        .header("x-webhook-id", webhook_id)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// The notes of a simulator alert's change log.
pub fn notes(ov: &ovsim::RunningSim, id: u64) -> Vec<String> {
    ov.handle.alert(id).unwrap()["changeLog"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["notes"].as_str().map(str::to_owned))
        .collect()
}

pub fn id_of(uri: &str) -> u64 {
    uri.rsplit('/').next().unwrap().parse().unwrap()
}

pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
