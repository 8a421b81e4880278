//! One shared copy of each alert text that repeats across alerts.
//!
//! Most of an open alert's memory is text that OneView repeats from one alert to the next: the
//! description and corrective action of an alert type, its urgency and health category, the
//! name, URI and category of the resource it is about. The poller keeps every open alert (the
//! resolve of an alert that vanishes is built from it) and the API lists them, so with 100,000
//! open alerts each repeated text held once instead of 100,000 times is most of the difference
//! between 300 MB and under 200 MB (BENCHMARKS.md, section 2).
//!
//! Alerts are decoded with [`deserialize`] on those fields: a text already in the pool is
//! shared (no allocation at all when the JSON text needed no unescaping), a new one is added.
//! The pool is pruned of texts no alert uses any more each time it has doubled since the last
//! prune, so it never holds more than about twice the distinct texts in use, and the pruning
//! costs O(1) per insert amortized. Unique texts (alert URIs, timestamps, eTags) are not
//! interned: sharing would only add the pool's cost.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Below this many texts the pool is never pruned.
const PRUNE_FLOOR: usize = 4096;

struct Pool {
    texts: HashSet<Arc<str>>,
    prune_at: usize,
}

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
    Mutex::new(Pool {
        texts: HashSet::new(),
        prune_at: PRUNE_FLOOR,
    })
});

fn pool() -> MutexGuard<'static, Pool> {
    // A panic while the lock was held leaves at worst a text missing from the pool.
    POOL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shared copy of `s`.
pub fn intern(s: &str) -> Arc<str> {
    let mut p = pool();
    if let Some(a) = p.texts.get(s) {
        return a.clone();
    }
    let a: Arc<str> = Arc::from(s);
    p.texts.insert(a.clone());
    if p.texts.len() >= p.prune_at {
        // Texts held only by the pool belong to alerts that are gone.
        p.texts.retain(|t| Arc::strong_count(t) > 1);
        p.prune_at = (p.texts.len() * 2).max(PRUNE_FLOOR);
        let keep = p.prune_at;
        p.texts.shrink_to(keep);
    }
    a
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
