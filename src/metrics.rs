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

/// Clock ticks per second; 100 on every Linux platform we ship for.
const CLK_TCK: f64 = 100.0;

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
    Some(btime + start_ticks / CLK_TCK)
}

fn page_size() -> f64 {
    4096.0
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(fields) = proc_stat_fields() {
            let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let rss_pages: f64 = fields.get(21).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let vsize: f64 = fields.get(20).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let cpu = ConstCounter::new((utime + stime) / CLK_TCK);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            let rss = ConstGauge::new(rss_pages * page_size());
            rss.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                rss.metric_type(),
            )?)?;
            let vms = ConstGauge::new(vsize);
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
            let (name_out, kind_out) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((hname, help)) = pending_help.take() {
                if hname == name {
                    out.push_str(&format!("# HELP {name_out} {help}\n"));
                }
            }
            out.push_str(&format!("# TYPE {name_out} {kind_out}\n"));
            continue;
        }
        // OpenMetrics `_created` samples have no place in the classic format.
        if line
            .split(['{', ' '])
            .next()
            .is_some_and(|n| n.ends_with("_created"))
        {
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
}
