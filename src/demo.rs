//! `demo`: the whole picture on loopback with nothing else installed. It starts an estate of
//! three OneView simulators (a Synergy frame set, a second data centre, a BladeSystem lab), each
//! on its own port with its own password and realistic alerts that come and go, the PagerDuty
//! simulator, and the bridge in role `all` watching the three through `[[appliances]]`; then it
//! prints where to look and one line per event PagerDuty accepted, naming its appliance and how
//! long after the simulated change PagerDuty had it.
//!
//! With Debian's `rabbitmq-server` installed (`--bus auto`, the default), the first appliance
//! also has a message bus: the demo starts a RabbitMQ of its own in a temporary directory
//! ([`crate::sim::rabbitmq`]), that appliance's simulator publishes every change to it and serves
//! the certificates over REST, and the bridge consumes it over SCMB exactly as it would a real
//! appliance's, while the other two are polled; the banner says which mode each one runs in. One
//! bus and not three: every appliance has a broker of its own, and three Erlang VMs would cost a
//! demo ≈ 300 MB; one next to two polled appliances shows the difference on the same screen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use rand::Rng;
use rand::seq::IndexedRandom;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::config::{self, RawAppliance, RawConfig, RawScmbOverride, Role};
use crate::sim;
use crate::sim::rabbitmq::{self, Broker, BrokerError};

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
    /// Whether the first appliance gets a message bus (a local RabbitMQ).
    pub bus: BusMode,
}

/// `demo --bus`: whether the demo starts a RabbitMQ for the first appliance's message bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BusMode {
    /// When Debian's `rabbitmq-server` is installed; polling only (and a line saying why) when it
    /// is not or does not start.
    #[default]
    Auto,
    /// Always; the demo stops with the reason when the broker is missing or does not start.
    On,
    /// Never: every appliance is polled.
    Off,
}

/// How often the appliance on the bus is still polled (a safety net; production's default is
/// 5 min, shorter here so the demo shows one within a minute).
const DEMO_BUS_POLL_INTERVAL: Duration = Duration::from_secs(60);

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            interval: Duration::from_secs(5),
            alerts: 6,
            churn_every: Duration::from_secs(4),
            bus: BusMode::Auto,
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
    #[error("--bus on: {0}")]
    Broker(BrokerError),
    #[error("--bus on: the OneView simulator cannot publish to the demo's broker: {0}")]
    Publisher(String),
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

