//! [`Incidents`]: the one owner of "which incident PagerDuty holds for this alert, on which
//! route", and of the open alerts the bridge tracks (what the API and the status page list).
//!
//! The dispatcher is its only writer: it records every change at intake ([`Incidents::observe`])
//! and every event PagerDuty accepted ([`Incidents::accepted`]); at startup it is seeded from the
//! state store's ledger ([`Incidents::seed`]), which records the route of every accepted event,
//! so after a restart a clear still goes to the integration that opened the incident. The web
//! side reads it (alert list, status, write-back targets, dead-letter retries).
//!
//! Open incidents are remembered until they resolve; there is no expiry for them (forgetting
//! which route holds an incident is how incidents stay open forever). Resolved keys are
//! remembered for `dedup.ttl`, so a repeated clear is not sent again; after that, and for keys
//! no state ever mentioned, the holding is [`Holding::Unknown`].

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{Alert, AlertChange, AlertKey, Appliance, ChangeKind};
use crate::pagerduty::event::Action;
use crate::recent::{FastMap, Recent, shrink_if_sparse};

use super::decide::Holding;

/// Last changes kept for dead-letter retries (the most recent 5,000 to 10,000 keys).
pub const LAST_CHANGES_KEPT: usize = 10_000;

/// What the table knows of one key, in 24 bytes: with 50,000 open alerts every byte here is
/// 50 KB, and the hash table keeps up to twice as many slots (BENCHMARKS.md, section 9). The
/// route and the appliance are indexes into the table's short lists of each.
#[derive(Debug, Default)]
struct Entry {
    /// The fingerprint of the open incident (meaningful when `route` is set).
    fingerprint: u64,
    /// The alert while OneView shows it open (as far as the pipeline heard).
    open: Option<Arc<Alert>>,
    /// The route of the open incident PagerDuty accepted, as `Names::index`; `None`: no
    /// incident held.
    route: Option<NonZeroU32>,
    /// The appliance of `open` (`Table::appliances`) in the upper bits; the lowest bit is set
    /// when the change was an update (else it was raised).
    appliance: u32,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.route.is_none() && self.open.is_none()
    }

    fn kind(&self) -> ChangeKind {
        if self.appliance & 1 == 1 {
            ChangeKind::Updated
        } else {
            ChangeKind::Raised
        }
    }
}

/// Short lists of shared names (the routes, the appliances) that entries point into by index.
/// They only grow: both are bounded by the configuration (plus the routes an older
/// configuration left in the state store's ledger).
#[derive(Debug)]
struct Names<T> {
    list: Vec<T>,
}

impl<T> Default for Names<T> {
    fn default() -> Self {
        Names { list: Vec::new() }
    }
}

impl<T: PartialEq + Clone> Names<T> {
    /// The index of `v` (added if new), from 1.
    fn index(&mut self, v: &T) -> NonZeroU32 {
        let i = match self.list.iter().position(|x| x == v) {
            Some(i) => i,
            None => {
                self.list.push(v.clone());
                self.list.len() - 1
            }
        };
        // More than 4 billion distinct routes or appliances cannot fit in memory.
        NonZeroU32::new(u32::try_from(i + 1).unwrap_or(u32::MAX)).unwrap_or(NonZeroU32::MIN)
    }

    fn get(&self, i: NonZeroU32) -> Option<&T> {
        self.list.get(i.get() as usize - 1)
    }
}

struct Table {
    entries: FastMap<Box<str>, Entry>,
    routes: Names<Arc<str>>,
    appliances: Names<Appliance>,
    /// Keys whose incident the bridge saw resolved, until when that is remembered.
    resolved: FastMap<Box<str>, Instant>,
    /// Open incidents per route, kept as holdings change (the gauge reads it every second;
    /// counting the entries then would be O(alerts)).
    per_route: FastMap<Arc<str>, usize>,
    /// Open alerts a silence held at their last evaluation, with the id of that silence (few:
    /// a map of its own rather than a field of every entry).
    held: FastMap<Box<str>, Arc<str>>,
    /// Alerts flap damping found flapping (few, like `held`), until they settle.
    flapping: std::collections::HashSet<Box<str>>,
    ttl: Duration,
    next_sweep: Instant,
}

