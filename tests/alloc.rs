//! The heap trim (src/alloc.rs) against glibc itself: its own test binary, so no other test
//! allocates while it measures the resident size.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_trim_gives_back_the_pages_freed_between_live_chunks_and_counts_them() {
    const MB: u64 = 1 << 20;
    // 64 MB of 256-byte chunks, one in 64 kept: the shape a storm leaves (long-lived alerts
    // between freed events), so no arena top is free and glibc's own trimming gives back
    // nothing.
    let all: Vec<Box<[u8; 256]>> = (0..262_144u32).map(|i| Box::new([i as u8; 256])).collect();
    let kept: Vec<Box<[u8; 256]>> = all
        .into_iter()
        .enumerate()
        .filter_map(|(i, b)| (i % 64 == 0).then_some(b))
        .collect();
    let before = bridge::alloc::look().expect("glibc and /proc/self/statm");
    let released = bridge::alloc::trim();
    let after = bridge::alloc::look().expect("glibc and /proc/self/statm");
    assert!(
        released >= 32 * MB,
        "released {released} bytes of the 63 MB freed (resident {} -> {})",
        before.resident,
        after.resident
    );
    assert!(
        after.in_use + 2 * MB >= before.in_use,
        "the live chunks stay allocated"
    );
    assert!(kept.iter().enumerate().all(|(i, b)| b[0] == (i * 64) as u8));

    let registry = bridge::metrics::new_registry("all");
    let text = bridge::metrics::encode_openmetrics(&registry);
    assert!(text.contains("bridge_memory_trims_total 1\n"), "{text}");
    let counted: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("bridge_memory_trim_released_bytes_total "))
        .and_then(|v| v.parse().ok())
        .expect("the released-bytes counter");
    assert_eq!(counted, released);
}
