//! The last 24 hours of what PagerDuty accepted, per appliance, for the status page's picture:
//! pages (triggers that opened an incident, as far as the bridge knows: a trigger onto an
//! incident it holds open is an update and pages nobody) and resolves, counted in fixed
//! 15-minute buckets of UTC time.
//!
//! Memory is fixed at start: one ring of [`BUCKETS`] buckets per configured appliance (the
//! pipeline's intakes); an event of any other appliance is not counted. A bucket's slot is
//! reused once the clock has moved a whole ring past it, so nothing is ever pruned. The
//! dispatcher records into it when PagerDuty answers 202 (where
//! `bridge_pagerduty_events_total{outcome="accepted"}` is counted); the web side reads a
//! [`HistoryView`], which travels in the status JSON to web replicas. Kept in memory only: after
//! a restart the picture starts empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::pagerduty::event::Action;
use crate::pipeline::{Holding, Incidents};

/// The width of one bucket.
pub const BUCKET_SECONDS: i64 = 15 * 60;
/// Buckets kept per appliance: 24 hours.
pub const BUCKETS: usize = 96;

/// What one accepted event counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Page,
    Resolve,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Which 15 minutes since 1970 the counts are of; a slot holding an older number is empty.
    number: i64,
    pages: u32,
    resolves: u32,
}

const EMPTY: Bucket = Bucket {
    number: i64::MIN,
    pages: 0,
    resolves: 0,
};

