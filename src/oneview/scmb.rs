//! The SCMB consumer: OneView's State-Change Message Bus, AMQP 0-9-1 over TLS at the
//! appliance host (`scmb.port`, 5671), SASL EXTERNAL with the appliance's RabbitMQ client
//! certificate ([`super::certs`] reads it over REST), trusting the appliance CA alone with the
//! appliance host as the server name.
//!
//! It owns one appliance's bus connection: exchange `scmb` (topic), a server-named exclusive
//! auto-delete queue bound to `scmb.alerts.#`, manual acks with a bounded prefetch, reconnects
//! with jittered backoff, the bus state ([`BusState`], a `watch`), and the `bridge_scmb_*`
//! metrics. Every message's `resource` is decoded by the REST decoder into the same
//! [`Alert`] a poll produces and handed to the sink as a [`ScmbChange`], unacknowledged: the
//! poller calls [`ScmbChange::done`] once the change is in the delivery pipeline (whose outbox
//! is durable) or found stale, so the prefetch bounds the changes between the broker and the
//! pipeline. A change the pipeline never took is not acked; the queue is exclusive, so it goes
//! with the connection, which is why the poller runs a REST sync after every (re)connect
//! ([`BusState::Connected`] carries a new connection number). A message that is not an alert
//! change is counted as `malformed`, acked and skipped.
//!
//! What it does not decide: whether a change is newer than one already processed, and what to
//! page. The message carries `eTag`, `timestamp` and the alert's `modified` for that.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::atomic::AtomicU64;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::model::Alert;
use crate::oneview::collection::parse_timestamp;

/// OneView's SCMB exchange.
pub const EXCHANGE: &str = "scmb";
/// The alert changes: `scmb.alerts.<Created|Updated|Deleted>.<uri>`.
pub const ALERTS_BINDING: &str = "scmb.alerts.#";

/// The client certificate, its key and the CA to trust, all PEM. `Debug` leaves the key out.
#[derive(Clone)]
pub struct ScmbTls {
    pub client_cert_pem: String,
    /// PKCS#8 or PKCS#1 (`BEGIN RSA PRIVATE KEY`), as [`super::certs`] normalises it.
    pub client_key_pem: SecretString,
    /// The appliance CA: the only one the connection trusts.
    pub ca_pem: String,
    /// Where these came from (`REST /rest/certificates/...` or the `scmb.*_file` paths), for
    /// the advice of an error.
    pub source: String,
}

impl std::fmt::Debug for ScmbTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScmbTls")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ScmbSettings {
    /// The appliance id (`oneview.name`): the `appliance` label and log field.
    pub appliance: String,
    /// The appliance host (from `oneview.url`): where the broker is and the TLS server name.
    pub host: String,
    pub port: u16,
    pub prefetch: u16,
    /// Reconnect backoff bounds (jittered, exponential).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// TCP connect + TLS + AMQP handshake, queue declare and bind.
    pub connect_timeout: Duration,
}

impl ScmbSettings {
    /// Settings for an appliance from its `[oneview]` and the `[scmb]` section.
    pub fn new(ov: &crate::config::OneViewConfig, scmb: &crate::config::ScmbConfig) -> Self {
        Self {
            appliance: ov.name.clone(),
            host: ov.url.host_str().unwrap_or_default().to_owned(),
            port: scmb.port,
            prefetch: scmb.prefetch,
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            connect_timeout: ov.connect_timeout.max(Duration::from_secs(5)),
        }
    }

    /// `amqps://host:port`.
    pub fn endpoint(&self) -> String {
        format!("amqps://{}:{}", self.host, self.port)
    }
}

/// The bus connection as the poller and the status page see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusState {
    /// Before the first attempt.
    Starting,
    /// Consuming; `since` is when this connection came up (a new value after every reconnect:
    /// the cue for a REST resync).
    Connected { since: Instant, connection: u64 },
    /// Not consuming: why, and since when. Polling covers it. `connections` is the number of
    /// the last connection before it (0: none yet).
    Down {
        reason: String,
        since: Instant,
        connections: u64,
    },
}

impl BusState {
    pub fn is_connected(&self) -> bool {
        matches!(self, BusState::Connected { .. })
    }

