//! The delivery queue: applies the intake policy ([`crate::pipeline::decide`]) to every
//! [`AlertChange`], keeps what PagerDuty must hear in a durable outbox, and sends it.
//!
//! One task owns all queue state (no locks on the hot path but the short one of
//! [`Incidents`], which the web side reads):
//!
//! - **Intake** pulls from two bounded channels (the poller's, and the push API's own, so a big
//!   push cannot hold polled alerts back) only while fewer than `pagerduty.queue_capacity`
//!   events are pending, so a full queue makes the poller's `send().await` wait (backpressure)
//!   and a push answer 429.
//! - **Policy**: what PagerDuty holds for the key ([`Incidents::holding`], folded with the event
//!   in flight) and the events not sent yet go to [`decide`], which says what the not-yet-sent
//!   part of the key's queue must be; this module keeps what already matches, replaces a queued
//!   trigger in place (keeping its age), cancels the rest and queues the new. New incidents open
//!   on the route the alert's fields pick; every later event of an open incident goes to the
//!   route that holds it; an update that moves an alert to another route resolves the old
//!   incident before the new trigger. An event for a route no longer configured is a dead
//!   letter (`bridge_pagerduty_route_missing_total`), never sent to another route.
//! - **Per-key order**: each `dedup_key` has its own FIFO; only its head is ever in flight, so a
//!   resolve can never overtake its trigger. Different keys run concurrently, up to
//!   `pagerduty.concurrency`, over one pooled keep-alive client.
//! - **Priority**: among keys whose head is ready, critical goes before warning before the
//!   rest, then oldest first.
//! - **Rate limit**: a key is picked only when its routing key's budget has room; retries take a
//!   slot too (see [`super::ratelimit`]).
//!
//! ## Durability
//! Every queued event is written to the state store's outbox ([`crate::state::Journal`], group
//! commit) and is sent only once that write is durable; PagerDuty's 202 removes it and records
//! the ledger entry (with its route) in one op, a 400 moves it to the dead letters, a
//! cancellation drops it. At startup [`Dispatcher::resume`] seeds [`Incidents`] from the ledger
//! and queues the outbox again (per-key order is the seq order) before the first change is read.
//!
//! Delivery of one event retries (429, 408, 5xx, timeouts, connection errors) with exponential
//! backoff and full jitter between `pagerduty.retry_initial_delay` and
//! `pagerduty.retry_max_delay`, at least as long as `Retry-After` asks, for as long as the
//! process runs. A 400 is final: the event becomes a dead letter.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use rand::Rng;
use secrecy::ExposeSecret;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{AlertChange, ChangeKind};
use crate::pipeline::silence::ActiveSet;
use crate::pipeline::{
    Flap, FlapSettings, Flaps, Holding, Incidents, Incoming, Queued, Routes, Silence, Silences,
    Step, Why, decide,
};
use crate::readiness::Readiness;
use crate::recent::FastMap;

use super::event::{self, Action, Encoded, EventContext};
use super::ratelimit::{RateLimiter, Wait};
use super::routing::{Router, Target};
use super::sender::{Answer, Attempt, Sender};
use super::status::{DeadLetter, Delivered, DeliveryStatus};
use super::{Metrics, READINESS_WARNING, durable};
use crate::state::{Journal, Op, Snapshot};

/// Settings of the delivery loop.
#[derive(Debug, Clone)]
pub struct Settings {
    pub concurrency: usize,
    pub capacity: usize,
    pub retry_initial_delay: Duration,
    pub retry_max_delay: Duration,
    /// `[flap]`.
    pub flap: FlapSettings,
}

/// What the sending tasks share.
pub(crate) struct Shared {
    pub sender: Sender,
    pub metrics: Metrics,
    pub limiter: Mutex<RateLimiter>,
    /// Counts answers that gave a rate-limit slot back: whoever waits for a slot held by a
    /// request in flight ([`Wait::Answer`]) waits for it to move.
    pub answers: watch::Sender<u64>,
    pub status: Arc<DeliveryStatus>,
    pub readiness: Arc<Readiness>,
    pub settings: Settings,
    pub journal: Journal,
    pub incidents: Arc<Incidents>,
    pub silences: Arc<Silences>,
}

