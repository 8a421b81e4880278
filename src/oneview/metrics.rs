//! The OneView side's metric families. Names are part of the bridge's interface (dashboards and
//! alert rules use them); every label value the code can produce is created at zero here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::metrics::latency_histogram;

/// The OneView endpoints the bridge calls, as a bounded label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Version,
    Login,
    Logout,
    Alerts,
    Alert,
    /// The SCMB certificates (`/rest/certificates/...`) and the task that generates the keypair.
    Certificates,
    /// `/rest/tasks` (change events, [`crate::oneview::tasks`]).
    Tasks,
}

impl Endpoint {
    pub const ALL: [Endpoint; 7] = [
        Endpoint::Version,
        Endpoint::Login,
        Endpoint::Logout,
        Endpoint::Alerts,
        Endpoint::Alert,
        Endpoint::Certificates,
        Endpoint::Tasks,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Version => "version",
            Endpoint::Login => "login",
            Endpoint::Logout => "logout",
            Endpoint::Alerts => "alerts",
            Endpoint::Alert => "alert",
            Endpoint::Certificates => "certificates",
            Endpoint::Tasks => "tasks",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplianceLabels {
    pub appliance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub appliance: String,
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub appliance: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub appliance: String,
    pub endpoint: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub appliance: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub appliance: String,
    pub reason: &'static str,
}

/// Values of the `reason` label of `bridge_oneview_request_errors_total`
/// ([`crate::oneview::OneViewError::reason`]).
pub const REQUEST_ERROR_REASONS: [&str; 6] = [
    "connect",
    "timeout",
    "certificate",
    "tls",
    "too_large",
    "foreign_link",
];

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

const POLL_KINDS: [&str; 2] = ["full", "incremental"];
const POLL_OUTCOMES: [&str; 2] = ["success", "failure"];
const STATUS_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "error"];
const LOGIN_OUTCOMES: [&str; 3] = ["success", "auth_failed", "error"];

/// The `bridge_oneview_*` families, registered once and shared by every appliance; each series
/// carries the `appliance` label (bounded by the configuration).
#[derive(Clone)]
pub struct OneViewFamilies {
    polls: Family<PollLabels, Counter>,
    poll_duration: HistFamily<KindLabels>,
    alerts_in_last_poll: Family<ApplianceLabels, Gauge>,
    alerts_malformed: Family<ApplianceLabels, Counter>,
    request_duration: HistFamily<RequestLabels>,
    logins: Family<OutcomeLabels, Counter>,
    request_errors: Family<ReasonLabels, Counter>,
    session_age: Family<ApplianceLabels, Gauge<f64, AtomicU64>>,
    last_successful_poll: Family<ApplianceLabels, Gauge<f64, AtomicU64>>,
    open_alerts: Family<ApplianceLabels, Gauge>,
    implausible_snapshots: Family<ApplianceLabels, Counter>,
}

impl Default for OneViewFamilies {
    fn default() -> Self {
        Self {
            polls: Family::default(),
            poll_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            alerts_in_last_poll: Family::default(),
            alerts_malformed: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            logins: Family::default(),
            request_errors: Family::default(),
            session_age: Family::default(),
            last_successful_poll: Family::default(),
            open_alerts: Family::default(),
            implausible_snapshots: Family::default(),
        }
    }
}

impl OneViewFamilies {
    /// Creates the families and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "bridge_oneview_polls",
            "OneView poll cycles by appliance, kind (full resync or incremental) and outcome",
            m.polls.clone(),
        );
        registry.register(
            "bridge_oneview_poll_duration_seconds",
            "Time a OneView poll cycle took, all pages and change emission included",
            m.poll_duration.clone(),
        );
        registry.register(
            "bridge_oneview_alerts_in_last_poll",
            "Alerts (collection members) received in the last poll cycle",
            m.alerts_in_last_poll.clone(),
        );
        registry.register(
            "bridge_oneview_alerts_malformed",
            "Alerts skipped because they could not be parsed",
            m.alerts_malformed.clone(),
        );
        registry.register(
            "bridge_oneview_request_duration_seconds",
            "Time of a OneView REST request, by endpoint and status class (error: no HTTP answer)",
            m.request_duration.clone(),
        );
        registry.register(
            "bridge_oneview_logins",
            "Logins to OneView by outcome",
            m.logins.clone(),
        );
        registry.register(
            "bridge_oneview_request_errors",
            "OneView requests that got no usable answer, by reason: connect, timeout, certificate (the appliance's TLS certificate was refused), tls (other handshake failures), too_large (body over oneview.max_response_bytes), foreign_link (a link off the appliance, not followed)",
            m.request_errors.clone(),
        );
        registry.register(
            "bridge_oneview_session_age_seconds",
            "Age of the current OneView session (0 when not logged in)",
            m.session_age.clone(),
        );
        registry.register(
            "bridge_oneview_last_successful_poll_timestamp_seconds",
            "Unix time of the last successful OneView poll cycle (0 before the first)",
            m.last_successful_poll.clone(),
        );
        registry.register(
            "bridge_oneview_open_alerts",
            "Watched open alerts the poller currently tracks",
            m.open_alerts.clone(),
        );
        registry.register(
            "bridge_oneview_implausible_snapshots",
            "Full syncs discarded (nothing resolved) because alerts they left out were still open when checked one by one",
            m.implausible_snapshots.clone(),
        );
        m
    }

    /// The series of one appliance, every one created at zero.
    pub fn appliance(&self, name: &str) -> OneViewMetrics {
        let app = || name.to_owned();
        let one = || ApplianceLabels { appliance: app() };
        let polls = POLL_KINDS.map(|kind| {
            POLL_OUTCOMES.map(|outcome| {
                self.polls
                    .get_or_create(&PollLabels {
                        appliance: app(),
                        kind,
                        outcome,
                    })
                    .clone()
            })
        });
        let poll_duration = POLL_KINDS.map(|kind| {
            self.poll_duration
                .get_or_create(&KindLabels {
                    appliance: app(),
                    kind,
                })
                .clone()
        });
        let request_duration = Endpoint::ALL.map(|e| {
            STATUS_CLASSES.map(|status_class| {
                self.request_duration
                    .get_or_create(&RequestLabels {
                        appliance: app(),
                        endpoint: e.as_str(),
                        status_class,
                    })
                    .clone()
            })
        });
        let logins = LOGIN_OUTCOMES.map(|outcome| {
            self.logins
                .get_or_create(&OutcomeLabels {
                    appliance: app(),
                    outcome,
                })
                .clone()
        });
        let request_errors = REQUEST_ERROR_REASONS.map(|reason| {
            self.request_errors
                .get_or_create(&ReasonLabels {
                    appliance: app(),
                    reason,
                })
                .clone()
        });
        OneViewMetrics {
            polls,
            poll_duration,
            alerts_in_last_poll: self.alerts_in_last_poll.get_or_create(&one()).clone(),
            alerts_malformed: self.alerts_malformed.get_or_create(&one()).clone(),
            request_duration,
            logins,
            request_errors,
            session_age: self.session_age.get_or_create(&one()).clone(),
            last_successful_poll: self.last_successful_poll.get_or_create(&one()).clone(),
            open_alerts: self.open_alerts.get_or_create(&one()).clone(),
            implausible_snapshots: self.implausible_snapshots.get_or_create(&one()).clone(),
        }
    }
}

