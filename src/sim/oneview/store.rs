//! The simulator's alert store: compact alerts (shared strings), ordered by id, plus an index
//! by `modified` so that "what changed since T" costs what changed, not what is stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::filter::{Attr, Fields, Pred};
use super::site::Site;
use super::templates::{Template, templates};
use crate::model::{AlertState, Severity};
use crate::oneview::collection::format_timestamp;

/// The resource an alert is about.
#[derive(Debug, Clone)]
pub struct SimResource {
    pub name: Arc<str>,
    pub uri: Arc<str>,
    pub category: Arc<str>,
    pub physical_type: Arc<str>,
}

#[derive(Debug, Clone)]
pub struct SimChangeLog {
    pub id: u64,
    pub created_ms: i64,
    pub notes: String,
    pub username: String,
    pub user_entered: bool,
}

/// One stored alert.
#[derive(Debug, Clone)]
pub struct SimAlert {
    pub id: u64,
    pub uri: Arc<str>,
    pub created_ms: i64,
    pub modified_ms: i64,
    pub severity: Severity,
    pub state: AlertState,
    pub urgency: Arc<str>,
    pub description: Arc<str>,
    pub corrective_action: Arc<str>,
    pub alert_type_id: Arc<str>,
    pub health_category: Arc<str>,
    pub resource: Arc<SimResource>,
    pub life_cycle: bool,
    pub assigned_to_user: Option<String>,
    pub cleared_by_user: Option<String>,
    pub cleared_time_ms: Option<i64>,
    pub change_log: Vec<SimChangeLog>,
    pub etag: u64,
    /// Served with a field of the wrong type, to exercise clients' malformed-alert handling.
    pub corrupt: bool,
}

impl Fields for SimAlert {
    fn text(&self, attr: Attr) -> Option<&str> {
        Some(match attr {
            Attr::Uri => &self.uri,
            Attr::AlertState => self.state.as_str(),
            Attr::Severity => self.severity.as_str(),
            Attr::Urgency => &self.urgency,
            Attr::HealthCategory => &self.health_category,
            Attr::AlertTypeId => &self.alert_type_id,
            Attr::Description => &self.description,
            Attr::ResourceUri => &self.resource.uri,
            Attr::ResourceName => &self.resource.name,
            Attr::ResourceCategory => &self.resource.category,
            Attr::PhysicalResourceType => &self.resource.physical_type,
            Attr::AssignedToUser => return self.assigned_to_user.as_deref(),
            Attr::Created
            | Attr::Modified
            | Attr::ClearedTime
            | Attr::TaskState
            | Attr::Name
            | Attr::Owner => return None,
        })
    }

    fn time(&self, attr: Attr) -> Option<i64> {
        match attr {
            Attr::Created => Some(self.created_ms),
            Attr::Modified => Some(self.modified_ms),
            Attr::ClearedTime => self.cleared_time_ms,
            _ => None,
        }
    }
}

impl SimAlert {
    /// The alert as `/rest/alerts` serves it (`AlertResourceV3` shape).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "type": "AlertResourceV3",
            "uri": &*self.uri,
            "category": "alerts",
            "eTag": self.etag.to_string(),
            "created": format_timestamp(self.created_ms),
            "modified": format_timestamp(self.modified_ms),
            "associatedEventUris": [format!("/rest/events/{}", self.id)],
            "alertTypeID": &*self.alert_type_id,
            "alertState": self.state.as_str(),
            "severity": self.severity.as_str(),
            "urgency": &*self.urgency,
            "description": &*self.description,
            "correctiveAction": &*self.corrective_action,
            "healthCategory": &*self.health_category,
            "lifeCycle": self.life_cycle,
            "associatedResource": {
                "resourceUri": &*self.resource.uri,
                "resourceName": &*self.resource.name,
                "resourceCategory": &*self.resource.category,
                "associationType": "HAS_A",
            },
            "resourceUri": &*self.resource.uri,
            "resourceID": null,
            "physicalResourceType": &*self.resource.physical_type,
            "assignedToUser": self.assigned_to_user,
            "clearedByUser": self.cleared_by_user,
            "clearedTime": self.cleared_time_ms.map(format_timestamp),
            "changeLog": self.change_log.iter().map(|c| json!({
                "uri": format!("/rest/alerts/AlertChangeLog/{}", c.id),
                "created": format_timestamp(c.created_ms),
                "notes": c.notes,
                "userEntered": c.user_entered,
                "username": c.username,
            })).collect::<Vec<_>>(),
            "childAlerts": [],
            "parentAlert": null,
            "activityUri": null,
            "serviceEventSource": false,
            "serviceEventDetails": null,
        });
        if self.corrupt {
            v["severity"] = json!(["not", "a", "string"]);
        }
        v
    }
}

