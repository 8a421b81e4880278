//! The HTTP listener: accepting connections and serving them (HTTP/1.1 with keep-alive, through
//! hyper), and everything a slow or hostile client could hold: the header-read and keep-alive
//! idle timeouts, the connection cap, JSON bodies for the errors hyper answers on its own
//! (400, 414, 431), the connection metrics, and graceful shutdown.
//!
//! Why not `axum::serve` or hyper's `header_read_timeout`: neither closes anything an attacker
//! holds. hyper's header timer starts whenever the connection waits for a request head,
//! including the whole wait between keep-alive requests, so it cannot be 10 s for headers and
//! 75 s for keep-alive at once. Here one deadline per connection follows its phase:
//!
//! - waiting for the first request: `header_read_timeout` from the accept (a connection that
//!   never sends a byte, or sends it slowly, is closed);
//! - waiting for the next request on a keep-alive connection: `idle_timeout` from the end of
//!   the last response (or the last byte of it written, for a slow reader);
//! - reading a later request's head: `header_read_timeout` from its first byte;
//! - a request in a handler: no deadline here (the routes' `server.request_timeout` bounds it).
//!
//! At `max_connections`, a new connection is not refused (a refused liveness probe restarts the
//! pod): the connection that has gone longest without a request in a handler (idle keep-alive,
//! half-sent head, or never sent anything) is closed to make room; only when every connection
//! has a request in a handler is the one whose request has run longest closed. Holding the
//! cap therefore only shortens how long idle connections live (an attacker's, being the
//! oldest idle, go first; a legitimate keep-alive client reconnects), and `/health` is always
//! answered. The cap is also kept below half the process' descriptor limit, and running out
//! of descriptors anyway (`EMFILE` on accept) closes the longest-idle connection too.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::HeadLimits;
use crate::config::ServerConfig;

/// What the listener enforces; from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub head: HeadLimits,
}

impl Limits {
    pub fn from_config(c: &ServerConfig) -> Self {
        Self {
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            max_connections: c.max_connections,
            head: HeadLimits {
                max_uri_length: c.max_uri_length,
                max_header_bytes: c.max_header_bytes,
            },
        }
    }

    /// hyper's read buffer: a head up to this size reaches our own checks (which answer with
    /// a precise JSON 414/431); a larger one is refused by hyper (431, rewritten to JSON here).
    /// It also bounds what a half-sent head can make a connection hold in memory.
    fn hyper_buffer(&self) -> usize {
        (self.head.max_header_bytes + self.head.max_uri_length + 8 * 1024).max(8 * 1024)
    }
}

/// Why a connection was closed: the `reason` label of `bridge_http_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed it (or asked for `Connection: close`).
    Client,
    /// The request line and headers did not arrive within `server.header_read_timeout`.
    HeaderTimeout,
    /// A keep-alive connection waited longer than `server.idle_timeout` for its next request.
    IdleTimeout,
    /// Closed to make room for a new connection at `server.max_connections` (or when the
    /// process ran out of file descriptors): it had no request in a handler.
    Cap,
    /// Closed to make room while every connection had a request in a handler: the one whose
    /// request had run longest.
    CapInFlight,
    /// A request hyper could not parse (answered 400, 414 or 431 with a JSON body).
    Malformed,
    /// Any other I/O or protocol error.
    Error,
    /// The process is stopping.
    Shutdown,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Client,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::Cap,
        CloseReason::CapInFlight,
        CloseReason::Malformed,
        CloseReason::Error,
        CloseReason::Shutdown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Cap => "cap",
            CloseReason::CapInFlight => "cap_in_flight",
            CloseReason::Malformed => "malformed",
            CloseReason::Error => "error",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    reason: &'static str,
}

/// Metrics of the listener.
#[derive(Clone)]
pub struct ConnectionMetrics {
    open: Gauge,
    max: Gauge,
    closed: Family<CloseLabels, Counter>,
}

