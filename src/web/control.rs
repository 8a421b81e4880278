//! [`Control`]: what the web handlers ask of the poller, the single writer of delivery state.
//!
//! In roles `all` and `poller` it is [`Local`] (in-process: the pipeline's [`Incidents`] (open
//! alerts and which route holds their incident), the delivery queue and status, the poll
//! trigger, the OneView client for write-backs). In role
//! `web` it is [`Remote`], an HTTP client of the poller's internal API (`/internal/v1/...`,
//! bearer `web.poller_token`), which [`internal_routes`] serves on the poller. Both speak the
//! same JSON types, so a web replica's answer is the poller's answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::config::Config;
use crate::http::ApiError;
use crate::model::{Alert, AlertChange, AlertKey, AlertState, Appliance, ChangeKind};
use crate::oneview::{AlertUpdate, OneViewClient, OneViewError, PollerStatus, SessionState};
use crate::pagerduty::DeliveryStatus;
use crate::pagerduty::event::dedup_key;
use crate::pipeline::Incidents;
use crate::secret::Secret;
use crate::web::auth::ApiTokens;

/// Why the poller could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the poller is unreachable at {url}: {detail}; retry later, and check that the poller runs, that this replica reaches it there (web.poller_url, or the poller's lease.advertise_url with state.backend postgres) and that web.poller_token matches its token"
    )]
    Unreachable { url: String, detail: String },
    #[error("{message}")]
    Upstream {
        status: u16,
        error: String,
        message: String,
        /// The request field a validation error names.
        field: Option<String>,
    },
    /// The request is well-formed but wrong (a silence that cannot be): 422 naming the field.
    #[error("{0}")]
    Invalid(crate::pipeline::silence::SilenceError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// No poller leads at this moment (a handover): answered 503 with `Retry-After`.
    #[error("{0}")]
    Handover(String),
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Unreachable { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "poller_unavailable",
                e.to_string(),
            ),
            ControlError::Upstream {
                status,
                ref error,
                ref message,
                ref field,
            } => {
                let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                let error: &'static str = match error.as_str() {
                    "not_found" => "not_found",
                    "unauthorized" => "poller_unauthorized",
                    "forbidden" => "poller_forbidden",
                    "bad_request" => "bad_request",
                    "queue_full" => "queue_full",
                    INVALID_SILENCE => INVALID_SILENCE,
                    NOT_LEADER => "leader_handover",
                    _ => "poller_error",
                };
                // A web replica whose token the poller refuses is misconfigured, not the caller.
                let code = if matches!(code, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    code
                };
                let e = ApiError::new(code, error, format!("poller: {message}"));
                match field {
                    Some(f) => e.field(f.clone()),
                    None => e,
                }
            }
            ControlError::Invalid(e) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                INVALID_SILENCE,
                e.to_string(),
            )
            .field(e.field),
            ControlError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            ControlError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            ControlError::Handover(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "leader_handover", m).retry_after(1)
            }
        }
    }
}

/// The `error` of a silence the API refuses (422, with the `field` to fix).
pub const INVALID_SILENCE: &str = "invalid_silence";

/// `GET /api/v1/silences`: every silence not pruned yet, newest end first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SilenceList {
    pub silences: Vec<crate::pipeline::silence::SilenceView>,
}

/// PagerDuty delivery state of one key, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PagerDutyState {
    pub last_action: String,
    /// `accepted`, `rejected` or `retrying`.
    pub outcome: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub updated: DateTime<Utc>,
}

/// One alert the bridge tracks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrackedAlert {
    pub dedup_key: String,
    pub appliance: String,
    pub uri: String,
    pub severity: String,
    pub state: String,
    pub description: Option<String>,
    pub resource_name: Option<String>,
    /// The alert in the OneView web UI.
    pub oneview_link: String,
    pub created: Option<String>,
    pub modified: Option<String>,
    /// The route whose integration holds the open incident; `None` until PagerDuty accepted
    /// its trigger.
    #[serde(default)]
    pub route: Option<String>,
    /// `None` until delivery tried this key.
    pub pagerduty: Option<PagerDutyState>,
    /// The PagerDuty incident's page (`html_url`), once a webhook of that incident told the
    /// poller (acknowledged, reassigned, annotated); only `http`/`https` URLs are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_url: Option<String>,
    /// Status markers of the alert (`kind`: `silenced`, `flapping`), shown beside it on the
    /// status page.
    #[serde(default)]
    pub markers: Vec<AlertMarker>,
    /// The id of the silence that holds the alert (its trigger or updates are not sent until
    /// the silence ends), if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
    /// Flap damping found the alert flapping (`flap.*`): its incident stays open until the
    /// alert has stayed cleared for `flap.settle`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flapping: bool,
}

/// A marker on an alert: something on-call should see at a glance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertMarker {
    /// A short lowercase word (`flapping`, `silenced`).
    pub kind: String,
    /// What it means for this alert, in words (e.g. which silence holds it, until when).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a push handed to the pipeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PushOutcome {
    /// Dedup keys of the alerts taken, in the order given.
    pub accepted: Vec<String>,
    /// Alerts not taken because the push queue (`web.push_queue`) was full: the last ones
    /// of the request. Send them again after `Retry-After`.
    pub not_admitted: usize,
    /// Alerts refused by the poller (unknown appliance, unwatched severity).
    #[serde(default)]
    pub errors: Vec<PushError>,
}

/// A pushed alert refused, by its position in the request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushError {
    pub index: usize,
    pub message: String,
}

/// A pushed alert on its way to the poller: the appliance it names, and its position in the
/// request (for the per-item errors).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushedAlert {
    #[serde(default)]
    pub appliance: Option<String>,
    #[serde(default)]
    pub index: usize,
    pub alert: Alert,
}

/// `GET /api/v1/alerts` filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AlertQuery {
    pub state: Option<String>,
    pub severity: Option<String>,
    pub appliance: Option<String>,
    pub page: Option<usize>,
    pub per_page: Option<usize>,
}

/// A page of tracked alerts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertPage {
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
    pub alerts: Vec<TrackedAlert>,
}

/// A dead letter as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub dedup_key: String,
    pub action: String,
    pub route: String,
    pub status: u16,
    pub message: Option<String>,
    pub errors: Vec<String>,
    pub time: DateTime<Utc>,
    /// Whether the bridge still knows the alert, so that a retry can re-send it.
    pub retryable: bool,
}

