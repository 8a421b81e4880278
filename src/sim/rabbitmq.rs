//! A real RabbitMQ configured like a OneView appliance's message bus (SCMB), for the `demo`,
//! the tests and the benchmarks: Debian's `rabbitmq-server` (`apt install rabbitmq-server`,
//! 3.10 on bookworm) with `rabbitmq_auth_mechanism_ssl`, an AMQPS listener only (on a free
//! 127.0.0.1 port), `verify_peer` with `fail_if_no_peer_cert`, SASL EXTERNAL with the user taken
//! from the client certificate's common name, and the `scmb` topic exchange.
//!
//! Certificates are made for each broker with rcgen ([`Pki`]): a CA, the broker's certificate
//! (127.0.0.1 and localhost), a client certificate with CN [`CLIENT_CN`] (the broker's only user)
//! and one from another CA. The OneView simulator is given the CA and its key
//! ([`Pki::appliance_ca`]), so the keypair it issues over REST is one this broker accepts, as an
//! appliance's own keypair is for its own broker.
//!
//! Everything lives in a temporary directory: node name, Erlang distribution port and epmd port
//! are unique, `HOME` (the Erlang cookie), Mnesia, logs, config and plugin files are in the
//! directory, and the broker starts its own epmd on its own port, so no daemon outlives it. A
//! watchdog process stops the broker and epmd and removes the directory when this process exits,
//! however it exits (a killed demo, or a test binary, whose statics are never dropped).
//!
//! The calls block (process start, `rabbitmqctl`): from async code, run them on
//! `tokio::task::spawn_blocking`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::oneview::ScmbCa;

/// The broker's user: the common name of the client certificates it accepts. OneView's own
/// keypair is generated with `commonName: "default"`, so the simulator issues that CN too.
pub const CLIENT_CN: &str = "default";

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const CTL: &str = "/usr/lib/rabbitmq/bin/rabbitmqctl";
const EPMD: &str = "/usr/bin/epmd";
const PLUGIN: &str = "rabbitmq_auth_mechanism_ssl";

/// How long a start may take until the AMQPS listener accepts connections (a cold start on a
/// busy 2-core machine takes 3-6 s).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a broker could not be started or driven.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "rabbitmq-server with the {PLUGIN} plugin is not installed ({SERVER}, {CTL}, epmd): apt install rabbitmq-server"
    )]
    NotInstalled,
    #[error("RabbitMQ broker: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot generate the broker's certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error(
        "rabbitmq-server exited ({status}) before it listened on 127.0.0.1:{port}; its output:\n{output}"
    )]
    Exited {
        status: ExitStatus,
        port: u16,
        output: String,
    },
    #[error(
        "rabbitmq-server did not listen on 127.0.0.1:{port} within {}s; its output:\n{output}",
        START_TIMEOUT.as_secs()
    )]
    Timeout { port: u16, output: String },
    #[error("rabbitmqctl {args} failed: {output}")]
    Ctl { args: String, output: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BrokerError {
    let what = what.into();
    move |source| BrokerError::Io { what, source }
}

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

/// A PEM certificate and its private key (PKCS#8 PEM). `Debug` leaves the key out.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey").finish_non_exhaustive()
    }
}

