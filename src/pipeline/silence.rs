//! Silences (maintenance windows): which alerts must not page for a while, as the operator
//! said through `POST /api/v1/silences` or `oneview-pagerduty-bridge silence add`.
//!
//! This module owns the silence itself (matchers, window, who and why), its validation (every
//! error names the field), its durable form (a [`SilenceRecord`] of the state store) and
//! [`Silences`], the in-memory set the dispatcher consults at intake and the web side lists.
//! What a silence does to an alert is the policy's ([`crate::pipeline::decide`]); when the
//! dispatcher evaluates held alerts again (a silence starts, ends or is expired) is the
//! dispatcher's, woken through [`Silences::subscribe`] and [`Silences::next_change`].
//!
//! Time is the tokio clock ([`Clock`]: the wall clock at start plus tokio's monotonic time
//! since), so a silence's start and end are timers tests can run with paused time, and a
//! wall-clock step (NTP) does not end a maintenance window early.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::AlertChange;
use crate::state::{Journal, Op, SilenceRecord};

/// The matcher keys a silence may use; all given must match.
pub const MATCHER_KEYS: [&str; 5] = [
    "appliance",
    "resource_name",
    "resource_category",
    "severity",
    "alert_type",
];

/// The alert severities OneView gives (`model::Severity`), for the `severity` matcher.
const SEVERITIES: [&str; 5] = ["OK", "Warning", "Critical", "Unknown", "Disabled"];

/// Longest silence accepted: longer windows are forgotten maintenance, not maintenance.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// Lengths of free text kept (`comment`, `created_by`, a matcher value).
const MAX_TEXT: usize = 1000;

/// A silence, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    /// Matcher key (one of [`MATCHER_KEYS`]) -> value: exact (case-insensitive) for
    /// `appliance`, `resource_category` and `severity`; a glob for `resource_name`
    /// (case-insensitive) and `alert_type` (case-sensitive, like OneView's ids).
    pub matchers: BTreeMap<String, String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub created_by: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
    /// Who expired it before its end, when someone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<String>,
}

/// Where a silence stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SilenceState {
    /// Starts later (`starts_at` in the future).
    Pending,
    Active,
    Expired,
}

impl Silence {
    pub fn state(&self, now: DateTime<Utc>) -> SilenceState {
        if now >= self.ends_at {
            SilenceState::Expired
        } else if now < self.starts_at {
            SilenceState::Pending
        } else {
            SilenceState::Active
        }
    }

    /// The state store's form.
    pub fn record(&self) -> Option<SilenceRecord> {
        Some(SilenceRecord {
            id: self.id.clone(),
            ends_at: self.ends_at.into(),
            body: serde_json::to_string(self).ok()?,
        })
    }
}

/// A silence as the API shows it: the silence and its state now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SilenceView {
    #[serde(flatten)]
    pub silence: Silence,
    pub state: SilenceState,
}

/// `POST /api/v1/silences`: what the operator asks for. `ends_at` or `duration` is required.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    #[serde(default)]
    pub matchers: BTreeMap<String, String>,
    /// Default: now.
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// From `starts_at`, in humantime (`2h`, `90m`), when `ends_at` is not given.
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

