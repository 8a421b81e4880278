//! Runs the built binary (`run --role all`, or the role a test sets) as a child process against in-process simulators,
//! configured only through `BRIDGE_*` environment variables.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_oneview-pagerduty-bridge");
pub const ROUTING_KEY: &str = "PROCROUTINGKEY000000000000000001";
pub const APPLIANCE: &str = "synergy-proc";

/// What the child is configured with.
pub struct BridgeEnv {
    pub ov_url: String,
    pub events_url: String,
    pub state_path: Option<PathBuf>,
    pub log_path: PathBuf,
    /// Extra or overriding variables.
    pub extra: Vec<(String, String)>,
    /// `--role`: `all` unless a test runs the split roles.
    pub role: &'static str,
}

impl BridgeEnv {
    pub fn new(ov_url: String, events_url: String, dir: &Path) -> Self {
        Self {
            ov_url,
            events_url,
            state_path: Some(dir.join("state.redb")),
            log_path: dir.join("bridge.log"),
            extra: Vec::new(),
            role: "all",
        }
    }

    pub fn set(&mut self, k: &str, v: impl Into<String>) {
        self.extra.retain(|(kk, _)| kk != k);
        self.extra.push((k.to_owned(), v.into()));
    }

    /// Starts the child; its stdout and stderr are appended to `log_path`.
    pub fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--role", self.role])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BRIDGE_ONEVIEW__URL", &self.ov_url)
            .env("BRIDGE_ONEVIEW__NAME", APPLIANCE)
            .env("BRIDGE_ONEVIEW__USERNAME", "administrator")
            .env("BRIDGE_PAGERDUTY__EVENTS_URL", &self.events_url)
            .env("BRIDGE_PAGERDUTY__RETRY_INITIAL_DELAY", "50ms")
            .env("BRIDGE_PAGERDUTY__RETRY_MAX_DELAY", "500ms")
            .env("BRIDGE_PAGERDUTY__RATE_LIMIT_PER_MINUTE", "1000000")
            .env("BRIDGE_POLLER__INTERVAL", "1s")
            .env("BRIDGE_POLLER__WATERMARK_OVERLAP", "500ms")
            .env("BRIDGE_SERVER__LISTEN", "127.0.0.1:0")
            .env("BRIDGE_SERVER__DRAIN_DELAY", "0s")
            .env("BRIDGE_SERVER__SHUTDOWN_TIMEOUT", "5s")
            .env("BRIDGE_LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let has = |k: &str| self.extra.iter().any(|(kk, _)| kk == k);
        if !has("BRIDGE_ONEVIEW__PASSWORD_FILE") {
            cmd.env("BRIDGE_ONEVIEW__PASSWORD", "sim-password");
        }
        if !has("BRIDGE_PAGERDUTY__ROUTING_KEY_FILE") {
            cmd.env("BRIDGE_PAGERDUTY__ROUTING_KEY", ROUTING_KEY);
        }
        if let Some(p) = &self.state_path {
            cmd.env("BRIDGE_STATE__PATH", p);
        }
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// SIGKILL (what `Child::kill` sends on Unix) and reap.
pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM and wait (graceful shutdown).
pub fn sigterm(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(child);
    None
}

pub fn dedup_key(id: u64) -> String {
    format!("oneview:{APPLIANCE}:/rest/alerts/{id}")
}

/// A loopback port nobody listens on right now (for the child's `server.listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
