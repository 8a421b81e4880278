//! The SCMB building blocks against a real RabbitMQ (tests/amqp_support): certificates through
//! the simulator's REST API, the consumer, and the simulator publishing its alert changes.
//!
//! One broker serves the binary; the tests take turns ([`serial`]) because every consumer bound
//! to `scmb.alerts.#` sees every simulator's changes, and one test restarts the broker.

mod amqp_support;
mod oneview_support;

use std::collections::HashMap;
use std::time::Duration;

use amqp_support::Broker;
use bridge::config::ScmbConfig;
use bridge::model::AlertState;
use bridge::oneview::certs::{self, CertError, TaskWait};
use bridge::oneview::scmb::{
    self, BusState, Handled, ScmbChange, ScmbError, ScmbMetrics, ScmbSettings, ScmbTls,
};
use bridge::sim::oneview::{
    GenerateSpec, RunningSim, ScmbCa, ScmbPublisher, SimConfig, start_publisher,
};
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

const FAST: TaskWait = TaskWait {
    every: Duration::from_millis(20),
    at_most: Duration::from_secs(10),
};

fn sim_config(broker: &Broker, f: impl FnOnce(&mut SimConfig)) -> SimConfig {
    let mut c = SimConfig {
        scmb_ca: Some(ScmbCa {
            cert_pem: broker.pki.ca.cert_pem.clone(),
            key_pem: broker.pki.ca.key_pem.clone(),
        }),
        ..SimConfig::default()
    };
    f(&mut c);
    c
}

fn settings(broker: &Broker) -> ScmbSettings {
    ScmbSettings {
        appliance: "ov-test".to_owned(),
        host: "127.0.0.1".to_owned(),
        port: broker.port,
        prefetch: 100,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        connect_timeout: Duration::from_secs(10),
    }
}

/// The keypair and CA as the bridge reads them from the simulator.
async fn tls_from(sim: &RunningSim) -> ScmbTls {
    let cfg = oneview_support::config(&sim.url(), |_| {});
    let client = oneview_support::client(&cfg);
    certs::fetch_tls(&client, &ScmbConfig::default(), FAST)
        .await
        .expect("certificates through REST")
}

/// A simulator publishing to `broker`, and a consumer connected with the keypair and CA it
/// handed out over REST.
async fn connected(broker: &Broker) -> (RunningSim, Consumer, ScmbPublisher) {
    let sim = oneview_support::start_sim(sim_config(broker, |_| {})).await;
    let tls = tls_from(&sim).await;
    let mut consumer = Consumer::start(broker, tls);
    consumer.wait_connected(1).await;
    let publisher = start_publisher(&sim.handle, &format!("amqps://127.0.0.1:{}", broker.port))
        .expect("publisher");
    (sim, consumer, publisher)
}

struct Consumer {
    rx: mpsc::Receiver<ScmbChange>,
    state: watch::Receiver<BusState>,
    /// Every state the consumer published, in order.
    seen: std::sync::Arc<std::sync::Mutex<Vec<BusState>>>,
    metrics: ScmbMetrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Option<ScmbError>>,
}

