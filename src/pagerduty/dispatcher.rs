//! The delivery queue: turns [`AlertChange`]s into events, decides what PagerDuty still needs
//! to hear, and sends it.
//!
//! One task owns all queue state (no locks on the hot path):
//!
//! - **Intake** pulls from the bounded channel only while fewer than `pagerduty.queue_capacity`
//!   events are pending, so a full queue makes the poller's `send().await` wait (backpressure).
//! - **Per-key order**: each `dedup_key` has its own FIFO; only its head is ever in flight, so a
//!   resolve can never overtake its trigger. Different keys run concurrently, up to
//!   `pagerduty.concurrency`, over one pooled keep-alive client.
//! - **Priority**: among keys whose head is ready, critical goes before warning before the
//!   rest, then oldest first.
//! - **Rate limit**: a key is picked only when its route's window has room; retries take a slot
//!   too (see [`super::ratelimit`]).
//! - **Cancellation**: a clear for an alert whose trigger is still queued (not in flight) drops
//!   the queued events of that key; a resolve is still queued when PagerDuty is known to have
//!   heard a trigger (dedup cache, or the trigger in flight right now).
//!
//! ## What a change becomes
//! - `Raised` / `Updated`: a trigger, unless the last thing PagerDuty heard or will hear for the
//!   key (queue tail, else dedup cache) is a trigger with the same fingerprint (PagerDuty
//!   severity + description); in that case the cache entry is refreshed and nothing is sent.
//!   A trigger still waiting in the queue is replaced by the newer state rather than followed
//!   by a second one, so an alert that changes during an outage is sent once, as it is now.
//! - `Cleared`: a resolve, unless a resolve is already the last thing queued or heard. A key the
//!   cache does not know gets a resolve too: after a restart (empty cache) or TTL expiry we cannot
//!   tell whether PagerDuty has an open incident, and a resolve for an unknown key is harmless
//!   (PagerDuty answers 202 and drops it), whereas a missing one leaves an incident open forever.
//!   The one exception is the cancellation above: when the trigger of a key the cache does not
//!   know is still queued, nothing went out for it from this process, so nothing is sent. The
//!   trade-off: an alert that was open before a restart, re-raised by the first resync and
//!   cleared while that trigger still waits in a long queue, keeps its incident open (someone
//!   resolves it by hand); in exchange a storm of alerts that come and go never pages anyone.
//!
//! ## Durability
//! Every queued event is written to the state store's outbox ([`crate::state::Journal`], group
//! commit) and is sent only once that write is durable; PagerDuty's 202 removes it and records
//! the ledger entry in one op, a 400 moves it to the dead letters, a cancellation drops it. At
//! startup [`Dispatcher::resume`] queues the outbox again (per-key order is the seq order) before
//! the first change is read, and the dedup cache is seeded from the ledger. A resumed trigger
//! may have been accepted just before the crash, so cancelling it still sends the resolve.
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
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::{AlertChange, ChangeKind};
use crate::readiness::Readiness;

use super::dedup::{DedupCache, Heard};
use super::event::{self, Action, Encoded, EventContext};
use super::ratelimit::RateLimiter;
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
}

/// What the sending tasks share.
pub(crate) struct Shared {
    pub sender: Sender,
    pub metrics: Metrics,
    pub limiter: Mutex<RateLimiter>,
    pub status: Arc<DeliveryStatus>,
    pub readiness: Arc<Readiness>,
    pub settings: Settings,
    pub journal: Journal,
}

impl Shared {
    fn limiter(&self) -> std::sync::MutexGuard<'_, RateLimiter> {
        // The limiter is a plain map of timestamps; a panic elsewhere cannot corrupt it.
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a rate-limit slot of `route` (used by retries).
    async fn acquire(&self, route: &str) {
        let mut counted = false;
        loop {
            let r = self.limiter().try_acquire(route, Instant::now());
            match r {
                Ok(()) => return,
                Err(at) => {
                    if !counted {
                        self.metrics.rate_limit_waits.inc();
                        counted = true;
                    }
                    tokio::time::sleep_until(at).await;
                }
            }
        }
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
}

#[derive(Default)]
struct KeyQueue {
    jobs: VecDeque<Job>,
    /// The head of `jobs` is being delivered.
    in_flight: bool,
}

/// `(priority, seq, dedup_key)`: the order in which ready keys are picked.
type ReadyEntry = (u8, u64, String);

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
    cache: DedupCache,
    router: Router,
    ctx: EventContext,
    keys: HashMap<String, KeyQueue>,
    /// Ready keys per route, so a rate-limited route does not hide another route's work.
    ready: HashMap<Arc<str>, BTreeSet<ReadyEntry>>,
    /// Enqueue time of every pending job by sequence number: depth and oldest age.
    pending: BTreeMap<u64, Instant>,
    /// Routes currently waiting for the rate limiter (to count each wait once).
    blocked: HashSet<Arc<str>>,
    inflight: JoinSet<Done>,
    inflight_keys: HashMap<tokio::task::Id, String>,
    next_seq: u64,
}

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