/// One appliance as the status page shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplianceView {
    pub name: String,
    pub ui_url: String,
    /// `logged_in`, `not_logged_in`, `login_failed`.
    pub session: String,
    pub api_version: Option<u32>,
    pub last_successful_poll: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub open_alerts: usize,
    pub cycles: u64,
    /// Its poll interval in seconds: how stale "last poll" may get before it is news
    /// (`scmb.poll_interval` while its message bus is up).
    #[serde(default)]
    pub poll_interval_seconds: u64,
    /// Its message bus, when `scmb.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<BusStatusView>,
}

/// An appliance's message bus as the status page shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BusStatusView {
    /// `starting`, `connected` or `down`.
    pub state: String,
    pub since: DateTime<Utc>,
    pub reason: Option<String>,
    pub connections: u64,
}

/// An error worth telling a person about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecentError {
    pub time: DateTime<Utc>,
    pub message: String,
}

/// Everything the status page shows, in one answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub appliances: Vec<ApplianceView>,
    /// `poller.interval` in seconds: how stale "last poll" may get before it is news.
    pub poll_interval_seconds: u64,
    pub queue_depth: usize,
    pub in_flight: usize,
    pub oldest_queued_age_seconds: f64,
    pub dead_letters_total: u64,
    pub dead_letters: Vec<DeadLetterView>,
    pub recent_errors: Vec<RecentError>,
    pub alerts: Vec<TrackedAlert>,
    pub generated: DateTime<Utc>,
    /// Pages and resolves PagerDuty accepted in the last 24 hours, per appliance (`None` from a
    /// poller that predates it).
    #[serde(default)]
    pub history: Option<crate::web::history::HistoryView>,
    /// Active and upcoming silences (maintenance windows), ending soonest first.
    #[serde(default)]
    pub silences: Vec<crate::pipeline::silence::SilenceView>,
}

/// A PagerDuty incident change to write back to OneView.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WritebackRequest {
    /// `X-Webhook-Id`-independent event id (`event.id`): the idempotency marker.
    pub event_id: String,
    pub event_type: String,
    pub incident_id: Option<String>,
    /// The incident's key (our dedup key), when the payload carries it.
    pub incident_key: Option<String>,
    pub incident_number: Option<u64>,
    pub incident_url: Option<String>,
    pub incident_title: Option<String>,
    pub agent_name: Option<String>,
    /// `user_reference`, `service_reference`, `integration_reference`...
    pub agent_type: Option<String>,
    pub assignees: Vec<String>,
    /// The note text of `incident.annotated`.
    pub note: Option<String>,
}

/// What a write-back did. Bounded: doubles as the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritebackOutcome {
    /// A note (and maybe a clear) was written.
    Written,
    /// This event was already written back (marker found in the change log).
    Duplicate,
    /// The bridge's own resolve, or nothing to do (already cleared, notes off).
    Skipped,
    /// Not an incident of this bridge.
    Ignored,
    /// OneView refused or could not be reached.
    Failed,
    /// The poller could not be reached.
    Unavailable,
}

impl WritebackOutcome {
    pub const ALL: &'static [WritebackOutcome] = &[
        WritebackOutcome::Written,
        WritebackOutcome::Duplicate,
        WritebackOutcome::Skipped,
        WritebackOutcome::Ignored,
        WritebackOutcome::Failed,
        WritebackOutcome::Unavailable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            WritebackOutcome::Written => "written",
            WritebackOutcome::Duplicate => "duplicate",
            WritebackOutcome::Skipped => "skipped",
            WritebackOutcome::Ignored => "ignored",
            WritebackOutcome::Failed => "failed",
            WritebackOutcome::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WritebackReport {
    pub outcome: WritebackOutcome,
    pub detail: String,
}

/// The marker a write-back leaves in the OneView change log; finding it means "already done",
/// whichever replica (or redelivery) did it.
pub fn writeback_marker(event_id: &str) -> String {
    format!("[pagerduty-event {event_id}]")
}

const RECENT_ERRORS_KEPT: usize = 20;

/// Incident pages (`html_url`) remembered, by incident key: one per open incident of a large
/// estate; the least used go first.
const INCIDENT_URLS_KEPT: u64 = 10_000;

/// Write-back event ids remembered as done (so a redelivery is answered without a request to
/// OneView).
const WRITEBACKS_REMEMBERED: usize = 10_000;

/// One appliance as the in-process control sees it.
pub struct LocalAppliance {
    pub appliance: Appliance,
    /// `notify_one()` polls it now.
    pub poll_now: Arc<Notify>,
    pub status: Arc<PollerStatus>,
    /// Its own client and session: write-backs go to the alert's own appliance.
    pub client: Arc<OneViewClient>,
    /// Its effective `poller` settings (watched severities, interval).
    pub poller: crate::config::PollerConfig,
}

impl From<crate::oneview::PollerHandle> for LocalAppliance {
    fn from(h: crate::oneview::PollerHandle) -> Self {
        Self {
            appliance: h.appliance,
            poll_now: h.poll_now,
            status: h.status,
            client: h.client,
            poller: h.poller,
        }
    }
}

/// The in-process control (roles `all` and `poller`).
pub struct Local {
    pub config: Arc<Config>,
    /// Every watched appliance, in configuration order.
    pub appliances: Vec<LocalAppliance>,
    /// What PagerDuty holds per alert, and the open alerts: written by the pipeline only.
    pub incidents: Arc<Incidents>,
    /// The poller's channel into the pipeline (a dead-letter retry goes this way).
    pub changes: mpsc::Sender<AlertChange>,
    /// The push API's own admission into the pipeline (`web.push_queue`).
    pub pushes: mpsc::Sender<AlertChange>,
    pub delivery: Arc<DeliveryStatus>,
    /// The silences (maintenance windows) the dispatcher checks at intake.
    pub silences: Arc<crate::pipeline::Silences>,
    /// PagerDuty incident id -> incident key, learned from webhooks that carry both, so that
    /// `incident.annotated` (whose payload has no key) can be matched.
    incident_keys: moka::sync::Cache<String, String>,
    /// Incident key -> the PagerDuty incident's page, learned from webhooks; forgotten when the
    /// incident resolves (the next trigger of that alert is a new incident).
    incident_urls: moka::sync::Cache<String, Arc<str>>,
    recent_errors: Mutex<std::collections::VecDeque<RecentError>>,
    /// Write-backs in progress, by PagerDuty event id: a second delivery of the same event
    /// (PagerDuty redelivers with a new `X-Webhook-Id`) waits for the first instead of reading
    /// the alert before the first one's note is there and writing a second note.
    writing: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Event ids already written back (or found written) by this process.
    written: crate::recent::Recent<()>,
}

impl Local {
    pub fn new(
        config: Arc<Config>,
        appliances: Vec<LocalAppliance>,
        incidents: Arc<Incidents>,
        changes: mpsc::Sender<AlertChange>,
        pushes: mpsc::Sender<AlertChange>,
        delivery: Arc<DeliveryStatus>,
        silences: Arc<crate::pipeline::Silences>,
    ) -> Self {
        Self {
            config,
            appliances,
            incidents,
            changes,
            pushes,
            delivery,
            silences,
            incident_keys: moka::sync::Cache::builder().max_capacity(10_000).build(),
            incident_urls: moka::sync::Cache::builder()
                .max_capacity(INCIDENT_URLS_KEPT)
                .build(),
            recent_errors: Mutex::new(Default::default()),
            writing: Mutex::new(Default::default()),
            written: crate::recent::Recent::new(WRITEBACKS_REMEMBERED),
        }
    }

