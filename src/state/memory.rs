//! The in-memory [`StateStore`], used when `state.path` is not set: the same semantics as the
//! file store, forgotten on restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    Counts, DeadLetter, LedgerEntry, Op, OutboxEntry, SilenceRecord, Snapshot, StateError,
    StateStore, check_seqs,
};

/// Ordered maps behind one std `Mutex`: every operation is short and never awaits, so a std
/// mutex is cheaper than an async one and cannot be held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ledger: BTreeMap<Box<str>, Remembered>,
    /// The route names the ledger's entries point into.
    routes: Vec<Arc<str>>,
    outbox: BTreeMap<u64, OutboxEntry>,
    watermarks: BTreeMap<String, String>,
    dead_letters: BTreeMap<String, DeadLetter>,
    silences: BTreeMap<String, SilenceRecord>,
    next_seq: u64,
}

/// A [`LedgerEntry`] as this store keeps it: every alert PagerDuty heard of has one, so it is
/// kept in 24 bytes (BENCHMARKS.md, section 9): the route is an index into the store's few
/// route names, a fingerprint of 16 hex digits is kept as the number, the time as nanoseconds
/// since 1970. Anything else (a fingerprint of another form, a time before 1678 or after
/// 2262) is kept whole.
#[derive(Debug)]
enum Remembered {
    Compact {
        action: super::Action,
        route: u32,
        fingerprint: u64,
        at_nanos: i64,
    },
    Whole(Box<LedgerEntry>),
}

impl Remembered {
    fn new(e: LedgerEntry, routes: &mut Vec<Arc<str>>) -> Self {
        let fingerprint = match u64::from_str_radix(&e.fingerprint, 16) {
            Ok(n) if format!("{n:016x}") == e.fingerprint => Some(n),
            _ => None,
        };
        let (Some(fingerprint), Some(at_nanos)) = (fingerprint, nanos(e.at)) else {
            return Remembered::Whole(Box::new(e));
        };
        let route = routes
            .iter()
            .position(|r| **r == *e.route)
            .unwrap_or(routes.len());
        // More than 4 billion route names: never, but not a reason to lose the entry.
        let Ok(index) = u32::try_from(route) else {
            return Remembered::Whole(Box::new(e));
        };
        if route == routes.len() {
            routes.push(Arc::from(e.route));
        }
        Remembered::Compact {
            action: e.action,
            route: index,
            fingerprint,
            at_nanos,
        }
    }

    fn action(&self) -> super::Action {
        match self {
            Remembered::Compact { action, .. } => *action,
            Remembered::Whole(e) => e.action,
        }
    }

    fn at(&self) -> SystemTime {
        match self {
            Remembered::Compact { at_nanos, .. } => time(*at_nanos),
            Remembered::Whole(e) => e.at,
        }
    }

    fn entry(&self, routes: &[Arc<str>]) -> LedgerEntry {
        match self {
            Remembered::Compact {
                action,
                route,
                fingerprint,
                at_nanos,
            } => LedgerEntry {
                action: *action,
                fingerprint: format!("{fingerprint:016x}"),
                at: time(*at_nanos),
                route: routes
                    .get(*route as usize)
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
            },
            Remembered::Whole(e) => (**e).clone(),
        }
    }
}

/// `t` as nanoseconds since 1970, when an `i64` holds it.
fn nanos(t: SystemTime) -> Option<i64> {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).ok(),
        Err(e) => i64::try_from(e.duration().as_nanos()).ok().map(|n| -n),
    }
}

