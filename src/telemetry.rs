//! Logging setup: `tracing` with JSON lines when stdout is not a terminal (or when asked), a
//! human format otherwise. `RUST_LOG`, when set, overrides `log.level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, RawLog};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log.level / RUST_LOG {0:?} is not a valid filter: {1}")]
    Filter(String, String),
    #[error("a global logger is already installed")]
    AlreadySet,
}

/// Installs the global subscriber. Call once, early in `main`.
pub fn init(log: &RawLog) -> Result<(), TelemetryError> {
    let directive = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| log.level.clone());
    let filter = EnvFilter::try_new(&directive)
        .map_err(|e| TelemetryError::Filter(directive.clone(), e.to_string()))?;
    let json = match log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stdout);
    let res = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.compact().try_init()
    };
    res.map_err(|_| TelemetryError::AlreadySet)
}
