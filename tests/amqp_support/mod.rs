//! A real RabbitMQ for the tests: Debian's `rabbitmq-server` (`apt install rabbitmq-server`,
//! 3.10 on bookworm) with `rabbitmq_auth_mechanism_ssl`, configured like a OneView appliance's
//! SCMB broker: an AMQPS listener only (on a free 127.0.0.1 port), `verify_peer` with
//! `fail_if_no_peer_cert`, SASL EXTERNAL with the user taken from the client certificate's
//! common name, and the `scmb` topic exchange.
//!
//! Certificates are made for each broker with rcgen ([`TestPki`]): a CA, the broker's
//! certificate (127.0.0.1 and localhost), a client certificate with CN [`CLIENT_CN`] (the
//! broker's only user) and one from another CA. The tests hand the CA and its key to the
//! OneView simulator, so the keypair it issues over REST is one this broker accepts.
//!
//! Everything lives in a temporary directory: node name, Erlang distribution port and epmd
//! port are unique, `HOME` (the Erlang cookie), Mnesia, logs, config and plugin files are in
//! the directory. The test support starts its own epmd on its own port, so no daemon outlives
//! the broker. A watchdog process stops the broker and epmd and removes the directory when the
//! test binary exits, however it exits (statics are never dropped in a Rust test binary).
#![allow(dead_code)] // Each test crate uses a different part.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The broker's user: the common name of the client certificates it accepts. OneView's own
/// keypair is generated with `commonName: "default"`, so the simulator issues that CN too.
pub const CLIENT_CN: &str = "default";

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const EPMD: &str = "/usr/bin/epmd";
const PLUGIN: &str = "rabbitmq_auth_mechanism_ssl";

/// Whether Debian's broker (with the SSL auth plugin) is installed.
pub fn installed() -> bool {
    Path::new(SERVER).is_file()
        && Path::new(CTL).is_file()
        && epmd().is_some()
        && std::fs::read_dir("/usr/lib/rabbitmq/lib")
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .any(|d| {
                std::fs::read_dir(d.path().join("plugins"))
                    .ok()
                    .into_iter()
                    .flatten()
                    .filter_map(Result::ok)
                    .any(|p| p.file_name().to_string_lossy().starts_with(PLUGIN))
            })
}

fn epmd() -> Option<PathBuf> {
    if Path::new(EPMD).is_file() {
        return Some(PathBuf::from(EPMD));
    }
    // Debian ships it inside the ERTS directory and links it only with erlang-base's alternatives.
    std::fs::read_dir("/usr/lib/erlang")
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("bin/epmd"))
        .find(|p| p.is_file())
}

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

/// A PEM certificate and its private key (PKCS#8 PEM).
#[derive(Clone, Debug)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The certificates of one broker.
#[derive(Clone, Debug)]
pub struct TestPki {
    /// The CA that signs the broker's certificate and the client certificates it accepts.
    pub ca: CertKey,
    pub server: CertKey,
    /// CN [`CLIENT_CN`], signed by `ca`.
    pub client: CertKey,
    /// CN [`CLIENT_CN`], signed by another CA: the broker refuses it.
    pub rogue_client: CertKey,
    /// A CA that signed nothing the broker shows: trusting only it, a client refuses the broker.
    pub other_ca: CertKey,
}

fn ca(cn: &str) -> (CertKey, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = p.self_signed(&key).expect("ca cert");
    let ck = CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    (ck, Issuer::new(p, key))
}

fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool) -> CertKey {
    let sans: Vec<String> = if server {
        vec!["localhost".to_owned()]
    } else {
        Vec::new()
    };
    let mut p = CertificateParams::new(sans).expect("leaf params");
    if server {
        p.subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::V4(
                std::net::Ipv4Addr::LOCALHOST,
            )));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    } else {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    }
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("leaf key");
    let cert = p.signed_by(&key, issuer).expect("leaf cert");
    CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

impl TestPki {
    pub fn generate() -> Self {
        let (ca_ck, issuer) = ca("bridge test appliance CA");
        let (other_ck, other) = ca("bridge test other CA");
        TestPki {
            server: leaf(&issuer, "localhost", true),
            client: leaf(&issuer, CLIENT_CN, false),
            rogue_client: leaf(&other, CLIENT_CN, false),
            ca: ca_ck,
            other_ca: other_ck,
        }
    }
}

pub struct Broker {
    dir: PathBuf,
    /// The AMQPS port on 127.0.0.1.
    pub port: u16,
    pub pki: TestPki,
    node: String,
    dist_port: u16,
    epmd_port: u16,
    /// The `rabbitmq-server` script (it turns SIGTERM into a clean stop of the VM).
    server: Mutex<Option<Child>>,
    epmd: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
    /// How long the first start took, until the AMQPS listener accepted connections.
    pub started_in: Duration,
}

static NODES: AtomicU32 = AtomicU32::new(0);

impl Broker {
    /// A broker of this test's own; `None` (SKIPPED printed) without RabbitMQ.
    pub fn start(test: &str) -> Option<Broker> {
        available(test).then(Self::start_unchecked)
    }

