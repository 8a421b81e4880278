//! The HTTP listener against hostile and careless clients, over raw TCP on 127.0.0.1: slowloris
//! and silent connections are closed after `server.header_read_timeout`, idle keep-alive ones
//! after `server.idle_timeout` (and not sooner), `/health` answers while the connection cap is
//! held by idle, half-sent or in-flight connections (also in a child process with only 256
//! file descriptors), over-long URIs, over-large headers and garbage get JSON errors, and a
//! shutdown finishes in-flight requests while idle connections do not hold it.
//!
//! Real sockets cannot run on paused time: timeouts here are short (hundreds of milliseconds)
//! and every wait is bounded; assertions are on what the server did (bytes, closes, counts).

mod bridge_proc;

use std::time::Duration;

use bridge::config::{self, RawConfig, Role};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "hostile-test-token";
/// Every wait on the server is bounded by this.
const BOUND: Duration = Duration::from_secs(10);

struct Running {
    addr: std::net::SocketAddr,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.handle)
            .await
            .expect("the bridge stops")
            .unwrap();
    }
}

fn raw() -> RawConfig {
    let mut r = RawConfig::default();
    r.server.listen = "127.0.0.1:0".into();
    r.server.api_tokens = Some(secrecy::SecretString::from(TOKEN.to_owned()));
    r.server.drain_delay = Duration::ZERO;
    r.server.shutdown_timeout = Duration::from_secs(5);
    r
}

async fn start(r: RawConfig) -> Running {
    let cfg = config::validate(r, Role::Web).expect("valid config");
    let app = bridge::App::build(cfg).await.expect("app builds");
    let addr = app.local_addr();
    let stop = CancellationToken::new();
    let t = stop.clone();
    let handle = tokio::spawn(async move { app.run(t).await.expect("app runs") });
    Running { addr, stop, handle }
}

/// How a connection ended from the client's side.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The server closed it (FIN or reset) after sending these bytes.
    Closed(Vec<u8>),
    /// Still open when the wait ended, with these bytes received.
    Open(Vec<u8>),
}

/// Reads until the server closes the connection or `wait` passes.
async fn read_to_end(s: &mut TcpStream, wait: Duration) -> End {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 16 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return End::Open(got),
            Ok(Ok(0)) | Ok(Err(_)) => return End::Closed(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A response read off a raw socket: status, lower-cased headers, body.
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn parse(bytes: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(bytes);
    let (head, _) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete response head in {text:?}"));
    let head_len = head.len() + 4;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let body = bytes[head_len..head_len + len].to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// Reads exactly one response (by `content-length`) and leaves the connection open.
async fn read_response(s: &mut TcpStream) -> Resp {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .expect("a response within the bound")
            .unwrap();
        assert!(n > 0, "closed before a full response: {got:?}");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= head.len() + 4 + len {
                return parse(&got);
            }
        }
    }
}

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    tokio::time::timeout(BOUND, TcpStream::connect(addr))
        .await
        .expect("connect within the bound")
        .unwrap()
}

/// One request on a fresh connection with `Connection: close`; the whole answer.
async fn request(addr: std::net::SocketAddr, raw_request: &[u8]) -> Resp {
    let mut s = connect(addr).await;
    s.write_all(raw_request).await.unwrap();
    match read_to_end(&mut s, BOUND).await {
        End::Closed(b) => parse(&b),
        End::Open(b) => panic!(
            "the server kept the connection open: {:?}",
            String::from_utf8_lossy(&b)
        ),
    }
}

async fn health(addr: std::net::SocketAddr) -> Resp {
    request(
        addr,
        b"GET /health HTTP/1.1\r\nhost: bridge\r\nconnection: close\r\n\r\n",
    )
    .await
}