    /// The configured appliance `id`.
    fn appliance(&self, id: &str) -> Option<&LocalAppliance> {
        self.appliances.iter().find(|a| &*a.appliance.id == id)
    }

    /// Polls every appliance now.
    pub fn poll_all(&self) {
        for a in &self.appliances {
            a.poll_now.notify_one();
        }
    }

    fn note_error(&self, message: String) {
        let mut g = self.recent_errors.lock().unwrap_or_else(|e| e.into_inner());
        g.push_back(RecentError {
            time: Utc::now(),
            message,
        });
        while g.len() > RECENT_ERRORS_KEPT {
            g.pop_front();
        }
    }

    fn view(&self, t: &crate::pipeline::incidents::TrackedAlert) -> TrackedAlert {
        let c = &t.change;
        let key = t.dedup_key.clone();
        let pagerduty = self.delivery.key(&key).map(|k| PagerDutyState {
            last_action: k.last_action.as_str().to_owned(),
            outcome: k.outcome.to_owned(),
            attempts: k.attempts,
            last_error: k.last_error,
            updated: k.updated,
        });
        let a = &c.alert;
        TrackedAlert {
            dedup_key: key,
            appliance: c.key.appliance.to_string(),
            uri: c.key.uri.to_string(),
            severity: a.severity.as_str().to_owned(),
            state: a.alert_state.as_str().to_owned(),
            description: a.description.as_deref().map(str::to_owned),
            resource_name: a.resource_name().map(str::to_owned),
            // Behind a proxy the UI may live elsewhere (`pagerduty.oneview_ui_url`, as in
            // the incident's link).
            oneview_link: oneview_link(
                self.config
                    .pagerduty
                    .as_ref()
                    .and_then(|p| p.oneview_ui_url.as_ref())
                    .map_or(&*c.appliance.ui_url, |u| u.as_str()),
                &c.key.uri,
            ),
            created: a.created.as_ref().map(ToString::to_string),
            modified: a.modified.as_ref().map(ToString::to_string),
            route: t.route.as_deref().map(str::to_owned),
            pagerduty,
            incident_url: self.incident_urls.get(&t.dedup_key).map(|u| u.to_string()),
            markers: t
                .silenced_by
                .as_deref()
                .map(|id| {
                    let detail = match self.silences.get(id) {
                        Some(v) => format!(
                            "held by silence {id} until {} ({}, by {})",
                            v.silence
                                .ends_at
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                            v.silence.comment,
                            v.silence.created_by
                        ),
                        None => format!("held by silence {id}"),
                    };
                    AlertMarker {
                        kind: "silenced".to_owned(),
                        detail: Some(detail),
                    }
                })
                .into_iter()
                .chain(t.flapping.then(|| AlertMarker {
                    kind: "flapping".to_owned(),
                    detail: Some(
                        "raises and clears often: its incident stays open until it has stayed cleared for flap.settle".to_owned(),
                    ),
                }))
                .collect(),
            silenced_by: t.silenced_by.as_deref().map(str::to_owned),
            flapping: t.flapping,
        }
    }

    fn silence_list(&self) -> SilenceList {
        SilenceList {
            silences: self.silences.list(),
        }
    }

    /// Validates and stores a new silence; the dispatcher applies it at once.
    async fn create_silence(
        &self,
        req: crate::pipeline::silence::NewSilence,
    ) -> Result<crate::pipeline::silence::SilenceView, ControlError> {
        let names: Vec<&str> = self.appliances.iter().map(|a| &*a.appliance.id).collect();
        let now = self.silences.clock().now();
        let silence = req.validate(&names, now).map_err(ControlError::Invalid)?;
        let silence = self.silences.add(silence).await;
        Ok(crate::pipeline::silence::SilenceView {
            state: silence.state(now),
            silence,
        })
    }

    /// Ends silence `id` now: the alerts it held and no other silence holds page now.
    async fn expire_silence(
        &self,
        id: &str,
        by: Option<String>,
    ) -> Result<crate::pipeline::silence::SilenceView, ControlError> {
        use crate::pipeline::silence::{Expired, SilenceState, SilenceView};
        match self.silences.expire(id, by).await {
            Some(Expired::Now(silence) | Expired::Already(silence)) => Ok(SilenceView {
                silence,
                state: SilenceState::Expired,
            }),
            None => Err(ControlError::NotFound(format!(
                "no silence with id {id}; GET /api/v1/silences lists them (expired ones are pruned state.retention after their end)"
            ))),
        }
    }

    /// Remembers (or, once it resolved, forgets) the PagerDuty page of the incident of `key`.
    fn learn_incident_url(&self, key: &str, req: &WritebackRequest) {
        if req.event_type == "incident.resolved" {
            self.incident_urls.invalidate(key);
            return;
        }
        let Some(url) = req.incident_url.as_deref().and_then(http_url) else {
            return;
        };
        if self.incident_urls.get(key).as_deref() != Some(url.as_str()) {
            self.incident_urls.insert(key.to_owned(), Arc::from(url));
        }
    }