/// What a caller may set when adding an alert; everything else comes from a real alert's
/// content.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct AlertSpec {
    pub severity: Option<String>,
    pub alert_state: Option<String>,
    pub description: Option<String>,
    pub corrective_action: Option<String>,
    #[serde(rename = "alertTypeID")]
    pub alert_type_id: Option<String>,
    pub health_category: Option<String>,
    pub urgency: Option<String>,
    pub resource_name: Option<String>,
    pub resource_category: Option<String>,
    pub life_cycle: Option<bool>,
    /// Age of the alert in milliseconds (created = modified = now - age).
    pub age_ms: Option<i64>,
}

/// Bulk generation of realistic alerts.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateSpec {
    pub count: usize,
    /// Severity for all; default: each template's own (Warning or Critical).
    pub severity: Option<String>,
    /// State for all; default `Active`.
    pub state: Option<String>,
    /// Spread `created`/`modified` over this many milliseconds before now (0: all now).
    pub max_age_ms: i64,
}

/// A query result page.
pub struct PageResult<'a> {
    pub total: usize,
    pub members: Vec<&'a SimAlert>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    Id,
    Created,
    Modified,
    Severity,
}

/// The alerts.
#[derive(Default)]
pub struct Store {
    alerts: BTreeMap<u64, SimAlert>,
    by_modified: BTreeSet<(i64, u64)>,
    next_id: u64,
    next_changelog: u64,
    next_etag: u64,
    /// template * RESOURCE_VARIANTS + variant -> resource.
    resources: HashMap<u64, Arc<SimResource>>,
    /// How generated resources are named.
    site: Site,
}

/// Distinct resources per template for generated alerts.
const RESOURCE_VARIANTS: u64 = 480;

