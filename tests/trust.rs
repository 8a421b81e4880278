//! Where features meet: severity routes x clears, routes x escalation, routes x restart, a
//! route removed from the configuration, and a full resync x an empty OneView answer. Each runs
//! the assembled bridge (role `all`, `App::build` + `App::run`) against the OneView and PagerDuty
//! simulators over real HTTP on loopback; PagerDuty's simulator scopes every dedup key to the
//! routing key it arrived on, as PagerDuty does.

use std::path::Path;
use std::time::Duration;

use bridge::config::{self, RawConfig, RawRoute, Role};
use bridge::sim::oneview::{self as ovsim, GenerateSpec, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults, IncidentStatus, SimHandle};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

const DEFAULT_KEY: &str = "TRUSTDEFAULTKEY00000000000000001";
const CRITICAL_KEY: &str = "TRUSTCRITICALKEY0000000000000002";
const WAIT: Duration = Duration::from_secs(20);

struct Bridge {
    url: String,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

impl Bridge {
    async fn start(
        ov: &ovsim::RunningSim,
        pd: &SimHandle,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> Self {
        let sim_cfg = ov.handle.config();
        let mut raw = RawConfig::default();
        raw.oneview.url = Some(ov.url());
        raw.oneview.name = Some("synergy-trust".into());
        raw.oneview.username = Some(sim_cfg.username.clone());
        raw.oneview.password = Some(SecretString::from(sim_cfg.password.clone()));
        raw.pagerduty.routing_key = Some(SecretString::from(DEFAULT_KEY.to_owned()));
        raw.pagerduty.events_url = pd.events_url();
        raw.pagerduty.retry_initial_delay = Duration::from_millis(50);
        raw.pagerduty.retry_max_delay = Duration::from_millis(200);
        raw.pagerduty.rate_limit_per_minute = 100_000;
        raw.poller.interval = Duration::from_secs(1);
        raw.poller.watermark_overlap = Duration::from_millis(500);
        raw.server.listen = "127.0.0.1:0".into();
        raw.server.shutdown_timeout = Duration::from_secs(3);
        tweak(&mut raw);
        let cfg = config::validate(raw, Role::All).unwrap();
        let app = bridge::App::build(cfg).await.unwrap();
        let url = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let app = tokio::spawn(async move { app.run(s).await.unwrap() });
        Self { url, stop, app }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.app)
            .await
            .expect("bridge stops within its shutdown timeout")
            .unwrap();
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

fn critical_route(raw: &mut RawConfig) {
    raw.pagerduty.routes = vec![RawRoute {
        name: Some("critical".into()),
        severities: vec!["Critical".into()],
        routing_key: Some(SecretString::from(CRITICAL_KEY.to_owned())),
        ..Default::default()
    }];
}

fn durable(path: &Path) -> impl FnOnce(&mut RawConfig) + '_ {
    move |raw: &mut RawConfig| raw.state.path = Some(path.to_owned())
}

async fn sims() -> (ovsim::RunningSim, SimHandle) {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    (ov, pd)
}

fn dedup(id: u64) -> String {
    format!("oneview:synergy-trust:/rest/alerts/{id}")
}

fn open_on(pd: &SimHandle, key: &str) -> usize {
    pd.incidents()
        .iter()
        .filter(|i| i.routing_key == key && i.status != IncidentStatus::Resolved)
        .count()
}

fn open_total(pd: &SimHandle) -> usize {
    pd.incidents()
        .iter()
        .filter(|i| i.status != IncidentStatus::Resolved)
        .count()
}

/// Events PagerDuty accepted for one alert, as (action, routing key), in order of arrival.
fn events_of(pd: &SimHandle, id: u64) -> Vec<(String, String)> {
    let k = dedup(id);
    pd.accepted()
        .into_iter()
        .filter(|e| e.dedup_key.as_deref() == Some(k.as_str()))
        .map(|e| {
            (
                e.event_action.unwrap_or_default(),
                e.routing_key.unwrap_or_default(),
            )
        })
        .collect()
}

fn generate(ov: &ovsim::RunningSim, n: usize, severity: &str) -> Vec<u64> {
    ov.handle
        .generate(&GenerateSpec {
            count: n,
            severity: Some(severity.into()),
            ..Default::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_criticals_resolve_on_their_own_key_when_cleared_as_ok() {
    let (ov, pd) = sims().await;
    let crit = generate(&ov, 10, "Critical");
    let warn = generate(&ov, 5, "Warning");
    let b = Bridge::start(&ov, &pd, critical_route).await;
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, CRITICAL_KEY) == 10
            && open_on(pd, DEFAULT_KEY) == 5)
            .await,
        "10 criticals on the critical key, 5 warnings on the default key: {:?}",
        pd.incidents().len()
    );
    // The usual OneView recovery: state Cleared and severity OK, which no Critical route
    // matches any more.
    for id in &crit[..5] {
        ov.handle.clear_ok(*id).unwrap();
    }
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, CRITICAL_KEY) == 5)
            .await,
        "the 5 cleared criticals resolve on the critical key; open there: {}",
        open_on(&pd, CRITICAL_KEY)
    );
    for id in &crit[..5] {
        assert_eq!(
            events_of(&pd, *id),
            vec![
                ("trigger".to_owned(), CRITICAL_KEY.to_owned()),
                ("resolve".to_owned(), CRITICAL_KEY.to_owned())
            ],
            "alert {id}: every event on the key that opened the incident"
        );
    }
    assert_eq!(open_on(&pd, DEFAULT_KEY), 5, "the warnings are untouched");
    for id in &warn {
        assert_eq!(events_of(&pd, *id).len(), 1);
    }
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_moves_the_incident_and_nothing_stays_open_after_the_clear() {
    let (ov, pd) = sims().await;
    let warn = generate(&ov, 5, "Warning");
    let b = Bridge::start(&ov, &pd, critical_route).await;
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, DEFAULT_KEY) == 5)
            .await
    );
    for id in &warn {
        ov.handle.set_severity(*id, "Critical").unwrap();
    }
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, CRITICAL_KEY) == 5
            && open_on(pd, DEFAULT_KEY) == 0)
            .await,
        "escalated: 5 open on the critical key, none left on the default key (critical {}, default {})",
        open_on(&pd, CRITICAL_KEY),
        open_on(&pd, DEFAULT_KEY)
    );
    for id in &warn {
        assert_eq!(
            events_of(&pd, *id),
            vec![
                ("trigger".to_owned(), DEFAULT_KEY.to_owned()),
                ("resolve".to_owned(), DEFAULT_KEY.to_owned()),
                ("trigger".to_owned(), CRITICAL_KEY.to_owned()),
            ],
            "alert {id}: the old incident resolved before the new one was triggered"
        );
    }
    // And back down: de-escalation moves it again.
    ov.handle.set_severity(warn[0], "Warning").unwrap();
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, DEFAULT_KEY) == 1
            && open_on(pd, CRITICAL_KEY) == 4)
            .await
    );
    for id in &warn {
        ov.handle.clear_ok(*id).unwrap();
    }
    assert!(
        pd.wait_until(WAIT, |pd| open_total(pd) == 0).await,
        "every incident closes where it was opened; still open: {}",
        open_total(&pd)
    );
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_clears_go_to_the_route_in_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bridge.redb");
    let (ov, pd) = sims().await;
    let crit = generate(&ov, 6, "Critical");
    let b = Bridge::start(&ov, &pd, |r| {
        critical_route(r);
        durable(&state)(r);
    })
    .await;
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, CRITICAL_KEY) == 6)
            .await
    );
    b.stop().await;
    // Three clear while the bridge is down, three after it is back.
    for id in &crit[..3] {
        ov.handle.clear_ok(*id).unwrap();
    }
    let b = Bridge::start(&ov, &pd, |r| {
        critical_route(r);
        durable(&state)(r);
    })
    .await;
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, CRITICAL_KEY) == 3)
            .await,
        "the clears found by the first sync after the restart resolve on the critical key"
    );
    for id in &crit[3..] {
        ov.handle.clear_ok(*id).unwrap();
    }
    assert!(
        pd.wait_until(WAIT, |pd| open_total(pd) == 0).await,
        "still open: {}",
        open_total(&pd)
    );
    for id in &crit {
        assert_eq!(
            events_of(&pd, *id),
            vec![
                ("trigger".to_owned(), CRITICAL_KEY.to_owned()),
                ("resolve".to_owned(), CRITICAL_KEY.to_owned())
            ],
            "alert {id}: not re-triggered by the restart, resolved on its own key"
        );
    }
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_held_on_a_removed_route_becomes_a_dead_letter_not_a_default_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bridge.redb");
    let (ov, pd) = sims().await;
    let crit = generate(&ov, 3, "Critical");
    let b = Bridge::start(&ov, &pd, |r| {
        critical_route(r);
        durable(&state)(r);
    })
    .await;
    assert!(
        pd.wait_until(WAIT, |pd| open_on(pd, CRITICAL_KEY) == 3)
            .await
    );
    b.stop().await;
    // The route is removed from the configuration; the alerts then clear.
    let b = Bridge::start(&ov, &pd, |r| {
        durable(&state)(r);
        r.server.status_public = true;
    })
    .await;
    for id in &crit {
        ov.handle.clear_ok(*id).unwrap();
    }
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = b.metrics().await;
        if metrics.contains("bridge_pagerduty_route_missing_total 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics.contains("bridge_pagerduty_route_missing_total 3"),
        "one per orphaned resolve: {}",
        metrics
            .lines()
            .filter(|l| l.contains("route_missing"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let dead: serde_json::Value = reqwest::get(format!("{}/api/v1/deliveries/dead-letter", b.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(dead["total"], 3, "{dead}");
    for d in dead["dead_letters"].as_array().unwrap() {
        assert_eq!(d["route"], "critical");
        assert!(
            d["message"].as_str().unwrap().contains("route `critical`"),
            "the reason names the route: {d}"
        );
    }
    for id in &crit {
        assert_eq!(
            events_of(&pd, *id),
            vec![("trigger".to_owned(), CRITICAL_KEY.to_owned())],
            "alert {id}: nothing went to the default key"
        );
    }
    assert_eq!(
        open_on(&pd, CRITICAL_KEY),
        3,
        "visible as dead letters, not silently closed elsewhere"
    );
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_oneview_answer_at_a_resync_resolves_nothing_and_repages_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bridge.redb");
    let (ov, pd) = sims().await;
    let ids = generate(&ov, 120, "Critical");
    let b = Bridge::start(&ov, &pd, durable(&state)).await;
    assert!(pd.wait_until(WAIT, |pd| open_total(pd) == 120).await);
    b.stop().await;
    // The appliance restarts its services: its next two collection answers are empty. The
    // bridge's first full sync after its own restart meets them.
    ov.handle.update_faults(|f| f.empty_next = 2);
    let b = Bridge::start(&ov, &pd, durable(&state)).await;
    let mut metrics = String::new();
    for _ in 0..400 {
        metrics = b.metrics().await;
        if ov.handle.faults().empty_next == 0
            && metrics.contains("bridge_oneview_polls_total{appliance=\"synergy-trust\",kind=\"full\",outcome=\"success\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        metrics
            .contains("bridge_oneview_implausible_snapshots_total{appliance=\"synergy-trust\"} 2"),
        "both empty answers were discarded: {}",
        metrics
            .lines()
            .filter(|l| l.contains("implausible") || l.contains("polls_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(metrics.contains("bridge_oneview_polls_total{appliance=\"synergy-trust\",kind=\"full\",outcome=\"success\"} 1"));
    // A few more cycles: nothing happens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pd.counters().incidents_resolved, 0, "nothing was resolved");
    assert_eq!(
        pd.incidents().len(),
        120,
        "nobody was re-paged with a new incident"
    );
    assert_eq!(
        pd.counters().accepted,
        120,
        "not one event beyond the first triggers"
    );
    // A real mass clear, confirmed one by one, resolves at once.
    for id in &ids {
        ov.handle.delete(*id).unwrap();
    }
    b.stop().await;
    let b = Bridge::start(&ov, &pd, durable(&state)).await;
    assert!(
        pd.wait_until(WAIT, |pd| open_total(pd) == 0).await,
        "120 alerts deleted: the sampled ones are gone too, so all 120 resolve; open {}",
        open_total(&pd)
    );
    assert_eq!(pd.counters().incidents_resolved, 120);
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}