    /// Connections made so far. A new [`run`] (after the certificates were read again) numbers
    /// its connections on from here, so the poller, which syncs after every connection whose
    /// number it has not synced yet, resyncs after that one too.
    pub fn connections(&self) -> u64 {
        match self {
            BusState::Starting => 0,
            BusState::Connected { connection, .. } => *connection,
            BusState::Down { connections, .. } => *connections,
        }
    }
}

/// One alert change from the bus. Its message stays unacknowledged until [`ScmbChange::done`]:
/// whoever takes it calls that once the change is in the delivery pipeline (or found stale).
#[derive(Debug, Clone)]
pub struct ScmbChange {
    /// The message's `resource`, decoded as a REST member is.
    pub alert: Alert,
    /// `Created`, `Updated` or `Deleted` as sent. Not what to act on: a clear can come as
    /// `Created` with state `Cleared`.
    pub change_type: String,
    pub etag: Option<String>,
    /// The message's `timestamp` as sent, and in unix milliseconds when it parses.
    pub timestamp: Option<String>,
    pub timestamp_ms: Option<i64>,
    pub resource_uri: Option<String>,
    /// The message's acknowledgement and its accounting; empty once done (and for a change
    /// decoded outside a connection).
    ack: Option<PendingAck>,
}

/// What [`ScmbChange::done`] acknowledges and counts.
#[derive(Clone)]
struct PendingAck {
    acker: lapin::Acker,
    metrics: ScmbMetrics,
}

impl std::fmt::Debug for PendingAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingAck")
    }
}

/// What became of a change from the bus, for `bridge_scmb_messages_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Handed to the change path (whether or not it changed what PagerDuty must hear).
    Delivered,
    /// A version already processed (a duplicate, or older than one seen): skipped.
    Stale,
}

impl ScmbChange {
    /// Acknowledges the message and counts it; for a delivered change, observes the detection
    /// latency (the message's timestamp, on the appliance's clock, to now). Call it once the
    /// change is in the delivery pipeline: a change dropped before that is never acked, so the
    /// broker keeps it until the connection closes, and the REST resync after the reconnect
    /// reads it. A second call does nothing.
    pub async fn done(&mut self, outcome: Handled) -> Result<(), ScmbError> {
        let Some(p) = self.ack.take() else {
            return Ok(());
        };
        match outcome {
            Handled::Delivered => {
                p.metrics.delivered.inc();
                if let Some(ms) = self.timestamp_ms {
                    let now = chrono::Utc::now().timestamp_millis();
                    // A clock behind the appliance's would give a negative latency.
                    p.metrics
                        .latency
                        .observe(((now - ms).max(0) as f64) / 1000.0);
                }
            }
            Handled::Stale => {
                p.metrics.stale.inc();
            }
        }
        p.acker
            .ack(BasicAckOptions::default())
            .await
            .map(|_| ())
            .map_err(|e| ScmbError::Lost {
                endpoint: "the message bus".to_owned(),
                detail: format!("basic.ack failed: {e}"),
            })
    }
}

/// Why the bus cannot be used. Each names what is wrong and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScmbError {
    #[error(
        "SCMB {what} ({source_}) is not usable: {detail}; fix the file or remove the scmb.*_file setting to read it from the appliance"
    )]
    BadPem {
        what: &'static str,
        source_: String,
        detail: String,
    },
    #[error(
        "the SCMB broker {endpoint} presented a certificate the appliance CA ({source_}) does not trust: {detail}; the CA must be the appliance's internal CA (GET /rest/certificates/ca?filter=certType:INTERNAL, or scmb.ca_file), and the host in oneview.url must be a name in the broker's certificate"
    )]
    UntrustedBroker {
        endpoint: String,
        source_: String,
        detail: String,
    },
    #[error(
        "the SCMB broker {endpoint} refused the client certificate ({source_}): {detail}; the keypair must be the appliance's RabbitMQ client certificate (GET /rest/certificates/client/rabbitmq/keypair/default), regenerated keypairs must be read again, and the clocks of bridge and appliance must agree"
    )]
    ClientCertRefused {
        endpoint: String,
        source_: String,
        detail: String,
    },
    #[error(
        "the SCMB broker {endpoint} refused the login with the client certificate ({source_}): {detail}; the certificate's common name must be a broker user (OneView's keypair \"default\")"
    )]
    LoginRefused {
        endpoint: String,
        source_: String,
        detail: String,
    },
    #[error(
        "cannot connect to the SCMB broker {endpoint}: {detail}; check scmb.port (default 5671) and that the appliance is reachable on it"
    )]
    Connect { endpoint: String, detail: String },
    #[error(
        "the SCMB broker {endpoint} did not answer within {timeout:?}; check scmb.port and the network path"
    )]
    Timeout { endpoint: String, timeout: Duration },
    #[error("SCMB {step} on {endpoint} failed: {detail}")]
    Protocol {
        endpoint: String,
        step: &'static str,
        detail: String,
    },
    #[error("the SCMB connection to {endpoint} was lost: {detail}")]
    Lost { endpoint: String, detail: String },
}