impl Consumer {
    fn start(broker: &Broker, tls: ScmbTls) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let (state_tx, state) = scmb::state_channel();
        let metrics = ScmbMetrics::unregistered("ov-test");
        let stop = CancellationToken::new();
        let task = tokio::spawn(scmb::run(
            settings(broker),
            tls,
            tx,
            state_tx,
            metrics.clone(),
            stop.clone(),
        ));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let mut st = state.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    seen.lock().unwrap().push(st.borrow_and_update().clone());
                    if st.changed().await.is_err() {
                        break;
                    }
                }
            });
        }
        Consumer {
            rx,
            state,
            seen,
            metrics,
            stop,
            task,
        }
    }

    /// Waits until the bus is up on connection number `n` (1 = the first).
    async fn wait_connected(&mut self, n: u64) {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            self.state.wait_for(
                |s| matches!(s, BusState::Connected { connection, .. } if *connection == n),
            ),
        )
        .await;
        assert!(
            r.is_ok(),
            "bus not connected (connection {n}) within 30 s; states: {:?}",
            self.seen.lock().unwrap()
        );
    }

    /// The first `Down` reason, waiting for it.
    async fn wait_down(&mut self) -> String {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            self.state.wait_for(|s| matches!(s, BusState::Down { .. })),
        )
        .await
        .expect("bus down within 30 s");
        match &*r.expect("state channel open") {
            BusState::Down { reason, .. } => reason.clone(),
            _ => unreachable!(),
        }
    }

    async fn recv(&mut self, n: usize, max: Duration) -> Vec<ScmbChange> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + max;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(mut c)) => {
                    // As the poller does once the change is in the pipeline.
                    c.done(Handled::Delivered).await.expect("ack");
                    out.push(c);
                }
                Ok(None) => panic!("consumer ended after {} of {n} changes", out.len()),
                Err(_) => panic!("only {} of {n} changes within {max:?}", out.len()),
            }
        }
        out
    }

    /// Nothing more arrives within `quiet`.
    async fn assert_nothing_more(&mut self, quiet: Duration) {
        if let Ok(Some(c)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!(
                "an extra change arrived: {} {:?}",
                c.change_type, c.alert.uri
            );
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn wait_until(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < max, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The broker's queues hold no message (ready or unacknowledged).
fn assert_queues_empty(broker: &Broker) {
    let qs = broker.queues();
    for (name, messages, _) in &qs {
        assert_eq!(
            *messages, 0,
            "queue {name} still holds {messages} message(s): {qs:?}"
        );
    }
}

async fn wait_queues_empty(broker: &Broker) {
    let start = tokio::time::Instant::now();
    loop {
        if broker.queues().iter().all(|(_, m, _)| *m == 0) {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            assert_queues_empty(broker);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_1000_raised_and_400_cleared_arrives_once_in_order_and_acked() {
    let Some(broker) = amqp_support::shared("scmb storm") else {
        return;
    };
    let _turn = serial().await;
    let (sim, mut consumer, publisher) = connected(broker).await;

    let ids = sim.handle.generate(&GenerateSpec {
        count: 1000,
        ..GenerateSpec::default()
    });
    assert_eq!(ids.clone().count(), 1000);
    let cleared: Vec<u64> = ids.clone().take(400).collect();
    for id in &cleared {
        sim.handle.clear(*id).unwrap();
    }
    let changes = consumer.recv(1400, Duration::from_secs(60)).await;
    assert!(
        publisher
            .wait_published(1400, Duration::from_secs(10))
            .await
    );
    consumer
        .assert_nothing_more(Duration::from_millis(500))
        .await;

    // Per alert, in order: raised, then (for the first 400) cleared; nothing twice.
    let mut by_uri: HashMap<String, Vec<(String, AlertState)>> = HashMap::new();
    for c in &changes {
        by_uri
            .entry(c.alert.uri.clone())
            .or_default()
            .push((c.change_type.clone(), c.alert.alert_state.clone()));
        assert!(c.etag.is_some() && c.timestamp_ms.is_some(), "{c:?}");
    }
    assert_eq!(by_uri.len(), 1000);
    for id in ids {
        let uri = format!("/rest/alerts/{id}");
        let seq = &by_uri[&uri];
        if cleared.contains(&id) {
            assert_eq!(
                seq,
                &vec![
                    ("Created".to_owned(), AlertState::Active),
                    ("Updated".to_owned(), AlertState::Cleared)
                ],
                "{uri}"
            );
        } else {
            assert_eq!(
                seq,
                &vec![("Created".to_owned(), AlertState::Active)],
                "{uri}"
            );
        }
    }
    wait_until("1400 delivered", Duration::from_secs(5), || {
        consumer.metrics.delivered() == 1400
    })
    .await;
    assert_eq!(consumer.metrics.malformed(), 0);
    assert_eq!(consumer.metrics.reconnects(), 0);
    assert!(consumer.metrics.connected());
    // Every message acked: the consumer's queue is empty while it is still bound.
    wait_queues_empty(broker).await;
    let ours: Vec<_> = broker
        .queues()
        .into_iter()
        .filter(|(_, _, consumers)| *consumers == 1)
        .collect();
    assert_eq!(ours.len(), 1, "one consumer queue: {ours:?}");

    publisher.stop().await;
    consumer.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_by_the_broker_and_a_broker_restart_are_reconnected() {
    let Some(broker) = amqp_support::shared("scmb reconnect") else {
        return;
    };
    let _turn = serial().await;
    let (sim, mut consumer, publisher) = connected(broker).await;
    let mut published = 0;
    let mut raise = |n: usize| {
        published += n as u64;
        sim.handle.generate(&GenerateSpec {
            count: n,
            ..GenerateSpec::default()
        })
    };

    let first = raise(10);
    let got = consumer.recv(10, Duration::from_secs(20)).await;
    assert_eq!(got.len(), first.count());

    // The broker closes every connection (the consumer's and the publisher's).
    broker.close_all_connections();
    consumer.wait_connected(2).await;
    assert_eq!(consumer.metrics.reconnects(), 1);
    // Let the publisher reconnect too before the next changes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = raise(10);
    let got = consumer.recv(10, Duration::from_secs(20)).await;
    let uris: Vec<String> = second.map(|id| format!("/rest/alerts/{id}")).collect();
    assert_eq!(
        got.iter().map(|c| c.alert.uri.clone()).collect::<Vec<_>>(),
        uris
    );

    // The broker restarts: the consumer rides it out and reconnects.
    broker.restart();
    consumer.wait_connected(3).await;
    assert!(
        consumer.metrics.reconnects() >= 2,
        "{}",
        consumer.metrics.reconnects()
    );
    assert!(publisher.wait_published(20, Duration::from_secs(1)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let third = raise(10);
    let got = consumer.recv(10, Duration::from_secs(30)).await;
    let uris: Vec<String> = third.map(|id| format!("/rest/alerts/{id}")).collect();
    assert_eq!(
        got.iter().map(|c| c.alert.uri.clone()).collect::<Vec<_>>(),
        uris
    );
    assert!(
        publisher
            .wait_published(published, Duration::from_secs(10))
            .await
    );
    consumer
        .assert_nothing_more(Duration::from_millis(300))
        .await;

    // Down between each connection, with the reason.
    let seen = consumer.seen.lock().unwrap().clone();
    let kinds: Vec<&str> = seen
        .iter()
        .map(|s| match s {
            BusState::Starting => "starting",
            BusState::Connected { .. } => "up",
            BusState::Down { .. } => "down",
        })
        .collect();
    let mut compact = kinds.clone();
    compact.dedup();
    assert_eq!(
        compact,
        ["starting", "up", "down", "up", "down", "up"],
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|s| matches!(s, BusState::Down { reason, .. } if reason.contains("lost"))),
        "{seen:?}"
    );
    assert_eq!(consumer.metrics.delivered(), 30);
    wait_queues_empty(broker).await;

    publisher.stop().await;
    consumer.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_counted_acked_and_skipped() {
    let Some(broker) = amqp_support::shared("scmb malformed") else {
        return;
    };
    let _turn = serial().await;
    let (sim, mut consumer, publisher) = connected(broker).await;
    // Garbage and a message without a resource, published like the appliance's own; then an
    // alert made corrupt (its severity is not a string) and cleared: two malformed updates.
    raw_publish(broker, "scmb.alerts.Created./rest/alerts/1", b"{not json").await;
    raw_publish(
        broker,
        "scmb.alerts.Created./rest/alerts/2",
        br#"{"changeType":"Created","resourceUri":"/rest/alerts/2"}"#,
    )
    .await;
    let id = sim
        .handle
        .generate(&GenerateSpec {
            count: 1,
            ..GenerateSpec::default()
        })
        .start;
    sim.handle.corrupt(id).unwrap();
    sim.handle.clear(id).unwrap();
    let got = consumer.recv(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].change_type, "Created");
    assert_eq!(got[0].alert.uri, format!("/rest/alerts/{id}"));
    wait_until("4 malformed", Duration::from_secs(10), || {
        consumer.metrics.malformed() == 4
    })
    .await;
    consumer
        .assert_nothing_more(Duration::from_millis(500))
        .await;
    // The consumer goes on.
    let more = sim.handle.generate(&GenerateSpec {
        count: 1,
        ..GenerateSpec::default()
    });
    let got = consumer.recv(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].alert.uri, format!("/rest/alerts/{}", more.start));
    wait_until("2 delivered", Duration::from_secs(5), || {
        consumer.metrics.delivered() == 2
    })
    .await;
    assert_eq!(consumer.metrics.malformed(), 4);
    // Acked, the malformed ones too.
    wait_queues_empty(broker).await;
    publisher.stop().await;
    consumer.stop().await;
    sim.stop().await;
}

/// Publishes `body` to the `scmb` exchange as the broker's user.
async fn raw_publish(broker: &Broker, routing_key: &str, body: &[u8]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
    let tls = OwnedTLSConfig {
        identity: Some(OwnedIdentity::PKCS8 {
            pem: broker.pki.client.cert_pem.clone().into_bytes(),
            key: broker.pki.client.key_pem.clone().into_bytes(),
        }),
        cert_chain: Some(broker.pki.ca.cert_pem.clone()),
    };
    let conn = lapin::Connection::connect_with_config(
        &format!(
            "amqps://127.0.0.1:{}/%2f?auth_mechanism=external",
            broker.port
        ),
        lapin::ConnectionProperties::default(),
        tls,
        lapin::runtime::default_runtime().unwrap(),
    )
    .await
    .expect("test publisher connects");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "scmb".into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            lapin::BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    conn.close(200, "done".into()).await.unwrap();
}

fn tls_with(broker: &Broker, cert: &amqp_support::CertKey, ca_pem: &str) -> ScmbTls {
    ScmbTls {
        client_cert_pem: cert.cert_pem.clone(),
        client_key_pem: SecretString::from(cert.key_pem.clone()),
        ca_pem: ca_pem.to_owned(),
        source: format!("test files of broker {}", broker.port),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificates_and_missing_rights_are_clear_errors() {
    let Some(broker) = amqp_support::shared("scmb certificate errors") else {
        return;
    };
    let _turn = serial().await;
    let s = settings(broker);

    // A client certificate from another CA: the broker refuses it.
    let rogue = tls_with(broker, &broker.pki.rogue_client, &broker.pki.ca.cert_pem);
    let e = scmb::probe(&s, &rogue, Duration::ZERO).await.unwrap_err();
    assert!(matches!(e, ScmbError::ClientCertRefused { .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("refused the client certificate"), "{text}");
    assert!(text.contains("keypair/default"), "{text}");
    let mut consumer = Consumer::start(broker, rogue);
    let reason = consumer.wait_down().await;
    assert!(
        reason.contains("refused the client certificate"),
        "{reason}"
    );
    consumer.stop().await;

    // A CA that did not sign the broker's certificate: the bridge refuses the broker.
    let untrusted = tls_with(broker, &broker.pki.client, &broker.pki.other_ca.cert_pem);
    let e = scmb::probe(&s, &untrusted, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(e, ScmbError::UntrustedBroker { .. }), "{e:?}");
    assert!(e.to_string().contains("certType:INTERNAL"), "{e}");
    let mut consumer = Consumer::start(broker, untrusted);
    let reason = consumer.wait_down().await;
    assert!(reason.contains("does not trust"), "{reason}");
    consumer.stop().await;

    // The right pair connects.
    let good = tls_with(broker, &broker.pki.client, &broker.pki.ca.cert_pem);
    scmb::probe(&s, &good, Duration::ZERO)
        .await
        .expect("the valid pair connects");

    // No keypair yet and no right to generate one: the error names the role.
    let sim = oneview_support::start_sim(sim_config(broker, |c| {
        c.scmb_keypair_at_start = false;
        c.scmb_generate_denied = true;
    }))
    .await;
    let cfg = oneview_support::config(&sim.url(), |_| {});
    let client = oneview_support::client(&cfg);
    let e = certs::fetch_tls(&client, &ScmbConfig::default(), FAST)
        .await
        .unwrap_err();
    assert!(
        matches!(e, CertError::NoRightsToGenerate { status: 403, .. }),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("Infrastructure administrator"), "{text}");
    assert!(
        text.contains("/rest/certificates/client/rabbitmq"),
        "{text}"
    );
    assert!(text.contains("AUTHORIZATION"), "{text}");
    assert!(sim.handle.scmb_keypair().is_none());
    sim.stop().await;

    // No keypair yet, with the right: generated through the task, then it connects.
    let sim = oneview_support::start_sim(sim_config(broker, |c| {
        c.scmb_keypair_at_start = false;
        c.scmb_task_polls = 2;
    }))
    .await;
    let tls = tls_from(&sim).await;
    let n = sim.handle.counters();
    assert_eq!(n.requests("keypair_generate"), 1);
    assert_eq!(n.requests("task"), 3, "two Running answers, then Completed");
    assert_eq!(n.requests("keypair"), 2, "404, then the new keypair");
    scmb::probe(&s, &tls, Duration::ZERO)
        .await
        .expect("the generated keypair connects");
    // Asked to generate again, the appliance says it exists: that is success.
    certs::generate(
        &oneview_support::client(&oneview_support::config(&sim.url(), |_| {})),
        FAST,
    )
    .await
    .expect("RABBITMQ_CLIENTCERT_CONFLICT means it exists");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_parses_in_both_shapes_and_files_override_rest() {
    let Some(broker) = amqp_support::shared("scmb CA shapes") else {
        return;
    };
    let _turn = serial().await;
    let want = broker.pki.ca.cert_pem.trim().to_owned();
    for version in [500, 6600] {
        let sim = oneview_support::start_sim(sim_config(broker, |c| {
            c.current_version = version;
        }))
        .await;
        let cfg = oneview_support::config(&sim.url(), |_| {});
        let client = oneview_support::client(&cfg);
        let ca = certs::appliance_ca(&client).await.expect("CA");
        assert_eq!(ca.trim(), want, "API {version}");
        assert_eq!(client.api_version(), Some(version));
        sim.stop().await;
    }
    // Files in [scmb] replace the REST answers: a simulator without keypair or CA is not asked.
    let sim = oneview_support::start_sim(SimConfig::default()).await;
    let cfg = oneview_support::config(&sim.url(), |_| {});
    let client = oneview_support::client(&cfg);
    let scmb_cfg = ScmbConfig {
        client_cert_file: Some(broker.write_file("client.pem", &broker.pki.client.cert_pem)),
        client_key_file: Some(broker.write_file("client.key", &broker.pki.client.key_pem)),
        ca_file: Some(broker.ca_file()),
        ..ScmbConfig::default()
    };
    let tls = certs::fetch_tls(&client, &scmb_cfg, FAST)
        .await
        .expect("files");
    assert_eq!(sim.handle.counters().requests("keypair"), 0);
    assert_eq!(sim.handle.counters().requests("ca"), 0);
    scmb::probe(&settings(broker), &tls, Duration::ZERO)
        .await
        .expect("the files' pair connects");
    sim.stop().await;
}

// ---- the bridge on the bus ------------------------------------------------------------------

/// The assembled bridge (role `all`) watching one simulator whose changes go to `broker`, with
/// polling at 10 minutes either way: whatever reaches PagerDuty within a test came over the
/// bus, or from the REST sync that follows every bus connection.
struct BusBridge {
    sim: RunningSim,
    publisher: ScmbPublisher,
    pd: bridge::sim::pagerduty::SimHandle,
    url: String,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

const PD_KEY: &str = "SCMBBRIDGEKEY0000000000000000001";

impl BusBridge {
    async fn start(broker: &Broker) -> BusBridge {
        Self::start_with(broker, |_| {}, |_| {}).await
    }

    async fn start_with(
        broker: &Broker,
        sim_tweak: impl FnOnce(&mut SimConfig),
        tweak: impl FnOnce(&mut bridge::config::RawConfig),
    ) -> BusBridge {
        let sim = oneview_support::start_sim(sim_config(broker, sim_tweak)).await;
        let publisher = start_publisher(&sim.handle, &format!("amqps://127.0.0.1:{}", broker.port))
            .expect("publisher");
        let pd = bridge::sim::pagerduty::start(
            "127.0.0.1:0".parse().unwrap(),
            bridge::sim::pagerduty::Faults::default(),
        )
        .await
        .unwrap();
        let mut raw = bridge::config::RawConfig::default();
        raw.oneview.url = Some(sim.url());
        raw.oneview.name = Some("ov-bus".to_owned());
        raw.oneview.username = Some("administrator".to_owned());
        raw.oneview.password = Some(SecretString::from("sim-password".to_owned()));
        raw.pagerduty.routing_key = Some(SecretString::from(PD_KEY.to_owned()));
        raw.pagerduty.events_url = pd.events_url();
        raw.pagerduty.retry_initial_delay = Duration::from_millis(50);
        raw.pagerduty.retry_max_delay = Duration::from_millis(200);
        raw.pagerduty.rate_limit_per_minute = 1_000_000;
        raw.poller.interval = Duration::from_secs(600);
        raw.scmb.enabled = true;
        raw.scmb.port = broker.port;
        raw.scmb.poll_interval = Duration::from_secs(600);
        raw.server.listen = "127.0.0.1:0".into();
        raw.server.shutdown_timeout = Duration::from_secs(3);
        raw.server.status_public = true;
        tweak(&mut raw);
        let cfg = bridge::config::validate(raw, bridge::config::Role::All).unwrap();
        let app = bridge::App::build(cfg).await.unwrap();
        let url = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let app = tokio::spawn(async move { app.run(s).await.unwrap() });
        BusBridge {
            sim,
            publisher,
            pd,
            url,
            stop,
            app,
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of a sample line of `/metrics` (`name{labels}`), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Raises `n` critical alerts on the simulator; their ids.
    fn raise(&self, n: usize) -> Vec<u64> {
        self.sim
            .handle
            .generate(&GenerateSpec {
                count: n,
                severity: Some("Critical".into()),
                ..GenerateSpec::default()
            })
            .collect()
    }

    /// Successful full syncs so far.
    async fn full_syncs(&self) -> u64 {
        self.metric(
            "bridge_oneview_polls_total{appliance=\"ov-bus\",kind=\"full\",outcome=\"success\"}",
        )
        .await as u64
    }

    /// Waits until the bus is up, the status page says so, and more than `fulls_before` full
    /// syncs have succeeded (the one after this connection among them).
    /// The `/ready` body once `pred` holds of it; fails the test after `max`.
    async fn wait_ready(
        &self,
        what: &str,
        max: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = tokio::time::Instant::now() + max;
        loop {
            let ready: serde_json::Value = reqwest::get(format!("{}/ready", self.url))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if pred(&ready) {
                return ready;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "not {what} within {max:?}: {ready}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_bus_synced(&self, fulls_before: u64) {
        let start = tokio::time::Instant::now();
        loop {
            let page = reqwest::get(format!("{}/", self.url))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let up = self
                .metric("bridge_scmb_connected{appliance=\"ov-bus\"}")
                .await
                == 1.0;
            let fulls = self.full_syncs().await;
            if up && page.contains("data-bus=\"connected\"") && fulls > fulls_before {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "bus not up and synced: up={up} full syncs={fulls} (before: {fulls_before})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether PagerDuty matches the appliance: every active alert of `ids` has exactly one
    /// incident, open; a cleared one has none (raised and cleared while nobody could see it)
    /// or one, resolved; no key was ever opened twice.
    fn matches_appliance(&self, ids: &[u64]) -> Result<(), String> {
        use bridge::sim::pagerduty::IncidentStatus;
        let mut by_key: HashMap<String, Vec<IncidentStatus>> = HashMap::new();
        for i in self.pd.incidents() {
            by_key
                .entry(i.dedup_key.clone())
                .or_default()
                .push(i.status);
        }
        if let Some((k, v)) = by_key.iter().find(|(_, v)| v.len() > 1) {
            return Err(format!("{k} opened {} times", v.len()));
        }
        for id in ids {
            let state = self.sim.handle.alert(*id).unwrap()["alertState"]
                .as_str()
                .unwrap()
                .to_owned();
            let got = by_key.get(&format!("oneview:ov-bus:/rest/alerts/{id}"));
            let ok = matches!(
                (state.as_str(), got.map(Vec::as_slice)),
                ("Active", Some([IncidentStatus::Triggered]))
                    | ("Cleared", None | Some([IncidentStatus::Resolved]))
            );
            if !ok {
                return Err(format!("alert {id} is {state} but PagerDuty has {got:?}"));
            }
        }
        Ok(())
    }

    async fn wait_matches_appliance(&self, ids: &[u64], max: Duration) {
        let start = tokio::time::Instant::now();
        loop {
            match self.matches_appliance(ids) {
                Ok(()) => return,
                Err(e) if start.elapsed() > max => panic!("after {max:?}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn wait_pd(&self, opened: u64, resolved: u64, max: Duration) {
        let ok = self
            .pd
            .wait_until(max, |pd| {
                let c = pd.counters();
                c.incidents_opened >= opened && c.incidents_resolved >= resolved
            })
            .await;
        let c = self.pd.counters();
        assert!(
            ok,
            "PagerDuty has {} opened / {} resolved, want {opened} / {resolved}",
            c.incidents_opened, c.incidents_resolved
        );
    }

    /// From each alert's `created` (the simulator's clock, which is the wall clock here) to
    /// PagerDuty's 202 for its trigger: (p50, p99) in milliseconds.
    fn trigger_latency_ms(&self) -> (i64, i64) {
        let mut ms: Vec<i64> = self
            .pd
            .accepted()
            .iter()
            .filter(|e| e.event_action.as_deref() == Some("trigger"))
            .filter_map(|e| {
                let id = e.dedup_key.as_deref()?.rsplit('/').next()?.parse().ok()?;
                let created = self.sim.handle.alert(id)?["created"].as_str()?.to_owned();
                let created = chrono::DateTime::parse_from_rfc3339(&created).ok()?;
                Some((e.received_at - created.with_timezone(&chrono::Utc)).num_milliseconds())
            })
            .collect();
        assert!(!ms.is_empty());
        ms.sort_unstable();
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        (at(0.5), at(0.99))
    }

    /// Every alert has exactly one incident: resolved for `cleared`, open for the rest.
    fn assert_exactly_once(&self, ids: &[u64], cleared: &[u64]) {
        use bridge::sim::pagerduty::IncidentStatus;
        let cleared: std::collections::HashSet<u64> = cleared.iter().copied().collect();
        let mut by_key: HashMap<String, Vec<IncidentStatus>> = HashMap::new();
        for i in self.pd.incidents() {
            by_key
                .entry(i.dedup_key.clone())
                .or_default()
                .push(i.status);
        }
        assert_eq!(
            self.pd.counters().incidents_opened as usize,
            ids.len(),
            "none opened twice"
        );
        for id in ids {
            let want = if cleared.contains(id) {
                IncidentStatus::Resolved
            } else {
                IncidentStatus::Triggered
            };
            assert_eq!(
                by_key.get(&format!("oneview:ov-bus:/rest/alerts/{id}")),
                Some(&vec![want]),
                "alert {id}"
            );
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.app)
            .await
            .expect("bridge stops")
            .unwrap();
        self.publisher.stop().await;
        self.pd.shutdown();
        self.sim.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_pages_1000_and_resolves_400_from_the_bus_with_polling_at_10_minutes() {
    let Some(broker) = amqp_support::shared("bridge on the bus") else {
        return;
    };
    let _turn = serial().await;
    let b = BusBridge::start(broker).await;
    b.wait_bus_synced(1).await;
    let lists_before = b.sim.handle.counters().requests("alerts");

    let ids = b.raise(1000);
    let cleared: Vec<u64> = ids.iter().copied().step_by(5).take(200).collect();
    let mut cleared_all = cleared.clone();
    // Half of the clears while the raises are still being delivered, half after.
    for id in &cleared {
        b.sim.handle.clear(*id).unwrap();
    }
    b.wait_pd(1000, 200, Duration::from_secs(120)).await;
    for id in ids.iter().copied().skip(1).step_by(5).take(200) {
        b.sim.handle.clear(id).unwrap();
        cleared_all.push(id);
    }
    b.wait_pd(1000, 400, Duration::from_secs(60)).await;
    b.assert_exactly_once(&ids, &cleared_all);
    let (p50, p99) = b.trigger_latency_ms();
    eprintln!(
        "MEASURED 1000-alert burst over the bus: change to PagerDuty 202 p50 {p50} ms, p99 {p99} ms"
    );

    // It all came over the bus: no poll listed alerts meanwhile.
    assert_eq!(
        b.sim.handle.counters().requests("alerts"),
        lists_before,
        "no REST poll ran during the storm"
    );
    assert_eq!(
        b.metric("bridge_scmb_messages_total{appliance=\"ov-bus\",outcome=\"delivered\"}")
            .await,
        1400.0
    );
    assert_eq!(
        b.metric("bridge_scmb_messages_total{appliance=\"ov-bus\",outcome=\"malformed\"}")
            .await,
        0.0
    );
    assert!(
        b.metric("bridge_scmb_detection_latency_seconds_count{appliance=\"ov-bus\"}")
            .await
            >= 1400.0
    );
    // Every message acked once handed on.
    wait_queues_empty(broker).await;
    // The status page polls at scmb.poll_interval and says the bus is up; /ready has no
    // bus warning.
    let ready: serde_json::Value = reqwest::get(format!("{}/ready", b.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(
        !ready.to_string().contains("scmb:"),
        "no bus warning while it is up: {ready}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_and_a_dropped_connection_mid_storm_lose_nothing_and_page_nothing_twice() {
    let Some(broker) = amqp_support::shared("bridge bus reconnect") else {
        return;
    };
    let _turn = serial().await;
    let b = BusBridge::start(broker).await;
    b.wait_bus_synced(1).await;
    let mut ids = b.raise(300);
    for id in ids.iter().copied().take(50) {
        b.sim.handle.clear(id).unwrap();
    }

    // The broker goes down mid-storm (messages in flight and unacked are gone with it). What
    // the appliance changes meanwhile is published to no queue of ours (the simulator's
    // publisher sends it once the broker is back, before the bridge's backoff lets it
    // reconnect), so only the REST sync after the reconnect can find it.
    let fulls = b.full_syncs().await;
    broker.stop();
    let more = b.raise(200);
    ids.extend(&more);
    for id in more
        .iter()
        .copied()
        .take(40)
        .chain(ids.iter().copied().skip(100).take(30))
    {
        b.sim.handle.clear(id).unwrap();
    }
    broker.start_again();
    b.wait_bus_synced(fulls).await;
    b.wait_matches_appliance(&ids, Duration::from_secs(90))
        .await;

    // The broker drops the connection: reconnect and sync again; the changes meanwhile come
    // over the bus or from that sync.
    let fulls = b.full_syncs().await;
    broker.close_all_connections();
    let more = b.raise(100);
    ids.extend(&more);
    for id in more.iter().copied().take(10) {
        b.sim.handle.clear(id).unwrap();
    }
    b.wait_bus_synced(fulls).await;
    b.wait_matches_appliance(&ids, Duration::from_secs(90))
        .await;
    assert!(
        b.metric("bridge_scmb_reconnects_total{appliance=\"ov-bus\"}")
            .await
            >= 2.0
    );
    // Settle: nothing arrives late, and nothing was re-triggered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    b.matches_appliance(&ids).unwrap();
    let active = ids
        .iter()
        .filter(|id| b.sim.handle.alert(**id).unwrap()["alertState"] == "Active")
        .count();
    assert_eq!(active, 600 - 50 - 40 - 30 - 10);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_and_a_repeated_message_page_nothing_and_a_deletion_resolves() {
    let Some(broker) = amqp_support::shared("bridge bus stale") else {
        return;
    };
    let _turn = serial().await;
    let b = BusBridge::start(broker).await;
    b.wait_bus_synced(1).await;
    let id = b.raise(1)[0];
    b.wait_pd(1, 0, Duration::from_secs(20)).await;
    let (one, _) = b.trigger_latency_ms();
    eprintln!("MEASURED one alert over an idle bus: change to PagerDuty 202 in {one} ms");
    let active = b.sim.handle.alert(id).unwrap();
    // The same message again: nothing new.
    let again = bridge::sim::oneview::scmb::message(
        &active,
        "Created",
        chrono::Utc::now().timestamp_millis(),
    );
    raw_publish(broker, &again.routing_key, &again.body).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    b.sim.handle.clear(id).unwrap();
    b.wait_pd(1, 1, Duration::from_secs(20)).await;
    let cleared = b.sim.handle.alert(id).unwrap();
    // The raise again after the clear (an older version overtaking it), then the clear twice.
    let old = bridge::sim::oneview::scmb::message(
        &active,
        "Updated",
        chrono::Utc::now().timestamp_millis(),
    );
    raw_publish(broker, &old.routing_key, &old.body).await;
    let twice = bridge::sim::oneview::scmb::message(
        &cleared,
        "Updated",
        chrono::Utc::now().timestamp_millis(),
    );
    raw_publish(broker, &twice.routing_key, &twice.body).await;
    let start = tokio::time::Instant::now();
    while b
        .metric("bridge_scmb_messages_total{appliance=\"ov-bus\",outcome=\"stale\"}")
        .await
        < 3.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "three stale messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = b.pd.counters();
    assert_eq!((c.incidents_opened, c.incidents_resolved), (1, 1));
    assert_eq!(
        b.pd.accepted().len(),
        2,
        "one trigger and one resolve: {:?}",
        b.pd.accepted()
    );

    // An alert deleted on the appliance (its last version, unchanged, in a Deleted message)
    // resolves over the bus.
    let gone = b.raise(1)[0];
    b.wait_pd(2, 1, Duration::from_secs(20)).await;
    b.sim.handle.delete(gone).unwrap();
    b.wait_pd(2, 2, Duration::from_secs(20)).await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_keypair_or_the_right_to_generate_it_the_bridge_says_why_and_keeps_polling() {
    let Some(broker) = amqp_support::shared("bridge bus no keypair") else {
        return;
    };
    let _turn = serial().await;
    let b = BusBridge::start_with(
        broker,
        |c| {
            c.scmb_keypair_at_start = false;
            c.scmb_generate_denied = true;
        },
        |raw| raw.poller.interval = Duration::from_secs(1),
    )
    .await;
    // /ready: ready, with a warning that names the appliance and the role needed.
    let ready = b
        .wait_ready("a bus warning", Duration::from_secs(30), |r| {
            r.to_string().contains("scmb:ov-bus") && r["status"] == "ready"
        })
        .await;
    let warning = ready["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["condition"] == "scmb:ov-bus")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        warning.contains("Infrastructure administrator"),
        "{warning}"
    );
    assert!(warning.contains("polling"), "{warning}");
    assert_eq!(
        b.metric("bridge_scmb_connected{appliance=\"ov-bus\"}")
            .await,
        0.0
    );
    let page = reqwest::get(format!("{}/", b.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("data-bus=\"down\""),
        "status page shows the bus down"
    );
    assert!(page.contains("Infrastructure administrator"));

    // Polling at poller.interval pages and resolves meanwhile.
    let ids = b.raise(5);
    b.wait_pd(5, 0, Duration::from_secs(30)).await;
    b.sim.handle.clear(ids[0]).unwrap();
    b.wait_pd(5, 1, Duration::from_secs(30)).await;
    b.assert_exactly_once(&ids, &ids[..1]);
    assert_eq!(
        b.metric("bridge_scmb_messages_total{appliance=\"ov-bus\",outcome=\"delivered\"}")
            .await,
        0.0,
        "nothing came over the bus"
    );
    b.stop().await;
}

/// The appliance renews its CA: the broker comes back with a certificate the bridge's CA no
/// longer verifies. After three refusals the bridge reads its certificates again at once (the
/// CA file now holds the new CA), reconnects, and runs the full sync that every new connection
/// gets, even though the connection is the first of a new consumer: the alert raised while the
/// bus was down is paged, with polling at 10 minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_ca_is_read_again_at_once_and_the_new_connection_resyncs_what_the_bus_missed() {
    let Some(broker) = Broker::start("bridge bus renewed CA") else {
        return;
    };
    let _turn = serial().await;
    let ca_file = broker.write_file("bridge-ca.pem", &broker.pki.ca.cert_pem);
    let b = BusBridge::start_with(
        &broker,
        |_| {},
        |raw| raw.scmb.ca_file = Some(ca_file.clone()),
    )
    .await;
    b.wait_bus_synced(1).await;
    let fulls = b.full_syncs().await;
    let refused_before = b
        .metric("bridge_scmb_reconnects_total{appliance=\"ov-bus\"}")
        .await;

    broker.reissue_server_cert(&broker.pki.other_ca);
    tokio::task::block_in_place(|| broker.stop());
    let missed = b.raise(1);
    std::fs::write(&ca_file, &broker.pki.other_ca.cert_pem).unwrap();
    tokio::task::block_in_place(|| broker.start_again());
    b.wait_ready(
        "the new broker certificate refused",
        Duration::from_secs(90),
        |r| r.to_string().contains("does not trust"),
    )
    .await;
    let first_refusal = tokio::time::Instant::now();

    b.wait_bus_synced(fulls).await;
    // Two more refusals take 1-2 + 2-4 s of reconnect backoff (reset by the first refusal:
    // the broker answers); a reading of the certificates after a failed one waits at least
    // 30 s. Well inside that: read again at once.
    let took = first_refusal.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "reconnected {took:?} after the first refusal: the certificates were not read again at once"
    );
    assert!(
        b.metric("bridge_scmb_reconnects_total{appliance=\"ov-bus\"}")
            .await
            >= refused_before + 3.0,
        "the old CA was refused three times first"
    );
    b.wait_pd(1, 0, Duration::from_secs(30)).await;
    b.assert_exactly_once(&missed, &[]);
    b.stop().await;
}

/// `check-scmb`, the command that proves a bus before `scmb.enabled` is turned on: with the
/// keypair over REST it connects, counts the alert messages that arrive while it listens and
/// exits 0, though `scmb.enabled` is off (and says so); on an appliance without a keypair whose
/// user may not generate one it exits 1 naming the role that can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_scmb_proves_a_bus_before_it_is_enabled_and_names_what_is_wrong() {
    let Some(broker) = amqp_support::shared("check-scmb") else {
        return;
    };
    let _turn = serial().await;
    let run = |sim: &RunningSim, listen: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_oneview-pagerduty-bridge"));
        cmd.args(["check-scmb", "--listen", listen])
            .env_clear()
            .env("BRIDGE_ONEVIEW__URL", sim.url())
            .env("BRIDGE_ONEVIEW__NAME", "ov-probe")
            .env("BRIDGE_ONEVIEW__USERNAME", "administrator")
            .env("BRIDGE_ONEVIEW__PASSWORD", "sim-password")
            .env("BRIDGE_PAGERDUTY__ROUTING_KEY", PD_KEY)
            .env("BRIDGE_SCMB__PORT", broker.port.to_string())
            .env("BRIDGE_LOG__LEVEL", "error")
            .kill_on_drop(true);
        cmd.output()
    };

    let sim = oneview_support::start_sim(sim_config(broker, |_| {})).await;
    let publisher = start_publisher(&sim.handle, &format!("amqps://127.0.0.1:{}", broker.port))
        .expect("publisher");
    let probing = run(&sim, "3s");
    let raise = async {
        // Once the probe's queue is bound (it connects within a second or two), these reach it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = sim.handle.generate(&GenerateSpec {
            count: 3,
            severity: Some("Critical".into()),
            ..GenerateSpec::default()
        });
    };
    let (out, ()) = tokio::join!(probing, raise);
    let out = out.expect("check-scmb runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("ok ") && l.contains("ov-probe"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        line.contains(&format!("amqps://127.0.0.1:{} connected in", broker.port)),
        "{line}"
    );
    assert!(line.contains("3 alert messages in 3s"), "{line}");
    assert!(line.contains("scmb.enabled is off"), "{line}");
    publisher.stop().await;
    sim.stop().await;

    let sim = oneview_support::start_sim(sim_config(broker, |c| {
        c.scmb_keypair_at_start = false;
        c.scmb_generate_denied = true;
    }))
    .await;
    let out = run(&sim, "1s").await.expect("check-scmb runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("ov-probe"))
        .unwrap_or_else(|| panic!("{stdout}{stderr}"));
    assert!(line.contains("Infrastructure administrator"), "{line}");
    assert!(stderr.contains("polling is not affected"), "{stderr}");
    sim.stop().await;
}
