//! Command-line interface definitions (clap). `main` parses these and dispatches.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Role;

/// Watches HPE OneView appliances and pages on-call engineers through PagerDuty.
#[derive(Debug, Parser)]
#[command(
    name = "oneview-pagerduty-bridge",
    version,
    about,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Run {
        /// Which parts to run: everything, the poller (single writer), or a web replica.
        #[arg(long, value_enum, default_value_t = Role::All, env = "BRIDGE_ROLE")]
        role: Role,
        /// TOML configuration file; without it, defaults and BRIDGE_* variables apply.
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Load and validate the configuration, print it with secrets redacted, and exit.
    CheckConfig {
        /// Validate for this role (a web replica needs no OneView credentials).
        #[arg(long, value_enum, default_value_t = Role::All, env = "BRIDGE_ROLE")]
        role: Role,
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// GET a health URL and exit 0 on HTTP 200, 1 otherwise (container HEALTHCHECK, no shell).
    Healthcheck {
        /// The URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:8080/health")]
        url: String,
        /// Give up after this long (humantime: `3s`, `500ms`).
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}