// ---- metrics ---------------------------------------------------------------------------

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApplianceLabels {
    appliance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    appliance: String,
    outcome: &'static str,
}

/// Values of `bridge_scmb_messages_total{outcome}`.
pub const MESSAGE_OUTCOMES: [&str; 3] = ["delivered", "stale", "malformed"];

/// The `bridge_scmb_*` families, registered once; each series carries the `appliance` label
/// (bounded by the configuration).
#[derive(Clone)]
pub struct ScmbFamilies {
    connected: Family<ApplianceLabels, Gauge>,
    messages: Family<OutcomeLabels, Counter>,
    reconnects: Family<ApplianceLabels, Counter>,
    since_last: Family<ApplianceLabels, Gauge<f64, AtomicU64>>,
    latency: Family<ApplianceLabels, Histogram, fn() -> Histogram>,
}

impl ScmbFamilies {
    pub fn register(registry: &mut Registry) -> Self {
        let f = Self {
            connected: Family::default(),
            messages: Family::default(),
            reconnects: Family::default(),
            since_last: Family::default(),
            latency: Family::new_with_constructor(
                crate::metrics::latency_histogram as fn() -> Histogram,
            ),
        };
        registry.register(
            "bridge_scmb_connected",
            "Whether the appliance's message bus connection is up (1) or not (0)",
            f.connected.clone(),
        );
        registry.register(
            "bridge_scmb_messages",
            "Message bus messages by outcome: delivered to the change path, stale (a version already processed, skipped) or malformed (skipped)",
            f.messages.clone(),
        );
        registry.register(
            "bridge_scmb_reconnects",
            "Message bus reconnects after a lost or failed connection",
            f.reconnects.clone(),
        );
        registry.register(
            "bridge_scmb_seconds_since_last_message",
            "Seconds since the last message bus message (since the consumer started, before the first)",
            f.since_last.clone(),
        );
        registry.register(
            "bridge_scmb_detection_latency_seconds",
            "From an alert change message's timestamp (the appliance's clock) to its handover to the change path",
            f.latency.clone(),
        );
        f
    }

    /// One appliance's series, created at zero.
    pub fn appliance(&self, appliance: &str) -> ScmbMetrics {
        let a = ApplianceLabels {
            appliance: appliance.to_owned(),
        };
        // One statement each: a family's guard lives to the end of its statement, and a
        // second `get_or_create` on the same family within it would wait for that guard.
        let outcome = |outcome: &'static str| OutcomeLabels {
            appliance: appliance.to_owned(),
            outcome,
        };
        let connected = self.connected.get_or_create(&a).clone();
        let delivered = self.messages.get_or_create(&outcome("delivered")).clone();
        let stale = self.messages.get_or_create(&outcome("stale")).clone();
        let malformed = self.messages.get_or_create(&outcome("malformed")).clone();
        let reconnects = self.reconnects.get_or_create(&a).clone();
        let since_last = self.since_last.get_or_create(&a).clone();
        let latency = self.latency.get_or_create(&a).clone();
        let m = ScmbMetrics {
            connected,
            delivered,
            stale,
            malformed,
            reconnects,
            since_last,
            latency,
        };
        m.connected.set(0);
        m
    }
}