/// The certificates of one broker.
#[derive(Clone, Debug)]
pub struct Pki {
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

fn ca(cn: &str) -> Result<(CertKey, Issuer<'static, KeyPair>), rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    let ck = CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    Ok((ck, Issuer::new(p, key)))
}

fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool) -> Result<CertKey, rcgen::Error> {
    let sans: Vec<String> = if server {
        vec!["localhost".to_owned()]
    } else {
        Vec::new()
    };
    let mut p = CertificateParams::new(sans)?;
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
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok(CertKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl Pki {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let (ca_ck, issuer) = ca("bridge simulated appliance CA")?;
        let (other_ck, other) = ca("bridge simulated other CA")?;
        Ok(Pki {
            server: leaf(&issuer, "localhost", true)?,
            client: leaf(&issuer, CLIENT_CN, false)?,
            rogue_client: leaf(&other, CLIENT_CN, false)?,
            ca: ca_ck,
            other_ca: other_ck,
        })
    }

    /// The CA as the OneView simulator takes it (`SimConfig::scmb_ca`): it serves the
    /// certificate on `/rest/certificates/ca` and signs the keypair it issues with the key.
    pub fn appliance_ca(&self) -> ScmbCa {
        ScmbCa {
            cert_pem: self.ca.cert_pem.clone(),
            key_pem: self.ca.key_pem.clone(),
        }
    }
}

/// One running broker (see the module docs). Dropping it stops the broker and epmd and removes
/// its directory.
pub struct Broker {
    dir: PathBuf,
    /// The AMQPS port on 127.0.0.1.
    pub port: u16,
    pub pki: Pki,
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

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("node", &self.node)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

static NODES: AtomicU32 = AtomicU32::new(0);

/// A poisoned lock only means another thread panicked while holding a child handle; the handle
/// itself is still right.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Broker {
    /// Generates a [`Pki`], writes the configuration into a new temporary directory, starts epmd
    /// and the broker, and returns once its AMQPS listener accepts connections.
    pub fn start() -> Result<Broker, BrokerError> {
        if !installed() {
            return Err(BrokerError::NotInstalled);
        }
        let epmd_bin = epmd().ok_or(BrokerError::NotInstalled)?;
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "bridge-rmq-{}-{n}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // `create_dir`, not `_all`: a directory that exists already is someone else's.
        std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
        let pki = Pki::generate()?;
        let port = free_port()?;
        let dist_port = free_port()?;
        let epmd_port = free_port()?;
        let node = format!("bridge-sim-{}-{n}@localhost", std::process::id());
        // Started first, so a failure below still gets cleaned up: stops the VM (its pid file),
        // then epmd (its pid is passed once known, through a file), then removes the directory.
        let watchdog = own_group(&mut Command::new("sh"))
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
            .map_err(io("start the watchdog shell (sh)"))?;
        let mut broker = Broker {
            dir,
            port,
            pki,
            node,
            dist_port,
            epmd_port,
            server: Mutex::new(None),
            epmd: Mutex::new(None),
            watchdog: Mutex::new(Some(watchdog)),
            started_in: Duration::ZERO,
        };
        broker.write_config()?;
        let epmd = own_group(&mut Command::new(epmd_bin))
            .args(["-port", &epmd_port.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("start epmd"))?;
        let epmd_pid = epmd.id();
        *lock(&broker.epmd) = Some(epmd);
        std::fs::write(broker.dir.join("epmd.pid"), epmd_pid.to_string())
            .map_err(io("write epmd.pid"))?;
        let t0 = Instant::now();
        broker.start_again()?;
        broker.started_in = t0.elapsed();
        Ok(broker)
    }

    fn write_config(&self) -> Result<(), BrokerError> {
        let dir = &self.dir;
        let pki = &self.pki;
        for (name, text) in [
            ("ca.pem", &pki.ca.cert_pem),
            ("server.pem", &pki.server.cert_pem),
            ("server.key", &pki.server.key_pem),
        ] {
            std::fs::write(dir.join(name), text).map_err(io(format!("write {name}")))?;
        }
        let d = dir.display();
        let port = self.port;
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
        .map_err(io("write rabbitmq.conf"))?;
        // The user has no usable password: EXTERNAL (the client certificate) is its only way in.
        let defs = serde_json::json!({
            "users": [{"name": CLIENT_CN, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}],
            "vhosts": [{"name": "/"}],
            "permissions": [{"user": CLIENT_CN, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
            "exchanges": [{"name": "scmb", "vhost": "/", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
        });
        std::fs::write(dir.join("definitions.json"), defs.to_string())
            .map_err(io("write definitions.json"))?;
        std::fs::write(dir.join("enabled_plugins"), format!("[{PLUGIN}].\n"))
            .map_err(io("write enabled_plugins"))?;
        std::fs::create_dir_all(dir.join("home")).map_err(io("create home"))?;
        Ok(())
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
        own_group(cmd);
    }

    /// The node name (`bridge-sim-<pid>-<n>@localhost`).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// `amqps://127.0.0.1:<port>`, as `simulate oneview --scmb-broker` takes it.
    pub fn url(&self) -> String {
        format!("amqps://127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again, after [`Broker::stop`]) on the same port and data, and waits
    /// until its AMQPS listener accepts connections.
    pub fn start_again(&self) -> Result<(), BrokerError> {
        let out =
            std::fs::File::create(self.dir.join("server.out")).map_err(io("create server.out"))?;
        let err = out.try_clone().map_err(io("open server.out"))?;
        let mut cmd = Command::new(SERVER);
        self.env(&mut cmd);
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io(format!("start {SERVER}")))?;
        *lock(&self.server) = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            let exited = lock(&self.server)
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                *lock(&self.server) = None;
                return Err(BrokerError::Exited {
                    status,
                    port: self.port,
                    output: self.output_and_log(),
                });
            }
            if Instant::now() >= deadline {
                self.stop();
                return Err(BrokerError::Timeout {
                    port: self.port,
                    output: self.output_and_log(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the broker cleanly (SIGTERM to the server script) and waits for it; its port,
    /// node name and data stay for [`Broker::start_again`].
    pub fn stop(&self) {
        let Some(mut child) = lock(&self.server).take() else {
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
    pub fn restart(&self) -> Result<(), BrokerError> {
        self.stop();
        self.start_again()
    }

    /// `rabbitmqctl -q ARGS` against this node; its output.
    pub fn ctl(&self, args: &[&str]) -> Result<String, BrokerError> {
        let mut cmd = Command::new(CTL);
        self.env(&mut cmd);
        let out = cmd
            .arg("-q")
            .args(args)
            .output()
            .map_err(io(format!("run {CTL}")))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(BrokerError::Ctl {
                args: args.join(" "),
                output: text,
            })
        }
    }

    /// Closes every client connection from the broker's side, as an appliance restarting its
    /// message bus service does.
    pub fn close_all_connections(&self) -> Result<(), BrokerError> {
        self.ctl(&["close_all_connections", "closed by the broker's owner"])
            .map(drop)
    }

    /// Queues as (name, messages, consumers) (`rabbitmqctl list_queues`).
    pub fn queues(&self) -> Result<Vec<(String, u64, u64)>, BrokerError> {
        Ok(self
            .ctl(&[
                "list_queues",
                "--no-table-headers",
                "name",
                "messages",
                "consumers",
            ])?
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let name = it.next()?.to_owned();
                let messages = it.next()?.parse().ok()?;
                let consumers = it.next()?.parse().ok()?;
                Some((name, messages, consumers))
            })
            .collect())
    }

    /// Number of open client connections.
    pub fn connection_count(&self) -> Result<usize, BrokerError> {
        Ok(self
            .ctl(&["list_connections", "--no-table-headers", "name"])?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count())
    }

    /// Gives the broker a new certificate (127.0.0.1 and localhost) signed by `ca`, from its
    /// next start on: a renewed appliance CA, as clients that trust only the old one see it.
    /// The client certificates it accepts stay those of [`Pki::ca`].
    pub fn reissue_server_cert(&self, ca: &CertKey) -> Result<(), BrokerError> {
        let key = KeyPair::from_pem(&ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key)?;
        let server = leaf(&issuer, "localhost", true)?;
        std::fs::write(self.dir.join("server.pem"), &server.cert_pem)
            .map_err(io("write server.pem"))?;
        std::fs::write(self.dir.join("server.key"), &server.key_pem)
            .map_err(io("write server.key"))?;
        Ok(())
    }

    /// The CA PEM in a file (for `scmb.ca_file`-style overrides).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Writes `text` to a file in the broker's directory; its path.
    pub fn write_file(&self, name: &str, text: &str) -> Result<PathBuf, BrokerError> {
        let p = self.dir.join(name);
        std::fs::write(&p, text).map_err(io(format!("write {}", p.display())))?;
        Ok(p)
    }

    /// The broker's log file.
    pub fn log(&self) -> String {
        let log = self.dir.join("log").join(format!("{}.log", self.node));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    /// The pid of the broker's Erlang VM (its `/proc` figures are the broker's own).
    pub fn beam_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("beam.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn output_and_log(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        format!("{out}\n{}", self.log())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut e) = lock(&self.epmd).take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        if let Some(mut w) = lock(&self.watchdog).take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Out of the terminal's process group: Ctrl-C on a demo must reach the demo, which closes its
/// connections and then stops the broker, not the broker first.
fn own_group(cmd: &mut Command) -> &mut Command {
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    cmd
}

fn free_port() -> Result<u16, BrokerError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("find a free port on 127.0.0.1"))
}
