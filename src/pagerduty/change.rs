//! PagerDuty Change Events (`POST /v2/change/enqueue`): the body built from a finished OneView
//! task ([`build`]) and its delivery ([`ChangeLink::deliver`]) with the alert events' retry
//! table (see [`super::sender`]: 202 done, 400 and other 4xx rejected for good, 403/408/429,
//! 5xx and transport errors retried with the same jittered exponential backoff, never sooner
//! than `Retry-After`) and the same rate limit per routing key: a change event takes a slot
//! of its route's budget in the limiter alert events use, so the two never exceed PagerDuty's
//! limit together.
//!
//! A change event has no `dedup_key` and no severity: PagerDuty shows it on the service of its
//! routing key, next to that service's incidents. Which route is [`super::routing::Router::route_change`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use backon::{ExponentialBuilder, Retryable};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::dispatcher::{Shared, jittered};
use super::event::{Link, MAX_FIELD_CHARS, MAX_SUMMARY_CHARS, truncate_chars};
use super::routing::{Router, Target};
use super::sender::{Attempt, Sender};
use crate::model::Appliance;
use crate::oneview::collection::{format_timestamp, parse_timestamp};
use crate::oneview::tasks::Task;
use crate::state::Op;

/// Task errors carried in `custom_details` at most (a failed task can list hundreds).
const MAX_TASK_ERRORS: usize = 5;

/// `payload` of a change event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangePayload {
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    pub source: String,
    pub custom_details: Map<String, Value>,
}

/// A change event without its routing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub payload: ChangePayload,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub links: Vec<Link>,
}

#[derive(Serialize)]
struct Body<'a> {
    routing_key: &'a str,
    #[serde(flatten)]
    event: &'a ChangeEvent,
}

impl ChangeEvent {
    /// The request body: the event with `routing_key` added.
    pub fn to_body(&self, routing_key: &str) -> Vec<u8> {
        serde_json::to_vec(&Body {
            routing_key,
            event: self,
        })
        .unwrap_or_default()
    }
}

/// What the outcome of a finished task reads as.
fn outcome(state: &str) -> &'static str {
    match state {
        "Completed" => "completed",
        "Warning" => "completed with warnings",
        "Error" => "failed",
        _ => "finished",
    }
}

/// The change event of a finished `task` of `appliance`. `ui_base` overrides the appliance's
/// UI URL in links (`pagerduty.oneview_ui_url`).
///
/// `summary`: `{task name} {outcome} on {resource name} ({appliance})`, with the first task
/// error of a failed task, cut at 1,024 characters. `timestamp`: `modified` (when it finished),
/// else `created`. `source`: the resource name, else the appliance. `links`: the task and its
/// resource in the OneView UI.
pub fn build(task: &Task, appliance: &Appliance, ui_base: Option<&str>) -> ChangeEvent {
    let name = task
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("Task");
    let on = task
        .resource_name()
        .map(|r| format!(" on {r}"))
        .unwrap_or_default();
    let mut summary = format!("{name} {}{on} ({})", outcome(task.state()), appliance.id);
    if let Some(m) = task.task_errors.iter().find_map(|e| e.message.as_deref()) {
        summary.push_str(": ");
        summary.push_str(m);
    }
    let timestamp = task
        .modified
        .as_deref()
        .or(task.created.as_deref())
        .and_then(parse_timestamp)
        .map(format_timestamp);
    let source = truncate_chars(
        task.resource_name().unwrap_or(&appliance.id),
        MAX_FIELD_CHARS,
    );
    let mut d = Map::new();
    let mut put = |k: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            d.insert(
                k.to_owned(),
                Value::String(truncate_chars(v, MAX_FIELD_CHARS)),
            );
        }
    };
    put("taskName", task.name.as_deref());
    put("taskState", task.task_state.as_deref());
    put("taskStatus", task.task_status.as_deref());
    put("stateReason", task.state_reason.as_deref());
    put("owner", task.owner.as_deref());
    put("resourceName", task.resource_name());
    put("resourceCategory", task.resource_category());
    put("resourceUri", task.resource_uri());
    put("taskUri", Some(&task.uri));
    put("created", task.created.as_deref());
    put("modified", task.modified.as_deref());
    put("appliance", Some(&appliance.id));
    for (k, v) in [
        ("percentComplete", task.percent_complete),
        ("completedSteps", task.completed_steps),
        ("totalSteps", task.total_steps),
    ] {
        if let Some(v) = v {
            d.insert(k.to_owned(), Value::from(v));
        }
    }
    let errors: Vec<Value> = task
        .task_errors
        .iter()
        .take(MAX_TASK_ERRORS)
        .filter_map(|e| {
            let text = match (&e.error_code, &e.message) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (None, Some(m)) => m.clone(),
                (Some(c), None) => c.clone(),
                (None, None) => return None,
            };
            Some(Value::String(truncate_chars(&text, MAX_FIELD_CHARS)))
        })
        .collect();
    if !errors.is_empty() {
        d.insert("taskErrors".to_owned(), Value::Array(errors));
    }
    let base = ui_base.unwrap_or(&appliance.ui_url).trim_end_matches('/');
    let mut links = Vec::new();
    if !base.is_empty() {
        // OneView's web UI opens a resource's page at `#/<view>/r<resource uri>`.
        links.push(Link {
            href: format!("{base}/#/activity/r{}", task.uri),
            text: "Task in HPE OneView".to_owned(),
        });
        if let Some(r) = task.resource_uri() {
            links.push(Link {
                href: format!("{base}/#/activity/r{r}"),
                text: "Resource in HPE OneView".to_owned(),
            });
        }
        links.retain(|l| l.href.len() <= MAX_FIELD_CHARS);
    }
    ChangeEvent {
        payload: ChangePayload {
            summary: truncate_chars(&summary, MAX_SUMMARY_CHARS),
            timestamp,
            source,
            custom_details: d,
        },
        links,
    }
}