/// One appliance's `bridge_scmb_*` series.
#[derive(Clone)]
pub struct ScmbMetrics {
    connected: Gauge,
    delivered: Counter,
    stale: Counter,
    malformed: Counter,
    reconnects: Counter,
    since_last: Gauge<f64, AtomicU64>,
    latency: Histogram,
}

impl ScmbMetrics {
    /// Series not registered anywhere (tools and tests that do not export metrics).
    pub fn unregistered(appliance: &str) -> Self {
        ScmbFamilies::register(&mut Registry::default()).appliance(appliance)
    }
    pub fn delivered(&self) -> u64 {
        self.delivered.get()
    }
    pub fn stale(&self) -> u64 {
        self.stale.get()
    }
    pub fn malformed(&self) -> u64 {
        self.malformed.get()
    }
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }
    pub fn connected(&self) -> bool {
        self.connected.get() == 1
    }
}

// ---- decoding --------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message<'a> {
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(default)]
    change_type: Option<String>,
    #[serde(default)]
    e_tag: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    resource_uri: Option<String>,
}

/// Decodes one SCMB message body into an alert change; `Err` says why it is not one.
pub fn decode(body: &[u8]) -> Result<ScmbChange, String> {
    let m: Message<'_> =
        serde_json::from_slice(body).map_err(|e| format!("not an SCMB message: {e}"))?;
    let resource = m.resource.ok_or("no resource in the message")?;
    // The REST members' decoder (collection::decode_page): one definition of an alert.
    let alert: Alert = serde_json::from_str(resource.get())
        .map_err(|e| format!("the resource is not an alert: {e}"))?;
    if alert.uri.is_empty() {
        return Err("the resource is an alert without a uri".to_owned());
    }
    let change_type = m.change_type.ok_or("no changeType in the message")?;
    Ok(ScmbChange {
        alert,
        change_type,
        timestamp_ms: m.timestamp.as_deref().and_then(parse_timestamp),
        timestamp: m.timestamp,
        etag: m.e_tag,
        resource_uri: m.resource_uri,
        ack: None,
    })
}

// ---- connection ------------------------------------------------------------------------

/// Why a consuming session ended.
enum Ended {
    /// Shutdown, or the sink is gone: stop for good.
    Stop,
    /// The connection failed or was lost: reconnect.
    Failed(ScmbError),
}

