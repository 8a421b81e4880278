//! A snapshot of delivery for the API and the status page: queue depth, oldest queued event,
//! dead letters, and the last delivery attempt per key.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::event::Action;

/// Dead letters kept for display; older ones are only counted.
pub const DEAD_LETTERS_KEPT: usize = 1000;
/// Keys whose last attempt is kept for display: the last 5,000 to 10,000 keys attempted.
pub const KEYS_KEPT: usize = 10_000;

/// An event PagerDuty rejected (400): never retried.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub dedup_key: String,
    pub action: Action,
    pub route: String,
    /// HTTP status PagerDuty answered.
    pub status: u16,
    pub message: Option<String>,
    /// PagerDuty's `errors` array.
    pub errors: Vec<String>,
    pub time: DateTime<Utc>,
}

/// The last delivery attempt for one key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyStatus {
    pub dedup_key: String,
    pub last_action: Action,
    /// `accepted`, `rejected` or `retrying`.
    pub outcome: &'static str,
    /// Attempts of the last event so far.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub updated: DateTime<Utc>,
}

/// One event PagerDuty answered for good (accepted, or rejected into the dead letters), as
/// broadcast by [`DeliveryStatus::subscribe`] (the demo's live line, a future event stream).
#[derive(Debug, Clone, Serialize)]
pub struct Delivered {
    pub dedup_key: String,
    pub action: Action,
    pub route: String,
    pub summary: String,
    /// PagerDuty severity sent.
    pub severity: String,
    pub accepted: bool,
    /// From queueing to PagerDuty's answer.
    #[serde(with = "humantime_serde")]
    pub latency: std::time::Duration,
}

/// What [`DeliveryStatus::snapshot`] returns.
#[derive(Debug, Clone, Serialize)]
pub struct StatusSnapshot {
    pub queue_depth: usize,
    pub in_flight: usize,
    pub oldest_queued_age_seconds: f64,
    pub dead_letters_total: u64,
    /// The most recent dead letters, newest last.
    pub dead_letters: Vec<DeadLetter>,
    pub keys: Vec<KeyStatus>,
}

#[derive(Default)]
struct Inner {
    in_flight: usize,
    oldest_age: f64,
    dead_letters: VecDeque<DeadLetter>,
    dead_letters_total: u64,
}

/// Shared delivery status, updated by the delivery task.
pub struct DeliveryStatus {
    /// Slow subscribers lose the oldest notifications, never slow delivery down.
    events: tokio::sync::broadcast::Sender<Delivered>,
    depth: AtomicUsize,
    inner: Mutex<Inner>,
    keys: crate::recent::Recent<KeyStatus>,
    /// The status page's 24-hour picture ([`crate::web::history`]).
    history: crate::web::history::History,
}

impl std::fmt::Debug for DeliveryStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryStatus")
            .field("queue_depth", &self.queue_depth())
            .finish()
    }
}

impl Default for DeliveryStatus {
    fn default() -> Self {
        Self::new()
    }
}

impl DeliveryStatus {
    pub fn new() -> Self {
        Self {
            events: tokio::sync::broadcast::channel(1024).0,
            depth: AtomicUsize::new(0),
            inner: Mutex::new(Inner::default()),
            keys: crate::recent::Recent::new(KEYS_KEPT),
            history: crate::web::history::History::default(),
        }
    }

    /// With a 24-hour picture of these appliances (the pipeline's intakes).
    pub fn with_history(appliances: impl IntoIterator<Item = std::sync::Arc<str>>) -> Self {
        Self {
            history: crate::web::history::History::new(appliances),
            ..Self::new()
        }
    }

    /// The status page's 24-hour picture of pages and resolves.
    pub fn history(&self) -> &crate::web::history::History {
        &self.history
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data; a panic elsewhere cannot leave it inconsistent in a harmful way.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn queue_depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    pub(crate) fn set_queue(&self, depth: usize, in_flight: usize, oldest_age: f64) {
        self.depth.store(depth, Ordering::Relaxed);
        let mut g = self.lock();
        g.in_flight = in_flight;
        g.oldest_age = oldest_age;
    }

    /// A stream of final answers, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Delivered> {
        self.events.subscribe()
    }

    pub(crate) fn delivered(&self, d: Delivered) {
        // No subscriber is fine.
        let _ = self.events.send(d);
    }

    pub(crate) fn dead_letter(&self, d: DeadLetter) {
        let mut g = self.lock();
        g.dead_letters_total += 1;
        g.dead_letters.push_back(d);
        while g.dead_letters.len() > DEAD_LETTERS_KEPT {
            g.dead_letters.pop_front();
        }
    }

    /// Removes the kept dead letters of `key` (before the API re-sends its alert); returns how
    /// many there were.
    pub fn remove_dead_letters(&self, key: &str) -> usize {
        let mut g = self.lock();
        let before = g.dead_letters.len();
        g.dead_letters.retain(|d| d.dedup_key != key);
        before - g.dead_letters.len()
    }

    /// Dead letters kept (what the `bridge_pagerduty_dead_letters` gauge shows).
    pub fn dead_letter_count(&self) -> usize {
        self.lock().dead_letters.len()
    }

    pub(crate) fn key_attempt(
        &self,
        key: &str,
        action: Action,
        attempts: u32,
        outcome: &'static str,
        last_error: Option<String>,
    ) {
        self.keys.insert(
            key,
            KeyStatus {
                dedup_key: key.to_owned(),
                last_action: action,
                outcome,
                attempts,
                last_error,
                updated: Utc::now(),
            },
        );
    }

    /// The status of one key, if it is still kept.
    pub fn key(&self, key: &str) -> Option<KeyStatus> {
        self.keys.get(key)
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let mut keys: Vec<KeyStatus> = self.keys.values();
        keys.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        let g = self.lock();
        StatusSnapshot {
            queue_depth: self.queue_depth(),
            in_flight: g.in_flight,
            oldest_queued_age_seconds: g.oldest_age,
            dead_letters_total: g.dead_letters_total,
            dead_letters: g.dead_letters.iter().cloned().collect(),
            keys,
        }
    }
}
