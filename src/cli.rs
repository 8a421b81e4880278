//! Command-line interface definitions (clap). `main` parses these and dispatches.

use std::net::SocketAddr;
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
    /// Prove each appliance's message bus (SCMB) works before turning `scmb.enabled` on, or
    /// find out why it does not: read the certificates as the poller does (over REST, which
    /// generates the keypair when the appliance has none, or the `scmb.*_file` files), connect,
    /// listen for alert messages, and print one line per appliance. Exits 0 only if every
    /// appliance checked connected.
    CheckScmb {
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
        /// Only the appliance with this `name` (default: every one, whether or not its
        /// `scmb.enabled` is set).
        #[arg(long)]
        appliance: Option<String>,
        /// How long to listen for alert messages once connected.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        listen: Duration,
    },
    /// Send a test trigger and then its resolve to every configured PagerDuty routing key and
    /// report PagerDuty's answers. Exits 0 only if PagerDuty accepted every event.
    SendTestEvent {
        #[arg(long, env = "BRIDGE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Try it: an estate of three simulated OneView appliances (a Synergy frame set
    /// "synergy-dc1", a second data centre "synergy-dc2", a BladeSystem lab "bladesystem-lab"),
    /// a PagerDuty simulator and the bridge watching all three, on loopback, with live output.
    Demo {
        /// Where the bridge serves its status page, /health, /ready, /metrics.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The bridge's poll interval (every appliance).
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Open alerts each simulated appliance starts with.
        #[arg(long, default_value_t = 6)]
        alerts: usize,
        /// How often each simulated appliance raises, changes or clears an alert ("0s": never).
        #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
        churn_every: Duration,
        /// Give the first appliance a message bus (SCMB) on a RabbitMQ the demo starts itself:
        /// `auto` when Debian's rabbitmq-server is installed, `on` always (or fail), `off` never.
        #[arg(long, value_enum, default_value_t = crate::demo::BusMode::Auto)]
        bus: crate::demo::BusMode,
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
    /// Run one of the simulators on its own (for trying the bridge without real systems).
    Simulate {
        #[command(subcommand)]
        target: SimTarget,
    },
    /// Maintenance windows, as amtool does for Alertmanager: alerts a silence matches do not
    /// page while it lasts, and page when it ends if they are still open.
    Silence {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        action: SilenceAction,
    },
}

/// How the CLI reaches a running bridge's API.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The bridge's base URL (a web replica or the poller).
    #[arg(
        long,
        global = true,
        env = "BRIDGE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// A file holding an API token (`server.api_tokens`); else BRIDGE_API_TOKEN.
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `silence` subcommands.
#[derive(Debug, Subcommand)]
pub enum SilenceAction {
    /// Create a silence: `--match resource_name='SGH8*' --match severity=Critical --duration 2h
    /// --comment 'firmware update'`. Prints the new silence's id.
    Add {
        /// `key=value`, repeatable; keys: appliance, resource_name (glob), resource_category,
        /// severity, alert_type (glob). All given must match.
        #[arg(long = "match", value_name = "KEY=VALUE", required = true)]
        matchers: Vec<String>,
        /// How long it lasts from its start (humantime: 2h, 90m).
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Why (the change or ticket); shown beside every alert it holds.
        #[arg(long)]
        comment: String,
        /// When it starts (RFC 3339); default now.
        #[arg(long)]
        starts_at: Option<String>,
        /// Who creates it (default $USER).
        #[arg(long, env = "USER")]
        created_by: Option<String>,
    },
    /// List silences (active, upcoming, and expired ones not pruned yet).
    List {
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now: the alerts it held that are still open page now.
    Expire {
        id: String,
        /// Who expires it (default $USER).
        #[arg(long, env = "USER")]
        expired_by: Option<String>,
    },
}

/// Which simulator `simulate` runs.
#[derive(Debug, Subcommand)]
pub enum SimTarget {
    /// The PagerDuty Events API v2 (`POST /v2/enqueue`, control API under `/sim/`).
    Pagerduty {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9444")]
        listen: SocketAddr,
        /// Per-routing-key limit, like PagerDuty's (about 120 events per minute).
        #[arg(long)]
        rate_limit_per_minute: Option<u32>,
        /// Fraction (0..1) of requests answered with 429 or 5xx.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Latency added to every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// A OneView appliance (REST API subset plus a /sim control API), over HTTP, or HTTPS with
    /// --tls-cert and --tls-key; with --appliances N, an estate of N appliances, one per port.
    Oneview {
        /// Address to serve on; with --appliances N, the first of N consecutive ports (port 0:
        /// each appliance gets a free port).
        #[arg(long, default_value = "127.0.0.1:9443")]
        listen: SocketAddr,
        /// Appliances to serve, each on its own port with its own alerts, sessions and
        /// password: synergy-dc1 (a Synergy frame set), synergy-dc2 (a second data centre),
        /// bladesystem-lab (a BladeSystem c7000 lab), then synergy-dc3, synergy-dc4, ... The
        /// other options apply to each. With the default --listen, 3 appliances take ports
        /// 9443-9445, so the PagerDuty simulator then needs another --listen than its 9444.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
        appliances: u16,
        /// User name the simulator accepts (every appliance).
        #[arg(long, default_value = "administrator")]
        username: String,
        /// Password the simulator accepts (printed at start; this is a simulator). With
        /// --appliances 2 or more, appliance NAME accepts "<password>-NAME" only.
        #[arg(long, default_value = "sim-password", env = "SIM_ONEVIEW_PASSWORD")]
        password: String,
        /// `currentVersion` reported by /rest/version.
        #[arg(long, default_value_t = 6600)]
        current_version: u32,
        /// `minimumVersion` reported by /rest/version.
        #[arg(long, default_value_t = 120)]
        minimum_version: u32,
        /// Do not require `loginMsgAck` (an appliance without a login banner).
        #[arg(long)]
        no_banner: bool,
        /// Session idle timeout.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        idle_timeout: Duration,
        /// Realistic open alerts to create at start (on each appliance).
        #[arg(long, default_value_t = 5)]
        alerts: usize,
        /// Old cleared alerts to create at start, spread over the last 30 days (on each
        /// appliance).
        #[arg(long, default_value_t = 0)]
        cleared_alerts: usize,
        /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Publish every alert change to this AMQPS broker (`amqps://host:5671`) as OneView's
        /// message bus does (exchange `scmb`, `scmb.alerts.<change>.<uri>`), logging in with
        /// SASL EXTERNAL as a client certificate issued by --scmb-ca-cert. One appliance only.
        #[arg(long, requires_all = ["scmb_ca_cert", "scmb_ca_key"], conflicts_with = "appliances")]
        scmb_broker: Option<String>,
        /// PEM CA certificate that issues the RabbitMQ client keypair the simulator serves at
        /// /rest/certificates/client/rabbitmq/keypair/default (the broker must trust it).
        #[arg(long, requires = "scmb_ca_key")]
        scmb_ca_cert: Option<PathBuf>,
        /// PEM private key of --scmb-ca-cert.
        #[arg(long, requires = "scmb_ca_cert")]
        scmb_ca_key: Option<PathBuf>,
    },
}
