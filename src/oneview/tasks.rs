//! OneView tasks (`/rest/tasks`): the resource as the appliance serves it, which of them are
//! worth a change event ([`TaskFilter`]), and the queries the change-event watcher
//! ([`crate::change_events`]) walks with [`super::collection::Walker`].
//!
//! Shape (`TaskResourceV2`, category `tasks`): `uri`, `name` ("Update firmware", "Power off"),
//! `owner` (the user), `taskState` (`New`, `Pending`, `Starting`, `Running`, `Suspended`,
//! `Stopping`, `Terminated`, `Killed`, `Interrupted`, `Completed`, `Warning`, `Error`),
//! `percentComplete`, `completedSteps`/`totalSteps`, `taskErrors[]` (`errorCode`,
//! `message`, `recommendedActions`), `taskStatus`, `stateReason`, `parentTaskUri` (a subtask's
//! parent), `associatedResource{resourceName, resourceUri, resourceCategory,
//! associationType}`, `created`, `modified`. Sources: HPE's oneview-python `Tasks` client
//! (`hpeOneView/resources/activity/tasks.py`, `/rest/tasks` with `filter`, `sort`, `count`),
//! the POSH `Get-OVTask` reference (filters on name, state and resource category; task name,
//! owner, state and status), and the simulator's task that the SCMB keypair generation already
//! polled. Every field is optional here: a task that lacks one still decodes.

use serde::{Deserialize, Serialize};

use super::collection::{AlertQuery, Member, format_timestamp};
use super::metrics::Endpoint;
use crate::model::AssociatedResource;

/// The task states that end a task and are sent: it completed, completed with warnings, or
/// failed (a failed firmware update can leave a half-changed server, which is what a responder
/// wants to know). `Terminated`, `Killed` and `Interrupted` were stopped before they changed
/// anything worth a change event.
pub const TERMINAL_STATES: [&str; 3] = ["Completed", "Warning", "Error"];

/// One error of a failed task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskError {
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub recommended_actions: Vec<String>,
}

/// A OneView task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Task {
    /// `/rest/tasks/{id}`.
    pub uri: String,
    pub name: Option<String>,
    pub owner: Option<String>,
    pub task_state: Option<String>,
    pub task_status: Option<String>,
    pub state_reason: Option<String>,
    pub percent_complete: Option<i64>,
    pub completed_steps: Option<i64>,
    pub total_steps: Option<i64>,
    pub task_errors: Vec<TaskError>,
    pub parent_task_uri: Option<String>,
    pub associated_resource: Option<AssociatedResource>,
    pub created: Option<String>,
    pub modified: Option<String>,
}

impl Member for Task {
    const COLLECTION: &'static str = "/rest/tasks";
    const ENDPOINT: Endpoint = Endpoint::Tasks;
    const PAGE: &'static str = "a task collection page";
    fn member_uri(&self) -> &str {
        &self.uri
    }
}

impl Task {
    pub fn state(&self) -> &str {
        self.task_state.as_deref().unwrap_or("")
    }

    pub fn is_terminal(&self) -> bool {
        TERMINAL_STATES.contains(&self.state())
    }

    fn resource(&self, f: impl Fn(&AssociatedResource) -> Option<&str>) -> Option<&str> {
        self.associated_resource
            .as_ref()
            .and_then(f)
            .filter(|s| !s.is_empty())
    }

    pub fn resource_name(&self) -> Option<&str> {
        self.resource(|r| r.resource_name.as_deref())
    }

    pub fn resource_uri(&self) -> Option<&str> {
        self.resource(|r| r.resource_uri.as_deref())
    }

    pub fn resource_category(&self) -> Option<&str> {
        self.resource(|r| r.resource_category.as_deref())
    }

    /// Unix millis of `modified`, the completion time of a finished task.
    pub fn modified_ms(&self) -> Option<i64> {
        self.modified
            .as_deref()
            .and_then(super::collection::parse_timestamp)
    }

    /// A subtask (it has a parent): its parent's change event covers it.
    pub fn is_subtask(&self) -> bool {
        self.parent_task_uri
            .as_deref()
            .is_some_and(|p| !p.is_empty())
    }
}

/// Why a finished task is not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its resource category or name is not on the allow-lists.
    NotAllowed,
    /// A subtask of another task.
    Subtask,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotAllowed => "not_allowed",
            Skip::Subtask => "subtask",
        }
    }
}

