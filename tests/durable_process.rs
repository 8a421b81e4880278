//! The built binary with a state file and `*_file` secrets: rotation while it runs, a corrupt
//! state file refused at startup, the `bridge_state_*` metrics.

mod bridge_proc;

use std::time::Duration;

use bridge::sim::oneview::{self as ovsim, AlertSpec, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults};
use bridge_proc::{BridgeEnv, ROUTING_KEY, dedup_key, free_port, sigterm};

const NEW_PASSWORD: &str = "rotated-sim-password-2";
const NEW_ROUTING_KEY: &str = "ROTATEDROUTINGKEY000000000000002";

async fn wait_for(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

fn id_of(uri: &str) -> u64 {
    uri.rsplit('/').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_password_and_routing_key_files_are_used_without_restart() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("ov-password");
    let rk_file = dir.path().join("routing-key");
    std::fs::write(&pw_file, "sim-password\n").unwrap();
    std::fs::write(&rk_file, format!("{ROUTING_KEY}\n")).unwrap();
    let port = free_port();
    let mut env = BridgeEnv::new(ov.url(), pd.events_url(), dir.path());
    env.set(
        "BRIDGE_ONEVIEW__PASSWORD_FILE",
        pw_file.display().to_string(),
    );
    env.set(
        "BRIDGE_PAGERDUTY__ROUTING_KEY_FILE",
        rk_file.display().to_string(),
    );
    env.set("BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    let mut child = env.spawn();

    let first = ov.handle.add_alert(AlertSpec::default());
    assert!(
        pd.wait_until(Duration::from_secs(20), |pd| pd.incidents().iter().any(
            |i| i.dedup_key == dedup_key(id_of(&first)) && i.routing_key == ROUTING_KEY
        ))
        .await,
        "first alert paged with the first routing key:\n{}",
        env.log()
    );

    // The state metrics exist (and the outbox has drained).
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "bridge_state_writes_total{outcome=\"ok\"}",
        "bridge_state_writes_total{outcome=\"error\"} 0",
        "bridge_state_commit_duration_seconds_bucket",
        "bridge_state_outbox_entries",
        "bridge_state_ledger_entries 1",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }

    // Rotate both, like a Vault agent: files rewritten in place, the appliance's password
    // changed, and the session gone so the next request logs in again.
    std::fs::write(&pw_file, format!("{NEW_PASSWORD}\n")).unwrap();
    std::fs::write(&rk_file, format!("{NEW_ROUTING_KEY}\n")).unwrap();
    ov.handle
        .configure(|c| c.password = NEW_PASSWORD.to_owned());
    ov.handle.expire_sessions();
    let logins_before = ov.handle.counters().requests("login");

    let second = ov.handle.add_alert(AlertSpec::default());
    assert!(
        pd.wait_until(Duration::from_secs(20), |pd| pd.incidents().iter().any(
            |i| i.dedup_key == dedup_key(id_of(&second)) && i.routing_key == NEW_ROUTING_KEY
        ))
        .await,
        "second alert paged with the rotated routing key after a login with the rotated password:\n{}",
        env.log()
    );
    assert!(ov.handle.counters().requests("login") > logins_before);
    assert!(
        wait_for(Duration::from_secs(5), || {
            let log = env.log();
            log.contains("secret file changed")
                && log.contains("\"oneview.password\"")
                && log.contains("\"pagerduty.routing_key\"")
        })
        .await,
        "a log line names each rotated secret:\n{}",
        env.log()
    );
    let status = sigterm(&mut child, Duration::from_secs(10));
    let log = env.log();
    for value in ["sim-password", NEW_PASSWORD, ROUTING_KEY, NEW_ROUTING_KEY] {
        assert!(!log.contains(value), "a secret value reached the log");
    }
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{log}");
    pd.shutdown();
    ov.stop().await;
}

#[test]
fn a_corrupt_state_file_is_refused_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.redb");
    std::fs::write(
        &state,
        b"this is not a redb file, just some bytes".repeat(200),
    )
    .unwrap();
    // Nothing listens there: the bridge must refuse before it talks to anyone.
    let env = BridgeEnv::new(
        "http://127.0.0.1:9".into(),
        "http://127.0.0.1:9/v2/enqueue".into(),
        dir.path(),
    );
    let out = std::process::Command::new(bridge_proc::BIN)
        .args(["run", "--role", "poller"])
        .env("BRIDGE_ONEVIEW__URL", &env.ov_url)
        .env("BRIDGE_ONEVIEW__USERNAME", "administrator")
        .env("BRIDGE_ONEVIEW__PASSWORD", "sim-password")
        .env("BRIDGE_PAGERDUTY__ROUTING_KEY", ROUTING_KEY)
        .env("BRIDGE_PAGERDUTY__EVENTS_URL", &env.events_url)
        .env("BRIDGE_SERVER__LISTEN", "127.0.0.1:0")
        .env("BRIDGE_STATE__PATH", &state)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains(&state.display().to_string()), "{text}");
    assert!(text.contains("corrupt"), "{text}");
    assert!(text.contains("move it aside"), "{text}");
    // Never silently replaced.
    assert!(
        std::fs::read(&state)
            .unwrap()
            .starts_with(b"this is not a redb file")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_cleared_or_deleted_while_the_bridge_was_down_get_their_resolve() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = BridgeEnv::new(ov.url(), pd.events_url(), dir.path());
    let ids: Vec<u64> = (0..4)
        .map(|_| id_of(&ov.handle.add_alert(AlertSpec::default())))
        .collect();
    let mut child = env.spawn();
    assert!(
        pd.wait_until(Duration::from_secs(20), |pd| pd.incidents().len() == 4)
            .await,
        "{}",
        env.log()
    );
    let status = sigterm(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", env.log());
    let accepted_before = pd.accepted().len();

    // While the bridge is down: one alert cleared, one deleted, two unchanged.
    ov.handle.clear(ids[0]).unwrap();
    ov.handle.delete(ids[1]).unwrap();
    let mut child = env.spawn();
    let resolved = |pd: &pdsim::SimHandle, id: u64| {
        pd.incidents()
            .iter()
            .any(|i| i.dedup_key == dedup_key(id) && i.status == pdsim::IncidentStatus::Resolved)
    };
    assert!(
        pd.wait_until(Duration::from_secs(20), |pd| resolved(pd, ids[0])
            && resolved(pd, ids[1]))
            .await,
        "{}",
        env.log()
    );
    // A few poll cycles later, still nothing for the unchanged ones.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = sigterm(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", env.log());
    let after: Vec<_> = pd.accepted().into_iter().skip(accepted_before).collect();
    assert_eq!(
        after.len(),
        2,
        "only the two resolves went out after the restart: {:?}",
        after
            .iter()
            .map(|e| (e.event_action.clone(), e.dedup_key.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(pd.counters().incidents_opened, 4);
    pd.shutdown();
    ov.stop().await;
}

/// PagerDuty answering 30% 5xx/429 (with Retry-After), then down for six times the backoff
/// cap while the bridge is SIGKILLed and restarted, then back: every alert ends with exactly
/// one incident, and the clears resolve theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flaky_then_down_pagerduty_with_a_crash_loses_and_duplicates_nothing() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let flaky = Faults {
        error_rate: 0.3,
        error_statuses: vec![429, 500, 502, 503],
        retry_after_secs: Some(1),
        ..Faults::default()
    };
    let pd = pdsim::start(loopback, flaky.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = BridgeEnv::new(ov.url(), pd.events_url(), dir.path());
    let ids: Vec<u64> = ov
        .handle
        .generate(&bridge::sim::oneview::GenerateSpec {
            count: 300,
            ..Default::default()
        })
        .collect();
    let mut child = env.spawn();
    pd.wait_until(Duration::from_secs(20), |pd| pd.incidents().len() >= 100)
        .await;
    // Down for 3 s: six times pagerduty.retry_max_delay (500 ms); killed while down.
    pd.set_faults(Faults {
        outage: Some(pdsim::Outage::Status { code: 503 }),
        ..Faults::default()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    bridge_proc::sigkill(&mut child);
    let mut child = env.spawn();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pd.set_faults(flaky);
    assert!(
        pd.wait_until(Duration::from_secs(30), |pd| pd.incidents().len() == 300)
            .await,
        "{} incidents\n{}",
        pd.incidents().len(),
        env.log()
    );
    for id in &ids[..100] {
        ov.handle.clear(*id).unwrap();
    }
    let resolved = |pd: &pdsim::SimHandle| {
        pd.incidents()
            .iter()
            .filter(|i| i.status == pdsim::IncidentStatus::Resolved)
            .count()
    };
    assert!(
        pd.wait_until(Duration::from_secs(30), |pd| resolved(pd) == 100)
            .await,
        "{} resolved\n{}",
        resolved(&pd),
        env.log()
    );
    let status = sigterm(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()));
    let c = pd.counters();
    eprintln!(
        "flaky PagerDuty: {} requests, {} accepted, {} injected errors, {} outage answers, 1 SIGKILL",
        c.requests, c.accepted, c.injected_errors, c.outage
    );
    assert_eq!(c.incidents_opened, 300, "one incident per alert");
    assert_eq!(pd.incidents().len(), 300);
    assert!(c.injected_errors > 0 && c.outage > 0);
    pd.shutdown();
    ov.stop().await;
}

/// A tmpfs mounted for one test (needs CAP_SYS_ADMIN, as in the dev container; elsewhere the
/// tests that need it say so and return). Unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, opts: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIPPED: cannot mount a tmpfs here (no CAP_SYS_ADMIN)");
            return None;
        }
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

async fn ready_status(port: u16) -> (u16, String) {
    match reqwest::get(format!("http://127.0.0.1:{port}/ready")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_volume_is_a_503_not_a_crash_loop() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_ro) = Tmpfs::mount(&dir.path().join("ro"), "ro,size=1m") else {
        return;
    };
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let port = free_port();
    let mut env = BridgeEnv::new(ov.url(), pd.events_url(), dir.path());
    env.state_path = Some(dir.path().join("ro").join("state.redb"));
    env.set("BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    let mut child = env.spawn();
    let uri = ov.handle.add_alert(AlertSpec::default());
    assert!(
        pd.wait_until(Duration::from_secs(20), |pd| pd
            .incidents()
            .iter()
            .any(|i| i.dedup_key == dedup_key(id_of(&uri))))
            .await,
        "paging goes on from memory:\n{}",
        env.log()
    );
    let (code, body) = ready_status(port).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("state_store"), "{body}");
    assert!(body.contains("state.redb"), "{body}");
    assert!(env.log().contains("cannot use the state file"));
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let status = sigterm(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", env.log());
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_volume_is_a_503_and_paging_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_small) = Tmpfs::mount(&dir.path().join("small"), "size=3m") else {
        return;
    };
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let port = free_port();
    let mut env = BridgeEnv::new(ov.url(), pd.events_url(), dir.path());
    env.state_path = Some(dir.path().join("small").join("state.redb"));
    env.set("BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    let mut child = env.spawn();
    // Big descriptions make big outbox entries: the volume fills up mid-storm.
    let specs: Vec<AlertSpec> = (0..3000)
        .map(|i| AlertSpec {
            description: Some(format!("{i} {}", "disk filler ".repeat(150))),
            ..AlertSpec::default()
        })
        .collect();
    ov.handle.add_alerts(&specs);
    assert!(
        pd.wait_until(Duration::from_secs(40), |pd| pd.incidents().len() == 3000)
            .await,
        "{} incidents\n{}",
        pd.incidents().len(),
        env.log()
    );
    let (code, body) = ready_status(port).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("state_store"), "{body}");
    assert!(body.contains("free space"), "{body}");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let status = sigterm(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", env.log());
    pd.shutdown();
    ov.stop().await;
}

/// Writes zeros into `path` until the volume is full.
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_volume_recovers_on_its_own_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_vol) = Tmpfs::mount(&dir.path().join("vol"), "size=16m") else {
        return;
    };
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let port = free_port();
    let state = dir.path().join("vol").join("state.redb");
    let mut env = BridgeEnv::new(ov.url(), pd.events_url(), dir.path());
    env.state_path = Some(state.clone());
    env.set("BRIDGE_SERVER__LISTEN", format!("127.0.0.1:{port}"));
    let mut child = env.spawn();
    let specs = |from: usize, n: usize| -> Vec<AlertSpec> {
        (from..from + n)
            .map(|i| AlertSpec {
                description: Some(format!("{i} {}", "fan failure ".repeat(20))),
                ..AlertSpec::default()
            })
            .collect()
    };
    ov.handle.add_alerts(&specs(0, 100));
    assert!(
        pd.wait_until(Duration::from_secs(30), |pd| pd.incidents().len() == 100)
            .await
    );
    let (code, body) = ready_status(port).await;
    assert_eq!(code, 200, "{body}");
    // The volume fills up (another writer); the next 200 alerts page from memory.
    let filler = dir.path().join("vol").join("filler");
    fill(&filler);
    ov.handle.add_alerts(&specs(100, 200));
    assert!(
        pd.wait_until(Duration::from_secs(30), |pd| pd.incidents().len() == 300)
            .await,
        "paging goes on with a full volume:\n{}",
        env.log()
    );
    let mut failing = false;
    for _ in 0..100 {
        let (code, body) = ready_status(port).await;
        if code == 503 && body.contains("state_store") {
            failing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(failing, "a full volume is a 503:\n{}", env.log());
    // Space returns: no restart, the store reopens and catches up.
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..200 {
        if ready_status(port).await.0 == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "ready again without a restart:\n{}", env.log());
    assert!(env.log().contains("state file reopened"), "{}", env.log());
    let status = sigterm(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", env.log());
    // What was accepted during the failure is on disk: a new bridge on the file knows all 300
    // incidents and re-sends none of them.
    let accepted = pd.counters().accepted;
    let mut child = env.spawn();
    let mut synced = false;
    for _ in 0..200 {
        if ready_status(port).await.0 == 200 {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(synced, "{}", env.log());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        pd.counters().accepted,
        accepted,
        "no trigger re-sent after the restart: the ledger caught up"
    );
    let status = sigterm(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{}", env.log());
    pd.shutdown();
    ov.stop().await;
}