/// How a change event's delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// PagerDuty answered 202.
    Accepted { attempts: u32 },
    /// PagerDuty refused it for good (400 or another 4xx): logged, not sent again.
    Rejected { status: u16, detail: String },
}

struct RetryLater {
    retry_after: Option<std::time::Duration>,
    reason: String,
}

/// What change-event watchers share with the alert pipeline: its rate limiter, retry settings,
/// metrics and state journal, the routes, and a sender for the Change Events URL (behind the
/// same leadership gate). Cheap to clone.
#[derive(Clone)]
pub struct ChangeLink {
    shared: Arc<Shared>,
    router: Arc<Router>,
    sender: Sender,
    ui_url: Option<Arc<str>>,
    watermarks: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for ChangeLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeLink")
            .field("url", &self.sender.url().as_str())
            .finish()
    }
}

impl ChangeLink {
    pub(crate) fn new(
        shared: Arc<Shared>,
        router: Router,
        sender: Sender,
        ui_url: Option<&url::Url>,
        watermarks: BTreeMap<String, String>,
    ) -> Self {
        Self {
            shared,
            router: Arc::new(router),
            sender,
            ui_url: ui_url.map(|u| Arc::from(u.as_str())),
            watermarks: Arc::new(watermarks),
        }
    }

    /// The Change Events URL.
    pub fn url(&self) -> &url::Url {
        self.sender.url()
    }

    /// Where the change event of `task` goes.
    pub fn target(&self, appliance: &str, task: &Task) -> Target {
        self.router
            .route_change(appliance, task.resource_category(), task.resource_name())
            .clone()
    }

    /// The change event of `task` (see [`build`]).
    pub fn build(&self, task: &Task, appliance: &Appliance) -> ChangeEvent {
        build(task, appliance, self.ui_url.as_deref())
    }

    /// The watermark stored under `key` when the pipeline started.
    pub fn stored_watermark(&self, key: &str) -> Option<&str> {
        self.watermarks.get(key).map(String::as_str)
    }

    /// Stores `value` under `key` and waits until the commit was attempted.
    pub async fn store_watermark(&self, key: &str, value: String) {
        let ticket = self.shared.journal.submit(vec![Op::Watermark {
            appliance: key.to_owned(),
            value,
        }]);
        self.shared.journal.durable(ticket).await;
    }

