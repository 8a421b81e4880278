//! Shared helpers for the OneView tests: a simulator on 127.0.0.1:0 and a configuration
//! pointing at it.
#![allow(dead_code)]

use std::time::Duration;

use bridge::config::{self, Config, RawConfig, Role};
use bridge::oneview::{OneViewClient, OneViewMetrics};
use bridge::sim::oneview::{self as sim, AlertSpec, RunningSim, SimConfig};
use secrecy::SecretString;

pub async fn start_sim(cfg: SimConfig) -> RunningSim {
    sim::start(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

pub fn config(url: &str, f: impl FnOnce(&mut RawConfig)) -> Config {
    let mut r = RawConfig::default();
    r.oneview.url = Some(url.to_owned());
    r.oneview.name = Some("ov-test".to_owned());
    r.oneview.username = Some("administrator".to_owned());
    r.oneview.password = Some(SecretString::from("sim-password".to_owned()));
    r.pagerduty.routing_key = Some(SecretString::from("a".repeat(32)));
    f(&mut r);
    config::validate(r, Role::Poller).expect("valid test config")
}

pub fn client(cfg: &Config) -> OneViewClient {
    OneViewClient::new(&cfg.appliances[0].oneview, OneViewMetrics::unregistered()).unwrap()
}

pub fn spec(severity: &str, state: &str) -> AlertSpec {
    AlertSpec {
        severity: Some(severity.to_owned()),
        alert_state: Some(state.to_owned()),
        ..AlertSpec::default()
    }
}

/// Waits (in small steps of tokio time) until `cond` holds; panics after `max`.
pub async fn wait_for(what: &str, max: Duration, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        if start.elapsed() > max {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn id_of(uri: &str) -> u64 {
    uri.rsplit('/').next().unwrap().parse().unwrap()
}

/// What a [`RawPeer`] answers to one request.
pub enum Answer {
    /// A complete answer with `Content-Length`.
    Full { status: u16, body: Vec<u8> },
    /// Headers, then a chunked body that never ends: the peer writes until the client hangs
    /// up (or [`RawPeer::MAX_BYTES`], so that a client without a cap cannot keep it forever).
    Endless { status: u16 },
    /// Headers announcing `Content-Length: len`, then bytes until the client hangs up.
    Declared { status: u16, len: u64 },
}

/// One request as a [`RawPeer`] saw it.
pub struct Seen {
    pub method: String,
    pub path: String,
    /// The header block, as sent.
    pub head: String,
    pub body: Vec<u8>,
}

/// A tiny HTTP/1.1 server on 127.0.0.1:0 written on raw TCP, for answers no well-behaved
/// server gives (endless or over-announced bodies). Its listening socket has a small send
/// buffer (accepted sockets inherit it), so what it "managed to write" is close to what the
/// client read.
pub struct RawPeer {
    pub addr: std::net::SocketAddr,
    /// Body bytes of `Endless`/`Declared` answers the kernel accepted before the client left.
    pub streamed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections accepted.
    pub connections: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawPeer {
    /// What one endless answer writes at most.
    pub const MAX_BYTES: u64 = 256 * 1024 * 1024;

    pub async fn start(answer: impl Fn(&Seen) -> Answer + Send + Sync + 'static) -> RawPeer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let streamed = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let (st, cn, rq) = (streamed.clone(), connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                cn.fetch_add(1, Ordering::SeqCst);
                let (answer, st, rq) = (answer.clone(), st.clone(), rq.clone());
                tokio::spawn(async move {
                    let _ = serve_raw(conn, &*answer, &st, &rq).await;
                });
            }
        });
        RawPeer {
            addr,
            streamed,
            connections,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn streamed(&self) -> u64 {
        self.streamed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn serve_raw(
    mut conn: tokio::net::TcpStream,
    answer: &(dyn Fn(&Seen) -> Answer + Send + Sync),
    streamed: &std::sync::atomic::AtomicU64,
    requests: &std::sync::Mutex<Vec<(String, String)>>,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        // One request: the header block, then Content-Length bytes of body.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 8192];
            let n = conn.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut tmp = [0u8; 8192];
            let n = conn.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let seen = Seen {
            method: first.next().unwrap_or("").to_owned(),
            path: first.next().unwrap_or("").to_owned(),
            head,
            body,
        };
        requests
            .lock()
            .unwrap()
            .push((seen.method.clone(), seen.path.clone()));
        let chunk = vec![b' '; 16 * 1024];
        match answer(&seen) {
            Answer::Full { status, body } => {
                let h = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                conn.write_all(h.as_bytes()).await?;
                conn.write_all(&body).await?;
            }
            Answer::Endless { status } => {
                let h = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                conn.write_all(h.as_bytes()).await?;
                let framed = [
                    format!("{:x}\r\n", chunk.len()).into_bytes(),
                    chunk,
                    b"\r\n".to_vec(),
                ]
                .concat();
                while streamed.load(Ordering::SeqCst) < RawPeer::MAX_BYTES {
                    conn.write_all(&framed).await?;
                    streamed.fetch_add(16 * 1024, Ordering::SeqCst);
                }
                return Ok(());
            }
            Answer::Declared { status, len } => {
                let h = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
                );
                conn.write_all(h.as_bytes()).await?;
                let mut sent = 0u64;
                while sent < len && sent < RawPeer::MAX_BYTES {
                    conn.write_all(&chunk).await?;
                    sent += chunk.len() as u64;
                    streamed.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                return Ok(());
            }
        }
    }
}

/// The answers of a small, well-behaved appliance, for a [`RawPeer`] that misbehaves on one
/// path only: version 4600, login with session id `tok-raw-peer-SECRET`, one alert.
pub fn normal_answer(seen: &Seen) -> Answer {
    let body = match (seen.method.as_str(), seen.path.split('?').next().unwrap_or("")) {
        ("GET", "/rest/version") => r#"{"currentVersion":4600,"minimumVersion":120}"#.to_owned(),
        ("POST", "/rest/login-sessions") => {
            r#"{"sessionID":"tok-raw-peer-SECRET","partnerData":{}}"#.to_owned()
        }
        ("DELETE", "/rest/login-sessions") => {
            return Answer::Full {
                status: 204,
                body: vec![],
            };
        }
        ("GET", "/rest/alerts") => {
            r#"{"members":[{"uri":"/rest/alerts/1","severity":"Critical","alertState":"Active"}],"total":1,"nextPageUri":null,"uri":"/rest/alerts?start=0&count=100"}"#.to_owned()
        }
        ("GET", p) if p.starts_with("/rest/alerts/") => {
            format!(r#"{{"uri":"{p}","severity":"Critical","alertState":"Active"}}"#)
        }
        _ => {
            return Answer::Full {
                status: 404,
                body: br#"{"errorCode":"RESOURCE_NOT_FOUND","message":"no such resource"}"#.to_vec(),
            };
        }
    };
    Answer::Full {
        status: 200,
        body: body.into_bytes(),
    }
}

#[path = "../common/mod.rs"]
mod common;
#[allow(unused_imports)] // not every test crate that includes this module checks metrics
pub use common::promtool_accepts;
