//! The intake policy: what PagerDuty must hear next about one alert, as a pure function of what
//! it holds for the alert, what is still queued for it, and the change that just arrived. No I/O,
//! no clock, no queue: the dispatcher turns a [`Decision`] into outbox writes and sends, and the
//! table test below is the policy's specification.
//!
//! PagerDuty scopes a `dedup_key` to the integration (routing key) it arrived on. So:
//! - a new incident opens on the route the alert's current fields pick;
//! - every later event of an open incident goes to the route that holds it, whatever the alert
//!   looks like now (a clear arrives as severity `OK`, which no `Critical` route matches);
//! - when an update moves an open alert to another route (escalation, de-escalation), the old
//!   incident is resolved and a new one triggered, in that order;
//! - an event for a route that is no longer configured is an orphan: the dispatcher keeps it as
//!   a dead letter naming the route, never sends it to the default.
//!
//! The queue of a key is replaced as a whole: the decision says what the not-yet-sent part must
//! be, and the dispatcher keeps what already matches. Events read back from the outbox after a
//! restart ("resumed") may have been accepted just before the crash, so they count as held when
//! deciding and are kept unless the decision's first event supersedes them on their route.
//!
//! A silence (maintenance window, [`crate::pipeline::silence`]) that holds the alert turns every
//! trigger of the plan into nothing (and the resolve of a route change with it: the alert is
//! still open, so its incident stays as it is); a resolve of an open incident still flows. A
//! clear of an alert whose trigger a silence withheld sends nothing when nobody knows of an
//! incident: nobody was paged. The dispatcher evaluates the alert again when the silence ends.

use std::sync::Arc;

use crate::pagerduty::event::Action;

/// What PagerDuty holds for one alert, as far as the bridge knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// An open incident on `route`, last triggered with this fingerprint.
    Open { route: Arc<str>, fingerprint: u64 },
    /// Nothing open: the bridge saw its resolve accepted (or never sent anything).
    Closed,
    /// The bridge cannot tell (no state from an earlier run).
    Unknown,
}

impl Holding {
    /// What PagerDuty holds once `step` is accepted.
    pub fn after(&self, step: &Step) -> Holding {
        match (step.action, self) {
            (Action::Trigger, _) => Holding::Open {
                route: step.route.clone(),
                fingerprint: step.fingerprint,
            },
            (Action::Resolve, Holding::Open { route, .. }) if *route == step.route => {
                Holding::Closed
            }
            // A resolve on another route leaves this one open; one resolve of an unknown key
            // does not say that no other integration holds it.
            _ => self.clone(),
        }
    }
}

/// One event to send: an action on a route, for the alert state with this fingerprint.
#[derive(Debug, Clone)]
pub struct Step {
    pub action: Action,
    pub route: Arc<str>,
    /// Severity and description as PagerDuty sees them (see `event::fingerprint`).
    pub fingerprint: u64,
}

impl PartialEq for Step {
    /// A resolve closes the incident whatever the alert's fields; a trigger differs by content.
    fn eq(&self, other: &Self) -> bool {
        self.action == other.action
            && self.route == other.route
            && (self.action != Action::Trigger || self.fingerprint == other.fingerprint)
    }
}

impl Step {
    pub fn trigger(route: &Arc<str>, fingerprint: u64) -> Self {
        Self {
            action: Action::Trigger,
            route: route.clone(),
            fingerprint,
        }
    }

    pub fn resolve(route: &Arc<str>, fingerprint: u64) -> Self {
        Self {
            action: Action::Resolve,
            route: route.clone(),
            fingerprint,
        }
    }
}

/// An event of the key's queue that has not been sent yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub step: Step,
    /// Read back from the outbox at startup: PagerDuty may already have accepted it.
    pub resumed: bool,
}

/// The change that arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The alert is open (raised or updated); `route` is where its current fields route it.
    Open { route: Arc<str>, fingerprint: u64 },
    /// The alert cleared (state `Cleared`, severity `OK`, unwatched, or gone).
    Cleared { fingerprint: u64 },
}

