//! A real RabbitMQ for the tests: [`bridge::sim::rabbitmq::Broker`] (Debian's `rabbitmq-server`
//! set up as an appliance's SCMB broker, in a temporary directory on free ports; see its module
//! docs), with the tests' rules on top: SKIPPED when it is not installed, a failure instead under
//! `CI=true`, one broker shared by the tests of a binary, and panics with the broker's output
//! instead of errors.
#![allow(dead_code)] // Each test crate uses a different part.

use std::path::PathBuf;
use std::sync::OnceLock;

pub use bridge::sim::rabbitmq::{CertKey, installed};

/// False (after printing SKIPPED) when the broker is not installed; under `CI=true` that is a
/// failure instead.
pub fn available(test: &str) -> bool {
    if installed() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{test}: rabbitmq-server not installed (apt install rabbitmq-server); CI requires it"
        );
    }
    println!("SKIPPED: {test}: rabbitmq-server not installed (apt install rabbitmq-server)");
    false
}

/// The broker shared by the tests of this binary; `None` (SKIPPED printed) without RabbitMQ.
pub fn shared(test: &str) -> Option<&'static Broker> {
    static BROKER: OnceLock<Broker> = OnceLock::new();
    if !available(test) {
        return None;
    }
    Some(BROKER.get_or_init(Broker::start_unchecked))
}

/// The library's broker, with methods that panic (naming what failed) instead of returning errors.
pub struct Broker(bridge::sim::rabbitmq::Broker);

impl std::ops::Deref for Broker {
    type Target = bridge::sim::rabbitmq::Broker;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Broker {
    /// A broker of this test's own; `None` (SKIPPED printed) without RabbitMQ.
    pub fn start(test: &str) -> Option<Broker> {
        available(test).then(Self::start_unchecked)
    }

    fn start_unchecked() -> Broker {
        let b = bridge::sim::rabbitmq::Broker::start().unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "RabbitMQ {} started in {:.2?} (AMQPS 127.0.0.1:{})",
            b.node(),
            b.started_in,
            b.port
        );
        Broker(b)
    }

    pub fn start_again(&self) {
        self.0.start_again().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn restart(&self) {
        self.0.restart().unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn ctl(&self, args: &[&str]) -> String {
        self.0.ctl(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn close_all_connections(&self) {
        self.0
            .close_all_connections()
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        self.0.queues().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn connection_count(&self) -> usize {
        self.0.connection_count().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn reissue_server_cert(&self, ca: &CertKey) {
        self.0
            .reissue_server_cert(ca)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        self.0
            .write_file(name, text)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