    /// Sends `event` to `target` until PagerDuty accepts or refuses it for good; every attempt
    /// first takes a slot of the route's budget. `on_retry(reason)` is called before each
    /// retry. Never gives up while the process runs (the caller races it with shutdown).
    pub async fn deliver(
        &self,
        event: &ChangeEvent,
        target: &Target,
        on_retry: impl Fn(&str),
    ) -> Delivered {
        let shared = &self.shared;
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::new()
            .with_min_delay(shared.settings.retry_initial_delay)
            .with_max_delay(shared.settings.retry_max_delay)
            .with_factor(2.0)
            .without_max_times();
        let attempt = || async {
            attempts.fetch_add(1, Ordering::Relaxed);
            shared.acquire(&target.budget).await;
            let body = match target.routing_key.current() {
                Ok(k) => event.to_body(k.expose_secret()),
                Err(e) => {
                    shared.answered(&target.budget);
                    return Err(RetryLater {
                        retry_after: None,
                        reason: e.to_string(),
                    });
                }
            };
            let answer = self.sender.post(body).await;
            shared.answered(&target.budget);
            match answer {
                Attempt::Accepted { .. } => {
                    shared.metrics.http("2xx").inc();
                    Ok(None)
                }
                Attempt::Rejected { status, answer } => {
                    shared.metrics.http(super::sender::code_label(status)).inc();
                    Ok(Some((
                        status,
                        format!(
                            "HTTP {status}: {} {}",
                            answer.message.as_deref().unwrap_or(""),
                            answer.errors.join("; ")
                        )
                        .trim()
                        .to_owned(),
                    )))
                }
                Attempt::Retry {
                    code,
                    retry_after,
                    reason,
                    ..
                } => {
                    shared.metrics.http(code).inc();
                    Err(RetryLater {
                        retry_after,
                        reason,
                    })
                }
            }
        };
        let result = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .adjust(|e: &RetryLater, d| d.map(|d| jittered(d, e.retry_after)))
            .notify(|e: &RetryLater, d| {
                tracing::warn!(route = %target.route, reason = %e.reason, retry_in = ?d, "PagerDuty change event failed; will retry");
                on_retry(&e.reason);
            })
            .await;
        match result {
            Ok(None) => Delivered::Accepted {
                attempts: attempts.load(Ordering::Relaxed),
            },
            Ok(Some((status, detail))) => Delivered::Rejected { status, detail },
            // Unreachable with `without_max_times`; reported rather than lost.
            Err(e) => Delivered::Rejected {
                status: 0,
                detail: format!("gave up: {}", e.reason),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_firmware_update_reads_as_such_and_links_to_the_task() {
        let task: Task = serde_json::from_value(serde_json::json!({
            "uri": "/rest/tasks/7A1", "name": "Update firmware", "taskState": "Error",
            "owner": "jdoe", "percentComplete": 40,
            "taskErrors": [{"errorCode": "FW_FAIL", "message": "The SPP could not be staged."}],
            "associatedResource": {"resourceName": "SGH8, bay 3", "resourceUri": "/rest/server-hardware/31",
                "resourceCategory": "server-hardware"},
            "created": "2024-05-01T10:00:00.000Z", "modified": "2024-05-01T10:05:00.123Z",
        }))
        .unwrap();
        let a = Appliance {
            id: Arc::from("dc1"),
            ui_url: Arc::from("https://ov1.example.com/"),
        };
        let e = build(&task, &a, None);
        assert_eq!(
            e.payload.summary,
            "Update firmware failed on SGH8, bay 3 (dc1): The SPP could not be staged."
        );
        assert_eq!(e.payload.source, "SGH8, bay 3");
        assert_eq!(
            e.payload.timestamp.as_deref(),
            Some("2024-05-01T10:05:00.123Z")
        );
        assert_eq!(
            e.links[0].href,
            "https://ov1.example.com/#/activity/r/rest/tasks/7A1"
        );
        assert_eq!(
            e.links[1].href,
            "https://ov1.example.com/#/activity/r/rest/server-hardware/31"
        );
        assert_eq!(
            e.payload.custom_details["taskErrors"][0],
            "FW_FAIL: The SPP could not be staged."
        );
        let body: Value = serde_json::from_slice(&e.to_body("k")).unwrap();
        assert_eq!(body["routing_key"], "k");
        assert!(body.get("event_action").is_none() && body.get("dedup_key").is_none());
    }
}
