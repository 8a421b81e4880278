//! Giving freed heap memory back to the system (glibc only), and the two counters that show it.
//!
//! glibc keeps the pages of freed chunks resident until the top of an arena is free, which the
//! bridge's memory rarely is: a first sync of 50 appliances, or a storm, allocates and frees
//! hundreds of megabytes of decoded pages and queued events between the long-lived alerts, and
//! without help the process stays at its peak RSS for good (BENCHMARKS.md, section 9: 153 MB
//! idle for 50,000 open alerts, half of it free heap). `malloc_trim(0)` hands every free page
//! of every arena back (`madvise(MADV_DONTNEED)`), keeping the chunks themselves.
//!
//! [`start`] runs a thread that looks every [`CHECK_EVERY`] at how much resident memory is not
//! in use by the heap (RSS minus glibc's in-use bytes) and trims when that grew by at least
//! [`TRIM_WHEN_GROWN`] since the last trim: an idle bridge trims once after the startup storm
//! and then only looks (one `mallinfo2` and one read of `/proc/self/statm` every 10 s), a
//! storm trims at most once per check. The look takes every arena's lock for a moment; the trim
//! itself a few milliseconds per hundred megabytes.
//!
//! On other targets (musl, macOS) nothing runs and the counters stay at zero. This is the one
//! module with `unsafe` code: two calls into glibc.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;

/// How often the trimmer looks at the heap.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// Growth of resident-but-free memory (since the last trim) that is worth a trim.
pub const TRIM_WHEN_GROWN: u64 = 8 << 20;

static TRIMS: AtomicU64 = AtomicU64::new(0);
static RELEASED: AtomicU64 = AtomicU64::new(0);

/// What one look at the process found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    /// Resident set size, bytes.
    pub resident: u64,
    /// Bytes the heap has handed out and not had back (arenas and mmapped chunks).
    pub in_use: u64,
}

impl Heap {
    /// Resident memory that is not live heap: code, stacks, and free chunks still resident.
    pub fn slack(self) -> u64 {
        self.resident.saturating_sub(self.in_use)
    }
}

/// The trim policy, apart from the allocator so it can be tested: trim when the slack grew
/// by [`TRIM_WHEN_GROWN`] over the smallest slack seen since the last trim (or start).
#[derive(Debug, Default)]
pub struct Policy {
    floor: Option<u64>,
}

impl Policy {
    /// Whether `now` is worth a trim. Call [`Policy::trimmed`] after one.
    pub fn wants_trim(&mut self, now: Heap) -> bool {
        let slack = now.slack();
        let floor = *self.floor.get_or_insert(slack);
        if slack < floor {
            // Less slack than at the last trim: pages were reused (or code evicted); measure
            // growth from here.
            self.floor = Some(slack);
            return false;
        }
        slack - floor >= TRIM_WHEN_GROWN
    }

    /// The heap right after a trim: the slack that cannot be given back.
    pub fn trimmed(&mut self, after: Heap) {
        self.floor = Some(after.slack());
    }
}

/// Trims now and returns the resident bytes the trim gave back (0 when nothing could be, or
/// on an allocator without `malloc_trim`). Counted in the metrics.
pub fn trim() -> u64 {
    let (Some(before), true, Some(after)) = (look(), release(), look()) else {
        return 0;
    };
    let released = before.resident.saturating_sub(after.resident);
    TRIMS.fetch_add(1, Ordering::Relaxed);
    RELEASED.fetch_add(released, Ordering::Relaxed);
    released
}

/// Starts the trimmer thread (see the module docs). Once per process; a no-op where the
/// allocator is not glibc's.
pub fn start() {
    let Some(at_start) = look() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(move || {
            // The floor is the slack before any work (code and static data): a storm over
            // before the first look still counts as growth.
            let mut policy = Policy::default();
            policy.wants_trim(at_start);
            loop {
                std::thread::sleep(CHECK_EVERY);
                let Some(now) = look() else { return };
                if policy.wants_trim(now) {
                    let released = trim();
                    if let Some(after) = look() {
                        policy.trimmed(after);
                    }
                    tracing::debug!(
                        resident_bytes = now.resident,
                        heap_in_use_bytes = now.in_use,
                        released_bytes = released,
                        "heap trimmed"
                    );
                }
            }
        });
    if let Err(e) = spawned {
        // Only memory is at stake: the bridge runs on without it.
        tracing::warn!(error = %e, "cannot start the heap trimmer thread; freed memory stays resident");
    }
}

/// glibc's arenas at most, unless `MALLOC_ARENA_MAX` (or `GLIBC_TUNABLES`) says otherwise.
pub const ARENA_MAX: i32 = 2;