impl Dispatcher {
    pub(crate) fn new(
        shared: Arc<Shared>,
        cache: DedupCache,
        router: Router,
        ctx: EventContext,
    ) -> Self {
        Self {
            shared,
            cache,
            router,
            ctx,
            keys: HashMap::new(),
            ready: HashMap::new(),
            pending: BTreeMap::new(),
            blocked: HashSet::new(),
            inflight: JoinSet::new(),
            inflight_keys: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Drops an idle key, and the capacity a storm of keys left behind.
    fn forget(&mut self, key: &str) {
        self.keys.remove(key);
        crate::recent::shrink_if_sparse(&mut self.keys);
    }

    /// Runs until `work` is cancelled and everything queued is delivered (or the caller drops
    /// this future at its shutdown timeout).
    pub(crate) async fn run(
        mut self,
        mut rx: mpsc::Receiver<AlertChange>,
        work: CancellationToken,
    ) {
        let mut draining = false;
        let mut rx_done = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.dispatch();
            self.update_queue_gauges();
            if rx_done && self.pending.is_empty() {
                break;
            }
            let room = self.pending.len() < self.shared.settings.capacity;
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
                            if let Some(key) = self.inflight_keys.remove(&e.id()) {
                                tracing::error!(dedup_key = %key, error = %e, "PagerDuty delivery task failed; retrying the event");
                                if let Some(q) = self.keys.get_mut(&key) {
                                    q.in_flight = false;
                                }
                                self.mark_ready(&key);
                            }
                        }
                    }
                }
                msg = rx.recv(), if room && !rx_done => {
                    match msg {
                        Some(change) => self.intake(change),
                        None => rx_done = true,
                    }
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {}
                _ = work.cancelled(), if !draining => {
                    draining = true;
                    rx.close();
                    if !self.pending.is_empty() {
                        self.shared.readiness.set_warning(READINESS_WARNING, Some(format!(
                            "shutting down: draining {} queued PagerDuty event(s)", self.pending.len())));
                        tracing::info!(queued = self.pending.len(), "shutdown: delivering the queued PagerDuty events until server.shutdown_timeout");
                    }
                }
                _ = tick.tick() => self.update_cache_gauge(),
            }
        }
        self.update_queue_gauges();
        self.update_cache_gauge();
        // Every op was submitted; make sure the last ones (the final 202s) are on disk.
        self.shared.journal.flush().await;
    }

    /// Restores what the state store remembers, before the first change is read: the ledger
    /// seeds the dedup cache (an unchanged open alert is not triggered again), stored dead
    /// letters reappear in the status, and the outbox is queued again in its original order.
    pub(crate) fn resume(&mut self, snap: Snapshot) {
        for (key, e) in &snap.ledger {
            if let Some(fingerprint) = durable::parse_fingerprint(&e.fingerprint) {
                self.cache.put(
                    key,
                    Heard {
                        action: durable::from_state(e.action),
                        fingerprint,
                    },
                );
            }
        }
        for d in snap.dead_letters.values() {
            self.shared
                .status
                .dead_letter(durable::dead_letter_status(d));
        }
        self.shared
            .metrics
            .dead_letters
            .set(i64::try_from(self.shared.status.dead_letter_count()).unwrap_or(i64::MAX));
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
            let target = self.router.by_name(&stored.route).clone();
            let now = Instant::now();
            let seq = self.next_seq.max(entry.seq);
            self.next_seq = seq + 1;
            let job = Job {
                seq,
                store_seq: entry.seq,
                ticket: 0,
                resumed: true,
                action: durable::from_state(entry.action),
                event: Arc::new(Encoded::new(&stored.event)),
                target,
                priority: entry.priority,
                fingerprint: durable::parse_fingerprint(&entry.fingerprint).unwrap_or(0),
                enqueued: now,
            };
            self.pending.insert(seq, now);
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
    }

    /// Decides what PagerDuty must hear about one change, and queues it.
    fn intake(&mut self, change: AlertChange) {
        let alert = &change.alert;
        let key = event::dedup_key(&change.key.appliance, &change.key.uri);
        let pd_severity = self.ctx.pd_severity(alert.severity.as_str());
        let fp = event::fingerprint(&pd_severity, alert);
        match change.kind {
            ChangeKind::Raised | ChangeKind::Updated => {
                let tail = self
                    .keys
                    .get(&key)
                    .and_then(|q| q.jobs.back())
                    .map(|j| (j.action, j.fingerprint));
                match tail {
                    Some((Action::Trigger, f)) if f == fp => {
                        tracing::debug!(dedup_key = %key, "unchanged alert already queued; not queued again");
                        return;
                    }
                    Some((Action::Trigger, _)) if self.tail_is_queued(&key) => {
                        // A trigger that has not gone out yet: send the newer state instead.
                        self.replace_tail(&key, &change, &pd_severity, fp);
                        return;
                    }
                    Some(_) => {}
                    None => {
                        if let Some(h) = self.cache.get(&key) {
                            if h.action == Action::Trigger && h.fingerprint == fp {
                                // Still open and unchanged: refresh the TTL, send nothing.
                                self.cache.put(&key, h);
                                tracing::debug!(dedup_key = %key, "PagerDuty already has this alert; not re-sent");
                                return;
                            }
                        }
                    }
                }
                self.enqueue(key, Action::Trigger, &change, &pd_severity, fp);
            }
            ChangeKind::Cleared => {
                let (tail, in_flight) = match self.keys.get(&key) {
                    Some(q) => (q.jobs.back().map(|j| j.action), q.in_flight),
                    None => (None, false),
                };
                let only_in_flight =
                    in_flight && self.keys.get(&key).is_some_and(|q| q.jobs.len() == 1);
                match tail {
                    Some(Action::Resolve) => {
                        tracing::debug!(dedup_key = %key, "resolve already queued");
                    }
                    Some(_) if !only_in_flight => {
                        // A trigger still waits in the queue: drop what has not gone out.
                        let heard_trigger = self.cancel_queued(&key);
                        if heard_trigger {
                            self.enqueue(key, Action::Resolve, &change, &pd_severity, fp);
                        } else {
                            self.shared.metrics.cancelled.inc();
                            tracing::info!(dedup_key = %key, "alert cleared before its trigger was sent; nothing sent for it");
                        }
                    }
                    Some(_) => {
                        self.enqueue(key, Action::Resolve, &change, &pd_severity, fp);
                    }
                    None => match self.cache.get(&key) {
                        Some(h) if h.action == Action::Resolve => {
                            tracing::debug!(dedup_key = %key, "PagerDuty already resolved this alert");
                        }
                        _ => self.enqueue(key, Action::Resolve, &change, &pd_severity, fp),
                    },
                }
            }
        }
    }

    /// Whether the last event of `key` waits in the queue (is not the one in flight).
    fn tail_is_queued(&self, key: &str) -> bool {
        self.keys
            .get(key)
            .is_some_and(|q| q.jobs.len() > usize::from(q.in_flight))
    }

    /// Replaces the queued trigger at the tail of `key` with the alert's newer state, keeping
    /// its place in the queue (and its age).
    fn replace_tail(&mut self, key: &str, change: &AlertChange, pd_severity: &str, fp: u64) {
        let target = self.router.route(&change.alert).clone();
        let ev = Arc::new(Encoded::new(&event::build(
            Action::Trigger,
            &change.alert,
            &change.appliance,
            &self.ctx,
        )));
        let Some(q) = self.keys.get_mut(key) else {
            return;
        };
        let is_ready_head = q.jobs.len() == 1 && !q.in_flight;
        let Some(job) = q.jobs.back_mut() else { return };
        if is_ready_head {
            if let Some(set) = self.ready.get_mut(&job.target.route) {
                set.remove(&(job.priority, job.seq, key.to_owned()));
            }
        }
        let store_seq = self.next_seq;
        self.next_seq += 1;
        let mut ops = vec![Op::Cancelled { seq: job.store_seq }];
        ops.extend(durable::enqueue_op(
            store_seq,
            key,
            &target.route,
            priority(pd_severity),
            fp,
            &ev,
        ));
        job.ticket = self.shared.journal.submit(ops);
        job.store_seq = store_seq;
        job.event = ev;
        job.fingerprint = fp;
        job.priority = priority(pd_severity);
        job.target = target;
        tracing::debug!(dedup_key = %key, "queued trigger replaced by the alert's newer state");
        if is_ready_head {
            self.mark_ready(key);
        }
    }

    /// Drops the queued (not in flight) events of `key`. Returns whether PagerDuty has heard,
    /// or is hearing right now, a trigger for it.
    fn cancel_queued(&mut self, key: &str) -> bool {
        let Some(q) = self.keys.get_mut(key) else {
            return false;
        };
        let keep = usize::from(q.in_flight);
        let dropped: Vec<Job> = q.jobs.drain(keep..).collect();
        let in_flight_action = q.jobs.front().map(|j| j.action);
        if let (Some(first), false) = (dropped.first(), q.in_flight) {
            if let Some(set) = self.ready.get_mut(&first.target.route) {
                set.remove(&(first.priority, first.seq, key.to_owned()));
            }
        }
        let maybe_heard = dropped
            .iter()
            .any(|j| j.resumed && j.action == Action::Trigger);
        let mut ops = Vec::with_capacity(dropped.len());
        for j in &dropped {
            self.pending.remove(&j.seq);
            ops.push(Op::Cancelled { seq: j.store_seq });
        }
        self.shared.journal.submit(ops);
        if q.jobs.is_empty() {
            self.forget(key);
        }
        maybe_heard
            || match in_flight_action {
                Some(a) => a == Action::Trigger,
                None => self
                    .cache
                    .get(key)
                    .is_some_and(|h| h.action == Action::Trigger),
            }
    }

    fn enqueue(
        &mut self,
        key: String,
        action: Action,
        change: &AlertChange,
        pd_severity: &str,
        fp: u64,
    ) {
        let target = self.router.route(&change.alert).clone();
        let ev = Encoded::new(&event::build(
            action,
            &change.alert,
            &change.appliance,
            &self.ctx,
        ));
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = Instant::now();
        let ticket =
            match durable::enqueue_op(seq, &key, &target.route, priority(pd_severity), fp, &ev) {
                Some(op) => self.shared.journal.submit(vec![op]),
                None => 0,
            };
        let job = Job {
            seq,
            store_seq: seq,
            ticket,
            resumed: false,
            action,
            event: Arc::new(ev),
            target,
            priority: priority(pd_severity),
            fingerprint: fp,
            enqueued: now,
        };
        tracing::debug!(dedup_key = %key, action = %action, route = %job.target.route, "event queued");
        self.pending.insert(seq, now);
        let q = self.keys.entry(key.clone()).or_default();
        q.jobs.push_back(job);
        if q.jobs.len() == 1 && !q.in_flight {
            self.mark_ready(&key);
        }
    }

    fn mark_ready(&mut self, key: &str) {
        if let Some(head) = self.keys.get(key).and_then(|q| q.jobs.front()) {
            self.ready
                .entry(head.target.route.clone())
                .or_default()
                .insert((head.priority, head.seq, key.to_owned()));
        }
    }

    /// Starts as many deliveries as concurrency and rate limits allow. Returns when the rate
    /// limiter frees the next slot, if something waits for it.
    fn dispatch(&mut self) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        while self.inflight.len() < self.shared.settings.concurrency {
            let now = Instant::now();
            let mut best: Option<(ReadyEntry, Arc<str>)> = None;
            {
                let mut limiter = self.shared.limiter();
                for (route, set) in &self.ready {
                    let Some(first) = set.first() else { continue };
                    match limiter.check(route, now) {
                        Ok(()) => {
                            if best.as_ref().is_none_or(|(b, _)| first < b) {
                                best = Some((first.clone(), route.clone()));
                            }
                        }
                        Err(at) => {
                            wake = Some(wake.map_or(at, |w| w.min(at)));
                            if self.blocked.insert(route.clone()) {
                                self.shared.metrics.rate_limit_waits.inc();
                                tracing::debug!(route = %route, "rate limit reached; events wait");
                            }
                        }
                    }
                }
                let Some((entry, route)) = best.as_ref() else {
                    break;
                };
                // `check` just said there is room.
                let _ = limiter.try_acquire(route, now);
                self.blocked.remove(route);
                if let Some(set) = self.ready.get_mut(route) {
                    set.remove(entry);
                }
            }
            let Some(((_, _, key), _)) = best else { break };
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
        let ticket = job.ticket;
        let k = key.clone();
        let handle = self.inflight.spawn(async move {
            shared.journal.durable(ticket).await;
            deliver(shared, k, event, target).await
        });
        self.inflight_keys.insert(handle.id(), key);
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
        self.pending.remove(&job.seq);
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
                self.cache.put(
                    &done.key,
                    Heard {
                        action: job.action,
                        fingerprint: job.fingerprint,
                    },
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
                self.shared.journal.submit(vec![durable::dead_letter_op(
                    job.store_seq,
                    &dead,
                    &job.event,
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
                m.dead_letters
                    .set(i64::try_from(self.shared.status.dead_letter_count()).unwrap_or(i64::MAX));
            }
        }
        if empty {
            self.forget(&done.key);
        } else {
            self.mark_ready(&done.key);
        }
    }

    /// Runs once a second (a due sweep of the cache is O(entries)).
    fn update_cache_gauge(&mut self) {
        self.shared
            .metrics
            .dedup_entries
            .set(i64::try_from(self.cache.len()).unwrap_or(i64::MAX));
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
fn jittered(envelope: Duration, retry_after: Option<Duration>) -> Duration {
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
        if n > 1 {
            shared.acquire(&target.route).await;
        }
        let body = match target.routing_key.current() {
            Ok(k) => event.to_body(k.expose_secret()),
            Err(e) => {
                return Err(RetryLater {
                    retry_after: None,
                    reason: e.to_string(),
                });
            }
        };
        let m = &shared.metrics;
        match shared.sender.post(body).await {
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
