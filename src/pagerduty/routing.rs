//! Which routing key an alert goes to: `[[pagerduty.routes]]` in order, first match wins,
//! else `pagerduty.routing_key`.
//!
//! A route matches when every matcher it sets matches: `severities` (OneView severity, exact,
//! case-insensitive), `resource_categories` (exact, case-insensitive), `alert_types` (globs on
//! `alertTypeID`, case-sensitive like OneView's ids), `resource_name` (a glob,
//! case-insensitive) and `appliances` (globs on the appliance name, case-insensitive). The route's name is what logs, metrics and the ledger see; the key itself
//! is a [`Secret`] read at send time, so rotating its file takes effect on the next event.
//!
//! Routing picks where a *new* incident opens. Every later event of an open incident goes to the
//! route that holds it (see [`crate::pipeline`]), found by name with [`Router::by_name`], which
//! never falls back to the default: an incident held on a route that is no longer configured is
//! not the default route's to close.
//!
//! Change events ([`Router::route_change`], from OneView tasks) take the same routes: a task's
//! resource fields stand in for an alert's. `severities` and `alert_types` concern alerts
//! only and are ignored for them, so a route that sets only those (an urgency split such as
//! "Critical to the urgent service") takes no change event; its other matchers
//! (`resource_categories`, `resource_name`, `appliances`) decide as for an alert.
//!
//! PagerDuty's rate limit is per routing key, so routes that share a key share one budget
//! ([`Target::budget`], the name of the first route with that key): grouped by the keys' values
//! when the router is built (and by file path when a file cannot be read then).

use std::sync::Arc;

use globset::{Glob, GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::config::{PagerDutyConfig, RouteConfig};
use crate::model::Alert;
use crate::secret::Secret;

use super::error::PagerDutyError;

/// Name of the route used when no `[[pagerduty.routes]]` entry matches.
pub const DEFAULT_ROUTE: &str = "default";

/// Where an event goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Route name (bounded: one per configured route plus `default`).
    pub route: Arc<str>,
    pub routing_key: Arc<Secret>,
    /// The rate-limit budget: the name of the first route (default first) with the same
    /// routing key, so that two routes sharing a key share PagerDuty's limit for it.
    pub budget: Arc<str>,
}

struct Route {
    target: Target,
    severities: Vec<String>,
    categories: Vec<String>,
    alert_types: Option<GlobSet>,
    resource_name: Option<GlobMatcher>,
    appliances: Option<GlobSet>,
}

/// The compiled routing table.
pub struct Router {
    routes: Vec<Route>,
    default: Target,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| &r.target.route)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Router {
    pub fn new(pd: &PagerDutyConfig) -> Result<Self, PagerDutyError> {
        let mut routes = pd
            .routes
            .iter()
            .map(compile)
            .collect::<Result<Vec<_>, _>>()?;
        let default = Target {
            route: Arc::from(DEFAULT_ROUTE),
            routing_key: pd.routing_key.clone(),
            budget: Arc::from(DEFAULT_ROUTE),
        };
        // Budgets: the first target with the same key identity names the budget.
        let mut seen: Vec<(KeyIdentity, Arc<str>)> =
            vec![(identity(&default), default.route.clone())];
        for r in &mut routes {
            let id = identity(&r.target);
            match seen.iter().find(|(k, _)| *k == id) {
                Some((_, budget)) => r.target.budget = budget.clone(),
                None => seen.push((id, r.target.route.clone())),
            }
        }
        Ok(Self { routes, default })
    }

    /// Every target, default first (for `send-test-event`).
    pub fn targets(&self) -> Vec<Target> {
        std::iter::once(self.default.clone())
            .chain(self.routes.iter().map(|r| r.target.clone()))
            .collect()
    }

    /// One target per routing key (per budget), default first: where a resolve goes when the
    /// bridge cannot know which integration holds the incident.
    pub fn distinct_targets(&self) -> Vec<Target> {
        let mut out: Vec<Target> = Vec::new();
        for t in std::iter::once(&self.default).chain(self.routes.iter().map(|r| &r.target)) {
            if !out.iter().any(|o| o.budget == t.budget) {
                out.push(t.clone());
            }
        }
        out
    }

    /// The target of the route named `name`: the route that holds an incident (from the
    /// ledger, the outbox or memory). `None` when no such route is configured any more; the
    /// caller must not send the event elsewhere (PagerDuty scopes a dedup key to its
    /// integration, so another key would open or close a different incident).
    pub fn by_name(&self, name: &str) -> Option<&Target> {
        std::iter::once(&self.default)
            .chain(self.routes.iter().map(|r| &r.target))
            .find(|t| &*t.route == name)
    }

    /// Where a new incident of `alert` from appliance `appliance` opens.
    pub fn route(&self, appliance: &str, alert: &Alert) -> &Target {
        self.routes
            .iter()
            .find(|r| r.matches(appliance, alert))
            .map(|r| &r.target)
            .unwrap_or(&self.default)
    }

    /// Where a change event about the resource `category`/`resource_name` of appliance
    /// `appliance` goes (see the module docs: alert-only matchers are ignored, and a route
    /// with nothing else takes none).
    pub fn route_change(
        &self,
        appliance: &str,
        category: Option<&str>,
        resource_name: Option<&str>,
    ) -> &Target {
        self.routes
            .iter()
            .find(|r| r.matches_change(appliance, category, resource_name))
            .map(|r| &r.target)
            .unwrap_or(&self.default)
    }
}

/// What makes two routing keys the same for the rate limit, compared once at startup: the
/// value (never stored beyond this comparison), else the file it is read from.
#[derive(PartialEq, Eq)]
enum KeyIdentity {
    Value([u8; 32]),
    File(std::path::PathBuf),
}

