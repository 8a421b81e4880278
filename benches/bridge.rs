//! Benchmarks of the bridge (issue 8): both simulators run in this process, the bridge runs as
//! the release binary in a child process so that its RSS and CPU (from `/proc/<pid>/status` and
//! `/proc/<pid>/stat`) are its own. One subcommand per benchmark; see `bench/README.md`.
//!
//! `cargo bench --bench bridge -- <name>` (Cargo builds the bridge binary for it).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge::sim::oneview::{self as ovsim, AlertSpec, GenerateSpec, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults};
use clap::{Parser, Subcommand};
use rand::Rng;

const ROUTING_KEY: &str = "BENCHROUTINGKEY00000000000000001";
const APPLIANCE: &str = "synergy-bench";
/// What `web` loads by default (and `smoke` runs).
const WEB_PATHS: &str = "/health,/ready,/metrics,/api/v1/alerts,/api/v1/pagerduty/webhook";

#[derive(Parser)]
#[command(about = "oneview-pagerduty-bridge benchmarks (issue 8)")]
struct Cli {
    /// Repetitions; figures are printed as median [min..max].
    #[arg(long, default_value_t = 3, global = true)]
    runs: usize,
    /// Keep the bridge's state in a redb file in this directory (`state.path`): the durable
    /// variants (benchmark 7).
    #[arg(long, global = true)]
    state_path: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Clone)]
