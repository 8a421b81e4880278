//! `demo`: the whole picture on loopback with nothing else installed. It starts the OneView
//! simulator seeded with realistic alerts that come and go, the PagerDuty simulator, and the
//! bridge in role `all` pointed at both; then it prints where to look and one line per event
//! PagerDuty accepted.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::config::{self, RawConfig, Role};
use crate::sim;

/// Options of the `demo` command.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the bridge serves (`/health`, `/ready`, `/metrics`, ...).
    pub listen: SocketAddr,
    /// The bridge's poll interval.
    pub interval: Duration,
    /// Open alerts the OneView simulator starts with.
    pub alerts: usize,
    /// How often the simulated appliance raises, changes or clears an alert (0 = never).
    pub churn_every: Duration,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            interval: Duration::from_secs(5),
            alerts: 6,
            churn_every: Duration::from_secs(4),
        }
    }
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the {which} simulator on 127.0.0.1: {source}")]
    Simulator {
        which: &'static str,
        source: std::io::Error,
    },
    #[error("demo configuration is invalid (a bug): {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
}

/// The routing key the demo's PagerDuty simulator receives (any 32 characters do).
const DEMO_ROUTING_KEY: &str = "demo0000000000000000000000000key";

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let sim_cfg = sim::oneview::SimConfig::default();
    let (user, password) = (sim_cfg.username.clone(), sim_cfg.password.clone());
    let oneview = sim::oneview::start(sim_cfg, loopback)
        .await
        .map_err(|source| DemoError::Simulator {
            which: "OneView",
            source,
        })?;
    let seeded = oneview.handle.generate(&sim::oneview::GenerateSpec {
        count: opts.alerts,
        max_age_ms: 3_600_000,
        ..Default::default()
    });
    let pagerduty = sim::pagerduty::start(loopback, sim::pagerduty::Faults::default())
        .await
        .map_err(|source| DemoError::Simulator {
            which: "PagerDuty",
            source,
        })?;

    let mut raw = RawConfig::default();
    raw.oneview.url = Some(oneview.url());
    raw.oneview.name = Some("demo-synergy".to_owned());
    raw.oneview.username = Some(user);
    raw.oneview.password = Some(SecretString::from(password));
    raw.pagerduty.routing_key = Some(SecretString::from(DEMO_ROUTING_KEY.to_owned()));
    raw.pagerduty.events_url = pagerduty.events_url();
    // With `--listen 127.0.0.1:0` the port is known only after the bind: no client_url then,
    // rather than one that points nowhere.
    raw.pagerduty.client_url =
        (opts.listen.port() != 0).then(|| format!("http://{}/", opts.listen));
    raw.poller.interval = opts.interval;
    raw.poller.resync_interval = opts.interval.max(Duration::from_secs(60));
    raw.server.listen = opts.listen.to_string();
    raw.server.shutdown_timeout = Duration::from_secs(5);
    raw.server.status_public = true;
    let cfg = config::validate(raw, Role::All)?;
    let app = crate::App::build(cfg).await?;
    let bridge = app.local_addr();

    println!("oneview-pagerduty-bridge demo");
    println!("  status page http://{bridge}/");
    println!("  bridge      http://{bridge}/health  /ready  /metrics  /api/v1/alerts");
    println!(
        "  OneView     {}/ (simulator; {} open alerts to start with; incident links land there)",
        oneview.url().trim_end_matches('/'),
        oneview.handle.open_alert_count()
    );
    println!(
        "  PagerDuty   http://{}/sim/incidents (simulator)",
        pagerduty.addr()
    );
    println!(
        "  polling every {}; {}. Ctrl-C stops.",
        humantime::format_duration(opts.interval),
        churn_phrase(opts.churn_every)
    );
    println!();

    let token = shutdown.child_token();
    let app_task = tokio::spawn(app.run(token.clone()));
    let churn = {
        let handle = oneview.handle.clone();
        let mut open: Vec<u64> = seeded.collect();
        let every = opts.churn_every;
        let stop = token.clone();
        tokio::spawn(async move {
            if every.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                churn_once(&handle, &mut open);
            }
        })
    };
    let printer = {
        let pd = pagerduty.clone();
        let stop = token.clone();
        tokio::spawn(async move {
            let mut seen = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let accepted = pd.accepted();
                for e in accepted.iter().skip(seen) {
                    println!(
                        "{}  {:<8} {:<8} incident #{:<3} {}",
                        e.received_at.format("%H:%M:%S"),
                        e.event_action.as_deref().unwrap_or("?"),
                        e.severity.as_deref().unwrap_or(""),
                        e.incident.map_or_else(|| "-".to_owned(), |i| i.to_string()),
                        one_line(
                            e.summary
                                .as_deref()
                                .or(e.dedup_key.as_deref())
                                .unwrap_or_default(),
                            100
                        )
                    );
                }
                seen = accepted.len();
            }
        })
    };

    let result = app_task.await;
    token.cancel();
    let _ = churn.await;
    let _ = printer.await;
    pagerduty.shutdown();
    oneview.stop().await;
    let c = pagerduty.counters();
    println!(
        "\ndemo stopped: PagerDuty accepted {} events, {} incidents opened, {} resolved",
        c.accepted, c.incidents_opened, c.incidents_resolved
    );
    match result {
        Ok(r) => r.map_err(DemoError::from),
        Err(e) => Err(DemoError::App(crate::app::AppError::Component(format!(
            "bridge task failed: {e}"
        )))),
    }
}

/// One change on the simulated appliance: mostly new alerts and clears, sometimes a severity
/// change, so every kind of event shows up within a minute.
fn churn_once(handle: &sim::oneview::SimHandle, open: &mut Vec<u64>) {
    let mut rng = rand::rng();
    let roll: u8 = rng.random_range(0..10);
    if open.is_empty() || roll < 4 {
        let ids = handle.generate(&sim::oneview::GenerateSpec {
            count: 1,
            ..Default::default()
        });
        open.extend(ids);
    } else if roll < 8 {
        let i = rng.random_range(0..open.len());
        let id = open.swap_remove(i);
        let _ = handle.clear(id);
    } else if let Some(&id) = open.choose(&mut rng) {
        let severity = if rng.random_bool(0.5) {
            "Critical"
        } else {
            "Warning"
        };
        let _ = handle.set_severity(id, severity);
    }
}

/// What the banner says about `--churn-every`; zero turns churn off.
fn churn_phrase(every: Duration) -> String {
    if every.is_zero() {
        "alerts stay as they are (--churn-every 0s: no raises, changes or clears)".to_owned()
    } else {
        format!(
            "an alert is raised, changed or cleared every {}",
            humantime::format_duration(every)
        )
    }
}

/// The first line of `s`, cut to `max` characters.
fn one_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    } else {
        line.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_phrase_says_off_for_zero_and_reads_as_a_duration_otherwise() {
        let off = churn_phrase(Duration::ZERO);
        assert!(!off.contains("0ns"), "{off}");
        assert!(off.contains("no raises, changes or clears"), "{off}");
        assert_eq!(
            churn_phrase(Duration::from_millis(1500)),
            "an alert is raised, changed or cleared every 1s 500ms"
        );
    }
}
