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
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Version,
        Endpoint::Login,
        Endpoint::Logout,
        Endpoint::Alerts,
        Endpoint::Alert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Version => "version",
            Endpoint::Login => "login",
            Endpoint::Logout => "logout",
            Endpoint::Alerts => "alerts",
            Endpoint::Alert => "alert",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PollLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
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

/// Metrics of the OneView client and poller. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct OneViewMetrics {
    pub polls: Family<PollLabels, Counter>,
    pub poll_duration: HistFamily<KindLabels>,
    pub alerts_in_last_poll: Gauge,
    pub alerts_malformed: Counter,
    pub request_duration: HistFamily<RequestLabels>,
    pub logins: Family<OutcomeLabels, Counter>,
    pub request_errors: Family<ReasonLabels, Counter>,
    pub session_age: Gauge<f64, AtomicU64>,
    pub last_successful_poll: Gauge<f64, AtomicU64>,
    pub open_alerts: Gauge,
    /// Full syncs discarded because a sample of the alerts they left out was still open.
    pub implausible_snapshots: Counter,
}

impl OneViewMetrics {
    /// Creates the families, registers them and creates every known series at zero.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            "bridge_oneview_polls",
            "OneView poll cycles by kind (full resync or incremental) and outcome",
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

    /// The families with their zero series, not registered anywhere (tests, tools).
    pub fn unregistered() -> Self {
        let m = Self {
            polls: Family::default(),
            poll_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            alerts_in_last_poll: Gauge::default(),
            alerts_malformed: Counter::default(),
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            logins: Family::default(),
            request_errors: Family::default(),
            session_age: Gauge::default(),
            last_successful_poll: Gauge::default(),
            open_alerts: Gauge::default(),
            implausible_snapshots: Counter::default(),
        };
        for kind in ["full", "incremental"] {
            let _ = m.poll_duration.get_or_create(&KindLabels { kind });
            for outcome in ["success", "failure"] {
                let _ = m.polls.get_or_create(&PollLabels { kind, outcome });
            }
        }
        for e in Endpoint::ALL {
            for status_class in ["2xx", "4xx", "5xx", "error"] {
                let _ = m.request_duration.get_or_create(&RequestLabels {
                    endpoint: e.as_str(),
                    status_class,
                });
            }
        }
        for outcome in ["success", "auth_failed", "error"] {
            let _ = m.logins.get_or_create(&OutcomeLabels { outcome });
        }
        for reason in REQUEST_ERROR_REASONS {
            let _ = m.request_errors.get_or_create(&ReasonLabels { reason });
        }
        m
    }

    pub(crate) fn observe_request(&self, endpoint: Endpoint, status: Option<u16>, secs: f64) {
        let status_class = match status {
            Some(200..=299) => "2xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            // 1xx/3xx are not expected from the REST API; count them with failures to answer.
            _ => "error",
        };
        self.request_duration
            .get_or_create(&RequestLabels {
                endpoint: endpoint.as_str(),
                status_class,
            })
            .observe(secs);
    }

    pub(crate) fn request_error(&self, reason: &'static str) {
        self.request_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub(crate) fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}
