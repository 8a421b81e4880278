//! What PagerDuty already heard, per `dedup_key`: the last accepted action and a fingerprint of
//! the fields that matter (PagerDuty severity and description). A `moka` cache with a TTL of
//! `dedup.ttl`; an open alert seen again re-inserts its entry, which restarts its TTL, so an
//! alert that stays open is not re-paged when its entry would otherwise expire.
//!
//! Each entry also carries its expiry on tokio's clock, checked on read: moka's own TTL
//! reclaims the memory, while the logical expiry follows `tokio::time` (and so paused time in
//! tests).
//!
//! The cache lives in memory and is seeded at startup from the state store's ledger (see
//! `dispatcher::Dispatcher::resume`), so the first resync does not re-send unchanged open
//! alerts. With the in-memory store (no `state.path`) it starts empty and the first resync
//! re-sends a trigger for every open alert (PagerDuty joins it to the open incident).

use std::time::Duration;

use moka::sync::Cache;
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
#[derive(Clone)]
pub struct DedupCache {
    ttl: Duration,
    cache: Cache<String, Entry>,
}

impl DedupCache {
    pub fn new(ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        Self {
            ttl,
            cache: Cache::builder().time_to_live(ttl).build(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Heard> {
        let e = self.cache.get(key)?;
        if e.expires <= Instant::now() {
            self.cache.invalidate(key);
            return None;
        }
        Some(e.heard)
    }

    /// Records (or refreshes) what PagerDuty heard for `key`; the TTL starts again.
    pub fn put(&self, key: &str, heard: Heard) {
        self.cache.insert(
            key.to_owned(),
            Entry {
                heard,
                expires: Instant::now() + self.ttl,
            },
        );
    }

    /// Number of entries (settles pending evictions first).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
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
        let c = DedupCache::new(Duration::from_secs(3600));
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
}