impl ConnectionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let open = Gauge::default();
        let max = Gauge::default();
        let closed = Family::<CloseLabels, Counter>::default();
        for r in CloseReason::ALL {
            let _ = closed.get_or_create(&CloseLabels { reason: r.as_str() });
        }
        registry.register(
            "bridge_http_connections_open",
            "HTTP connections open now",
            open.clone(),
        );
        registry.register(
            "bridge_http_connections_max",
            "Connections served at once: server.max_connections, or half the file-descriptor limit when that is lower",
            max.clone(),
        );
        registry.register(
            "bridge_http_connections_closed",
            "HTTP connections closed, by reason (client, header_timeout, idle_timeout, cap, cap_in_flight, malformed, error, shutdown)",
            closed.clone(),
        );
        Self { open, max, closed }
    }

    fn closed(&self, r: CloseReason) {
        self.closed
            .get_or_create(&CloseLabels { reason: r.as_str() })
            .inc();
    }
}

// ---------------------------------------------------------------------------------------------
// Per-connection state
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// No byte of a new request yet: since the accept, or since the last response moved.
    Waiting { since: Instant },
    /// Bytes of a request head arrived; the head is due `header_read_timeout` after `since`.
    Head { since: Instant },
    /// A request is in a handler.
    Busy,
}

#[derive(Debug)]
struct ConnState {
    phase: Phase,
    /// Requests handed to the router so far.
    served: u64,
    in_flight: u32,
    /// Since when no request has been in a handler (eviction order among idle connections).
    free_since: Instant,
    /// Since when the current request has been in a handler (eviction order among busy ones).
    busy_since: Instant,
    /// Responses a handler returned whose head hyper has not started writing yet: a status
    /// line written while this is zero is hyper's own (see `Io::hyper_error_status`).
    responses_unwritten: u32,
    /// Set by whoever decides to close the connection, so the metric says why.
    closing: Option<CloseReason>,
}

struct Conn {
    id: u64,
    peer: SocketAddr,
    state: Mutex<ConnState>,
    evict: CancellationToken,
    /// Woken when the deadline may have moved earlier (a head started, a request began or
    /// ended), so the connection's timer is re-armed.
    changed: tokio::sync::Notify,
}

impl Conn {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        // A panic while holding this lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close_as(&self, r: CloseReason) {
        self.lock().closing.get_or_insert(r);
    }

    fn is_busy(&self) -> bool {
        self.lock().in_flight > 0
    }

    /// The current deadline and what passing it means; `None` while a request is in a handler.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, CloseReason)> {
        let s = self.lock();
        match s.phase {
            Phase::Busy => None,
            Phase::Waiting { since } if s.served == 0 => Some((
                since + limits.header_read_timeout,
                CloseReason::HeaderTimeout,
            )),
            Phase::Waiting { since } => {
                Some((since + limits.idle_timeout, CloseReason::IdleTimeout))
            }
            Phase::Head { since } => Some((
                since + limits.header_read_timeout,
                CloseReason::HeaderTimeout,
            )),
        }
    }
}

/// Held while a request is in a handler; dropping it (also on cancellation) makes the
/// connection idle again.
struct InFlight(Arc<Conn>);

impl InFlight {
    fn begin(conn: Arc<Conn>) -> Self {
        {
            let mut s = conn.lock();
            s.in_flight += 1;
            s.served += 1;
            if s.in_flight == 1 {
                s.busy_since = Instant::now();
            }
            s.phase = Phase::Busy;
        }
        conn.changed.notify_one();
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            let now = Instant::now();
            s.free_since = now;
            s.phase = Phase::Waiting { since: now };
        }
        drop(s);
        self.0.changed.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// The socket wrapper: deadlines and hyper's automatic error responses
// ---------------------------------------------------------------------------------------------

/// The connection's socket as hyper sees it: it moves the connection's phase as bytes come
/// and go, and replaces hyper's empty error responses with JSON ones.
struct Io {
    inner: TcpStream,
    conn: Arc<Conn>,
    limits: Limits,
    /// Our JSON replacement of hyper's empty error response, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl Io {
    fn new(inner: TcpStream, conn: Arc<Conn>, limits: Limits) -> Self {
        Self {
            inner,
            conn,
            limits,
            replacement: None,
        }
    }

    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = self.replacement.as_mut() {
            if *done == bytes.len() {
                self.replacement = None;
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// What hyper is writing: a status line is either a handler's response (one is due),
    /// `100 Continue`, or hyper's own answer to a request it could not parse: a complete head
    /// with status 400, 414 or 431 and `content-length: 0` while no response is due and no
    /// request is in a handler. Nothing is counted here: hyper writes the same buffer again
    /// after a `Pending`.
    fn classify(&self, buf: &[u8]) -> Outgoing {
        let Some(rest) = buf
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))
        else {
            return Outgoing::Bytes;
        };
        if rest.starts_with(b"100 ") {
            return Outgoing::Bytes;
        }
        {
            let s = self.conn.lock();
            if s.responses_unwritten > 0 || s.in_flight > 0 {
                return Outgoing::Response;
            }
        }
        let status = match rest.get(..4) {
            Some(b"400 ") => 400,
            Some(b"414 ") => 414,
            Some(b"431 ") => 431,
            _ => return Outgoing::Bytes,
        };
        let empty = buf.ends_with(b"\r\n\r\n")
            && std::str::from_utf8(buf)
                .is_ok_and(|h| h.to_ascii_lowercase().contains("\r\ncontent-length: 0\r\n"));
        if empty {
            Outgoing::HyperError(status)
        } else {
            Outgoing::Bytes
        }
    }

