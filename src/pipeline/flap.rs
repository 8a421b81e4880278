//! Flap damping (issue 17 §2): which alerts raise and clear too often, and when the resolve
//! held back for one of them is due.
//!
//! An alert that raises and clears more than `flap.max_transitions` times within
//! `flap.window` is flapping: its incident stays open (no resolve, no re-trigger) until it has
//! stayed cleared for `flap.settle`; then it resolves once. [`Flaps`] is owned by the
//! dispatcher (one task, no lock) and only remembers alerts with recent transitions: a side
//! map keyed by dedup key, so the 24-byte entries of [`super::Incidents`] stay as they are for
//! the alerts that never flap (BENCHMARKS.md §9). A history starts at an alert's first clear
//! (the raise before it counts at the clear's time), holds at most `max_transitions + 1`
//! timestamps, and is forgotten once the alert is cleared and settled, or once its newest
//! transition is older than `flap.window` and it is not flapping.
//!
//! The state is not durable: after a restart it is rebuilt from the changes that arrive. That
//! is safe because the only thing it ever does is hold a resolve back: the poller resolves at
//! its first sync every incident the ledger says is open whose alert is no longer open on
//! OneView, and with an empty history that resolve goes out at once (or, with
//! `max_transitions = 1`, after `flap.settle`). A held resolve is never lost; at worst one
//! more resolve-and-trigger pair reaches PagerDuty after a restart.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{AlertChange, ChangeKind};
use crate::recent::FastMap;

/// `[flap]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlapSettings {
    pub enabled: bool,
    pub max_transitions: u32,
    pub window: Duration,
    pub settle: Duration,
}

impl Default for FlapSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_transitions: 4,
            window: Duration::from_secs(30 * 60),
            settle: Duration::from_secs(10 * 60),
        }
    }
}

/// The recent transitions of one alert.
#[derive(Debug)]
struct History {
    /// When the alert raised or cleared, oldest first.
    times: VecDeque<Instant>,
    /// Whether the last transition was a raise.
    open: bool,
    flapping: bool,
    /// While flapping and cleared: when the held resolve is due, and the clear it resolves.
    /// Boxed: most histories never hold one, and the change is ~100 bytes.
    held: Option<Box<(Instant, AlertChange)>>,
}

/// What the dispatcher learns from one change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// The alert is flapping (after this change).
    pub flapping: bool,
    /// This change is the one that made it flapping.
    pub started: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct Flaps {
    settings: FlapSettings,
    map: FastMap<Box<str>, History>,
    /// Held resolves by due time: the dispatcher's next wake is the first.
    due: BTreeSet<(Instant, Box<str>)>,
    flapping: usize,
    next_sweep: Option<Instant>,
}

impl Flaps {
    pub fn new(settings: FlapSettings) -> Self {
        Self {
            settings,
            map: FastMap::default(),
            due: BTreeSet::new(),
            flapping: 0,
            next_sweep: None,
        }
    }

    pub fn settings(&self) -> FlapSettings {
        self.settings
    }

