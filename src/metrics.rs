//! Prometheus metrics: the shared registry, the HTTP-server and process metrics, and the
//! exposition in both OpenMetrics and the classic Prometheus text format.
//!
//! Each component owns its own metric families and registers them into the one [`Registry`]
//! while the application is assembled (see `App::build`), so a module's metrics live next to
//! the code that moves them. Every series that can be zero is created at zero at registration.
//!
//! `prometheus-client` writes OpenMetrics, whose counter families are named without `_total`.
//! Prometheus' classic text parser (and so `promtool check metrics`) reads such a family as two
//! different ones. Scrapers that ask for OpenMetrics get it as is; everyone else gets the classic
//! format, produced by [`openmetrics_to_prometheus_text`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets (seconds) for things that usually take milliseconds but can take a minute.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A histogram with [`LATENCY_BUCKETS`], usable as a `Family` constructor.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    role: String,
}

/// Labels of an HTTP request served by the bridge. `route` is the matched route template
/// (`/api/v1/alerts`), never the raw path, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status_class: String,
}

/// Metrics of the HTTP server.
#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<HttpLabels, Counter>,
    pub duration: Family<HttpLabels, Histogram, fn() -> Histogram>,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let requests = Family::<HttpLabels, Counter>::default();
        let duration = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "bridge_http_requests",
            "HTTP requests served, by route template, method and status class",
            requests.clone(),
        );
        registry.register(
            "bridge_http_request_duration_seconds",
            "Time to serve an HTTP request, by route template, method and status class",
            duration.clone(),
        );
        Self { requests, duration }
    }
}

/// Registers `bridge_build_info{version,role} 1`.
pub fn register_build_info(registry: &mut Registry, role: &str) {
    let info = Family::<BuildLabels, Gauge>::default();
    info.get_or_create(&BuildLabels {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        role: role.to_owned(),
    })
    .set(1);
    registry.register(
        "bridge_build_info",
        "Always 1; labels carry the bridge version and the role of this process",
        info,
    );
}

/// Standard `process_*` metrics read from `/proc/self` at scrape time (Linux only; elsewhere
/// only the start time is reported).
#[derive(Debug)]
pub struct ProcessCollector {
    start_time_seconds: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let start = process_start_time().unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        });
        Self {
            start_time_seconds: start,
        }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// `sysconf(_SC_CLK_TCK)`: the unit of the CPU times and start time in `/proc/self/stat`.
/// Usually 100, but a kernel may be built otherwise, so it is asked rather than assumed.
fn clock_ticks_per_second() -> f64 {
    #[cfg(unix)]
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    #[cfg(not(unix))]
    let ticks = 100.0;
    // A zero would turn every CPU figure into infinity.
    if ticks > 0.0 { ticks } else { 100.0 }
}

/// `sysconf(_SC_PAGESIZE)`: the unit of the resident set size in `/proc/self/stat`. 4 KiB on
/// x86_64, but 16 KiB or 64 KiB on many arm64 kernels.
fn page_size() -> f64 {
    #[cfg(unix)]
    let size = rustix::param::page_size() as f64;
    #[cfg(not(unix))]
    let size = 4096.0;
    size
}

/// The figures `process_*` reports, read from one `/proc/self/stat` line.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StatFigures {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
}

impl StatFigures {
    /// `fields` start after the command name (field 3, `state`, is index 0); ticks and pages
    /// are converted with the given units.
    fn from_fields(fields: &[String], ticks_per_second: f64, page_size: f64) -> Self {
        let num = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        Self {
            // utime (field 14) + stime (15)
            cpu_seconds: (num(11) + num(12)) / ticks_per_second,
            // rss (24) is in pages; vsize (23) already in bytes.
            resident_bytes: num(21) * page_size,
            virtual_bytes: num(20),
        }
    }
}

fn proc_stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; everything after the last ')' is split.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn process_start_time() -> Option<f64> {
    let fields = proc_stat_fields()?;
    // Field 22 (starttime) is index 19 after the command name.
    let start_ticks: f64 = fields.get(19)?.parse().ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(btime + start_ticks / clock_ticks_per_second())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(fields) = proc_stat_fields() {
            let f = StatFigures::from_fields(&fields, clock_ticks_per_second(), page_size());
            let cpu = ConstCounter::new(f.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = ConstGauge::new(f.resident_bytes);
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                rss.metric_type(),
            )?)?;
            let vms = ConstGauge::new(f.virtual_bytes);
            vms.encode(encoder.encode_descriptor(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                None,
                vms.metric_type(),
            )?)?;
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds = ConstGauge::new(dir.count() as i64);
            fds.encode(encoder.encode_descriptor(
                "process_open_fds",
                "Number of open file descriptors",
                None,
                fds.metric_type(),
            )?)?;
        }
        if let Some(max) = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|x| x.starts_with("Max open files"))
                    .and_then(|x| {
                        x.split_whitespace()
                            .nth(3)
                            .and_then(|v| v.parse::<i64>().ok())
                    })
            })
        {
            let g = ConstGauge::new(max);
            g.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                g.metric_type(),
            )?)?;
        }
        let start = ConstGauge::new(self.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

/// A registry with the process collector and build info already in it.
pub fn new_registry(role: &str) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector::new()));
    registry.register_collector(Box::new(crate::alloc::TrimCollector));
    register_build_info(&mut registry, role);
    registry
}

