//! Which routing key an alert goes to: `[[pagerduty.routes]]` in order, first match wins,
//! else `pagerduty.routing_key`.
//!
//! A route matches when every matcher it sets matches: `severities` (OneView severity, exact,
//! case-insensitive), `resource_categories` (exact, case-insensitive), `alert_types` (globs on
//! `alertTypeID`, case-sensitive like OneView's ids) and `resource_name` (a glob,
//! case-insensitive). The route's name is what logs, metrics and the rate limiter see; the key
//! itself is a [`Secret`] read at send time, so rotating its file takes effect on the next event.

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
}

struct Route {
    target: Target,
    severities: Vec<String>,
    categories: Vec<String>,
    alert_types: Option<GlobSet>,
    resource_name: Option<GlobMatcher>,
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
        let routes = pd
            .routes
            .iter()
            .map(compile)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            routes,
            default: Target {
                route: Arc::from(DEFAULT_ROUTE),
                routing_key: pd.routing_key.clone(),
            },
        })
    }

    /// Every distinct target, default first (for `send-test-event`).
    pub fn targets(&self) -> Vec<Target> {
        std::iter::once(self.default.clone())
            .chain(self.routes.iter().map(|r| r.target.clone()))
            .collect()
    }

    /// The target of the route named `name` (events read back from the state store), else the
    /// default one (the route was removed from the configuration since).
    pub fn by_name(&self, name: &str) -> &Target {
        self.routes
            .iter()
            .map(|r| &r.target)
            .find(|t| &*t.route == name)
            .unwrap_or(&self.default)
    }

    pub fn route(&self, alert: &Alert) -> &Target {
        self.routes
            .iter()
            .find(|r| r.matches(alert))
            .map(|r| &r.target)
            .unwrap_or(&self.default)
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
    Ok(Route {
        target: Target {
            route: Arc::from(r.name.as_str()),
            routing_key: r.routing_key.clone(),
        },
        severities: r.severities.clone(),
        categories: r.resource_categories.clone(),
        alert_types,
        resource_name,
    })
}

impl Route {
    fn matches(&self, alert: &Alert) -> bool {
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
    }
}