/// The rings of all configured appliances.
pub struct History {
    /// Appliance id -> its ring in `rings`; fixed at construction.
    index: HashMap<Arc<str>, usize>,
    names: Vec<Arc<str>>,
    rings: Mutex<Vec<[Bucket; BUCKETS]>>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("appliances", &self.names.len())
            .finish()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

fn bucket_number(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(BUCKET_SECONDS)
}

fn slot(number: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..BUCKETS.
    usize::try_from(number.rem_euclid(BUCKETS as i64)).unwrap_or(0)
}

/// The appliance of a plain dedup key (`oneview:{appliance}:{uri}`; see
/// [`crate::pagerduty::event::dedup_key`]). The appliance id may itself hold ':'; the URI
/// always starts with `/rest/`. `None` for a hashed key.
fn appliance_of(dedup_key: &str) -> Option<&str> {
    let rest = dedup_key.strip_prefix("oneview:")?;
    let at = rest.find(":/rest/")?;
    Some(&rest[..at])
}

impl History {
    /// Rings for these appliances, in this order (the status page's order of the picture).
    pub fn new(appliances: impl IntoIterator<Item = Arc<str>>) -> Self {
        let mut names = Vec::new();
        let mut index = HashMap::new();
        for a in appliances {
            if !index.contains_key(&a) {
                index.insert(a.clone(), names.len());
                names.push(a);
            }
        }
        let rings = Mutex::new(vec![[EMPTY; BUCKETS]; names.len()]);
        Self {
            index,
            names,
            rings,
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Vec<[Bucket; BUCKETS]>> {
        // Plain counters: a panic elsewhere cannot leave them harmful.
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// PagerDuty accepted `action` for `dedup_key`: counts a page or a resolve for its
    /// appliance now. Called by the dispatcher before it records the answer in `incidents`, so
    /// [`Incidents::holding`] still says whether a trigger found an incident open.
    pub fn accepted(&self, dedup_key: &str, action: Action, incidents: &Incidents) {
        if self.names.is_empty() {
            return;
        }
        let tally = match action {
            Action::Trigger => match incidents.holding(dedup_key) {
                Holding::Open { .. } => return,
                Holding::Closed | Holding::Unknown => Tally::Page,
            },
            Action::Resolve => Tally::Resolve,
            Action::Acknowledge => return,
        };
        match appliance_of(dedup_key) {
            Some(a) => self.record(a, tally, Utc::now()),
            // A hashed key (a very long appliance id or URI) names no appliance: ask whose it is.
            None => {
                if let Some(k) = incidents.known(dedup_key) {
                    self.record(&k.key.appliance, tally, Utc::now());
                }
            }
        }
    }

    /// Counts one event of `appliance` at `at`. Unknown appliances, and times more than a ring
    /// older than what a slot already holds, are not counted.
    pub fn record(&self, appliance: &str, tally: Tally, at: DateTime<Utc>) {
        let Some(&i) = self.index.get(appliance) else {
            return;
        };
        let number = bucket_number(at);
        let mut rings = self.rings();
        let Some(ring) = rings.get_mut(i) else { return };
        let b = &mut ring[slot(number)];
        if b.number > number {
            return;
        }
        if b.number < number {
            *b = Bucket {
                number,
                pages: 0,
                resolves: 0,
            };
        }
        match tally {
            Tally::Page => b.pages = b.pages.saturating_add(1),
            Tally::Resolve => b.resolves = b.resolves.saturating_add(1),
        }
    }

    /// The 24 hours that end with the bucket holding `now`, oldest bucket first.
    pub fn view(&self, now: DateTime<Utc>) -> HistoryView {
        let last = bucket_number(now);
        let first = last - (BUCKETS as i64 - 1);
        let rings = self.rings();
        let appliances = self
            .names
            .iter()
            .zip(rings.iter())
            .map(|(name, ring)| {
                let mut pages = Vec::with_capacity(BUCKETS);
                let mut resolves = Vec::with_capacity(BUCKETS);
                for n in first..=last {
                    let b = &ring[slot(n)];
                    let (p, r) = if b.number == n {
                        (b.pages, b.resolves)
                    } else {
                        (0, 0)
                    };
                    pages.push(p);
                    resolves.push(r);
                }
                ApplianceHistory {
                    appliance: name.to_string(),
                    pages,
                    resolves,
                }
            })
            .collect();
        HistoryView {
            bucket_seconds: BUCKET_SECONDS as u64,
            start: Utc
                .timestamp_opt(first.saturating_mul(BUCKET_SECONDS), 0)
                .single()
                .unwrap_or(now),
            appliances,
        }
    }
}

/// The picture's data, in the status JSON (`history`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryView {
    /// The width of a bucket (900).
    pub bucket_seconds: u64,
    /// Where the first bucket starts (UTC); the buckets follow each other, and the last one
    /// holds the moment the view was made.
    pub start: DateTime<Utc>,
    /// Every configured appliance, also those with nothing to count.
    pub appliances: Vec<ApplianceHistory>,
}

/// One appliance's buckets, oldest first (as many as [`HistoryView`] has buckets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplianceHistory {
    pub appliance: String,
    /// Triggers PagerDuty accepted that opened an incident.
    pub pages: Vec<u32>,
    /// Resolves PagerDuty accepted.
    pub resolves: Vec<u32>,
}

impl HistoryView {
    /// How many buckets each appliance has (the shortest series, should a remote answer be
    /// uneven).
    pub fn buckets(&self) -> usize {
        self.appliances
            .iter()
            .map(|a| a.pages.len().min(a.resolves.len()))
            .min()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn names(v: &[&str]) -> Vec<Arc<str>> {
        v.iter().map(|s| Arc::from(*s)).collect()
    }

    #[test]
    fn counts_per_appliance_and_bucket() {
        let h = History::new(names(&["dc1", "dc2"]));
        let t = at("2026-03-01T10:07:00Z");
        h.record("dc1", Tally::Page, t);
        h.record("dc1", Tally::Page, at("2026-03-01T10:14:59Z"));
        h.record("dc1", Tally::Resolve, at("2026-03-01T10:15:00Z"));
        h.record("dc2", Tally::Resolve, t);
        h.record("elsewhere", Tally::Page, t);
        let v = h.view(at("2026-03-01T10:20:00Z"));
        assert_eq!(v.bucket_seconds, 900);
        assert_eq!(v.buckets(), 96);
        // The last bucket holds now (10:15-10:30); the first starts 23 h 45 min earlier.
        assert_eq!(v.start, at("2026-02-28T10:30:00Z"));
        let dc1 = &v.appliances[0];
        assert_eq!(dc1.appliance, "dc1");
        assert_eq!(dc1.pages[94], 2, "10:00-10:15");
        assert_eq!(dc1.resolves[95], 1, "10:15-10:30");
        assert_eq!(dc1.pages.iter().sum::<u32>(), 2);
        assert_eq!(dc1.resolves.iter().sum::<u32>(), 1);
        let dc2 = &v.appliances[1];
        assert_eq!((dc2.pages.iter().sum::<u32>(), dc2.resolves[94]), (0, 1));
        assert_eq!(
            v.appliances.len(),
            2,
            "an unconfigured appliance is not counted"
        );
    }

    #[test]
    fn buckets_roll_over_after_24_hours() {
        let h = History::new(names(&["dc1"]));
        let t = at("2026-03-01T10:07:00Z");
        h.record("dc1", Tally::Page, t);
        // 23 h 50 min later the bucket is the window's first.
        let v = h.view(at("2026-03-02T09:57:00Z"));
        assert_eq!(v.appliances[0].pages[0], 1);
        // 24 h later it has left the window.
        let v = h.view(at("2026-03-02T10:07:00Z"));
        assert_eq!(v.appliances[0].pages.iter().sum::<u32>(), 0);
        // The same slot, a day on, starts from zero rather than adding to yesterday's count.
        h.record("dc1", Tally::Page, at("2026-03-02T10:01:00Z"));
        let v = h.view(at("2026-03-02T10:07:00Z"));
        assert_eq!(v.appliances[0].pages[95], 1);
        assert_eq!(v.appliances[0].pages.iter().sum::<u32>(), 1);
        // A late event a whole day older than the slot's counts is dropped, not mixed in.
        h.record("dc1", Tally::Page, t);
        let v = h.view(at("2026-03-02T10:07:00Z"));
        assert_eq!(v.appliances[0].pages.iter().sum::<u32>(), 1);
    }

    #[test]
    fn a_trigger_onto_an_open_incident_is_no_page() {
        let incidents = Incidents::new(std::time::Duration::from_secs(60));
        let h = History::new(names(&["dc1"]));
        let key = crate::pagerduty::event::dedup_key("dc1", "/rest/alerts/7");
        h.accepted(&key, Action::Trigger, &incidents);
        let route: Arc<str> = Arc::from("default");
        incidents.accepted(&key, Action::Trigger, &route, 1, true);
        // An update (new fingerprint) of the incident PagerDuty holds open.
        h.accepted(&key, Action::Trigger, &incidents);
        h.accepted(&key, Action::Resolve, &incidents);
        h.accepted(&key, Action::Acknowledge, &incidents);
        let v = h.view(Utc::now());
        let a = &v.appliances[0];
        assert_eq!(a.pages.iter().sum::<u32>(), 1);
        assert_eq!(a.resolves.iter().sum::<u32>(), 1);
    }

    #[test]
    fn dedup_key_appliance() {
        assert_eq!(appliance_of("oneview:dc1:/rest/alerts/7"), Some("dc1"));
        assert_eq!(
            appliance_of("oneview:ov:8443:/rest/alerts/7"),
            Some("ov:8443")
        );
        assert_eq!(appliance_of("oneview:sha256:abcd"), None);
    }
}