    /// Hands pushed alerts to the pipeline through its own bounded admission: never waits, so
    /// a big push answers at once and polled alerts never queue behind it. Each alert names
    /// its appliance (optional when only one is configured); an unknown appliance or an
    /// unwatched severity is a per-item error.
    fn push(&self, alerts: Vec<PushedAlert>) -> Result<PushOutcome, ControlError> {
        let mut out = PushOutcome::default();
        let mut taken = 0usize;
        let total = alerts.len();
        for p in alerts {
            taken += 1;
            let la = match p.appliance.as_deref() {
                Some(name) => self.appliance(name),
                None if self.appliances.len() == 1 => self.appliances.first(),
                None => {
                    out.errors.push(PushError {
                        index: p.index,
                        message: format!(
                            "`appliance` is required: this bridge watches {} appliances ({})",
                            self.appliances.len(),
                            self.appliance_names()
                        ),
                    });
                    continue;
                }
            };
            let Some(la) = la else {
                out.errors.push(PushError {
                    index: p.index,
                    message: format!(
                        "unknown appliance `{}`; configured: {}",
                        crate::pagerduty::event::truncate_chars(
                            p.appliance.as_deref().unwrap_or(""),
                            100
                        ),
                        self.appliance_names()
                    ),
                });
                continue;
            };
            let alert = p.alert;
            if !alert.is_cleared()
                && !la
                    .poller
                    .severities
                    .iter()
                    .any(|w| w == alert.severity.as_str())
            {
                out.errors.push(PushError {
                    index: p.index,
                    message: format!(
                        "severity `{}` is not watched on appliance `{}` (severities = {:?})",
                        alert.severity, la.appliance.id, la.poller.severities
                    ),
                });
                continue;
            }
            let key = AlertKey::new(&la.appliance, &alert.uri);
            let dk = dedup_key(&key.appliance, &key.uri);
            let change = AlertChange {
                kind: if alert.is_cleared() {
                    ChangeKind::Cleared
                } else {
                    ChangeKind::Raised
                },
                key,
                appliance: la.appliance.clone(),
                alert: Arc::new(alert),
            };
            match self.pushes.try_send(change) {
                Ok(()) => out.accepted.push(dk),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    taken -= 1;
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(ControlError::Unavailable(
                        "the delivery queue is shut down (the bridge is stopping); retry on another replica"
                            .to_owned(),
                    ));
                }
            }
        }
        out.not_admitted = total - taken;
        if out.not_admitted > 0 {
            tracing::warn!(
                accepted = out.accepted.len(),
                not_admitted = out.not_admitted,
                "push queue full (web.push_queue); the rest of the push is answered 429"
            );
        }
        Ok(out)
    }