impl Shared {
    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        // The limiter is a plain map of timestamps; a panic elsewhere cannot corrupt it.
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a rate-limit slot of `budget` (used by retries).
    pub(crate) async fn acquire(&self, budget: &Arc<str>) {
        let mut counted = false;
        let mut answers = self.answers.subscribe();
        loop {
            answers.borrow_and_update();
            let r = self.limiter().try_acquire(budget, Instant::now());
            let wait = match r {
                Ok(()) => return,
                Err(w) => w,
            };
            if !counted {
                self.metrics.rate_limit_waits.inc();
                counted = true;
            }
            match wait {
                Wait::Until(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = answers.changed() => {}
                    }
                }
                Wait::Answer => {
                    // The sender lives in `self`: `changed` cannot fail while we wait.
                    let _ = answers.changed().await;
                }
            }
        }
    }

    /// The request that took a slot of `budget` was answered (or failed).
    pub(crate) fn answered(&self, budget: &Arc<str>) {
        self.limiter().answered(budget, Instant::now());
        self.answers.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// One event waiting for (or in) delivery.
struct Job {
    seq: u64,
    /// The outbox entry's seq (differs from `seq` once a queued trigger was replaced).
    store_seq: u64,
    /// The journal ticket of the outbox write; the send waits until it is durable.
    ticket: u64,
    /// Read back from the outbox at startup: PagerDuty may already have accepted it.
    resumed: bool,
    action: Action,
    event: Arc<Encoded>,
    target: Target,
    priority: u8,
    fingerprint: u64,
    enqueued: Instant,
    /// The intake (appliance, or the push API) the job's change came from.
    source: usize,
    /// Its place in the fair order among intakes (see [`Dispatcher::next_turn`]).
    turn: u64,
}

impl Job {
    fn step(&self) -> Step {
        Step {
            action: self.action,
            route: self.target.route.clone(),
            fingerprint: self.fingerprint,
        }
    }
}

#[derive(Default)]
struct KeyQueue {
    jobs: VecDeque<Job>,
    /// The head of `jobs` is being delivered.
    in_flight: bool,
}

/// `(priority, turn, seq, dedup_key)`: the order in which ready keys are picked: critical
/// first, then fairly across intakes (a storm on one appliance does not hold back another's
/// page), then oldest first.
type ReadyEntry = (u8, u64, u64, String);

/// One intake of changes: an appliance's poller, or the push API.
pub(crate) struct Source {
    /// The appliance id (or `push`).
    pub name: Arc<str>,
    pub rx: mpsc::Receiver<AlertChange>,
    /// Pending jobs it may have before the dispatcher stops taking its changes.
    pub share: usize,
}

enum Outcome {
    Accepted(Answer),
    Rejected { status: u16, answer: Answer },
}

struct Done {
    key: String,
    outcome: Outcome,
}

pub(crate) struct Dispatcher {
    shared: Arc<Shared>,
    router: Router,
    ctx: EventContext,
    keys: FastMap<String, KeyQueue>,
    /// Ready keys per rate-limit budget, so a limited routing key does not hide another's work.
    ready: HashMap<Arc<str>, BTreeSet<ReadyEntry>>,
    /// Enqueue time of every pending job by sequence number: depth and oldest age.
    pending: BTreeMap<u64, Instant>,
    /// Budgets currently waiting for the rate limiter (to count each wait once).
    blocked: HashSet<Arc<str>>,
    inflight: JoinSet<Done>,
    /// Key and budget of each delivery task (a panicking task still gives its slot back).
    inflight_keys: FastMap<tokio::task::Id, (String, Arc<str>)>,
    next_seq: u64,
    /// Route names whose open-incident gauge was ever set (so a route's count can go to 0).
    gauged_routes: HashSet<Arc<str>>,
    /// A budget waits for an answer of a request in flight ([`Wait::Answer`]): the loop then
    /// also wakes when a retrying task gives a slot back, not only when a task ends.
    waiting_for_answer: bool,
    /// Pending jobs per intake, and what each may have: a storm on one appliance fills its
    /// own share of `pagerduty.queue_capacity` and makes only its own poller wait.
    per_source: Vec<usize>,
    shares: Vec<usize>,
    /// Appliance id -> intake, for events read back from the outbox.
    source_of: HashMap<Arc<str>, usize>,
    /// Start-time fair queueing among intakes: the last turn given to each, and the turn of
    /// the last job started.
    last_turn: Vec<u64>,
    clock: u64,
    /// The silences active when they were last looked at, and when that set changes next.
    active: ActiveSet,
    silence_wake: Option<Instant>,
    /// Flap damping: the alerts that clear often, and the resolves held until they settle
    /// (their due times wake the loop, as a silence's end does).
    flaps: Flaps,
}

/// Folded into the fingerprint of a flapping alert (see [`Dispatcher::evaluate`]).
const FLAPPING: u64 = 0x666c_6170_7069_6e67;

fn priority_name(p: u8) -> &'static str {
    match p {
        0 => "critical",
        1 => "warning",
        _ => "other",
    }
}

fn priority(pd_severity: &str) -> u8 {
    match pd_severity {
        "critical" => 0,
        "warning" => 1,
        _ => 2,
    }
}

impl Routes for Router {
    fn configured(&self, route: &str) -> bool {
        self.by_name(route).is_some()
    }

    fn distinct(&self) -> Vec<Arc<str>> {
        self.distinct_targets()
            .into_iter()
            .map(|t| t.route)
            .collect()
    }
}

/// The message of a dead letter whose route is gone.
fn route_missing_message(route: &str) -> String {
    format!(
        "route `{route}` holds this incident but is no longer configured (pagerduty.routes); the event was not sent to another route, because PagerDuty scopes a dedup_key to its integration. Add the route back (same name and routing key) and retry this dead letter, or resolve the incident by hand in PagerDuty"
    )
}

impl Dispatcher {
    /// `sources`: the names and shares of the intakes, in the order [`Dispatcher::run`] gets
    /// them.
    pub(crate) fn new(
        shared: Arc<Shared>,
        router: Router,
        ctx: EventContext,
        sources: &[(Arc<str>, usize)],
    ) -> Self {
        let n = sources.len().max(1);
        Self {
            router,
            ctx,
            keys: FastMap::default(),
            ready: HashMap::new(),
            pending: BTreeMap::new(),
            blocked: HashSet::new(),
            inflight: JoinSet::new(),
            inflight_keys: FastMap::default(),
            next_seq: 0,
            gauged_routes: HashSet::new(),
            waiting_for_answer: false,
            per_source: vec![0; n],
            shares: sources.iter().map(|(_, s)| *s).collect(),
            source_of: sources
                .iter()
                .enumerate()
                .map(|(i, (s, _))| (s.clone(), i))
                .collect(),
            last_turn: vec![0; n],
            clock: 0,
            active: ActiveSet::default(),
            silence_wake: None,
            flaps: Flaps::new(shared.settings.flap),
            shared,
        }
    }