enum Cmd {
    /// 1: alert-to-page latency, overhead beyond the poll wait.
    Latency {
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Alerts raised per second (at random offsets).
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// 2 (and 7 with --state-path): storm of N new alerts, then all cleared.
    Storm {
        #[arg(long, default_value_t = 10_000)]
        alerts: usize,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// `pagerduty.concurrency` (requests in flight; the bridge's default is 8).
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Active silences created (through the API) before the storm; none matches its
        /// alerts, so the figures are the cost of checking them at intake.
        #[arg(long, default_value_t = 0)]
        silences: usize,
    },
    /// 3 (and 7 with --state-path): storm under PagerDuty's 120/min per routing key.
    RateLimited {
        #[arg(long, default_value_t = 9_000)]
        warnings: usize,
        #[arg(long, default_value_t = 100)]
        criticals: usize,
        #[arg(long, default_value_t = 120)]
        seconds: u64,
        #[arg(long, default_value_t = 120)]
        per_minute: u32,
    },
    /// 4: idle poll cost with N stored (historical) alerts.
    Idle {
        #[arg(long, default_value_t = 50_000)]
        stored: usize,
        #[arg(long, default_value_t = 10)]
        cycles: u32,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// 5: footprint: startup to ready, idle RSS and CPU.
    Footprint {
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
    },
    /// 6: web endpoints with wrk (Debian `wrk`) on loopback.
    Web {
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        connections: u32,
        /// Paths to load, comma-separated. `/api/v1/alerts` and `/api/v1/pagerduty/webhook`
        /// are POSTed (bearer token; signed PagerDuty deliveries, unique X-Webhook-Id) through
        /// bench/wrk/post.lua; the others are GETs.
        #[arg(long, default_value = WEB_PATHS)]
        paths: String,
        /// Latency the OneView simulator adds to every answer once the bridge is ready (a real
        /// appliance answers in tens to hundreds of ms): shows what the webhook write-backs do
        /// when OneView is slower than the deliveries arrive.
        #[arg(long, default_value_t = 0)]
        oneview_latency_ms: u64,
        /// `own`: the webhooks are for the bridge's own incidents, and every delivery is
        /// written back to OneView. `foreign`: for incidents of another appliance, which the
        /// bridge verifies, parses and answers but does not write back (the receiving path
        /// alone).
        #[arg(long, default_value = "own", value_parser = ["own", "foreign"])]
        webhook_incidents: String,
    },
    /// 8: the estate: N appliances x M open alerts in one bridge; startup, idle RSS and CPU,
    /// OneView requests per appliance per cycle.
    Estate {
        #[arg(long, default_value_t = 50)]
        appliances: usize,
        /// Open alerts per appliance (paged at startup).
        #[arg(long, default_value_t = 1000)]
        open: usize,
        #[arg(long, default_value_t = 300)]
        idle_seconds: u64,
        #[arg(long, default_value_t = 30_000)]
        interval_ms: u64,
    },
    /// 9: isolation: appliance B's alert-to-202 while appliance A delivers a storm.
    Isolation {
        #[arg(long, default_value_t = 20_000)]
        storm: usize,
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// B's alerts raised while the estate is idle (the baseline); during the storm one is
        /// raised every 0-100 ms, at most ten times as many.
        #[arg(long, default_value_t = 40)]
        probes: usize,
    },
    /// 10: the message bus (SCMB, a local RabbitMQ): change-to-202 of appliance B over the bus
    /// idle and while appliance A (polled) delivers a storm, against polling B; the bridge's
    /// CPU and RSS with an idle bus connection; messages/s one connection takes.
    Scmb {
        /// B's alerts raised while idle; during the storm one every 0-100 ms, at most ten
        /// times as many.
        #[arg(long, default_value_t = 40)]
        probes: usize,
        /// Alerts of A's storm (polled at 1 s).
        #[arg(long, default_value_t = 20_000)]
        storm: usize,
        /// Messages published on B's bus as fast as the harness can, for the throughput.
        #[arg(long, default_value_t = 50_000)]
        messages: usize,
        /// The idle window for CPU and RSS (bus connected, no changes).
        #[arg(long, default_value_t = 60)]
        idle_seconds: u64,
        /// Poll intervals (ms, comma-separated; empty for none) at which B is also measured
        /// without the bus, each with a bridge of its own.
        #[arg(long, default_value = "30000,5000")]
        compare_polling: String,
    },
    /// The simulators alone (they must not be the bottleneck).
    Sims {
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        #[arg(long, default_value_t = 100_000)]
        stored: usize,
    },
    /// Every benchmark at a tiny size; fails when one breaks (not when it is slow).
    Smoke,
}

type R<T> = Result<T, String>;

fn main() {
    // `cargo bench` appends `--bench`; it means nothing here.
    let cli = Cli::parse_from(std::env::args().filter(|a| a != "--bench"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = rt.block_on(run(cli));
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = res {
        eprintln!("BENCHMARK FAILED: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> R<()> {
    println!("# machine: {}", machine());
    let sp = cli.state_path.clone();
    match cli.cmd.clone() {
        Cmd::Smoke => smoke().await,
        cmd => {
            let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for i in 0..cli.runs {
                println!("## run {}/{} load {}", i + 1, cli.runs, loadavg());
                let figs = one(&cmd, sp.as_deref()).await?;
                for (k, v) in &figs {
                    println!("  {k:<40} {v:>14.3}");
                    all.entry(k.clone()).or_default().push(*v);
                }
            }
            println!("## summary over {} runs: median [min .. max]", cli.runs);
            for (k, v) in all {
                let (med, min, max) = stats(&v);
                println!("  {k:<40} {med:>14.3} [{min:.3} .. {max:.3}]");
            }
            println!("# load after: {}", loadavg());
            Ok(())
        }
    }
}

type Figures = Vec<(String, f64)>;

async fn one(cmd: &Cmd, state: Option<&Path>) -> R<Figures> {
    match *cmd {
        Cmd::Latency {
            interval_ms,
            rate,
            seconds,
        } => latency(interval_ms, rate, seconds).await,
        Cmd::Storm {
            alerts,
            interval_ms,
            concurrency,
            silences,
        } => storm(alerts, interval_ms, concurrency, silences, state).await,
        Cmd::RateLimited {
            warnings,
            criticals,
            seconds,
            per_minute,
        } => rate_limited(warnings, criticals, seconds, per_minute, state).await,
        Cmd::Idle {
            stored,
            cycles,
            interval_ms,
        } => idle(stored, cycles, interval_ms).await,
        Cmd::Footprint { idle_seconds } => footprint(idle_seconds).await,
        Cmd::Web {
            seconds,
            connections,
            ref paths,
            oneview_latency_ms,
            ref webhook_incidents,
        } => {
            web(
                seconds,
                connections,
                paths,
                oneview_latency_ms,
                webhook_incidents == "foreign",
            )
            .await
        }
        Cmd::Estate {
            appliances,
            open,
            idle_seconds,
            interval_ms,
        } => estate(appliances, open, idle_seconds, interval_ms).await,
        Cmd::Isolation {
            storm,
            interval_ms,
            probes,
        } => isolation(storm, interval_ms, probes).await,
        Cmd::Scmb {
            probes,
            storm,
            messages,
            idle_seconds,
            ref compare_polling,
        } => scmb(probes, storm, messages, idle_seconds, compare_polling).await,
        Cmd::Sims { events, stored } => sims(events, stored).await,
        Cmd::Smoke => Err("smoke is not repeatable".into()),
    }
}

async fn smoke() -> R<()> {
    let t = Instant::now();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let steps: Vec<(&str, Cmd, bool)> = vec![
        (
            "sims",
            Cmd::Sims {
                events: 500,
                stored: 2_000,
            },
            false,
        ),
        (
            "latency",
            Cmd::Latency {
                interval_ms: 1000,
                rate: 20.0,
                seconds: 2,
            },
            false,
        ),
        (
            "storm",
            Cmd::Storm {
                alerts: 300,
                interval_ms: 1000,
                concurrency: 8,
                silences: 20,
            },
            false,
        ),
        (
            "storm durable",
            Cmd::Storm {
                alerts: 300,
                interval_ms: 1000,
                concurrency: 8,
                silences: 0,
            },
            true,
        ),
        (
            "rate-limited",
            Cmd::RateLimited {
                warnings: 60,
                criticals: 10,
                seconds: 4,
                per_minute: 20,
            },
            false,
        ),
        (
            "rate-limited durable",
            Cmd::RateLimited {
                warnings: 60,
                criticals: 10,
                seconds: 4,
                per_minute: 20,
            },
            true,
        ),
        (
            "idle",
            Cmd::Idle {
                stored: 2_000,
                cycles: 3,
                interval_ms: 1000,
            },
            false,
        ),
        ("footprint", Cmd::Footprint { idle_seconds: 1 }, false),
        (
            "estate",
            Cmd::Estate {
                appliances: 3,
                open: 20,
                idle_seconds: 2,
                interval_ms: 1000,
            },
            false,
        ),
        (
            "isolation",
            Cmd::Isolation {
                storm: 500,
                interval_ms: 1000,
                probes: 3,
            },
            false,
        ),
    ];
    let mut steps = steps;
    if which("wrk") {
        steps.push((
            "web",
            Cmd::Web {
                seconds: 1,
                connections: 4,
                paths: WEB_PATHS.into(),
                oneview_latency_ms: 0,
                webhook_incidents: "own".into(),
            },
            false,
        ));
    } else {
        println!("smoke: web skipped (no wrk on PATH)");
    }
    if bridge::sim::rabbitmq::installed() {
        steps.push((
            "scmb",
            Cmd::Scmb {
                probes: 3,
                storm: 300,
                messages: 500,
                idle_seconds: 1,
                compare_polling: "1000".into(),
            },
            false,
        ));
    } else {
        println!("smoke: scmb skipped (no rabbitmq-server: apt install rabbitmq-server)");
    }
    for (name, cmd, durable) in steps {
        let s = Instant::now();
        let figs = one(&cmd, durable.then(|| dir.path()))
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        println!(
            "smoke: {name} ok in {:.1}s ({} figures)",
            s.elapsed().as_secs_f64(),
            figs.len()
        );
    }
    println!("smoke: all ok in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}

// ---- benchmarks --------------------------------------------------------------------------

async fn latency(interval_ms: u64, rate: f64, seconds: u64) -> R<Figures> {
    let sims = Sims::start(Faults::default()).await?;
    let b = Bridge::spawn(&sims, &Opts::new(interval_ms)).await?;
    tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    let n = ((rate * seconds as f64).round() as usize).max(1);
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut raised: Vec<(u64, Instant)> = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        // Random offsets so that alerts land at every phase of the poll tick.
        let jitter = rand::rng().random_range(0.0..1.0) * period.as_secs_f64();
        let at = start + period.mul_f64(i as f64) + Duration::from_secs_f64(jitter);
        tokio::time::sleep_until(at.into()).await;
        let uri = sims.ov.handle.add_alert(AlertSpec {
            severity: Some("Critical".into()),
            ..Default::default()
        });
        let t = Instant::now();
        raised.push((id_of(&uri)?, t));
    }
    wait_count(Duration::from_secs(30), "alerts paged", n as u64, || {
        sims.pd.counters().incidents_opened
    })
    .await?;
    let origin = sims.pd.started();
    let mut received: BTreeMap<u64, Instant> = BTreeMap::new();
    for e in sims.pd.accepted() {
        if let Some(id) = e.dedup_key.as_deref().and_then(|k| k.rsplit('/').next())
            && let Ok(id) = id.parse::<u64>()
        {
            received
                .entry(id)
                .or_insert(origin + Duration::from_micros(e.received_us));
        }
    }
    let polls = sims.ov.handle.alert_poll_instants();
    let (mut overhead, mut e2e) = (Vec::new(), Vec::new());
    for (id, visible) in &raised {
        let got = *received
            .get(id)
            .ok_or_else(|| format!("alert {id} never paged"))?;
        // The poll that fetched it: the last collection request that arrived before the page.
        let poll = polls
            .iter()
            .rev()
            .find(|p| **p <= got)
            .ok_or("no poll before a page")?;
        overhead.push(got.duration_since(*poll).as_secs_f64() * 1e3);
        e2e.push(got.duration_since(*visible).as_secs_f64() * 1e3);
    }
    let proc = b.proc_stat();
    b.stop();
    let mut f = vec![("alerts".into(), n as f64)];
    push_dist(&mut f, "overhead_ms", &mut overhead);
    push_dist(&mut f, "end_to_end_ms", &mut e2e);
    f.push(("bridge_cpu_s".into(), proc.cpu_s));
    Ok(f)
}

async fn storm(
    alerts: usize,
    interval_ms: u64,
    concurrency: usize,
    silences: usize,
    state: Option<&Path>,
) -> R<Figures> {
    let sims = Sims::start(Faults::default()).await?;
    let mut o = Opts::new(interval_ms);
    o.state = state.map(fresh_state_file).transpose()?;
    o.env.push((
        "BRIDGE_PAGERDUTY__CONCURRENCY".into(),
        concurrency.to_string(),
    ));
    const SILENCE_TOKEN: &str = "bench-silence-token-0123456789abcdef";
    if silences > 0 {
        o.env
            .push(("BRIDGE_SERVER__API_TOKENS".into(), SILENCE_TOKEN.into()));
        // A thousand POSTs in a row are not a client to throttle here.
        o.env.push((
            "BRIDGE_SERVER__RATE_LIMIT_PER_SECOND".into(),
            "100000".into(),
        ));
        o.env
            .push(("BRIDGE_SERVER__RATE_LIMIT_BURST".into(), "100000".into()));
    }
    let b = Bridge::spawn(&sims, &o).await?;
    // Maintenance windows of other servers: a resource-name glob each, half of them also a
    // severity, a quarter an alert-type glob; none holds a storm alert.
    for i in 0..silences {
        let mut matchers = serde_json::json!({"resource_name": format!("MAINT-{i:04}-*")});
        if i % 2 == 0 {
            matchers["severity"] = "Critical".into();
        }
        if i % 4 == 1 {
            matchers["alert_type"] = format!("Trap.maint{i}.*").into();
        }
        let r = b
            .client
            .post(format!("{}/api/v1/silences", b.url))
            .bearer_auth(SILENCE_TOKEN)
            .json(&serde_json::json!({
                "matchers": matchers,
                "duration": "2h",
                "created_by": "bench",
                "comment": format!("maintenance {i}"),
            }))
            .send()
            .await
            .map_err(|e| format!("POST /api/v1/silences: {e}"))?;
        if r.status() != 201 {
            return Err(format!("POST /api/v1/silences answered {}", r.status()));
        }
    }
    let sampler = b.sampler(Duration::from_millis(20));
    let cpu0 = b.proc_stat().cpu_s;
    let n = alerts as u64;
    let t0 = Instant::now();
    let crit = sims.ov.handle.generate(&GenerateSpec {
        count: alerts / 2,
        severity: Some("Critical".into()),
        state: Some("Active".into()),
        ..Default::default()
    });
    let warn = sims.ov.handle.generate(&GenerateSpec {
        count: alerts - alerts / 2,
        severity: Some("Warning".into()),
        state: Some("Active".into()),
        ..Default::default()
    });
    let visible = Instant::now();
    let limit = Duration::from_secs(60 + alerts as u64 / 200);
    wait_count(limit, "triggers accepted", n, || {
        sims.pd.counters().incidents_opened
    })
    .await?;
    let t1 = Instant::now();
    let trigger_cpu = b.proc_stat().cpu_s - cpu0;
    // Let the queue settle, then the RSS of the tracked open alerts.
    tokio::time::sleep(Duration::from_millis(interval_ms * 2)).await;
    let open_rss = b.proc_stat().rss_kb;
    let cpu1 = b.proc_stat().cpu_s;
    let t2 = Instant::now();
    for id in crit.chain(warn) {
        sims.ov
            .handle
            .clear(id)
            .map_err(|e| format!("clear {id}: {e}"))?;
    }
    let cleared = Instant::now();
    wait_count(limit, "resolves accepted", n, || {
        sims.pd.counters().incidents_resolved
    })
    .await?;
    let t3 = Instant::now();
    let resolve_cpu = b.proc_stat().cpu_s - cpu1;
    let peak = sampler.stop();
    let c = sims.pd.counters();
    if c.accepted != 2 * n {
        return Err(format!(
            "PagerDuty simulator accepted {} events for {n} alerts (want {})",
            c.accepted,
            2 * n
        ));
    }
    let proc = b.proc_stat();
    let state_bytes = o
        .state
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0.0, |m| m.len() as f64);
    b.stop();
    let trig = t1.duration_since(t0).as_secs_f64();
    let res = t3.duration_since(t2).as_secs_f64();
    Ok(vec![
        ("alerts".into(), n as f64),
        ("silences".into(), silences as f64),
        (
            "generate_s".into(),
            visible.duration_since(t0).as_secs_f64(),
        ),
        ("clear_s".into(), cleared.duration_since(t2).as_secs_f64()),
        ("trigger_phase_s".into(), trig),
        ("trigger_events_per_s".into(), n as f64 / trig),
        ("resolve_phase_s".into(), res),
        ("resolve_events_per_s".into(), n as f64 / res),
        ("events_per_s".into(), 2.0 * n as f64 / (trig + res)),
        (
            "events_per_s_excl_poll_wait".into(),
            2.0 * n as f64 / (trig + res - 2.0 * interval_ms as f64 / 1e3 / 2.0).max(1e-3),
        ),
        ("peak_rss_mb".into(), peak.max(proc.hwm_kb) as f64 / 1024.0),
        ("rss_open_alerts_mb".into(), open_rss as f64 / 1024.0),
        ("cpu_trigger_s".into(), trigger_cpu),
        ("cpu_resolve_s".into(), resolve_cpu),
        ("cpu_total_s".into(), proc.cpu_s),
        ("state_file_mb".into(), state_bytes / 1024.0 / 1024.0),
    ])
}

async fn rate_limited(
    warnings: usize,
    criticals: usize,
    seconds: u64,
    per_minute: u32,
    state: Option<&Path>,
) -> R<Figures> {
    let sims = Sims::start(Faults {
        rate_limit_per_minute: Some(per_minute),
        ..Default::default()
    })
    .await?;
    let mut o = Opts::new(1000);
    o.rate_limit = per_minute;
    o.state = state.map(fresh_state_file).transpose()?;
    // The dispatcher logs each send as it starts it ("sending event", debug): the order of
    // the sends is the bridge's decision, which arrival order at the simulator blurs.
    let log = std::env::temp_dir().join(format!("bench-rate-limited-{}.log", std::process::id()));
    o.log = Some(log.clone());
    o.env.push((
        "RUST_LOG".into(),
        "warn,bridge::pagerduty::dispatcher=debug".into(),
    ));
    let b = Bridge::spawn(&sims, &o).await?;
    // Warnings first in the appliance, criticals after: the bridge must still page criticals
    // first.
    sims.ov.handle.generate(&GenerateSpec {
        count: warnings,
        severity: Some("Warning".into()),
        state: Some("Active".into()),
        ..Default::default()
    });
    sims.ov.handle.generate(&GenerateSpec {
        count: criticals,
        severity: Some("Critical".into()),
        state: Some("Active".into()),
        ..Default::default()
    });
    let t0 = Instant::now();
    let mut rss: Vec<(f64, f64)> = Vec::new();
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss.push((
            t0.elapsed().as_secs_f64(),
            b.proc_stat().rss_kb as f64 / 1024.0,
        ));
    }
    let metrics = b.metrics().await?;
    let queued = metric(&metrics, "bridge_pagerduty_queue_depth").unwrap_or(f64::NAN);
    let proc = b.proc_stat();
    b.stop();
    let acc = sims.pd.accepted();
    let c = sims.pd.counters();
    // The limit over every sliding minute, as the simulator counts it.
    let times: Vec<u64> = acc.iter().map(|e| e.received_ms).collect();
    let mut max_window = 0usize;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] >= 60_000 {
            lo += 1;
        }
        max_window = max_window.max(hi - lo + 1);
    }
    let logged = std::fs::read_to_string(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let _ = std::fs::remove_file(&log);
    // Priorities in the order the bridge started the sends.
    let started: Vec<String> = logged
        .lines()
        .filter(|l| l.contains("\"sending event\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["priority"].as_str().map(str::to_owned))
        .collect();
    if started.len() < acc.len() {
        return Err(format!(
            "{} sends logged for {} accepted events: is the bridge's debug log for the dispatcher on?",
            started.len(),
            acc.len()
        ));
    }
    // The first window's worth goes out as the alerts arrive, before anything queues; after
    // that, no warning may be started while a critical waits.
    let burst = (per_minute as usize).min(started.len());
    let tail = &started[burst..];
    let crit_in_first_burst = started[..burst].iter().filter(|s| *s == "critical").count();
    let first_warning = tail.iter().position(|s| s == "warning");
    let crit_after_a_warning =
        first_warning.map_or(0, |w| tail[w..].iter().filter(|s| *s == "critical").count());
    let crit_before_first_warning = first_warning.unwrap_or(tail.len());
    let criticals_first = crit_after_a_warning == 0;
    // For comparison, arrival order at the simulator: a critical whose request was slow can
    // arrive after warnings started later.
    let sev: Vec<&str> = acc
        .iter()
        .map(|e| e.severity.as_deref().unwrap_or(""))
        .collect();
    let arrived_tail = &sev[burst.min(sev.len())..];
    let crit_arrived_after_a_warning =
        arrived_tail
            .iter()
            .position(|s| *s == "warning")
            .map_or(0, |w| {
                arrived_tail[w..]
                    .iter()
                    .filter(|s| **s == "critical")
                    .count()
            });
    let total = warnings + criticals;
    let lost = total as f64 - acc.len() as f64 - queued;
    // Memory flatness: RSS once the queue is full (after 5 s) against the end.
    let settled: Vec<f64> = rss
        .iter()
        .filter(|(t, _)| *t >= 5.0_f64.min(seconds as f64 / 2.0))
        .map(|(_, r)| *r)
        .collect();
    let (rss_first, rss_last) = (
        settled.first().copied().unwrap_or(0.0),
        settled.last().copied().unwrap_or(0.0),
    );
    let rss_max = settled.iter().copied().fold(0.0, f64::max);
    println!(
        "  rate-limited: {} accepted, {} answers 429, max {max_window} in a sliding minute, {crit_in_first_burst} criticals in the first window, {crit_before_first_warning} queued criticals started before the first queued warning, {crit_after_a_warning} started after it ({crit_arrived_after_a_warning} arrived after a queued warning), {queued} queued",
        acc.len(),
        c.rate_limited
    );
    if c.rate_limited > 0 || max_window > per_minute as usize {
        return Err(format!(
            "limit exceeded: {} answers 429, {max_window} events in one sliding minute (limit {per_minute})",
            c.rate_limited
        ));
    }
    if !criticals_first {
        return Err(format!(
            "criticals not first: {crit_after_a_warning} criticals started after a queued warning"
        ));
    }
    if lost.abs() > 0.5 {
        return Err(format!(
            "{total} alerts, {} accepted + {queued} queued: {lost} missing",
            acc.len()
        ));
    }
    Ok(vec![
        ("alerts".into(), total as f64),
        ("accepted".into(), acc.len() as f64),
        ("queued_at_end".into(), queued),
        ("max_events_in_sliding_minute".into(), max_window as f64),
        ("answers_429".into(), c.rate_limited as f64),
        (
            "criticals_in_first_window".into(),
            crit_in_first_burst as f64,
        ),
        (
            "queued_criticals_started_before_first_queued_warning".into(),
            crit_before_first_warning as f64,
        ),
        (
            "criticals_started_after_a_queued_warning".into(),
            crit_after_a_warning as f64,
        ),
        (
            "criticals_arrived_after_a_queued_warning".into(),
            crit_arrived_after_a_warning as f64,
        ),
        ("lost".into(), lost),
        ("rss_after_5s_mb".into(), rss_first),
        ("rss_end_mb".into(), rss_last),
        ("rss_max_mb".into(), rss_max),
        (
            "rss_growth_mb_per_min".into(),
            (rss_last - rss_first) / ((seconds as f64 - 5.0).max(1.0) / 60.0),
        ),
        ("cpu_total_s".into(), proc.cpu_s),
        (
            "drain_minutes_at_limit".into(),
            total as f64 / per_minute as f64,
        ),
    ])
}

async fn idle(stored: usize, cycles: u32, interval_ms: u64) -> R<Figures> {
    let sims = Sims::start(Faults::default()).await?;
    // Historical alerts: cleared, spread over the last 30 days; plus a few open ones that the
    // bridge tracks.
    sims.ov.handle.generate(&GenerateSpec {
        count: stored,
        state: Some("Cleared".into()),
        max_age_ms: 30 * 86_400_000,
        ..Default::default()
    });
    sims.ov.handle.generate(&GenerateSpec {
        count: 20,
        severity: Some("Critical".into()),
        state: Some("Active".into()),
        max_age_ms: 3_600_000,
    });
    let b = Bridge::spawn(&sims, &Opts::new(interval_ms)).await?;
    let startup = b.ready_after.as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_millis(interval_ms * 2)).await;
    sims.ov.handle.reset_counters();
    let cpu0 = b.proc_stat().cpu_s;
    let polls0 = sims.ov.handle.alert_poll_instants().len();
    tokio::time::sleep(Duration::from_millis(interval_ms * u64::from(cycles))).await;
    let c = sims.ov.handle.counters();
    let cpu = b.proc_stat().cpu_s - cpu0;
    let polls = (sims.ov.handle.alert_poll_instants().len() - polls0).max(1) as f64;
    let proc = b.proc_stat();
    b.stop();
    let total_requests: u64 = c.requests.values().sum();
    let response_bytes: u64 = c.response_bytes.values().sum();
    Ok(vec![
        ("stored_alerts".into(), stored as f64),
        ("startup_to_ready_ms".into(), startup),
        ("cycles".into(), polls),
        ("requests_per_cycle".into(), total_requests as f64 / polls),
        ("members_per_cycle".into(), c.members_sent as f64 / polls),
        (
            "member_bytes_per_cycle".into(),
            c.member_bytes as f64 / polls,
        ),
        (
            "response_bytes_per_cycle".into(),
            response_bytes as f64 / polls,
        ),
        ("cpu_ms_per_cycle".into(), cpu * 1e3 / polls),
        ("rss_mb".into(), proc.rss_kb as f64 / 1024.0),
    ])
}

async fn footprint(idle_seconds: u64) -> R<Figures> {
    let sims = Sims::start(Faults::default()).await?;
    // Default interval (30 s): the idle cost a deployment sees.
    let b = Bridge::spawn(&sims, &Opts::new(30_000)).await?;
    let startup = b.ready_after.as_secs_f64() * 1e3;
    let rss_ready = b.proc_stat().rss_kb;
    let cpu0 = b.proc_stat().cpu_s;
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let p = b.proc_stat();
    b.stop();
    Ok(vec![
        ("startup_to_ready_ms".into(), startup),
        ("rss_at_ready_mb".into(), rss_ready as f64 / 1024.0),
        ("rss_idle_mb".into(), p.rss_kb as f64 / 1024.0),
        ("peak_rss_mb".into(), p.hwm_kb as f64 / 1024.0),
        (
            "idle_cpu_percent".into(),
            (p.cpu_s - cpu0) / idle_seconds as f64 * 100.0,
        ),
    ])
}

/// 8: the estate: `appliances` OneView appliances with `open` open alerts each in one bridge.
/// Startup to ready and to every alert paged, then the idle cost at `interval_ms`: RSS, CPU,
/// and OneView requests per appliance per cycle.
async fn estate(appliances: usize, open: usize, idle_seconds: u64, interval_ms: u64) -> R<Figures> {
    let sims = Sims::start(Faults::default()).await?;
    let mut extra = Vec::with_capacity(appliances.saturating_sub(1));
    for _ in 1..appliances {
        extra.push(start_ov().await?);
    }
    let all: Vec<&ovsim::RunningSim> = std::iter::once(&sims.ov).chain(&extra).collect();
    for ov in &all {
        for (sev, n) in [("Critical", open / 2), ("Warning", open - open / 2)] {
            let _ = ov.handle.generate(&GenerateSpec {
                count: n,
                severity: Some(sev.into()),
                state: Some("Active".into()),
                max_age_ms: 86_400_000,
            });
        }
    }
    let mut o = Opts::new(interval_ms);
    o.appliances = all
        .iter()
        .enumerate()
        .map(|(i, ov)| (format!("dc-{i:02}"), ov.url()))
        .collect();
    let total = (appliances * open) as u64;
    let limit = Duration::from_secs(120 + total / 500);
    let b = Bridge::spawn(&sims, &o).await?;
    let ready = b.ready_after;
    let t0 = Instant::now();
    wait_count(limit, "open alerts paged", total, || {
        sims.pd.counters().incidents_opened
    })
    .await?;
    let paged = ready + t0.elapsed();
    let synced = b.synced_appliances().await?;
    if synced != appliances {
        return Err(format!(
            "{synced} of {appliances} appliances synced on /ready"
        ));
    }
    // Two cycles to settle (the first one after the sync), then the idle window.
    tokio::time::sleep(Duration::from_millis(interval_ms * 2)).await;
    for ov in &all {
        ov.handle.reset_counters();
    }
    let polls0: usize = all
        .iter()
        .map(|ov| ov.handle.alert_poll_instants().len())
        .sum();
    let s0 = b.proc_stat();
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let s1 = b.proc_stat();
    let polls: usize = all
        .iter()
        .map(|ov| ov.handle.alert_poll_instants().len())
        .sum();
    let cycles = (polls.saturating_sub(polls0)).max(1) as f64;
    let requests: u64 = all
        .iter()
        .map(|ov| ov.handle.counters().requests.values().sum::<u64>())
        .sum();
    let accepted = sims.pd.counters().accepted;
    b.stop();
    if accepted != total {
        return Err(format!(
            "PagerDuty accepted {accepted} events for {total} open alerts: an idle cycle sent events"
        ));
    }
    Ok(vec![
        ("appliances".into(), appliances as f64),
        ("open_alerts".into(), total as f64),
        ("startup_to_ready_ms".into(), ready.as_secs_f64() * 1e3),
        ("startup_to_all_paged_s".into(), paged.as_secs_f64()),
        ("idle_rss_mb".into(), s1.rss_kb as f64 / 1024.0),
        ("peak_rss_mb".into(), s1.hwm_kb as f64 / 1024.0),
        (
            "idle_cpu_percent".into(),
            (s1.cpu_s - s0.cpu_s) / idle_seconds as f64 * 100.0,
        ),
        ("appliance_cycles".into(), cycles),
        (
            "requests_per_appliance_cycle".into(),
            requests as f64 / cycles,
        ),
    ])
}

/// 9: isolation: alert-to-202 of single alerts on appliance B (from the poll of B that saw it
/// to PagerDuty's 202, as `latency` measures), first while the estate is idle, then while
/// appliance A delivers a storm of `storm` alerts; and how much of A's storm PagerDuty had
/// accepted when each of B's alerts arrived. B must not wait for A.
/// Raises `storm` Critical alerts on `sims.ov` at once and, until PagerDuty has opened
/// `opened_before` + the storm + one incident per probe, a probe (`raise`: one alert on another
/// appliance) every 0-100 ms, at most `max_probes`. Returns when the storm started and the
/// probes with the moment each was raised.
async fn storm_with_probes(
    sims: &Sims,
    opened_before: u64,
    storm: usize,
    max_probes: usize,
    mut raise: impl FnMut() -> R<(u64, Instant)>,
) -> R<(Instant, Vec<(u64, Instant)>)> {
    let storm_start = Instant::now();
    let _ = sims.ov.handle.generate(&GenerateSpec {
        count: storm,
        severity: Some("Critical".into()),
        state: Some("Active".into()),
        ..Default::default()
    });
    let limit = Duration::from_secs(60 + storm as u64 / 200);
    let mut probes = Vec::new();
    loop {
        let opened = sims.pd.counters().incidents_opened;
        if opened >= opened_before + storm as u64 + probes.len() as u64 {
            return Ok((storm_start, probes));
        }
        if storm_start.elapsed() > limit {
            return Err(format!("{opened} triggers accepted in {limit:?}"));
        }
        if probes.len() < max_probes {
            probes.push(raise()?);
        }
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..100))).await;
    }
}

async fn isolation(storm: usize, interval_ms: u64, probes: usize) -> R<Figures> {
    let sims = Sims::start(Faults::default()).await?;
    let b_ov = start_ov().await?;
    let mut o = Opts::new(interval_ms);
    o.appliances = vec![("dc-a".into(), sims.ov.url()), ("dc-b".into(), b_ov.url())];
    let b = Bridge::spawn(&sims, &o).await?;
    tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    let raise_b = || -> R<(u64, Instant)> {
        let uri = b_ov.handle.add_alert(AlertSpec {
            severity: Some("Critical".into()),
            ..Default::default()
        });
        Ok((id_of(&uri)?, Instant::now()))
    };
    // Idle: one alert on B at a random phase of every half interval.
    let mut idle = Vec::with_capacity(probes);
    for _ in 0..probes {
        let gap = Duration::from_millis(interval_ms / 2);
        tokio::time::sleep(gap.mul_f64(rand::rng().random_range(0.0..1.0))).await;
        idle.push(raise_b()?);
    }
    let want = idle.len() as u64;
    wait_count(
        Duration::from_secs(30),
        "idle alerts of B paged",
        want,
        || sims.pd.counters().incidents_opened,
    )
    .await?;
    // Storm on A; meanwhile an alert on B every 0-100 ms until PagerDuty holds everything.
    let (storm_start, during) = storm_with_probes(&sims, want, storm, probes * 10, raise_b).await?;
    let origin = sims.pd.started();
    // When PagerDuty accepted each B alert, and how much of A's storm it held by then.
    let mut got_b: BTreeMap<u64, (Instant, usize)> = BTreeMap::new();
    let (mut a_done, mut a_last) = (0usize, storm_start);
    for e in sims.pd.accepted() {
        let Some(k) = e.dedup_key.as_deref() else {
            continue;
        };
        let at = origin + Duration::from_micros(e.received_us);
        if k.starts_with("oneview:dc-a:") {
            a_done += 1;
            a_last = a_last.max(at);
        } else if let Some(id) = k.strip_prefix("oneview:dc-b:/rest/alerts/")
            && let Ok(id) = id.parse::<u64>()
        {
            got_b.entry(id).or_insert((at, a_done));
        }
    }
    let polls = b_ov.handle.alert_poll_instants();
    let measure = |alerts: &[(u64, Instant)]| -> R<(Vec<f64>, Vec<f64>)> {
        let (mut ms, mut share) = (Vec::new(), Vec::new());
        for (id, _) in alerts {
            let (at, a) = *got_b
                .get(id)
                .ok_or_else(|| format!("alert {id} of B never paged"))?;
            let poll = polls
                .iter()
                .rev()
                .find(|p| **p <= at)
                .ok_or("no poll of B before its page")?;
            ms.push(at.duration_since(*poll).as_secs_f64() * 1e3);
            share.push(a as f64 / storm.max(1) as f64 * 100.0);
        }
        Ok((ms, share))
    };
    // "During the storm": B alerts PagerDuty accepted before the last of A's storm.
    let in_storm: Vec<(u64, Instant)> = during
        .iter()
        .copied()
        .filter(|(id, _)| got_b.get(id).is_some_and(|(at, _)| *at < a_last))
        .collect();
    let (mut idle_ms, _) = measure(&idle)?;
    let (mut storm_ms, mut share) = measure(&in_storm)?;
    b.stop();
    let mut f = vec![
        ("storm_alerts".into(), storm as f64),
        (
            "storm_delivery_s".into(),
            a_last.duration_since(storm_start).as_secs_f64(),
        ),
        ("b_alerts_idle".into(), idle_ms.len() as f64),
        ("b_alerts_during_storm".into(), storm_ms.len() as f64),
    ];
    push_dist(&mut f, "b_overhead_idle_ms", &mut idle_ms);
    push_dist(&mut f, "b_overhead_storm_ms", &mut storm_ms);
    push_dist(&mut f, "a_storm_percent_paged_before_b", &mut share);
    Ok(f)
}

/// 10: the message bus. A RabbitMQ of its own (`bridge::sim::rabbitmq`, Debian's package), the
/// OneView simulator B publishing every change to it and handing out the keypair and CA over
/// REST, appliance A polled at 1 s. Change-to-202 is from the harness's change on B (the same
/// clock as PagerDuty's simulator) to the 202: it includes everything, the poll wait too when
/// B is polled.
async fn scmb(
    probes: usize,
    storm: usize,
    messages: usize,
    idle_seconds: u64,
    compare_polling: &str,
) -> R<Figures> {
    let broker = tokio::task::spawn_blocking(bridge::sim::rabbitmq::Broker::start)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut f: Figures = vec![("broker_start_s".into(), broker.started_in.as_secs_f64())];
    let sims = Sims::start(Faults::default()).await?;
    let lo = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let b_ov = ovsim::start(
        SimConfig {
            scmb_ca: Some(broker.pki.appliance_ca()),
            ..SimConfig::default()
        },
        lo,
    )
    .await
    .map_err(|e| format!("OneView simulator B: {e}"))?;
    let publisher = ovsim::start_publisher(&b_ov.handle, &broker.url())?;
    let raise_b = || -> R<(u64, Instant)> {
        let uri = b_ov.handle.add_alert(AlertSpec {
            severity: Some("Critical".into()),
            ..Default::default()
        });
        Ok((id_of(&uri)?, Instant::now()))
    };
    // When PagerDuty first accepted each of B's alerts.
    let b_received = || -> BTreeMap<u64, Instant> {
        let origin = sims.pd.started();
        let mut got = BTreeMap::new();
        for e in sims.pd.accepted() {
            if let Some(id) = e
                .dedup_key
                .as_deref()
                .and_then(|k| k.strip_prefix("oneview:dc-b:/rest/alerts/"))
                .and_then(|id| id.parse::<u64>().ok())
            {
                got.entry(id)
                    .or_insert(origin + Duration::from_micros(e.received_us));
            }
        }
        got
    };
    let latencies = |raised: &[(u64, Instant)]| -> R<Vec<f64>> {
        let got = b_received();
        raised
            .iter()
            .map(|(id, at)| {
                got.get(id)
                    .map(|r| r.duration_since(*at).as_secs_f64() * 1e3)
                    .ok_or_else(|| format!("alert {id} of B never paged"))
            })
            .collect()
    };
    let appliances = vec![("dc-a".into(), sims.ov.url()), ("dc-b".into(), b_ov.url())];

    // B polled, for comparison: probes at random phases over two intervals.
    let mut first_polled = true;
    for interval in compare_polling
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let interval: u64 = interval
            .parse()
            .map_err(|e| format!("--compare-polling {interval}: {e}"))?;
        let mut o = Opts::new(interval);
        o.appliances = appliances.clone();
        let b = Bridge::spawn(&sims, &o).await?;
        let opened0 = sims.pd.counters().incidents_opened;
        let window = Duration::from_millis(interval * 2);
        let start = Instant::now();
        let mut at: Vec<Duration> = (0..probes)
            .map(|_| window.mul_f64(rand::rng().random_range(0.0..1.0)))
            .collect();
        at.sort();
        let mut raised = Vec::with_capacity(probes);
        for d in at {
            tokio::time::sleep_until((start + d).into()).await;
            raised.push(raise_b()?);
        }
        wait_count(
            Duration::from_millis(interval * 2) + Duration::from_secs(30),
            "polled alerts of B paged",
            opened0 + probes as u64,
            || sims.pd.counters().incidents_opened,
        )
        .await?;
        let mut ms = latencies(&raised)?;
        push_dist(
            &mut f,
            &format!("poll_{interval}ms_change_to_202_ms"),
            &mut ms,
        );
        if first_polled {
            // The same idle window as the bus's below, for the difference the bus makes.
            first_polled = false;
            let s0 = b.proc_stat();
            tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
            let s1 = b.proc_stat();
            f.push((
                format!("poll_{interval}ms_idle_bridge_cpu_percent"),
                (s1.cpu_s - s0.cpu_s) / idle_seconds as f64 * 100.0,
            ));
            f.push((
                format!("poll_{interval}ms_idle_bridge_rss_mb"),
                s1.rss_kb as f64 / 1024.0,
            ));
        }
        b.stop();
    }

    // B on the bus.
    let mut o = Opts::new(1000);
    o.appliances = appliances.clone();
    o.scmb = vec![("dc-b".into(), broker.port)];
    let t = Instant::now();
    let b = Bridge::spawn(&sims, &o).await?;
    let connected = |m: &str| metric_where(m, "bridge_scmb_connected", &["dc-b"]) == 1.0;
    let mut m = b.metrics().await?;
    while !connected(&m) {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("the bus of B did not connect within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        m = b.metrics().await?;
    }
    f.push((
        "bus_start_to_connected_ms".into(),
        t.elapsed().as_secs_f64() * 1e3,
    ));
    // The full sync that follows the connection, so the probes are not in it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let polls_b0 = b_ov.handle.alert_poll_instants().len();
    let opened0 = sims.pd.counters().incidents_opened;
    let mut idle = Vec::with_capacity(probes);
    for _ in 0..probes {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..500))).await;
        idle.push(raise_b()?);
    }
    wait_count(
        Duration::from_secs(30),
        "alerts of B paged over the bus",
        opened0 + probes as u64,
        || sims.pd.counters().incidents_opened,
    )
    .await?;
    let polls_b = b_ov.handle.alert_poll_instants().len() - polls_b0;
    let mut idle_ms = latencies(&idle)?;
    push_dist(&mut f, "bus_change_to_202_idle_ms", &mut idle_ms);
    f.push(("bus_polls_of_b_while_probing".into(), polls_b as f64));

    // The idle bus: the bridge's CPU and RSS (A polled at 1 s meanwhile, as in the polled
    // runs' figures in BENCHMARKS.md), and the broker's CPU.
    let beam = broker.beam_pid();
    let (s0, k0) = (b.proc_stat(), beam.map(proc_stat));
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let (s1, k1) = (b.proc_stat(), beam.map(proc_stat));
    f.push((
        "bus_idle_bridge_cpu_percent".into(),
        (s1.cpu_s - s0.cpu_s) / idle_seconds as f64 * 100.0,
    ));
    f.push(("bus_idle_bridge_rss_mb".into(), s1.rss_kb as f64 / 1024.0));
    if let (Some(k0), Some(k1)) = (k0, k1) {
        f.push((
            "bus_idle_broker_cpu_percent".into(),
            (k1.cpu_s - k0.cpu_s) / idle_seconds as f64 * 100.0,
        ));
        f.push(("broker_rss_mb".into(), k1.rss_kb as f64 / 1024.0));
    }

    // A storms (polled); B's changes keep coming over the bus.
    let want = sims.pd.counters().incidents_opened;
    let (storm_start, during) = storm_with_probes(&sims, want, storm, probes * 10, raise_b).await?;
    let origin = sims.pd.started();
    let a_last = sims
        .pd
        .accepted()
        .iter()
        .filter(|e| {
            e.dedup_key
                .as_deref()
                .is_some_and(|k| k.starts_with("oneview:dc-a:"))
        })
        .map(|e| origin + Duration::from_micros(e.received_us))
        .max()
        .unwrap_or(storm_start);
    let got = b_received();
    let in_storm: Vec<(u64, Instant)> = during
        .iter()
        .copied()
        .filter(|(id, _)| got.get(id).is_some_and(|at| *at < a_last))
        .collect();
    let mut storm_ms = latencies(&in_storm)?;
    f.push((
        "storm_delivery_s".into(),
        a_last.duration_since(storm_start).as_secs_f64(),
    ));
    f.push(("bus_alerts_during_storm".into(), storm_ms.len() as f64));
    push_dist(&mut f, "bus_change_to_202_storm_ms", &mut storm_ms);

    // Throughput of one connection: newer versions of B's open alerts (nothing that pages:
    // same severity and description), counted by the bridge as delivered to the change path.
    // They are published while the bridge is stopped (SIGSTOP; well inside the 30 s
    // heartbeat), so they wait in its queue, and the rate is how fast it drains them after
    // SIGCONT, not how fast the harness publishes.
    let open: Vec<serde_json::Value> = idle
        .iter()
        .chain(&during)
        .filter_map(|(id, _)| b_ov.handle.alert(*id))
        .collect();
    if open.is_empty() {
        return Err("no open alert on B for the throughput".into());
    }
    let base = b_ov.handle.now_ms() + 1000;
    let bodies: Vec<ovsim::scmb::Event> = (0..messages)
        .map(|i| {
            let mut a = open[i % open.len()].clone();
            let stamp = bridge::oneview::collection::format_timestamp(base + i as i64);
            a["modified"] = serde_json::Value::String(stamp.clone());
            a["eTag"] = serde_json::Value::String(stamp);
            ovsim::scmb::message(&a, "Updated", base + i as i64)
        })
        .collect();
    let delivered = |m: &str| {
        metric_where(
            m,
            "bridge_scmb_messages_total",
            &["dc-b", "outcome=\"delivered\""],
        )
    };
    let d0 = delivered(&b.metrics().await?);
    let events0 = sims.pd.counters().accepted;
    b.signal("STOP");
    let t = Instant::now();
    let published = publish_all(&broker, bodies).await;
    let published_s = t.elapsed().as_secs_f64();
    b.signal("CONT");
    published?;
    let t = Instant::now();
    let limit = Duration::from_secs(60 + messages as u64 / 1000);
    loop {
        let d = delivered(&b.metrics().await?) - d0;
        if d >= messages as f64 {
            break;
        }
        if t.elapsed() > limit {
            return Err(format!("{d} of {messages} messages taken in {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t.elapsed().as_secs_f64();
    let paged = sims.pd.counters().accepted - events0;
    b.stop();
    publisher.stop().await;
    b_ov.stop().await;
    tokio::task::spawn_blocking(move || drop(broker))
        .await
        .map_err(|e| e.to_string())?;
    if paged != 0 {
        return Err(format!(
            "{paged} events sent for versions that change nothing on PagerDuty"
        ));
    }
    f.push(("messages".into(), messages as f64));
    f.push((
        "messages_published_per_s".into(),
        messages as f64 / published_s,
    ));
    f.push(("messages_drained_per_s".into(), messages as f64 / took));
    Ok(f)
}

/// Publishes `events` to the `scmb` exchange of `broker` as the client certificate of its
/// PKI, all confirms in flight at once (the simulator's publisher waits for each).
async fn publish_all(
    broker: &bridge::sim::rabbitmq::Broker,
    events: Vec<ovsim::scmb::Event>,
) -> R<()> {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
    let tls = OwnedTLSConfig {
        identity: Some(OwnedIdentity::PKCS8 {
            pem: broker.pki.client.cert_pem.clone().into_bytes(),
            key: broker.pki.client.key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(broker.pki.ca.cert_pem.clone()),
    };
    let uri = format!(
        "amqps://127.0.0.1:{}/%2f?auth_mechanism=external&heartbeat=30",
        broker.port
    );
    let e = |e: lapin::Error| format!("harness publisher: {e}");
    let runtime = lapin::runtime::default_runtime().map_err(e)?;
    let conn = lapin::Connection::connect_with_config(
        &uri,
        lapin::ConnectionProperties::default(),
        tls,
        runtime,
    )
    .await
    .map_err(e)?;
    let ch = conn.create_channel().await.map_err(e)?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(e)?;
    let mut confirms = Vec::with_capacity(events.len());
    for ev in &events {
        confirms.push(
            ch.basic_publish(
                "scmb".into(),
                ev.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &ev.body,
                lapin::BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .map_err(e)?,
        );
    }
    for c in confirms {
        if !c.await.map_err(e)?.is_ack() {
            return Err("the broker did not confirm a message".into());
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

async fn start_ov() -> R<ovsim::RunningSim> {
    let lo = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    ovsim::start(SimConfig::default(), lo)
        .await
        .map_err(|e| format!("OneView simulator: {e}"))
}

/// `--paths` entries that are POSTed with bodies the harness builds (`bench/wrk/post.lua`);
/// every other path is a plain GET.
const POST_ALERTS: &str = "/api/v1/alerts";
const WEBHOOK: &str = "/api/v1/pagerduty/webhook";
/// Distinct alert URIs that the `POST /api/v1/alerts` requests cycle through: each is paged
/// once, every later push of the same unchanged open alert ends in the delivery queue's dedup
/// cache (what a client re-pushing its alerts does).
const PUSH_URIS: u64 = 16;
/// Open alerts in the appliance that the webhooks acknowledge (paged before the run, so their
/// incident keys are the bridge's own), and the distinct webhook events (each its own
/// `event.id`, body and signature) spread over them.
const WEBHOOK_ALERTS: usize = 64;
const WEBHOOK_EVENTS: usize = 1024;

/// Alert texts of a real Synergy appliance (`tests/fixtures/oneview/real_appliance_alerts_syslog.txt`):
/// physical resource type, resource name, health category, description.
const REAL_ALERTS: &[(&str, &str, &str, &str)] = &[
    (
        "server-hardware",
        "SGH817YECA, bay 5",
        "ServerBlade",
        "The iLO for the server hardware in bay 5 is reporting that the server hardware has a warning internal health status.",
    ),
    (
        "server-hardware",
        "SGH817YECA, bay 5",
        "BIOS",
        "The BIOS/Hardware is in the error state.",
    ),
    (
        "logical-enclosures",
        "LE_01",
        "Operational",
        "The actual IPv4 address (172.168.101.239) does not match the expected configuration (172.168.100.212).",
    ),
    (
        "sas-interconnects",
        "SGH817YECA, interconnect 4",
        "sas-interconnects",
        "Unable to fully discover and configure the interconnect. Unable to setup management account on SAS interconnect.",
    ),
];

async fn web(
    seconds: u64,
    connections: u32,
    paths: &str,
    oneview_latency_ms: u64,
    foreign: bool,
) -> R<Figures> {
    if !which("wrk") {
        return Err("wrk not found: apt-get install wrk".into());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/wrk/post.lua");
    let sims = Sims::start(Faults::default()).await?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = |name: &str, content: &str| -> R<PathBuf> {
        let p = dir.path().join(name);
        std::fs::write(&p, content).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    };
    let token = random_hex(32);
    let secret = random_hex(32);
    let tokens_file = file("api-tokens", &format!("# benchmark\n{token}\n"))?;
    let secrets_file = file("webhook-secrets", &format!("# benchmark\n{secret}\n"))?;
    let acked = sims.ov.handle.generate(&GenerateSpec {
        count: WEBHOOK_ALERTS,
        severity: Some("Critical".into()),
        state: Some("Active".into()),
        ..Default::default()
    });
    let mut o = Opts::new(30_000);
    o.env = vec![
        (
            "BRIDGE_SERVER__API_TOKENS_FILE".into(),
            tokens_file.display().to_string(),
        ),
        (
            "BRIDGE_PAGERDUTY__WEBHOOK_SECRETS_FILE".into(),
            secrets_file.display().to_string(),
        ),
        // Every wrk connection comes from 127.0.0.1: the per-client limit on /api/* (20/s,
        // burst 40 by default) would answer nearly everything 429. The limiter still runs.
        (
            "BRIDGE_SERVER__RATE_LIMIT_PER_SECOND".into(),
            "1000000".into(),
        ),
        ("BRIDGE_SERVER__RATE_LIMIT_BURST".into(), "1000000".into()),
        // wrk sends deliveries faster than write-backs to OneView drain (≈ 13,000/s against
        // 3,000–5,500/s); past `web.writeback_queue` (10,000) the bridge answers 503 +
        // Retry-After, which is right for PagerDuty (it redelivers) but would end the
        // measurement of the receiving path after ≈ 1 s. The queue is lifted for the run.
        ("BRIDGE_WEB__WRITEBACK_QUEUE".into(), "1000000".into()),
    ];
    let log = dir.path().join("bridge.log");
    o.log = Some(log.clone());
    let b = Bridge::spawn(&sims, &o).await?;
    wait_count(
        Duration::from_secs(30),
        "alerts the webhooks acknowledge paged",
        WEBHOOK_ALERTS as u64,
        || sims.pd.counters().incidents_opened,
    )
    .await?;
    sims.ov
        .handle
        .update_faults(|f| f.latency_ms = oneview_latency_ms);
    let alerts_file = file("alerts.tsv", &push_requests(&token)?)?;
    let webhooks_file = file("webhooks.tsv", &webhook_requests(&secret, acked, foreign)?)?;
    let run_id = random_hex(4);
    let mut f = Vec::new();
    for path in paths.split(',').filter(|p| !p.is_empty()) {
        let url = format!("{}{path}", b.url);
        let (name, post) = match path {
            POST_ALERTS => ("post_alerts".to_owned(), Some((&alerts_file, false))),
            WEBHOOK => ("webhook".to_owned(), Some((&webhooks_file, true))),
            p => (p.trim_start_matches('/').replace('/', "_"), None),
        };
        let m0 = b.metrics().await?;
        let pd0 = sims.pd.counters();
        let hwm_reset = reset_hwm(b.pid);
        let sampler = b.sampler(Duration::from_millis(20));
        let cpu0 = b.proc_stat().cpu_s;
        let mut args: Vec<String> = vec![
            "-t2".into(),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
            "--latency".into(),
        ];
        if let Some((requests, unique)) = post {
            args.extend(["-s".into(), script.display().to_string(), url.clone()]);
            args.extend(["--".into(), requests.display().to_string()]);
            if unique {
                args.extend(["X-Webhook-Id".into(), run_id.clone()]);
            }
        } else {
            args.push(url.clone());
        }
        let out = tokio::task::spawn_blocking(move || Command::new("wrk").args(&args).output())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("wrk: {e}"))?;
        let cpu = b.proc_stat().cpu_s - cpu0;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            return Err(format!(
                "{path}: wrk failed ({}): {}{text}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let rps = text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .ok_or_else(|| format!("wrk output without Requests/sec:\n{text}"))?;
        let p99 = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("99%"))
            .map(|v| parse_wrk_time(v.trim()))
            .unwrap_or(f64::NAN);
        let non2xx = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if non2xx > 0.0 {
            return Err(format!("{path}: {non2xx} non-2xx answers"));
        }
        // "Socket errors: connect 0, read 0, write 0, timeout 3": a request without an answer.
        if let Some(l) = text
            .lines()
            .find(|l| l.trim().starts_with("Socket errors:"))
        {
            return Err(format!("{path}: wrk {}", l.trim()));
        }
        let requests = if post.is_some() {
            // post.lua counts every answer by status: all must be 202 Accepted (a 200 from the
            // webhook would be a "duplicate": the harness's X-Webhook-Ids collided).
            let statuses: BTreeMap<u16, f64> = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.strip_prefix("status ")?.split_whitespace();
                    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
                })
                .collect();
            let accepted = statuses.get(&202).copied().unwrap_or(0.0);
            if accepted == 0.0 || statuses.len() != 1 {
                return Err(format!(
                    "{path}: answers by status {statuses:?}; want 202 only\n{text}"
                ));
            }
            accepted
        } else {
            0.0
        };
        f.push((format!("{name}_requests_per_s"), rps));
        f.push((format!("{name}_p99_ms"), p99));
        f.push((format!("{name}_bridge_cpu_s"), cpu));
        if path == POST_ALERTS {
            // PagerDuty hears each distinct alert once (the first push; later pushes of the
            // unchanged alert end in the dedup cache).
            let want = PUSH_URIS.min(requests as u64);
            let got = || sims.pd.counters().accepted - pd0.accepted;
            let _ = wait_for(Duration::from_secs(10), || got() >= want).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let events = got();
            if events < want {
                return Err(format!(
                    "{path}: PagerDuty accepted {events} events for {want} distinct pushed alerts"
                ));
            }
            f.push(("post_alerts_accepted".into(), requests));
            f.push(("post_alerts_pagerduty_events".into(), events as f64));
            f.push(("post_alerts_deduplicated".into(), requests - events as f64));
        }
        if path == WEBHOOK {
            // The 202 goes out before the write-back to OneView, which runs in a task of its
            // own per delivery: wait until every verified delivery has an outcome.
            const V: &str = "bridge_web_webhook_verifications";
            let done0 = metric_where(&m0, "bridge_web_writebacks", &[]);
            let mut m = b.metrics().await?;
            let verified =
                metric_where(&m, V, &["\"valid\""]) - metric_where(&m0, V, &["\"valid\""]);
            let refused = metric_where(&m, V, &[]) - metric_where(&m0, V, &[]) - verified;
            if refused > 0.0 {
                return Err(format!("{path}: {refused} deliveries failed verification"));
            }
            let t = Instant::now();
            let cpu1 = b.proc_stat().cpu_s;
            let limit = Duration::from_secs(120);
            // Deliveries wrk gave up on at the end may still be verified after the first read.
            let (verified, done) = loop {
                let v = metric_where(&m, V, &["\"valid\""]) - metric_where(&m0, V, &["\"valid\""]);
                let d = metric_where(&m, "bridge_web_writebacks", &[]) - done0;
                if d >= v || t.elapsed() > limit {
                    break (v, d);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                m = b.metrics().await?;
            };
            let drain = t.elapsed().as_secs_f64();
            let drain_cpu = b.proc_stat().cpu_s - cpu1;
            f.push(("webhook_accepted".into(), requests));
            f.push(("webhook_verified".into(), verified));
            for o in [
                "written",
                "duplicate",
                "skipped",
                "ignored",
                "failed",
                "unavailable",
            ] {
                let q = format!("\"{o}\"");
                let n = metric_where(&m, "bridge_web_writebacks", &[&q])
                    - metric_where(&m0, "bridge_web_writebacks", &[&q]);
                f.push((format!("webhook_writeback_{o}"), n));
            }
            f.push(("webhook_writeback_pending".into(), verified - done));
            f.push(("webhook_writeback_drain_s".into(), drain));
            f.push(("webhook_writeback_drain_cpu_s".into(), drain_cpu));
            println!(
                "  webhook: {requests} answered 202, {verified} verified, {done} write-backs finished {drain:.1} s after wrk ended, {} pending",
                verified - done
            );
        }
        let (peak, fds) = sampler.stop_with_fds();
        let hwm = if hwm_reset { b.proc_stat().hwm_kb } else { 0 };
        f.push((format!("{name}_peak_rss_mb"), peak.max(hwm) as f64 / 1024.0));
        f.push((format!("{name}_peak_open_fds"), fds as f64));
    }
    let p = b.proc_stat();
    b.stop();
    f.push(("peak_rss_mb".into(), p.hwm_kb as f64 / 1024.0));
    // Warnings and errors the bridge logged (write-backs that failed, say), without the
    // configuration warnings every run has (plain http to the simulators).
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = logged
        .lines()
        .filter(|l| !l.contains("\"configuration warning\""))
        .collect();
    let shown: Vec<&&str> = if lines.len() <= 5 {
        lines.iter().collect()
    } else {
        lines
            .iter()
            .take(3)
            .chain(lines.iter().skip(lines.len() - 2))
            .collect()
    };
    for l in shown {
        println!("  bridge log: {}", l.chars().take(300).collect::<String>());
    }
    f.push(("bridge_log_lines".into(), lines.len() as f64));
    Ok(f)
}

/// `POST /api/v1/alerts` requests (post.lua's format): `PUSH_URIS` open alerts in the shape of
/// a OneView alert member (the fixture's SCMB `resource`), with real alert texts.
fn push_requests(token: &str) -> R<String> {
    let msg: serde_json::Value = serde_json::from_str(include_str!(
        "../tests/fixtures/oneview/scmb_alert_message.json"
    ))
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    for k in 0..PUSH_URIS {
        let (kind, resource, category, text) = REAL_ALERTS[k as usize % REAL_ALERTS.len()];
        let mut a = msg["resource"].clone();
        let id = 900_000 + k;
        let stamp = format!("2026-01-15T10:{:02}:00.000Z", k % 60);
        a["uri"] = format!("/rest/alerts/{id}").into();
        a["severity"] = if k % 4 == 3 { "Warning" } else { "Critical" }.into();
        a["alertState"] = "Active".into();
        a["description"] = text.into();
        a["correctiveAction"] =
            "Check the iLO System Information - Health Summary and Integrated Management Log for more information.".into();
        a["healthCategory"] = category.into();
        a["physicalResourceType"] = kind.into();
        a["associatedResource"]["resourceCategory"] = kind.into();
        a["associatedResource"]["resourceName"] = resource.into();
        a["alertTypeID"] = format!("Trap.{category}").into();
        a["urgency"] = "High".into();
        a["lifeCycle"] = false.into();
        a["clearedByUser"] = serde_json::Value::Null;
        a["clearedTime"] = serde_json::Value::Null;
        a["changeLog"] = serde_json::json!([]);
        a["created"] = stamp.clone().into();
        a["modified"] = stamp.clone().into();
        a["eTag"] = stamp.into();
        out.push_str(&format!(
            "Authorization: Bearer {token}\tContent-Type: application/json\t{a}\n"
        ));
    }
    Ok(out)
}

/// Signed PagerDuty Webhooks v3 deliveries (post.lua's format): `incident.acknowledged` of the
/// incidents of `alerts`, in the shape of PagerDuty's sample envelope and incident, each with its
/// own `event.id`. The signature is PagerDuty's: `v1=` hex HMAC-SHA256 of the raw body under the
/// subscription secret, computed here independently of the bridge's code.
fn webhook_requests(secret: &str, alerts: std::ops::Range<u64>, foreign: bool) -> R<String> {
    use hmac::Mac;
    let incident: serde_json::Value = serde_json::from_str(include_str!(
        "../tests/fixtures/pagerduty/webhook-v3-data-incident.json"
    ))
    .map_err(|e| e.to_string())?;
    let envelope: serde_json::Value = serde_json::from_str(include_str!(
        "../tests/fixtures/pagerduty/webhook-v3-envelope-incident.priority_updated.json"
    ))
    .map_err(|e| e.to_string())?;
    let ids: Vec<u64> = alerts.collect();
    let mut out = String::new();
    for k in 0..WEBHOOK_EVENTS {
        let alert = ids[k % ids.len()];
        let n = k % ids.len() + 1;
        let incident_id = format!("PBENCH{n:04}");
        let mut d = incident.clone();
        d["id"] = incident_id.clone().into();
        d["self"] = format!("https://api.pagerduty.com/incidents/{incident_id}").into();
        d["html_url"] = format!("https://acme.pagerduty.com/incidents/{incident_id}").into();
        d["number"] = n.into();
        d["status"] = "acknowledged".into();
        let appliance = if foreign {
            "another-appliance"
        } else {
            APPLIANCE
        };
        d["incident_key"] = format!("oneview:{appliance}:/rest/alerts/{alert}").into();
        d["title"] = format!("Critical: {}", REAL_ALERTS[k % REAL_ALERTS.len()].3).into();
        let mut e = envelope.clone();
        e["event"]["id"] = format!("01BENCH{:019}", k).into();
        e["event"]["event_type"] = "incident.acknowledged".into();
        e["event"]["occurred_at"] = format!("2026-01-15T10:{:02}:00.000Z", k % 60).into();
        e["event"]["data"] = d;
        let body = e.to_string();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| e.to_string())?;
        mac.update(body.as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        out.push_str(&format!(
            "Content-Type: application/json\tUser-Agent: PagerDuty-Webhook/V3.0\tX-PagerDuty-Signature: v1={sig}\t{body}\n"
        ));
    }
    Ok(out)
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill(&mut b[..]);
    hex::encode(b)
}

/// Resets the process's peak RSS (`VmHWM`), so that it covers only what follows.
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The simulators alone: PagerDuty events per second from a client as concurrent as the
/// bridge, OneView pages per second of a full listing.
async fn sims(events: usize, stored: usize) -> R<Figures> {
    let sims = Sims::start(Faults::default()).await?;
    let client = reqwest::Client::new();
    let url = sims.pd.events_url();
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= events as u64 {
                    return Ok::<(), String>(());
                }
                let body = serde_json::json!({
                    "routing_key": ROUTING_KEY,
                    "event_action": "trigger",
                    "dedup_key": format!("oneview:{APPLIANCE}:/rest/alerts/{i}"),
                    "payload": {"summary": "Fan failure", "source": "enc1", "severity": "critical"},
                });
                let r = client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status().as_u16() != 202 {
                    return Err(format!("PagerDuty simulator answered {}", r.status()));
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let pd_rate = events as f64 / t.elapsed().as_secs_f64();

    sims.ov.handle.generate(&GenerateSpec {
        count: stored,
        severity: Some("Critical".into()),
        state: Some("Active".into()),
        ..Default::default()
    });
    let base = sims.ov.url();
    let login: serde_json::Value = client
        .post(format!("{base}/rest/login-sessions"))
        .header("X-API-Version", "4600")
        .json(&serde_json::json!({"userName": "administrator", "password": "sim-password", "loginMsgAck": true}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let session = login["sessionID"]
        .as_str()
        .ok_or("no sessionID from the OneView simulator")?
        .to_owned();
    let t = Instant::now();
    let (mut start, mut pages, mut members) = (0usize, 0u64, 0usize);
    loop {
        let page: serde_json::Value = client
            .get(format!("{base}/rest/alerts?start={start}&count=500"))
            .header("X-API-Version", "4600")
            .header("Auth", &session)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let n = page["members"].as_array().map_or(0, Vec::len);
        pages += 1;
        members += n;
        start += n;
        if n == 0 || page["nextPageUri"].as_str().is_none_or(str::is_empty) {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if members != stored {
        return Err(format!(
            "OneView simulator listed {members} of {stored} alerts"
        ));
    }
    Ok(vec![
        ("pagerduty_sim_events_per_s".into(), pd_rate),
        ("oneview_sim_pages_per_s".into(), pages as f64 / secs),
        ("oneview_sim_alerts_per_s".into(), members as f64 / secs),
    ])
}

// ---- harness -----------------------------------------------------------------------------

struct Sims {
    ov: ovsim::RunningSim,
    pd: pdsim::SimHandle,
}

impl Sims {
    async fn start(pd_faults: Faults) -> R<Sims> {
        let lo = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
        let ov = ovsim::start(SimConfig::default(), lo)
            .await
            .map_err(|e| format!("OneView simulator: {e}"))?;
        let pd = pdsim::start(lo, pd_faults)
            .await
            .map_err(|e| format!("PagerDuty simulator: {e}"))?;
        Ok(Sims { ov, pd })
    }
}

struct Opts {
    interval_ms: u64,
    rate_limit: u32,
    state: Option<PathBuf>,
    /// More `BRIDGE_*` settings.
    env: Vec<(String, String)>,
    /// The bridge's log (stdout and stderr) goes to this file instead of nowhere (stdout) and
    /// the harness's stderr.
    log: Option<PathBuf>,
    /// `[[appliances]]` (name, URL) in a configuration file instead of the one appliance of
    /// `BRIDGE_ONEVIEW__*`; each is a OneView simulator with the default credentials.
    appliances: Vec<(String, String)>,
    /// Appliances of `appliances` that are on their message bus: (name, AMQPS port).
    scmb: Vec<(String, u16)>,
}

impl Opts {
    fn new(interval_ms: u64) -> Opts {
        Opts {
            interval_ms,
            rate_limit: 10_000_000,
            state: None,
            env: Vec::new(),
            log: None,
            appliances: Vec::new(),
            scmb: Vec::new(),
        }
    }
}

fn fresh_state_file(dir: &Path) -> R<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let p = dir.join("bench-state.redb");
    let _ = std::fs::remove_file(&p);
    Ok(p)
}

struct Bridge {
    child: Child,
    /// Holds the configuration file of an estate for the bridge's lifetime.
    _config: Option<tempfile::TempDir>,
    url: String,
    pid: u32,
    ready_after: Duration,
    client: reqwest::Client,
}

#[derive(Clone, Copy, Debug)]
struct ProcStat {
    rss_kb: u64,
    hwm_kb: u64,
    cpu_s: f64,
}

/// The bridge the benchmarks run: `BRIDGE_BIN`, else the binary Cargo built for this very
/// `cargo bench` (`CARGO_BIN_EXE_*`, so always current and in whatever target directory Cargo
/// uses: `CARGO_TARGET_DIR`, `build.target-dir`, a `--target` triple).
fn bridge_bin() -> PathBuf {
    std::env::var_os("BRIDGE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_oneview-pagerduty-bridge")),
        PathBuf::from,
    )
}

impl Bridge {
    async fn spawn(sims: &Sims, o: &Opts) -> R<Bridge> {
        let bin = bridge_bin();
        if !bin.exists() {
            return Err(format!(
                "{} missing: run the benchmarks through cargo bench, which builds it (or set BRIDGE_BIN)",
                bin.display()
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--role", "all"]).env_clear();
        let mut config = None;
        if o.appliances.is_empty() {
            cmd.env("BRIDGE_ONEVIEW__URL", sims.ov.url())
                .env("BRIDGE_ONEVIEW__NAME", APPLIANCE)
                .env("BRIDGE_ONEVIEW__USERNAME", "administrator")
                .env("BRIDGE_ONEVIEW__PASSWORD", "sim-password");
        } else {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let path = dir.path().join("estate.toml");
            let mut toml = String::new();
            for (name, url) in &o.appliances {
                toml.push_str(&format!(
                    "[[appliances]]\nname = \"{name}\"\nurl = \"{url}\"\n\
                     username = \"administrator\"\npassword = \"sim-password\"\n\n"
                ));
                if let Some((_, port)) = o.scmb.iter().find(|(n, _)| n == name) {
                    toml.push_str(&format!(
                        "[appliances.scmb]\nenabled = true\nport = {port}\npoll_interval = \"10m\"\n\n"
                    ));
                }
            }
            std::fs::write(&path, toml).map_err(|e| format!("{}: {e}", path.display()))?;
            cmd.arg("--config").arg(&path);
            config = Some(dir);
        }
        cmd.env("BRIDGE_PAGERDUTY__ROUTING_KEY", ROUTING_KEY)
            .env("BRIDGE_PAGERDUTY__EVENTS_URL", sims.pd.events_url())
            .env(
                "BRIDGE_PAGERDUTY__RATE_LIMIT_PER_MINUTE",
                o.rate_limit.to_string(),
            )
            .env("BRIDGE_PAGERDUTY__RETRY_INITIAL_DELAY", "100ms")
            .env("BRIDGE_PAGERDUTY__RETRY_MAX_DELAY", "2s")
            .env("BRIDGE_POLLER__INTERVAL", format!("{}ms", o.interval_ms))
            .env(
                "BRIDGE_POLLER__WATERMARK_OVERLAP",
                format!("{}ms", (o.interval_ms / 2).min(2000)),
            )
            .env("BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("BRIDGE_SERVER__SHUTDOWN_TIMEOUT", "2s")
            .env("BRIDGE_LOG__LEVEL", "warn")
            .env("BRIDGE_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(p) = &o.state {
            cmd.env("BRIDGE_STATE__PATH", p);
        }
        cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        if let Some(p) = &o.log {
            // The bridge logs to stdout; stderr carries what happens before logging starts.
            let f = std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let g = f.try_clone().map_err(|e| format!("{}: {e}", p.display()))?;
            cmd.stdout(f).stderr(g);
        }
        let t = Instant::now();
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
        let pid = child.id();
        let mut b = Bridge {
            child,
            _config: config,
            url: format!("http://127.0.0.1:{port}"),
            pid,
            ready_after: Duration::ZERO,
            client: reqwest::Client::new(),
        };
        let ready = format!("{}/ready", b.url);
        loop {
            if let Ok(r) = b.client.get(&ready).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Ok(Some(st)) = b.child.try_wait() {
                return Err(format!("bridge exited before ready: {st}"));
            }
            if t.elapsed() > Duration::from_secs(60) {
                return Err("bridge not ready within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        b.ready_after = t.elapsed();
        Ok(b)
    }

    fn proc_stat(&self) -> ProcStat {
        proc_stat(self.pid)
    }

    /// Appliances `/ready` reports as synced.
    async fn synced_appliances(&self) -> R<usize> {
        let v: serde_json::Value = self
            .client
            .get(format!("{}/ready", self.url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        Ok(v["appliances"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|x| x["synced"] == true).count()))
    }

    async fn metrics(&self) -> R<String> {
        self.client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())
    }

    /// RSS (and open file descriptors: sockets) sampled in a thread until `stop`; returns the
    /// maximum in kB.
    fn sampler(&self, every: Duration) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new(0u64));
        let fds = Arc::new(AtomicU64::new(0));
        let (s, m, f, pid) = (stop.clone(), max.clone(), fds.clone(), self.pid);
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = proc_stat(pid).rss_kb;
                let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                *g = (*g).max(r);
                drop(g);
                if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    f.fetch_max(d.count() as u64, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        Sampler { stop, max, fds, h }
    }

    /// `kill -SIG` to the bridge (`STOP`, `CONT`).
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([format!("-{sig}"), self.pid.to_string()])
            .status();
    }

    fn stop(mut self) {
        // SIGTERM through kill(1): the bridge drains and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A benchmark that fails returns before `stop`: the bridge must not outlive it.
impl Drop for Bridge {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<u64>>,
    fds: Arc<AtomicU64>,
    h: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn stop(self) -> u64 {
        self.stop_with_fds().0
    }

    /// The peak RSS in kB and the peak number of open file descriptors.
    fn stop_with_fds(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.h.join();
        (
            *self.max.lock().unwrap_or_else(|e| e.into_inner()),
            self.fds.load(Ordering::Relaxed),
        )
    }
}

fn proc_stat(pid: u32) -> ProcStat {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state field.
    let ticks: u64 = [11usize, 12]
        .iter()
        .filter_map(|i| rest.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    ProcStat {
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
        cpu_s: ticks as f64 / clk_tck(),
    }
}

fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Waits until `count()` reaches `want`, for at most `limit`; the error says how far it got.
async fn wait_count(limit: Duration, what: &str, want: u64, count: impl Fn() -> u64) -> R<()> {
    wait_for(limit, || count() >= want)
        .await
        .map_err(|_| format!("{} of {want} {what} in {limit:?}", count()))
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Result<(), ()> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > limit {
            return Err(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn id_of(uri: &str) -> R<u64> {
    uri.rsplit('/')
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad alert URI {uri}"))
}

/// The sum of the series of `name` whose line holds every one of `labels` (`"valid"`, say).
fn metric_where(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

fn push_dist(f: &mut Figures, name: &str, v: &mut [f64]) {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    if v.is_empty() {
        return;
    }
    f.push((format!("{name}_p50"), q(0.5)));
    f.push((format!("{name}_p90"), q(0.9)));
    f.push((format!("{name}_p99"), q(0.99)));
    f.push((format!("{name}_max"), v[v.len() - 1]));
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (s[s.len() / 2], s[0], s[s.len() - 1])
}

fn parse_wrk_time(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.trim().parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => f64::NAN,
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    format!(
        "{cpus} cores ({model}), {:.1} GiB RAM, load {}",
        mem as f64 / 1024.0 / 1024.0,
        loadavg()
    )
}