/// An alert the bridge tracks, with the route that holds its incident.
#[derive(Debug, Clone)]
pub struct TrackedAlert {
    pub dedup_key: String,
    pub change: AlertChange,
    /// The route of the open incident PagerDuty accepted, if any yet.
    pub route: Option<Arc<str>>,
    /// The silence that holds the alert, if one does.
    pub silenced_by: Option<Arc<str>>,
    /// Flap damping found the alert flapping: its incident stays open until it settles.
    pub flapping: bool,
}

/// A known alert key, for a write-back: whose alert it is and where its incident is.
#[derive(Debug, Clone)]
pub struct Known {
    pub key: AlertKey,
    pub route: Option<Arc<str>>,
}

/// See the module docs. Cheap to share (`Arc`); every method takes the lock briefly.
pub struct Incidents {
    table: Mutex<Table>,
    /// The last change of recently seen keys (what a dead-letter retry re-sends).
    last: Recent<AlertChange>,
}

impl std::fmt::Debug for Incidents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incidents").finish_non_exhaustive()
    }
}

impl Incidents {
    /// `ttl`: how long a resolved key is remembered (`dedup.ttl`).
    pub fn new(ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        Self {
            table: Mutex::new(Table {
                entries: FastMap::default(),
                routes: Names::default(),
                appliances: Names::default(),
                resolved: FastMap::default(),
                per_route: FastMap::default(),
                held: FastMap::default(),
                flapping: Default::default(),
                ttl,
                next_sweep: Instant::now() + sweep_every(ttl),
            }),
            last: Recent::new(LAST_CHANGES_KEPT),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Plain maps, each update a single insert or remove: a panic elsewhere cannot leave
        // them half-written.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What PagerDuty holds for `key`, as far as the bridge knows.
    pub fn holding(&self, key: &str) -> Holding {
        let g = self.lock();
        if let Some((route, fingerprint)) = g.entries.get(key).and_then(|e| g.held(e)) {
            return Holding::Open { route, fingerprint };
        }
        match g.resolved.get(key) {
            Some(until) if *until > Instant::now() => Holding::Closed,
            _ => Holding::Unknown,
        }
    }

    /// Records which silence holds `key` now (`None`: none, or the alert cleared); returns
    /// the silence that held it before.
    pub fn hold(&self, key: &str, silence: Option<&Arc<str>>) -> Option<Arc<str>> {
        let mut g = self.lock();
        match silence {
            Some(id) => match g.held.get_mut(key) {
                Some(v) => Some(std::mem::replace(v, id.clone())),
                None => g.held.insert(Box::from(key), id.clone()),
            },
            None => {
                let before = g.held.remove(key);
                if before.is_some() {
                    shrink_if_sparse(&mut g.held);
                }
                before
            }
        }
    }

    /// The silence holding `key`, if one did at its last evaluation.
    pub fn held_by(&self, key: &str) -> Option<Arc<str>> {
        self.lock().held.get(key).cloned()
    }

    /// Marks `key` flapping (the dispatcher, when flap damping finds it so), or not (when it
    /// settled).
    pub fn set_flapping(&self, key: &str, flapping: bool) {
        let mut g = self.lock();
        if flapping {
            g.flapping.insert(Box::from(key));
        } else {
            g.flapping.remove(key);
        }
    }

    /// Whether flap damping found `key` flapping.
    pub fn is_flapping(&self, key: &str) -> bool {
        self.lock().flapping.contains(key)
    }

    /// How many open alerts a silence holds (the gauge).
    pub fn held_count(&self) -> usize {
        self.lock().held.len()
    }

    /// Records a change at intake: the alert list follows OneView.
    pub fn observe(&self, key: &str, change: &AlertChange) {
        {
            let mut guard = self.lock();
            let g = &mut *guard;
            match change.kind {
                ChangeKind::Raised | ChangeKind::Updated => {
                    let appliance = (g.appliances.index(&change.appliance).get() << 1)
                        | u32::from(change.kind == ChangeKind::Updated);
                    let e = match g.entries.get_mut(key) {
                        Some(e) => e,
                        None => g.entries.entry(Box::from(key)).or_default(),
                    };
                    e.open = Some(change.alert.clone());
                    e.appliance = appliance;
                }
                ChangeKind::Cleared => {
                    if let Some(e) = g.entries.get_mut(key) {
                        e.open = None;
                        if e.is_empty() {
                            g.entries.remove(key);
                        }
                    }
                }
            }
        }
        self.last.insert(key, change.clone());
    }

    /// PagerDuty accepted `action` for `key` on `route`. `settled`: nothing else is queued for
    /// the key, so a resolve of a key nobody knew closes it for good.
    pub fn accepted(
        &self,
        key: &str,
        action: Action,
        route: &Arc<str>,
        fingerprint: u64,
        settled: bool,
    ) {
        let mut guard = self.lock();
        let g = &mut *guard;
        let now = Instant::now();
        match action {
            Action::Trigger => {
                g.resolved.remove(key);
                let index = g.routes.index(route);
                let e = match g.entries.get_mut(key) {
                    Some(e) => e,
                    None => g.entries.entry(Box::from(key)).or_default(),
                };
                let before = e.route.replace(index);
                e.fingerprint = fingerprint;
                if let Some(r) = before.and_then(|i| g.routes.get(i)).cloned() {
                    g.count(&r, -1);
                }
                g.count(route, 1);
            }
            Action::Resolve => {
                // (closes the key, released a holding of `route`)
                let index = g.routes.index(route);
                let (closes, released) = match g.entries.get_mut(key) {
                    Some(e) => match e.route {
                        Some(r) if r == index => {
                            e.route = None;
                            (true, true)
                        }
                        Some(_) => (false, false),
                        None => (settled, false),
                    },
                    None => (settled, false),
                };
                if released {
                    g.count(route, -1);
                }
                if g.entries.get(key).is_some_and(Entry::is_empty) {
                    g.entries.remove(key);
                }
                if closes {
                    let until = now + g.ttl;
                    g.resolved.insert(Box::from(key), until);
                }
            }
            Action::Acknowledge => {}
        }
        g.sweep(now);
    }

    /// Seeds the table from the state store's ledger: `(key, action, route, fingerprint, age)`
    /// of the last event PagerDuty accepted per key.
    pub fn seed<'a>(
        &self,
        ledger: impl IntoIterator<Item = (&'a str, Action, &'a str, u64, Duration)>,
    ) {
        let mut guard = self.lock();
        let g = &mut *guard;
        let now = Instant::now();
        let ttl = g.ttl;
        // One shared name per route, not one allocation per incident.
        let mut routes: HashMap<&str, (Arc<str>, NonZeroU32)> = HashMap::new();
        for (key, action, route, fingerprint, age) in ledger {
            match action {
                Action::Trigger => {
                    let (route, index) = routes
                        .entry(route)
                        .or_insert_with(|| {
                            let name: Arc<str> = Arc::from(route);
                            let index = g.routes.index(&name);
                            (name, index)
                        })
                        .clone();
                    let before = g.entries.insert(
                        Box::from(key),
                        Entry {
                            fingerprint,
                            route: Some(index),
                            ..Entry::default()
                        },
                    );
                    if let Some(r) = before
                        .and_then(|e| e.route)
                        .and_then(|i| g.routes.get(i))
                        .cloned()
                    {
                        g.count(&r, -1);
                    }
                    g.count(&route, 1);
                }
                Action::Resolve if age < ttl => {
                    g.resolved.insert(Box::from(key), now + (ttl - age));
                }
                _ => {}
            }
        }
    }

    /// The open alerts, in no particular order.
    pub fn open_alerts(&self) -> Vec<TrackedAlert> {
        let g = self.lock();
        g.entries
            .iter()
            .filter_map(|(k, e)| {
                let change = g.tracked(e)?;
                Some(TrackedAlert {
                    dedup_key: k.to_string(),
                    change,
                    route: g.held(e).map(|(r, _)| r),
                    silenced_by: g.held.get(k).cloned(),
                    flapping: g.flapping.contains(k),
                })
            })
            .collect()
    }

    /// Whose alert `key` is, when the bridge tracks it or holds an incident for it (or saw it
    /// recently). `None`: not an alert of this bridge.
    pub fn known(&self, key: &str) -> Option<Known> {
        let route = {
            let g = self.lock();
            let e = g.entries.get(key);
            let route = e.and_then(|e| g.held(e)).map(|(r, _)| r);
            if let Some(c) = e.and_then(|e| g.tracked(e)) {
                return Some(Known { key: c.key, route });
            }
            route
        };
        self.last.get(key).map(|c| Known { key: c.key, route })
    }

    /// The last change of `key`, if it is still kept.
    pub fn last_change(&self, key: &str) -> Option<AlertChange> {
        self.last.get(key)
    }

    /// Open incidents per route (the gauge) and the number of keys remembered in all.
    pub fn counts(&self) -> (FastMap<Arc<str>, usize>, usize) {
        let mut g = self.lock();
        g.sweep(Instant::now());
        (g.per_route.clone(), g.entries.len() + g.resolved.len())
    }
}

fn sweep_every(ttl: Duration) -> Duration {
    (ttl / 16).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

impl Table {
    /// The route and fingerprint of the open incident `e` stands for.
    fn held(&self, e: &Entry) -> Option<(Arc<str>, u64)> {
        let route = self.routes.get(e.route?)?;
        Some((route.clone(), e.fingerprint))
    }

    /// The change that made `e` open, while it is.
    fn tracked(&self, e: &Entry) -> Option<AlertChange> {
        let alert = e.open.clone()?;
        let appliance = NonZeroU32::new(e.appliance >> 1).and_then(|i| self.appliances.get(i))?;
        Some(AlertChange {
            kind: e.kind(),
            key: AlertKey::new(appliance, &alert.uri),
            appliance: appliance.clone(),
            alert,
        })
    }

    fn count(&mut self, route: &Arc<str>, delta: isize) {
        let n = self.per_route.entry(route.clone()).or_default();
        *n = n.saturating_add_signed(delta);
    }

    /// Forgets resolved keys past their time, at most every `ttl / 16`; gives back the capacity
    /// of a storm once the maps are mostly empty.
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + sweep_every(self.ttl);
        self.resolved.retain(|_, until| *until > now);
        shrink_if_sparse(&mut self.resolved);
        shrink_if_sparse(&mut self.entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AlertKey;

    fn change(kind: ChangeKind, uri: &str) -> AlertChange {
        let appliance = Appliance {
            id: Arc::from("ov1"),
            ui_url: Arc::from("https://ov1"),
        };
        AlertChange {
            kind,
            key: AlertKey::new(&appliance, uri),
            appliance,
            alert: Arc::new(Alert {
                uri: uri.to_owned(),
                ..Alert::default()
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_incidents_never_expire_resolved_ones_do() {
        let inc = Incidents::new(Duration::from_secs(3600));
        let critical: Arc<str> = Arc::from("critical");
        inc.observe("k1", &change(ChangeKind::Raised, "/rest/alerts/1"));
        assert_eq!(inc.holding("k1"), Holding::Unknown);
        inc.accepted("k1", Action::Trigger, &critical, 7, true);
        inc.accepted("k2", Action::Trigger, &critical, 8, true);
        inc.accepted("k2", Action::Resolve, &critical, 8, true);
        tokio::time::advance(Duration::from_secs(30 * 24 * 3600)).await;
        assert_eq!(
            inc.holding("k1"),
            Holding::Open {
                route: critical.clone(),
                fingerprint: 7
            },
            "an open incident is remembered however long it stays open"
        );
        assert_eq!(
            inc.holding("k2"),
            Holding::Unknown,
            "a resolve is remembered for the ttl"
        );
        assert_eq!(inc.open_alerts().len(), 1);
        inc.observe("k1", &change(ChangeKind::Cleared, "/rest/alerts/1"));
        assert!(inc.open_alerts().is_empty());
        assert!(
            matches!(inc.holding("k1"), Holding::Open { .. }),
            "cleared in OneView, still open in PagerDuty until its resolve is accepted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_resolve_on_another_route_does_not_close_the_incident() {
        let inc = Incidents::new(Duration::from_secs(3600));
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("default"), Arc::from("critical"));
        inc.accepted("k", Action::Trigger, &a, 1, true);
        inc.accepted("k", Action::Resolve, &b, 1, true);
        assert!(matches!(inc.holding("k"), Holding::Open { .. }));
        inc.accepted("k", Action::Resolve, &a, 1, true);
        assert_eq!(inc.holding("k"), Holding::Closed);
        // A key nobody knew: closed once every queued resolve is done.
        inc.accepted("u", Action::Resolve, &a, 1, false);
        assert_eq!(inc.holding("u"), Holding::Unknown);
        inc.accepted("u", Action::Resolve, &b, 1, true);
        assert_eq!(inc.holding("u"), Holding::Closed);
    }

    #[test]
    fn an_entry_is_24_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
    }

    #[tokio::test(start_paused = true)]
    async fn the_alert_list_keeps_appliance_kind_and_route() {
        let inc = Incidents::new(Duration::from_secs(3600));
        let other = Appliance {
            id: Arc::from("ov2"),
            ui_url: Arc::from("https://ov2"),
        };
        let mut c2 = change(ChangeKind::Updated, "/rest/alerts/2");
        c2.key = AlertKey::new(&other, "/rest/alerts/2");
        c2.appliance = other.clone();
        inc.observe("k1", &change(ChangeKind::Raised, "/rest/alerts/1"));
        inc.observe("k2", &c2);
        let critical: Arc<str> = Arc::from("critical");
        inc.accepted("k2", Action::Trigger, &critical, 9, true);
        let mut open = inc.open_alerts();
        open.sort_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        let seen: Vec<_> = open
            .iter()
            .map(|t| {
                (
                    t.dedup_key.as_str(),
                    t.change.kind,
                    t.change.key.to_string(),
                    &*t.change.appliance.ui_url,
                    t.route.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "k1",
                    ChangeKind::Raised,
                    "ov1/rest/alerts/1".to_owned(),
                    "https://ov1",
                    None
                ),
                (
                    "k2",
                    ChangeKind::Updated,
                    "ov2/rest/alerts/2".to_owned(),
                    "https://ov2",
                    Some("critical")
                ),
            ]
        );
        let known = inc.known("k2").unwrap();
        assert_eq!((known.key, known.route), (c2.key, Some(critical)));
    }

    #[tokio::test(start_paused = true)]
    async fn seeded_from_the_ledger() {
        let inc = Incidents::new(Duration::from_secs(3600));
        inc.seed([
            (
                "open",
                Action::Trigger,
                "critical",
                5,
                Duration::from_secs(99_999),
            ),
            (
                "recent",
                Action::Resolve,
                "default",
                5,
                Duration::from_secs(60),
            ),
            (
                "old",
                Action::Resolve,
                "default",
                5,
                Duration::from_secs(7200),
            ),
        ]);
        assert_eq!(
            inc.holding("open"),
            Holding::Open {
                route: Arc::from("critical"),
                fingerprint: 5
            }
        );
        assert_eq!(inc.holding("recent"), Holding::Closed);
        assert_eq!(inc.holding("old"), Holding::Unknown);
        let (per_route, _) = inc.counts();
        assert_eq!(per_route.get("critical"), Some(&1));
    }
}