    /// The turn of a new job of `source`: right after the last job started, unless the
    /// source already has turns queued beyond it. A source that queued 10,000 events has
    /// turns up to 10,000 ahead; a quiet one gets the next turn, so its event goes next
    /// among those of its priority.
    fn next_turn(&mut self, source: usize) -> u64 {
        let t = self.clock.max(self.last_turn[source]) + 1;
        self.last_turn[source] = t;
        t
    }

    fn job_added(&mut self, source: usize, seq: u64, now: Instant) {
        self.pending.insert(seq, now);
        self.per_source[source] += 1;
    }

    fn job_removed(&mut self, source: usize, seq: u64) {
        self.pending.remove(&seq);
        self.per_source[source] = self.per_source[source].saturating_sub(1);
    }

    /// Drops an idle key, and the capacity a storm of keys left behind.
    fn forget(&mut self, key: &str) {
        self.keys.remove(key);
        crate::recent::shrink_if_sparse(&mut self.keys);
    }

    /// Runs until `work` is cancelled and everything queued is delivered (or the caller drops
    /// this future at its shutdown timeout). `sources` are the intakes, in the order given to
    /// [`Dispatcher::new`] (the appliances' pollers, then the push API).
    pub(crate) async fn run(mut self, mut sources: Vec<Source>, work: CancellationToken) {
        let mut draining = false;
        let mut done = vec![false; sources.len()];
        let mut next_source = 0usize;
        let mut room: Vec<bool> = Vec::with_capacity(sources.len());
        let mut answers = self.shared.answers.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut silences = self.shared.silences.subscribe();
        silences.borrow_and_update();
        self.refresh_silences();
        loop {
            answers.borrow_and_update();
            let wake = self.dispatch();
            self.update_queue_gauges();
            if done.iter().all(|d| *d) && self.pending.is_empty() {
                break;
            }
            room.clear();
            room.extend((0..sources.len()).map(|i| {
                !done[i]
                    && self
                        .per_source
                        .get(i)
                        .zip(self.shares.get(i))
                        .is_some_and(|(n, s)| n < s)
            }));
            // The next change of any intake with room, starting after the last one served, so
            // that intakes take turns.
            let intake = std::future::poll_fn(|cx| {
                let n = sources.len();
                for k in 0..n {
                    let i = (next_source + k) % n;
                    if !room[i] {
                        continue;
                    }
                    if let std::task::Poll::Ready(msg) = sources[i].rx.poll_recv(cx) {
                        return std::task::Poll::Ready((i, msg));
                    }
                }
                std::task::Poll::Pending
            });
            tokio::select! {
                Some(res) = self.inflight.join_next_with_id(), if !self.inflight.is_empty() => {
                    match res {
                        Ok((id, done)) => {
                            self.inflight_keys.remove(&id);
                            self.finish(done);
                        }
                        Err(e) => {
                            // Only a panic gets here (tasks are never aborted while we run):
                            // put the key back so its events are not stuck forever.
                            if let Some((key, budget)) = self.inflight_keys.remove(&e.id()) {
                                tracing::error!(dedup_key = %key, error = %e, "PagerDuty delivery task failed; retrying the event");
                                self.shared.answered(&budget);
                                if let Some(q) = self.keys.get_mut(&key) {
                                    q.in_flight = false;
                                }
                                self.mark_ready(&key);
                            }
                        }
                    }
                }
                (i, msg) = intake, if room.iter().any(|r| *r) => {
                    next_source = i + 1;
                    match msg {
                        Some(change) => self.evaluate(change, i, true),
                        None => done[i] = true,
                    }
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {}
                _ = answers.changed(), if self.waiting_for_answer => {}
                // A silence was added or expired, or one starts or ends now.
                Ok(()) = silences.changed() => self.refresh_silences(),
                _ = sleep_until_opt(self.silence_wake), if self.silence_wake.is_some() => self.refresh_silences(),
                // A flapping alert stayed cleared for flap.settle: its resolve goes out now.
                _ = sleep_until_opt(self.flaps.next_due()), if self.flaps.next_due().is_some() => self.settle_flaps(),
                _ = work.cancelled(), if !draining => {
                    draining = true;
                    for s in &mut sources {
                        s.rx.close();
                    }
                    if !self.pending.is_empty() {
                        self.shared.readiness.set_warning(READINESS_WARNING, Some(format!(
                            "shutting down: draining {} queued PagerDuty event(s)", self.pending.len())));
                        tracing::info!(queued = self.pending.len(), "shutdown: delivering the queued PagerDuty events until server.shutdown_timeout");
                    }
                }
                _ = tick.tick() => {
                    self.flaps.sweep(Instant::now());
                    self.update_incident_gauges();
                }
            }
        }
        self.update_queue_gauges();
        self.update_incident_gauges();
        // Every op was submitted; make sure the last ones (the final 202s) are on disk.
        self.shared.journal.flush().await;
    }

    /// Restores what the state store remembers, before the first change is read: the ledger
    /// seeds [`Incidents`] (which route holds which open incident, with its fingerprint, so an
    /// unchanged open alert is not triggered again), stored dead letters reappear in the
    /// status, and the outbox is queued again in its original order. An outbox event whose route
    /// is no longer configured becomes a dead letter.
    pub(crate) fn resume(&mut self, snap: Snapshot) {
        let now = std::time::SystemTime::now();
        self.shared
            .incidents
            .seed(snap.ledger.iter().filter_map(|(key, e)| {
                let fingerprint = durable::parse_fingerprint(&e.fingerprint)?;
                let age = now.duration_since(e.at).unwrap_or_default();
                Some((
                    key.as_str(),
                    durable::from_state(e.action),
                    e.route.as_str(),
                    fingerprint,
                    age,
                ))
            }));
        for d in snap.dead_letters.values() {
            self.shared
                .status
                .dead_letter(durable::dead_letter_status(d));
        }
        self.set_dead_letter_gauge();
        self.next_seq = self.next_seq.max(snap.next_seq);
        let resumed = snap.outbox.len();
        for entry in snap.outbox {
            let Some(stored) = durable::decode(&entry) else {
                tracing::error!(dedup_key = %entry.key, seq = entry.seq, "an outbox entry of the state store cannot be decoded; dropped");
                self.shared
                    .journal
                    .submit(vec![Op::Cancelled { seq: entry.seq }]);
                continue;
            };
            let action = durable::from_state(entry.action);
            let event = Encoded::new(&stored.event);
            let Some(target) = self.router.by_name(&stored.route).cloned() else {
                self.orphan(&entry.key, action, &stored.route, &event, entry.seq);
                continue;
            };
            let now = Instant::now();
            let seq = self.next_seq.max(entry.seq);
            self.next_seq = seq + 1;
            let source = self.source_of_key(&entry.key);
            let turn = self.next_turn(source);
            let job = Job {
                seq,
                store_seq: entry.seq,
                ticket: 0,
                resumed: true,
                action,
                event: Arc::new(event),
                target,
                priority: entry.priority,
                fingerprint: durable::parse_fingerprint(&entry.fingerprint).unwrap_or(0),
                enqueued: now,
                source,
                turn,
            };
            self.job_added(source, seq, now);
            let key = entry.key;
            let q = self.keys.entry(key.clone()).or_default();
            q.jobs.push_back(job);
            if q.jobs.len() == 1 && !q.in_flight {
                self.mark_ready(&key);
            }
        }
        if resumed > 0 {
            tracing::info!(
                events = resumed,
                "resuming the PagerDuty events of the state store's outbox"
            );
        }
        self.update_incident_gauges();
    }

    /// The intake of an event read back from the outbox: its appliance's, from the dedup key
    /// (`oneview:{appliance}:{uri}`); the first intake for a key that names none (hashed).
    fn source_of_key(&self, key: &str) -> usize {
        key.strip_prefix("oneview:")
            .and_then(|rest| rest.find(":/rest/").map(|at| &rest[..at]))
            .and_then(|app| self.source_of.get(app))
            .copied()
            .unwrap_or(0)
    }

    /// What PagerDuty holds for `key` once the event in flight is answered, and the events
    /// not sent yet: the policy's input.
    fn view(&self, key: &str) -> (Holding, Vec<Queued>) {
        let heard = self.shared.incidents.holding(key);
        let Some(q) = self.keys.get(key) else {
            return (heard, Vec::new());
        };
        let skip = usize::from(q.in_flight);
        let confirmed = match q.jobs.front() {
            Some(j) if q.in_flight => heard.after(&j.step()),
            _ => heard,
        };
        let queued = q
            .jobs
            .iter()
            .skip(skip)
            .map(|j| Queued {
                step: j.step(),
                resumed: j.resumed,
            })
            .collect();
        (confirmed, queued)
    }

    /// Looks at the silences again: when the active set changed (a silence started, ended or
    /// was expired), every open alert one of the changed silences matches, or that one of
    /// them held, goes through the policy again with its last change. So an alert a silence
    /// held is triggered when it ends (once: its trigger is then queued or held), a trigger
    /// queued before a silence started is cancelled, and an alert still held by another
    /// silence stays held. After a restart the first full sync does the same for every alert.
    fn refresh_silences(&mut self) {
        let (active, next) = self.shared.silences.active();
        self.silence_wake = next;
        let active = ActiveSet::new(active);
        let changed: Vec<Arc<crate::pipeline::silence::Compiled>> = active
            .changed_since(&self.active)
            .into_iter()
            .cloned()
            .collect();
        self.active = active;
        let m = &self.shared.metrics;
        m.silences_active
            .set(i64::try_from(self.active.len()).unwrap_or(i64::MAX));
        if changed.is_empty() {
            return;
        }
        let ids: HashSet<&str> = changed.iter().map(|c| c.silence.id.as_str()).collect();
        let mut again = 0usize;
        for t in self.shared.incidents.open_alerts() {
            let was = t.silenced_by.as_deref().is_some_and(|id| ids.contains(id));
            if was || changed.iter().any(|c| c.matches(&t.change)) {
                let source = self.source_of_key(&t.dedup_key);
                self.evaluate(t.change, source, false);
                again += 1;
            }
        }
        tracing::info!(
            active = self.active.len(),
            changed = changed.len(),
            alerts = again,
            "silences changed; the alerts they match were evaluated again"
        );
        self.shared
            .metrics
            .silenced_alerts
            .set(i64::try_from(self.shared.incidents.held_count()).unwrap_or(i64::MAX));
    }

    /// Sends the resolves of the flapping alerts that stayed cleared for `flap.settle`: their
    /// histories are forgotten, so the evaluation of the held clear is the plain policy's.
    fn settle_flaps(&mut self) {
        let settled = self.flaps.take_settled(Instant::now());
        for (key, change) in settled {
            self.shared.incidents.set_flapping(&key, false);
            self.shared.metrics.flap_settled.inc();
            tracing::info!(dedup_key = %key, alert_uri = %change.key.uri, "flapping alert stayed cleared for flap.settle; resolving its incident");
            let source = self.source_of_key(&key);
            self.evaluate(change, source, false);
        }
        self.shared
            .metrics
            .flapping
            .set(i64::try_from(self.flaps.flapping_count()).unwrap_or(i64::MAX));
    }

    /// Decides what PagerDuty must hear about one change (from intake `source`), and queues
    /// it. `arrived`: the change is new (it counts as a transition for flap damping), not an
    /// alert's last change evaluated again.
    fn evaluate(&mut self, change: AlertChange, source: usize, arrived: bool) {
        let alert = &change.alert;
        let key = event::dedup_key(&change.key.appliance, &change.key.uri);
        let open = change.kind != ChangeKind::Cleared;
        let flapping = if arrived {
            let seen = self.flaps.observe(&key, &change, Instant::now());
            if seen.started {
                self.shared.incidents.set_flapping(&key, true);
                self.shared
                    .metrics
                    .flapping
                    .set(i64::try_from(self.flaps.flapping_count()).unwrap_or(i64::MAX));
                let f = self.flaps.settings();
                tracing::warn!(dedup_key = %key, alert_uri = %change.key.uri, max_transitions = f.max_transitions, window = %humantime::format_duration(f.window), "alert is flapping: its incident stays open until it stays cleared for flap.settle");
            }
            seen.flapping
        } else {
            self.flaps.is_flapping(&key)
        };
        let flap = if !open && self.flaps.holds_resolve(&key) {
            Flap::HoldsResolve
        } else {
            Flap::None
        };
        let holder: Option<Arc<str>> = if open {
            self.active
                .holder(&change)
                .map(|c| Arc::from(c.silence.id.as_str()))
        } else {
            None
        };
        let was_held = self.shared.incidents.hold(&key, holder.as_ref());
        let silence = if holder.is_some() || (!open && was_held.is_some()) {
            Silence::Holds
        } else {
            Silence::None
        };
        self.shared.incidents.observe(&key, &change);
        let pd_severity = self.ctx.pd_severity(alert.severity.as_str());
        // A flapping alert differs from its first trigger by `custom_details.flapping`: the
        // first raise after flapping started updates the incident with it, once.
        let fp = event::fingerprint(&pd_severity, alert) ^ if flapping { FLAPPING } else { 0 };
        let incoming = match change.kind {
            ChangeKind::Raised | ChangeKind::Updated => Incoming::Open {
                route: self.router.route(&change.appliance.id, alert).route.clone(),
                fingerprint: fp,
            },
            ChangeKind::Cleared => Incoming::Cleared { fingerprint: fp },
        };
        let (confirmed, queued) = self.view(&key);
        let d = decide(&incoming, &confirmed, &queued, &self.router, silence, flap);
        match d.why {
            Why::FlapHeld => {
                self.shared.metrics.flap_held.inc();
                tracing::info!(dedup_key = %key, alert_uri = %change.key.uri, "flapping alert cleared; its resolve waits until it stays cleared for flap.settle");
            }
            Why::Silenced => {
                self.shared.metrics.suppressed.inc();
                tracing::info!(dedup_key = %key, alert_uri = %change.key.uri, silence = holder.as_deref().unwrap_or(""), "a silence holds this alert; not paged (it is, when the silence ends and the alert is still open)");
            }
            Why::Unchanged => {
                tracing::debug!(dedup_key = %key, "PagerDuty has (or will have) this alert as it is; nothing sent")
            }
            Why::AlreadyResolved => {
                tracing::debug!(dedup_key = %key, "PagerDuty already resolved this alert")
            }
            Why::NeverSent => {
                self.shared.metrics.cancelled.inc();
                tracing::info!(dedup_key = %key, alert_uri = %change.key.uri, "alert cleared before its trigger was sent; nothing sent for it");
            }
            Why::RouteChange => {
                let from = match &confirmed {
                    Holding::Open { route, .. } => route.to_string(),
                    _ => String::new(),
                };
                if let Incoming::Open { route, .. } = &incoming {
                    tracing::info!(dedup_key = %key, alert_uri = %change.key.uri, from = %from, to = %route, "alert moved to another route: resolving its incident there and triggering on the new route");
                }
            }
            Why::New | Why::Update | Why::Resolve | Why::ResolveUnknown => {}
        }
        for o in &d.orphans {
            let ev = self.build(&key, o.action, &change);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.orphan(&key, o.action, &o.route, &ev, seq);
        }
        self.replace_queue(&key, &d.queue, &change, &pd_severity, source);
    }

    fn build(&self, key: &str, action: Action, change: &AlertChange) -> Encoded {
        let mut ev = event::build(action, &change.alert, &change.appliance, &self.ctx);
        if action == Action::Trigger && self.flaps.is_flapping(key) {
            ev.payload
                .custom_details
                .insert("flapping".to_owned(), serde_json::Value::Bool(true));
        }
        Encoded::new(&ev)
    }

    /// Keeps an event for a route that is gone as a dead letter: never sent, never rerouted.
    fn orphan(&mut self, key: &str, action: Action, route: &str, ev: &Encoded, seq: u64) {
        let message = route_missing_message(route);
        self.shared.metrics.route_missing.inc();
        tracing::error!(dedup_key = %key, action = %action, route = %route, "{message}");
        let dead = DeadLetter {
            dedup_key: key.to_owned(),
            action,
            route: route.to_owned(),
            status: 0,
            message: Some(message.clone()),
            errors: Vec::new(),
            time: chrono::Utc::now(),
        };
        self.shared
            .journal
            .submit(vec![durable::dead_letter_op(seq, &dead, ev, &message)]);
        self.shared.status.dead_letter(dead);
        self.set_dead_letter_gauge();
    }

    fn set_dead_letter_gauge(&self) {
        self.shared
            .metrics
            .dead_letters
            .set(i64::try_from(self.shared.status.dead_letter_count()).unwrap_or(i64::MAX));
    }

    /// Makes the not-yet-sent part of `key`'s queue `desired`: keeps the jobs that already
    /// match, replaces a queued trigger with a newer one in place (its place and age stay),
    /// cancels the rest and queues what is new.
    fn replace_queue(
        &mut self,
        key: &str,
        desired: &[Step],
        change: &AlertChange,
        pd_severity: &str,
        source: usize,
    ) {
        self.unready(key);
        let (skip, existing) = match self.keys.get(key) {
            Some(q) => (
                usize::from(q.in_flight),
                q.jobs.len() - usize::from(q.in_flight),
            ),
            None => (0, 0),
        };
        let mut i = 0;
        if let Some(q) = self.keys.get(key) {
            while i < existing && i < desired.len() && q.jobs[skip + i].step() == desired[i] {
                i += 1;
            }
        }
        // The last queued event and its successor are the same action on the same route
        // (a trigger with newer content): replace it where it stands.
        let in_place = i + 1 == existing
            && i < desired.len()
            && self.keys.get(key).is_some_and(|q| {
                let j = &q.jobs[skip + i];
                j.action == desired[i].action && j.target.route == desired[i].route
            });
        if in_place {
            self.replace_job(key, skip + i, &desired[i], change, pd_severity);
            i += 1;
        } else if i < existing {
            let Some(q) = self.keys.get_mut(key) else {
                return;
            };
            let dropped: Vec<Job> = q.jobs.drain(skip + i..).collect();
            let mut ops = Vec::with_capacity(dropped.len());
            for j in &dropped {
                self.job_removed(j.source, j.seq);
                ops.push(Op::Cancelled { seq: j.store_seq });
            }
            self.shared.journal.submit(ops);
        }
        for step in &desired[i..] {
            self.push_job(key, step, change, pd_severity, source);
        }
        match self.keys.get(key) {
            Some(q) if q.jobs.is_empty() => self.forget(key),
            Some(_) => self.mark_ready(key),
            None => {}
        }
    }

    fn push_job(
        &mut self,
        key: &str,
        step: &Step,
        change: &AlertChange,
        pd_severity: &str,
        source: usize,
    ) {
        // The policy queues only configured routes.
        let Some(target) = self.router.by_name(&step.route).cloned() else {
            return;
        };
        let ev = self.build(key, step.action, change);
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = Instant::now();
        let prio = priority(pd_severity);
        let ticket = match durable::enqueue_op(seq, key, &target.route, prio, step.fingerprint, &ev)
        {
            Some(op) => self.shared.journal.submit(vec![op]),
            None => 0,
        };
        tracing::debug!(dedup_key = %key, action = %step.action, route = %target.route, "event queued");
        let turn = self.next_turn(source);
        let job = Job {
            seq,
            store_seq: seq,
            ticket,
            resumed: false,
            action: step.action,
            event: Arc::new(ev),
            target,
            priority: prio,
            fingerprint: step.fingerprint,
            enqueued: now,
            source,
            turn,
        };
        self.job_added(source, seq, now);
        self.keys
            .entry(key.to_owned())
            .or_default()
            .jobs
            .push_back(job);
    }

    /// Replaces the queued job at `at` with `step`'s event of the alert's newer state.
    fn replace_job(
        &mut self,
        key: &str,
        at: usize,
        step: &Step,
        change: &AlertChange,
        pd_severity: &str,
    ) {
        let ev = Arc::new(self.build(key, step.action, change));
        let store_seq = self.next_seq;
        self.next_seq += 1;
        let prio = priority(pd_severity);
        let Some(job) = self.keys.get_mut(key).and_then(|q| q.jobs.get_mut(at)) else {
            return;
        };
        let mut ops = vec![Op::Cancelled { seq: job.store_seq }];
        ops.extend(durable::enqueue_op(
            store_seq,
            key,
            &job.target.route,
            prio,
            step.fingerprint,
            &ev,
        ));
        job.ticket = self.shared.journal.submit(ops);
        job.store_seq = store_seq;
        job.event = ev;
        job.fingerprint = step.fingerprint;
        job.priority = prio;
        job.resumed = false;
        tracing::debug!(dedup_key = %key, "queued event replaced by the alert's newer state");
    }

    /// Takes `key` out of the ready set (its head is about to change).
    fn unready(&mut self, key: &str) {
        let Some(q) = self.keys.get(key) else { return };
        if q.in_flight {
            return;
        }
        if let Some(head) = q.jobs.front()
            && let Some(set) = self.ready.get_mut(&head.target.budget)
        {
            set.remove(&(head.priority, head.turn, head.seq, key.to_owned()));
        }
    }

    fn mark_ready(&mut self, key: &str) {
        let Some(q) = self.keys.get(key) else { return };
        if q.in_flight {
            return;
        }
        if let Some(head) = q.jobs.front() {
            self.ready
                .entry(head.target.budget.clone())
                .or_default()
                .insert((head.priority, head.turn, head.seq, key.to_owned()));
        }
    }

    /// Starts as many deliveries as concurrency and rate limits allow. Returns when the rate
    /// limiter frees the next slot, if something waits for it and no answer will free it first.
    fn dispatch(&mut self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        self.waiting_for_answer = false;
        while self.inflight.len() < self.shared.settings.concurrency {
            let now = Instant::now();
            let mut best: Option<(ReadyEntry, Arc<str>)> = None;
            {
                let mut limiter = self.shared.limiter();
                for (budget, set) in &self.ready {
                    let Some(first) = set.first() else { continue };
                    match limiter.check(budget, now) {
                        Ok(()) => {
                            if best.as_ref().is_none_or(|(b, _)| first < b) {
                                best = Some((first.clone(), budget.clone()));
                            }
                        }
                        Err(w) => {
                            match w {
                                Wait::Until(at) => wake = Some(wake.map_or(at, |x| x.min(at))),
                                Wait::Answer => self.waiting_for_answer = true,
                            }
                            if self.blocked.insert(budget.clone()) {
                                self.shared.metrics.rate_limit_waits.inc();
                                tracing::debug!(budget = %budget, "rate limit of the routing key reached; events wait");
                            }
                        }
                    }
                }
                let Some((entry, budget)) = best.as_ref() else {
                    break;
                };
                // `check` just said there is room.
                let _ = limiter.try_acquire(budget, now);
                self.blocked.remove(budget);
                if let Some(set) = self.ready.get_mut(budget) {
                    set.remove(entry);
                }
            }
            let Some(((_, turn, _, key), _)) = best else {
                break;
            };
            self.clock = self.clock.max(turn);
            self.start(key);
        }
        self.ready.retain(|_, s| !s.is_empty());
        wake
    }

    fn start(&mut self, key: String) {
        let Some(q) = self.keys.get_mut(&key) else {
            return;
        };
        let Some(job) = q.jobs.front() else { return };
        q.in_flight = true;
        // The order of these lines is the order of the sends (the rate-limit benchmark checks
        // that criticals go first from it; arrival order at PagerDuty can differ by whatever
        // overtakes a slow request).
        tracing::debug!(
            dedup_key = %key,
            action = %job.action,
            priority = priority_name(job.priority),
            route = %job.target.route,
            "sending event"
        );
        let shared = self.shared.clone();
        let event = job.event.clone();
        let target = job.target.clone();
        let budget = target.budget.clone();
        let ticket = job.ticket;
        let k = key.clone();
        let handle = self.inflight.spawn(async move {
            shared.journal.durable(ticket).await;
            deliver(shared, k, event, target).await
        });
        self.inflight_keys.insert(handle.id(), (key, budget));
    }

    fn finish(&mut self, done: Done) {
        let Some(q) = self.keys.get_mut(&done.key) else {
            return;
        };
        q.in_flight = false;
        let Some(job) = q.jobs.pop_front() else {
            return;
        };
        let empty = q.jobs.is_empty();
        self.job_removed(job.source, job.seq);
        let m = &self.shared.metrics;
        let action = job.action.as_str();
        match done.outcome {
            Outcome::Accepted(answer) => {
                self.shared.journal.submit(vec![durable::accepted_op(
                    job.store_seq,
                    &done.key,
                    &job.target.route,
                    job.fingerprint,
                    job.action,
                )]);
                m.event(action, "accepted").inc();
                m.duration(action)
                    .observe(job.enqueued.elapsed().as_secs_f64());
                // The status page's 24-hour picture (web::history), before `accepted` below
                // changes what PagerDuty holds: a trigger onto an open incident pages nobody.
                self.shared.status.history().accepted(
                    &done.key,
                    job.action,
                    &self.shared.incidents,
                );
                self.shared.incidents.accepted(
                    &done.key,
                    job.action,
                    &job.target.route,
                    job.fingerprint,
                    empty,
                );
                tracing::info!(
                    dedup_key = %done.key,
                    action,
                    route = %job.target.route,
                    pagerduty_message = answer.message.as_deref().unwrap_or(""),
                    "PagerDuty accepted the event"
                );
                self.shared.status.delivered(Delivered {
                    dedup_key: done.key.clone(),
                    action: job.action,
                    route: job.target.route.to_string(),
                    summary: job.event.summary.to_string(),
                    severity: job.event.severity.to_string(),
                    accepted: true,
                    latency: job.enqueued.elapsed(),
                });
            }
            Outcome::Rejected { status, answer } => {
                m.event(action, "rejected").inc();
                tracing::error!(
                    dedup_key = %done.key,
                    action,
                    route = %job.target.route,
                    status,
                    message = answer.message.as_deref().unwrap_or(""),
                    errors = ?answer.errors,
                    "PagerDuty rejected the event; kept as a dead letter, not retried (check the event fields and the routing key)"
                );
                let dead = DeadLetter {
                    dedup_key: done.key.clone(),
                    action: job.action,
                    route: job.target.route.to_string(),
                    status,
                    message: answer.message.clone(),
                    errors: answer.errors.clone(),
                    time: chrono::Utc::now(),
                };
                let reason = format!(
                    "HTTP {status} from PagerDuty: {}",
                    answer.message.as_deref().unwrap_or("")
                );
                self.shared.journal.submit(vec![durable::dead_letter_op(
                    job.store_seq,
                    &dead,
                    &job.event,
                    &reason,
                )]);
                self.shared.status.dead_letter(dead);
                self.shared.status.delivered(Delivered {
                    dedup_key: done.key.clone(),
                    action: job.action,
                    route: job.target.route.to_string(),
                    summary: job.event.summary.to_string(),
                    severity: job.event.severity.to_string(),
                    accepted: false,
                    latency: job.enqueued.elapsed(),
                });
                self.set_dead_letter_gauge();
            }
        }
        if empty {
            self.forget(&done.key);
        } else {
            self.mark_ready(&done.key);
        }
    }

    /// Once a second: open incidents per route, and the keys [`Incidents`] remembers.
    fn update_incident_gauges(&mut self) {
        let (per_route, total) = self.shared.incidents.counts();
        let m = &self.shared.metrics;
        for r in self.router.targets().into_iter().map(|t| t.route) {
            self.gauged_routes.insert(r);
        }
        for r in per_route.keys() {
            if !self.gauged_routes.contains(r) {
                self.gauged_routes.insert(r.clone());
            }
        }
        for r in &self.gauged_routes {
            let n = per_route.get(r).copied().unwrap_or(0);
            m.open_incidents(r)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.dedup_entries
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        m.silenced_alerts
            .set(i64::try_from(self.shared.incidents.held_count()).unwrap_or(i64::MAX));
    }

    fn update_queue_gauges(&self) {
        let depth = self.pending.len();
        let oldest = self
            .pending
            .values()
            .next()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let m = &self.shared.metrics;
        m.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        m.oldest_age.set(oldest);
        self.shared
            .status
            .set_queue(depth, self.inflight.len(), oldest);
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why an attempt is to be retried.
#[derive(Debug)]
struct RetryLater {
    retry_after: Option<Duration>,
    reason: String,
}

/// Full jitter: a uniformly random delay between zero and the exponential envelope, but never
/// shorter than what `Retry-After` asked for.
pub(crate) fn jittered(envelope: Duration, retry_after: Option<Duration>) -> Duration {
    let ms = u64::try_from(envelope.as_millis()).unwrap_or(u64::MAX);
    let d = Duration::from_millis(rand::rng().random_range(0..=ms));
    match retry_after {
        Some(ra) => d.max(ra),
        None => d,
    }
}

/// Delivers one event: retries until PagerDuty accepts or rejects it.
async fn deliver(shared: Arc<Shared>, key: String, event: Arc<Encoded>, target: Target) -> Done {
    let attempts = AtomicU32::new(0);
    let backoff = ExponentialBuilder::new()
        .with_min_delay(shared.settings.retry_initial_delay)
        .with_max_delay(shared.settings.retry_max_delay)
        .with_factor(2.0)
        .without_max_times();
    let action = event.action.as_str();
    let attempt = || async {
        let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
        // The first attempt's slot was taken when the dispatcher started it.
        if n > 1 {
            shared.acquire(&target.budget).await;
        }
        let body = match target.routing_key.current() {
            Ok(k) => event.to_body(k.expose_secret()),
            Err(e) => {
                shared.answered(&target.budget);
                return Err(RetryLater {
                    retry_after: None,
                    reason: e.to_string(),
                });
            }
        };
        let m = &shared.metrics;
        let answer = shared.sender.post(body).await;
        shared.answered(&target.budget);
        match answer {
            Attempt::Accepted { answer } => {
                m.http("2xx").inc();
                shared
                    .status
                    .key_attempt(&key, event.action, n, "accepted", None);
                Ok(Outcome::Accepted(answer))
            }
            Attempt::Rejected { status, answer } => {
                m.http(super::sender::code_label(status)).inc();
                let err = format!(
                    "HTTP {status}: {} {}",
                    answer.message.as_deref().unwrap_or(""),
                    answer.errors.join("; ")
                );
                shared
                    .status
                    .key_attempt(&key, event.action, n, "rejected", Some(err));
                Ok(Outcome::Rejected { status, answer })
            }
            Attempt::Retry {
                code,
                retry_after,
                reason,
                ..
            } => {
                m.http(code).inc();
                m.event(action, "retried").inc();
                shared
                    .status
                    .key_attempt(&key, event.action, n, "retrying", Some(reason.clone()));
                Err(RetryLater {
                    retry_after,
                    reason,
                })
            }
        }
    };
    let result = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .adjust(|e: &RetryLater, d| d.map(|d| jittered(d, e.retry_after)))
        .notify(|e: &RetryLater, d| {
            let queued = shared.status.queue_depth();
            shared.readiness.set_warning(
                READINESS_WARNING,
                Some(format!(
                    "PagerDuty is not accepting events ({}); {queued} event(s) queued and retrying",
                    e.reason
                )),
            );
            tracing::warn!(dedup_key = %key, action, route = %target.route, reason = %e.reason, retry_in = ?d, "PagerDuty delivery failed; will retry");
        })
        .await;
    let outcome = match result {
        Ok(o) => o,
        // Unreachable with `without_max_times`, but if it happens the event must stay visible.
        Err(e) => Outcome::Rejected {
            status: 0,
            answer: Answer {
                message: Some(format!("gave up retrying: {}", e.reason)),
                ..Default::default()
            },
        },
    };
    if matches!(outcome, Outcome::Accepted(_)) {
        shared.readiness.set_warning(READINESS_WARNING, None);
    }
    Done { key, outcome }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_envelope_and_honours_retry_after() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(4), None);
            assert!(d <= Duration::from_secs(4));
            let d = jittered(Duration::from_secs(1), Some(Duration::from_secs(3)));
            assert!(d >= Duration::from_secs(3));
        }
    }

    #[test]
    fn priority_order() {
        assert!(priority("critical") < priority("warning"));
        assert!(priority("warning") < priority("error"));
        assert_eq!(priority("info"), priority("error"));
    }
}
