//! The PagerDuty side: turns the poller's [`AlertChange`]s into Events API v2 events and
//! delivers each exactly as often as needed, in order per alert, without ever dropping one.
//!
//! - [`event`]: wire types, `dedup_key` format, summary, severity map, size cap.
//! - [`routing`]: `[[pagerduty.routes]]`, first match wins, else `pagerduty.routing_key`; the
//!   budget (routing key) of each route.
//! - [`dispatcher`]: applies the intake policy of [`crate::pipeline`], the bounded queue,
//!   per-key order, priority, retries.
//! - [`ratelimit`]: the client-side limit per routing key, a 60 s window counted from answers.
//! - [`sender`]: one HTTP attempt and the status -> retry table.
//! - [`status`]: the snapshot the API and status page show.
//! - [`change`]: Change Events from OneView tasks, sharing the routes, the rate limiter, the
//!   retry table and the state journal with alert events.
//! - `durable`: what goes to the state store (outbox, ledger, dead letters) and back.
//!
//! [`assemble`] wires them; the app spawns [`Delivery::task`] and hands
//! [`Delivery::changes`] to the poller.

pub mod change;
pub mod dispatcher;
pub(crate) mod durable;
pub mod error;
pub mod event;
pub mod ratelimit;
pub mod routing;
pub mod sender;
pub mod status;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::model::AlertChange;
use crate::readiness::Readiness;

pub use error::PagerDutyError;
pub use status::{DeadLetter, Delivered, DeliveryStatus, KeyStatus, StatusSnapshot};

/// Name of the readiness warning this side sets while PagerDuty does not accept events or the
/// queue drains at shutdown. A warning, never a 503: restarting would lose the queue.
pub const READINESS_WARNING: &str = "pagerduty";