    fn replacement_for(&self, status: u16) -> Vec<u8> {
        let id = uuid::Uuid::new_v4().to_string();
        let (error, message) = match status {
            414 => (
                "uri_too_long",
                format!(
                    "the request target is too long for this server (server.max_uri_length is {} bytes)",
                    self.limits.head.max_uri_length
                ),
            ),
            431 => (
                "headers_too_large",
                format!(
                    "the request line and headers exceed {} bytes or 100 header fields (server.max_header_bytes is {} bytes)",
                    self.limits.hyper_buffer(),
                    self.limits.head.max_header_bytes
                ),
            ),
            _ => (
                "bad_request",
                "the request is not valid HTTP/1.1 (malformed request line, header or framing)"
                    .to_owned(),
            ),
        };
        tracing::debug!(
            status,
            error,
            peer = %self.conn.peer,
            request_id = %id,
            "request refused before routing"
        );
        raw_response(status, &super::error_body(error, &message, &id))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    /// The start of a handler's response.
    Response,
    /// hyper's own empty error response, with its status.
    HyperError(u16),
    /// Anything else (the rest of a response, `100 Continue`).
    Bytes,
}

/// A complete `Connection: close` response with a JSON body and the headers every answer
/// carries (see `super::security_headers`).
fn raw_response(status: u16, body: &str) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\ncontent-security-policy: {}\r\nx-content-type-options: nosniff\r\nx-frame-options: DENY\r\nreferrer-policy: no-referrer\r\n\r\n{body}",
        body.len(),
        super::DEFAULT_CSP,
    )
    .into_bytes()
}