    fn start_unchecked() -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("bridge-rmq-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let pki = TestPki::generate();
        let port = free_port();
        let dist_port = free_port();
        let epmd_port = free_port();
        let node = format!(
            "bridge-test-{}-{}@localhost",
            std::process::id(),
            NODES.fetch_add(1, Ordering::Relaxed)
        );
        for (name, text) in [
            ("ca.pem", &pki.ca.cert_pem),
            ("server.pem", &pki.server.cert_pem),
            ("server.key", &pki.server.key_pem),
        ] {
            std::fs::write(dir.join(name), text).expect("write pki");
        }
        let d = dir.display();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {d}/ca.pem\n\
                 ssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n\
                 auth_mechanisms.1 = EXTERNAL\n\
                 ssl_cert_login_from = common_name\n\
                 loopback_users = none\n\
                 log.console = false\n\
                 log.file.level = info\n\
                 load_definitions = {d}/definitions.json\n"
            ),
        )
        .expect("rabbitmq.conf");
        // The user has no usable password: EXTERNAL (the client certificate) is its only way in.
        let defs = serde_json::json!({
            "users": [{"name": CLIENT_CN, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
            "vhosts": [{"name": "/"}],
            "permissions": [{"user": CLIENT_CN, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
            "exchanges": [{"name": "scmb", "vhost": "/", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
        });
        std::fs::write(dir.join("definitions.json"), defs.to_string()).expect("definitions");
        std::fs::write(dir.join("enabled_plugins"), format!("[{PLUGIN}].\n")).expect("plugins");
        std::fs::create_dir_all(dir.join("home")).expect("home");
        // Started first, so a failure below still gets cleaned up: stops the VM (its pid file),
        // then epmd (its pid is passed once known, through a file), then removes the directory.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"while kill -0 "$0" 2>/dev/null; do sleep 0.2; done
                   for f in "$1/beam.pid" "$1/epmd.pid"; do
                     if [ -f "$f" ]; then kill -9 "$(cat "$f")" 2>/dev/null; fi
                   done
                   rm -rf "$1""#,
            )
            .arg(std::process::id().to_string())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog shell");
        let epmd = Command::new(epmd().expect("checked by available()"))
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("epmd");
        std::fs::write(dir.join("epmd.pid"), epmd.id().to_string()).expect("epmd.pid");
        let mut broker = Broker {
            dir,
            port,
            pki,
            node,
            dist_port,
            epmd_port,
            server: Mutex::new(None),
            epmd: Mutex::new(Some(epmd)),
            watchdog: Mutex::new(Some(watchdog)),
            started_in: Duration::ZERO,
        };
        let t0 = Instant::now();
        broker.start_again();
        broker.started_in = t0.elapsed();
        eprintln!(
            "RabbitMQ {} started in {:.2?} (AMQPS 127.0.0.1:{})",
            broker.node, broker.started_in, broker.port
        );
        broker
    }

    fn env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d.join("plugins-expand"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_PID_FILE", d.join("beam.pid"))
            // Debian's /etc/rabbitmq/rabbitmq-env.conf must not point the node elsewhere.
            .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
            .current_dir(d)
            .stdin(Stdio::null());
    }

    /// Starts the broker (again, after [`Broker::stop`]) on the same port and data, and waits
    /// until its AMQPS listener accepts connections.
    pub fn start_again(&self) {
        let out = std::fs::File::create(self.dir.join("server.out")).expect("server.out");
        let err = out.try_clone().expect("server.out");
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("rabbitmq-server");
        *self.server.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(status) = self
                .server
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "rabbitmq-server exited ({status}) before listening:\n{}\n{}",
                    self.output(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rabbitmq-server did not listen on 127.0.0.1:{} within 60 s:\n{}\n{}",
                self.port,
                self.output(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker cleanly (SIGTERM to the server script) and waits for it; its port,
    /// node name and data stay for [`Broker::start_again`].
    pub fn stop(&self) {
        let Some(mut child) = self.server.lock().unwrap().take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
        // The script waits for the VM; the pid file is its leftover.
        let _ = std::fs::remove_file(self.dir.join("beam.pid"));
    }

    /// Stop + start.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// `rabbitmqctl ARGS` against this node; its output. Panics when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        let out = cmd
            .arg("-q")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("rabbitmqctl: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "rabbitmqctl {args:?} failed: {text}");
        text
    }

    /// Closes every client connection from the broker's side, as an appliance restarting its
    /// message bus service does.
    pub fn close_all_connections(&self) {
        self.ctl(&["close_all_connections", "closed by the test"]);
    }

    /// Queues as `name messages consumers` lines (`rabbitmqctl list_queues`).
    pub fn queues(&self) -> Vec<(String, u64, u64)> {
        self.ctl(&[
            "list_queues",
            "--no-table-headers",
            "name",
            "messages",
            "consumers",
        ])
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?.to_owned();
            let messages = it.next()?.parse().ok()?;
            let consumers = it.next()?.parse().ok()?;
            Some((name, messages, consumers))
        })
        .collect()
    }

    /// Number of open client connections.
    pub fn connection_count(&self) -> usize {
        self.ctl(&["list_connections", "--no-table-headers", "name"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// The CA PEM in a file (for `scmb.ca_file`-style overrides).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `text` to a file in the broker's directory; its path.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn log(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.node));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut e) = self.epmd.lock().unwrap().take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        if let Some(mut w) = self.watchdog.lock().unwrap().take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
