//! Simulators of the bridge's two counterparts, used by the tests, the benchmarks and the
//! `demo` command, and runnable on their own (`simulate oneview|pagerduty`).

pub mod oneview;
pub mod pagerduty;
