//! The foundation over real HTTP and real processes: health/ready/metrics shapes, request ids,
//! JSON errors, configuration layering and validation through `check-config`, and the SIGTERM
//! lifecycle of the built binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bridge::config::{self, RawConfig, Role};
use tokio_util::sync::CancellationToken;

mod common;
use common::{BIN, KillOnDrop, promtool_accepts, spawn_lines};

const ROUTING_KEY: &str = "R0UTINGKEY0123456789abcdefABCDEF";
const PASSWORD: &str = "s3cr3t-Passw0rd!";

/// Starts an in-process web-role bridge on 127.0.0.1:0.
async fn start_web() -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let mut raw = RawConfig::default();
    raw.server.listen = "127.0.0.1:0".into();
    let cfg = config::validate(raw, Role::Web).expect("valid config");
    let app = bridge::App::build(cfg).await.expect("app builds");
    let base = format!("http://{}", app.local_addr());
    let token = CancellationToken::new();
    let t = token.clone();
    let h = tokio::spawn(async move {
        app.run(t).await.expect("app runs");
    });
    (base, token, h)
}

#[tokio::test]
async fn health_ready_and_metrics_have_their_shapes() {
    let (base, token, h) = start_web().await;
    let c = reqwest::Client::new();

    let r = c.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["role"], "web");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());

    let r = c.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["unmet"], serde_json::json!([]));

    let r = c.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    for needle in [
        "bridge_build_info{version=\"",
        "role=\"web\"} 1",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_cpu_seconds_total counter",
        "process_open_fds ",
        "process_start_time_seconds ",
        "bridge_http_requests_total{route=\"/health\",method=\"GET\",status_class=\"2xx\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    promtool_accepts(&text);

    let r = c
        .get(format!("{base}/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().ends_with("# EOF\n"));

    token.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn request_ids_are_kept_generated_and_echoed() {
    let (base, token, h) = start_web().await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{base}/health"))
        .header("x-request-id", "trace-abc_123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-abc_123");

    let r = c
        .get(format!("{base}/health"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 36, "a generated UUID: {id}");

    let r = c.get(format!("{base}/ready")).send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 36);
    token.cancel();
    h.await.unwrap();
}

#[tokio::test]
async fn unknown_paths_and_wrong_methods_answer_json() {
    let (base, token, h) = start_web().await;
    let c = reqwest::Client::new();
    let r = c
        .get(format!("{base}/nope"))
        .header("x-request-id", "rid-404")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    for (h, want) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(r.headers()[h], want, "{h}");
    }
    assert!(
        r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "not_found");
    assert_eq!(v["request_id"], "rid-404");
    assert!(v["message"].as_str().unwrap().contains("/nope"));

    let r = c.post(format!("{base}/health")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "method_not_allowed");
    assert!(v["request_id"].is_string());
    token.cancel();
    h.await.unwrap();
}

/// Runs `check-config` with a clean environment plus `env`.
fn check_config(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config").args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_layers_defaults_file_env_and_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let rk = dir.path().join("rk");
    std::fs::write(&rk, format!("{ROUTING_KEY}\n")).unwrap();
    let file = dir.path().join("bridge.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[oneview]
url = "https://ov.example.com"
username = "svc-bridge"
password_file = "{}"
[pagerduty]
routing_key_file = "{}"
[poller]
interval = "45s"
severities = ["Critical"]
"#,
            pw.display(),
            rk.display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // File over defaults.
    let (code, out, err) = check_config(&["--config", f], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("interval = \"45s\""), "{out}");
    assert!(
        out.contains("page_size = 500"),
        "defaults still apply:\n{out}"
    );

    // Environment over file; BRIDGE_CONFIG names the file.
    let (code, out, err) = check_config(
        &[],
        &[
            ("BRIDGE_CONFIG", f),
            ("BRIDGE_POLLER__INTERVAL", "2m"),
            ("BRIDGE_ONEVIEW__USERNAME", "from-env"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("interval = \"2m\""), "{out}");
    assert!(out.contains("username = \"from-env\""), "{out}");

    // An inline secret from the environment replaces the file's `_file` twin (environment
    // variables are the higher source), with a warning naming both; it is never printed.
    let (code, out, err) = check_config(
        &["--config", f],
        &[("BRIDGE_PAGERDUTY__ROUTING_KEY", ROUTING_KEY)],
    );
    assert_eq!(
        code, 0,
        "env routing_key over the file's routing_key_file: {err}"
    );
    assert!(out.contains("routing_key = \"<redacted>\""), "{out}");
    assert!(!out.contains("routing_key_file"), "{out}");
    let warning = err
        .lines()
        .find(|l| l.contains("replaces"))
        .unwrap_or_else(|| panic!("no override warning:\n{err}"));
    assert!(
        warning.contains("BRIDGE_PAGERDUTY__ROUTING_KEY")
            && warning.contains("pagerduty.routing_key_file")
            && warning.contains(f),
        "{warning}"
    );
    for text in [&out, &err] {
        assert!(!text.contains(ROUTING_KEY));
        assert!(!text.contains(PASSWORD));
    }
}

/// Precedence between a secret and its `_file` twin follows the sources (defaults < file <
/// environment) both ways; both twins in one source stay an error.
#[test]
fn secret_twins_follow_source_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let pw = pw.to_str().unwrap();
    let write = |name: &str, oneview: &str| {
        let file = dir.path().join(name);
        std::fs::write(
            &file,
            format!(
                "[oneview]\nurl = \"https://ov.example.com\"\nusername = \"svc\"\n{oneview}\n[pagerduty]\nrouting_key = \"{ROUTING_KEY}\"\n"
            ),
        )
        .unwrap();
        file.to_str().unwrap().to_owned()
    };
    let with_file = write("file.toml", &format!("password_file = \"{pw}\""));
    let with_inline = write("inline.toml", "password = \"from-the-file\"");
    let with_both = write(
        "both.toml",
        &format!("password = \"from-the-file\"\npassword_file = \"{pw}\""),
    );

    // Environment `password` over the file's `password_file`.
    let (code, out, err) = check_config(
        &["--config", &with_file],
        &[("BRIDGE_ONEVIEW__PASSWORD", "from-env")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("password_file"), "{out}");
    assert!(err.contains("BRIDGE_ONEVIEW__PASSWORD") && err.contains("oneview.password_file"));

    // Environment `password_file` over the file's `password`.
    let (code, out, err) = check_config(
        &["--config", &with_inline],
        &[("BRIDGE_ONEVIEW__PASSWORD_FILE", pw)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("password_file = \"{pw}\"")), "{out}");
    assert!(!out.contains("password = "), "{out}");
    assert!(err.contains("BRIDGE_ONEVIEW__PASSWORD_FILE"), "{err}");

    // Both in the file, or both in the environment: an error naming the key.
    let (code, _, err) = check_config(&["--config", &with_both], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("oneview.password") && err.contains("same source"),
        "{err}"
    );
    let (code, _, err) = check_config(
        &["--config", &with_file],
        &[
            ("BRIDGE_ONEVIEW__PASSWORD", "from-env"),
            ("BRIDGE_ONEVIEW__PASSWORD_FILE", pw),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("same source"), "{err}");
    assert!(!err.contains(PASSWORD) && !err.contains("from-env"));
    assert!(!err.contains("from-the-file"));
}

/// One run reports every stage: an unknown key no longer hides a bad duration, a bad value
/// in another section, a missing url and a validation finding.
#[test]
fn check_config_reports_unknown_keys_bad_values_and_missing_keys_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridge.toml");
    std::fs::write(
        &file,
        format!(
            "[oneview]\nusername = \"svc\"\npassword = \"{PASSWORD}\"\nconect_timeout = \"5s\"\nrequest_timeout = \"soon\"\n[pagerduty]\nrouting_key = \"{ROUTING_KEY}\"\nconcurrency = \"many\"\n[poller]\npage_size = 0\n"
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = check_config(
        &["--config", f],
        &[
            ("BRIDGE_POLLER__INTERVALL", "1m"),
            ("BRIDGE_LOG__FORMAT", "xml"),
        ],
    );
    assert_eq!(code, 2, "{out}{err}");
    for (key, what) in [
        ("oneview.conect_timeout", "unknown key (from TOML file"),
        ("poller.intervall", "BRIDGE_POLLER__INTERVALL"),
        ("oneview.request_timeout", "soon"),
        ("pagerduty.concurrency", "many"),
        ("log.format", "BRIDGE_LOG__FORMAT"),
        ("oneview.url", "missing"),
        ("poller.page_size", "between 1 and 5000"),
    ] {
        let line = err
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("- {key}")))
            .unwrap_or_else(|| panic!("no line for {key} in:\n{err}"));
        assert!(line.contains(what), "{line}");
    }
    assert!(err.contains(f), "the file is named: {err}");
    assert!(
        err.starts_with("error: 7 configuration problem(s)"),
        "{err}"
    );
    assert!(!err.contains(PASSWORD) && !err.contains(ROUTING_KEY));

    // A bad secret value is reported without echoing it, and not again as "missing".
    let (code, _, err) = check_config(
        &["--config", f, "--role", "web"],
        &[("BRIDGE_WEB__POLLER_TOKEN", "987654321")],
    );
    assert_eq!(code, 2);
    let line = err
        .lines()
        .find(|l| l.contains("web.poller_token"))
        .unwrap();
    assert!(line.contains("invalid value"), "{line}");
    assert!(!err.contains("987654321"), "{err}");
}

/// A TOML syntax error names the file, the line and the column, does not quote the line (it
/// may hold a secret), and the environment is still checked in the same run.
#[test]
fn toml_syntax_error_names_the_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "[oneview]\nurl = \"https://ov.example.com\"\npassword = hunter2-Secret\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (code, _, err) = check_config(&["--config", f], &[("BRIDGE_SERVER__LISTNE", "x")]);
    assert_eq!(code, 2, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains(f))
        .unwrap_or_else(|| panic!("file not named:\n{err}"));
    assert!(line.contains("line 3, column 12"), "{line}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(err.contains("server.listne"), "{err}");
    assert!(
        !err.contains("oneview.username"),
        "no noise about what the file would set: {err}"
    );
}

#[test]
fn check_config_never_prints_a_secret() {
    let env = [
        ("BRIDGE_ONEVIEW__URL", "https://ov.example.com"),
        ("BRIDGE_ONEVIEW__USERNAME", "svc"),
        ("BRIDGE_ONEVIEW__PASSWORD", PASSWORD),
        ("BRIDGE_PAGERDUTY__ROUTING_KEY", ROUTING_KEY),
    ];
    let (code, out, err) = check_config(&[], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("password = \"<redacted>\""), "{out}");
    assert!(out.contains("routing_key = \"<redacted>\""), "{out}");
    assert!(!out.contains(PASSWORD) && !err.contains(PASSWORD));
    assert!(!out.contains(ROUTING_KEY) && !err.contains(ROUTING_KEY));

    // A routing key of the wrong length is rejected without echoing it.
    let short = "shortkey-not-32-chars";
    let (code, out, err) = check_config(
        &[],
        &[
            ("BRIDGE_ONEVIEW__URL", "https://ov.example.com"),
            ("BRIDGE_ONEVIEW__USERNAME", "svc"),
            ("BRIDGE_ONEVIEW__PASSWORD", PASSWORD),
            ("BRIDGE_PAGERDUTY__ROUTING_KEY", short),
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("32 characters"), "{err}");
    assert!(!err.contains(short) && !out.contains(short));
    assert!(!err.contains(PASSWORD));
}

#[test]
fn every_validation_problem_is_reported_at_once() {
    let (code, _out, err) = check_config(
        &[],
        &[
            ("BRIDGE_ONEVIEW__URL", "ov.example.com"),
            ("BRIDGE_ONEVIEW__USERNAME", "svc"),
            ("BRIDGE_ONEVIEW__PASSWORD", PASSWORD),
            ("BRIDGE_PAGERDUTY__ROUTING_KEY", "too-short"),
            ("BRIDGE_POLLER__INTERVAL", "500ms"),
            ("BRIDGE_POLLER__SEVERITIES", "[Critical, Catastrophic]"),
        ],
    );
    assert_eq!(code, 2, "{err}");
    for (key, what) in [
        ("oneview.url", "ov.example.com"),
        ("pagerduty.routing_key", "32 characters"),
        ("poller.interval", "at least 1s"),
        ("poller.severities", "Catastrophic"),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("no line for {key} in:\n{err}"));
        assert!(line.contains(what), "{line}");
    }

    let (code, _, err) = check_config(&[], &[("BRIDGE_POLLER__SEVERITIES", "[]")]);
    assert_eq!(code, 2);
    assert!(err.contains("poller.severities"), "{err}");

    let (code, _, err) = check_config(
        &[],
        &[("BRIDGE_ONEVIEW__URL", "https://"), ("BRIDGE_ROLE", "web")],
    );
    assert_eq!(code, 2);
    assert!(err.contains("oneview.url"), "{err}");
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.toml");
    std::fs::write(
        &file,
        "[poller]\nintervall = \"30s\"\n[server]\nlisten = \"0.0.0.0:8080\"\nlistne = 1\n[nosuch]\nx = 1\n",
    )
    .unwrap();
    let (code, _, err) = check_config(&["--role", "web", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    for k in ["poller.intervall", "server.listne", "nosuch"] {
        assert!(err.contains(k), "{k} not reported:\n{err}");
    }

    let (code, _, err) = check_config(
        &["--role", "web"],
        &[
            ("BRIDGE_POLLER__INTERVAL", "soon"),
            ("BRIDGE_LOG__FORMAT", "xml"),
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("poller.interval"), "{err}");
    assert!(err.contains("log.format"), "{err}");

    let (code, _, err) = check_config(&["--config", "/nonexistent/bridge.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/bridge.toml"), "{err}");
}

#[test]
fn web_role_needs_no_backend_credentials() {
    let (code, out, err) = check_config(&["--role", "web"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("[server]"));
    let (code, _, err) = check_config(&["--role", "poller"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("oneview.url") && err.contains("pagerduty.routing_key"),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_version_works() {
    let out = Command::new(BIN).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["run", "--role", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    for sub in ["run", "check-config"] {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
    }
}

/// Picks a free loopback port for a child process (the child binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sigterm_turns_readiness_503_then_exits_0_within_the_timeout() {
    let port = free_port();
    let mut child = Command::new(BIN)
        .args(["run", "--role", "web"])
        .env_clear()
        .env("BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("BRIDGE_SERVER__DRAIN_DELAY", "3s")
        .env("BRIDGE_SERVER__SHUTDOWN_TIMEOUT", "5s")
        .env("BRIDGE_LOG__FORMAT", "json")
        .env("BRIDGE_LOG__LEVEL", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = KillOnDrop(child);
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{base}/ready")).send()
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "bridge never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = client
        .get(format!("{base}/health"))
        .header("x-request-id", "sigterm-test-rid")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let sent = Instant::now();
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    // Readiness flips at once, while the drain delay keeps the server up.
    let mut saw_503 = false;
    while sent.elapsed() < Duration::from_secs(2) {
        if let Ok(r) = client.get(format!("{base}/ready")).send()
            && r.status() == 503
        {
            let v: serde_json::Value = r.json().unwrap();
            assert_eq!(v["unmet"][0]["condition"], "not_shutting_down");
            saw_503 = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(saw_503, "/ready did not turn 503 after SIGTERM");
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(15),
            "no exit within drain delay + shutdown timeout"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let lines = lines.join().unwrap();
    let req_line = lines
        .iter()
        .find(|l| l.contains("sigterm-test-rid"))
        .unwrap_or_else(|| panic!("request id not logged:\n{}", lines.join("\n")));
    let v: serde_json::Value = serde_json::from_str(req_line).expect("JSON log line");
    assert_eq!(v["span"]["request_id"], "sigterm-test-rid");
    assert!(lines.iter().any(|l| l.contains("bridge stopped")));
}

/// `demo` as a user runs it: the URLs its banner prints (one per simulated appliance) and the
/// incident links PagerDuty receives all answer, each on its own appliance (the OneView
/// simulator serves a page at `/`, where a browser lands for `{ui}/#/activity/r{uri}`), and
/// `--churn-every 0s` reads as "off", not "every 0ns".
#[test]
fn demo_banner_urls_and_incident_links_answer() {
    let (mut child, rx) = spawn_lines(&[
        "demo",
        "--bus",
        "off",
        "--listen",
        "127.0.0.1:0",
        "--interval",
        "1s",
        "--churn-every",
        "0s",
        "--alerts",
        "2",
    ]);
    // The banner ends with an empty line; then one line per accepted event.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = Vec::new();
    let mut triggers = 0;
    while triggers < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| {
            panic!("demo printed no 2 triggers; banner:\n{}", banner.join("\n"))
        });
        if line.contains(" trigger ") {
            triggers += 1;
        } else {
            banner.push(line);
        }
    }
    let banner = banner.join("\n");
    let url_after = |label: &str| -> String {
        banner
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{banner}"))
            .to_owned()
    };
    assert!(!banner.contains("0ns"), "{banner}");
    assert!(banner.contains("--churn-every 0s"), "{banner}");
    assert!(
        banner.contains("polling each appliance every 1s; message bus (SCMB) off (--bus off)"),
        "{banner}"
    );

    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let get = |url: &str| {
        let r = client.get(url).send().unwrap();
        let status = r.status();
        (status, r.text().unwrap_or_default())
    };
    // One simulator URL per appliance of the estate, each answering as that appliance.
    let oneviews: Vec<(&str, String)> = ["synergy-dc1", "synergy-dc2", "bladesystem-lab"]
        .into_iter()
        .map(|name| (name, url_after(&format!("{name} "))))
        .collect();
    for (name, oneview) in &oneviews {
        let (status, body) = get(oneview);
        assert_eq!(status, 200, "{oneview}");
        assert!(
            body.contains(&format!("OneView simulator {name}")),
            "{body}"
        );
    }
    let (status, _) = get(&url_after("status page"));
    assert_eq!(status, 200);

    // Every incident link the bridge sent to PagerDuty, followed as a browser would.
    let incidents = url_after("PagerDuty");
    let events_url = incidents.replace("/sim/incidents", "/sim/events");
    let events: serde_json::Value = client.get(&events_url).send().unwrap().json().unwrap();
    // (the appliance in the dedup key, the link) of every event.
    let links: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            let appliance = e["body"]["dedup_key"]
                .as_str()
                .and_then(|k| k.split(':').nth(1))
                .unwrap_or_default()
                .to_owned();
            e["body"]["links"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |l| {
                    l["href"]
                        .as_str()
                        .map(|h| (appliance.clone(), h.to_owned()))
                })
        })
        .collect();
    assert!(links.len() >= 2, "{events}");
    let oneview_of = |appliance: &str| -> &str {
        oneviews
            .iter()
            .find(|(n, _)| *n == appliance)
            .map(|(_, u)| u.trim_end_matches('/'))
            .unwrap_or_else(|| panic!("an event from {appliance:?}, not in the estate"))
    };
    for (appliance, link) in &links {
        assert!(
            link.starts_with(oneview_of(appliance)),
            "{link} lands on its own appliance {appliance}"
        );
        assert!(link.contains("/#/activity/r/rest/alerts/"), "{link}");
        let (status, body) = get(link);
        assert_eq!(status, 200, "{link}");
        assert!(body.contains("OneView simulator"), "{link}");
    }
    let alert_id = links[0].1.rsplit('/').next().unwrap();
    let (status, alert) = get(&format!(
        "{}/sim/alerts/{alert_id}",
        oneview_of(&links[0].0)
    ));
    assert_eq!(status, 200, "the page's pointer to the alert's JSON");
    assert!(
        alert.contains(&format!("/rest/alerts/{alert_id}")),
        "{alert}"
    );

    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
