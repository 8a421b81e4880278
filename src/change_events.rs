//! Change events from OneView tasks: per appliance with `change_events.enabled`, a watcher
//! reads the tasks that finished since a durable watermark (`/rest/tasks`, incrementally, with
//! the collection walker the alert poller uses), keeps those on the allow-lists and sends each
//! as a PagerDuty Change Event ([`crate::pagerduty::change`]) on the route its resource picks,
//! so responders see what changed next to the incident on the same service.
//!
//! What this module owns: the watermark of each appliance's tasks, stored with the delivery
//! state under `tasks:<appliance>` (`Op::Watermark`), and the decision of what was already
//! handled. The mark is `{since_ms, done}`: the appliance's clock when the last complete walk
//! started (as for alerts: its `Date` header minus the round trip, else the newest `modified`
//! seen), and the tasks handled whose `modified` lies within `poller.watermark_overlap` of it,
//! which the next walk reads again. A task is added to `done` and the mark written (and
//! waited for) right after PagerDuty accepted its change event, before the next one is sent;
//! `since_ms` moves only once a walk ended with every change event up to it accepted. After a
//! restart nothing is sent twice: everything already accepted is in `done` or older than
//! `since_ms`. (The window left is a crash between PagerDuty's 202 and that commit: the
//! Change Events API has no dedup key that could cover it.)
//!
//! The first run of an appliance (no mark) starts at the appliance's clock: the task history
//! from before change events were turned on is not sent.
//!
//! The outbox is not used: a change event has no incident to order against, and the task list
//! on the appliance already is a durable queue; the mark says how far it was read.
//!
//! Polling only: OneView also publishes tasks on its message bus (`scmb.tasks`), which would
//! make change events arrive sooner; the poll is at `change_events.interval`.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{ApplianceConfig, ChangeEventsConfig};
use crate::model::Appliance;
use crate::oneview::collection::{Walker, format_timestamp};
use crate::oneview::tasks::{self, Skip, Task, TaskFilter};
use crate::oneview::{OneViewClient, OneViewError, OneViewMetrics};
use crate::pagerduty::change::{ChangeLink, Delivered};

/// The key of an appliance's mark in the state store's watermarks.
pub fn watermark_key(appliance: &str) -> String {
    format!("tasks:{appliance}")
}

/// Where an appliance's task walk stands (stored as JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// The next walk reads tasks modified at or after this, minus the overlap (unix ms).
    pub since_ms: i64,
    /// Tasks handled (sent, refused for good, or skipped) that the next walk can read again:
    /// uri -> `modified` (unix ms).
    pub done: BTreeMap<String, i64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplianceLabels {
    appliance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    appliance: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    appliance: String,
    outcome: &'static str,
}

const SKIP_REASONS: [Skip; 2] = [Skip::NotAllowed, Skip::Subtask];
const POLL_OUTCOMES: [&str; 2] = ["ok", "error"];

/// The `bridge_change_events_*` and `bridge_oneview_tasks_*` families.
#[derive(Clone, Default)]
struct Families {
    sent: Family<ApplianceLabels, Counter>,
    failed: Family<ApplianceLabels, Counter>,
    retried: Family<ApplianceLabels, Counter>,
    seen: Family<ApplianceLabels, Counter>,
    skipped: Family<ReasonLabels, Counter>,
    polls: Family<OutcomeLabels, Counter>,
    last_poll: Family<ApplianceLabels, Gauge>,
}

impl Families {
    fn register(registry: &mut Registry) -> Self {
        let f = Self::default();
        registry.register(
            "bridge_change_events_sent",
            "Change events PagerDuty accepted (202), by appliance",
            f.sent.clone(),
        );
        registry.register(
            "bridge_change_events_failed",
            "Change events PagerDuty refused for good (400 or another 4xx): logged, not sent again",
            f.failed.clone(),
        );
        registry.register(
            "bridge_change_events_retried",
            "Change event attempts that failed and were retried (429, 5xx, timeouts)",
            f.retried.clone(),
        );
        registry.register(
            "bridge_oneview_tasks_seen",
            "Finished OneView tasks read for change events (each once)",
            f.seen.clone(),
        );
        registry.register(
            "bridge_oneview_tasks_skipped",
            "Finished OneView tasks not sent: not_allowed (change_events.categories/names) or subtask",
            f.skipped.clone(),
        );
        registry.register(
            "bridge_change_events_polls",
            "Reads of /rest/tasks for change events, by outcome",
            f.polls.clone(),
        );
        registry.register(
            "bridge_change_events_last_poll_timestamp_seconds",
            "Unix time of the last successful /rest/tasks read (0 before the first)",
            f.last_poll.clone(),
        );
        f
    }

