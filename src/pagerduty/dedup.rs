//! What PagerDuty already heard, per `dedup_key`: the last accepted action and a fingerprint of
//! the fields that matter (PagerDuty severity and description), for `dedup.ttl`. An open alert
//! seen again re-inserts its entry, which restarts its TTL, so an alert that stays open is not
//! re-paged when its entry would otherwise expire.
//!
//! A plain map owned by the dispatcher task (nothing else reads it, so no lock and no
//! concurrent cache): every open alert has an entry, so its size per entry is most of what it
//! costs (≈ 100 bytes; a concurrent TTL cache took ≈ 3× that and its housekeeping showed in
//! storm profiles). Expiry follows tokio's clock (and so paused time in tests): an expired
//! entry is dead on read at once, and swept from memory at most every `ttl / 16` (1 s .. 5 min).
//!
//! The cache lives in memory and is seeded at startup from the state store's ledger (see
//! `dispatcher::Dispatcher::resume`), so the first resync does not re-send unchanged open
//! alerts. With the in-memory store (no `state.path`) it starts empty and the first resync
//! re-sends a trigger for every open alert (PagerDuty joins it to the open incident).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::event::Action;

/// What PagerDuty last accepted for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub action: Action,
    pub fingerprint: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    heard: Heard,
    expires: Instant,
}

/// The TTL cache.
pub struct DedupCache {
    ttl: Duration,
    entries: HashMap<Box<str>, Entry>,
    next_sweep: Instant,
}

impl DedupCache {
    pub fn new(ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        Self {
            ttl,
            entries: HashMap::new(),
            next_sweep: Instant::now() + Self::sweep_every(ttl),
        }
    }

    fn sweep_every(ttl: Duration) -> Duration {
        (ttl / 16).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }

    pub fn get(&mut self, key: &str) -> Option<Heard> {
        let e = self.entries.get(key)?;
        if e.expires <= Instant::now() {
            self.entries.remove(key);
            return None;
        }
        Some(e.heard)
    }

    /// Records (or refreshes) what PagerDuty heard for `key`; the TTL starts again.
    pub fn put(&mut self, key: &str, heard: Heard) {
        let now = Instant::now();
        let e = Entry {
            heard,
            expires: now + self.ttl,
        };
        match self.entries.get_mut(key) {
            Some(old) => *old = e,
            None => {
                self.entries.insert(Box::from(key), e);
            }
        }
        self.sweep(now);
    }

    /// Drops expired entries, when the last sweep is old enough; gives back the capacity of
    /// a storm once the map is mostly empty.
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + Self::sweep_every(self.ttl);
        self.entries.retain(|_, e| e.expires > now);
        crate::recent::shrink_if_sparse(&mut self.entries);
    }

    /// Number of live entries (sweeps first when a sweep is due).
    pub fn len(&mut self) -> usize {
        self.sweep(Instant::now());
        self.entries.len()
    }

    pub fn is_empty(&mut self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Heard = Heard {
        action: Action::Trigger,
        fingerprint: 7,
    };

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_ttl_unless_refreshed() {
        let mut c = DedupCache::new(Duration::from_secs(3600));
        c.put("a", H);
        c.put("b", H);
        assert_eq!(c.len(), 2);
        tokio::time::advance(Duration::from_secs(3000)).await;
        assert_eq!(c.get("a"), Some(H));
        // `a` is still open and seen again: refreshed.
        c.put("a", H);
        tokio::time::advance(Duration::from_secs(1000)).await;
        assert_eq!(c.get("a"), Some(H), "refreshed entry lives on");
        assert_eq!(c.get("b"), None, "unrefreshed entry expired");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_leave_memory_without_being_read() {
        let mut c = DedupCache::new(Duration::from_secs(60));
        for i in 0..5000 {
            c.put(&format!("k{i}"), H);
        }
        assert_eq!(c.len(), 5000);
        tokio::time::advance(Duration::from_secs(61)).await;
        c.put("fresh", H);
        assert_eq!(c.len(), 1, "the sweep drops what expired");
        assert!(
            c.entries.capacity() < 1024,
            "and gives the storm's capacity back"
        );
        assert_eq!(c.get("fresh"), Some(H));
    }
}
