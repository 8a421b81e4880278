//! The command-line subcommands other than `run` and `check-config`: `send-test-event`,
//! `check-scmb`, `simulate`, `healthcheck`, and `silence` (a client of a running bridge's
//! `/api/v1/silences`). This is the program's edge, so errors are `anyhow`
//! with context written for the operator reading the terminal.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::SimTarget;
use crate::config::Config;

/// Sends a trigger and its resolve to every configured routing key and prints PagerDuty's
/// answers. Fails unless PagerDuty accepted every event.
pub async fn send_test_event(cfg: &Config) -> anyhow::Result<()> {
    let reports = crate::pagerduty::send_test_event(cfg).await?;
    let mut all_ok = true;
    for r in &reports {
        all_ok &= r.accepted;
        let status = r
            .status
            .map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
        println!(
            "{} {:<8} route={} dedup_key={} -> {} {}",
            if r.accepted { "ok  " } else { "FAIL" },
            r.action,
            r.route,
            r.dedup_key,
            status,
            r.detail
        );
    }
    if all_ok {
        Ok(())
    } else {
        anyhow::bail!(
            "PagerDuty did not accept every test event; check pagerduty.routing_key (the Events API v2 integration key of the service) and pagerduty.events_url"
        )
    }
}

/// Probes the message bus of each appliance (or of `only`): certificates, connection, `listen`
/// of alert messages; one line per appliance. Fails unless every appliance probed connected.
pub async fn check_scmb(cfg: &Config, only: Option<&str>, listen: Duration) -> anyhow::Result<()> {
    use crate::oneview::certs::{self, TaskWait};
    use crate::oneview::scmb::{self, ScmbSettings};
    use crate::oneview::{OneViewClient, OneViewMetrics};
    let appliances: Vec<_> = cfg
        .appliances
        .iter()
        .filter(|a| only.is_none_or(|n| a.oneview.name == n))
        .collect();
    if appliances.is_empty() {
        let names: Vec<&str> = cfg
            .appliances
            .iter()
            .map(|a| a.oneview.name.as_str())
            .collect();
        anyhow::bail!(
            "--appliance {}: no appliance of that name in the configuration (it has: {})",
            only.unwrap_or_default(),
            names.join(", ")
        );
    }
    let width = appliances
        .iter()
        .map(|a| a.oneview.name.len())
        .max()
        .unwrap_or(0);
    let mut failed = 0usize;
    for a in &appliances {
        let name = &a.oneview.name;
        let settings = ScmbSettings::new(&a.oneview, &a.scmb);
        let off = if a.scmb.enabled {
            ""
        } else {
            " (scmb.enabled is off: the poller does not use the bus yet)"
        };
        let client = OneViewClient::new(&a.oneview, OneViewMetrics::unregistered())
            .with_context(|| format!("appliance {name}"))?;
        let outcome = match certs::fetch_tls(&client, &a.scmb, TaskWait::default()).await {
            Err(e) => Err(format!("certificates: {e}")),
            Ok(tls) => scmb::probe(&settings, &tls, listen)
                .await
                .map(|r| (tls.source.clone(), r))
                .map_err(|e| e.to_string()),
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), client.logout()).await;
        match outcome {
            Ok((source, r)) => println!(
                "ok    {name:<width$}  {} connected in {} ms with the certificates of {source}; {} alert messages in {}{}{off}",
                r.endpoint,
                r.connected_in.as_millis(),
                r.messages,
                humantime::format_duration(listen),
                if r.malformed > 0 {
                    format!(
                        " ({} malformed: see the bridge's SCMB message skipped warnings)",
                        r.malformed
                    )
                } else {
                    String::new()
                },
            ),
            Err(why) => {
                failed += 1;
                println!("FAIL  {name:<width$}  {}: {why}{off}", settings.endpoint());
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        anyhow::bail!(
            "the message bus of {failed} of {} appliances does not work with the bridge (reasons above; docs/RUNBOOK.md, \"Message bus (SCMB) certificates\", explains each); polling is not affected",
            appliances.len()
        )
    }
}

/// Runs a simulator until `shutdown` is cancelled.
pub async fn simulate(target: SimTarget, shutdown: CancellationToken) -> anyhow::Result<()> {
    match target {
        SimTarget::Pagerduty {
            listen,
            rate_limit_per_minute,
            error_rate,
            latency_ms,
        } => {
            anyhow::ensure!(
                (0.0..=1.0).contains(&error_rate),
                "--error-rate must be between 0 and 1"
            );
            let faults = crate::sim::pagerduty::Faults {
                rate_limit_per_minute,
                error_rate,
                latency_ms,
                ..Default::default()
            };
            let h = crate::sim::pagerduty::start(listen, faults)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (--listen): {e}"))?;
            println!("PagerDuty simulator: events URL {}", h.events_url());
            println!(
                "  inspect: http://{0}/sim/incidents  http://{0}/sim/events  http://{0}/sim/counters",
                h.addr()
            );
            shutdown.cancelled().await;
            h.shutdown();
            Ok(())
        }
        SimTarget::Oneview {
            listen,
            appliances,
            username,
            password,
            current_version,
            minimum_version,
            no_banner,
            idle_timeout,
            alerts,
            cleared_alerts,
            tls_cert,
            tls_key,
            scmb_broker,
            scmb_ca_cert,
            scmb_ca_key,
        } => {
            let scmb_ca = match (&scmb_ca_cert, &scmb_ca_key) {
                (Some(c), Some(k)) => {
                    let read = |p: &std::path::PathBuf, flag: &str| {
                        std::fs::read_to_string(p)
                            .map_err(|e| anyhow::anyhow!("cannot read {flag} {}: {e}", p.display()))
                    };
                    Some(crate::sim::oneview::ScmbCa {
                        cert_pem: read(c, "--scmb-ca-cert")?,
                        key_pem: read(k, "--scmb-ca-key")?,
                    })
                }
                _ => None,
            };
            let base = crate::sim::oneview::SimConfig {
                scmb_ca,
                username,
                password,
                current_version,
                minimum_version,
                login_banner: !no_banner,
                idle_timeout,
                ..crate::sim::oneview::SimConfig::default()
            };
            let tls = match (&tls_cert, &tls_key) {
                (Some(c), Some(k)) => {
                    Some(crate::sim::oneview::TlsFiles::read(c, k).map_err(|e| {
                        anyhow::anyhow!(
                            "cannot read --tls-cert {} / --tls-key {}: {e}",
                            c.display(),
                            k.display()
                        )
                    })?)
                }
                _ => None,
            };
            let seed = Seed {
                alerts,
                cleared_alerts,
            };
            if appliances <= 1 {
                simulate_one_oneview(base, listen, tls, seed, scmb_broker, shutdown).await
            } else {
                simulate_oneview_estate(base, listen, appliances, tls, seed, shutdown).await
            }
        }
    }
}

/// The alerts each simulated appliance starts with.
#[derive(Clone, Copy)]
struct Seed {
    alerts: usize,
    cleared_alerts: usize,
}

impl Seed {
    fn apply(self, h: &crate::sim::oneview::SimHandle) {
        use crate::sim::oneview::GenerateSpec;
        h.generate(&GenerateSpec {
            count: self.cleared_alerts,
            state: Some("Cleared".to_owned()),
            max_age_ms: 30 * 24 * 3600 * 1000,
            ..GenerateSpec::default()
        });
        h.generate(&GenerateSpec {
            count: self.alerts,
            ..GenerateSpec::default()
        });
    }
}

/// The simulator's control API, for the banner.
fn control_api(url: &str) -> String {
    format!(
        "GET {url}/sim, POST {url}/sim/alerts, POST {url}/sim/alerts/generate, PATCH/DELETE {url}/sim/alerts/{{id}}, POST {url}/sim/alerts/{{id}}/clear, PUT {url}/sim/faults, POST {url}/sim/sessions/expire, GET {url}/sim/counters"
    )
}

/// `simulate oneview` with one appliance: the flags and output from before estates.
async fn simulate_one_oneview(
    cfg: crate::sim::oneview::SimConfig,
    listen: std::net::SocketAddr,
    tls: Option<crate::sim::oneview::TlsFiles>,
    seed: Seed,
    scmb_broker: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (user, pass) = (cfg.username.clone(), cfg.password.clone());
    let (minimum_version, current_version) = (cfg.minimum_version, cfg.current_version);
    let running = crate::sim::oneview::start_with(cfg, listen, tls)
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve on {listen}: {e}"))?;
    let publisher = match &scmb_broker {
        Some(b) => {
            let p = crate::sim::oneview::start_publisher(&running.handle, b)
                .map_err(|e| anyhow::anyhow!("--scmb-broker: {e}"))?;
            println!("  publishing alert changes to {b} (exchange scmb)");
            Some(p)
        }
        None => None,
    };
    seed.apply(&running.handle);
    let url = running.url();
    println!("OneView simulator serving {url}");
    println!("  username: {user}");
    println!("  password: {pass}");
    println!(
        "  API versions {minimum_version}..{current_version}; alerts: {} ({} open)",
        running.handle.alert_count(),
        running.handle.open_alert_count()
    );
    println!(
        "  bridge config: [oneview] url = \"{url}\", username = \"{user}\", password_file = <file holding the password>"
    );
    println!("  control API: {}", control_api(&url));
    shutdown.cancelled().await;
    if let Some(p) = publisher {
        p.stop().await;
    }
    running.stop().await;
    Ok(())
}

/// One `[[appliances]]` entry of the snippet `simulate oneview --appliances N` prints.
#[derive(serde::Serialize)]
struct ApplianceSnippet {
    name: String,
    url: String,
    username: String,
    password: String,
}

#[derive(serde::Serialize)]
struct EstateSnippet {
    appliances: Vec<ApplianceSnippet>,
}

/// `simulate oneview --appliances N`: N appliances on consecutive ports from `listen`'s (all
/// on free ports when it is 0), each with its own site, alerts, sessions and password.
async fn simulate_oneview_estate(
    base: crate::sim::oneview::SimConfig,
    listen: std::net::SocketAddr,
    appliances: u16,
    tls: Option<crate::sim::oneview::TlsFiles>,
    seed: Seed,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use crate::sim::oneview as sim;
    let mut running: Vec<(String, sim::RunningSim)> = Vec::new();
    let mut failure = None;
    for (i, (name, site)) in sim::estate(usize::from(appliances)).into_iter().enumerate() {
        let port = if listen.port() == 0 {
            Some(0)
        } else {
            u16::try_from(i)
                .ok()
                .and_then(|i| listen.port().checked_add(i))
        };
        let Some(port) = port else {
            failure = Some(anyhow::anyhow!(
                "--appliances {appliances} needs {appliances} consecutive ports from --listen {listen}, past 65535; give --listen a lower port"
            ));
            break;
        };
        let addr = std::net::SocketAddr::new(listen.ip(), port);
        let cfg = sim::SimConfig {
            password: sim::estate_password(&base.password, &name),
            name: Some(name.clone()),
            site,
            ..base.clone()
        };
        match sim::start_with(cfg, addr, tls.clone()).await {
            Ok(r) => {
                seed.apply(&r.handle);
                running.push((name, r));
            }
            Err(e) => {
                failure = Some(anyhow::anyhow!(
                    "cannot serve appliance {name} on {addr}: {e}; --appliances {appliances} takes {appliances} consecutive ports from --listen {listen}: give --listen a port where {appliances} consecutive ports are free (from the default 9443, the PagerDuty simulator's default 9444 is one of them), or port 0 for any free ports"
                ));
                break;
            }
        }
    }
    if let Some(e) = failure {
        for (_, r) in running {
            r.stop().await;
        }
        return Err(e);
    }

    let width = running.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    println!(
        "OneView simulator: an estate of {} appliances, each with its own alerts, sessions and password",
        running.len()
    );
    for (name, r) in &running {
        let cfg = r.handle.config();
        println!(
            "  {name:<width$}  {}  username {}  password {}  ({}; {} alerts, {} open)",
            r.url(),
            cfg.username,
            cfg.password,
            cfg.site.description,
            r.handle.alert_count(),
            r.handle.open_alert_count()
        );
    }
    println!(
        "  API versions {}..{} on each",
        base.minimum_version, base.current_version
    );
    let snippet = EstateSnippet {
        appliances: running
            .iter()
            .map(|(name, r)| {
                let cfg = r.handle.config();
                ApplianceSnippet {
                    name: name.clone(),
                    url: r.url(),
                    username: cfg.username,
                    password: cfg.password,
                }
            })
            .collect(),
    };
    let toml = toml::to_string(&snippet)
        .map_err(|e| anyhow::anyhow!("cannot write the [[appliances]] snippet (a bug): {e}"))?;
    println!(
        "  bridge config, ready to paste (simulator passwords; for real appliances use password_file{}):",
        if tls.is_some() {
            ", and ca_file = the CA of --tls-cert"
        } else {
            ""
        }
    );
    println!();
    println!("{}", toml.trim_end());
    println!();
    println!("  control API on each appliance's URL: {}", control_api(""));
    shutdown.cancelled().await;
    for (_, r) in running {
        r.stop().await;
    }
    Ok(())
}

/// GETs `url` once; Ok only on HTTP 200. Never prints the body.
pub async fn healthcheck(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .context("cannot build an HTTP client")?;
    let status = client.get(url).send().await.with_context(|| {
        format!("GET {url} failed; is the bridge listening there (server.listen)?")
    })?;
    anyhow::ensure!(
        status.status() == reqwest::StatusCode::OK,
        "GET {url} answered HTTP {}; see /ready for unmet conditions",
        status.status()
    );
    Ok(())
}

/// `silence add|list|expire`: a client of `/api/v1/silences`. The token comes from
/// `--token-file` or `BRIDGE_API_TOKEN` and is never printed.
pub async fn silence(
    api: &crate::cli::ApiArgs,
    action: crate::cli::SilenceAction,
) -> anyhow::Result<()> {
    use crate::cli::SilenceAction;
    use secrecy::{ExposeSecret, SecretString};

    let token: Option<SecretString> = match &api.token_file {
        Some(path) => {
            let t = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the API token file {}", path.display()))?;
            Some(SecretString::from(t.trim().to_owned()))
        }
        None => std::env::var("BRIDGE_API_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| SecretString::from(t.trim().to_owned())),
    };
    let client = reqwest::Client::builder()
        .timeout(api.timeout)
        .build()
        .context("cannot build an HTTP client")?;
    let base = api.url.trim_end_matches('/');
    let send = |method: reqwest::Method, url: String, body: Option<serde_json::Value>| {
        let mut rb = client.request(method.clone(), &url);
        if let Some(t) = &token {
            rb = rb.bearer_auth(t.expose_secret());
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        async move {
            let resp = rb.send().await.with_context(|| {
                format!("{method} {url} failed; is the bridge listening there (--url, BRIDGE_URL)?")
            })?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if !status.is_success() {
                let message = v["message"].as_str().unwrap_or(text.as_str());
                let hint = match status.as_u16() {
                    401 | 403 => {
                        " (give an API token of server.api_tokens with --token-file or BRIDGE_API_TOKEN)"
                    }
                    _ => "",
                };
                anyhow::bail!("{method} {url} answered HTTP {status}: {message}{hint}");
            }
            Ok(v)
        }
    };
    match action {
        SilenceAction::Add {
            matchers,
            duration,
            comment,
            starts_at,
            created_by,
        } => {
            let mut m = serde_json::Map::new();
            for kv in &matchers {
                let Some((k, v)) = kv.split_once('=') else {
                    anyhow::bail!(
                        "--match {kv:?} is not KEY=VALUE (for example --match resource_name='SGH8*')"
                    );
                };
                m.insert(k.trim().to_owned(), serde_json::Value::from(v));
            }
            let mut body = serde_json::json!({
                "matchers": m,
                "duration": duration,
                "comment": comment,
                "created_by": created_by.unwrap_or_default(),
            });
            if let Some(s) = starts_at {
                body["starts_at"] = serde_json::Value::from(s);
            }
            let v = send(
                reqwest::Method::POST,
                format!("{base}/api/v1/silences"),
                Some(body),
            )
            .await?;
            println!("{}", v["id"].as_str().unwrap_or(""));
        }
        SilenceAction::List { json } => {
            let v = send(
                reqwest::Method::GET,
                format!("{base}/api/v1/silences"),
                None,
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!(
                "{:<36}  {:<8}  {:<20}  {:<20}  {:<12}  {:<40}  COMMENT",
                "ID", "STATE", "STARTS", "ENDS", "CREATED BY", "MATCHERS"
            );
            for s in v["silences"].as_array().into_iter().flatten() {
                let matchers = s["matchers"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                let short = |t: &serde_json::Value| {
                    t.as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .map(|t| {
                            t.with_timezone(&chrono::Utc)
                                .format("%Y-%m-%d %H:%M:%SZ")
                                .to_string()
                        })
                        .unwrap_or_default()
                };
                println!(
                    "{:<36}  {:<8}  {:<20}  {:<20}  {:<12}  {:<40}  {}",
                    s["id"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    short(&s["starts_at"]),
                    short(&s["ends_at"]),
                    s["created_by"].as_str().unwrap_or(""),
                    matchers,
                    s["comment"].as_str().unwrap_or(""),
                );
            }
        }
        SilenceAction::Expire { id, expired_by } => {
            let id_enc: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
            let mut url = format!("{base}/api/v1/silences/{id_enc}");
            if let Some(by) = expired_by {
                let by: String = url::form_urlencoded::byte_serialize(by.as_bytes()).collect();
                url.push_str(&format!("?expired_by={by}"));
            }
            send(reqwest::Method::DELETE, url, None).await?;
            println!("expired {id}");
        }
    }
    Ok(())
}
