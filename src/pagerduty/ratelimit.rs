//! Client-side rate limit per routing key: no 60-second window ever holds more than
//! `pagerduty.rate_limit_per_minute` requests for one key, retries included. A storm then queues
//! here, where critical events can still overtake warnings, instead of burning PagerDuty's 429s.
//!
//! PagerDuty counts *arrivals* per integration. We cannot see an arrival, but it happens between
//! our send and PagerDuty's answer, so a request holds its slot from the moment it is sent until
//! 60 s after its answer (or its failure). Two requests sharing a slot are then at least 60 s apart
//! at PagerDuty whatever the latencies were (a window counted from send times let requests sent
//! 60 s apart arrive less than 60 s apart: benchmark 3 saw 429s at the boundary).
//!
//! Budgets are keyed by [`super::routing::Target::budget`]: routes that share a routing key
//! share one budget; no key value is ever a map key, and rotating a key keeps its window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// PagerDuty's documented window.
pub const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Budget {
    /// Requests sent and not answered yet: they hold a slot with no end known.
    in_flight: usize,
    /// Answer times of the last window, oldest first (answers are recorded as they happen, so
    /// the deque stays sorted).
    answered: VecDeque<Instant>,
}

/// When a budget has room again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// At this instant a slot leaves the window.
    Until(Instant),
    /// Every slot is held by a request in flight: room comes with its answer.
    Answer,
}

/// Slots of the last window, per budget.
#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    budgets: HashMap<Arc<str>, Budget>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_window(per_minute, WINDOW)
    }

    /// `limit` requests per `window` (tests shorten the window).
    pub fn with_window(limit: u32, window: Duration) -> Self {
        Self {
            limit: limit.max(1) as usize,
            window,
            budgets: HashMap::new(),
        }
    }

    fn budget(&mut self, budget: &Arc<str>, now: Instant) -> &mut Budget {
        let window = self.window;
        let b = self.budgets.entry(budget.clone()).or_default();
        while b
            .answered
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            b.answered.pop_front();
        }
        b
    }

    /// Whether a request of `budget` may be sent now, without taking the slot.
    pub fn check(&mut self, budget: &Arc<str>, now: Instant) -> Result<(), Wait> {
        let (limit, window) = (self.limit, self.window);
        let b = self.budget(budget, now);
        if b.in_flight + b.answered.len() < limit {
            Ok(())
        } else {
            Err(match b.answered.front() {
                Some(t) => Wait::Until(*t + window),
                None => Wait::Answer,
            })
        }
    }

    /// Takes a slot of `budget` for a request sent now, or tells when one frees up. Every
    /// taken slot must be given back with [`RateLimiter::answered`].
    pub fn try_acquire(&mut self, budget: &Arc<str>, now: Instant) -> Result<(), Wait> {
        self.check(budget, now)?;
        self.budget(budget, now).in_flight += 1;
        Ok(())
    }

    /// The request that took a slot of `budget` was answered (or failed) at `now`: its slot is
    /// held for one more window from here.
    pub fn answered(&mut self, budget: &Arc<str>, now: Instant) {
        let b = self.budget(budget, now);
        b.in_flight = b.in_flight.saturating_sub(1);
        b.answered.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_a_window_from_the_answers() {
        let mut r = RateLimiter::new(3);
        let (default, storage): (Arc<str>, Arc<str>) = (Arc::from("default"), Arc::from("storage"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.try_acquire(&default, t0).is_ok());
        }
        assert_eq!(
            r.try_acquire(&default, t0),
            Err(Wait::Answer),
            "all three slots are in flight"
        );
        assert!(
            r.try_acquire(&storage, t0).is_ok(),
            "budgets are independent"
        );
        // The answers take 2 s: the slots are held until 60 s after them, not after the sends.
        tokio::time::advance(Duration::from_secs(2)).await;
        let t1 = Instant::now();
        for _ in 0..3 {
            r.answered(&default, t1);
        }
        assert_eq!(r.try_acquire(&default, t1), Err(Wait::Until(t1 + WINDOW)));
        tokio::time::advance(WINDOW - Duration::from_millis(1)).await;
        assert!(
            r.check(&default, Instant::now()).is_err(),
            "60 s after the send, but not after the answer"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(r.try_acquire(&default, Instant::now()).is_ok());
    }
}