/// A cheap deterministic hash for spreading generated values.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Store {
    /// An empty store whose generated alerts name `site`'s hardware.
    pub fn new(site: Site) -> Self {
        Self {
            site,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.alerts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty()
    }

    pub fn get(&self, id: u64) -> Option<&SimAlert> {
        self.alerts.get(&id)
    }

    fn etag(&mut self) -> u64 {
        self.next_etag += 1;
        self.next_etag
    }

    /// A resource for template `ti`, variant `n` (< [`RESOURCE_VARIANTS`]): server bays and
    /// interconnects vary, the rest keep the template's resource. Interned, so 500k alerts
    /// share a few thousand resources.
    fn resource(&mut self, ti: usize, t: &Template, n: u64) -> Arc<SimResource> {
        let slot = ti as u64 * RESOURCE_VARIANTS + n % RESOURCE_VARIANTS;
        if let Some(r) = self.resources.get(&slot) {
            return r.clone();
        }
        let site = &self.site;
        let (bays, interconnects) = (site.bays.max(1), site.interconnect_bays.max(1));
        let name: String = match &*t.resource_category {
            "server-hardware" => {
                format!("{}, bay {}", site.enclosure((n / bays) % 40), n % bays + 1)
            }
            "sas-interconnects" => format!(
                "{}, interconnect {}",
                site.enclosure((n / interconnects) % 40),
                n % interconnects + 1
            ),
            "logical-enclosures" => site
                .logical_enclosure
                .clone()
                .unwrap_or_else(|| t.resource_name.to_string()),
            _ => t.resource_name.to_string(),
        };
        let key = format!("{}|{name}", t.resource_category);
        let h = mix(key.bytes().fold(0u64, |acc, b| mix(acc ^ u64::from(b))));
        let uri = format!(
            "/rest/{}/{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
            t.resource_category,
            (h >> 32) as u32,
            (h >> 16) as u16,
            h as u16,
            (mix(h) >> 48) as u16,
            mix(h) & 0xFFFF_FFFF_FFFF
        );
        let r = Arc::new(SimResource {
            name: Arc::from(name),
            uri: Arc::from(uri),
            category: t.resource_category.clone(),
            physical_type: t.physical_resource_type.clone(),
        });
        self.resources.insert(slot, r.clone());
        r
    }

    /// Adds one alert; returns its id.
    pub fn add(&mut self, spec: &AlertSpec, now_ms: i64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let ts = templates();
        let ti = (id as usize - 1) % ts.len();
        let t = &ts[ti];
        let mut resource = self.resource(ti, t, mix(id) % RESOURCE_VARIANTS);
        if spec.resource_name.is_some() || spec.resource_category.is_some() {
            let category: Arc<str> = spec
                .resource_category
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(|| resource.category.clone());
            let name: Arc<str> = spec
                .resource_name
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(|| resource.name.clone());
            resource = Arc::new(SimResource {
                uri: Arc::from(format!("/rest/{category}/sim-{id}")),
                name,
                physical_type: category.clone(),
                category,
            });
        }
        let stamp = now_ms - spec.age_ms.unwrap_or(0).max(0);
        let state = spec
            .alert_state
            .as_deref()
            .map(AlertState::parse)
            .unwrap_or(AlertState::Active);
        let severity = spec
            .severity
            .as_deref()
            .map(Severity::parse)
            .unwrap_or_else(|| t.severity.clone());
        let cleared = state == AlertState::Cleared;
        let alert = SimAlert {
            id,
            uri: Arc::from(format!("/rest/alerts/{id}")),
            created_ms: stamp,
            modified_ms: stamp,
            severity,
            state,
            urgency: Arc::from(spec.urgency.as_deref().unwrap_or("None")),
            description: spec
                .description
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(|| t.description.clone()),
            corrective_action: spec
                .corrective_action
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(|| t.corrective_action.clone()),
            alert_type_id: spec
                .alert_type_id
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(|| t.alert_type_id.clone()),
            health_category: spec
                .health_category
                .as_deref()
                .map(Arc::from)
                .unwrap_or_else(|| t.health_category.clone()),
            resource,
            life_cycle: spec.life_cycle.unwrap_or(false),
            assigned_to_user: None,
            cleared_by_user: cleared.then(|| "System".to_owned()),
            cleared_time_ms: cleared.then_some(stamp),
            change_log: Vec::new(),
            etag: self.etag(),
            corrupt: false,
        };
        self.by_modified.insert((alert.modified_ms, id));
        self.alerts.insert(id, alert);
        id
    }

    /// Adds `spec.count` alerts; returns the first id (ids are consecutive).
    pub fn generate(&mut self, spec: &GenerateSpec, now_ms: i64) -> Option<u64> {
        let mut first = None;
        for i in 0..spec.count {
            let age = if spec.max_age_ms > 0 {
                (mix(self.next_id + 1 + i as u64) % spec.max_age_ms as u64) as i64
            } else {
                0
            };
            let id = self.add(
                &AlertSpec {
                    severity: spec.severity.clone(),
                    alert_state: spec.state.clone(),
                    age_ms: Some(age),
                    ..AlertSpec::default()
                },
                now_ms,
            );
            first.get_or_insert(id);
        }
        first
    }

    /// Applies `f` to alert `id` and stamps it as modified now.
    pub fn modify(&mut self, id: u64, now_ms: i64, f: impl FnOnce(&mut SimAlert)) -> bool {
        let etag = self.etag();
        let Some(a) = self.alerts.get_mut(&id) else {
            return false;
        };
        self.by_modified.remove(&(a.modified_ms, id));
        f(a);
        // Stamps only move forward, even if a test set the alert in the future.
        a.modified_ms = now_ms.max(a.modified_ms);
        a.etag = etag;
        self.by_modified.insert((a.modified_ms, id));
        true
    }

    pub fn clear(&mut self, id: u64, now_ms: i64, by: &str) -> bool {
        self.modify(id, now_ms, |a| {
            a.state = AlertState::Cleared;
            a.cleared_by_user = Some(by.to_owned());
            a.cleared_time_ms = Some(now_ms);
        })
    }

    pub fn add_note(&mut self, id: u64, now_ms: i64, notes: &str, username: &str) -> bool {
        self.next_changelog += 1;
        let cid = self.next_changelog;
        self.modify(id, now_ms, |a| {
            a.change_log.push(SimChangeLog {
                id: cid,
                created_ms: now_ms,
                notes: notes.to_owned(),
                username: username.to_owned(),
                user_entered: true,
            })
        })
    }

    pub fn delete(&mut self, id: u64) -> bool {
        match self.alerts.remove(&id) {
            Some(a) => {
                self.by_modified.remove(&(a.modified_ms, id));
                true
            }
            None => false,
        }
    }

    /// Open alerts (Active or Locked).
    pub fn open_count(&self) -> usize {
        self.alerts
            .values()
            .filter(|a| matches!(a.state, AlertState::Active | AlertState::Locked))
            .count()
    }

    /// Evaluates a query and cuts one page.
    pub fn query(
        &self,
        pred: Option<&Pred>,
        sort: Option<(SortField, bool)>,
        start: usize,
        count: usize,
    ) -> PageResult<'_> {
        let matches = |a: &&SimAlert| pred.is_none_or(|p| p.eval(*a));
        let mut hits: Vec<&SimAlert> = match pred.and_then(Pred::modified_lower_bound) {
            Some(lb) => {
                let mut v: Vec<&SimAlert> = self
                    .by_modified
                    .range((lb, 0)..)
                    .filter_map(|(_, id)| self.alerts.get(id))
                    .filter(matches)
                    .collect();
                if sort.is_none() {
                    v.sort_unstable_by_key(|a| a.id);
                }
                v
            }
            None => self.alerts.values().filter(matches).collect(),
        };
        if let Some((field, descending)) = sort {
            hits.sort_by(|a, b| {
                let o = match field {
                    SortField::Id => a.id.cmp(&b.id),
                    SortField::Created => a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)),
                    SortField::Modified => a.modified_ms.cmp(&b.modified_ms).then(a.id.cmp(&b.id)),
                    SortField::Severity => a
                        .severity
                        .as_str()
                        .cmp(b.severity.as_str())
                        .then(a.id.cmp(&b.id)),
                };
                if descending { o.reverse() } else { o }
            });
        }
        let total = hits.len();
        let members = hits.into_iter().skip(start).take(count).collect();
        PageResult { total, members }
    }
}
