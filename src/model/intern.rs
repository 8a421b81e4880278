//! One shared copy of each alert text that repeats across alerts, and of each resource alerts
//! are about.
//!
//! Most of an open alert's memory is text that OneView repeats from one alert to the next: the
//! description and corrective action of an alert type, its urgency and health category, the
//! name, URI and category of the resource it is about. The poller keeps every open alert (the
//! resolve of an alert that vanishes is built from it) and the API lists them, so with 100,000
//! open alerts each repeated text held once instead of 100,000 times is most of the difference
//! between 300 MB and under 200 MB (BENCHMARKS.md, section 2). The `associatedResource` of an
//! alert (four of those texts) is shared whole as well: a resource has many alerts, and one
//! pointer is 56 bytes less per alert than the four (section 9).
//!
//! Alerts are decoded with [`deserialize`] on those fields: a text already in the pool is
//! shared (no allocation at all when the JSON text needed no unescaping), a new one is added.
//! A pool is pruned of values no alert uses any more each time it has doubled since the last
//! prune, so it never holds more than about twice the distinct values in use, and the pruning
//! costs O(1) per insert amortized. Unique texts (alert URIs, timestamps, eTags) are not
//! interned: sharing would only add the pool's cost.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use super::AssociatedResource;
use crate::recent::FastSet;

/// Below this many values a pool is never pruned.
const PRUNE_FLOOR: usize = 4096;

struct Pool<T: ?Sized> {
    texts: FastSet<Arc<T>>,
    prune_at: usize,
}

impl<T: ?Sized + Eq + Hash> Pool<T> {
    fn new() -> Self {
        Pool {
            texts: FastSet::default(),
            prune_at: PRUNE_FLOOR,
        }
    }

    /// The pool's copy of `v`, if it has one.
    fn find<Q>(&self, v: &Q) -> Option<Arc<T>>
    where
        Arc<T>: Borrow<Q>,
        Q: ?Sized + Eq + Hash,
    {
        self.texts.get(v).cloned()
    }

    /// Adds `a` (not in the pool yet) and returns it.
    fn add(&mut self, a: Arc<T>) -> Arc<T> {
        self.texts.insert(a.clone());
        if self.texts.len() >= self.prune_at {
            // Values held only by the pool belong to alerts that are gone.
            self.texts.retain(|t| Arc::strong_count(t) > 1);
            self.prune_at = (self.texts.len() * 2).max(PRUNE_FLOOR);
            let keep = self.prune_at;
            self.texts.shrink_to(keep);
        }
        a
    }
}

static POOL: LazyLock<Mutex<Pool<str>>> = LazyLock::new(|| Mutex::new(Pool::new()));

static RESOURCES: LazyLock<Mutex<Pool<AssociatedResource>>> =
    LazyLock::new(|| Mutex::new(Pool::new()));

fn lock<T: ?Sized>(m: &'static Mutex<Pool<T>>) -> MutexGuard<'static, Pool<T>> {
    // A panic while the lock was held leaves at worst a value missing from the pool.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pool() -> MutexGuard<'static, Pool<str>> {
    lock(&POOL)
}

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    let mut p = pool();
    match p.find(s) {
        Some(a) => a,
        None => p.add(Arc::from(s)),
    }
}

/// The shared copy of `r` (whose texts are the text pool's copies when it was decoded).
pub fn resource(r: AssociatedResource) -> Arc<AssociatedResource> {
    let mut p = lock(&RESOURCES);
    match p.find(&r) {
        Some(a) => a,
        None => p.add(Arc::new(r)),
    }
}

/// Number of texts in the pool (tests and diagnostics).
pub fn pooled() -> usize {
    pool().texts.len()
}

struct OptText;

impl<'de> Visitor<'de> for OptText {
    type Value = Option<Arc<str>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(intern(s)))
    }
}

/// `deserialize_with` for an `Option<Arc<str>>` field: null or absent is `None`, a string is
/// the pool's copy. The text is read borrowed where the format allows (no allocation when the
/// pool has it).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Arc<str>>, D::Error> {
    d.deserialize_option(OptText)
}

/// `deserialize_with` for the `associatedResource` of an alert: null or absent is `None`, an
/// object is the pool's copy of that resource.
pub fn deserialize_resource<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<AssociatedResource>>, D::Error> {
    Ok(Option::<AssociatedResource>::deserialize(d)?.map(resource))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_texts_share_one_copy() {
        let a = intern("The server hardware has a warning internal health status (intern test).");
        let b = intern("The server hardware has a warning internal health status (intern test).");
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn decoding_shares_texts_and_keeps_null_and_absent_as_none() {
        #[derive(serde::Deserialize)]
        struct T {
            #[serde(default, deserialize_with = "deserialize")]
            a: Option<Arc<str>>,
            #[serde(default, deserialize_with = "deserialize")]
            b: Option<Arc<str>>,
            #[serde(default, deserialize_with = "deserialize")]
            c: Option<Arc<str>>,
        }
        let t: T = serde_json::from_str(r#"{"a": "shared \"quoted\" text", "b": null}"#).unwrap();
        let u: T = serde_json::from_str(r#"{"a": "shared \"quoted\" text"}"#).unwrap();
        assert_eq!(t.a.as_deref(), Some("shared \"quoted\" text"));
        assert!(Arc::ptr_eq(t.a.as_ref().unwrap(), u.a.as_ref().unwrap()));
        assert!(t.b.is_none() && t.c.is_none() && u.b.is_none());
        assert!(serde_json::from_str::<T>(r#"{"a": 5}"#).is_err());
    }

    #[test]
    fn texts_no_alert_holds_are_pruned() {
        // Other tests share the pool: count only this test's texts.
        let held: Vec<Arc<str>> = (0..10)
            .map(|i| intern(&format!("held by a test {i}")))
            .collect();
        for i in 0..3 * PRUNE_FLOOR {
            drop(intern(&format!("dropped at once {i}")));
        }
        let p = pool();
        let dropped = p
            .texts
            .iter()
            .filter(|t| t.starts_with("dropped at once"))
            .count();
        let kept = p
            .texts
            .iter()
            .filter(|t| t.starts_with("held by a test"))
            .count();
        drop(p);
        assert_eq!(kept, 10, "texts still in use stay");
        assert!(
            dropped < 2 * PRUNE_FLOOR,
            "unused texts are pruned as the pool grows: {dropped} left"
        );
        for h in &held {
            assert!(Arc::ptr_eq(h, &intern(h)));
        }
    }
}
