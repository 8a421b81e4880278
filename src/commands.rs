//! The command-line subcommands other than `run` and `check-config`: `send-test-event`,
//! `simulate`, `healthcheck`. This is the program's edge, so errors are `anyhow` with context
//! written for the operator reading the terminal.

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
            use crate::sim::oneview::{self as sim, GenerateSpec, SimConfig};
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
            shutdown.cancelled().await;
            running.stop().await;
            Ok(())
        }
    }
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