    fn appliance_names(&self) -> String {
        self.appliances
            .iter()
            .map(|a| a.appliance.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn alerts(&self, q: &AlertQuery) -> AlertPage {
        let per_page = q.per_page.unwrap_or(100).clamp(1, 1000);
        let page = q.page.unwrap_or(1).max(1);
        let eq = |f: &Option<String>, v: &str| f.as_ref().is_none_or(|f| f.eq_ignore_ascii_case(v));
        let mut all: Vec<TrackedAlert> = self
            .incidents
            .open_alerts()
            .iter()
            .map(|t| self.view(t))
            .filter(|a| {
                eq(&q.state, &a.state)
                    && eq(&q.severity, &a.severity)
                    && eq(&q.appliance, &a.appliance)
            })
            .collect();
        // A stable order, so that pages do not overlap.
        all.sort_unstable_by(|a, b| a.dedup_key.cmp(&b.dedup_key));
        let total = all.len();
        let alerts = all
            .into_iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .collect();
        AlertPage {
            total,
            page,
            per_page,
            alerts,
        }
    }

    fn dead_letters(&self) -> Vec<DeadLetterView> {
        self.delivery
            .snapshot()
            .dead_letters
            .into_iter()
            .map(|d| DeadLetterView {
                retryable: self.incidents.last_change(&d.dedup_key).is_some(),
                dedup_key: d.dedup_key,
                action: d.action.as_str().to_owned(),
                route: d.route,
                status: d.status,
                message: d.message,
                errors: d.errors,
                time: d.time,
            })
            .collect()
    }

    async fn retry(&self, key: &str) -> Result<serde_json::Value, ControlError> {
        let Some(change) = self.incidents.last_change(key) else {
            return Err(ControlError::NotFound(format!(
                "no dead letter with dedup key {key} that the bridge can re-send (it only keeps the alert of recent keys); GET /api/v1/deliveries/dead-letter lists them"
            )));
        };
        if self.delivery.remove_dead_letters(key) == 0 {
            return Err(ControlError::NotFound(format!(
                "no dead letter with dedup key {key}; GET /api/v1/deliveries/dead-letter lists them"
            )));
        }
        tracing::info!(dedup_key = %key, "re-sending a dead letter on request");
        self.changes
            .send(change)
            .await
            .map_err(|_| ControlError::Unavailable("the delivery queue is shut down".to_owned()))?;
        Ok(serde_json::json!({"status": "requeued", "dedup_key": key}))
    }

    fn status(&self) -> StatusView {
        let now = Utc::now();
        let mut silences: Vec<crate::pipeline::silence::SilenceView> = self
            .silences
            .list()
            .into_iter()
            .filter(|v| v.state != crate::pipeline::silence::SilenceState::Expired)
            .collect();
        silences.sort_by_key(|a| a.silence.ends_at);
        let d = self.delivery.snapshot();
        let mut recent: Vec<RecentError> = self
            .recent_errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        for dl in d.dead_letters.iter().rev().take(5) {
            recent.push(RecentError {
                time: dl.time,
                message: format!(
                    "PagerDuty refused the {} for {} (HTTP {}): {}",
                    dl.action.as_str(),
                    dl.dedup_key,
                    dl.status,
                    dl.message.clone().unwrap_or_default()
                ),
            });
        }
        for k in d.keys.iter().filter(|k| k.outcome == "retrying") {
            if let Some(e) = &k.last_error {
                recent.push(RecentError {
                    time: k.updated,
                    message: format!(
                        "PagerDuty delivery of {} is being retried: {e}",
                        k.dedup_key
                    ),
                });
            }
        }
        recent.sort_by_key(|e| std::cmp::Reverse(e.time));
        recent.truncate(RECENT_ERRORS_KEPT);
        let mut alerts: Vec<TrackedAlert> = self
            .incidents
            .open_alerts()
            .iter()
            .map(|t| self.view(t))
            .collect();
        alerts.sort_by_key(|a| (severity_rank(&a.severity), a.created.clone()));
        let mut appliances: Vec<ApplianceView> = self
            .appliances
            .iter()
            .map(|a| {
                let p = a.status.snapshot();
                ApplianceView {
                    name: a.appliance.id.to_string(),
                    ui_url: a.appliance.ui_url.to_string(),
                    session: match p.session {
                        SessionState::LoggedIn => "logged_in",
                        SessionState::NotLoggedIn => "not_logged_in",
                        SessionState::LoginFailed => "login_failed",
                    }
                    .to_owned(),
                    api_version: p.api_version,
                    last_successful_poll: p.last_successful_poll,
                    last_error: p.last_error,
                    open_alerts: p.open_alerts,
                    cycles: p.cycles,
                    poll_interval_seconds: if p.poll_interval_seconds > 0 {
                        p.poll_interval_seconds
                    } else {
                        a.poller.interval.as_secs().max(1)
                    },
                    bus: p.bus.map(|b| BusStatusView {
                        state: b.state.to_owned(),
                        since: b.since,
                        reason: b.reason,
                        connections: b.connections,
                    }),
                }
            })
            .collect();
        // Failing appliances first: they are why someone opened the page.
        appliances.sort_by_key(|a| {
            let bus_down = a.bus.as_ref().is_some_and(|b| b.state == "down");
            (a.last_error.is_none(), !bus_down, a.name.clone())
        });
        StatusView {
            appliances,
            poll_interval_seconds: self
                .appliances
                .iter()
                .map(|a| a.poller.interval.as_secs().max(1))
                .min()
                .unwrap_or_else(|| self.config.poller.interval.as_secs().max(1)),
            queue_depth: d.queue_depth,
            in_flight: d.in_flight,
            oldest_queued_age_seconds: d.oldest_queued_age_seconds,
            dead_letters_total: d.dead_letters_total,
            dead_letters: self.dead_letters().into_iter().rev().take(20).collect(),
            recent_errors: recent,
            alerts,
            generated: now,
            history: Some(self.delivery.history().view(now)),
            silences,
        }
    }

    /// The appliance and URI of the alert behind an incident key, when the incident is one the
    /// pipeline knows (an open alert, an incident it holds (from the ledger after a restart),
    /// or a recent change) of a configured appliance, and the URI is an alert's canonical
    /// URI. Never guessed from an unknown key.
    fn alert_of(&self, incident_key: &str) -> Option<(&LocalAppliance, String)> {
        let key = match self.incidents.known(incident_key) {
            Some(k) => k.key,
            // Held since before a restart (seeded from the ledger), not seen again yet: the
            // plain key names its alert.
            None if matches!(
                self.incidents.holding(incident_key),
                crate::pipeline::Holding::Open { .. }
            ) =>
            {
                let rest = incident_key.strip_prefix("oneview:")?;
                // The appliance id may itself hold ':'; the URI always starts with `/rest/`.
                let at = rest.find(":/rest/")?;
                AlertKey {
                    appliance: Arc::from(&rest[..at]),
                    uri: Arc::from(&rest[at + 1..]),
                }
            }
            None => return None,
        };
        let la = self.appliance(&key.appliance)?;
        crate::model::is_canonical_alert_uri(&key.uri).then(|| (la, key.uri.to_string()))
    }

    /// Writes one PagerDuty incident event back, once per event id whatever the number of
    /// deliveries: concurrent deliveries of one event wait for the first, later ones find it
    /// done.
    async fn writeback(&self, req: &WritebackRequest) -> WritebackReport {
        if self.written.get(&req.event_id).is_some() {
            return WritebackReport {
                outcome: WritebackOutcome::Duplicate,
                detail: format!("event {} was already written back", req.event_id),
            };
        }
        let lock = {
            let mut g = self.writing.lock().unwrap_or_else(|e| e.into_inner());
            g.entry(req.event_id.clone()).or_default().clone()
        };
        let report = {
            let _one_at_a_time = lock.lock().await;
            if self.written.get(&req.event_id).is_some() {
                WritebackReport {
                    outcome: WritebackOutcome::Duplicate,
                    detail: format!("event {} was already written back", req.event_id),
                }
            } else {
                let r = self.write_once(req).await;
                if matches!(
                    r.outcome,
                    WritebackOutcome::Written | WritebackOutcome::Duplicate
                ) {
                    self.written.insert(&req.event_id, ());
                }
                r
            }
        };
        let mut g = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        // Only the last holder removes the entry (an `Arc` held by the map and by us).
        if g.get(&req.event_id)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            g.remove(&req.event_id);
        }
        drop(lock);
        report
    }

    async fn write_once(&self, req: &WritebackRequest) -> WritebackReport {
        let report = |outcome, detail: String| WritebackReport { outcome, detail };
        if let (Some(id), Some(key)) = (&req.incident_id, &req.incident_key) {
            // Every event of an incident carries the same pair; a cache insert costs far more
            // than a lookup, so only learn what is new.
            if self.incident_keys.get(id).as_ref() != Some(key) {
                self.incident_keys.insert(id.clone(), key.clone());
            }
        }
        let key = req.incident_key.clone().or_else(|| {
            req.incident_id
                .as_ref()
                .and_then(|id| self.incident_keys.get(id))
        });
        let Some(key) = key else {
            return report(
                WritebackOutcome::Ignored,
                "the incident carries no key the bridge knows".to_owned(),
            );
        };
        let Some((la, uri)) = self.alert_of(&key) else {
            return report(
                WritebackOutcome::Ignored,
                format!(
                    "incident key {key} is not an alert this bridge knows on a configured appliance (only incidents of alerts the bridge tracked are written back)"
                ),
            );
        };
        self.learn_incident_url(&key, req);
        let resolved = req.event_type == "incident.resolved";
        let by_user = req.agent_type.as_deref() == Some("user_reference");
        if resolved && !by_user {
            // PagerDuty resolved it because the bridge sent a resolve (the agent is the
            // integration or service): OneView cleared the alert first, nothing to echo.
            return report(
                WritebackOutcome::Skipped,
                "resolved by the integration (the bridge's own resolve)".to_owned(),
            );
        }
        let marker = writeback_marker(&req.event_id);
        let what = match req.event_type.as_str() {
            "incident.acknowledged" => "acknowledged".to_owned(),
            "incident.resolved" => "resolved".to_owned(),
            "incident.reassigned" => format!("reassigned to {}", req.assignees.join(", ")),
            "incident.annotated" => format!(
                "annotated: {}",
                crate::pagerduty::event::truncate_chars(req.note.as_deref().unwrap_or(""), 500)
            ),
            other => other.to_owned(),
        };
        let number = req
            .incident_number
            .map(|n| format!(" #{n}"))
            .unwrap_or_default();
        let note = format!(
            "PagerDuty incident{number} {what} by {}{} {marker}",
            req.agent_name.as_deref().unwrap_or("PagerDuty"),
            req.incident_url
                .as_deref()
                .map(|u| format!(" ({u})"))
                .unwrap_or_default(),
        );
        // Two replicas (or redeliveries) may race: the eTag makes the second PUT fail, and the
        // re-read then finds the first one's marker.
        for _ in 0..3 {
            let alert = match la.client.get_alert(&uri).await {
                Ok(a) => a,
                Err(e) => return self.failed(&uri, e),
            };
            // Write only to what the appliance itself says is this alert.
            if alert.uri != uri {
                return report(
                    WritebackOutcome::Ignored,
                    format!(
                        "OneView answered {uri} with a resource whose uri is `{}`; nothing written",
                        alert.uri
                    ),
                );
            }
            let done = alert
                .change_log
                .iter()
                .flatten()
                .any(|c| c.notes.as_deref().is_some_and(|n| n.contains(&marker)));
            if done {
                return report(
                    WritebackOutcome::Duplicate,
                    format!("{uri} already has the note of event {}", req.event_id),
                );
            }
            let clear = resolved
                && self.config.web.clear_on_resolve
                && alert.alert_state == AlertState::Active
                && !alert.is_cleared();
            let update = AlertUpdate {
                alert_state: clear.then(|| "Cleared".to_owned()),
                notes: self.config.web.sync_notes.then(|| note.clone()),
                e_tag: alert.e_tag.as_ref().map(ToString::to_string),
                ..Default::default()
            };
            if update.alert_state.is_none() && update.notes.is_none() {
                return report(
                    WritebackOutcome::Skipped,
                    "nothing to write (sync.notes is off and no clear is due)".to_owned(),
                );
            }
            match la.client.update_alert(&uri, &update).await {
                Ok(_) => {
                    tracing::info!(alert_uri = %uri, event_id = %req.event_id, event_type = %req.event_type, cleared = clear, "wrote PagerDuty change back to OneView");
                    return report(
                        WritebackOutcome::Written,
                        format!(
                            "note added to {uri}{}",
                            if clear { ", alert cleared" } else { "" }
                        ),
                    );
                }
                Err(OneViewError::Api { status: 412, .. }) => continue,
                Err(e) => return self.failed(&uri, e),
            }
        }
        report(
            WritebackOutcome::Failed,
            format!("{uri} kept changing under the write-back (eTag mismatch three times)"),
        )
    }

    fn failed(&self, uri: &str, e: OneViewError) -> WritebackReport {
        tracing::warn!(alert_uri = %uri, error = %e, "write-back to OneView failed");
        let detail =
            format!("could not write the PagerDuty change back to OneView alert {uri}: {e}");
        self.note_error(detail.clone());
        WritebackReport {
            outcome: WritebackOutcome::Failed,
            detail,
        }
    }

    async fn test_event(&self) -> Result<serde_json::Value, ControlError> {
        let reports = crate::pagerduty::send_test_event(&self.config)
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?;
        Ok(serde_json::to_value(reports).unwrap_or_default())
    }
}

pub(crate) fn severity_rank(s: &str) -> u8 {
    match s {
        "Critical" => 0,
        "Warning" => 1,
        "Unknown" => 2,
        _ => 3,
    }
}

/// `s` when it is an absolute `http`/`https` URL (as PagerDuty's `html_url` is), normalised;
/// anything else (`javascript:`, relative, unparsable) is no link.
pub fn http_url(s: &str) -> Option<String> {
    url::Url::parse(s)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map(String::from)
}

/// The alert in the OneView UI: the UI routes alerts as `#/activity/r{uri}`.
pub fn oneview_link(ui_url: &str, uri: &str) -> String {
    format!("{}/#/activity/r{}", ui_url.trim_end_matches('/'), uri)
}

/// Where role `web` finds the poller it forwards to.
#[derive(Clone)]
pub enum PollerLocator {
    /// `web.poller_url` (one poller, behind a Service); `None` when it is not set.
    Fixed(Option<url::Url>),
    /// `state.backend = "postgres"`: the lease row names the leader and its
    /// `lease.advertise_url`.
    Lease(Arc<LeaseLocator>),
}

/// Reads the leader's URL from the lease row, at most once per [`LeaseLocator::FRESH`] unless a
/// call to the cached leader failed.
pub struct LeaseLocator {
    store: Arc<crate::state::PostgresStore>,
    /// One lookup at a time: a burst of requests during a handover reads the row once.
    cached: tokio::sync::Mutex<Option<(tokio::time::Instant, Located)>>,
    lookups: prometheus_client::metrics::family::Family<
        LookupLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct LookupLabels {
    outcome: &'static str,
}

impl Located {
    fn outcome(&self) -> &'static str {
        match self {
            Located::Leader { .. } => "leader",
            Located::Handover(_) => "handover",
            Located::Unavailable(_) => "unavailable",
        }
    }
}

#[derive(Clone)]
enum Located {
    Leader { url: url::Url, holder: String },
    Handover(String),
    Unavailable(String),
}

impl LeaseLocator {
    /// How long a lookup is trusted: well under the 1 s a standby needs to notice a released
    /// lease, so a handover costs a caller at most one `leader_handover` answer.
    const FRESH: Duration = Duration::from_millis(500);