impl AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut s = self.conn.lock();
                    if let Phase::Waiting { since } = s.phase {
                        // The first request's head is due from the accept, a later one's from
                        // its first byte.
                        let since = if s.served == 0 { since } else { Instant::now() };
                        s.phase = Phase::Head { since };
                        drop(s);
                        self.conn.changed.notify_one();
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_replacement(cx))?;
        let kind = self.classify(buf);
        if let Outgoing::HyperError(status) = kind {
            self.conn.close_as(CloseReason::Malformed);
            self.replacement = Some((self.replacement_for(status), 0));
            // hyper's bytes are taken in full; ours follow now or on flush.
            return match self.poll_replacement(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    let mut s = self.conn.lock();
                    if kind == Outgoing::Response {
                        s.responses_unwritten = s.responses_unwritten.saturating_sub(1);
                    }
                    // A response still moving is not idle (a slow but live reader).
                    if let Phase::Waiting { .. } = s.phase {
                        s.phase = Phase::Waiting {
                            since: Instant::now(),
                        };
                    }
                }
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// The listener
// ---------------------------------------------------------------------------------------------

struct Server {
    router: Router,
    limits: Limits,
    /// `limits.max_connections`, lowered to half the descriptor limit if that is less.
    cap: usize,
    metrics: ConnectionMetrics,
    builder: hyper::server::conn::http1::Builder,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    stop: CancellationToken,
    /// When the cap was last reported in the log (at most once a minute).
    cap_logged: Mutex<Option<Instant>>,
}

impl Server {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks and closes the connection that costs least to lose: the one longest without a
    /// request in a handler, else the one whose request has run longest.
    fn evict_one(conns: &mut HashMap<u64, Arc<Conn>>) -> Option<CloseReason> {
        let victim = conns
            .values()
            .map(|c| {
                let s = c.lock();
                let busy = s.in_flight > 0;
                let since = if busy { s.busy_since } else { s.free_since };
                (busy, since, c.id)
            })
            .min()?;
        let conn = conns.remove(&victim.2)?;
        let reason = if victim.0 {
            CloseReason::CapInFlight
        } else {
            CloseReason::Cap
        };
        conn.close_as(reason);
        conn.evict.cancel();
        Some(reason)
    }

    /// Says in the log, at most once a minute, that connections are being closed to make room.
    fn log_cap(&self, why: &str) {
        let mut last = self.cap_logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60)) {
            *last = Some(now);
            tracing::warn!(
                max_connections = self.cap,
                "{why}: closing the connection longest without a request in progress (or else the longest-running request) to make room; logged at most once a minute, counted in bridge_http_connections_closed_total{{reason=~\"cap|cap_in_flight\"}}"
            );
        }
    }

    fn admit(&self, peer: SocketAddr) -> Arc<Conn> {
        let now = Instant::now();
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            state: Mutex::new(ConnState {
                phase: Phase::Waiting { since: now },
                served: 0,
                in_flight: 0,
                free_since: now,
                busy_since: now,
                responses_unwritten: 0,
                closing: None,
            }),
            evict: CancellationToken::new(),
            changed: tokio::sync::Notify::new(),
        });
        let mut conns = self.conns();
        while conns.len() >= self.cap {
            if Self::evict_one(&mut conns).is_none() {
                break;
            }
            self.log_cap("server.max_connections reached");
        }
        conns.insert(conn.id, conn.clone());
        conn
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, conn: Arc<Conn>) {
        self.metrics.open.inc();
        let _closed = Closed {
            server: self.clone(),
            conn: conn.clone(),
        };
        let peer = conn.peer;
        let head = self.limits.head;
        let router = self.router.clone();
        let for_svc = conn.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let in_flight = InFlight::begin(for_svc.clone());
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(head);
            let router = router.clone();
            async move {
                let resp = router.oneshot(req).await;
                in_flight.0.lock().responses_unwritten += 1;
                drop(in_flight);
                resp
            }
        });
        let io = Io::new(stream, conn.clone(), self.limits);
        let served = self.builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(served);
        let mut stopping = false;
        let result = loop {
            let deadline = conn.deadline(&self.limits);
            let timer = tokio::time::sleep_until(deadline.map_or_else(far_future, |d| d.0));
            tokio::select! {
                r = served.as_mut() => break Some(r),
                _ = conn.evict.cancelled() => break None,
                _ = conn.changed.notified() => {}
                _ = timer, if deadline.is_some() => {
                    // Re-read: a write may have pushed the deadline while the timer ran.
                    if let Some((at, reason)) = conn.deadline(&self.limits)
                        && at <= Instant::now() {
                            conn.close_as(reason);
                            break None;
                        }
                }
                _ = self.stop.cancelled(), if !stopping => {
                    conn.close_as(CloseReason::Shutdown);
                    if !conn.is_busy() {
                        break None;
                    }
                    // The request in its handler finishes, then hyper closes.
                    stopping = true;
                    served.as_mut().graceful_shutdown();
                }
            }
        };
        let reason = conn.lock().closing;
        let reason = reason.unwrap_or(match &result {
            None | Some(Ok(())) => CloseReason::Client,
            Some(Err(e)) if e.is_parse() || e.is_parse_too_large() => CloseReason::Malformed,
            Some(Err(e)) if e.is_incomplete_message() || e.is_canceled() => CloseReason::Client,
            Some(Err(e)) => {
                let client_gone = std::error::Error::source(e)
                    .and_then(|s| s.downcast_ref::<io::Error>())
                    .is_some_and(|io| {
                        matches!(
                            io.kind(),
                            io::ErrorKind::ConnectionReset
                                | io::ErrorKind::BrokenPipe
                                | io::ErrorKind::ConnectionAborted
                        )
                    });
                if client_gone {
                    CloseReason::Client
                } else {
                    tracing::debug!(peer = %peer, error = %e, "HTTP connection failed");
                    CloseReason::Error
                }
            }
        });
        conn.close_as(reason);
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Accounts for a connection when its task ends, however it ends.
struct Closed {
    server: Arc<Server>,
    conn: Arc<Conn>,
}

