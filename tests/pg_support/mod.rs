//! A real PostgreSQL for the tests: Debian's server binaries (`apt install postgresql`), a
//! cluster initialised in a temporary directory, listening on a free 127.0.0.1 port.
//!
//! Each [`PgServer`] has a watchdog process that stops the server and removes its directory
//! when the test binary exits, however it exits: statics are never dropped in a Rust test
//! binary, and a panicking test must not leave a server running. [`shared`] gives one server
//! per test binary (databases from [`PgServer::fresh_database`] keep tests apart);
//! [`PgServer::start`] gives a test its own, for outages ([`PgServer::stop`],
//! [`PgServer::restart`]).
#![allow(dead_code)] // Each test crate uses a different part.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The role the bridge connects as, with a password (so the URL-with-password path is used).
pub const ROLE: &str = "bridge";
/// Has characters that must be percent-encoded in a URL.
pub const PASSWORD: &str = "pw/S3cr@t-7";
const PASSWORD_IN_URL: &str = "pw%2FS3cr%40t-7";

/// Debian's newest server binaries: `/usr/lib/postgresql/<major>/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            ["initdb", "postgres", "pg_ctl", "psql"]
                .iter()
                .all(|b| bin.join(b).is_file())
                .then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// `None` (after printing SKIPPED) when the server is not installed; under `CI=true` that is a
/// failure instead.
pub fn available(test: &str) -> bool {
    if bin_dir().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: PostgreSQL server not installed (apt install postgresql); CI requires it");
    }
    println!("SKIPPED: {test}: PostgreSQL server not installed (apt install postgresql)");
    false
}

/// The server shared by the tests of this binary; `None` (SKIPPED printed) without PostgreSQL.
pub fn shared(test: &str) -> Option<&'static PgServer> {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    if !available(test) {
        return None;
    }
    Some(SERVER.get_or_init(|| PgServer::start_unchecked(false)))
}

pub struct PgServer {
    bin: PathBuf,
    /// Owned by the server's user; removed by the watchdog (or Drop).
    dir: PathBuf,
    pub port: u16,
    /// Run the server's tools as this user: PostgreSQL refuses to run as root.
    as_user: Option<&'static str>,
    watchdog: std::process::Child,
    databases: AtomicU32,
}

impl PgServer {
    /// A server of this test's own; `None` (SKIPPED printed) without PostgreSQL.
    pub fn start(test: &str) -> Option<PgServer> {
        available(test).then(|| Self::start_unchecked(false))
    }

    /// A server of this test's own that takes [`ROLE`] over TLS only (`hostssl`), with the
    /// certificate of `tests/fixtures/tls` (127.0.0.1 and localhost, signed by its `ca.pem`).
    pub fn start_tls(test: &str) -> Option<PgServer> {
        available(test).then(|| Self::start_unchecked(true))
    }

    /// The CA the TLS server's certificate is signed by.
    pub fn tls_ca() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls/ca.pem")
    }

    fn start_unchecked(tls: bool) -> PgServer {
        let bin = bin_dir().expect("checked by available()");
        let dir = tempfile::Builder::new()
            .prefix("bridge-pg-")
            .tempdir()
            .expect("tempdir")
            .keep();
        let as_user = is_root().then_some("postgres");
        if as_user.is_some() {
            chown_to_postgres(&dir);
        }
        let port = free_port();
        // Started before the server, so a failure below still gets cleaned up.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(
                r#"while kill -0 "$0" 2>/dev/null; do sleep 0.2; done
                   if [ -f "$2/data/postmaster.pid" ]; then kill -9 "$(head -1 "$2/data/postmaster.pid")" 2>/dev/null; fi
                   rm -rf "$2""#,
            )
            .arg(std::process::id().to_string())
            .arg(bin.join("pg_ctl"))
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("watchdog shell");
        let server = PgServer {
            bin,
            dir,
            port,
            as_user,
            watchdog,
            databases: AtomicU32::new(0),
        };
        let data = server.data_dir();
        server.tool(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        // The superuser comes in by trust over the socket; the bridge's role only with its
        // password over TCP.
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
        if tls {
            for f in ["server.pem", "server.key"] {
                std::fs::copy(fixtures.join(f), data.join(f)).unwrap();
            }
            // The server refuses a key others can read.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            if server.as_user.is_some() {
                chown_to_postgres(&data);
            }
            let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
            conf.push_str(
                "\nssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
            );
            std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        }
        let bridge_line = if tls {
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        } else {
            "host all all 127.0.0.1/32 scram-sha-256\n"
        };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 host all postgres 127.0.0.1/32 trust\n\
                 {bridge_line}"
            ),
        )
        .unwrap();
        server.start_server();
        server.psql(&format!(
            "CREATE ROLE {ROLE} LOGIN PASSWORD '{}'",
            PASSWORD.replace('\'', "''")
        ));
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// `name` of the server's binaries, run as the server's user.
    fn command(&self, name: &str) -> Command {
        let exe = self.bin.join(name);
        let mut cmd = match self.as_user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.current_dir(&self.dir).stdin(Stdio::null());
        cmd
    }

    fn tool(&self, name: &str, args: &[&str]) -> String {
        let out = self
            .command(name)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{name} {args:?} failed: {text}\nserver log:\n{}",
            self.log()
        );
        text
    }

    fn start_server(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.socket_dir().display()
        );
        let data = self.data_dir();
        let log = self.dir.join("server.log");
        self.tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// The server's log so far, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stops the server at once (like a crash: `-m immediate`); the port stays reserved for
    /// [`PgServer::restart`].
    pub fn stop(&self) {
        let data = self.data_dir();
        self.tool(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Starts the server again on the same port and data directory after [`PgServer::stop`].
    pub fn start_again(&self) {
        self.start_server();
    }

    /// Stop + start on the same port and data directory.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// The server's processes (postmaster and its children), by pid.
    fn pids(&self) -> Vec<String> {
        let pm = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
            .expect("server running");
        let out = Command::new("ps")
            .args(["-o", "pid=", "--ppid", &pm])
            .output()
            .expect("ps");
        let mut pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        pids.push(pm);
        pids
    }

    fn signal(&self, sig: &str) {
        for pid in self.pids() {
            let _ = Command::new("kill").args([sig, &pid]).status();
        }
    }

    /// Freezes the server (SIGSTOP to its processes): connections stay open, nothing answers,
    /// as with a partition or a hung host.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`PgServer::freeze`].
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Runs SQL as the superuser over the socket (`-d` a database, default `postgres`).
    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        self.tool(
            "psql",
            &[
                "-h",
                self.socket_dir().to_str().unwrap(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-qtA",
                "-c",
                sql,
            ],
        )
    }

    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    /// A new empty database owned by [`ROLE`]: its URL (with the password) and its name.
    pub fn fresh_database(&self) -> (String, String) {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("bridge_test_{n}");
        self.psql(&format!("CREATE DATABASE {name} OWNER {ROLE}"));
        (self.url(&name), name)
    }

    /// The bridge's URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        self.url_with(name, "127.0.0.1", "disable")
    }

    /// The URL of database `name` through `host` with `sslmode`.
    pub fn url_with(&self, name: &str, host: &str, sslmode: &str) -> String {
        format!(
            "postgres://{ROLE}:{PASSWORD_IN_URL}@{host}:{}/{name}?sslmode={sslmode}",
            self.port
        )
    }

    /// How the store names database `name` in its messages.
    pub fn target(&self, name: &str) -> String {
        format!("127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to_postgres(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(dir)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {} to postgres", dir.display());
}
