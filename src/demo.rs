//! `demo`: the whole picture on loopback with nothing else installed. It starts an estate of
//! three OneView simulators (a Synergy frame set, a second data centre, a BladeSystem lab), each
//! on its own port with its own password and realistic alerts that come and go, the PagerDuty
//! simulator, and the bridge in role `all` watching the three through `[[appliances]]`; then it
//! prints where to look and one line per event PagerDuty accepted, naming its appliance.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::seq::IndexedRandom;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::config::{self, RawAppliance, RawConfig, Role};
use crate::sim;

/// How many appliances the demo's estate has.
pub const DEMO_APPLIANCES: usize = 3;

/// Options of the `demo` command.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the bridge serves (`/health`, `/ready`, `/metrics`, ...).
    pub listen: SocketAddr,
    /// The bridge's poll interval (every appliance).
    pub interval: Duration,
    /// Open alerts each OneView simulator starts with.
    pub alerts: usize,
    /// How often each simulated appliance raises, changes or clears an alert (0 = never).
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
        which: String,
        source: std::io::Error,
    },
    #[error("demo configuration is invalid (a bug): {0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
}

/// The routing key the demo's PagerDuty simulator receives (any 32 characters do).
const DEMO_ROUTING_KEY: &str = "demo0000000000000000000000000key";

/// One simulated appliance of the demo's estate.
struct DemoAppliance {
    name: String,
    sim: sim::oneview::RunningSim,
    /// The ids of the alerts it was seeded with, which churn starts from.
    seeded: Vec<u64>,
}

/// Starts the estate's simulators, each seeded with `alerts` open alerts.
async fn start_estate(alerts: usize) -> Result<Vec<DemoAppliance>, DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let base = sim::oneview::SimConfig::default();
    let mut estate: Vec<DemoAppliance> = Vec::with_capacity(DEMO_APPLIANCES);
    for (name, site) in sim::oneview::estate(DEMO_APPLIANCES) {
        let cfg = sim::oneview::SimConfig {
            password: sim::oneview::estate_password(&base.password, &name),
            name: Some(name.clone()),
            site,
            ..base.clone()
        };
        let started = sim::oneview::start(cfg, loopback).await;
        let sim = match started {
            Ok(s) => s,
            Err(source) => {
                for a in estate {
                    a.sim.stop().await;
                }
                return Err(DemoError::Simulator {
                    which: format!("OneView ({name})"),
                    source,
                });
            }
        };
        let seeded = sim
            .handle
            .generate(&sim::oneview::GenerateSpec {
                count: alerts,
                max_age_ms: 3_600_000,
                ..Default::default()
            })
            .collect();
        estate.push(DemoAppliance { name, sim, seeded });
    }
    Ok(estate)
}

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let estate = start_estate(opts.alerts).await?;
    let pagerduty = match sim::pagerduty::start(loopback, sim::pagerduty::Faults::default()).await {
        Ok(p) => p,
        Err(source) => {
            for a in estate {
                a.sim.stop().await;
            }
            return Err(DemoError::Simulator {
                which: "PagerDuty".to_owned(),
                source,
            });
        }
    };

    let appliances = estate
        .iter()
        .map(|a| {
            let cfg = a.sim.handle.config();
            RawAppliance {
                name: Some(a.name.clone()),
                url: Some(a.sim.url()),
                username: Some(cfg.username),
                password: Some(SecretString::from(cfg.password)),
                ..RawAppliance::default()
            }
        })
        .collect();
    let mut raw = RawConfig {
        appliances,
        ..RawConfig::default()
    };
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

    let width = estate.iter().map(|a| a.name.len()).max().unwrap_or(0);
    println!("oneview-pagerduty-bridge demo");
    println!("  status page http://{bridge}/");
    println!("  bridge      http://{bridge}/health  /ready  /metrics  /api/v1/alerts");
    println!(
        "  OneView     {} simulated appliances (incident links land there):",
        estate.len()
    );
    for a in &estate {
        let cfg = a.sim.handle.config();
        println!(
            "    {:<width$}  {}/  {}; {} open alerts to start with; password {}",
            a.name,
            a.sim.url().trim_end_matches('/'),
            cfg.site.description,
            a.sim.handle.open_alert_count(),
            cfg.password,
        );
    }
    println!(
        "  PagerDuty   http://{}/sim/incidents (simulator)",
        pagerduty.addr()
    );
    println!(
        "  mode        polling each appliance every {} (the message bus, SCMB, is off here: it needs a TLS RabbitMQ the simulators publish to; see README [scmb]); {}. Ctrl-C stops.",
        humantime::format_duration(opts.interval),
        churn_phrase(opts.churn_every)
    );
    println!();

    let token = shutdown.child_token();
    let app_task = tokio::spawn(app.run(token.clone()));
    let n = u32::try_from(estate.len()).unwrap_or(1).max(1);
    let mut sims = Vec::with_capacity(estate.len());
    let mut churns = Vec::with_capacity(estate.len());
    for (i, a) in (0u32..).zip(estate) {
        let DemoAppliance { sim, seeded, .. } = a;
        let handle = sim.handle.clone();
        sims.push(sim);
        let mut open = seeded;
        let every = opts.churn_every;
        // Spread over the period, so the appliances take turns rather than change at once.
        let first = tokio::time::Instant::now() + every * (i + 1) / n;
        let stop = token.clone();
        churns.push(tokio::spawn(async move {
            if every.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval_at(first, every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                churn_once(&handle, &mut open);
            }
        }));
    }
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
                        "{}  {:<8} {:<8} {:<width$} incident #{:<3} {}",
                        e.received_at.format("%H:%M:%S"),
                        e.event_action.as_deref().unwrap_or("?"),
                        e.severity.as_deref().unwrap_or(""),
                        appliance_of(e),
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
    for c in churns {
        let _ = c.await;
    }
    let _ = printer.await;
    pagerduty.shutdown();
    for s in sims {
        s.stop().await;
    }
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

/// The appliance an accepted event came from: the payload's `group` (the bridge puts the
/// appliance there), else the middle of an `oneview:{appliance}:{uri}` dedup key.
fn appliance_of(e: &sim::pagerduty::LoggedEvent) -> String {
    let group = e
        .body
        .as_ref()
        .and_then(|b| b.pointer("/payload/group"))
        .and_then(|g| g.as_str());
    if let Some(g) = group {
        return g.to_owned();
    }
    e.dedup_key
        .as_deref()
        .and_then(|k| k.strip_prefix("oneview:"))
        .and_then(|k| k.split_once(':'))
        .map(|(a, _)| a.to_owned())
        .unwrap_or_else(|| "-".to_owned())
}

/// One change on a simulated appliance: mostly new alerts and clears, sometimes a severity
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
            "on each appliance an alert is raised, changed or cleared every {}",
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
            "on each appliance an alert is raised, changed or cleared every 1s 500ms"
        );
    }
}