/// Metrics of one appliance's client and poller: its series of the shared families, resolved
/// once (no label hashing on the request path). Cheap to clone (shared handles).
#[derive(Clone)]
pub struct OneViewMetrics {
    polls: [[Counter; 2]; 2],
    poll_duration: [Histogram; 2],
    pub alerts_in_last_poll: Gauge,
    pub alerts_malformed: Counter,
    request_duration: [[Histogram; 4]; Endpoint::ALL.len()],
    logins: [Counter; 3],
    request_errors: [Counter; 6],
    pub session_age: Gauge<f64, AtomicU64>,
    pub last_successful_poll: Gauge<f64, AtomicU64>,
    pub open_alerts: Gauge,
    /// Full syncs discarded because a sample of the alerts they left out was still open.
    pub implausible_snapshots: Counter,
}

fn index_of(set: &[&str], v: &str) -> usize {
    set.iter().position(|s| *s == v).unwrap_or(set.len() - 1)
}

impl OneViewMetrics {
    /// A single appliance's metrics, registered (one-appliance tools and tests).
    pub fn register(registry: &mut Registry, appliance: &str) -> Self {
        OneViewFamilies::register(registry).appliance(appliance)
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        OneViewFamilies::default().appliance("unregistered")
    }

    pub(crate) fn poll(&self, kind: &str, outcome: &str) -> &Counter {
        &self.polls[index_of(&POLL_KINDS, kind)][index_of(&POLL_OUTCOMES, outcome)]
    }

    pub(crate) fn poll_duration(&self, kind: &str) -> &Histogram {
        &self.poll_duration[index_of(&POLL_KINDS, kind)]
    }

    pub(crate) fn observe_request(&self, endpoint: Endpoint, status: Option<u16>, secs: f64) {
        let status_class = match status {
            Some(200..=299) => 0,
            Some(400..=499) => 1,
            Some(500..=599) => 2,
            // 1xx/3xx are not expected from the REST API; count them with failures to answer.
            _ => 3,
        };
        let e = Endpoint::ALL
            .iter()
            .position(|x| *x == endpoint)
            .unwrap_or(0);
        self.request_duration[e][status_class].observe(secs);
    }

    pub(crate) fn request_error(&self, reason: &'static str) {
        self.request_errors[index_of(&REQUEST_ERROR_REASONS, reason)].inc();
    }

    pub(crate) fn login(&self, outcome: &'static str) {
        self.logins[index_of(&LOGIN_OUTCOMES, outcome)].inc();
    }
}
