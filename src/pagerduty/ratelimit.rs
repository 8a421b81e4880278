//! Client-side rate limit per route (one routing key each): a sliding 60-second window, so that
//! no minute ever holds more than `pagerduty.rate_limit_per_minute` requests for one key, retries
//! included. A storm then queues here, where critical events can still overtake warnings,
//! instead of burning PagerDuty's 429s.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(60);

/// Request times of the last minute, per route.
#[derive(Debug)]
pub struct RateLimiter {
    limit: usize,
    window: Duration,
    sent: HashMap<String, VecDeque<Instant>>,
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
            sent: HashMap::new(),
        }
    }

    fn window(&mut self, route: &str, now: Instant) -> &mut VecDeque<Instant> {
        let window = self.window;
        let w = self.sent.entry(route.to_owned()).or_default();
        while w.front().is_some_and(|t| now.duration_since(*t) >= window) {
            w.pop_front();
        }
        w
    }

    /// Takes a slot for `route` now, or tells when one frees up.
    pub fn try_acquire(&mut self, route: &str, now: Instant) -> Result<(), Instant> {
        let (limit, window) = (self.limit, self.window);
        let w = self.window(route, now);
        if w.len() < limit {
            w.push_back(now);
            Ok(())
        } else {
            // The window is full, so it has a front.
            Err(w.front().map(|t| *t + window).unwrap_or(now + window))
        }
    }

    /// Whether a slot is free for `route` now, without taking it.
    pub fn check(&mut self, route: &str, now: Instant) -> Result<(), Instant> {
        let (limit, window) = (self.limit, self.window);
        let w = self.window(route, now);
        if w.len() < limit {
            Ok(())
        } else {
            Err(w.front().map(|t| *t + window).unwrap_or(now + window))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_a_minute() {
        let mut r = RateLimiter::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.try_acquire("default", t0).is_ok());
        }
        let next = r.try_acquire("default", t0).unwrap_err();
        assert_eq!(next, t0 + WINDOW);
        assert!(
            r.try_acquire("storage", t0).is_ok(),
            "routes are independent"
        );
        tokio::time::advance(WINDOW).await;
        assert!(r.try_acquire("default", Instant::now()).is_ok());
    }
}
