//! `[change_events]` (and `[appliances.change_events]`): which completed OneView tasks become
//! PagerDuty Change Events (see [`crate::change_events`]). Off by default; the allow-lists are
//! globs, matched case-insensitively, and both must match.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use super::Checker;

/// The keys of `[appliances.change_events]`, for its unknown-key message.
pub(super) const KEYS: &str =
    "enabled, categories, names, interval, page_size (url only in [change_events])";

/// Default `change_events.categories`: OneView's `associatedResource.resourceCategory` of the
/// resources whose firmware, profile, power and reset operations are tasks.
pub const DEFAULT_CATEGORIES: &[&str] = &[
    "server-hardware",
    "server-profiles",
    "enclosures",
    "logical-enclosures",
    "interconnects",
    "logical-interconnects",
    "firmware-drivers",
];

/// Default `change_events.names`: globs on the task `name` for the operations that change
/// hardware (OneView's task names: "Update firmware", "Apply profile", "Power off", ...).
pub const DEFAULT_NAMES: &[&str] = &[
    "Update*",
    "Apply*",
    "Reapply*",
    "Assign profile*",
    "Unassign profile*",
    "Power on*",
    "Power off*",
    "Reset*",
];

/// `[change_events]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawChangeEvents {
    pub enabled: bool,
    /// Globs on `associatedResource.resourceCategory`.
    pub categories: Vec<String>,
    /// Globs on the task `name`.
    pub names: Vec<String>,
    /// How often `/rest/tasks` is read.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// `count` per `/rest/tasks` page.
    pub page_size: u32,
    /// The Change Events endpoint; default: `pagerduty.events_url` with its path
    /// `/v2/change/enqueue`.
    pub url: Option<String>,
}

impl Default for RawChangeEvents {
    fn default() -> Self {
        Self {
            enabled: false,
            categories: DEFAULT_CATEGORIES.iter().map(|s| (*s).to_owned()).collect(),
            names: DEFAULT_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            interval: Duration::from_secs(60),
            page_size: 200,
            url: None,
        }
    }
}

/// `[appliances.change_events]`: the keys of `[change_events]` (but `url`), each optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawChangeEventsOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
}

/// One appliance's validated change-event settings.
#[derive(Debug, Clone)]
pub struct ChangeEventsConfig {
    pub enabled: bool,
    pub categories: Vec<String>,
    pub names: Vec<String>,
    pub interval: Duration,
    pub page_size: u32,
    /// `None` when PagerDuty is not configured (role `web`).
    pub url: Option<Url>,
}

impl Default for ChangeEventsConfig {
    fn default() -> Self {
        let r = RawChangeEvents::default();
        Self {
            enabled: r.enabled,
            categories: r.categories,
            names: r.names,
            interval: r.interval,
            page_size: r.page_size,
            url: None,
        }
    }
}

/// The Change Events URL beside an Events API URL: `.../v2/enqueue` -> `.../v2/change/enqueue`.
pub fn change_url_beside(events_url: &Url) -> Url {
    let mut u = events_url.clone();
    let path = u.path().trim_end_matches('/');
    let base = path.strip_suffix("/enqueue").unwrap_or(path);
    u.set_path(&format!("{base}/change/enqueue"));
    u
}

fn check_globs(c: &mut Checker, key: &str, list: &[String], what: &str) {
    if list.is_empty() {
        c.problem(
            key,
            Some("[]"),
            &format!("no {what} is allowed, so no task would ever be sent"),
            "list at least one glob, [\"*\"] for every one, or set enabled = false",
        );
    }
    for g in list {
        if let Err(e) = globset::GlobBuilder::new(g).case_insensitive(true).build() {
            c.problem(
                key,
                Some(g),
                &format!("is not a valid glob: {e}"),
                "use * and ? wildcards, for example \"Update firmware*\"",
            );
        }
    }
}

fn check(c: &mut Checker, prefix: &str, r: &RawChangeEventsOverride) {
    let key = |k: &str| format!("{prefix}.{k}");
    if let Some(l) = &r.categories {
        check_globs(c, &key("categories"), l, "resource category");
    }
    if let Some(l) = &r.names {
        check_globs(c, &key("names"), l, "task name");
    }
    if let Some(i) = r.interval
        && (i < Duration::from_secs(1) || i > Duration::from_secs(3600))
    {
        c.problem(
            &key("interval"),
            Some(&humantime::format_duration(i).to_string()),
            "must be 1s to 1h",
            "remove it to use 1m",
        );
    }
    if let Some(n) = r.page_size
        && !(1..=1000).contains(&n)
    {
        c.problem(
            &key("page_size"),
            Some(&n.to_string()),
            "must be 1 to 1000",
            "remove it to use 200",
        );
    }
}

