//! `oneview-pagerduty-bridge`: parses the command line, sets up logging, maps signals to a
//! cancellation token and hands over to the library.

use std::process::ExitCode;

use bridge::cli::{Cli, Command};
use bridge::config::{self, ConfigError, LogFormat, RawLog, Role};
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error.
const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Before any thread exists, so every arena follows it (see bridge::alloc).
    bridge::alloc::configure();
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
        Command::Run { role, config } => {
            let cfg = match config::load(config.as_deref(), role) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            with_logging(&cfg.log.clone(), async move {
                // Signals are caught from before the build, so a SIGTERM while the state file
                // loads still ends in an orderly drain.
                let shutdown = shutdown_on_signals();
                // A standby poller waits inside build_until (serving health and readiness).
                if let Some(app) = bridge::App::build_until(cfg, &shutdown).await? {
                    app.run(shutdown).await?;
                }
                Ok(())
            })
        }
        Command::CheckScmb {
            config,
            appliance,
            listen,
        } => {
            let cfg = match config::load(config.as_deref(), Role::Poller) {
                Ok(c) => c,
                Err(e) => return config_failed(&e),
            };
            with_logging(&cfg.log.clone(), async move {
                bridge::commands::check_scmb(&cfg, appliance.as_deref(), listen).await
            })
        }
        Command::SendTestEvent { config } => {
            // Loaded as the web role so that OneView credentials are not required: only the
            // [pagerduty] section matters here, and it is resolved whenever it is present.
            let cfg = match config::load(config.as_deref(), Role::Web) {
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
            with_logging(&cfg.log.clone(), async move {
                bridge::commands::send_test_event(&cfg).await
            })
        }
        Command::Demo {
            listen,
            interval,
            alerts,
            churn_every,
            bus,
        } => {
            let opts = bridge::demo::DemoOptions {
                listen,
                interval,
                alerts,
                churn_every,
                bus,
            };
            // The demo's own lines are the show; the bridge's logs stay at error unless RUST_LOG
            // asks for more (the demo's plain-http loopback URLs would only warn).
            with_logging(&pretty("error"), async move {
                bridge::demo::run(opts, shutdown_on_signals()).await?;
                Ok(())
            })
        }
        Command::Simulate { target } => with_logging(&pretty("info"), async move {
            bridge::commands::simulate(target, shutdown_on_signals()).await
        }),
        Command::Silence { api, action } => match current_thread_runtime() {
            Ok(rt) => match rt.block_on(bridge::commands::silence(&api, action)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            },
            Err(e) => {
                eprintln!("error: cannot start the async runtime: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        Command::Healthcheck { url, timeout } => {
            // A probe run by the container runtime: no logger, one line on failure.
            match current_thread_runtime() {
                Ok(rt) => match rt.block_on(bridge::commands::healthcheck(&url, timeout)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("unhealthy: {e:#}");
                        ExitCode::from(EXIT_RUNTIME)
                    }
                },
                Err(e) => {
                    eprintln!("unhealthy: cannot start the async runtime: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

fn pretty(level: &str) -> RawLog {
    RawLog {
        format: LogFormat::Pretty,
        level: level.to_owned(),
    }
}

fn config_failed(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Installs logging, then runs `fut` on a multi-threaded runtime and maps its result to an
/// exit code.
fn with_logging<F>(log: &RawLog, fut: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    if let Err(e) = bridge::telemetry::init(log) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    // Freed heap pages go back to the system once a storm is over (see bridge::alloc).
    bridge::alloc::start();
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

/// A token cancelled on the first SIGTERM or SIGINT; a second one exits at once. The handlers
/// are installed before this returns, so no signal is lost to the default action.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let mut signals = Signals::install();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("signal received; shutting down (send it again to exit at once)");
        t.cancel();
        signals.next().await;
        tracing::warn!("second signal; exiting immediately");
        std::process::exit(i32::from(EXIT_RUNTIME));
    });
    token
}

/// SIGTERM and SIGINT, listened to from the moment of installation.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    #[cfg(not(unix))]
    fn install() -> Self {
        Self {}
    }

    #[cfg(unix)]
    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}