/// The assembled delivery pipeline.
pub struct Delivery {
    /// The intake of the first appliance (the only one in most tests); [`Delivery::intake`]
    /// gives each appliance's. Each appliance's poller has its own bounded intake and its own
    /// share of `pagerduty.queue_capacity`: it awaits `send`, which is the backpressure when
    /// PagerDuty is slow, without holding back another appliance.
    pub changes: tokio::sync::mpsc::Sender<AlertChange>,
    /// Per appliance id, its poller's intake.
    pub intakes: std::collections::BTreeMap<Arc<str>, tokio::sync::mpsc::Sender<AlertChange>>,
    /// The push API's own admission (`web.push_queue`): callers `try_send` and answer 429 when
    /// it is full, so a big push never waits, and never holds polled alerts back.
    pub pushes: tokio::sync::mpsc::Sender<AlertChange>,
    /// What PagerDuty holds per alert, and the open alerts (read by the web side).
    pub incidents: Arc<crate::pipeline::Incidents>,
    /// The silences (maintenance windows): written by the web side's API, checked at intake.
    pub silences: Arc<crate::pipeline::Silences>,
    /// Runs until `work` is cancelled; then keeps delivering what is queued until the app's
    /// shutdown timeout drops it.
    pub task: crate::task::Task,
    pub status: Arc<DeliveryStatus>,
    /// For the change-event watchers ([`crate::change_events`]); `None` without a Change
    /// Events URL.
    pub change: Option<change::ChangeLink>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    action: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

const ACTIONS: &[&str] = &["trigger", "resolve"];
const OUTCOMES: &[&str] = &["accepted", "rejected", "retried"];

/// The `bridge_pagerduty_*` metric families.
#[derive(Clone)]
pub(crate) struct Metrics {
    events: Family<EventLabels, Counter>,
    http: Family<CodeLabels, Counter>,
    duration: Family<ActionLabels, Histogram, fn() -> Histogram>,
    queue_depth: Gauge,
    oldest_age: Gauge<f64, AtomicU64>,
    rate_limit_waits: Counter,
    dead_letters: Gauge,
    dedup_entries: Gauge,
    cancelled: Counter,
    route_missing: Counter,
    open_incidents: Family<RouteLabels, Gauge>,
    silences_active: Gauge,
    silenced_alerts: Gauge,
    suppressed: Counter,
    flapping: Gauge,
    flap_held: Counter,
    flap_settled: Counter,
}

fn static_label(v: &str, set: &[&'static str]) -> &'static str {
    set.iter().copied().find(|s| *s == v).unwrap_or("other")
}

impl Metrics {
    fn register(registry: &mut Registry) -> Self {
        let m = Self {
            events: Family::default(),
            http: Family::default(),
            duration: Family::new_with_constructor(
                crate::metrics::latency_histogram as fn() -> Histogram,
            ),
            queue_depth: Gauge::default(),
            oldest_age: Gauge::default(),
            rate_limit_waits: Counter::default(),
            dead_letters: Gauge::default(),
            dedup_entries: Gauge::default(),
            cancelled: Counter::default(),
            route_missing: Counter::default(),
            open_incidents: Family::default(),
            silences_active: Gauge::default(),
            silenced_alerts: Gauge::default(),
            suppressed: Counter::default(),
            flapping: Gauge::default(),
            flap_held: Counter::default(),
            flap_settled: Counter::default(),
        };
        for a in ACTIONS {
            for o in OUTCOMES {
                m.event(a, o);
            }
            m.duration(a);
        }
        for c in sender::CODE_LABELS {
            m.http(c);
        }
        registry.register(
            "bridge_pagerduty_events",
            "Events sent to PagerDuty, by action and outcome (retried counts failed attempts)",
            m.events.clone(),
        );
        registry.register(
            "bridge_pagerduty_http_responses",
            "Answers of the PagerDuty Events API, by status class or transport failure",
            m.http.clone(),
        );
        registry.register(
            "bridge_pagerduty_delivery_duration_seconds",
            "Time from queueing an event to PagerDuty accepting it",
            m.duration.clone(),
        );
        registry.register(
            "bridge_pagerduty_queue_depth",
            "Events waiting for or in delivery to PagerDuty",
            m.queue_depth.clone(),
        );
        registry.register(
            "bridge_pagerduty_queue_oldest_age_seconds",
            "Age of the oldest event waiting for delivery (0 when the queue is empty)",
            m.oldest_age.clone(),
        );
        registry.register(
            "bridge_pagerduty_rate_limit_waits",
            "Times delivery waited for the client-side rate limit of a routing key",
            m.rate_limit_waits.clone(),
        );
        registry.register(
            "bridge_pagerduty_dead_letters",
            "Events PagerDuty rejected (400) that are kept in the dead-letter list",
            m.dead_letters.clone(),
        );
        registry.register(
            "bridge_pagerduty_dedup_cache_entries",
            "Alert keys the pipeline remembers: open incidents, open alerts, and resolves kept for dedup.ttl",
            m.dedup_entries.clone(),
        );
        registry.register(
            "bridge_pagerduty_open_incidents",
            "Incidents PagerDuty accepted a trigger for and has not resolved, by the route that holds them",
            m.open_incidents.clone(),
        );
        registry.register(
            "bridge_pagerduty_route_missing",
            "Events for an incident held on a route that is no longer configured: kept as dead letters, never sent to another route",
            m.route_missing.clone(),
        );
        registry.register(
            "bridge_pagerduty_cancelled",
            "Trigger and resolve pairs dropped while queued because the alert cleared first",
            m.cancelled.clone(),
        );
        registry.register(
            "bridge_silences_active",
            "Silences (maintenance windows) in force now; upcoming and expired ones are not counted",
            m.silences_active.clone(),
        );
        registry.register(
            "bridge_silenced_alerts",
            "Open alerts an active silence holds: they page when the silence ends, unless they clear first",
            m.silenced_alerts.clone(),
        );
        registry.register(
            "bridge_silence_suppressed_triggers",
            "Triggers (new incidents, updates, route changes) not sent because a silence held the alert",
            m.suppressed.clone(),
        );
        registry.register(
            "bridge_flapping_alerts",
            "Alerts flapping now (more than flap.max_transitions raises and clears within flap.window): their incidents stay open until they settle",
            m.flapping.clone(),
        );
        registry.register(
            "bridge_flap_held_resolves",
            "Resolves of flapping alerts held back because the alert cleared before it settled",
            m.flap_held.clone(),
        );
        registry.register(
            "bridge_flap_settled",
            "Flapping alerts that stayed cleared for flap.settle and were resolved then",
            m.flap_settled.clone(),
        );
        m
    }

    fn event(&self, action: &str, outcome: &str) -> Counter {
        self.events
            .get_or_create(&EventLabels {
                action: static_label(action, ACTIONS),
                outcome: static_label(outcome, OUTCOMES),
            })
            .clone()
    }

    fn http(&self, code: &str) -> Counter {
        self.http
            .get_or_create(&CodeLabels {
                code: static_label(code, sender::CODE_LABELS),
            })
            .clone()
    }

    fn open_incidents(&self, route: &str) -> Gauge {
        self.open_incidents
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .clone()
    }

    fn duration(&self, action: &str) -> Histogram {
        self.duration
            .get_or_create(&ActionLabels {
                action: static_label(action, ACTIONS),
            })
            .clone()
    }
}

/// Knobs the tests turn; production uses the defaults.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Length of the rate-limit window (`rate_limit_per_minute` events per window).
    pub rate_window: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            // PagerDuty's documented minute; slots are counted from the answers (see
            // `ratelimit`), which covers the arrival jitter that once needed a longer window.
            rate_window: ratelimit::WINDOW,
        }
    }
}