fn identity(t: &Target) -> KeyIdentity {
    use secrecy::ExposeSecret;
    use sha2::Digest;
    match t.routing_key.current() {
        // A digest, so the value itself is not kept in the comparison list.
        Ok(v) => KeyIdentity::Value(sha2::Sha256::digest(v.expose_secret().as_bytes()).into()),
        Err(_) => KeyIdentity::File(
            t.routing_key
                .path()
                .map(|p| p.to_owned())
                .unwrap_or_default(),
        ),
    }
}

fn glob_err(route: &str, what: &str, pattern: &str, e: globset::Error) -> PagerDutyError {
    PagerDutyError::Route {
        route: route.to_owned(),
        why: format!("{what} pattern {pattern:?} is not a valid glob: {e}"),
    }
}

fn compile(r: &RouteConfig) -> Result<Route, PagerDutyError> {
    let alert_types = if r.alert_types.is_empty() {
        None
    } else {
        let mut b = GlobSetBuilder::new();
        for p in &r.alert_types {
            b.add(Glob::new(p).map_err(|e| glob_err(&r.name, "alert_types", p, e))?);
        }
        Some(
            b.build()
                .map_err(|e| glob_err(&r.name, "alert_types", "", e))?,
        )
    };
    let resource_name = r
        .resource_name
        .as_deref()
        .map(|p| {
            GlobBuilder::new(p)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| glob_err(&r.name, "resource_name", p, e))
        })
        .transpose()?;
    let appliances = if r.appliances.is_empty() {
        None
    } else {
        let mut b = GlobSetBuilder::new();
        for p in &r.appliances {
            b.add(
                GlobBuilder::new(p)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| glob_err(&r.name, "appliances", p, e))?,
            );
        }
        Some(
            b.build()
                .map_err(|e| glob_err(&r.name, "appliances", "", e))?,
        )
    };
    Ok(Route {
        target: Target {
            route: Arc::from(r.name.as_str()),
            routing_key: r.routing_key.clone(),
            budget: Arc::from(r.name.as_str()),
        },
        severities: r.severities.clone(),
        categories: r.resource_categories.clone(),
        alert_types,
        resource_name,
        appliances,
    })
}

impl Route {
    fn matches_change(
        &self,
        appliance: &str,
        category: Option<&str>,
        resource_name: Option<&str>,
    ) -> bool {
        let resource_matchers = !self.categories.is_empty()
            || self.resource_name.is_some()
            || self.appliances.is_some();
        let alert_only = !self.severities.is_empty() || self.alert_types.is_some();
        if alert_only && !resource_matchers {
            return false;
        }
        (self.categories.is_empty()
            || category.is_some_and(|v| self.categories.iter().any(|x| x.eq_ignore_ascii_case(v))))
            && self
                .resource_name
                .as_ref()
                .is_none_or(|g| resource_name.is_some_and(|n| g.is_match(n)))
            && self
                .appliances
                .as_ref()
                .is_none_or(|g| g.is_match(appliance))
    }

    fn matches(&self, appliance: &str, alert: &Alert) -> bool {
        let any_eq = |list: &[String], v: Option<&str>| {
            list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x.eq_ignore_ascii_case(v)))
        };
        any_eq(&self.severities, Some(alert.severity.as_str()))
            && any_eq(&self.categories, alert.resource_category())
            && self.alert_types.as_ref().is_none_or(|g| {
                alert
                    .alert_type_id
                    .as_deref()
                    .is_some_and(|t| g.is_match(t))
            })
            && self
                .resource_name
                .as_ref()
                .is_none_or(|g| alert.resource_name().is_some_and(|n| g.is_match(n)))
            && self
                .appliances
                .as_ref()
                .is_none_or(|g| g.is_match(appliance))
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use crate::config::{RawConfig, RawRoute, Role, validate};

    fn route(name: &str, f: impl FnOnce(&mut RawRoute)) -> RawRoute {
        let mut r = RawRoute {
            name: Some(name.into()),
            routing_key: Some(SecretString::from(format!("{name:0<32}"))),
            ..RawRoute::default()
        };
        f(&mut r);
        r
    }

    #[test]
    fn change_events_ignore_alert_only_matchers_and_skip_routes_with_nothing_else() {
        let mut raw = RawConfig::default();
        raw.oneview.url = Some("https://ov.example.com".into());
        raw.oneview.username = Some("u".into());
        raw.oneview.password = Some(SecretString::from("pw".to_owned()));
        raw.pagerduty.routing_key = Some(SecretString::from("d".repeat(32)));
        raw.pagerduty.routes = vec![
            route("urgent", |r| r.severities = vec!["Critical".into()]),
            route("traps", |r| r.alert_types = vec!["Trap.*".into()]),
            route("hardware", |r| {
                r.severities = vec!["Warning".into()];
                r.resource_categories = vec!["server-hardware".into()];
            }),
            route("lab-bay", |r| r.resource_name = Some("LAB-*".into())),
            route("dc2", |r| r.appliances = vec!["dc2*".into()]),
        ];
        let cfg = validate(raw, Role::Poller).unwrap();
        let router = super::Router::new(cfg.pagerduty.as_ref().unwrap()).unwrap();
        let to = |appliance: &str, category: Option<&str>, name: Option<&str>| {
            router
                .route_change(appliance, category, name)
                .route
                .to_string()
        };
        assert_eq!(
            to("dc1", Some("Server-Hardware"), Some("SGH8, bay 3")),
            "hardware"
        );
        assert_eq!(to("dc1", Some("enclosures"), Some("lab-c7000")), "lab-bay");
        assert_eq!(to("dc2-frame", Some("enclosures"), None), "dc2");
        assert_eq!(to("dc1", Some("enclosures"), None), "default");
        assert_eq!(to("dc1", None, None), "default");
    }
}