/// Why a silence was refused; `field` names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {why}")]
pub struct SilenceError {
    /// `matchers`, `matchers.<key>`, `starts_at`, `ends_at`, `duration`, `created_by`,
    /// `comment`.
    pub field: String,
    pub why: String,
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> SilenceError {
    SilenceError {
        field: field.into(),
        why: why.into(),
    }
}

impl NewSilence {
    /// Checks the request and makes the silence. `appliances`: the configured appliance names
    /// (an `appliance` matcher must name one); `now`: the pipeline's clock.
    pub fn validate(
        self,
        appliances: &[&str],
        now: DateTime<Utc>,
    ) -> Result<Silence, SilenceError> {
        if self.matchers.is_empty() {
            return Err(invalid(
                "matchers",
                format!(
                    "at least one matcher is required (one of {}); a silence of everything is not a maintenance window",
                    MATCHER_KEYS.join(", ")
                ),
            ));
        }
        for (k, v) in &self.matchers {
            if !MATCHER_KEYS.contains(&k.as_str()) {
                return Err(invalid(
                    format!("matchers.{k}"),
                    format!(
                        "unknown matcher `{k}`; the matchers are {}",
                        MATCHER_KEYS.join(", ")
                    ),
                ));
            }
            let field = format!("matchers.{k}");
            if v.trim().is_empty() {
                return Err(invalid(field, "must not be empty"));
            }
            if v.len() > MAX_TEXT {
                return Err(invalid(field, format!("longer than {MAX_TEXT} bytes")));
            }
            match k.as_str() {
                "resource_name" | "alert_type" => {
                    if let Err(e) = glob(k, v) {
                        return Err(invalid(field, format!("`{v}` is not a valid glob: {e}")));
                    }
                }
                // A typo would silently match nothing and hold nothing: the window would
                // page through the maintenance it was made for.
                "severity" if !SEVERITIES.iter().any(|s| s.eq_ignore_ascii_case(v)) => {
                    return Err(invalid(
                        field,
                        format!(
                            "`{v}` is not a OneView alert severity; use one of {}",
                            SEVERITIES.join(", ")
                        ),
                    ));
                }
                "appliance" if !appliances.iter().any(|a| a.eq_ignore_ascii_case(v)) => {
                    return Err(invalid(
                        field,
                        format!(
                            "no appliance is named `{v}`; the configured appliances are {}",
                            appliances.join(", ")
                        ),
                    ));
                }
                _ => {}
            }
        }
        let starts_at = self.starts_at.unwrap_or(now);
        if (starts_at - now).to_std().unwrap_or_default() > MAX_DURATION {
            return Err(invalid(
                "starts_at",
                "a silence may start at most 366 days from now",
            ));
        }
        let ends_at = match (self.ends_at, self.duration.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "duration",
                    "give either ends_at or duration, not both",
                ));
            }
            (Some(e), None) => e,
            (None, Some(d)) => {
                let d = humantime::parse_duration(d).map_err(|e| {
                    invalid(
                        "duration",
                        format!("`{d}` is not a duration like 2h or 90m: {e}"),
                    )
                })?;
                let d =
                    chrono::Duration::from_std(d).map_err(|_| invalid("duration", "too long"))?;
                starts_at
                    .checked_add_signed(d)
                    .ok_or_else(|| invalid("duration", "too long"))?
            }
            (None, None) => {
                return Err(invalid(
                    "ends_at",
                    "ends_at (RFC 3339) or duration (2h) is required",
                ));
            }
        };
        if ends_at <= starts_at {
            return Err(invalid(
                "ends_at",
                format!("ends_at {ends_at} is not after starts_at {starts_at}"),
            ));
        }
        if ends_at <= now {
            return Err(invalid(
                "ends_at",
                format!("ends_at {ends_at} is in the past"),
            ));
        }
        if (ends_at - starts_at).to_std().unwrap_or(Duration::MAX) > MAX_DURATION {
            return Err(invalid(
                "ends_at",
                "a silence may last at most 366 days; create a new one when it ends",
            ));
        }
        let created_by = self.created_by.trim().to_owned();
        if created_by.is_empty() {
            return Err(invalid(
                "created_by",
                "say who creates the silence (a name or an e-mail address)",
            ));
        }
        if created_by.len() > MAX_TEXT {
            return Err(invalid(
                "created_by",
                format!("longer than {MAX_TEXT} bytes"),
            ));
        }
        let comment = self.comment.trim().to_owned();
        if comment.is_empty() {
            return Err(invalid(
                "comment",
                "say why (the change or ticket), so on-call knows what is held",
            ));
        }
        if comment.len() > MAX_TEXT {
            return Err(invalid("comment", format!("longer than {MAX_TEXT} bytes")));
        }
        Ok(Silence {
            id: uuid::Uuid::new_v4().to_string(),
            matchers: self.matchers,
            starts_at,
            ends_at,
            created_by,
            comment,
            created_at: now,
            expired_by: None,
        })
    }
}