/// Consumes the appliance's alert changes until `shutdown`, reconnecting with jittered
/// exponential backoff (`reconnect_min` to `reconnect_max`, reset after a connection that came
/// up). Publishes every state change on `state`; returns `None` when `shutdown` is cancelled
/// or the sink's receiver is dropped.
///
/// Returns the error when the TLS material cannot be right: it does not parse, or the broker
/// refused it (client certificate, EXTERNAL login, or a broker the CA did not sign)
/// [`REFUSALS_BEFORE_REREAD`] times in a row. The caller reads it again (a keypair regenerated
/// on the appliance, a renewed CA, a rotated Secret) and calls `run` with it.
pub async fn run(
    settings: ScmbSettings,
    tls: ScmbTls,
    sink: mpsc::Sender<ScmbChange>,
    state: watch::Sender<BusState>,
    metrics: ScmbMetrics,
    shutdown: CancellationToken,
) -> Option<ScmbError> {
    let backoff = || {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(settings.reconnect_min)
            .with_max_delay(settings.reconnect_max)
            .without_max_times()
            .build()
    };
    let mut connections = state.borrow().connections();
    if let Err(e) = check_tls(&tls) {
        // Retrying cannot help: the material has to change, which means a new `run`.
        tracing::error!(appliance = %settings.appliance, error = %e, "SCMB not started; polling covers the appliance");
        state.send_replace(BusState::Down {
            reason: e.to_string(),
            since: Instant::now(),
            connections,
        });
        return Some(e);
    }
    let mut delays = backoff();
    let mut refusals = 0u32;
    let mut last_message = Instant::now();
    let mut attempts: u64 = 0;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if attempts > 0 {
            metrics.reconnects.inc();
        }
        attempts += 1;
        let ended = match tokio::select! {
            _ = shutdown.cancelled() => None,
            r = connect(&settings, &tls) => Some(r),
        } {
            None => Ended::Stop,
            Some(Err(e)) => Ended::Failed(e),
            Some(Ok((conn, consumer))) => {
                connections += 1;
                delays = backoff();
                metrics.connected.set(1);
                tracing::info!(appliance = %settings.appliance, endpoint = %settings.endpoint(), "SCMB connected");
                state.send_replace(BusState::Connected {
                    since: Instant::now(),
                    connection: connections,
                });
                let ended = consume(
                    &settings,
                    consumer,
                    &sink,
                    &metrics,
                    &shutdown,
                    &mut last_message,
                )
                .await;
                metrics.connected.set(0);
                // Best effort: the broker drops the exclusive queue with the connection.
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    conn.close(200, "bridge stopping".into()),
                )
                .await;
                ended
            }
        };
        match ended {
            Ended::Stop => break,
            Ended::Failed(e) => {
                if e.is_refusal() {
                    // The broker answers, so the backoff built up while it was unreachable
                    // says nothing now: the next tries (and then a new reading of the
                    // certificates) come seconds apart, not minutes.
                    if refusals == 0 {
                        delays = backoff();
                    }
                    refusals += 1;
                } else {
                    refusals = 0;
                }
                let delay = delays.next().unwrap_or(settings.reconnect_max);
                tracing::warn!(appliance = %settings.appliance, error = %e, retry_in = ?delay, "SCMB down; polling covers the appliance");
                state.send_replace(BusState::Down {
                    reason: e.to_string(),
                    since: Instant::now(),
                    connections,
                });
                metrics.since_last.set(last_message.elapsed().as_secs_f64());
                if refusals >= REFUSALS_BEFORE_REREAD {
                    metrics.connected.set(0);
                    return Some(e);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    metrics.connected.set(0);
    state.send_replace(BusState::Down {
        reason: "the bridge is stopping".to_owned(),
        since: Instant::now(),
        connections,
    });
    None
}

/// What [`probe`] saw on one appliance's bus.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub endpoint: String,
    /// From the start of the TLS handshake to the queue bound and consuming.
    pub connected_in: Duration,
    /// Alert messages received while listening, and how many of them were malformed.
    pub messages: u64,
    pub malformed: u64,
}

/// Connects once as [`run`] does (TLS with `tls`, SASL EXTERNAL, the `scmb` exchange, a queue
/// of its own bound to `scmb.alerts.#`), listens for `listen`, counting (and acking) the alert
/// messages that arrive, and closes. The `check-scmb` command: proof that an appliance's bus
/// works with the bridge before `scmb.enabled` is turned on, and a diagnosis when it does not.
pub async fn probe(
    settings: &ScmbSettings,
    tls: &ScmbTls,
    listen: Duration,
) -> Result<ProbeReport, ScmbError> {
    check_tls(tls)?;
    let t0 = Instant::now();
    let (conn, mut consumer) = connect(settings, tls).await?;
    let connected_in = t0.elapsed();
    let (mut messages, mut malformed) = (0u64, 0u64);
    let until = Instant::now() + listen;
    let ended = loop {
        let next = tokio::select! {
            _ = tokio::time::sleep_until(until) => break None,
            n = consumer.next() => n,
        };
        match next {
            None => break Some("the broker ended the consumer".to_owned()),
            Some(Err(e)) => break Some(e.to_string()),
            Some(Ok(d)) => {
                messages += 1;
                if decode(&d.data).is_err() {
                    malformed += 1;
                }
                if let Err(e) = d.ack(BasicAckOptions::default()).await {
                    break Some(format!("basic.ack failed: {e}"));
                }
            }
        }
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        conn.close(200, "bridge probe done".into()),
    )
    .await;
    if let Some(detail) = ended {
        return Err(ScmbError::Lost {
            endpoint: settings.endpoint(),
            detail,
        });
    }
    Ok(ProbeReport {
        endpoint: settings.endpoint(),
        connected_in,
        messages,
        malformed,
    })
}

/// The largest AMQP frame the bridge asks for (see `connect`).
const FRAME_MAX: u32 = 16_384;

/// Refused connections in a row after which [`run`] hands the TLS material back to be read
/// again: once could be a broker restarting with a new CA, three is the material.
pub const REFUSALS_BEFORE_REREAD: u32 = 3;

impl ScmbError {
    /// The broker or the bridge refused the TLS material itself: a different certificate, key
    /// or CA is what helps, not another attempt with the same.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ScmbError::BadPem { .. }
                | ScmbError::UntrustedBroker { .. }
                | ScmbError::ClientCertRefused { .. }
                | ScmbError::LoginRefused { .. }
        )
    }
}

