//! Shared helpers for the OneView tests: a simulator on 127.0.0.1:0 and a configuration
//! pointing at it.
#![allow(dead_code)]

use std::time::Duration;

use bridge::config::{self, Config, RawConfig, Role};
use bridge::oneview::{OneViewClient, OneViewMetrics};
use bridge::sim::oneview::{self as sim, AlertSpec, RunningSim, SimConfig};
use secrecy::SecretString;

pub async fn start_sim(cfg: SimConfig) -> RunningSim {
    sim::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

pub fn config(url: &str, f: impl FnOnce(&mut RawConfig)) -> Config {
    let mut r = RawConfig::default();
    r.oneview.url = Some(url.to_owned());
    r.oneview.name = Some("ov-test".to_owned());
    r.oneview.username = Some("administrator".to_owned());
    r.oneview.password = Some(SecretString::from("sim-password".to_owned()));
    r.pagerduty.routing_key = Some(SecretString::from("a".repeat(32)));
    f(&mut r);
    config::validate(r, Role::Poller).expect("valid test config")
}

pub fn client(cfg: &Config) -> OneViewClient {
    OneViewClient::new(
        cfg.oneview.as_ref().unwrap(),
        OneViewMetrics::unregistered(),
    )
    .unwrap()
}

pub fn spec(severity: &str, state: &str) -> AlertSpec {
    AlertSpec {
        severity: Some(severity.to_owned()),
        alert_state: Some(state.to_owned()),
        ..AlertSpec::default()
    }
}

/// Waits (in small steps of tokio time) until `cond` holds; panics after `max`.
pub async fn wait_for(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        if start.elapsed() > max {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn id_of(uri: &str) -> u64 {
    uri.rsplit('/').next().unwrap().parse().unwrap()
}

#[path = "../common/mod.rs"]
mod common;
#[allow(unused_imports)] // not every test crate that includes this module checks metrics
pub use common::promtool_accepts;