/// The state store the pipeline writes to, with what it held at startup.
pub struct DurableState {
    pub store: Arc<dyn crate::state::StateStore>,
    pub snapshot: crate::state::Snapshot,
    /// `state.retention`: resolved ledger entries older than this are pruned every hour.
    pub retention: Duration,
    /// With a shared state database, the leader's send gate (`crate::leader`).
    pub gate: Option<Arc<crate::leader::SendGate>>,
}

/// Assembles the delivery pipeline from `cfg.pagerduty`, registering its metrics.
pub fn assemble(
    cfg: &Config,
    registry: &mut Registry,
    readiness: Arc<Readiness>,
    work: CancellationToken,
) -> Result<Delivery, PagerDutyError> {
    assemble_tuned(cfg, registry, readiness, work, Tuning::default())
}

/// [`assemble`] with test knobs.
#[doc(hidden)]
pub fn assemble_tuned(
    cfg: &Config,
    registry: &mut Registry,
    readiness: Arc<Readiness>,
    work: CancellationToken,
    tuning: Tuning,
) -> Result<Delivery, PagerDutyError> {
    assemble_durable(cfg, registry, readiness, work, tuning, None)
}

/// [`assemble_tuned`] over a state store: resumes its outbox and seeds [`crate::pipeline::Incidents`] from its
/// ledger before the first change is read. `None`: a fresh in-memory store.
#[doc(hidden)]
pub fn assemble_durable(
    cfg: &Config,
    registry: &mut Registry,
    readiness: Arc<Readiness>,
    work: CancellationToken,
    tuning: Tuning,
    state: Option<DurableState>,
) -> Result<Delivery, PagerDutyError> {
    let state = state.unwrap_or_else(|| DurableState {
        store: Arc::new(crate::state::MemoryStore::new()),
        snapshot: crate::state::Snapshot::default(),
        retention: cfg.state.retention,
        gate: None,
    });
    let pd = cfg
        .pagerduty
        .as_ref()
        .ok_or(PagerDutyError::NotConfigured)?;
    let router = routing::Router::new(pd)?;
    let sender = sender::Sender::new(pd.events_url.clone(), pd.request_timeout)?
        .with_gate(state.gate.clone());
    let change_sender = match &cfg.change_events.url {
        Some(u) => {
            Some(sender::Sender::new(u.clone(), pd.request_timeout)?.with_gate(state.gate.clone()))
        }
        None => None,
    };
    let metrics = Metrics::register(registry);
    let status = Arc::new(DeliveryStatus::with_history(intake_names(cfg)));
    let incidents = Arc::new(crate::pipeline::Incidents::new(cfg.dedup_ttl));
    let journal = crate::state::Journal::start(
        state.store.clone(),
        registry,
        readiness.clone(),
        state.snapshot.outbox.len(),
        state.snapshot.ledger.len(),
    )
    .map_err(|e| PagerDutyError::State(format!("cannot start the state writer thread: {e}")))?;
    let silences = Arc::new(crate::pipeline::Silences::new(
        state.snapshot.silences.values().cloned(),
        Some(journal.clone()),
        state.retention,
        crate::pipeline::silence::Clock::new(),
    ));
    let settings = dispatcher::Settings {
        concurrency: pd.concurrency.max(1),
        capacity: pd.queue_capacity.max(1),
        retry_initial_delay: pd.retry_initial_delay,
        retry_max_delay: pd.retry_max_delay,
        flap: cfg.flap,
    };
    for t in router.targets() {
        metrics.open_incidents(&t.route).set(0);
    }
    let shared = Arc::new(dispatcher::Shared {
        sender,
        metrics,
        limiter: std::sync::Mutex::new(ratelimit::RateLimiter::with_window(
            pd.rate_limit_per_minute,
            tuning.rate_window,
        )),
        answers: tokio::sync::watch::channel(0).0,
        status: status.clone(),
        readiness,
        settings,
        journal: journal.clone(),
        incidents: incidents.clone(),
        silences: silences.clone(),
    });
    let appliances = intake_names(cfg);
    let mut sources = Vec::with_capacity(appliances.len() + 1);
    let mut intakes = std::collections::BTreeMap::new();
    // The appliances share `pagerduty.queue_capacity`: each may have its part pending, and as
    // many again waiting in its intake; then its poller waits (and only its poller).
    let share = (pd.queue_capacity / appliances.len().max(1)).max(1);
    for name in &appliances {
        let (tx, rx) = tokio::sync::mpsc::channel(share);
        intakes.insert(name.clone(), tx);
        sources.push(dispatcher::Source {
            name: name.clone(),
            rx,
            share,
        });
    }
    // Pushes have an allowance of their own (`web.push_queue`), answered 429 when used up.
    let push_share = cfg.web.push_queue.max(1);
    let (push_tx, push_rx) = tokio::sync::mpsc::channel(push_share);
    sources.push(dispatcher::Source {
        name: Arc::from("push"),
        rx: push_rx,
        share: push_share,
    });
    let names: Vec<(Arc<str>, usize)> = sources.iter().map(|s| (s.name.clone(), s.share)).collect();
    let tx = intakes
        .values()
        .next()
        .cloned()
        .ok_or(PagerDutyError::NotConfigured)?;
    let change = match change_sender {
        Some(s) => Some(change::ChangeLink::new(
            shared.clone(),
            routing::Router::new(pd)?,
            s,
            pd.oneview_ui_url.as_ref(),
            state.snapshot.watermarks.clone(),
        )),
        None => None,
    };
    let mut d =
        dispatcher::Dispatcher::new(shared, router, event::EventContext::from_config(pd), &names);
    d.resume(state.snapshot);
    let retention = state.retention;
    let task = async move {
        let prune = async {
            let mut tick = tokio::time::interval(crate::state::journal::PRUNE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Some(t) = std::time::SystemTime::now().checked_sub(retention) {
                    journal.prune(t);
                }
            }
        };
        tokio::select! {
            _ = d.run(sources, work) => {}
            _ = prune => {}
        }
        // Everything was flushed by `run`; closing joins the writer thread, which releases the
        // state file's lock before the task ends (a restart in the same process, or the next
        // pod on the volume, can open it at once).
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
    };
    Ok(Delivery {
        changes: tx,
        intakes,
        pushes: push_tx,
        incidents,
        silences,
        task: Box::pin(task),
        status,
        change,
    })
}

