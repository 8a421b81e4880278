//! An assembled bridge (role `all`) run in the test process between the OneView and PagerDuty
//! simulators over real HTTP on loopback: the harness the silence and flap tests share.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use bridge::config::{self, RawConfig, Role};
use bridge::sim::oneview::{self as ovsim, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

/// How long [`eventually`] waits.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Sims {
    pub ov: ovsim::RunningSim,
    pub pd: pdsim::SimHandle,
}

pub struct Bridge {
    pub url: String,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

pub async fn sims() -> Sims {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    Sims { ov, pd }
}

/// One appliance named `appliance` on the simulator, one routing key, API token `token`,
/// polled every second, quick PagerDuty retries; `state` is `state.path` (None: in memory).
pub fn raw_config(
    s: &Sims,
    appliance: &str,
    routing_key: &str,
    token: &str,
    state: Option<PathBuf>,
) -> RawConfig {
    let sim_cfg = SimConfig::default();
    let mut raw = RawConfig::default();
    raw.oneview.url = Some(s.ov.url());
    raw.oneview.name = Some(appliance.into());
    raw.oneview.username = Some(sim_cfg.username.clone());
    raw.oneview.password = Some(SecretString::from(sim_cfg.password.clone()));
    raw.pagerduty.routing_key = Some(SecretString::from(routing_key.to_owned()));
    raw.pagerduty.events_url = s.pd.events_url();
    raw.pagerduty.retry_initial_delay = Duration::from_millis(50);
    raw.pagerduty.retry_max_delay = Duration::from_millis(200);
    raw.pagerduty.rate_limit_per_minute = 100_000;
    raw.poller.interval = Duration::from_secs(1);
    raw.poller.watermark_overlap = Duration::from_millis(500);
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.shutdown_timeout = Duration::from_secs(3);
    raw.server.api_tokens = Some(SecretString::from(token.to_owned()));
    raw.state.path = state;
    raw
}

/// Starts the bridge and waits until it is ready (logged in, first full sync done).
pub async fn start(raw: RawConfig) -> Bridge {
    let cfg = config::validate(raw, Role::All).unwrap();
    let app = bridge::App::build(cfg).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let stop = CancellationToken::new();
    let st = stop.clone();
    let app = tokio::spawn(async move { app.run(st).await.unwrap() });
    let b = Bridge { url, stop, app };
    assert!(
        eventually(|| {
            let u = format!("{}/ready", b.url);
            async move { reqwest::get(u).await.is_ok_and(|r| r.status() == 200) }
        })
        .await,
        "bridge ready"
    );
    b
}

impl Bridge {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.app)
            .await
            .expect("bridge stops within its shutdown timeout")
            .unwrap();
    }
}

/// Whether `f` holds within [`WAIT`], asked every 50 ms.
pub async fn eventually<F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