/// Validates `[change_events]`; `events_url` is the validated `pagerduty.events_url`.
pub(super) fn validate_global(
    c: &mut Checker,
    r: &RawChangeEvents,
    events_url: Option<&Url>,
) -> ChangeEventsConfig {
    check(
        c,
        "change_events",
        &RawChangeEventsOverride {
            enabled: Some(r.enabled),
            categories: Some(r.categories.clone()),
            names: Some(r.names.clone()),
            interval: Some(r.interval),
            page_size: Some(r.page_size),
        },
    );
    let url = match &r.url {
        Some(u) => c.url("change_events.url", u),
        None => events_url.map(change_url_beside),
    };
    ChangeEventsConfig {
        enabled: r.enabled,
        categories: r.categories.clone(),
        names: r.names.clone(),
        interval: r.interval,
        page_size: r.page_size,
        url,
    }
}

impl RawChangeEventsOverride {
    /// One appliance's settings: `global` with the keys given here replaced (and checked under
    /// `prefix`, `appliances[2].change_events`).
    pub(super) fn apply(
        &self,
        c: &mut Checker,
        prefix: &str,
        global: &ChangeEventsConfig,
    ) -> ChangeEventsConfig {
        check(c, prefix, self);
        ChangeEventsConfig {
            enabled: self.enabled.unwrap_or(global.enabled),
            categories: self
                .categories
                .clone()
                .unwrap_or_else(|| global.categories.clone()),
            names: self.names.clone().unwrap_or_else(|| global.names.clone()),
            interval: self.interval.unwrap_or(global.interval),
            page_size: self.page_size.unwrap_or(global.page_size),
            url: global.url.clone(),
        }
    }
}

/// `[change_events]` and every appliance's overrides: the global settings, and `appliances`
/// with their effective ones. Every `[appliances.change_events]` is checked, also that of an
/// entry invalid for other reasons, so that check-config names all wrong keys at once.
pub(super) fn layer(
    c: &mut Checker,
    raw: &super::RawConfig,
    events_url: Option<&Url>,
    mut appliances: Vec<super::ApplianceConfig>,
) -> (ChangeEventsConfig, Vec<super::ApplianceConfig>) {
    let global = validate_global(c, &raw.change_events, events_url);
    for a in &mut appliances {
        a.change_events = global.clone();
    }
    for (i, r) in raw.appliances.iter().enumerate() {
        let Some(o) = &r.change_events else { continue };
        let effective = o.apply(c, &format!("appliances[{i}].change_events"), &global);
        let name = r.name.as_deref().map(str::trim);
        if let Some(a) = appliances
            .iter_mut()
            .find(|a| Some(a.oneview.name.as_str()) == name)
        {
            a.change_events = effective;
        }
    }
    (global, appliances)
}

#[cfg(test)]
mod tests {
    use super::super::{ConfigError, Role, load};
    use super::*;

    fn toml(global: &str, appliance: &str) -> String {
        format!(
            r#"
[pagerduty]
routing_key = "{key}"
events_url = "https://events.eu.pagerduty.com/v2/enqueue"

[change_events]
enabled = true
{global}

[[appliances]]
name = "dc1"
url = "https://dc1.example.com"
username = "u"
password = "pw"

[appliances.change_events]
{appliance}

[[appliances]]
name = "lab"
url = "https://lab.example.com"
username = "u"
password = "pw"
change_events = {{ enabled = false }}
"#,
            key = "a".repeat(32)
        )
    }

    #[test]
    fn layered_per_appliance_and_check_config_names_every_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bridge.toml");
        std::fs::write(&file, toml("", "names = [\"Power*\"]\ninterval = \"10s\"")).unwrap();
        let c = load(Some(&file), Role::Poller).unwrap();
        let dc1 = &c.appliances[0].change_events;
        assert!(dc1.enabled);
        assert_eq!(dc1.names, ["Power*"]);
        assert_eq!(dc1.interval, Duration::from_secs(10));
        assert_eq!(dc1.categories, DEFAULT_CATEGORIES);
        assert!(!c.appliances[1].change_events.enabled);
        assert_eq!(
            dc1.url.as_ref().map(Url::as_str),
            Some("https://events.eu.pagerduty.com/v2/change/enqueue")
        );
        assert!(!ChangeEventsConfig::default().enabled, "off by default");

        std::fs::write(
            &file,
            toml(
                "categories = []\ninterval = \"0s\"",
                "names = [\"Update[\"]\npage_size = 0\nenabeld = true",
            ),
        )
        .unwrap();
        let Err(ConfigError::Invalid(p)) = load(Some(&file), Role::Poller) else {
            panic!("bad change_events accepted")
        };
        let mut keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "appliances[0].change_events.enabeld",
                "appliances[0].change_events.names",
                "appliances[0].change_events.page_size",
                "change_events.categories",
                "change_events.interval",
            ],
            "{p:?}"
        );
    }

    #[test]
    fn change_url_sits_beside_the_events_url() {
        for (events, change) in [
            (
                "https://events.pagerduty.com/v2/enqueue",
                "https://events.pagerduty.com/v2/change/enqueue",
            ),
            (
                "https://events.eu.pagerduty.com/v2/enqueue/",
                "https://events.eu.pagerduty.com/v2/change/enqueue",
            ),
            (
                "http://127.0.0.1:9444/v2/enqueue",
                "http://127.0.0.1:9444/v2/change/enqueue",
            ),
        ] {
            assert_eq!(
                change_url_beside(&Url::parse(events).unwrap()).as_str(),
                change
            );
        }
    }
}
