//! No routing key reaches a log line, even at trace level with every crate's logs on, through
//! deliveries, retries, a rejection, a key rotation and a test event.

mod pagerduty_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge::model::ChangeKind;
use bridge::sim::pagerduty::{Faults, Outage};
use pagerduty_support::*;
use secrecy::SecretString;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_routing_key_in_any_log_line_at_trace_level() {
    let capture = Capture::default();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(capture.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("routing_key");
    std::fs::write(&key_file, format!("{ROUTING_KEY}\n")).unwrap();
    let rotated = "R0TAT3DKEY000000000000000000000x";
    let alerts = fixture_alerts();
    let faults = Faults {
        error_rate: 0.3,
        retry_after_secs: Some(0),
        reject_dedup_key_containing: Some(alerts[1].uri.clone()),
        ..Default::default()
    };
    let kf = key_file.clone();
    let h = Harness::start(faults, move |r| {
        r.pagerduty.routing_key = None;
        r.pagerduty.routing_key_file = Some(kf);
        r.pagerduty.routes = vec![bridge::config::RawRoute {
            name: Some("storage".into()),
            resource_categories: vec!["sas-interconnects".into()],
            routing_key: Some(SecretString::from(STORAGE_KEY.to_owned())),
            ..Default::default()
        }];
    })
    .await;
    for a in &alerts {
        h.send(ChangeKind::Raised, a).await;
    }
    h.wait_accepted(alerts.len() - 1).await;
    // Rotate the key file: the next events use the new key.
    std::fs::write(&key_file, format!("{rotated}\n")).unwrap();
    h.sim.set_faults(Faults {
        outage: Some(Outage::Drop),
        ..Default::default()
    });
    for a in &alerts {
        h.send(ChangeKind::Cleared, a).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.sim.set_faults(Faults::default());
    h.wait_accepted(2 * alerts.len() - 1).await;
    h.wait_idle().await;
    assert!(
        h.sim
            .accepted()
            .iter()
            .any(|e| e.routing_key.as_deref() == Some(rotated)),
        "the rotated key is used without a restart"
    );
    let cfg = config(&h.sim.events_url(), |_| {});
    let reports = bridge::pagerduty::send_test_event(&cfg).await.unwrap();
    assert!(reports.iter().all(|r| r.accepted));
    h.stop().await;

    let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("dedup_key"), "logs were captured");
    assert!(text.contains("TRACE") || text.contains("DEBUG"));
    for secret in [ROUTING_KEY, STORAGE_KEY, rotated] {
        assert!(!text.contains(secret), "routing key leaked into the logs");
    }
}