/// Starts the estate's simulators, each seeded with `alerts` open alerts; the first gets
/// `bus_ca`, the CA of its message bus, when there is one.
async fn start_estate(
    alerts: usize,
    bus_ca: Option<sim::oneview::ScmbCa>,
) -> Result<Vec<DemoAppliance>, DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let base = sim::oneview::SimConfig::default();
    let mut estate: Vec<DemoAppliance> = Vec::with_capacity(DEMO_APPLIANCES);
    for (name, site) in sim::oneview::estate(DEMO_APPLIANCES) {
        let cfg = sim::oneview::SimConfig {
            password: sim::oneview::estate_password(&base.password, &name),
            name: Some(name.clone()),
            site,
            scmb_ca: if estate.is_empty() {
                bus_ca.clone()
            } else {
                None
            },
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

/// The demo's message bus: the broker and the publisher of the appliance on it.
struct DemoBus {
    broker: Broker,
    publisher: sim::oneview::ScmbPublisher,
}

/// Starts the broker `opts.bus` asks for: `Ok(Err(reason))` when the demo goes on polling.
async fn start_broker(mode: BusMode) -> Result<Result<Broker, String>, DemoError> {
    if mode == BusMode::Off {
        return Ok(Err("off (--bus off)".to_owned()));
    }
    if mode == BusMode::Auto && !rabbitmq::installed() {
        return Ok(Err(
            "off: rabbitmq-server is not installed (apt install rabbitmq-server, then run the demo again to see pages over the bus)"
                .to_owned(),
        ));
    }
    println!("starting a RabbitMQ for the message bus of the first appliance ...");
    let started = tokio::task::spawn_blocking(Broker::start)
        .await
        .unwrap_or_else(|e| {
            Err(BrokerError::Io {
                what: "start thread".to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
        });
    match (started, mode) {
        (Ok(b), _) => Ok(Ok(b)),
        (Err(e), BusMode::On) => Err(DemoError::Broker(e)),
        (Err(e), _) => Ok(Err(format!(
            "off: the local RabbitMQ did not start ({})",
            one_line(&e.to_string(), 200)
        ))),
    }
}

/// When each demo change was made, by the dedup key of the page it should cause, so the event
/// lines can say how long PagerDuty took to hear of it.
type ChangeTimes = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

/// Runs the demo until `shutdown` is cancelled.
pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> Result<(), DemoError> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let broker = start_broker(opts.bus).await?;
    let bus_ca = broker.as_ref().ok().map(|b| b.pki.appliance_ca());
    let estate = start_estate(opts.alerts, bus_ca).await?;
    let (bus, bus_off) = match broker {
        Err(reason) => (None, Some(reason)),
        Ok(broker) => match sim::oneview::start_publisher(&estate[0].sim.handle, &broker.url()) {
            Ok(publisher) => (Some(DemoBus { broker, publisher }), None),
            Err(e) if opts.bus == BusMode::On => {
                for a in estate {
                    a.sim.stop().await;
                }
                return Err(DemoError::Publisher(e));
            }
            Err(e) => (None, Some(format!("off: {e}"))),
        },
    };
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
        .enumerate()
        .map(|(i, a)| {
            let cfg = a.sim.handle.config();
            RawAppliance {
                name: Some(a.name.clone()),
                url: Some(a.sim.url()),
                username: Some(cfg.username),
                password: Some(SecretString::from(cfg.password)),
                scmb: bus.as_ref().filter(|_| i == 0).map(|b| RawScmbOverride {
                    enabled: Some(true),
                    port: Some(b.broker.port),
                    poll_interval: Some(DEMO_BUS_POLL_INTERVAL),
                    ..RawScmbOverride::default()
                }),
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
    // Now and then a firmware update, power or reset task finishes on a paged resource: its
    // change event shows next to the incident.
    raw.change_events.enabled = true;
    raw.change_events.interval = opts.interval;
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
    let every = humantime::format_duration(opts.interval);
    match (&bus, &bus_off) {
        (Some(b), _) => {
            let rest: Vec<&str> = estate.iter().skip(1).map(|a| a.name.as_str()).collect();
            println!(
                "  mode        {} on its message bus (SCMB, RabbitMQ {}, started for this demo in {:.1} s): pages within milliseconds, polled every {} as the safety net;",
                estate[0].name,
                b.broker.url(),
                b.broker.started_in.as_secs_f64(),
                humantime::format_duration(DEMO_BUS_POLL_INTERVAL),
            );
            println!(
                "              {} polled every {every}, so their pages wait for the next poll",
                rest.join(" and ")
            );
        }
        (None, reason) => println!(
            "  mode        polling each appliance every {every}; message bus (SCMB) {}",
            reason.as_deref().unwrap_or("off")
        ),
    }
    println!(
        "  changes     {}; each line below is an event PagerDuty accepted, with how long after the change. Ctrl-C stops.",
        churn_phrase(opts.churn_every)
    );
    println!();

    let token = shutdown.child_token();
    let app_task = tokio::spawn(app.run(token.clone()));
    let changed: ChangeTimes = Arc::default();
    let n = u32::try_from(estate.len()).unwrap_or(1).max(1);
    let mut sims = Vec::with_capacity(estate.len());
    let mut churns = Vec::with_capacity(estate.len());
    for (i, a) in (0u32..).zip(estate) {
        let DemoAppliance { name, sim, seeded } = a;
        let handle = sim.handle.clone();
        sims.push(sim);
        let mut open = seeded;
        let every = opts.churn_every;
        // Spread over the period, so the appliances take turns rather than change at once.
        let first = tokio::time::Instant::now() + every * (i + 1) / n;
        let stop = token.clone();
        let changed = changed.clone();
        churns.push(tokio::spawn(async move {
            if every.is_zero() {
                return;
            }
            let mut tick = tokio::time::interval_at(first, every);
            let mut ticks = 0u32;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(3) {
                    finish_task(&handle, &open);
                }
                if let Some(id) = churn_once(&handle, &mut open) {
                    let now = Utc::now();
                    let mut times = changed.lock().unwrap_or_else(PoisonError::into_inner);
                    // A change that needs no page (an update PagerDuty already holds) is never
                    // taken out by the printer: forget it once no page can still be coming.
                    times.retain(|_, at| now - *at < chrono::TimeDelta::minutes(10));
                    times.insert(format!("oneview:{name}:/rest/alerts/{id}"), now);
                }
            }
        }));
    }
    let printer = {
        let pd = pagerduty.clone();
        let stop = token.clone();
        let changed = changed.clone();
        tokio::spawn(async move {
            let mut seen = 0usize;
            let mut seen_changes = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let accepted = pd.accepted();
                for e in accepted.iter().skip(seen) {
                    let after = e
                        .dedup_key
                        .as_deref()
                        .and_then(|k| {
                            changed
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .remove(k)
                        })
                        .and_then(|t| (e.received_at - t).to_std().ok())
                        .map(|d| format!("+{}", short_duration(d)))
                        .unwrap_or_default();
                    println!(
                        "{}  {:<8} {:<8} {:<width$} {:>7}  incident #{:<3} {}",
                        e.received_at.format("%H:%M:%S"),
                        e.event_action.as_deref().unwrap_or("?"),
                        e.severity.as_deref().unwrap_or(""),
                        appliance_of(e),
                        after,
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
                let changes = pd.accepted_changes();
                for e in changes.iter().skip(seen_changes) {
                    let appliance = e
                        .body
                        .as_ref()
                        .and_then(|b| b.pointer("/payload/custom_details/appliance"))
                        .and_then(|g| g.as_str())
                        .unwrap_or("-");
                    println!(
                        "{}  change            {:<width$}           {}",
                        e.received_at.format("%H:%M:%S"),
                        appliance,
                        one_line(e.summary.as_deref().unwrap_or_default(), 100)
                    );
                }
                seen_changes = changes.len();
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
    if let Some(b) = bus {
        b.publisher.stop().await;
        // Stopping the Erlang VM blocks for a second or two.
        let _ = tokio::task::spawn_blocking(move || drop(b.broker)).await;
    }
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

/// `12ms`, `3.4s`: how long after its change an event reached PagerDuty.
fn short_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
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

/// A task that finished on the resource of one of the open alerts (a firmware update, a power
/// or reset operation), as OneView records it: the bridge sends it as a change event.
fn finish_task(handle: &sim::oneview::SimHandle, open: &[u64]) {
    let mut rng = rand::rng();
    let Some(alert) = open.choose(&mut rng).and_then(|id| handle.alert(*id)) else {
        return;
    };
    let field = |k: &str| {
        alert
            .pointer(&format!("/associatedResource/{k}"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let name = ["Update firmware", "Power off", "Power on", "Reset"]
        .choose(&mut rng)
        .copied()
        .unwrap_or("Update firmware");
    let state = if rng.random_range(0..5) == 0 {
        "Error"
    } else {
        "Completed"
    };
    handle.add_task(sim::oneview::TaskSpec {
        name: name.to_owned(),
        task_state: state.to_owned(),
        resource_name: field("resourceName"),
        resource_uri: field("resourceUri"),
        resource_category: field("resourceCategory"),
        task_errors: if state == "Error" {
            vec![(
                "SIM_TASK_FAILED".to_owned(),
                "The operation did not complete on the device.".to_owned(),
            )]
        } else {
            Vec::new()
        },
        ..sim::oneview::TaskSpec::default()
    });
}

/// One change on a simulated appliance: mostly new alerts and clears, sometimes a severity
/// change, so every kind of event shows up within a minute. The id of the alert it changed.
fn churn_once(handle: &sim::oneview::SimHandle, open: &mut Vec<u64>) -> Option<u64> {
    let mut rng = rand::rng();
    let roll: u8 = rng.random_range(0..10);
    if open.is_empty() || roll < 4 {
        let ids = handle.generate(&sim::oneview::GenerateSpec {
            count: 1,
            ..Default::default()
        });
        let first = ids.start;
        open.extend(ids);
        Some(first)
    } else if roll < 8 {
        let i = rng.random_range(0..open.len());
        let id = open.swap_remove(i);
        handle.clear(id).ok().map(|()| id)
    } else {
        let id = *open.choose(&mut rng)?;
        let severity = if rng.random_bool(0.5) {
            "Critical"
        } else {
            "Warning"
        };
        handle.set_severity(id, severity).ok().map(|()| id)
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