/// Allocations from this size up get their own mapping, unmapped on free, unless
/// `MALLOC_MMAP_THRESHOLD_` (or `GLIBC_TUNABLES`) says otherwise.
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Sets the allocator's defaults; call first thing in `main`, before any thread starts.
///
/// - At most [`ARENA_MAX`] arenas instead of 8 per core: each arena keeps its own free pages
///   and its own holes between long-lived alerts, and the threads that allocate during a storm
///   (tokio's workers, the journal's writer, blocking tasks) otherwise spread it over up to 16
///   of them.
/// - A fixed mmap threshold: glibc's default one grows to the largest block freed so far (up
///   to 32 MB), so after the first OneView page body or delivery batch every later one is
///   carved out of the heap between alerts and leaves a hole there; mapped, it goes back whole.
///
/// Both are the documented `mallopt` settings, so an operator's `MALLOC_ARENA_MAX=...` in the
/// environment keeps precedence over them.
pub fn configure() {
    let env = |name: &str| std::env::var_os(name).is_some();
    let tunable = |name: &str| {
        std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains(&format!("malloc.{name}=")))
    };
    if !env("MALLOC_ARENA_MAX") && !tunable("arena_max") {
        set(Param::ArenaMax, ARENA_MAX);
    }
    if !env("MALLOC_MMAP_THRESHOLD_") && !tunable("mmap_threshold") {
        set(Param::MmapThreshold, MMAP_THRESHOLD);
    }
}

#[derive(Clone, Copy)]
enum Param {
    ArenaMax,
    MmapThreshold,
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set(param: Param, value: i32) {
    let param = match param {
        Param::ArenaMax => libc::M_ARENA_MAX,
        Param::MmapThreshold => libc::M_MMAP_THRESHOLD,
    };
    // SAFETY: mallopt only changes glibc's own tuning values (under its lock); both
    // parameters are documented for use at any time, and a value it refuses is ignored.
    unsafe { libc::mallopt(param, value) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set(_: Param, _: i32) {}

/// Resident size and heap in use, when both can be read.
pub fn look() -> Option<Heap> {
    let in_use = heap_in_use()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(Heap {
        resident: pages * page_size(),
        in_use,
    })
}

fn page_size() -> u64 {
    #[cfg(unix)]
    {
        rustix::param::page_size() as u64
    }
    #[cfg(not(unix))]
    {
        4096
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use() -> Option<u64> {
    // SAFETY: mallinfo2 (glibc >= 2.33) takes no arguments, only reads the allocator's own
    // bookkeeping under its arena locks, and returns a plain struct by value.
    let m = unsafe { libc::mallinfo2() };
    Some((m.uordblks + m.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use() -> Option<u64> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() -> bool {
    // SAFETY: malloc_trim only returns free pages of glibc's own arenas to the kernel (it
    // keeps every chunk, in use or free, where it is) and is safe to call from any thread at
    // any time; 0 means "keep no extra padding at the top".
    unsafe { libc::malloc_trim(0) };
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() -> bool {
    false
}

/// `bridge_memory_trims_total` and `bridge_memory_trim_released_bytes_total`, registered into
/// every registry (`metrics::new_registry`); they read the process-wide counters.
#[derive(Debug)]
pub struct TrimCollector;

impl Collector for TrimCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let trims = ConstCounter::new(TRIMS.load(Ordering::Relaxed));
        trims.encode(encoder.encode_descriptor(
            "bridge_memory_trims",
            "Times freed heap memory was handed back to the system (glibc malloc_trim)",
            None,
            trims.metric_type(),
        )?)?;
        let released = ConstCounter::new(RELEASED.load(Ordering::Relaxed));
        released.encode(encoder.encode_descriptor(
            "bridge_memory_trim_released_bytes",
            "Resident bytes the heap trims gave back to the system",
            None,
            released.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(resident_mb: u64, in_use_mb: u64) -> Heap {
        Heap {
            resident: resident_mb << 20,
            in_use: in_use_mb << 20,
        }
    }

    #[test]
    fn trims_once_the_free_resident_memory_has_grown_and_not_again_until_it_grows_again() {
        let mut p = Policy::default();
        assert!(!p.wants_trim(heap(20, 5)), "the first look sets the floor");
        assert!(!p.wants_trim(heap(27, 5)), "7 MB more slack: not worth it");
        assert!(p.wants_trim(heap(160, 80)), "a storm's free pages: trim");
        p.trimmed(heap(100, 80));
        assert!(
            !p.wants_trim(heap(100, 80)),
            "idle after the trim: only looks"
        );
        assert!(!p.wants_trim(heap(101, 81)));
        assert!(!p.wants_trim(heap(95, 80)), "less slack lowers the floor");
        assert!(!p.wants_trim(heap(102, 80)), "7 MB over the new floor");
        assert!(p.wants_trim(heap(103, 80)), "8 MB over it");
    }
}