/// One connection attempt: TLS + EXTERNAL login, the queue bound to the alerts, consuming.
async fn connect(
    s: &ScmbSettings,
    tls: &ScmbTls,
) -> Result<(Connection, lapin::Consumer), ScmbError> {
    let endpoint = s.endpoint();
    // lapin (4.12) never settles a connect whose TLS session the broker ends with an alert
    // (it refused our certificate), and dropping that pending connect blocks on its I/O
    // thread. So the TLS session is tried on its own first, and the lapin connect runs in a
    // task of its own that a timeout leaves behind rather than drops.
    match tokio::time::timeout(s.connect_timeout, preflight(s, tls)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(ScmbError::Timeout {
                endpoint,
                timeout: s.connect_timeout,
            });
        }
    }
    let timeout = s.connect_timeout;
    let s = s.clone();
    let tls = tls.clone();
    let work = async move {
        let endpoint = s.endpoint();
        let tls = &tls;
        let s = &s;
        let tls_config = OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: tls.client_cert_pem.as_bytes().to_vec(),
                key: tls.client_key_pem.expose_secret().as_bytes().to_vec(),
            }),
            cert_chain: Some(tls.ca_pem.clone()),
        };
        // frame_max: lapin keeps 32 frames of buffer each way, 8 MiB at RabbitMQ's default
        // of 128 KiB (resident once traffic has gone through them); an alert message is a
        // few KiB, so 16 KiB frames cost 1 MiB and split nothing that matters.
        let uri = format!(
            "amqps://{}:{}/%2f?auth_mechanism=external&heartbeat=30&frame_max={FRAME_MAX}",
            s.host, s.port
        );
        let props = ConnectionProperties::default()
            .with_connection_name(format!("oneview-pagerduty-bridge {}", s.appliance).into());
        let runtime = lapin::runtime::default_runtime().map_err(|e| ScmbError::Connect {
            endpoint: endpoint.clone(),
            detail: e.to_string(),
        })?;
        let conn = Connection::connect_with_config(&uri, props, tls_config, runtime)
            .await
            .map_err(|e| classify(&endpoint, tls, &e))?;
        let _ = &endpoint;
        let step = |step: &'static str| {
            let endpoint = s.endpoint();
            move |e: lapin::Error| ScmbError::Protocol {
                endpoint,
                step,
                detail: e.to_string(),
            }
        };
        let channel = conn.create_channel().await.map_err(step("channel.open"))?;
        channel
            .basic_qos(s.prefetch, BasicQosOptions::default())
            .await
            .map_err(step("basic.qos"))?;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    durable: false,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(step("queue.declare"))?;
        channel
            .queue_bind(
                queue.name().clone(),
                EXCHANGE.into(),
                ALERTS_BINDING.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(step("queue.bind (exchange scmb)"))?;
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "oneview-pagerduty-bridge".into(),
                BasicConsumeOptions {
                    no_ack: false,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(step("basic.consume"))?;
        Ok((conn, consumer))
    };
    let mut task = tokio::spawn(work);
    match tokio::time::timeout(timeout, &mut task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(ScmbError::Connect {
            endpoint,
            detail: format!("the connect task failed: {e}"),
        }),
        // Left running, not dropped (see above).
        Err(_) => Err(ScmbError::Timeout { endpoint, timeout }),
    }
}