    /// Records `change` of `key` (a raise, an update or a clear) at `now`.
    pub fn observe(&mut self, key: &str, change: &AlertChange, now: Instant) -> Seen {
        let steady = Seen {
            flapping: false,
            started: false,
        };
        if !self.settings.enabled {
            return steady;
        }
        let open = change.kind != ChangeKind::Cleared;
        let max = self.settings.max_transitions as usize;
        let window = self.settings.window;
        let h = match self.map.get_mut(key) {
            Some(h) if h.open == open => {
                // An update, or a clear seen again: no transition. A held resolve keeps its due
                // time (the alert has been cleared since then), with the newer clear.
                if !open && let Some(held) = h.held.as_mut() {
                    held.1 = change.clone();
                }
                return Seen {
                    flapping: h.flapping,
                    started: false,
                };
            }
            Some(h) => {
                h.times.push_back(now);
                h.open = open;
                h
            }
            // An alert that never cleared has no history: most never do.
            None if open => return steady,
            None => self.map.entry(Box::from(key)).or_insert(History {
                times: VecDeque::from([now, now]),
                open,
                flapping: false,
                held: None,
            }),
        };
        while h
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            h.times.pop_front();
        }
        while h.times.len() > max + 1 {
            h.times.pop_front();
        }
        let started = !h.flapping && h.times.len() > max;
        if started {
            h.flapping = true;
            self.flapping += 1;
        }
        if let Some(held) = h.held.take() {
            self.due.remove(&(held.0, Box::from(key)));
        }
        if h.flapping && !open {
            let at = now + self.settings.settle;
            h.held = Some(Box::new((at, change.clone())));
            self.due.insert((at, Box::from(key)));
        }
        Seen {
            flapping: h.flapping,
            started,
        }
    }

    pub fn is_flapping(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|h| h.flapping)
    }

    /// Whether `key`'s resolve is held until it settles.
    pub fn holds_resolve(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|h| h.held.is_some())
    }

    /// When the next held resolve is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(at, _)| *at)
    }

    /// The clears whose alerts have settled by `now`: their histories are forgotten, so the
    /// dispatcher's evaluation of each sends its resolve.
    pub fn take_settled(&mut self, now: Instant) -> Vec<(String, AlertChange)> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = self.due.pop_first() else {
                break;
            };
            if let Some(h) = self.map.remove(&key) {
                if h.flapping {
                    self.flapping -= 1;
                }
                if let Some(held) = h.held {
                    out.push((key.into_string(), held.1));
                }
            }
        }
        crate::recent::shrink_if_sparse(&mut self.map);
        out
    }

    /// Forgets histories that are not flapping and whose newest transition left the window.
    /// Cheap to call often: it walks the map at most once per `window / 4`.
    pub fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_some_and(|at| now < at) {
            return;
        }
        self.next_sweep = Some(now + self.settings.window / 4);
        let window = self.settings.window;
        self.map.retain(|_, h| {
            h.flapping
                || h.times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) <= window)
        });
        crate::recent::shrink_if_sparse(&mut self.map);
    }

    /// Alerts flapping now.
    pub fn flapping_count(&self) -> usize {
        self.flapping
    }

    /// Alerts with a history (flapping or not).
    pub fn tracked(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alert, AlertKey, AlertState, Appliance, Severity};
    use std::sync::Arc;

    fn change(kind: ChangeKind) -> AlertChange {
        let alert = Alert {
            uri: "/rest/alerts/1".into(),
            severity: if kind == ChangeKind::Cleared {
                Severity::Ok
            } else {
                Severity::Critical
            },
            alert_state: if kind == ChangeKind::Cleared {
                AlertState::Cleared
            } else {
                AlertState::Active
            },
            ..Alert::default()
        };
        AlertChange {
            kind,
            key: AlertKey {
                appliance: Arc::from("ov1"),
                uri: Arc::from("/rest/alerts/1"),
            },
            appliance: Appliance {
                id: Arc::from("ov1"),
                ui_url: Arc::from("https://ov1"),
            },
            alert: Arc::new(alert),
        }
    }

    fn settings(max: u32) -> FlapSettings {
        FlapSettings {
            enabled: true,
            max_transitions: max,
            window: Duration::from_secs(30 * 60),
            settle: Duration::from_secs(10 * 60),
        }
    }

    const K: &str = "oneview:ov1:/rest/alerts/1";

    #[tokio::test(start_paused = true)]
    async fn flapping_after_more_than_max_transitions_in_the_window() {
        let mut f = Flaps::new(settings(4));
        let raise = change(ChangeKind::Raised);
        let clear = change(ChangeKind::Cleared);
        assert!(!f.observe(K, &raise, Instant::now()).flapping);
        assert_eq!(f.tracked(), 0, "a raise alone leaves no history");
        // Transitions: raise(1) clear(2) raise(3) clear(4) raise(5 > 4).
        for kind in [&clear, &raise, &clear] {
            tokio::time::advance(Duration::from_secs(60)).await;
            assert!(!f.observe(K, kind, Instant::now()).flapping);
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        let s = f.observe(K, &raise, Instant::now());
        assert_eq!(
            s,
            Seen {
                flapping: true,
                started: true
            }
        );
        assert_eq!(f.flapping_count(), 1);
        let upd = change(ChangeKind::Updated);
        assert_eq!(
            f.observe(K, &upd, Instant::now()),
            Seen {
                flapping: true,
                started: false
            },
            "an update is no transition"
        );
        assert!(!f.holds_resolve(K));
        f.observe(K, &clear, Instant::now());
        assert!(f.holds_resolve(K));
        assert_eq!(
            f.next_due(),
            Some(Instant::now() + Duration::from_secs(600))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_transitions_never_flap_and_are_forgotten() {
        let mut f = Flaps::new(settings(4));
        let raise = change(ChangeKind::Raised);
        let clear = change(ChangeKind::Cleared);
        // One transition every 11 minutes: at most 3 in any 30 minutes.
        for _ in 0..10 {
            assert!(!f.observe(K, &raise, Instant::now()).flapping);
            tokio::time::advance(Duration::from_secs(11 * 60)).await;
            assert!(!f.observe(K, &clear, Instant::now()).flapping);
            tokio::time::advance(Duration::from_secs(11 * 60)).await;
        }
        assert_eq!(f.tracked(), 1);
        tokio::time::advance(Duration::from_secs(31 * 60)).await;
        f.sweep(Instant::now());
        assert_eq!(f.tracked(), 0, "out of the window and not flapping");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_resolve_is_due_once_it_stayed_cleared_for_settle() {
        let mut f = Flaps::new(settings(4));
        let raise = change(ChangeKind::Raised);
        let clear = change(ChangeKind::Cleared);
        f.observe(K, &raise, Instant::now());
        for _ in 0..10 {
            f.observe(K, &clear, Instant::now());
            tokio::time::advance(Duration::from_secs(30)).await;
            f.observe(K, &raise, Instant::now());
            tokio::time::advance(Duration::from_secs(30)).await;
        }
        f.observe(K, &clear, Instant::now());
        assert!(f.holds_resolve(K));
        // A clear seen again (a full sync) keeps the due time.
        tokio::time::advance(Duration::from_secs(300)).await;
        f.observe(K, &clear, Instant::now());
        tokio::time::advance(Duration::from_secs(299)).await;
        assert!(f.take_settled(Instant::now()).is_empty());
        // A raise before the due time takes the held resolve back.
        f.observe(K, &raise, Instant::now());
        assert!(!f.holds_resolve(K));
        assert_eq!(f.next_due(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        f.observe(K, &clear, Instant::now());
        let due = f.next_due();
        assert_eq!(due, Some(Instant::now() + Duration::from_secs(600)));
        tokio::time::advance(Duration::from_secs(600)).await;
        let settled = f.take_settled(Instant::now());
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].0, K);
        assert_eq!(settled[0].1.kind, ChangeKind::Cleared);
        assert_eq!(f.tracked(), 0, "cleared and settled: forgotten");
        assert_eq!(f.flapping_count(), 0);
        assert!(f.take_settled(Instant::now()).is_empty(), "once");
    }

    #[test]
    fn a_history_is_small() {
        // Per alert that cleared within flap.window: the map slot (key and history) plus the
        // ring's few timestamps on the heap.
        assert!(std::mem::size_of::<History>() <= 48);
        assert!(std::mem::size_of::<(Box<str>, History)>() <= 64);
    }

    #[tokio::test(start_paused = true)]
    async fn off_switch() {
        let mut f = Flaps::new(FlapSettings {
            enabled: false,
            ..settings(1)
        });
        for kind in [ChangeKind::Raised, ChangeKind::Cleared].repeat(10) {
            assert!(!f.observe(K, &change(kind), Instant::now()).flapping);
        }
        assert_eq!(f.tracked(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn max_one_damps_the_first_clear() {
        let mut f = Flaps::new(settings(1));
        f.observe(K, &change(ChangeKind::Raised), Instant::now());
        let s = f.observe(K, &change(ChangeKind::Cleared), Instant::now());
        assert!(s.flapping && s.started);
        assert!(f.holds_resolve(K));
    }
}
