//! Errors of the PagerDuty side. None of them carries a routing key.

/// Assembling the delivery pipeline or sending a test event failed.
#[derive(Debug, thiserror::Error)]
pub enum PagerDutyError {
    #[error(
        "the [pagerduty] section is missing or incomplete; set pagerduty.routing_key (or routing_key_file) for a role that sends to PagerDuty"
    )]
    NotConfigured,
    #[error("pagerduty.routes entry {route:?}: {why}; fix the pattern in the configuration")]
    Route { route: String, why: String },
    #[error(
        "cannot build the HTTP client for pagerduty.events_url: {0}; check the system's TLS roots"
    )]
    Client(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Secret(#[from] crate::secret::SecretError),
}