/// The routes the configuration has now.
pub trait Routes {
    /// Whether a route of this name is configured.
    fn configured(&self, route: &str) -> bool;
    /// One route per routing key, default first: where a resolve goes when nobody knows which
    /// integration holds the incident.
    fn distinct(&self) -> Vec<Arc<str>>;
}

/// Why the decision is what it is (logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// PagerDuty has (or will have) exactly this: nothing to send.
    Unchanged,
    /// A new incident.
    New,
    /// The open incident's content changed: triggered again on its route.
    Update,
    /// The alert moved to another route: the old incident resolved, a new one triggered.
    RouteChange,
    /// The open incident resolved on its route.
    Resolve,
    /// PagerDuty already resolved it (or never had it from us).
    AlreadyResolved,
    /// The alert cleared before its first trigger was sent: nobody was paged, nothing is sent.
    NeverSent,
    /// Nobody knows which integration holds it: a resolve to every routing key (a resolve for
    /// a key PagerDuty does not have is answered 202 and dropped).
    ResolveUnknown,
    /// A silence holds the alert: what would have been sent (a trigger, an update, a route
    /// change) is not, and not-yet-sent events of this process are cancelled.
    Silenced,
    /// The alert is flapping and cleared: its incident stays open until it settles.
    FlapHeld,
}

/// Whether flap damping holds the alert's resolve, as the dispatcher found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flap {
    /// Not flapping, off, or settled: the plain policy.
    None,
    /// Flapping and cleared less than `flap.settle` ago: a resolve of an open incident waits.
    HoldsResolve,
}

/// Whether a silence holds the alert, as the dispatcher found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// No silence: the plain policy.
    None,
    /// For a raise or update: an active silence matches the alert now. For a clear: a silence
    /// held the alert at its last raise or update (so its trigger may never have been sent).
    Holds,
}

/// What PagerDuty must hear next about one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What the not-yet-sent part of the key's queue must be, in order.
    pub queue: Vec<Step>,
    /// Events for a route that is no longer configured: dead letters, never sent.
    pub orphans: Vec<Step>,
    pub why: Why,
}