/// The AMQP greeting over a TLS session of our own: the broker's certificate against the
/// appliance CA, then (TLS 1.3 tells the client only after the handshake) whether the broker
/// accepts our certificate, which it shows by answering the protocol header.
async fn preflight(s: &ScmbSettings, tls: &ScmbTls) -> Result<(), ScmbError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let endpoint = s.endpoint();
    let bad = |what: &'static str, detail: String| ScmbError::BadPem {
        what,
        source_: tls.source.clone(),
        detail,
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let c = c.map_err(|e| bad("CA", e.to_string()))?;
        roots.add(c).map_err(|e| bad("CA", e.to_string()))?;
    }
    let certs = CertificateDer::pem_slice_iter(tls.client_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("client certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(tls.client_key_pem.expose_secret().as_bytes())
        .map_err(|e| bad("client key", e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("client certificate", e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| {
            bad(
                "client key",
                format!("does not go with the certificate: {e}"),
            )
        })?;
    let name = ServerName::try_from(s.host.clone()).map_err(|e| ScmbError::Connect {
        endpoint: endpoint.clone(),
        detail: format!("the appliance host is not a TLS server name: {e}"),
    })?;
    let tcp = tokio::net::TcpStream::connect((s.host.as_str(), s.port))
        .await
        .map_err(|e| ScmbError::Connect {
            endpoint: endpoint.clone(),
            detail: e.to_string(),
        })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let refused = |detail: String| ScmbError::ClientCertRefused {
        endpoint: endpoint.clone(),
        source_: tls.source.clone(),
        detail,
    };
    let mut stream = match connector.connect(name, tcp).await {
        Ok(st) => st,
        Err(e) => {
            let detail = chain(&e);
            let ours = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
            return Err(if ours {
                ScmbError::UntrustedBroker {
                    endpoint: endpoint.clone(),
                    source_: tls.source.clone(),
                    detail,
                }
            } else if detail.contains("alert") {
                refused(detail)
            } else {
                ScmbError::Connect {
                    endpoint: endpoint.clone(),
                    detail,
                }
            });
        }
    };
    let io = |e: std::io::Error| {
        let d = chain(&e);
        if d.contains("alert") || e.kind() == std::io::ErrorKind::ConnectionReset {
            refused(d)
        } else {
            ScmbError::Connect {
                endpoint: endpoint.clone(),
                detail: d,
            }
        }
    };
    stream
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        // A method frame: connection.start.
        Ok(1) if first[0] == 1 => {}
        Ok(0) => return Err(refused("the broker closed the TLS session".to_owned())),
        Ok(_) => {
            return Err(ScmbError::Protocol {
                endpoint: endpoint.clone(),
                step: "protocol header",
                detail: "the broker does not speak AMQP 0-9-1".to_owned(),
            });
        }
        Err(e) => return Err(io(e)),
    }
    let _ = stream.shutdown().await;
    Ok(())
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// A connection error in terms of what to fix: rustls's certificate verdict on the broker, the
/// broker's TLS alert about ours, or its refusal of the EXTERNAL login.
fn classify(endpoint: &str, tls: &ScmbTls, e: &lapin::Error) -> ScmbError {
    let mut detail = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !detail.contains(&s) {
            detail.push_str(": ");
            detail.push_str(&s);
        }
        cur = c.source();
    }
    let endpoint = endpoint.to_owned();
    let source_ = tls.source.clone();
    let lower = detail.to_ascii_lowercase();
    if lower.contains("invalid peer certificate") || lower.contains("unknownissuer") {
        ScmbError::UntrustedBroker {
            endpoint,
            source_,
            detail,
        }
    } else if lower.contains("received fatal alert")
        || lower.contains("certificaterequired")
        || lower.contains("bad certificate")
    {
        ScmbError::ClientCertRefused {
            endpoint,
            source_,
            detail,
        }
    } else if lower.contains("access_refused")
        || lower.contains("access-refused")
        || lower.contains("accessrefused")
        || lower.contains("login was refused")
    {
        ScmbError::LoginRefused {
            endpoint,
            source_,
            detail,
        }
    } else if lower.contains("key") && (lower.contains("pem") || lower.contains("private")) {
        ScmbError::BadPem {
            what: "client key",
            source_,
            detail,
        }
    } else {
        ScmbError::Connect { endpoint, detail }
    }
}

async fn consume(
    s: &ScmbSettings,
    mut consumer: lapin::Consumer,
    sink: &mpsc::Sender<ScmbChange>,
    metrics: &ScmbMetrics,
    shutdown: &CancellationToken,
    last_message: &mut Instant,
) -> Ended {
    let endpoint = s.endpoint();
    let lost = |detail: String| {
        Ended::Failed(ScmbError::Lost {
            endpoint: endpoint.clone(),
            detail,
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ended::Stop,
            _ = tick.tick() => {
                metrics.since_last.set(last_message.elapsed().as_secs_f64());
                continue;
            }
            n = consumer.next() => n,
        };
        let delivery = match next {
            None => return lost("the broker ended the consumer".to_owned()),
            Some(Err(e)) => return lost(e.to_string()),
            Some(Ok(d)) => d,
        };
        *last_message = Instant::now();
        metrics.since_last.set(0.0);
        match decode(&delivery.data) {
            Ok(mut change) => {
                // The receiver acks once the change is in the delivery pipeline; the prefetch
                // bounds how many wait for that.
                change.ack = Some(PendingAck {
                    acker: delivery.acker.clone(),
                    metrics: metrics.clone(),
                });
                let handed = tokio::select! {
                    _ = shutdown.cancelled() => false,
                    r = sink.send(change) => r.is_ok(),
                };
                if !handed {
                    // Not acked: the broker drops it with the queue; the resync at the next
                    // start covers it.
                    return Ended::Stop;
                }
            }
            Err(why) => {
                metrics.malformed.inc();
                tracing::warn!(appliance = %s.appliance, routing_key = %delivery.routing_key, error = %why, "SCMB message skipped");
                if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
                    return lost(format!("basic.ack failed: {e}"));
                }
            }
        }
    }
}

/// The TLS material as given, checked: the certificate and the key parse, and the CA holds at
/// least one certificate. Catches a bad file or answer before the first connection attempt.
pub fn check_tls(tls: &ScmbTls) -> Result<(), ScmbError> {
    use rustls_pki::pem::PemObject;
    use rustls_pki::{CertificateDer, PrivateKeyDer};
    let bad = |what: &'static str, detail: String| ScmbError::BadPem {
        what,
        source_: tls.source.clone(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(tls.client_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("client certificate", e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "client certificate",
            "no PEM certificate in it".to_owned(),
        ));
    }
    PrivateKeyDer::from_pem_slice(tls.client_key_pem.expose_secret().as_bytes())
        .map_err(|e| bad("client key", e.to_string()))?;
    let ca = CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("CA", e.to_string()))?;
    if ca.is_empty() {
        return Err(bad("CA", "no PEM certificate in it".to_owned()));
    }
    Ok(())
}

use tokio_rustls::rustls::pki_types as rustls_pki;

/// Shared handle on a bus's state, for a status page.
pub type BusStateReceiver = watch::Receiver<BusState>;

/// A new state channel starting at [`BusState::Starting`].
pub fn state_channel() -> (watch::Sender<BusState>, BusStateReceiver) {
    watch::channel(BusState::Starting)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/oneview/scmb_alert_message.json"
    ));

    #[test]
    fn the_fixture_decodes_with_the_rest_decoder() {
        let c = decode(FIXTURE.as_bytes()).expect("fixture decodes");
        assert_eq!(c.alert.uri, "/rest/alerts/49");
        // A clear that arrives as "Created": the state is what counts.
        assert_eq!(c.change_type, "Created");
        assert!(c.alert.is_cleared());
        assert_eq!(c.timestamp.as_deref(), Some("2018-02-12T20:12:03.231Z"));
        assert!(c.timestamp_ms.is_some());
    }

    #[test]
    fn malformed_messages_say_why() {
        assert!(
            decode(b"not json")
                .unwrap_err()
                .contains("not an SCMB message")
        );
        assert!(
            decode(br#"{"changeType":"Created"}"#)
                .unwrap_err()
                .contains("no resource")
        );
        assert!(
            decode(
                br#"{"changeType":"Created","resource":{"uri":"/rest/alerts/1","severity":[1]}}"#
            )
            .unwrap_err()
            .contains("not an alert")
        );
        assert!(
            decode(br#"{"changeType":"Created","resource":{"severity":"Critical"}}"#)
                .unwrap_err()
                .contains("without a uri")
        );
    }
}
