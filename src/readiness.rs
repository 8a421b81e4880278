//! Readiness: the named conditions a role needs before it can do its job, and the warnings that
//! are worth showing but must not make Kubernetes pull the pod (PagerDuty being down, for one:
//! restarting would lose the queue, not fix PagerDuty).
//!
//! Components register their conditions while the app is assembled and flip them as they go;
//! `/ready` answers 503 while any condition is unmet and from the moment shutdown begins.
//!
//! Appliances are not conditions each: a bridge watching ten appliances must not be pulled
//! because one of them is unreachable (a restart would not fix it). Each poller reports its
//! appliance's state; `/ready` lists them all, is 503 (`initial_sync`) only while no appliance
//! has finished a first full sync, and names every failing appliance as a warning.

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
    /// Per appliance name, what its poller last said.
    appliances: BTreeMap<String, ApplianceReadiness>,
    shutting_down: bool,
}

/// The condition unmet while no appliance has finished its first full sync.
pub const INITIAL_SYNC: &str = "initial_sync";

/// One appliance as its poller reports it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct ApplianceReadiness {
    pub name: String,
    /// A OneView session exists.
    pub session: bool,
    /// A full sync of its alerts finished in this process.
    pub synced: bool,
    /// Why it is not being polled right now (`None` while polls succeed).
    pub problem: Option<String>,
    /// Why its message bus is down, when it has one (`scmb.enabled`); polling covers it, so it
    /// is a warning (`scmb:<name>`), never a 503.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus_problem: Option<String>,
}

/// A condition that is not met (or a warning), as reported on `/ready`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unmet {
    pub condition: String,
    pub reason: String,
}

/// What `/ready` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReadinessReport {
    pub ready: bool,
    pub unmet: Vec<Unmet>,
    pub warnings: Vec<Unmet>,
    /// Every appliance, in name order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub appliances: Vec<ApplianceReadiness>,
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

    /// The warning `name`, when set.
    pub fn warning(&self, name: &str) -> Option<String> {
        self.lock().warnings.get(name).cloned()
    }

    /// Declares an appliance: not logged in, not synced.
    pub fn register_appliance(&self, name: &str) {
        self.lock().appliances.insert(
            name.to_owned(),
            ApplianceReadiness {
                name: name.to_owned(),
                session: false,
                synced: false,
                problem: Some("not logged in to OneView yet".to_owned()),
                bus_problem: None,
            },
        );
    }

    /// Updates what an appliance's poller says about it.
    pub fn update_appliance(&self, name: &str, f: impl FnOnce(&mut ApplianceReadiness)) {
        let mut g = self.lock();
        let a = g
            .appliances
            .entry(name.to_owned())
            .or_insert_with(|| ApplianceReadiness {
                name: name.to_owned(),
                ..Default::default()
            });
        f(a);
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
                    condition: (*c).to_owned(),
                    reason: r.clone(),
                })
            })
            .collect();
        let appliances: Vec<ApplianceReadiness> = g.appliances.values().cloned().collect();
        if !appliances.is_empty() && !appliances.iter().any(|a| a.synced) {
            let why: Vec<String> = appliances
                .iter()
                .map(|a| {
                    format!(
                        "{}: {}",
                        a.name,
                        a.problem
                            .as_deref()
                            .unwrap_or("first full sync in progress")
                    )
                })
                .collect();
            unmet.push(Unmet {
                condition: INITIAL_SYNC.to_owned(),
                reason: format!(
                    "no OneView appliance has finished its first full sync of alerts yet ({})",
                    why.join("; ")
                ),
            });
            unmet.sort_by(|a, b| a.condition.cmp(&b.condition));
        }
        if g.shutting_down {
            unmet.insert(
                0,
                Unmet {
                    condition: "not_shutting_down".to_owned(),
                    reason: "the process is shutting down".to_owned(),
                },
            );
        }
        let mut warnings: Vec<Unmet> = g
            .warnings
            .iter()
            .map(|(c, r)| Unmet {
                condition: (*c).to_owned(),
                reason: r.clone(),
            })
            .collect();
        // Failing appliances are named, never a 503 once another one works: polling goes on
        // for the others and a restart would not fix an unreachable appliance.
        for a in appliances
            .iter()
            .filter(|a| a.synced || appliances.iter().any(|b| b.synced))
        {
            if let Some(p) = &a.problem {
                warnings.push(Unmet {
                    condition: format!("appliance:{}", a.name),
                    reason: p.clone(),
                });
            }
        }
        for a in &appliances {
            if let Some(p) = &a.bus_problem {
                warnings.push(Unmet {
                    condition: format!("scmb:{}", a.name),
                    reason: format!(
                        "{p} (polling at poller.interval covers the appliance meanwhile)"
                    ),
                });
            }
        }
        ReadinessReport {
            ready: unmet.is_empty(),
            unmet,
            warnings,
            appliances,
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

    #[test]
    fn one_synced_appliance_is_enough_and_failing_ones_are_named_warnings() {
        let r = Readiness::new();
        r.register_appliance("dc1");
        r.register_appliance("lab");
        let rep = r.report();
        assert!(!rep.ready);
        assert_eq!(rep.unmet[0].condition, INITIAL_SYNC);
        assert!(
            rep.unmet[0].reason.contains("dc1: not logged in"),
            "{rep:?}"
        );
        r.update_appliance("dc1", |a| {
            a.session = true;
            a.synced = true;
            a.problem = None;
        });
        r.update_appliance("lab", |a| a.problem = Some("connection refused".into()));
        let rep = r.report();
        assert!(rep.ready, "{rep:?}");
        assert_eq!(rep.warnings.len(), 1);
        assert_eq!(rep.warnings[0].condition, "appliance:lab");
        assert_eq!(rep.appliances.len(), 2);
        // The synced one failing later is a warning too, never a 503.
        r.update_appliance("dc1", |a| a.problem = Some("HTTP 503".into()));
        let rep = r.report();
        assert!(rep.ready);
        assert_eq!(rep.warnings.len(), 2);
        // A bus that is down is a warning of its own, never a 503.
        r.update_appliance("lab", |a| a.bus_problem = Some("connection refused".into()));
        let rep = r.report();
        assert!(rep.ready);
        assert_eq!(rep.warnings.len(), 3);
        assert_eq!(rep.warnings[2].condition, "scmb:lab");
    }
}