/// The policy. `confirmed` is what PagerDuty holds once the event in flight (if any) is
/// answered; `queued` the events not sent yet, oldest first.
pub fn decide(
    incoming: &Incoming,
    confirmed: &Holding,
    queued: &[Queued],
    routes: &dyn Routes,
    silence: Silence,
    flap: Flap,
) -> Decision {
    let resumed: Vec<&Step> = queued
        .iter()
        .take_while(|q| q.resumed)
        .map(|q| &q.step)
        .collect();
    let held = resumed.iter().fold(confirmed.clone(), |h, s| h.after(s));
    let (plan, why) = match (incoming, &held) {
        (Incoming::Open { fingerprint, .. }, Holding::Open { fingerprint: f, .. })
            if f == fingerprint =>
        {
            (Vec::new(), Why::Unchanged)
        }
        (Incoming::Open { route, fingerprint }, Holding::Open { route: r, .. }) if r == route => {
            (vec![Step::trigger(r, *fingerprint)], Why::Update)
        }
        (Incoming::Open { route, fingerprint }, Holding::Open { route: r, .. }) => (
            vec![
                Step::resolve(r, *fingerprint),
                Step::trigger(route, *fingerprint),
            ],
            Why::RouteChange,
        ),
        (Incoming::Open { route, fingerprint }, _) => {
            (vec![Step::trigger(route, *fingerprint)], Why::New)
        }
        (Incoming::Cleared { fingerprint }, Holding::Open { route, .. }) => {
            (vec![Step::resolve(route, *fingerprint)], Why::Resolve)
        }
        (Incoming::Cleared { .. }, Holding::Closed) => (Vec::new(), Why::AlreadyResolved),
        (Incoming::Cleared { fingerprint }, Holding::Unknown) => {
            // Only triggers this process queued (and has not sent) stand for the key: the
            // alert came and went between two looks, and nobody was paged.
            let fresh_trigger = queued
                .iter()
                .any(|q| !q.resumed && q.step.action == Action::Trigger);
            if fresh_trigger {
                (Vec::new(), Why::NeverSent)
            } else {
                (
                    routes
                        .distinct()
                        .iter()
                        .map(|r| Step::resolve(r, *fingerprint))
                        .collect(),
                    Why::ResolveUnknown,
                )
            }
        }
    };
    let (plan, why) = match (silence, incoming, why) {
        (Silence::Holds, Incoming::Open { .. }, Why::New | Why::Update | Why::RouteChange) => {
            (Vec::new(), Why::Silenced)
        }
        // The trigger was withheld and no incident is known: nobody was paged.
        (Silence::Holds, Incoming::Cleared { .. }, Why::ResolveUnknown) => {
            (Vec::new(), Why::NeverSent)
        }
        _ => (plan, why),
    };
    let (plan, why) = match (flap, why) {
        (Flap::HoldsResolve, Why::Resolve) => (Vec::new(), Why::FlapHeld),
        _ => (plan, why),
    };
    // A resumed event stays unless the first planned event is on its route: a resolve or a
    // newer trigger there makes it moot whether PagerDuty heard it.
    let superseded =
        matches!((plan.first(), resumed.last()), (Some(p), Some(s)) if p.route == s.route);
    let mut queue: Vec<Step> = if superseded {
        Vec::new()
    } else {
        resumed.into_iter().cloned().collect()
    };
    let mut orphans = Vec::new();
    for step in plan {
        if routes.configured(&step.route) {
            queue.push(step);
        } else {
            orphans.push(step);
        }
    }
    Decision {
        queue,
        orphans,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Configured(&'static [&'static str]);

    impl Routes for Configured {
        fn configured(&self, route: &str) -> bool {
            self.0.contains(&route)
        }
        fn distinct(&self) -> Vec<Arc<str>> {
            self.0.iter().map(|r| Arc::from(*r)).collect()
        }
    }

    const ROUTES: Configured = Configured(&["default", "critical"]);

    fn r(name: &str) -> Arc<str> {
        Arc::from(name)
    }
    fn open(route: &str, fp: u64) -> Holding {
        Holding::Open {
            route: r(route),
            fingerprint: fp,
        }
    }
    fn raised(route: &str, fp: u64) -> Incoming {
        Incoming::Open {
            route: r(route),
            fingerprint: fp,
        }
    }
    const CLEARED: Incoming = Incoming::Cleared { fingerprint: 9 };
    fn t(route: &str, fp: u64) -> Step {
        Step::trigger(&r(route), fp)
    }
    fn res(route: &str) -> Step {
        Step::resolve(&r(route), 9)
    }
    fn fresh(s: Step) -> Queued {
        Queued {
            step: s,
            resumed: false,
        }
    }
    fn resumed(s: Step) -> Queued {
        Queued {
            step: s,
            resumed: true,
        }
    }

    /// The policy, one row per situation: (what arrives, what PagerDuty holds, what is queued)
    /// -> (the queue, the orphans, why).
    #[test]
    fn intake_table() {
        type Row = (
            &'static str,
            Incoming,
            Holding,
            Vec<Queued>,
            Vec<Step>,
            Vec<Step>,
            Why,
        );
        let rows: Vec<Row> = vec![
            // Raise and update.
            (
                "new alert",
                raised("default", 1),
                Holding::Unknown,
                vec![],
                vec![t("default", 1)],
                vec![],
                Why::New,
            ),
            (
                "new after a resolve",
                raised("critical", 1),
                Holding::Closed,
                vec![],
                vec![t("critical", 1)],
                vec![],
                Why::New,
            ),
            (
                "seen again, unchanged",
                raised("default", 1),
                open("default", 1),
                vec![],
                vec![],
                vec![],
                Why::Unchanged,
            ),
            (
                "unchanged although routes now differ: stays where it is",
                raised("critical", 1),
                open("default", 1),
                vec![],
                vec![],
                vec![],
                Why::Unchanged,
            ),
            (
                "description changed",
                raised("default", 2),
                open("default", 1),
                vec![],
                vec![t("default", 2)],
                vec![],
                Why::Update,
            ),
            (
                "queued update replaced by a newer one",
                raised("default", 3),
                open("default", 1),
                vec![fresh(t("default", 2))],
                vec![t("default", 3)],
                vec![],
                Why::Update,
            ),
            (
                "queued update taken back: the alert is as PagerDuty has it",
                raised("default", 1),
                open("default", 1),
                vec![fresh(t("default", 2))],
                vec![],
                vec![],
                Why::Unchanged,
            ),
            (
                "queued trigger of a new alert, seen again",
                raised("default", 1),
                Holding::Unknown,
                vec![fresh(t("default", 1))],
                vec![t("default", 1)],
                vec![],
                Why::New,
            ),
            // Route changes.
            (
                "escalation: warning on default becomes critical",
                raised("critical", 2),
                open("default", 1),
                vec![],
                vec![res("default"), t("critical", 2)],
                vec![],
                Why::RouteChange,
            ),
            (
                "de-escalation",
                raised("default", 3),
                open("critical", 2),
                vec![],
                vec![res("critical"), t("default", 3)],
                vec![],
                Why::RouteChange,
            ),
            (
                "escalation while its update waits",
                raised("critical", 3),
                open("default", 1),
                vec![fresh(t("default", 2))],
                vec![res("default"), t("critical", 3)],
                vec![],
                Why::RouteChange,
            ),
            (
                "escalation, holding route removed from the config",
                raised("critical", 2),
                open("storage", 1),
                vec![],
                vec![t("critical", 2)],
                vec![res("storage")],
                Why::RouteChange,
            ),
            // Clears go where the incident is, never where the cleared alert would route.
            (
                "cleared: resolve on the holding route",
                CLEARED,
                open("critical", 1),
                vec![],
                vec![res("critical")],
                vec![],
                Why::Resolve,
            ),
            (
                "cleared while an update waits",
                CLEARED,
                open("critical", 1),
                vec![fresh(t("critical", 2))],
                vec![res("critical")],
                vec![],
                Why::Resolve,
            ),
            (
                "cleared, holding route removed",
                CLEARED,
                open("storage", 1),
                vec![],
                vec![],
                vec![res("storage")],
                Why::Resolve,
            ),
            (
                "cleared again",
                CLEARED,
                Holding::Closed,
                vec![],
                vec![],
                vec![],
                Why::AlreadyResolved,
            ),
            (
                "resolve already queued",
                CLEARED,
                open("default", 1),
                vec![fresh(res("default"))],
                vec![res("default")],
                vec![],
                Why::Resolve,
            ),
            (
                "re-raised while its resolve waits",
                raised("default", 1),
                open("default", 1),
                vec![fresh(res("default"))],
                vec![],
                vec![],
                Why::Unchanged,
            ),
            (
                "cleared before its first trigger went out",
                CLEARED,
                Holding::Unknown,
                vec![fresh(t("critical", 1))],
                vec![],
                vec![],
                Why::NeverSent,
            ),
            (
                "cleared, unknown key: every routing key hears the resolve",
                CLEARED,
                Holding::Unknown,
                vec![],
                vec![res("default"), res("critical")],
                vec![],
                Why::ResolveUnknown,
            ),
            // Events read back from the outbox.
            (
                "resumed trigger, seen again unchanged: kept (maybe never heard)",
                raised("critical", 1),
                Holding::Unknown,
                vec![resumed(t("critical", 1))],
                vec![t("critical", 1)],
                vec![],
                Why::Unchanged,
            ),
            (
                "resumed trigger, cleared: the resolve supersedes it",
                CLEARED,
                Holding::Unknown,
                vec![resumed(t("critical", 1))],
                vec![res("critical")],
                vec![],
                Why::Resolve,
            ),
            (
                "resumed trigger, changed: the newer trigger supersedes it",
                raised("critical", 2),
                Holding::Unknown,
                vec![resumed(t("critical", 1))],
                vec![t("critical", 2)],
                vec![],
                Why::Update,
            ),
            (
                "resumed trigger, escalated",
                raised("critical", 2),
                Holding::Unknown,
                vec![resumed(t("default", 1))],
                vec![res("default"), t("critical", 2)],
                vec![],
                Why::RouteChange,
            ),
            (
                "resumed resolve, cleared again: kept",
                CLEARED,
                open("default", 1),
                vec![resumed(res("default"))],
                vec![res("default")],
                vec![],
                Why::AlreadyResolved,
            ),
            (
                "resumed resolve, raised on another route: the old one still closes",
                raised("critical", 1),
                open("default", 1),
                vec![resumed(res("default"))],
                vec![res("default"), t("critical", 1)],
                vec![],
                Why::New,
            ),
        ];
        for (name, incoming, confirmed, queued, queue, orphans, why) in rows {
            let d = decide(
                &incoming,
                &confirmed,
                &queued,
                &ROUTES,
                Silence::None,
                Flap::None,
            );
            assert_eq!(
                d,
                Decision {
                    queue,
                    orphans,
                    why
                },
                "{name}"
            );
        }
    }

    #[test]
    fn a_trigger_in_flight_counts_as_held() {
        // The dispatcher folds the event in flight into `confirmed` with `Holding::after`.
        let in_flight = t("critical", 1);
        let confirmed = Holding::Unknown.after(&in_flight);
        let d = decide(
            &CLEARED,
            &confirmed,
            &[],
            &ROUTES,
            Silence::None,
            Flap::None,
        );
        assert_eq!(d.queue, vec![res("critical")]);
        let closing = Holding::Open {
            route: r("critical"),
            fingerprint: 1,
        }
        .after(&res("critical"));
        assert_eq!(closing, Holding::Closed);
        assert_eq!(
            open("default", 1).after(&res("critical")),
            open("default", 1),
            "a resolve on another integration leaves the incident open"
        );
    }

    /// The silence rows: (what arrives, what PagerDuty holds, what is queued) -> (the queue,
    /// why) while a silence holds the alert.
    #[test]
    fn silence_table() {
        type Row = (&'static str, Incoming, Holding, Vec<Queued>, Vec<Step>, Why);
        let rows: Vec<Row> = vec![
            (
                "raised while silenced: no page",
                raised("default", 1),
                Holding::Unknown,
                vec![],
                vec![],
                Why::Silenced,
            ),
            (
                "raised after a resolve while silenced: no page",
                raised("default", 1),
                Holding::Closed,
                vec![],
                vec![],
                Why::Silenced,
            ),
            (
                "silence starts while its trigger waits: the trigger is cancelled",
                raised("default", 1),
                Holding::Unknown,
                vec![fresh(t("default", 1))],
                vec![],
                Why::Silenced,
            ),
            (
                "update of an open incident while silenced: not sent",
                raised("default", 2),
                open("default", 1),
                vec![],
                vec![],
                Why::Silenced,
            ),
            (
                "route change while silenced: the old incident stays, nothing sent",
                raised("critical", 2),
                open("default", 1),
                vec![],
                vec![],
                Why::Silenced,
            ),
            (
                "unchanged open incident: nothing to suppress",
                raised("default", 1),
                open("default", 1),
                vec![],
                vec![],
                Why::Unchanged,
            ),
            (
                "a resumed trigger may have been accepted: kept",
                raised("default", 1),
                Holding::Unknown,
                vec![resumed(t("default", 1))],
                vec![t("default", 1)],
                Why::Unchanged,
            ),
            (
                "resolve of an open incident flows while silenced",
                CLEARED,
                open("critical", 1),
                vec![],
                vec![res("critical")],
                Why::Resolve,
            ),
            (
                "cleared after its trigger was withheld: nobody was paged",
                CLEARED,
                Holding::Unknown,
                vec![],
                vec![],
                Why::NeverSent,
            ),
            (
                "cleared after a resolve: nothing",
                CLEARED,
                Holding::Closed,
                vec![],
                vec![],
                Why::AlreadyResolved,
            ),
        ];
        for (name, incoming, confirmed, queued, queue, why) in rows {
            let d = decide(
                &incoming,
                &confirmed,
                &queued,
                &ROUTES,
                Silence::Holds,
                Flap::None,
            );
            assert_eq!(
                d,
                Decision {
                    queue,
                    orphans: vec![],
                    why
                },
                "{name}"
            );
        }
    }

    /// The flap-damping rows: (what arrives, what PagerDuty holds, what is queued, silence,
    /// flap) -> (the queue, why). Fingerprint 11 is the alert as it was first triggered, 12
    /// the same alert with `flapping` folded in (the dispatcher does that while it flaps).
    #[test]
    fn flap_table() {
        type Row = (
            &'static str,
            Incoming,
            Holding,
            Vec<Queued>,
            Silence,
            Flap,
            Vec<Step>,
            Why,
        );
        let rows: Vec<Row> = vec![
            (
                "cleared while flapping: the incident stays open",
                CLEARED,
                open("critical", 11),
                vec![],
                Silence::None,
                Flap::HoldsResolve,
                vec![],
                Why::FlapHeld,
            ),
            (
                "settled: resolved once",
                CLEARED,
                open("critical", 12),
                vec![],
                Silence::None,
                Flap::None,
                vec![res("critical")],
                Why::Resolve,
            ),
            (
                "first re-raise while flapping: one update carrying flapping",
                raised("critical", 12),
                open("critical", 11),
                vec![],
                Silence::None,
                Flap::None,
                vec![t("critical", 12)],
                Why::Update,
            ),
            (
                "later re-raises while flapping: no re-trigger",
                raised("critical", 12),
                open("critical", 12),
                vec![],
                Silence::None,
                Flap::None,
                vec![],
                Why::Unchanged,
            ),
            (
                "cleared while its flapping update waits: the update is dropped, the incident stays",
                CLEARED,
                open("critical", 11),
                vec![fresh(t("critical", 12))],
                Silence::None,
                Flap::HoldsResolve,
                vec![],
                Why::FlapHeld,
            ),
            (
                "severity moved while flapping: a route change still resolves and triggers",
                raised("default", 13),
                open("critical", 12),
                vec![],
                Silence::None,
                Flap::None,
                vec![res("critical"), t("default", 13)],
                Why::RouteChange,
            ),
            (
                "flapping into a resolve already accepted: nothing held, nothing sent",
                CLEARED,
                Holding::Closed,
                vec![],
                Silence::None,
                Flap::HoldsResolve,
                vec![],
                Why::AlreadyResolved,
            ),
            (
                "no incident known (after a restart): the resolve is not held",
                CLEARED,
                Holding::Unknown,
                vec![],
                Silence::None,
                Flap::HoldsResolve,
                vec![res("default"), res("critical")],
                Why::ResolveUnknown,
            ),
            (
                "silenced and flapping, cleared: held like any flapping resolve",
                CLEARED,
                open("critical", 11),
                vec![],
                Silence::Holds,
                Flap::HoldsResolve,
                vec![],
                Why::FlapHeld,
            ),
            (
                "silenced and flapping, re-raised: the silence withholds the update",
                raised("critical", 12),
                open("critical", 11),
                vec![],
                Silence::Holds,
                Flap::None,
                vec![],
                Why::Silenced,
            ),
            (
                "a resumed resolve may have been accepted: kept while flapping",
                CLEARED,
                open("critical", 11),
                vec![resumed(res("critical"))],
                Silence::None,
                Flap::HoldsResolve,
                vec![res("critical")],
                Why::AlreadyResolved,
            ),
        ];
        for (name, incoming, confirmed, queued, silence, flap, queue, why) in rows {
            let d = decide(&incoming, &confirmed, &queued, &ROUTES, silence, flap);
            assert_eq!(
                d,
                Decision {
                    queue,
                    orphans: vec![],
                    why
                },
                "{name}"
            );
        }
    }
}
