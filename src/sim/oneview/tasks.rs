//! The simulator's task list (`/rest/tasks`): what the appliance records for firmware updates,
//! profile applies, power and reset operations, in the `TaskResourceV2` shape (see
//! [`crate::oneview::tasks`] for the fields and where the shape comes from). Tasks are added
//! and moved through their states by the control API (`POST /sim/tasks`,
//! `POST /sim/tasks/{id}/state`) or [`super::SimHandle::add_task`]; every change stamps
//! `modified` with the simulator's clock, as the appliance does.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::filter::{Attr, Fields, Pred};
use super::store::SortField;
use crate::oneview::collection::format_timestamp;

/// A task to add.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskSpec {
    pub name: String,
    /// `Running` (percentComplete below 100) or a finished state such as `Completed`.
    pub task_state: String,
    pub owner: String,
    pub resource_name: String,
    pub resource_uri: String,
    pub resource_category: String,
    pub percent_complete: Option<u32>,
    /// `(errorCode, message)` of a failed task.
    pub task_errors: Vec<(String, String)>,
    pub parent_task_uri: Option<String>,
    /// How long ago it was created and last modified (seconds; the history at start).
    pub age_secs: u64,
}

impl Default for TaskSpec {
    fn default() -> Self {
        Self {
            name: "Update firmware".to_owned(),
            task_state: "Completed".to_owned(),
            owner: "administrator".to_owned(),
            resource_name: "SGH8..YECA, bay 3".to_owned(),
            resource_uri: "/rest/server-hardware/31393736-3831-4753-4831-30305837524E".to_owned(),
            resource_category: "server-hardware".to_owned(),
            percent_complete: None,
            task_errors: Vec::new(),
            parent_task_uri: None,
            age_secs: 0,
        }
    }
}

/// A task as stored.
#[derive(Debug, Clone)]
pub struct SimTask {
    pub uri: String,
    pub spec: TaskSpec,
    pub created_ms: i64,
    pub modified_ms: i64,
}

impl Fields for SimTask {
    fn text(&self, attr: Attr) -> Option<&str> {
        Some(match attr {
            Attr::Uri => &self.uri,
            Attr::TaskState => &self.spec.task_state,
            Attr::Name => &self.spec.name,
            Attr::Owner => &self.spec.owner,
            Attr::ResourceUri => &self.spec.resource_uri,
            Attr::ResourceName => &self.spec.resource_name,
            Attr::ResourceCategory => &self.spec.resource_category,
            _ => return None,
        })
    }

    fn time(&self, attr: Attr) -> Option<i64> {
        match attr {
            Attr::Created => Some(self.created_ms),
            Attr::Modified => Some(self.modified_ms),
            _ => None,
        }
    }
}

fn finished(state: &str) -> bool {
    matches!(
        state,
        "Completed" | "Warning" | "Error" | "Terminated" | "Killed" | "Interrupted"
    )
}

impl SimTask {
    pub fn to_json(&self) -> Value {
        let s = &self.spec;
        let percent = s
            .percent_complete
            .unwrap_or(if finished(&s.task_state) { 100 } else { 10 });
        json!({
            "type": "TaskResourceV2",
            "category": "tasks",
            "uri": self.uri,
            "name": s.name,
            "owner": s.owner,
            "userInitiated": true,
            "taskState": s.task_state,
            "taskStatus": match s.task_state.as_str() {
                "Completed" => format!("{} completed.", s.name),
                "Error" => format!("{} failed.", s.name),
                "Warning" => format!("{} completed with warnings.", s.name),
                _ => format!("{} in progress.", s.name),
            },
            "stateReason": Value::Null,
            "percentComplete": percent,
            "completedSteps": percent / 10,
            "totalSteps": 10,
            "taskErrors": s.task_errors.iter().map(|(code, message)| json!({
                "errorCode": code, "message": message, "recommendedActions": [], "details": "",
            })).collect::<Vec<_>>(),
            "parentTaskUri": s.parent_task_uri,
            "associatedResource": {
                "resourceName": s.resource_name,
                "resourceUri": s.resource_uri,
                "resourceCategory": s.resource_category,
                "associationType": "MANAGED_BY",
            },
            "created": format_timestamp(self.created_ms),
            "modified": format_timestamp(self.modified_ms),
            "eTag": format_timestamp(self.modified_ms),
        })
    }
}

/// The task list.
#[derive(Debug, Default)]
pub struct TaskStore {
    tasks: Vec<SimTask>,
    next: u64,
}

impl TaskStore {
    /// The history an appliance has before anyone looks: finished tasks from hours ago.
    pub fn with_history(now_ms: i64) -> Self {
        let mut s = Self::default();
        for (name, category, resource, age_h) in [
            (
                "Update firmware",
                "server-hardware",
                "SGH8..YECA, bay 1",
                30u64,
            ),
            ("Apply profile", "server-profiles", "esx-prod-01", 26),
            ("Power off", "server-hardware", "SGH8..YECA, bay 5", 20),
            ("Refresh", "enclosures", "SGH8..YECA", 12),
            ("Reset", "interconnects", "SGH8..YECA, interconnect 3", 6),
        ] {
            s.add(
                &TaskSpec {
                    name: name.to_owned(),
                    resource_category: category.to_owned(),
                    resource_name: resource.to_owned(),
                    resource_uri: format!("/rest/{category}/history-{age_h}"),
                    age_secs: age_h * 3600,
                    ..TaskSpec::default()
                },
                now_ms,
            );
        }
        s
    }

    pub fn add(&mut self, spec: &TaskSpec, now_ms: i64) -> String {
        self.next += 1;
        // Real task ids are UUIDs; these are stable and readable.
        let uri = format!("/rest/tasks/sim-{:08}", self.next);
        let at = now_ms - i64::try_from(spec.age_secs.saturating_mul(1000)).unwrap_or(0);
        self.tasks.push(SimTask {
            uri: uri.clone(),
            spec: spec.clone(),
            created_ms: at,
            modified_ms: at,
        });
        uri
    }

    /// Moves a task to `state` (`percent` complete); `false` when there is no such task.
    pub fn set_state(&mut self, uri: &str, state: &str, percent: Option<u32>, now_ms: i64) -> bool {
        match self.tasks.iter_mut().find(|t| t.uri == uri) {
            Some(t) => {
                t.spec.task_state = state.to_owned();
                t.spec.percent_complete = percent;
                t.modified_ms = now_ms;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, uri: &str) -> Option<&SimTask> {
        self.tasks.iter().find(|t| t.uri == uri)
    }

    /// Evaluates a query and cuts one page: `(total, members)`.
    pub fn query(
        &self,
        pred: Option<&Pred>,
        sort: Option<(SortField, bool)>,
        start: usize,
        count: usize,
    ) -> (usize, Vec<&SimTask>) {
        let mut hits: Vec<&SimTask> = self
            .tasks
            .iter()
            .filter(|t| pred.is_none_or(|p| p.eval(*t)))
            .collect();
        if let Some((field, descending)) = sort {
            hits.sort_by(|a, b| {
                let o = match field {
                    SortField::Created => a.created_ms.cmp(&b.created_ms),
                    SortField::Modified => a.modified_ms.cmp(&b.modified_ms),
                    SortField::Id | SortField::Severity => std::cmp::Ordering::Equal,
                }
                .then(a.uri.cmp(&b.uri));
                if descending { o.reverse() } else { o }
            });
        }
        let total = hits.len();
        (total, hits.into_iter().skip(start).take(count).collect())
    }
}
