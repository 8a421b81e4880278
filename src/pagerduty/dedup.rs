//! What PagerDuty already heard, per `dedup_key`: the last accepted action and a fingerprint of
//! the fields that matter (PagerDuty severity and description). A `moka` cache with a TTL of
//! `dedup.ttl`; an open alert seen again re-inserts its entry, which restarts its TTL, so an
//! alert that stays open for weeks is not re-paged when its entry would otherwise expire.
//!
//! The cache lives in memory: after a restart it is empty, and the first resync re-sends a
//! trigger for every open alert (PagerDuty joins it to the open incident, so nobody is paged
//! twice).

use std::time::Duration;

use moka::sync::Cache;

use super::event::Action;

/// What PagerDuty last accepted for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heard {
    pub action: Action,
    pub fingerprint: u64,
}

/// The TTL cache.
#[derive(Clone)]
pub struct DedupCache {
    cache: Cache<String, Heard>,
}

impl DedupCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            cache: Cache::builder()
                .time_to_live(ttl.max(Duration::from_secs(1)))
                .build(),
        }
    }

    pub fn get(&self, key: &str) -> Option<Heard> {
        self.cache.get(key)
    }

    /// Records (or refreshes) what PagerDuty heard for `key`.
    pub fn put(&self, key: &str, heard: Heard) {
        self.cache.insert(key.to_owned(), heard);
    }

    /// Number of live entries (settles pending evictions first).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
