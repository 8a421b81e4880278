//! The in-memory [`StateStore`], used when `state.path` is not set: the same semantics as the
//! file store, forgotten on restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::{
    DeadLetter, LedgerEntry, Op, OutboxEntry, Snapshot, StateError, StateStore, check_seqs,
};

/// Ordered maps behind one std `Mutex`: every operation is short and never awaits, so a std
/// mutex is cheaper than an async one and cannot be held across an `.await`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ledger: BTreeMap<String, LedgerEntry>,
    outbox: BTreeMap<u64, OutboxEntry>,
    watermarks: BTreeMap<String, String>,
    dead_letters: BTreeMap<String, DeadLetter>,
    next_seq: u64,
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
            ledger: s.ledger.clone(),
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
                        s.ledger.insert(key.to_owned(), entry);
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
                    s.ledger.remove(key);
                    s.dead_letters.remove(key);
                }
            }
        }
        s.next_seq = next_seq;
        Ok(())
    }

    fn prune(&self, older_than: SystemTime) -> Result<usize, StateError> {
        let mut s = self.lock();
        let before = s.ledger.len() + s.dead_letters.len();
        s.ledger.retain(|_, e| !e.prunable(older_than));
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