/// The appliance ids whose pollers feed the pipeline (one intake each).
fn intake_names(cfg: &Config) -> Vec<Arc<str>> {
    let names: Vec<Arc<str>> = cfg
        .appliances
        .iter()
        .map(|a| Arc::from(a.oneview.name.as_str()))
        .collect();
    if names.is_empty() {
        // A pipeline without appliances (tests, tools) still has one intake.
        vec![Arc::from("oneview")]
    } else {
        names
    }
}

impl Delivery {
    /// The intake of appliance `id` (the first one's when `id` is not configured).
    pub fn intake(&self, id: &str) -> tokio::sync::mpsc::Sender<AlertChange> {
        self.intakes
            .get(id)
            .cloned()
            .unwrap_or_else(|| self.changes.clone())
    }
}

/// PagerDuty's answer to one test event.
#[derive(Debug, Clone, Serialize)]
pub struct TestEventReport {
    pub route: String,
    pub action: event::Action,
    pub dedup_key: String,
    /// HTTP status, or `None` when no answer came (timeout, connection error).
    pub status: Option<u16>,
    pub accepted: bool,
    /// PagerDuty's message, its `errors`, or the transport error.
    pub detail: String,
}

/// Sends a trigger and then a resolve to every configured routing key (default first, then
/// each route), with the dedup key `oneview-pagerduty-bridge:test:{route}:{unix time}`, once
/// each (no retries: an operator wants the answer now).
pub async fn send_test_event(cfg: &Config) -> Result<Vec<TestEventReport>, PagerDutyError> {
    let pd = cfg
        .pagerduty
        .as_ref()
        .ok_or(PagerDutyError::NotConfigured)?;
    let router = routing::Router::new(pd)?;
    let sender = sender::Sender::new(pd.events_url.clone(), pd.request_timeout)?;
    let ctx = event::EventContext::from_config(pd);
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for target in router.targets() {
        let dedup_key = format!(
            "oneview-pagerduty-bridge:test:{}:{}",
            target.route,
            now.timestamp()
        );
        for action in [event::Action::Trigger, event::Action::Resolve] {
            let ev = event::Event {
                event_action: action,
                dedup_key: dedup_key.clone(),
                payload: event::Payload {
                    summary: format!(
                        "Test event from oneview-pagerduty-bridge (route {}); resolves itself",
                        target.route
                    ),
                    source: "oneview-pagerduty-bridge".to_owned(),
                    severity: "info".to_owned(),
                    timestamp: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                    component: Some("send-test-event".to_owned()),
                    group: None,
                    class: Some("test".to_owned()),
                    custom_details: serde_json::Map::new(),
                },
                client: ctx.client.clone(),
                client_url: ctx.client_url.clone(),
                links: Vec::new(),
            };
            let key = target.routing_key.current()?;
            let attempt = sender.post(ev.to_body(key.expose_secret())).await;
            let report = match attempt {
                sender::Attempt::Accepted { answer } => TestEventReport {
                    route: target.route.to_string(),
                    action,
                    dedup_key: dedup_key.clone(),
                    status: Some(202),
                    accepted: true,
                    detail: answer.message.unwrap_or_default(),
                },
                sender::Attempt::Rejected { status, answer } => TestEventReport {
                    route: target.route.to_string(),
                    action,
                    dedup_key: dedup_key.clone(),
                    status: Some(status),
                    accepted: false,
                    detail: format!(
                        "{} {}",
                        answer.message.unwrap_or_default(),
                        answer.errors.join("; ")
                    )
                    .trim()
                    .to_owned(),
                },
                sender::Attempt::Retry { status, reason, .. } => TestEventReport {
                    route: target.route.to_string(),
                    action,
                    dedup_key: dedup_key.clone(),
                    status,
                    accepted: false,
                    detail: reason,
                },
            };
            out.push(report);
        }
    }
    Ok(out)
}