/// The classic-text `/metrics` of the bridge.
async fn metrics(addr: std::net::SocketAddr) -> String {
    let r = request(
        addr,
        b"GET /metrics HTTP/1.1\r\nhost: bridge\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

fn sample(m: &str, series: &str) -> f64 {
    m.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{m}"))
}

fn closed(m: &str, reason: &str) -> f64 {
    sample(
        m,
        &format!("bridge_http_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

const PARTIAL_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nhost: bridge\r\nx-slow: ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_closed_after_the_header_read_timeout() {
    let mut r = raw();
    r.server.header_read_timeout = Duration::from_millis(300);
    let b = start(r).await;
    let before = metrics(b.addr).await;
    for reason in [
        "client",
        "header_timeout",
        "idle_timeout",
        "cap",
        "cap_in_flight",
        "malformed",
        "error",
        "shutdown",
    ] {
        assert_eq!(closed(&before, reason), 0.0, "{reason} created at zero");
    }

    const EACH: usize = 20;
    // Half-sent: part of a head, then nothing.
    let mut half = Vec::new();
    for _ in 0..EACH {
        let mut s = connect(b.addr).await;
        s.write_all(PARTIAL_HEAD).await.unwrap();
        half.push(s);
    }
    // Slowloris proper: a byte of header every 50 ms, for as long as the server takes it.
    let mut trickle = Vec::new();
    for _ in 0..EACH {
        let s = connect(b.addr).await;
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            if wr.write_all(PARTIAL_HEAD).await.is_err() {
                return;
            }
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if wr.write_all(b"a").await.is_err() {
                    return;
                }
            }
        });
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout(BOUND, rd.read(&mut buf)).await {
                    Err(_) => return false,
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => {}
                }
            }
        });
        trickle.push((writer, reader));
    }
    // Silent: connects and never sends a byte.
    let mut silent = Vec::new();
    for _ in 0..EACH {
        silent.push(connect(b.addr).await);
    }

    for mut s in half {
        // Closed without an answer, like the silent ones: nginx and Go do the same, and a
        // client that cannot send its head in time is not reading one either.
        assert_eq!(
            read_to_end(&mut s, BOUND).await,
            End::Closed(Vec::new()),
            "a half-sent connection was held open"
        );
    }
    for (writer, reader) in trickle {
        assert!(
            reader.await.unwrap(),
            "a slowloris connection was held open"
        );
        writer.abort();
    }
    for mut s in silent {
        // Nothing was asked, so nothing is answered.
        assert_eq!(read_to_end(&mut s, BOUND).await, End::Closed(Vec::new()));
    }

    assert_eq!(health(b.addr).await.status, 200);
    let m = metrics(b.addr).await;
    assert_eq!(closed(&m, "header_timeout"), (3 * EACH) as f64, "{m}");
    assert_eq!(closed(&m, "cap"), 0.0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_waits_for_the_idle_timeout_not_the_header_timeout_then_closes() {
    let mut r = raw();
    r.server.header_read_timeout = Duration::from_millis(200);
    r.server.idle_timeout = Duration::from_secs(2);
    let b = start(r).await;
    let mut s = connect(b.addr).await;
    let get = b"GET /health HTTP/1.1\r\nhost: bridge\r\n\r\n";
    s.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    // Three header timeouts later the keep-alive connection still serves.
    tokio::time::sleep(Duration::from_millis(600)).await;
    s.write_all(get).await.unwrap();
    assert_eq!(read_response(&mut s).await.status, 200);
    // Then, idle, it is closed without a word (a 408 here could be taken for the answer to a
    // request the client is just sending).
    assert_eq!(read_to_end(&mut s, BOUND).await, End::Closed(Vec::new()));

    let m = metrics(b.addr).await;
    assert_eq!(closed(&m, "idle_timeout"), 1.0, "{m}");
    assert_eq!(closed(&m, "header_timeout"), 0.0, "{m}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_the_cap_is_held_and_the_longest_idle_connections_make_room() {
    const CAP: usize = 16;
    let mut r = raw();
    // Timeouts far beyond the test: only the cap can free a slot.
    r.server.header_read_timeout = Duration::from_secs(60);
    r.server.idle_timeout = Duration::from_secs(60);
    r.server.max_connections = CAP;
    let b = start(r).await;

    // An attacker keeps opening connections, rotating silent, half-sent and idle keep-alive.
    const HELD: usize = 36;
    let mut held = Vec::new();
    for i in 0..HELD {
        let mut s = connect(b.addr).await;
        match i % 3 {
            0 => {}
            1 => s.write_all(PARTIAL_HEAD).await.unwrap(),
            _ => {
                s.write_all(b"GET /ready HTTP/1.1\r\nhost: bridge\r\n\r\n")
                    .await
                    .unwrap();
                assert_eq!(read_response(&mut s).await.status, 200);
            }
        }
        held.push(s);
    }
    for _ in 0..5 {
        let r = health(b.addr).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["status"], "ok");
    }
    // Each connection past the cap closed the one idle longest: the first HELD - CAP + 1 at
    // least (the last of them for the first /health). A later /health may find its
    // predecessor not yet accounted for and close one more, still the oldest; the newest
    // stay untouched.
    let at_least = HELD - CAP + 1;
    let mut ends = Vec::new();
    for s in held.iter_mut() {
        ends.push(read_to_end(s, Duration::from_millis(200)).await);
    }
    let evicted = ends
        .iter()
        .take_while(|e| **e == End::Closed(Vec::new()))
        .count();
    assert!(
        (at_least..at_least + 5).contains(&evicted),
        "{evicted} closed, oldest first: {ends:?}"
    );
    assert!(
        ends[evicted..].iter().all(|e| *e == End::Open(Vec::new())),
        "only the oldest are closed: {ends:?}"
    );
    let m = metrics(b.addr).await;
    assert_eq!(closed(&m, "cap"), evicted as f64, "{m}");
    assert_eq!(sample(&m, "bridge_http_connections_max"), CAP as f64);
    // The held ones plus the scrape itself.
    assert_eq!(
        sample(&m, "bridge_http_connections_open"),
        (HELD - evicted + 1) as f64
    );
    drop(held);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_when_every_connection_has_a_request_in_flight() {
    // A poller that accepts and never answers: each API request waits in its handler.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let poller = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    const CAP: usize = 4;
    let mut r = raw();
    r.server.max_connections = CAP;
    r.server.request_timeout = Duration::from_secs(60);
    r.web.poller_url = Some(format!("http://{poller}"));
    r.web.poller_token = Some(secrecy::SecretString::from("poller-token".to_owned()));
    let b = start(r).await;

    let mut busy = Vec::new();
    for _ in 0..CAP {
        let mut s = connect(b.addr).await;
        s.write_all(
            format!(
                "GET /api/v1/alerts HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        busy.push(s);
        // In order: the first request is the one that has run longest.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health(b.addr).await.status, 200);
    assert_eq!(
        read_to_end(&mut busy[0], BOUND).await,
        End::Closed(Vec::new()),
        "the longest-running request made room"
    );
    for s in &mut busy[1..] {
        assert_eq!(
            read_to_end(s, Duration::from_millis(100)).await,
            End::Open(Vec::new())
        );
    }
    let m = metrics(b.addr).await;
    assert_eq!(closed(&m, "cap_in_flight"), 1.0, "{m}");
    assert_eq!(closed(&m, "cap"), 0.0, "{m}");
    hold.abort();
    drop(busy);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_uris_large_headers_and_garbage_get_json_errors() {
    let b = start(raw()).await;
    let big_uri = format!(
        "GET /health?q={} HTTP/1.1\r\nhost: bridge\r\n\r\n",
        "a".repeat(10 * 1024)
    );
    let big_headers = format!(
        "GET /health HTTP/1.1\r\nhost: bridge\r\nx-a: {}\r\nx-b: {}\r\n\r\n",
        "b".repeat(20 * 1024),
        "c".repeat(20 * 1024)
    );
    // Beyond what hyper buffers for a head: only hyper sees it.
    let huge_header = format!(
        "GET /health HTTP/1.1\r\nhost: bridge\r\nx-huge: {}\r\n\r\n",
        "d".repeat(200 * 1024)
    );
    let huge_uri = format!(
        "GET /{} HTTP/1.1\r\nhost: bridge\r\n\r\n",
        "e".repeat(70_000)
    );
    let many_headers = format!(
        "GET /health HTTP/1.1\r\nhost: bridge\r\n{}\r\n",
        (0..150)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect::<String>()
    );
    struct Case {
        what: &'static str,
        req: Vec<u8>,
        status: u16,
        error: &'static str,
        hint: &'static str,
        /// Refused by hyper before routing (rewritten to JSON on the way out); otherwise by
        /// our own limits in the router (request id echoed, access log, request metrics).
        by_hyper: bool,
    }
    let case = |what, req: Vec<u8>, status, error, hint, by_hyper| Case {
        what,
        req,
        status,
        error,
        hint,
        by_hyper,
    };
    let cases = [
        case(
            "long uri",
            big_uri.into_bytes(),
            414,
            "uri_too_long",
            "server.max_uri_length",
            false,
        ),
        case(
            "large headers",
            big_headers.into_bytes(),
            431,
            "headers_too_large",
            "server.max_header_bytes",
            false,
        ),
        case(
            "huge header",
            huge_header.into_bytes(),
            431,
            "headers_too_large",
            "server.max_header_bytes",
            true,
        ),
        case(
            "huge uri",
            huge_uri.into_bytes(),
            431,
            "headers_too_large",
            "server.max_header_bytes",
            true,
        ),
        case(
            "150 headers",
            many_headers.into_bytes(),
            431,
            "headers_too_large",
            "100 header fields",
            true,
        ),
        case(
            "garbage",
            b"\x16\x03\x01 hello\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "not valid HTTP/1.1",
            true,
        ),
        case(
            "bad header name",
            b"GET /health HTTP/1.1\r\nhost: bridge\r\nbad header: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "not valid HTTP/1.1",
            true,
        ),
        case(
            "bad version",
            b"GET /health HTTP/9.9\r\nhost: bridge\r\n\r\n".to_vec(),
            400,
            "bad_request",
            "not valid HTTP/1.1",
            true,
        ),
    ];
    let hyper_level = cases.iter().filter(|c| c.by_hyper).count();
    for c in &cases {
        let what = c.what;
        let mut s = connect(b.addr).await;
        // The server may close before taking it all; what it answers is what counts.
        let _ = s.write_all(&c.req).await;
        let bytes = if c.by_hyper {
            // hyper's refusals end the connection.
            let End::Closed(bytes) = read_to_end(&mut s, BOUND).await else {
                panic!("{what}: the connection stayed open");
            };
            bytes
        } else {
            let End::Open(bytes) = read_to_end(&mut s, Duration::from_millis(500)).await else {
                panic!("{what}: the router's answer closed the connection");
            };
            bytes
        };
        let r = parse(&bytes);
        assert_eq!(r.status, c.status, "{what}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{what}"
        );
        let v = r.json();
        assert_eq!(v["error"], c.error, "{what}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains(c.hint),
            "{what}: {v}"
        );
        let id = v["request_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {v}"));
        assert!(!id.is_empty());
        if let Some(h) = r.header("x-request-id") {
            assert_eq!(h, id, "{what}");
        }
    }
    // A handler's own errors are left alone and keep the connection.
    let mut s = connect(b.addr).await;
    for _ in 0..2 {
        s.write_all(b"GET /nope HTTP/1.1\r\nhost: bridge\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"], "not_found");
        assert_ne!(r.header("connection"), Some("close"));
    }
    drop(s);
    let m = metrics(b.addr).await;
    assert_eq!(closed(&m, "malformed"), hyper_level as f64, "{m}");
    assert_eq!(
        sample(
            &m,
            "bridge_http_requests_total{route=\"unmatched\",method=\"GET\",status_class=\"4xx\"}"
        ),
        // The two limits the router answers, and the two 404s.
        4.0,
        "{m}"
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections_at_once() {
    // A poller that answers only when told.
    let slow = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let poller = slow.local_addr().unwrap();
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel::<()>();
    let peer = tokio::spawn(async move {
        let (mut c, _) = slow.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf).await.unwrap();
        let _ = answer_rx.await;
        let body = r#"{"alerts":[],"total":0,"page":1,"per_page":50}"#;
        let _ = c
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        tokio::time::sleep(BOUND).await;
    });
    let mut r = raw();
    r.web.poller_url = Some(format!("http://{poller}"));
    r.web.poller_token = Some(secrecy::SecretString::from("poller-token".to_owned()));
    let b = start(r).await;

    let mut idle = connect(b.addr).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: bridge\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.status, 200);
    let mut busy = connect(b.addr).await;
    busy.write_all(
        format!(
            "GET /api/v1/alerts HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // Until the request is in its handler (the poller has it).
    tokio::time::sleep(Duration::from_millis(300)).await;

    b.stop.cancel();
    assert_eq!(
        read_to_end(&mut idle, BOUND).await,
        End::Closed(Vec::new()),
        "the idle keep-alive connection is closed at once"
    );
    answer_tx.send(()).unwrap();
    let End::Closed(bytes) = read_to_end(&mut busy, BOUND).await else {
        panic!("the in-flight connection was not closed after its answer");
    };
    let resp = parse(&bytes);
    assert!(
        !resp.body.is_empty(),
        "the request in flight got its answer ({})",
        resp.status
    );
    tokio::time::timeout(BOUND, b.handle)
        .await
        .expect("the bridge stops")
        .unwrap();
    peer.abort();
}

/// The container case the stand-in measured: a 256-descriptor limit and 300 idle connections
/// made `/health` time out. The child serves at most half its descriptors and evicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_with_256_descriptors_answers_health_under_300_idle_and_300_slowloris() {
    let port = bridge_proc::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("bridge.log")).unwrap();
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 256 && exec \"$0\" run --role web",
            bridge_proc::BIN,
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BRIDGE_SERVER__LISTEN", addr.to_string())
        .env("BRIDGE_SERVER__HEADER_READ_TIMEOUT", "60s")
        .env("BRIDGE_SERVER__IDLE_TIMEOUT", "60s")
        .env("BRIDGE_SERVER__STATUS_PUBLIC", "true")
        .env("BRIDGE_LOG__LEVEL", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let pid = child.0.id();
    let rss = || -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let mut up = false;
    for _ in 0..200 {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            s.write_all(b"GET /health HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            if let End::Closed(b) = read_to_end(&mut s, Duration::from_secs(2)).await
                && b.starts_with(b"HTTP/1.1 200")
            {
                up = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the child never answered /health");
    let rss_before = rss();

    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(connect(addr).await);
    }
    // Slowloris with 40 KB of header each: what a half-sent head may make the server buffer.
    let filler = format!(
        "GET / HTTP/1.1\r\nhost: b\r\nx-fill: {}",
        "f".repeat(40 * 1024)
    );
    for _ in 0..300 {
        let mut s = connect(addr).await;
        let _ = s.write_all(filler.as_bytes()).await;
        held.push(s);
    }
    for _ in 0..5 {
        let r = tokio::time::timeout(BOUND, health(addr))
            .await
            .expect("/health answers under 600 held connections with 256 descriptors");
        assert_eq!(r.status, 200);
    }
    let m = tokio::time::timeout(BOUND, metrics(addr)).await.unwrap();
    assert_eq!(sample(&m, "bridge_http_connections_max"), 128.0, "{m}");
    // At most the cap, plus the one the scrape itself may just have evicted and whose
    // socket is still being closed.
    assert!(sample(&m, "bridge_http_connections_open") <= 129.0, "{m}");
    assert!(closed(&m, "cap") >= (600 - 128) as f64, "{m}");
    let rss_after = rss();
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_after} kB"
    );
    drop(held);
    assert!(
        bridge_proc::sigterm(&mut child.0, BOUND).is_some_and(|s| s.success()),
        "the child stops cleanly on SIGTERM"
    );
}

/// A failed assertion must not leave the child running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            bridge_proc::sigkill(&mut self.0);
        }
    }
}