impl Drop for Closed {
    fn drop(&mut self) {
        self.server.conns().remove(&self.conn.id);
        let reason = self.conn.lock().closing.unwrap_or(CloseReason::Client);
        self.server.metrics.open.dec();
        self.server.metrics.closed(reason);
        tracing::trace!(peer = %self.conn.peer, reason = reason.as_str(), "connection closed");
    }
}

/// The process' soft limit of open files (Linux; `None` elsewhere or when unreadable).
fn fd_soft_limit() -> Option<usize> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// The connection cap in force: the configured one, or half the descriptor limit when that
/// is lower (the other half is for the state file, the OneView and PagerDuty connection pools,
/// logs, and accepting at all).
pub fn effective_cap(configured: usize, fd_limit: Option<usize>) -> usize {
    match fd_limit {
        Some(l) => configured.min((l / 2).max(1)),
        None => configured,
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting, closes idle
/// connections at once and lets requests in handlers finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
) -> io::Result<()> {
    let fd_limit = fd_soft_limit();
    let cap = effective_cap(limits.max_connections, fd_limit);
    if cap < limits.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            open_files_limit = fd_limit,
            effective = cap,
            "server.max_connections is more than half the open-files limit; serving at most {cap} connections (raise the limit: ulimit -n, LimitNOFILE, or the container runtime's nofile)"
        );
    }
    metrics.max.set(i64::try_from(cap).unwrap_or(i64::MAX));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        // Our own deadlines replace it (see the module docs).
        .header_read_timeout(None)
        .max_buf_size(limits.hyper_buffer());
    let server = Arc::new(Server {
        router,
        limits,
        cap,
        metrics,
        builder,
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        stop: stop.clone(),
        cap_logged: Mutex::new(None),
    });
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = server.admit(peer);
                tasks.spawn(server.clone().connection(stream, conn));
            }
            Err(e) if is_out_of_descriptors(&e) => {
                // The connection waits in the backlog; free a descriptor for it.
                Server::evict_one(&mut server.conns());
                server.log_cap(&format!(
                    "out of file descriptors ({e}; raise the open-files limit)"
                ));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // A connection reset while waiting in the backlog, and the like: the next one.
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
    Ok(())
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23) on Linux and the BSDs.
    matches!(e.raw_os_error(), Some(23 | 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_half_the_descriptor_limit_when_lower() {
        assert_eq!(effective_cap(512, Some(256)), 128);
        assert_eq!(effective_cap(512, Some(1024)), 512);
        assert_eq!(effective_cap(512, Some(1_048_576)), 512);
        assert_eq!(effective_cap(512, None), 512);
    }

    #[tokio::test]
    async fn only_an_empty_error_head_with_no_response_due_is_hyper_s_own() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let now = Instant::now();
        let conn = Arc::new(Conn {
            id: 0,
            peer,
            state: Mutex::new(ConnState {
                phase: Phase::Waiting { since: now },
                served: 1,
                in_flight: 0,
                free_since: now,
                busy_since: now,
                responses_unwritten: 1,
                closing: None,
            }),
            evict: CancellationToken::new(),
            changed: tokio::sync::Notify::new(),
        });
        let limits = Limits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_connections: 4,
            head: HeadLimits {
                max_uri_length: 8192,
                max_header_bytes: 32768,
            },
        };
        let io = Io::new(stream, conn.clone(), limits);
        let empty_400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        // A handler's bare 400 is due: left alone, and asking twice (hyper retries a write
        // after Pending) does not use up the count.
        assert_eq!(io.classify(empty_400), Outgoing::Response);
        assert_eq!(io.classify(empty_400), Outgoing::Response);
        assert_eq!(conn.lock().responses_unwritten, 1);
        conn.lock().responses_unwritten = 0;
        assert_eq!(io.classify(empty_400), Outgoing::HyperError(400));
        assert_eq!(
            io.classify(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
            ),
            Outgoing::HyperError(431)
        );
        assert_eq!(
            io.classify(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"),
            Outgoing::Bytes
        );
        assert_eq!(
            io.classify(b"HTTP/1.1 100 Continue\r\n\r\n"),
            Outgoing::Bytes
        );
        assert_eq!(io.classify(b"{\"error\":\"x\"}"), Outgoing::Bytes);
        drop(client);
    }

    #[test]
    fn every_reason_has_a_distinct_label() {
        let mut labels: Vec<_> = CloseReason::ALL.iter().map(|r| r.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), CloseReason::ALL.len());
    }
}