    /// Builds the database client of a web replica; it never touches the schema. Registers
    /// `bridge_web_leader_lookups_total{outcome}`.
    pub fn connect(
        cfg: &crate::config::StateConfig,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Self, crate::state::StateError> {
        let mut opts = crate::state::postgres_options(cfg)?;
        // A request waits for this lookup: fail fast, the caller retries.
        opts.operation_timeout = Duration::from_secs(3);
        opts.pool_size = 1;
        let lookups = prometheus_client::metrics::family::Family::default();
        for outcome in ["leader", "handover", "unavailable"] {
            let _ = lookups.get_or_create(&LookupLabels { outcome });
        }
        registry.register(
            "bridge_web_leader_lookups",
            "Reads of the lease row by this web replica, by what they found: a leader to call, a handover (no live lease), or the database unavailable",
            lookups.clone(),
        );
        Ok(Self {
            store: Arc::new(crate::state::PostgresStore::connect(&opts)?),
            cached: tokio::sync::Mutex::new(None),
            lookups,
        })
    }

    async fn locate(&self, fresh: bool) -> Located {
        let asked = tokio::time::Instant::now();
        let mut cached = self.cached.lock().await;
        if let Some((at, found)) = cached.as_ref() {
            // "Nobody leads" is re-read sooner: a takeover ends it at any moment.
            let trusted = match found {
                Located::Leader { .. } => Self::FRESH,
                _ => Self::FRESH / 5,
            };
            // A lookup that finished while this call waited for the lock is as fresh as one
            // of its own: callers whose leader just refused them must not each read the row
            // again in turn.
            if (!fresh && at.elapsed() < trusted) || *at >= asked {
                return found.clone();
            }
        }
        let store = self.store.clone();
        let found = match tokio::task::spawn_blocking(move || store.current()).await {
            Ok(Ok(Some(h))) if h.live => match url::Url::parse(&h.advertise_url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => Located::Leader {
                    url,
                    holder: h.holder,
                },
                _ => Located::Unavailable(format!(
                    "the leading poller {} advertises no usable URL ({:?}); set lease.advertise_url on the pollers to the address web replicas reach them at, like http://POD_IP:8080",
                    h.holder, h.advertise_url
                )),
            },
            Ok(Ok(Some(h))) => Located::Handover(format!(
                "no poller leads right now: the lease of {} (epoch {}) has expired and a standby takes over within lease.renew_interval; retry in a second",
                h.holder, h.epoch
            )),
            Ok(Ok(None)) => Located::Handover(
                "no poller has taken the leadership lease yet; retry once a poller runs".to_owned(),
            ),
            Ok(Err(e)) => Located::Unavailable(format!("cannot find the leading poller: {e}")),
            Err(e) => Located::Unavailable(format!("cannot find the leading poller: {e}")),
        };
        self.lookups
            .get_or_create(&LookupLabels {
                outcome: found.outcome(),
            })
            .inc();
        *cached = Some((tokio::time::Instant::now(), found.clone()));
        found
    }
}

/// The HTTP client of the poller's internal API (role `web`).
#[derive(Clone)]
pub struct Remote {
    locator: PollerLocator,
    token: Option<Arc<Secret>>,
    http: reqwest::Client,
}

/// Why one call to one poller failed.
enum CallError {
    /// Nothing reached the poller (connection refused or reset before the request was
    /// written), or it answered that it does not lead: another poller may.
    Elsewhere(ControlError),
    Other(ControlError),
}

impl Remote {
    pub fn new(locator: PollerLocator, token: Option<Arc<Secret>>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self {
            locator,
            token,
            http,
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ControlError> {
        let lease = match &self.locator {
            PollerLocator::Fixed(Some(base)) => {
                return match self.call_at(base, method, path, body).await {
                    Ok(v) => Ok(v),
                    Err(CallError::Elsewhere(e) | CallError::Other(e)) => Err(e),
                };
            }
            PollerLocator::Fixed(None) => {
                return Err(ControlError::Unreachable {
                    url: "(not set)".to_owned(),
                    detail: "web.poller_url is not configured".to_owned(),
                });
            }
            PollerLocator::Lease(l) => l,
        };
        let mut fresh = false;
        let mut tried: Option<String> = None;
        loop {
            let (base, holder) = match lease.locate(fresh).await {
                Located::Leader { url, holder } => (url, holder),
                Located::Handover(m) => return Err(ControlError::Handover(m)),
                Located::Unavailable(m) => return Err(ControlError::Unavailable(m)),
            };
            if tried.as_deref() == Some(holder.as_str()) {
                // The row still names the poller that just failed: it died or paused and its
                // lease has not run out yet. A standby takes over within lease.ttl.
                return Err(ControlError::Handover(format!(
                    "the leading poller {holder} ({base}) does not answer; its lease runs out within lease.ttl and a standby takes over; retry in a few seconds"
                )));
            }
            match self
                .call_at(&base, method.clone(), path, body.clone())
                .await
            {
                Ok(v) => return Ok(v),
                Err(CallError::Other(e)) => return Err(e),
                Err(CallError::Elsewhere(e)) => {
                    tracing::info!(leader = %holder, error = %e, "the poller the lease named did not take the call; reading the lease again");
                    tried = Some(holder);
                    fresh = true;
                }
            }
        }
    }

    async fn call_at<T: serde::de::DeserializeOwned>(
        &self,
        base: &url::Url,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CallError> {
        let url = format!("{}{path}", base.as_str().trim_end_matches('/'));
        let unreachable = |detail: String| ControlError::Unreachable {
            url: url.clone(),
            detail,
        };
        let mut rb = self.http.request(method, &url);
        if let Some(t) = &self.token {
            let t = t
                .current()
                .map_err(|e| CallError::Other(unreachable(e.to_string())))?;
            rb = rb.bearer_auth(t.expose_secret());
        }
        if let Some(id) = crate::http::current_request_id() {
            rb = rb.header("x-request-id", id);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.map_err(|e| {
            let detail = if e.is_timeout() {
                "timed out".to_owned()
            } else {
                format!("connection failed ({e})")
            };
            // Only a refused connection is safe to send elsewhere: after a timeout the poller
            // may have acted on it.
            if e.is_connect() {
                CallError::Elsewhere(unreachable(detail))
            } else {
                CallError::Other(unreachable(detail))
            }
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| {
            CallError::Other(unreachable(format!("reading the answer failed ({e})")))
        })?;
        if !(200..300).contains(&status) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let error = v["error"].as_str().unwrap_or("poller_error").to_owned();
            let e = ControlError::Upstream {
                status,
                message: v["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {status} from {url}")),
                field: v["field"].as_str().map(str::to_owned),
                error,
            };
            return Err(match &e {
                ControlError::Upstream { error, .. } if error == NOT_LEADER => {
                    CallError::Elsewhere(e)
                }
                _ => CallError::Other(e),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Other(ControlError::Upstream {
                status: 502,
                field: None,
                error: "poller_error".to_owned(),
                message: format!("unusable answer from {url}: {e}"),
            })
        })
    }
}

/// The `error` of a standby poller's answer to the internal API.
pub const NOT_LEADER: &str = "not_leader";

/// What the web handlers ask of the poller.
#[derive(Clone)]
pub enum Control {
    Local(Arc<Local>),
    Remote(Remote),
}

impl Control {
    pub async fn push(&self, alerts: Vec<PushedAlert>) -> Result<PushOutcome, ControlError> {
        match self {
            Control::Local(l) => l.push(alerts),
            Control::Remote(r) => {
                r.call(
                    reqwest::Method::POST,
                    "/internal/v1/alerts",
                    Some(serde_json::to_value(alerts).unwrap_or_default()),
                )
                .await
            }
        }
    }

    pub async fn alerts(&self, q: &AlertQuery) -> Result<AlertPage, ControlError> {
        match self {
            Control::Local(l) => Ok(l.alerts(q)),
            Control::Remote(r) => {
                let qs = serde_urlencoded_query(q);
                r.call(
                    reqwest::Method::GET,
                    &format!("/internal/v1/alerts{qs}"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterView>, ControlError> {
        match self {
            Control::Local(l) => Ok(l.dead_letters()),
            Control::Remote(r) => {
                r.call(reqwest::Method::GET, "/internal/v1/dead-letters", None)
                    .await
            }
        }
    }

    pub async fn retry(&self, key: &str) -> Result<serde_json::Value, ControlError> {
        match self {
            Control::Local(l) => l.retry(key).await,
            Control::Remote(r) => {
                let enc: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
                r.call(
                    reqwest::Method::POST,
                    &format!("/internal/v1/dead-letters/{enc}/retry"),
                    None,
                )
                .await
            }
        }
    }

    pub async fn poll(&self) -> Result<serde_json::Value, ControlError> {
        match self {
            Control::Local(l) => {
                l.poll_all();
                Ok(serde_json::json!({"status": "poll_requested"}))
            }
            Control::Remote(r) => {
                r.call(reqwest::Method::POST, "/internal/v1/poll", None)
                    .await
            }
        }
    }

    pub async fn test_event(&self) -> Result<serde_json::Value, ControlError> {
        match self {
            Control::Local(l) => l.test_event().await,
            Control::Remote(r) => {
                r.call(reqwest::Method::POST, "/internal/v1/test-event", None)
                    .await
            }
        }
    }

    pub async fn status(&self) -> Result<StatusView, ControlError> {
        match self {
            Control::Local(l) => Ok(l.status()),
            Control::Remote(r) => {
                r.call(reqwest::Method::GET, "/internal/v1/status", None)
                    .await
            }
        }
    }

    /// Borrows the request: the webhook retries it, and a clone per attempt is a dozen
    /// allocations on the path of every delivery.
    pub async fn writeback(&self, req: &WritebackRequest) -> WritebackReport {
        match self {
            Control::Local(l) => l.writeback(req).await,
            Control::Remote(r) => match r
                .call::<WritebackReport>(
                    reqwest::Method::POST,
                    "/internal/v1/writeback",
                    Some(serde_json::to_value(req).unwrap_or_default()),
                )
                .await
            {
                Ok(rep) => rep,
                Err(e) => WritebackReport {
                    outcome: WritebackOutcome::Unavailable,
                    detail: e.to_string(),
                },
            },
        }
    }
}

impl Control {
    pub async fn silences(&self) -> Result<SilenceList, ControlError> {
        match self {
            Control::Local(l) => Ok(l.silence_list()),
            Control::Remote(r) => {
                r.call(reqwest::Method::GET, "/internal/v1/silences", None)
                    .await
            }
        }
    }

    pub async fn create_silence(
        &self,
        req: crate::pipeline::silence::NewSilence,
    ) -> Result<crate::pipeline::silence::SilenceView, ControlError> {
        match self {
            Control::Local(l) => l.create_silence(req).await,
            Control::Remote(r) => {
                r.call(
                    reqwest::Method::POST,
                    "/internal/v1/silences",
                    Some(serde_json::to_value(req).unwrap_or_default()),
                )
                .await
            }
        }
    }

    pub async fn expire_silence(
        &self,
        id: &str,
        by: Option<String>,
    ) -> Result<crate::pipeline::silence::SilenceView, ControlError> {
        match self {
            Control::Local(l) => l.expire_silence(id, by).await,
            Control::Remote(r) => {
                let enc: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
                let mut path = format!("/internal/v1/silences/{enc}");
                if let Some(by) = by {
                    let by: String = url::form_urlencoded::byte_serialize(by.as_bytes()).collect();
                    path.push_str(&format!("?expired_by={by}"));
                }
                r.call(reqwest::Method::DELETE, &path, None).await
            }
        }
    }
}

/// `DELETE /api/v1/silences/{id}`: who expires it (optional).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExpireQuery {
    pub expired_by: Option<String>,
}

fn serde_urlencoded_query(q: &AlertQuery) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("state", q.state.clone()),
        ("severity", q.severity.clone()),
        ("appliance", q.appliance.clone()),
        ("page", q.page.map(|p| p.to_string())),
        ("per_page", q.per_page.map(|p| p.to_string())),
    ] {
        if let Some(v) = v {
            s.append_pair(k, &v);
        }
    }
    let s = s.finish();
    if s.is_empty() { s } else { format!("?{s}") }
}

#[derive(Clone)]
struct Internal {
    local: Arc<Local>,
    tokens: ApiTokens,
}

fn guard(s: &Internal, h: &HeaderMap) -> Result<(), ApiError> {
    s.tokens.check(h).map_err(ApiError::from)
}

async fn i_push(
    State(s): State<Internal>,
    h: HeaderMap,
    axum::Json(alerts): axum::Json<Vec<PushedAlert>>,
) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    let outcome = s.local.push(alerts).map_err(ApiError::from)?;
    Ok(axum::Json(outcome).into_response())
}

async fn i_alerts(
    State(s): State<Internal>,
    h: HeaderMap,
    Query(q): Query<AlertQuery>,
) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    Ok(axum::Json(s.local.alerts(&q)).into_response())
}

async fn i_dead(State(s): State<Internal>, h: HeaderMap) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    Ok(axum::Json(s.local.dead_letters()).into_response())
}

async fn i_retry(
    State(s): State<Internal>,
    h: HeaderMap,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    Ok(axum::Json(s.local.retry(&key).await.map_err(ApiError::from)?).into_response())
}

async fn i_poll(State(s): State<Internal>, h: HeaderMap) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    s.local.poll_all();
    Ok(axum::Json(serde_json::json!({"status": "poll_requested"})).into_response())
}

async fn i_test(State(s): State<Internal>, h: HeaderMap) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    Ok(axum::Json(s.local.test_event().await.map_err(ApiError::from)?).into_response())
}

async fn i_status(State(s): State<Internal>, h: HeaderMap) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    Ok(axum::Json(s.local.status()).into_response())
}

async fn i_writeback(
    State(s): State<Internal>,
    h: HeaderMap,
    axum::Json(req): axum::Json<WritebackRequest>,
) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    Ok(axum::Json(s.local.writeback(&req).await).into_response())
}

async fn i_silences(State(s): State<Internal>, h: HeaderMap) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    Ok(axum::Json(s.local.silence_list()).into_response())
}