    fn appliance(&self, name: &str) -> Metrics {
        let one = || ApplianceLabels {
            appliance: name.to_owned(),
        };
        Metrics {
            sent: self.sent.get_or_create(&one()).clone(),
            failed: self.failed.get_or_create(&one()).clone(),
            retried: self.retried.get_or_create(&one()).clone(),
            seen: self.seen.get_or_create(&one()).clone(),
            skipped: SKIP_REASONS.map(|r| {
                self.skipped
                    .get_or_create(&ReasonLabels {
                        appliance: name.to_owned(),
                        reason: r.as_str(),
                    })
                    .clone()
            }),
            polls: POLL_OUTCOMES.map(|outcome| {
                self.polls
                    .get_or_create(&OutcomeLabels {
                        appliance: name.to_owned(),
                        outcome,
                    })
                    .clone()
            }),
            last_poll: self.last_poll.get_or_create(&one()).clone(),
        }
    }
}

/// One appliance's series, created at zero.
#[derive(Clone)]
struct Metrics {
    sent: Counter,
    failed: Counter,
    retried: Counter,
    seen: Counter,
    skipped: [Counter; 2],
    polls: [Counter; 2],
    last_poll: Gauge,
}

/// Setting up the watchers failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeEventsError {
    #[error(
        "change events are enabled for appliance `{appliance}` but PagerDuty has no Change Events URL; set change_events.url or pagerduty.events_url"
    )]
    NoUrl { appliance: String },
    #[error("appliance `{appliance}`: {detail}; fix the glob in its change_events")]
    Filter { appliance: String, detail: String },
}

/// One appliance's watcher.
pub struct Watcher {
    client: Arc<OneViewClient>,
    appliance: Appliance,
    cfg: ChangeEventsConfig,
    overlap: i64,
    filter: TaskFilter,
    link: ChangeLink,
    metrics: Metrics,
    ov_metrics: OneViewMetrics,
    key: String,
    mark: Option<Mark>,
}

/// The watcher tasks of every appliance with `change_events.enabled`, reading through that
/// appliance's client (its session is the poller's). `clients` are `(appliance id, client)`.
pub fn assemble(
    appliances: &[ApplianceConfig],
    clients: &[(Appliance, Arc<OneViewClient>)],
    link: Option<&ChangeLink>,
    registry: &mut Registry,
    work: &CancellationToken,
) -> Result<Vec<crate::task::Task>, ChangeEventsError> {
    let enabled: Vec<&ApplianceConfig> = appliances
        .iter()
        .filter(|a| a.change_events.enabled)
        .collect();
    if enabled.is_empty() {
        return Ok(Vec::new());
    }
    let families = Families::register(registry);
    let mut out: Vec<crate::task::Task> = Vec::new();
    for a in enabled {
        let name = a.oneview.name.as_str();
        let link = link.cloned().ok_or_else(|| ChangeEventsError::NoUrl {
            appliance: name.to_owned(),
        })?;
        let Some((appliance, client)) = clients.iter().find(|(ap, _)| &*ap.id == name) else {
            continue;
        };
        let filter = TaskFilter::new(&a.change_events.categories, &a.change_events.names).map_err(
            |detail| ChangeEventsError::Filter {
                appliance: name.to_owned(),
                detail,
            },
        )?;
        let key = watermark_key(name);
        let mark = link
            .stored_watermark(&key)
            .and_then(|v| match serde_json::from_str::<Mark>(v) {
                Ok(m) => Some(m),
                Err(e) => {
                    // Only this build writes it; a mark that does not parse starts afresh
                    // (nothing older than now is sent) rather than resend the history.
                    tracing::warn!(appliance = name, error = %e, "the stored task watermark is unreadable; change events start from the appliance's clock");
                    None
                }
            });
        let w = Watcher {
            client: client.clone(),
            appliance: appliance.clone(),
            cfg: a.change_events.clone(),
            overlap: i64::try_from(a.poller.watermark_overlap.as_millis()).unwrap_or(0),
            filter,
            link,
            metrics: families.appliance(name),
            ov_metrics: OneViewMetrics::unregistered(),
            key,
            mark,
        };
        tracing::info!(appliance = name, url = %w.link.url(), interval = ?w.cfg.interval, resumed = w.mark.is_some(), "change events from OneView tasks enabled");
        out.push(Box::pin(w.run(work.clone())));
    }
    Ok(out)
}