fn glob(key: &str, pattern: &str) -> Result<GlobMatcher, globset::Error> {
    GlobBuilder::new(pattern)
        .case_insensitive(key == "resource_name")
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
}

/// A silence compiled for matching.
#[derive(Debug)]
pub struct Compiled {
    pub silence: Silence,
    appliance: Option<String>,
    severity: Option<String>,
    category: Option<String>,
    resource_name: Option<GlobMatcher>,
    alert_type: Option<GlobMatcher>,
}

impl Compiled {
    /// `None` for a stored silence this build cannot compile (a glob a newer build accepts).
    fn new(silence: Silence) -> Option<Self> {
        let m = &silence.matchers;
        if m.keys().any(|k| !MATCHER_KEYS.contains(&k.as_str())) || m.is_empty() {
            return None;
        }
        let compile = |k: &str| m.get(k).map(|p| glob(k, p)).transpose();
        Some(Self {
            appliance: m.get("appliance").cloned(),
            severity: m.get("severity").cloned(),
            category: m.get("resource_category").cloned(),
            resource_name: compile("resource_name").ok()?,
            alert_type: compile("alert_type").ok()?,
            silence,
        })
    }

    /// Whether every matcher the silence gives matches the alert of `change`. The cheap
    /// exact matchers go first: with a thousand silences most fail there.
    pub fn matches(&self, change: &AlertChange) -> bool {
        let a = &change.alert;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_ref()
                .is_none_or(|w| have.is_some_and(|h| w.eq_ignore_ascii_case(h)))
        };
        eq(&self.appliance, Some(&change.appliance.id))
            && eq(&self.severity, Some(a.severity.as_str()))
            && eq(&self.category, a.resource_category())
            && self
                .resource_name
                .as_ref()
                .is_none_or(|g| a.resource_name().is_some_and(|n| g.is_match(n)))
            && self
                .alert_type
                .as_ref()
                .is_none_or(|g| a.alert_type_id.as_deref().is_some_and(|t| g.is_match(t)))
    }
}

/// The pipeline's clock: the wall clock when it was made, moved on by tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: DateTime<Utc>,
    mono: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            wall: Utc::now(),
            mono: Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let since = chrono::Duration::from_std(self.mono.elapsed()).unwrap_or_default();
        self.wall + since
    }

    /// The tokio instant of wall time `t` (now, if it is past).
    pub fn instant(&self, t: DateTime<Utc>) -> Instant {
        let ahead = (t - self.now()).to_std().unwrap_or_default();
        Instant::now() + ahead
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner {
    all: BTreeMap<String, Arc<Compiled>>,
}

/// The silences of this poller: seeded from the state store, written through the journal.
/// Cheap to share; every method takes the lock briefly.
pub struct Silences {
    inner: Mutex<Inner>,
    clock: Clock,
    /// Bumped on every change: the dispatcher evaluates held alerts again.
    changed: watch::Sender<u64>,
    journal: Option<Journal>,
    /// Expired silences are kept this long after their end (`state.retention`).
    retention: Duration,
}

impl std::fmt::Debug for Silences {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Silences").finish_non_exhaustive()
    }
}

/// What [`Silences::expire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expired {
    /// Ended now.
    Now(Silence),
    /// It had ended already; nothing changed.
    Already(Silence),
}

