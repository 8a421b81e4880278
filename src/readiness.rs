//! Readiness: the named conditions a role needs before it can do its job, and the warnings that
//! are worth showing but must not make Kubernetes pull the pod (PagerDuty being down, for one:
//! restarting would lose the queue, not fix PagerDuty).
//!
//! Components register their conditions while the app is assembled and flip them as they go;
//! `/ready` answers 503 while any condition is unmet and from the moment shutdown begins.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;

/// Shared readiness state. Cheap to update: a short std mutex, never held across an await.
#[derive(Debug, Default)]
pub struct Readiness {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Condition name -> why it is unmet (`None` once met).
    conditions: BTreeMap<&'static str, Option<String>>,
    warnings: BTreeMap<&'static str, String>,
    shutting_down: bool,
}

/// A condition that is not met, as reported on `/ready`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unmet {
    pub condition: &'static str,
    pub reason: String,
}

/// What `/ready` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub unmet: Vec<Unmet>,
    pub warnings: Vec<Unmet>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a plain map; a panic elsewhere cannot leave it half-updated.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Declares a condition, unmet until [`Readiness::set_met`].
    pub fn require(&self, condition: &'static str, reason: impl Into<String>) {
        self.lock()
            .conditions
            .insert(condition, Some(reason.into()));
    }

    pub fn set_met(&self, condition: &'static str) {
        self.lock().conditions.insert(condition, None);
    }

    pub fn set_unmet(&self, condition: &'static str, reason: impl Into<String>) {
        self.lock()
            .conditions
            .insert(condition, Some(reason.into()));
    }

    /// Sets or clears a warning shown on `/ready` without affecting its status code.
    pub fn set_warning(&self, name: &'static str, message: Option<String>) {
        let mut g = self.lock();
        match message {
            Some(m) => g.warnings.insert(name, m),
            None => g.warnings.remove(name),
        };
    }

    /// From now on `/ready` answers 503.
    pub fn begin_shutdown(&self) {
        self.lock().shutting_down = true;
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    pub fn report(&self) -> ReadinessReport {
        let g = self.lock();
        let mut unmet: Vec<Unmet> = g
            .conditions
            .iter()
            .filter_map(|(c, r)| {
                r.as_ref().map(|r| Unmet {
                    condition: c,
                    reason: r.clone(),
                })
            })
            .collect();
        if g.shutting_down {
            unmet.insert(
                0,
                Unmet {
                    condition: "not_shutting_down",
                    reason: "the process is shutting down".to_owned(),
                },
            );
        }
        let warnings = g
            .warnings
            .iter()
            .map(|(c, r)| Unmet {
                condition: c,
                reason: r.clone(),
            })
            .collect();
        ReadinessReport {
            ready: unmet.is_empty(),
            unmet,
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_and_shutdown() {
        let r = Readiness::new();
        assert!(r.report().ready);
        r.require("oneview_session", "not logged in yet");
        assert!(!r.report().ready);
        r.set_met("oneview_session");
        r.set_warning("pagerduty", Some("unreachable".into()));
        let rep = r.report();
        assert!(rep.ready);
        assert_eq!(rep.warnings.len(), 1);
        r.begin_shutdown();
        assert!(!r.report().ready);
    }
}