impl Watcher {
    /// Reads at `change_events.interval` until `work` is cancelled (a change event in delivery
    /// is abandoned then; it was not recorded, so the next start sends it).
    pub async fn run(mut self, work: CancellationToken) {
        loop {
            let cycle = tokio::select! {
                _ = work.cancelled() => return,
                r = self.cycle() => r,
            };
            match cycle {
                Ok(()) => {
                    self.metrics.polls[0].inc();
                    self.metrics.last_poll.set(chrono::Utc::now().timestamp());
                }
                Err(e) => {
                    self.metrics.polls[1].inc();
                    tracing::warn!(appliance = %self.appliance.id, error = %e, retry_in = ?self.cfg.interval, "reading OneView tasks for change events failed");
                }
            }
            tokio::select! {
                _ = work.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.interval) => {}
            }
        }
    }

    async fn save(&self) {
        if let Some(m) = &self.mark
            && let Ok(v) = serde_json::to_string(m)
        {
            self.link.store_watermark(&self.key, v).await;
        }
    }

    /// One walk of the tasks finished since the mark.
    async fn cycle(&mut self) -> Result<(), OneViewError> {
        let Some(mark) = self.mark.clone() else {
            return self.start().await;
        };
        let since = mark.since_ms - self.overlap;
        let query = tasks::finished_since(since, self.cfg.page_size);
        let client = self.client.clone();
        let ov_metrics = self.ov_metrics.clone();
        let mut w = Walker::<Task>::of(&client, &query, &ov_metrics);
        let mut max_modified: Option<i64> = None;
        let mut changed = false;
        while let Some(page) = w.next_page().await? {
            for t in page {
                let modified = t.modified_ms();
                max_modified = max_modified.max(modified);
                // An appliance that ignored part of the filter must not send a running task.
                if !t.is_terminal() || self.is_done(&t.uri) {
                    continue;
                }
                self.metrics.seen.inc();
                let stamp = modified.unwrap_or(mark.since_ms);
                if let Some(reason) = self.filter.skip(&t) {
                    self.metrics.skipped
                        [SKIP_REASONS.iter().position(|r| *r == reason).unwrap_or(0)]
                    .inc();
                    tracing::debug!(appliance = %self.appliance.id, task = %t.uri, name = t.name.as_deref().unwrap_or(""), reason = reason.as_str(), "task not sent as a change event");
                    self.mark_done(&t.uri, stamp);
                    changed = true;
                    continue;
                }
                self.send(&t).await;
                self.mark_done(&t.uri, stamp);
                // Durable before the next one is sent: a restart never sends this one again.
                self.save().await;
                changed = false;
            }
        }
        let next = w.appliance_clock_floor_ms.or(max_modified);
        if let Some(m) = &mut self.mark {
            let before = m.since_ms;
            m.since_ms = m.since_ms.max(next.unwrap_or(m.since_ms));
            let floor = m.since_ms - self.overlap;
            let n = m.done.len();
            m.done.retain(|_, stamp| *stamp >= floor);
            changed |= m.since_ms != before || m.done.len() != n;
        }
        if changed {
            self.save().await;
        }
        tracing::debug!(appliance = %self.appliance.id, members = w.members, since = %format_timestamp(since), "OneView task poll finished");
        Ok(())
    }

    fn is_done(&self, uri: &str) -> bool {
        self.mark.as_ref().is_some_and(|m| m.done.contains_key(uri))
    }

    fn mark_done(&mut self, uri: &str, stamp: i64) {
        if let Some(m) = &mut self.mark {
            m.done.insert(uri.to_owned(), stamp);
        }
    }

    /// The first run: the mark starts at the appliance's clock (or its newest task).
    async fn start(&mut self) -> Result<(), OneViewError> {
        let query = tasks::newest();
        let mut w = Walker::<Task>::of(&self.client, &query, &self.ov_metrics);
        let newest = w
            .next_page()
            .await?
            .and_then(|p| p.iter().filter_map(Task::modified_ms).max());
        let since_ms = w
            .appliance_clock_floor_ms
            .or(newest)
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        tracing::info!(appliance = %self.appliance.id, since = %format_timestamp(since_ms), "change events start with the tasks finishing from now on");
        self.mark = Some(Mark {
            since_ms,
            done: BTreeMap::new(),
        });
        self.save().await;
        Ok(())
    }

    async fn send(&self, t: &Task) {
        let event = self.link.build(t, &self.appliance);
        let target = self.link.target(&self.appliance.id, t);
        let retried = self.metrics.retried.clone();
        match self
            .link
            .deliver(&event, &target, |_| {
                retried.inc();
            })
            .await
        {
            Delivered::Accepted { attempts } => {
                self.metrics.sent.inc();
                tracing::info!(appliance = %self.appliance.id, task = %t.uri, route = %target.route, attempts, summary = %event.payload.summary, "change event accepted by PagerDuty");
            }
            Delivered::Rejected { status, detail } => {
                self.metrics.failed.inc();
                tracing::error!(appliance = %self.appliance.id, task = %t.uri, route = %target.route, status, detail = %detail, "PagerDuty refused the change event; it is not sent again");
            }
        }
    }
}
