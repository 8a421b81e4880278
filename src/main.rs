//! `oneview-pagerduty-bridge`: parses the command line, sets up logging, maps signals to a
//! cancellation token and hands over to the library.

use std::process::ExitCode;

use bridge::cli::{Cli, Command, SimTarget};
use bridge::config::{self, ConfigError};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { role, config } => match config::load(config.as_deref(), role) {
            Ok(cfg) => {
                for w in &cfg.warnings {
                    eprintln!("warning: {w}");
                }
                print!("{}", cfg.to_toml());
                ExitCode::SUCCESS
            }
            Err(e) => config_failed(&e),
        },
        Command::SendTestEvent { config } => {
            // Loaded for the web role so that OneView credentials are not required: only the
            // [pagerduty] section matters here, and it is resolved whenever it is present.
            let cfg = match config::load(config.as_deref(), bridge::config::Role::Web) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            if cfg.pagerduty.is_none() {
                eprintln!(
                    "error: {}",
                    bridge::pagerduty::PagerDutyError::NotConfigured
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            if let Err(e) = bridge::telemetry::init(&cfg.log) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            run_async(async move {
                let reports = bridge::pagerduty::send_test_event(&cfg).await?;
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
            })
        }
        Command::Demo {
            listen,
            interval,
            alerts,
            churn_every,
        } => {
            // The demo's own lines are the show; the bridge's logs stay at error unless RUST_LOG
            // asks for more (the demo's plain-http loopback URLs would only warn).
            let log = config::RawLog {
                format: config::LogFormat::Pretty,
                level: "error".to_owned(),
            };
            if let Err(e) = bridge::telemetry::init(&log) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let opts = bridge::demo::DemoOptions {
                listen,
                interval,
                alerts,
                churn_every,
            };
            run_async(async move {
                bridge::demo::run(opts, shutdown_on_signals()).await?;
                Ok(())
            })
        }
        Command::Healthcheck { url, timeout } => healthcheck(&url, timeout),
        Command::Run { role, config } => {
            let cfg = match config::load(config.as_deref(), role) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            if let Err(e) = bridge::telemetry::init(&cfg.log) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            run_async(async move {
                let app = bridge::App::build(cfg).await?;
                app.run(shutdown_on_signals()).await?;
                Ok(())
            })
        }
        Command::Simulate { target } => simulate(target),
    }
}

fn simulate(target: SimTarget) -> ExitCode {
    match target {
        SimTarget::Pagerduty {
            listen,
            rate_limit_per_minute,
            error_rate,
            latency_ms,
        } => {
            let log = bridge::config::RawLog::default();
            if let Err(e) = bridge::telemetry::init(&log) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            if !(0.0..=1.0).contains(&error_rate) {
                eprintln!("error: --error-rate must be between 0 and 1");
                return ExitCode::from(EXIT_CONFIG);
            }
            let faults = bridge::sim::pagerduty::Faults {
                rate_limit_per_minute,
                error_rate,
                latency_ms,
                ..Default::default()
            };
            run_async(async move {
                let h = bridge::sim::pagerduty::start(listen, faults)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (--listen): {e}"))?;
                println!("PagerDuty simulator: events URL {}", h.events_url());
                println!(
                    "  inspect: http://{0}/sim/incidents  http://{0}/sim/events  http://{0}/sim/counters",
                    h.addr()
                );
                shutdown_on_signals().cancelled().await;
                h.shutdown();
                Ok(())
            })
        }
        SimTarget::Oneview {
            listen,
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
        } => {
            let log = config::RawLog {
                format: config::LogFormat::Pretty,
                level: "info".to_owned(),
            };
            if let Err(e) = bridge::telemetry::init(&log) {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            run_async(async move {
                use bridge::sim::oneview::{self as sim, GenerateSpec, SimConfig};
                let cfg = SimConfig {
                    username,
                    password,
                    current_version,
                    minimum_version,
                    login_banner: !no_banner,
                    idle_timeout,
                    ..SimConfig::default()
                };
                let (user, pass) = (cfg.username.clone(), cfg.password.clone());
                let tls = match (&tls_cert, &tls_key) {
                    (Some(c), Some(k)) => Some(sim::TlsFiles::read(c, k).map_err(|e| {
                        anyhow::anyhow!(
                            "cannot read --tls-cert {} / --tls-key {}: {e}",
                            c.display(),
                            k.display()
                        )
                    })?),
                    _ => None,
                };
                let running = sim::start_with(cfg, listen, tls)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot serve on {listen}: {e}"))?;
                running.handle.generate(&GenerateSpec {
                    count: cleared_alerts,
                    state: Some("Cleared".to_owned()),
                    max_age_ms: 30 * 24 * 3600 * 1000,
                    ..GenerateSpec::default()
                });
                running.handle.generate(&GenerateSpec {
                    count: alerts,
                    ..GenerateSpec::default()
                });
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
                println!(
                    "  control API: GET {url}/sim, POST {url}/sim/alerts, POST {url}/sim/alerts/generate, PATCH/DELETE {url}/sim/alerts/{{id}}, POST {url}/sim/alerts/{{id}}/clear, PUT {url}/sim/faults, POST {url}/sim/sessions/expire, GET {url}/sim/counters"
                );
                shutdown_on_signals().cancelled().await;
                running.stop().await;
                Ok(())
            })
        }
    }
}

/// Probes `url` once; exit 0 only on HTTP 200. Prints why it failed, never the body.
fn healthcheck(url: &str, timeout: std::time::Duration) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("unhealthy: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let outcome = rt.block_on(async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        client.get(url).send().await.map(|r| r.status())
    });
    match outcome {
        Ok(status) if status == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!(
                "unhealthy: GET {url} answered HTTP {status}; see /ready for unmet conditions"
            );
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!(
                "unhealthy: GET {url} failed: {e}; is the bridge listening there (server.listen)?"
            );
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn config_failed(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn run_async<F>(fut: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "bridge failed");
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// A token cancelled on the first SIGTERM or SIGINT; a second one exits at once.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; shutting down (send it again to exit at once)");
        t.cancel();
        wait_for_signal().await;
        tracing::warn!("second signal; exiting immediately");
        std::process::exit(i32::from(EXIT_RUNTIME));
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