async fn i_create_silence(
    State(s): State<Internal>,
    h: HeaderMap,
    axum::Json(req): axum::Json<crate::pipeline::silence::NewSilence>,
) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    let v = s.local.create_silence(req).await.map_err(ApiError::from)?;
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

async fn i_expire_silence(
    State(s): State<Internal>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ExpireQuery>,
) -> Result<Response, ApiError> {
    guard(&s, &h)?;
    let v = s
        .local
        .expire_silence(&id, q.expired_by)
        .await
        .map_err(ApiError::from)?;
    Ok(axum::Json(v).into_response())
}

/// The poller's internal API for web replicas, behind `web.poller_token` (403 when unset).
pub fn internal_routes(local: Arc<Local>, token: Option<Arc<Secret>>) -> Router {
    Router::new()
        .route("/internal/v1/alerts", post(i_push).get(i_alerts))
        .route("/internal/v1/dead-letters", get(i_dead))
        .route("/internal/v1/dead-letters/{key}/retry", post(i_retry))
        .route("/internal/v1/poll", post(i_poll))
        .route("/internal/v1/test-event", post(i_test))
        .route("/internal/v1/status", get(i_status))
        .route("/internal/v1/writeback", post(i_writeback))
        .route(
            "/internal/v1/silences",
            get(i_silences).post(i_create_silence),
        )
        .route(
            "/internal/v1/silences/{id}",
            axum::routing::delete(i_expire_silence),
        )
        .with_state(Internal {
            local,
            tokens: ApiTokens::new(token),
        })
}