fn time(nanos: i64) -> SystemTime {
    let d = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied batch: `apply` validates
        // before it mutates and the mutations themselves do not panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for MemoryStore {
    fn load(&self) -> Result<Snapshot, StateError> {
        let s = self.lock();
        Ok(Snapshot {
            ledger: s
                .ledger
                .iter()
                .map(|(k, e)| (k.to_string(), e.entry(&s.routes)))
                .collect(),
            outbox: s.outbox.values().cloned().collect(),
            watermarks: s.watermarks.clone(),
            dead_letters: s.dead_letters.clone(),
            next_seq: s.next_seq,
            silences: s.silences.clone(),
        })
    }

    fn apply(&self, batch: &[Op]) -> Result<(), StateError> {
        let mut s = self.lock();
        // The only way a batch can fail is checked up front, so it is applied whole or not at
        // all without copying the maps.
        let next_seq = check_seqs(batch, s.next_seq)?;
        for op in batch {
            match op {
                Op::Enqueue(e) => {
                    s.outbox.insert(e.seq, e.clone());
                }
                Op::Accepted { seq, .. } => {
                    s.outbox.remove(seq);
                    if let Some((key, entry)) = op.ledger_entry() {
                        // PagerDuty took an event for this key: an older rejection is moot.
                        s.dead_letters.remove(key);
                        let entry = Remembered::new(entry, &mut s.routes);
                        s.ledger.insert(Box::from(key), entry);
                    }
                }
                Op::Cancelled { seq } => {
                    s.outbox.remove(seq);
                }
                Op::DeadLetter { seq, entry } => {
                    s.outbox.remove(seq);
                    s.dead_letters.insert(entry.key.clone(), entry.clone());
                }
                Op::RemoveDeadLetter { key } => {
                    s.dead_letters.remove(key);
                }
                Op::Watermark { appliance, value } => {
                    s.watermarks.insert(appliance.clone(), value.clone());
                }
                Op::ForgetKey { key } => {
                    s.ledger.remove(key.as_str());
                    s.dead_letters.remove(key);
                }
                Op::Silence(r) => {
                    s.silences.insert(r.id.clone(), r.clone());
                }
            }
        }
        s.next_seq = next_seq;
        Ok(())
    }

    fn counts(&self) -> Result<Counts, StateError> {
        let s = self.lock();
        Ok(Counts {
            outbox: s.outbox.len(),
            ledger: s.ledger.len(),
        })
    }

    fn prune(&self, older_than: SystemTime) -> Result<usize, StateError> {
        let mut s = self.lock();
        let before = s.ledger.len() + s.dead_letters.len() + s.silences.len();
        s.ledger
            .retain(|_, e| !(e.action() == super::Action::Resolve && e.at() < older_than));
        s.dead_letters.retain(|_, d| d.at >= older_than);
        s.silences.retain(|_, r| r.ends_at >= older_than);
        Ok(before - s.ledger.len() - s.dead_letters.len() - s.silences.len())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn path(&self) -> Option<&Path> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn compact_ledger_entries_read_back_exactly() {
        let mut routes = Vec::new();
        let times = [
            UNIX_EPOCH + Duration::from_nanos(1_763_800_000_123_456_789),
            UNIX_EPOCH,
            UNIX_EPOCH - Duration::from_nanos(1),
            UNIX_EPOCH + Duration::from_secs(300 * 365 * 86_400),
            UNIX_EPOCH - Duration::from_secs(300 * 365 * 86_400),
        ];
        for at in times {
            for fingerprint in ["00000000000000ff", "deadbeefdeadbeef", "FF", "not-hex", ""] {
                for (action, route) in [
                    (super::super::Action::Trigger, "default"),
                    (super::super::Action::Resolve, "critical"),
                ] {
                    let e = LedgerEntry {
                        action,
                        fingerprint: fingerprint.to_owned(),
                        at,
                        route: route.to_owned(),
                    };
                    let r = Remembered::new(e.clone(), &mut routes);
                    assert_eq!(r.entry(&routes), e, "{fingerprint:?} {at:?}");
                    assert_eq!((r.action(), r.at()), (action, at));
                }
            }
        }
        assert_eq!(routes.len(), 2, "one copy of each route name");
        assert_eq!(std::mem::size_of::<Remembered>(), 24);
    }
}