/// `change_events.categories` and `change_events.names`, compiled: globs, case-insensitive;
/// a task is sent when both match.
#[derive(Debug, Clone)]
pub struct TaskFilter {
    categories: globset::GlobSet,
    names: globset::GlobSet,
}

fn globs(list: &[String]) -> Result<globset::GlobSet, globset::Error> {
    let mut b = globset::GlobSetBuilder::new();
    for g in list {
        b.add(
            globset::GlobBuilder::new(g)
                .case_insensitive(true)
                .literal_separator(false)
                .build()?,
        );
    }
    b.build()
}

impl TaskFilter {
    /// Config validation has checked the globs; an error here names the bad list.
    pub fn new(categories: &[String], names: &[String]) -> Result<Self, String> {
        Ok(Self {
            categories: globs(categories).map_err(|e| format!("change_events.categories: {e}"))?,
            names: globs(names).map_err(|e| format!("change_events.names: {e}"))?,
        })
    }

    /// `None`: send it.
    pub fn skip(&self, t: &Task) -> Option<Skip> {
        if t.is_subtask() {
            return Some(Skip::Subtask);
        }
        let category_ok = t
            .resource_category()
            .is_some_and(|c| self.categories.is_match(c));
        let name_ok = t.name.as_deref().is_some_and(|n| self.names.is_match(n));
        (!(category_ok && name_ok)).then_some(Skip::NotAllowed)
    }
}

/// The finished tasks modified at or after `since` (unix ms), oldest first, so change events
/// reach PagerDuty in the order the changes happened.
pub fn finished_since(since: i64, page_size: u32) -> AlertQuery {
    let states = TERMINAL_STATES
        .iter()
        .map(|s| format!("taskState='{s}'"))
        .collect::<Vec<_>>()
        .join(" OR ");
    AlertQuery {
        filters: vec![
            format!("({states})"),
            format!("modified >= '{}'", format_timestamp(since)),
        ],
        sort: Some("modified:ascending".to_owned()),
        page_size,
    }
}

/// One task, the newest: its page carries the appliance's clock (`Date`), where a first run
/// starts.
pub fn newest() -> AlertQuery {
    AlertQuery {
        filters: Vec::new(),
        sort: Some("modified:descending".to_owned()),
        page_size: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, category: &str) -> Task {
        serde_json::from_value(serde_json::json!({
            "type": "TaskResourceV2", "category": "tasks", "uri": "/rest/tasks/1",
            "name": name, "taskState": "Completed", "owner": "administrator",
            "percentComplete": 100, "taskErrors": [],
            "associatedResource": {"resourceName": "SGH8, bay 3", "resourceUri": "/rest/server-hardware/1",
                "resourceCategory": category, "associationType": "MANAGED_BY"},
            "created": "2024-05-01T10:00:00.000Z", "modified": "2024-05-01T10:05:00.000Z",
        }))
        .unwrap()
    }

    #[test]
    fn the_allow_lists_are_case_insensitive_globs_and_both_must_match() {
        let f = TaskFilter::new(
            &["server-hardware".into()],
            &["Update firmware*".into(), "Power off".into()],
        )
        .unwrap();
        assert_eq!(f.skip(&task("Update Firmware", "server-hardware")), None);
        assert_eq!(f.skip(&task("power off", "Server-Hardware")), None);
        assert_eq!(
            f.skip(&task("Refresh", "server-hardware")),
            Some(Skip::NotAllowed)
        );
        assert_eq!(
            f.skip(&task("Update firmware", "ethernet-networks")),
            Some(Skip::NotAllowed)
        );
        let mut sub = task("Update firmware", "server-hardware");
        sub.parent_task_uri = Some("/rest/tasks/0".into());
        assert_eq!(f.skip(&sub), Some(Skip::Subtask));
        assert_eq!(sub.modified_ms(), Some(1_714_557_900_000));
    }

    #[test]
    fn the_query_asks_for_finished_tasks_oldest_first() {
        let q = finished_since(1_714_557_900_000, 50);
        let p = q.path_in(Task::COLLECTION, 0);
        assert!(p.starts_with("/rest/tasks?start=0&count=50&filter="), "{p}");
        assert!(p.contains("sort=modified%3Aascending"), "{p}");
        assert!(
            p.contains("taskState%3D%27Completed%27%20OR%20taskState%3D%27Warning%27"),
            "{p}"
        );
    }
}