/// Renders the registry as OpenMetrics text.
pub fn encode_openmetrics(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Converts `prometheus-client`'s OpenMetrics output into the classic Prometheus text format
/// (0.0.4): counter families get their `_total` name in `# HELP`/`# TYPE`, `# UNIT` and `# EOF`
/// lines go, and `info` families become gauges.
pub fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut pending_help: Option<(&str, &str)> = None;
    // The family the sample lines below belong to, and whether OpenMetrics gives it a
    // `<family>_created` sample (counters, histograms and summaries do; gauges never).
    let mut created_sample: Option<String> = None;
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            pending_help = Some((name, help));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            created_sample = matches!(kind, "counter" | "histogram" | "summary")
                .then(|| format!("{name}_created"));
            let (name_out, kind_out) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((hname, help)) = pending_help.take()
                && hname == name
            {
                out.push_str(&format!("# HELP {name_out} {help}\n"));
            }
            out.push_str(&format!("# TYPE {name_out} {kind_out}\n"));
            continue;
        }
        // OpenMetrics `_created` samples have no place in the classic format. Only the one of
        // the current counter/histogram/summary family goes: a family that is itself named
        // `..._created` (a gauge of creation times, say) is a metric like any other.
        let sample = line.split(['{', ' ']).next().unwrap_or_default();
        if created_sample.as_deref() == Some(sample) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// What `/metrics` serves: a registry frozen after assembly.
pub type SharedRegistry = Arc<Registry>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_renames_counters_and_drops_eof() {
        let mut r = new_registry("all");
        let h = HttpMetrics::register(&mut r);
        h.requests
            .get_or_create(&HttpLabels {
                route: "/health".into(),
                method: "GET".into(),
                status_class: "2xx".into(),
            })
            .inc();
        let text = openmetrics_to_prometheus_text(&encode_openmetrics(&r));
        assert!(
            text.contains("# TYPE bridge_http_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# HELP bridge_http_requests_total "),
            "{text}"
        );
        assert!(text.contains("bridge_build_info{version="), "{text}");
        assert!(text.contains("process_start_time_seconds"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    /// OpenMetrics as `prometheus-client` writes it for a counter with a creation time and a
    /// histogram, plus families whose own names end in `_created`.
    const WITH_CREATED: &str = "\
# HELP jobs Jobs run.
# TYPE jobs counter
jobs_total{kind=\"a\"} 3
jobs_created{kind=\"a\"} 1700000000.0
# HELP lat Latency.
# TYPE lat histogram
lat_bucket{le=\"+Inf\"} 1
lat_sum 0.5
lat_count 1
lat_created 1700000000.0
# HELP certs_created Creation time of the certificate.
# TYPE certs_created gauge
certs_created{cert=\"ca\"} 1690000000
# HELP things_created Things created.
# TYPE things_created counter
things_created_total 7
things_created_created 1700000000.0
# EOF
";

    #[test]
    fn classic_text_drops_only_the_created_samples_of_counters_and_histograms() {
        let text = openmetrics_to_prometheus_text(WITH_CREATED);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "jobs_total{kind=\"a\"} 3",
                "lat_bucket{le=\"+Inf\"} 1",
                "lat_sum 0.5",
                "lat_count 1",
                "certs_created{cert=\"ca\"} 1690000000",
                "things_created_total 7",
            ],
            "{text}"
        );
        assert!(text.contains("# TYPE certs_created gauge"), "{text}");
        assert!(
            text.contains("# HELP certs_created Creation time"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE things_created_total counter"),
            "{text}"
        );
    }

    #[test]
    fn a_gauge_family_named_created_survives_the_registry_round_trip() {
        let mut r = Registry::default();
        let g = Gauge::<i64>::default();
        g.set(1_690_000_000);
        r.register("bridge_cert_created", "When the certificate was issued", g);
        let text = openmetrics_to_prometheus_text(&encode_openmetrics(&r));
        assert!(
            text.contains("\nbridge_cert_created 1690000000\n"),
            "{text}"
        );
    }

    #[test]
    fn process_figures_use_the_given_page_size_and_tick_rate() {
        // /proc/self/stat after the command name: utime 250, stime 50 ticks, vsize 10 MB,
        // rss 1000 pages (indices 11, 12, 20, 21).
        let mut fields = vec!["0".to_owned(); 30];
        fields[11] = "250".into();
        fields[12] = "50".into();
        fields[20] = "10000000".into();
        fields[21] = "1000".into();
        for (page, ticks) in [(4096.0, 100.0), (16384.0, 100.0), (65536.0, 250.0)] {
            let f = StatFigures::from_fields(&fields, ticks, page);
            assert_eq!(f.resident_bytes, 1000.0 * page);
            assert_eq!(f.cpu_seconds, 300.0 / ticks);
            assert_eq!(f.virtual_bytes, 10_000_000.0);
        }
    }

    /// The units come from the system, not from constants: the RSS we report matches the
    /// kernel's own `VmRSS` (in kB, independent of the page size) and the units match what
    /// `getconf` (glibc's sysconf) says.
    #[cfg(target_os = "linux")]
    #[test]
    fn process_units_are_the_systems() {
        let getconf = |name: &str| -> f64 {
            let out = std::process::Command::new("getconf")
                .arg(name)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        assert_eq!(page_size(), getconf("PAGESIZE"));
        assert_eq!(clock_ticks_per_second(), getconf("CLK_TCK"));

        let vm_rss_bytes = || -> f64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let kb: f64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            kb * 1024.0
        };
        let before = vm_rss_bytes();
        let ours = StatFigures::from_fields(
            &proc_stat_fields().unwrap(),
            clock_ticks_per_second(),
            page_size(),
        )
        .resident_bytes;
        let after = vm_rss_bytes();
        // Other test threads allocate meanwhile: allow some slack, far below a 4x page error.
        let (lo, hi) = (before.min(after), before.max(after));
        assert!(
            ours >= lo * 0.8 && ours <= hi * 1.25,
            "rss {ours} vs VmRSS {before}..{after}"
        );
    }
}
