//! `oneview-pagerduty-bridge`: parses the command line, sets up logging, maps signals to a
//! cancellation token and hands over to the library.

use std::process::ExitCode;

use bridge::cli::{Cli, Command};
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
