//! A bounded "recently updated" map: what the status page and the dead-letter retry need
//! about the last few thousand keys, without a cache's per-entry bookkeeping.
//!
//! Two generations: writes go to the current one; when it holds half the capacity it becomes
//! the previous one (the older previous one is dropped whole). Reads look in both. So the map
//! never holds more than `capacity` entries and always keeps at least the `capacity / 2` most
//! recently written keys. One insert is a hash-map insert (the delivery path writes here once
//! per event; the concurrent LRU cache this replaces cost more than that in storm profiles).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The maps keyed by alert (URIs, dedup keys: one lookup or more per event on the delivery
/// path). SipHash was a few percent of a storm's instructions; foldhash is several times
/// cheaper on short strings and still seeded at random per map, so keys chosen by a client
/// cannot be aimed at one bucket ahead of time.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
/// See [`FastMap`].
pub type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Gives back the capacity a hash map kept from its largest moment (a storm of 100,000 keys is
/// megabytes) once it is mostly empty. Amortized O(1): it shrinks only below 1/8 full.
pub fn shrink_if_sparse<K: Eq + Hash, V, S: BuildHasher>(m: &mut HashMap<K, V, S>) {
    if m.capacity() > 1024 && m.len() * 8 < m.capacity() {
        m.shrink_to(m.len() * 2);
    }
}

struct Gens<V> {
    current: FastMap<Box<str>, V>,
    previous: FastMap<Box<str>, V>,
}

/// See the module docs.
pub struct Recent<V> {
    half: usize,
    gens: Mutex<Gens<V>>,
}

impl<V: Clone> Recent<V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            half: (capacity / 2).max(1),
            gens: Mutex::new(Gens {
                current: FastMap::default(),
                previous: FastMap::default(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Gens<V>> {
        // Plain maps; a panic elsewhere cannot leave them half-updated.
        self.gens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, key: &str, value: V) {
        let mut g = self.lock();
        if let Some(v) = g.current.get_mut(key) {
            *v = value;
            return;
        }
        if g.current.len() >= self.half {
            let full = std::mem::take(&mut g.current);
            g.previous = full;
        }
        g.previous.remove(key);
        g.current.insert(Box::from(key), value);
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let g = self.lock();
        g.current.get(key).or_else(|| g.previous.get(key)).cloned()
    }

    /// Every kept value, each key once (its latest value).
    pub fn values(&self) -> Vec<V> {
        let g = self.lock();
        g.current
            .values()
            .chain(g.previous.values())
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_value_of_recent_keys_within_capacity() {
        let r = Recent::new(100);
        for i in 0..1000 {
            r.insert(&format!("k{i}"), i);
            assert!(r.len() <= 100);
        }
        for i in 950..1000 {
            assert_eq!(
                r.get(&format!("k{i}")),
                Some(i),
                "the newest half is always kept"
            );
        }
        assert_eq!(r.get("k0"), None);
        // Rewriting a key of the previous generation moves it, never duplicates it.
        r.insert("k955", -1);
        let mut v = r.values();
        v.sort_unstable();
        assert_eq!(v.iter().filter(|x| **x == -1).count(), 1);
        assert!(!v.contains(&955));
        assert_eq!(v.len(), r.len());
    }
}
