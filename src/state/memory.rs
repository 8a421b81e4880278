//! The in-memory [`StateStore`], used when `state.path` is not set: the same semantics as the
//! file store, forgotten on restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::{
    Counts, DeadLetter, LedgerEntry, Op, OutboxEntry, Snapshot, StateError, StateStore, check_seqs,
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
    outbox: BTreeMap<u64, OutboxEntry>,
    watermarks: BTreeMap<String, String>,
    dead_letters: BTreeMap<String, DeadLetter>,
    next_seq: u64,
}

/// A [`LedgerEntry`] as this store keeps it: every alert PagerDuty heard of has one, so it is
/// kept small (the routes are a handful of names shared by all entries; a fingerprint is 16
/// hex digits, kept as the number).
#[derive(Debug)]
struct Remembered {
    action: super::Action,
    fingerprint: Fingerprint,
    at: SystemTime,
    route: std::sync::Arc<str>,
}

#[derive(Debug)]
enum Fingerprint {
    Hex16(u64),
    Text(Box<str>),
}

impl Remembered {
    fn new(e: LedgerEntry) -> Self {
        let fingerprint = match u64::from_str_radix(&e.fingerprint, 16) {
            Ok(n) if format!("{n:016x}") == e.fingerprint => Fingerprint::Hex16(n),
            _ => Fingerprint::Text(e.fingerprint.into_boxed_str()),
        };
        Self {
            action: e.action,
            fingerprint,
            at: e.at,
            route: crate::model::intern::intern(&e.route),
        }
    }

    fn entry(&self) -> LedgerEntry {
        LedgerEntry {
            action: self.action,
            fingerprint: match &self.fingerprint {
                Fingerprint::Hex16(n) => format!("{n:016x}"),
                Fingerprint::Text(t) => t.to_string(),
            },
            at: self.at,
            route: self.route.to_string(),
        }
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
                .map(|(k, e)| (k.to_string(), e.entry()))
                .collect(),
            outbox: s.outbox.values().cloned().collect(),
            watermarks: s.watermarks.clone(),
            dead_letters: s.dead_letters.clone(),
            next_seq: s.next_seq,
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
                        s.ledger.insert(Box::from(key), Remembered::new(entry));
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
        let before = s.ledger.len() + s.dead_letters.len();
        s.ledger
            .retain(|_, e| !(e.action == super::Action::Resolve && e.at < older_than));
        s.dead_letters.retain(|_, d| d.at >= older_than);
        Ok(before - s.ledger.len() - s.dead_letters.len())
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
        let at = UNIX_EPOCH + Duration::from_nanos(1_763_800_000_123_456_789);
        for fingerprint in ["00000000000000ff", "deadbeefdeadbeef", "FF", "not-hex", ""] {
            let e = LedgerEntry {
                action: super::super::Action::Trigger,
                fingerprint: fingerprint.to_owned(),
                at,
                route: "default".to_owned(),
            };
            assert_eq!(Remembered::new(e.clone()).entry(), e, "{fingerprint:?}");
        }
    }
}