impl Silences {
    /// `journal`: where changes are written (`None`: memory only, for tests of the policy).
    pub fn new(
        records: impl IntoIterator<Item = SilenceRecord>,
        journal: Option<Journal>,
        retention: Duration,
        clock: Clock,
    ) -> Self {
        let mut all = BTreeMap::new();
        for r in records {
            match serde_json::from_str::<Silence>(&r.body)
                .ok()
                .and_then(Compiled::new)
            {
                Some(c) => {
                    all.insert(r.id, Arc::new(c));
                }
                None => {
                    tracing::error!(silence = %r.id, "a silence of the state store cannot be read by this version; ignored (it holds nothing)");
                }
            }
        }
        Self {
            inner: Mutex::new(Inner { all }),
            clock,
            changed: watch::channel(0).0,
            journal,
            retention,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A map of whole values: a panic elsewhere cannot leave it half-written.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Wakes whenever a silence is added or expired.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Stores `silence` (durable before this returns, unless the store is failing: then it
    /// is kept and written when the store recovers, like every other write).
    pub async fn add(&self, silence: Silence) -> Silence {
        let Some(c) = Compiled::new(silence.clone()) else {
            // `NewSilence::validate` made it: its globs compile.
            return silence;
        };
        self.lock().all.insert(silence.id.clone(), Arc::new(c));
        self.persist(&silence).await;
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        tracing::info!(silence = %silence.id, created_by = %silence.created_by, matchers = ?silence.matchers, starts_at = %silence.starts_at, ends_at = %silence.ends_at, comment = %silence.comment, "silence created");
        silence
    }

    /// Ends silence `id` now (a pending one never starts). `None`: no such silence.
    pub async fn expire(&self, id: &str, by: Option<String>) -> Option<Expired> {
        let now = self.clock.now();
        let silence = {
            let mut g = self.lock();
            let current = g.all.get(id)?.silence.clone();
            if current.ends_at <= now {
                return Some(Expired::Already(current));
            }
            let mut s = current;
            s.ends_at = now;
            s.starts_at = s.starts_at.min(now);
            s.expired_by = by;
            let c = Compiled::new(s.clone())?;
            g.all.insert(id.to_owned(), Arc::new(c));
            s
        };
        self.persist(&silence).await;
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        tracing::info!(silence = %id, expired_by = ?silence.expired_by, "silence expired");
        Some(Expired::Now(silence))
    }

    async fn persist(&self, silence: &Silence) {
        let (Some(j), Some(r)) = (&self.journal, silence.record()) else {
            return;
        };
        let ticket = j.submit(vec![Op::Silence(r)]);
        j.durable(ticket).await;
    }

    /// Every silence not pruned yet, with its state now, newest end first.
    pub fn list(&self) -> Vec<SilenceView> {
        let now = self.clock.now();
        let mut v: Vec<SilenceView> = self
            .lock()
            .all
            .values()
            .map(|c| SilenceView {
                silence: c.silence.clone(),
                state: c.silence.state(now),
            })
            .collect();
        v.sort_by(|a, b| {
            b.silence
                .ends_at
                .cmp(&a.silence.ends_at)
                .then_with(|| a.silence.id.cmp(&b.silence.id))
        });
        v
    }

    pub fn get(&self, id: &str) -> Option<SilenceView> {
        let now = self.clock.now();
        self.lock().all.get(id).map(|c| SilenceView {
            silence: c.silence.clone(),
            state: c.silence.state(now),
        })
    }

    /// The silences active now (sorted by id), and when the set changes next (a start or an
    /// end). Forgets silences that ended more than `state.retention` ago (the store prunes
    /// its copy on its own schedule).
    pub fn active(&self) -> (Vec<Arc<Compiled>>, Option<Instant>) {
        let now = self.clock.now();
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let mut g = self.lock();
        g.all
            .retain(|_, c| now.signed_duration_since(c.silence.ends_at) <= retention);
        let mut next: Option<DateTime<Utc>> = None;
        let mut active = Vec::new();
        for c in g.all.values() {
            let s = &c.silence;
            match s.state(now) {
                SilenceState::Active => {
                    active.push(c.clone());
                    next = Some(next.map_or(s.ends_at, |n| n.min(s.ends_at)));
                }
                SilenceState::Pending => {
                    next = Some(next.map_or(s.starts_at, |n| n.min(s.starts_at)));
                }
                SilenceState::Expired => {}
            }
        }
        (active, next.map(|t| self.clock.instant(t)))
    }
}

/// The silences active at one moment, indexed for the intake's check: a silence naming an
/// appliance is only tried on that appliance's alerts, and within a group the resource-name
/// globs are one `GlobSet` (Aho-Corasick on their literal parts), so a thousand silences cost
/// one set lookup per alert rather than a thousand glob matches.
#[derive(Debug, Default)]
pub struct ActiveSet {
    by_appliance: BTreeMap<String, Group>,
    any: Group,
    list: Vec<Arc<Compiled>>,
    ids: std::collections::BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Group {
    /// Silences with a `resource_name` glob, in the order of `names`.
    named: Vec<Arc<Compiled>>,
    names: globset::GlobSet,
    unnamed: Vec<Arc<Compiled>>,
}

impl Group {
    fn build(list: Vec<Arc<Compiled>>) -> Group {
        let mut g = Group::default();
        let mut b = globset::GlobSetBuilder::new();
        for c in list {
            let glob = c.silence.matchers.get("resource_name").and_then(|p| {
                GlobBuilder::new(p)
                    .case_insensitive(true)
                    .literal_separator(false)
                    .build()
                    .ok()
            });
            match glob {
                Some(glob) => {
                    b.add(glob);
                    g.named.push(c);
                }
                None => g.unnamed.push(c),
            }
        }
        match b.build() {
            Ok(set) => g.names = set,
            // Each glob compiled on its own (`Compiled::new`): try them one by one.
            Err(_) => g.unnamed.append(&mut g.named),
        }
        g
    }

    /// The matching silence with the smallest id, so the answer does not depend on order.
    fn holder(&self, change: &AlertChange) -> Option<&Arc<Compiled>> {
        let named = match change.alert.resource_name() {
            Some(n) if !self.named.is_empty() => self.names.matches(n),
            _ => Vec::new(),
        };
        named
            .iter()
            .filter_map(|i| self.named.get(*i))
            .chain(&self.unnamed)
            .filter(|c| c.matches(change))
            .min_by(|a, b| a.silence.id.cmp(&b.silence.id))
    }
}

impl ActiveSet {
    pub fn new(active: Vec<Arc<Compiled>>) -> Self {
        let mut by_appliance: BTreeMap<String, Vec<Arc<Compiled>>> = BTreeMap::new();
        let mut any = Vec::new();
        let mut ids = std::collections::BTreeSet::new();
        for c in &active {
            ids.insert(c.silence.id.clone());
            match &c.appliance {
                Some(a) => by_appliance
                    .entry(a.to_ascii_lowercase())
                    .or_default()
                    .push(c.clone()),
                None => any.push(c.clone()),
            }
        }
        ActiveSet {
            by_appliance: by_appliance
                .into_iter()
                .map(|(a, l)| (a, Group::build(l)))
                .collect(),
            any: Group::build(any),
            list: active,
            ids,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// The active silence with the smallest id that holds `change`'s alert.
    pub fn holder(&self, change: &AlertChange) -> Option<&Arc<Compiled>> {
        if self.ids.is_empty() {
            return None;
        }
        let own = self
            .by_appliance
            .get(&change.appliance.id.to_ascii_lowercase())
            .and_then(|g| g.holder(change));
        let any = self.any.holder(change);
        match (own, any) {
            (Some(a), Some(b)) => Some(if a.silence.id <= b.silence.id { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// The silences in one set but not the other: those that started or ended between two
    /// looks.
    pub fn changed_since<'a>(&'a self, before: &'a ActiveSet) -> Vec<&'a Arc<Compiled>> {
        self.list
            .iter()
            .filter(|c| !before.contains(&c.silence.id))
            .chain(before.list.iter().filter(|c| !self.contains(&c.silence.id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Alert, AlertKey, Appliance, AssociatedResource, ChangeKind, Severity};

    fn change(appliance: &str, name: &str, severity: Severity, kind: &str) -> AlertChange {
        let appliance = Appliance {
            id: Arc::from(appliance),
            ui_url: Arc::from("https://ov"),
        };
        AlertChange {
            kind: ChangeKind::Raised,
            key: AlertKey::new(&appliance, "/rest/alerts/1"),
            appliance,
            alert: Arc::new(Alert {
                uri: "/rest/alerts/1".into(),
                severity,
                alert_type_id: Some(Arc::from(kind)),
                associated_resource: Some(Arc::new(AssociatedResource {
                    resource_name: Some(Arc::from(name)),
                    resource_category: Some(Arc::from("server-hardware")),
                    ..Default::default()
                })),
                ..Default::default()
            }),
        }
    }

    fn new(matchers: &[(&str, &str)]) -> NewSilence {
        NewSilence {
            matchers: matchers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            duration: Some("2h".into()),
            created_by: "ops".into(),
            comment: "firmware update".into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_given_matcher_must_match() {
        let now = Utc::now();
        let s = new(&[
            ("appliance", "ov1"),
            ("resource_name", "sgh8*"),
            ("severity", "critical"),
            ("resource_category", "SERVER-HARDWARE"),
            ("alert_type", "Trap.*"),
        ])
        .validate(&["ov1", "ov2"], now)
        .unwrap();
        let c = Compiled::new(s).unwrap();
        assert!(c.matches(&change("ov1", "SGH8123", Severity::Critical, "Trap.cpq")));
        assert!(!c.matches(&change("ov2", "SGH8123", Severity::Critical, "Trap.cpq")));
        assert!(!c.matches(&change("ov1", "SGH9123", Severity::Critical, "Trap.cpq")));
        assert!(!c.matches(&change("ov1", "SGH8123", Severity::Warning, "Trap.cpq")));
        assert!(
            !c.matches(&change("ov1", "SGH8123", Severity::Critical, "trap.cpq")),
            "alert types are case-sensitive like OneView's ids"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let now = Utc::now();
        let field = |n: NewSilence| n.validate(&["ov1"], now).unwrap_err().field;
        assert_eq!(field(new(&[])), "matchers");
        assert_eq!(field(new(&[("host", "x")])), "matchers.host");
        assert_eq!(
            field(new(&[("resource_name", "a[")])),
            "matchers.resource_name"
        );
        assert_eq!(field(new(&[("appliance", "ov9")])), "matchers.appliance");
        assert_eq!(field(new(&[("severity", "Crtical")])), "matchers.severity");
        let mut n = new(&[("severity", "Critical")]);
        n.duration = None;
        n.starts_at = Some(now + chrono::Duration::hours(2));
        n.ends_at = Some(now + chrono::Duration::hours(1));
        assert_eq!(field(n), "ends_at");
        let mut n = new(&[("severity", "Critical")]);
        n.duration = Some("soon".into());
        assert_eq!(field(n), "duration");
        let mut n = new(&[("severity", "Critical")]);
        n.comment = " ".into();
        assert_eq!(field(n), "comment");
        let mut n = new(&[("severity", "Critical")]);
        n.starts_at = Some(now + chrono::Duration::days(400));
        assert_eq!(field(n), "starts_at");
        let mut n = new(&[("severity", "Critical")]);
        n.duration = Some("400d".into());
        assert_eq!(field(n), "ends_at");
    }

    #[tokio::test(start_paused = true)]
    async fn an_upcoming_silence_becomes_active_at_its_start_and_ends_at_its_end() {
        let clock = Clock::new();
        let set = Silences::new([], None, Duration::from_secs(3600), clock);
        let mut n = new(&[("severity", "Critical")]);
        n.starts_at = Some(clock.now() + chrono::Duration::minutes(10));
        let s = set.add(n.validate(&[], clock.now()).unwrap()).await;
        let (active, next) = set.active();
        assert!(active.is_empty());
        assert_eq!(next, Some(Instant::now() + Duration::from_secs(600)));
        tokio::time::advance(Duration::from_secs(600)).await;
        let (active, next) = set.active();
        assert_eq!(active.len(), 1);
        assert_eq!(next, Some(Instant::now() + Duration::from_secs(7200)));
        assert_eq!(set.get(&s.id).unwrap().state, SilenceState::Active);
        tokio::time::advance(Duration::from_secs(7200)).await;
        assert!(set.active().0.is_empty());
        assert_eq!(set.get(&s.id).unwrap().state, SilenceState::Expired);
        // Kept for the retention after its end, then forgotten.
        tokio::time::advance(Duration::from_secs(3601)).await;
        set.active();
        assert!(set.get(&s.id).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expiring_ends_it_now_and_wakes_the_dispatcher() {
        let clock = Clock::new();
        let set = Silences::new([], None, Duration::from_secs(3600), clock);
        let mut rx = set.subscribe();
        let s = set
            .add(
                new(&[("severity", "Critical")])
                    .validate(&[], clock.now())
                    .unwrap(),
            )
            .await;
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert!(matches!(
            set.expire(&s.id, Some("ops".into())).await,
            Some(Expired::Now(_))
        ));
        assert!(rx.has_changed().unwrap());
        assert!(set.active().0.is_empty());
        assert!(matches!(
            set.expire(&s.id, None).await,
            Some(Expired::Already(_))
        ));
        assert_eq!(set.expire("nope", None).await, None);
        // A stored silence comes back.
        let again = Silences::new(
            [set.get(&s.id).unwrap().silence.record().unwrap()],
            None,
            Duration::from_secs(3600),
            clock,
        );
        assert_eq!(
            again.get(&s.id).unwrap().silence.expired_by.as_deref(),
            Some("ops")
        );
    }

    #[test]
    fn the_active_set_tries_appliance_silences_only_on_their_appliance() {
        let now = Utc::now();
        let mk = |m: &[(&str, &str)]| {
            Arc::new(Compiled::new(new(m).validate(&["ov1", "ov2"], now).unwrap()).unwrap())
        };
        let a = mk(&[("appliance", "OV1"), ("resource_name", "SGH8*")]);
        let b = mk(&[("severity", "Warning")]);
        let set = ActiveSet::new(vec![a.clone(), b.clone()]);
        let held = |c: &AlertChange| set.holder(c).map(|c| c.silence.id.clone());
        assert_eq!(
            held(&change("ov1", "SGH81", Severity::Critical, "x")),
            Some(a.silence.id.clone())
        );
        assert_eq!(held(&change("ov2", "SGH81", Severity::Critical, "x")), None);
        assert_eq!(
            held(&change("ov2", "SGH81", Severity::Warning, "x")),
            Some(b.silence.id.clone())
        );
        // Many silences with resource-name globs: the set lookup finds the one that matches.
        let many: Vec<_> = (0..200)
            .map(|i| {
                let name = format!("rack{i}-*");
                mk(&[("resource_name", name.as_str())])
            })
            .collect();
        let big = ActiveSet::new(many.clone());
        assert_eq!(
            big.holder(&change("ov1", "RACK117-bay3", Severity::Critical, "x"))
                .map(|c| c.silence.id.clone()),
            Some(many[117].silence.id.clone())
        );
        assert!(
            big.holder(&change("ov1", "rack-x", Severity::Critical, "x"))
                .is_none()
        );
        let before = ActiveSet::new(vec![a.clone()]);
        let changed: Vec<_> = set
            .changed_since(&before)
            .iter()
            .map(|c| c.silence.id.clone())
            .collect();
        assert_eq!(changed, std::slice::from_ref(&b.silence.id));
    }
}
