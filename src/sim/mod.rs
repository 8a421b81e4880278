//! Simulators of the bridge's two counterparts, used by the tests, the benchmarks and the
//! `demo` command, and runnable on their own (`simulate oneview|pagerduty`); and a real RabbitMQ
//! set up as an appliance's message bus ([`rabbitmq`]), for the demo and the SCMB tests.

pub mod oneview;
pub mod pagerduty;
pub mod rabbitmq;
