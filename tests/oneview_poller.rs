//! The poller against the simulator over real HTTP: full sync, incremental changes, the cost
//! of an idle poll over 50,000 stored alerts, malformed alerts and pages, readiness, backoff,
//! resync and logout on shutdown. Time is tokio's paused clock.

mod oneview_support;

use std::sync::Arc;
use std::time::Duration;

use bridge::config::RawConfig;
use bridge::metrics::encode_openmetrics;
use bridge::model::{AlertChange, ChangeKind};
use bridge::oneview::{self, PollKind, PollerHandle, SessionState};
use bridge::readiness::Readiness;
use bridge::sim::oneview::{AlertSpec, Faults, GenerateSpec, RunningSim, SimConfig};
use oneview_support::*;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const DAY_MS: i64 = 24 * 3600 * 1000;

struct Harness {
    sim: RunningSim,
    poll_now: Arc<tokio::sync::Notify>,
    status: Arc<oneview::PollerStatus>,
    rx: mpsc::Receiver<AlertChange>,
    readiness: Arc<Readiness>,
    registry: Registry,
    work: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn harness(
    sim_cfg: SimConfig,
    setup: impl FnOnce(&RunningSim),
    tweak: impl FnOnce(&mut RawConfig),
    capacity: usize,
) -> Harness {
    let sim = start_sim(sim_cfg).await;
    setup(&sim);
    let cfg = config(&sim.url(), |r| {
        r.poller.interval = Duration::from_secs(30);
        tweak(r);
    });
    let mut registry = Registry::default();
    let readiness = Arc::new(Readiness::new());
    let (tx, rx) = mpsc::channel(capacity);
    let work = CancellationToken::new();
    let PollerHandle {
        task,
        poll_now,
        status,
        ..
    } = oneview::assemble(&cfg, &mut registry, readiness.clone(), tx, work.clone()).unwrap();
    let task = tokio::spawn(task);
    Harness {
        sim,
        poll_now,
        status,
        rx,
        readiness,
        registry,
        work,
        task,
    }
}

impl Harness {
    async fn ready(&self) {
        let r = self.readiness.clone();
        wait_for("readiness", Duration::from_secs(120), || r.report().ready).await;
    }

    /// Runs one poll cycle now and waits for it to finish.
    async fn poll(&self) {
        let before = self.status.snapshot().cycles;
        self.poll_now.notify_one();
        let s = self.status.clone();
        wait_for("a poll cycle", Duration::from_secs(10), || {
            s.snapshot().cycles > before
        })
        .await;
    }

    fn drain(&mut self) -> Vec<AlertChange> {
        let mut v = Vec::new();
        while let Ok(c) = self.rx.try_recv() {
            v.push(c);
        }
        v
    }

    fn metrics(&self) -> String {
        encode_openmetrics(&self.registry)
    }

    async fn shutdown(self) -> RunningSim {
        self.work.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the poller stops")
            .unwrap();
        self.sim
    }
}

fn old(mut s: AlertSpec) -> AlertSpec {
    s.age_ms = Some(DAY_MS);
    s
}

fn kinds(changes: &[AlertChange]) -> Vec<(ChangeKind, String)> {
    let mut v: Vec<_> = changes
        .iter()
        .map(|c| (c.kind, c.alert.uri.clone()))
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v
}

#[tokio::test(start_paused = true)]
async fn full_sync_then_incremental_changes() {
    let mut uris = Vec::new();
    let mut h = harness(
        SimConfig::default(),
        |s| {
            // Stamped a day ago, so that the first incremental window does not hold them.
            uris = s.handle.add_alerts(&[
                old(spec("Critical", "Active")),  // 0 raised
                old(spec("Warning", "Active")),   // 1 raised
                old(spec("Warning", "Locked")),   // 2 raised
                old(spec("Critical", "Cleared")), // 3 not open
                old(spec("Unknown", "Active")),   // 4 not watched
                old(spec("OK", "Active")),        // 5 auto-cleared
            ]);
        },
        |_| {},
        100,
    )
    .await;
    assert!(!h.readiness.report().ready);
    h.ready().await;
    let first = h.drain();
    assert_eq!(
        kinds(&first),
        vec![
            (ChangeKind::Raised, uris[0].clone()),
            (ChangeKind::Raised, uris[1].clone()),
            (ChangeKind::Raised, uris[2].clone()),
        ]
    );
    let c = &first[0];
    assert_eq!(&*c.appliance.id, "ov-test");
    assert_eq!(c.key.to_string(), format!("ov-test{}", c.alert.uri));
    assert!(c.appliance.ui_url.starts_with("http://127.0.0.1:"));

    let sim = h.sim.handle.clone();
    tokio::time::advance(Duration::from_secs(1)).await;
    sim.set_severity(id_of(&uris[0]), "Warning").unwrap(); // Updated
    sim.clear(id_of(&uris[1])).unwrap(); // Cleared
    sim.set_description(id_of(&uris[2]), "Fan 3 failed")
        .unwrap(); // Updated
    sim.set_severity(id_of(&uris[4]), "Critical").unwrap(); // Raised (now watched)
    let new_open = sim.add_alert(spec("Critical", "Active")); // Raised
    // Raised and cleared between two polls after the first sync: nobody was paged, so no
    // resolve. A cleared alert from before the sync that changes now may have an incident from
    // an earlier run of the bridge: its resolve goes out.
    let _between_polls = sim.add_alert(spec("Warning", "Cleared"));
    sim.set_description(id_of(&uris[3]), "Cold start.").unwrap(); // Cleared (unknown before)
    h.poll().await;
    assert_eq!(
        h.status.snapshot().last_poll_kind,
        Some(PollKind::Incremental)
    );
    let mut expected = vec![
        (ChangeKind::Updated, uris[0].clone()),
        (ChangeKind::Cleared, uris[1].clone()),
        (ChangeKind::Updated, uris[2].clone()),
        (ChangeKind::Raised, uris[4].clone()),
        (ChangeKind::Raised, new_open.clone()),
        (ChangeKind::Cleared, uris[3].clone()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(kinds(&h.drain()), expected);

    // Overlapping windows do not repeat changes.
    h.poll().await;
    assert!(h.drain().is_empty());

    // Severity OK auto-clears; a move to an unwatched severity counts as cleared.
    tokio::time::advance(Duration::from_secs(1)).await;
    sim.set_severity(id_of(&uris[0]), "OK").unwrap();
    sim.set_severity(id_of(&uris[2]), "Unknown").unwrap();
    h.poll().await;
    let mut expected = vec![
        (ChangeKind::Cleared, uris[0].clone()),
        (ChangeKind::Cleared, uris[2].clone()),
    ];
    expected.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(kinds(&h.drain()), expected);
    assert_eq!(h.status.snapshot().open_alerts, 2);
    let m = h.metrics();
    assert!(
        m.contains("bridge_oneview_open_alerts{appliance=\"ov-test\"} 2"),
        "{m}"
    );
    h.shutdown().await.stop().await;
}

/// A walk is not a snapshot. While delivery's backpressure holds a walk on its first page, an
/// alert behind it changes (it enters the filtered set before the offset, so this walk never
/// reads it) and, 5 s later, an alert ahead of it changes too. The next poll must still read
/// the first one: the watermark once followed the newest `modified` seen, which put it past
/// the missed change (the 100,000-alert storm benchmark lost 13,849 resolves that way).
#[tokio::test(start_paused = true)]
async fn changes_behind_a_slow_walk_are_read_by_the_next_poll() {
    let mut uris = Vec::new();
    let mut h = harness(
        SimConfig::default(),
        |s| {
            uris = s
                .handle
                .add_alerts(&vec![old(spec("Warning", "Active")); 6]);
        },
        |r| {
            r.poller.page_size = 2;
            r.poller.watermark_overlap = Duration::from_secs(1);
        },
        1,
    )
    .await;
    for _ in 0..6 {
        assert_eq!(h.rx.recv().await.unwrap().kind, ChangeKind::Raised);
    }
    h.ready().await;
    let sim = h.sim.handle.clone();
    tokio::time::advance(Duration::from_secs(5)).await;
    // The next walk has three pages: [1] [2] | [3] [5] | nothing yet. Page 1 holds two
    // changes: the first fills the channel, the second holds the walk on page 1.
    sim.clear(id_of(&uris[1])).unwrap();
    sim.clear(id_of(&uris[2])).unwrap();
    sim.set_description(id_of(&uris[3]), "PSU 1 lost power")
        .unwrap();
    sim.set_description(id_of(&uris[5]), "Fan 2 degraded")
        .unwrap();
    let cycles = h.status.snapshot().cycles;
    h.poll_now.notify_one();
    wait_for("the walk held on page 1", Duration::from_secs(10), || {
        h.rx.len() == 1
    })
    .await;
    // Behind the walk: [0] enters the set at its front. Ahead of it, 5 s later: [5] again.
    sim.clear(id_of(&uris[0])).unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    sim.set_description(id_of(&uris[5]), "Fan 2 failed")
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(h.rx.recv().await.unwrap());
    }
    let s = h.status.clone();
    wait_for("the held poll", Duration::from_secs(10), || {
        s.snapshot().cycles > cycles
    })
    .await;
    assert_eq!(
        kinds(&seen),
        vec![
            (ChangeKind::Cleared, uris[1].clone()),
            (ChangeKind::Cleared, uris[2].clone()),
            (ChangeKind::Updated, uris[3].clone()),
            (ChangeKind::Updated, uris[5].clone()),
        ],
        "the held walk cannot have read [0]"
    );
    h.poll().await;
    assert_eq!(
        kinds(&h.drain()),
        vec![(ChangeKind::Cleared, uris[0].clone())],
        "the next poll reads what the held walk missed"
    );
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_incremental_poll_over_50000_alerts_sends_no_members() {
    let mut h = harness(
        SimConfig::default(),
        |s| {
            s.handle.generate(&GenerateSpec {
                count: 50_000,
                state: Some("Cleared".into()),
                max_age_ms: 30 * DAY_MS,
                ..GenerateSpec::default()
            });
            s.handle.generate(&GenerateSpec {
                count: 10,
                severity: Some("Critical".into()),
                max_age_ms: DAY_MS,
                ..GenerateSpec::default()
            });
        },
        |_| {},
        100,
    )
    .await;
    h.ready().await;
    assert_eq!(h.drain().len(), 10);
    assert_eq!(h.sim.handle.alert_count(), 50_010);

    h.sim.handle.reset_counters();
    h.poll().await;
    assert_eq!(
        h.status.snapshot().last_poll_kind,
        Some(PollKind::Incremental)
    );
    let c = h.sim.handle.counters();
    assert_eq!(c.requests("alerts"), 1);
    assert_eq!(c.members_sent, 0);
    assert!(c.member_bytes < 300, "{} bytes of members", c.member_bytes);
    let envelope = c.response_bytes.get("alerts").copied().unwrap_or(0);
    assert!(envelope > 0 && envelope < 1000, "{envelope} bytes in all");
    assert!(h.drain().is_empty());

    // One change costs one member.
    h.sim.handle.reset_counters();
    tokio::time::advance(Duration::from_secs(5)).await;
    let open_id = 50_001;
    h.sim.handle.clear(open_id).unwrap();
    h.poll().await;
    let c = h.sim.handle.counters();
    assert_eq!(c.members_sent, 1);
    let changes = h.drain();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::Cleared);
    assert!(
        h.metrics()
            .contains("bridge_oneview_alerts_in_last_poll{appliance=\"ov-test\"} 1")
    );
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn malformed_alert_is_skipped_and_malformed_page_fails_the_cycle() {
    let mut uris = Vec::new();
    let mut h = harness(
        SimConfig::default(),
        |s| {
            uris = s.handle.add_alerts(&vec![spec("Critical", "Active"); 3]);
            s.handle.corrupt(id_of(&uris[1])).unwrap();
        },
        |_| {},
        100,
    )
    .await;
    h.ready().await;
    let raised = h.drain();
    assert_eq!(
        raised.len(),
        2,
        "the malformed alert is skipped, the rest used"
    );
    let m = h.metrics();
    assert!(
        m.contains("bridge_oneview_alerts_malformed_total{appliance=\"ov-test\"} 1"),
        "{m}"
    );

    h.sim.handle.update_faults(|f| f.garbage_next = 1);
    h.poll().await;
    let s = h.status.snapshot();
    let err = s.last_error.expect("the cycle failed");
    assert!(err.contains("not an alert collection page"), "{err}");
    let m = h.metrics();
    assert!(
        m.contains("bridge_oneview_polls_total{appliance=\"ov-test\",kind=\"incremental\",outcome=\"failure\"} 1"),
        "{m}"
    );

    h.sim.handle.update_faults(|f| f.html_next = 1);
    h.poll().await;
    let err = h.status.snapshot().last_error.unwrap();
    assert!(err.contains("<html>"), "{err}");

    h.sim.handle.update_faults(|f| f.bad_envelope_next = 1);
    h.poll().await;
    let err = h.status.snapshot().last_error.unwrap();
    assert!(err.contains("members"), "{err}");

    h.poll().await;
    assert!(h.status.snapshot().last_error.is_none());
    assert!(h.drain().is_empty());
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn logout_on_shutdown() {
    let h = harness(
        SimConfig::default(),
        |s| {
            s.handle.add_alert(spec("Critical", "Active"));
        },
        |_| {},
        100,
    )
    .await;
    h.ready().await;
    assert_eq!(h.sim.handle.session_count(), 1);
    let status = h.status.clone();
    let sim = h.shutdown().await;
    assert_eq!(sim.handle.session_count(), 0);
    assert_eq!(sim.handle.counters().logouts, 1);
    assert_eq!(status.snapshot().session, SessionState::NotLoggedIn);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_appliance_does_not_stall_shutdown() {
    let h = harness(SimConfig::default(), |_| {}, |_| {}, 100).await;
    h.ready().await;
    h.sim.handle.update_faults(|f| f.latency_ms = 3_600_000);
    h.poll_now.notify_one();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = tokio::time::Instant::now();
    let sim = h.shutdown().await;
    assert!(
        start.elapsed() <= Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_session_sync_and_failing_polls() {
    let h = harness(
        SimConfig::default(),
        |s| {
            s.handle.add_alert(spec("Critical", "Active"));
        },
        |r| r.poller.interval = Duration::from_secs(10),
        100,
    )
    .await;
    let report = h.readiness.report();
    let unmet: Vec<_> = report.unmet.iter().map(|u| u.condition.as_str()).collect();
    assert_eq!(unmet, vec!["initial_sync"]);
    assert!(report.unmet[0].reason.contains("ov-test: "), "{report:?}");
    h.ready().await;

    // OneView starts failing: still ready (a restart would not fix the appliance), and the
    // appliance is a named warning with how long polls have failed.
    h.sim.handle.update_faults(|f| f.fail_next = 1_000_000);
    let r = h.readiness.clone();
    wait_for("a warning", Duration::from_secs(300), || {
        !r.report().warnings.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let report = h.readiness.report();
    assert!(report.ready, "{report:?}");
    assert_eq!(report.warnings[0].condition, "appliance:ov-test");
    assert!(
        report.warnings[0]
            .reason
            .contains("no successful OneView poll for"),
        "{report:?}"
    );
    assert!(report.appliances[0].synced && report.appliances[0].problem.is_some());

    // Recovery.
    h.sim.handle.set_faults(Faults::default());
    h.poll().await;
    let report = h.readiness.report();
    assert!(report.ready && report.warnings.is_empty(), "{report:?}");
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn polling_backs_off_while_oneview_keeps_failing() {
    let h = harness(
        SimConfig::default(),
        |s| {
            s.handle.add_alert(spec("Critical", "Active"));
        },
        |_| {},
        100,
    )
    .await;
    h.ready().await;
    h.sim.handle.reset_counters();
    h.sim.handle.update_faults(|f| f.fail_next = 1_000_000);
    let cycles_before = h.status.snapshot().cycles;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let cycles = h.status.snapshot().cycles - cycles_before;
    let requests = h.sim.handle.counters().requests("alerts");
    // Without backoff: 20 cycles of 3 tries each in 10 minutes at a 30s interval.
    assert!((3..=8).contains(&cycles), "{cycles} cycles");
    assert!(requests <= 3 * cycles, "{requests} requests");
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wrong_password_backs_off_and_keeps_readiness_down() {
    let h = harness(
        SimConfig::default(),
        |_| {},
        |r| r.oneview.password = Some(secrecy::SecretString::from("nope".to_owned())),
        100,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let failures = h.sim.handle.counters().login_failures;
    assert!(
        (2..=8).contains(&failures),
        "{failures} logins in 10 minutes"
    );
    let report = h.readiness.report();
    let sync = report
        .unmet
        .iter()
        .find(|u| u.condition == "initial_sync")
        .expect("not ready");
    assert!(sync.reason.contains("AUTHN_AUTH_FAIL"), "{report:?}");
    assert!(!report.appliances[0].session);
    assert_eq!(h.status.snapshot().session, SessionState::LoginFailed);
    let m = h.metrics();
    assert!(
        m.contains(&format!(
            "bridge_oneview_logins_total{{appliance=\"ov-test\",outcome=\"auth_failed\"}} {failures}"
        )),
        "{m}"
    );
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn periodic_resync_clears_alerts_deleted_on_the_appliance() {
    let mut uri = String::new();
    let mut h = harness(
        SimConfig::default(),
        |s| uri = s.handle.add_alert(spec("Critical", "Active")),
        |r| {
            r.poller.interval = Duration::from_secs(10);
            r.poller.resync_interval = Duration::from_secs(60);
        },
        100,
    )
    .await;
    h.ready().await;
    assert_eq!(h.drain().len(), 1);
    h.sim.handle.delete(id_of(&uri)).unwrap();
    h.poll().await;
    assert!(
        h.drain().is_empty(),
        "an incremental poll cannot see a deletion"
    );
    let change = tokio::time::timeout(Duration::from_secs(120), h.rx.recv())
        .await
        .expect("the resync runs")
        .unwrap();
    assert_eq!(change.kind, ChangeKind::Cleared);
    assert_eq!(change.alert.uri, uri);
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_empty_answer_at_a_resync_clears_nothing_and_a_confirmed_mass_clear_clears_all() {
    let mut h = harness(
        SimConfig::default(),
        |s| {
            s.handle.generate(&GenerateSpec {
                count: 120,
                severity: Some("Critical".into()),
                ..Default::default()
            });
        },
        |r| {
            r.poller.interval = Duration::from_secs(10);
            r.poller.resync_interval = Duration::from_secs(10);
        },
        1000,
    )
    .await;
    h.ready().await;
    assert_eq!(h.drain().len(), 120);
    // The appliance restarts its services: one collection answer is 200 with total 0.
    h.sim.handle.update_faults(|f| f.empty_next = 1);
    // Every cycle is a full sync (resync_interval = interval).
    let status = h.status.clone();
    let cycle = |n: u64| {
        let s = status.clone();
        wait_for("a full sync", Duration::from_secs(120), move || {
            s.snapshot().cycles >= n
        })
    };
    cycle(2).await;
    let m = h.metrics();
    assert!(
        m.contains("bridge_oneview_implausible_snapshots_total{appliance=\"ov-test\"} 1"),
        "{m}"
    );
    assert!(
        h.status
            .snapshot()
            .last_error
            .is_some_and(|e| e.starts_with("implausible_snapshot")),
        "{:?}",
        h.status.snapshot()
    );
    let sampled = h.sim.handle.counters().requests("alert");
    assert!(
        (1..=20).contains(&sampled),
        "a sample is read one by one, not all 120: {sampled}"
    );
    cycle(3).await;
    assert!(
        h.drain().is_empty(),
        "nothing cleared, nothing raised again by the next sync"
    );
    assert_eq!(h.status.snapshot().open_alerts, 120);
    // A real mass clear: every alert is deleted, the sample confirms it, all clear at once.
    for id in 1..=120 {
        h.sim.handle.delete(id).unwrap();
    }
    cycle(4).await;
    let changes = h.drain();
    assert_eq!(changes.len(), 120);
    assert!(changes.iter().all(|c| c.kind == ChangeKind::Cleared));
    assert!(
        h.metrics()
            .contains("bridge_oneview_implausible_snapshots_total{appliance=\"ov-test\"} 1")
    );
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_channel_makes_the_poller_wait() {
    let mut h = harness(
        SimConfig::default(),
        |s| {
            s.handle.add_alerts(&vec![spec("Warning", "Active"); 5]);
        },
        |_| {},
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.status.snapshot().cycles, 0, "blocked on the channel");
    assert!(!h.readiness.report().ready);
    for _ in 0..5 {
        let c = h.rx.recv().await.unwrap();
        assert_eq!(c.kind, ChangeKind::Raised);
    }
    h.ready().await;
    h.shutdown().await.stop().await;
}

#[tokio::test]
async fn metric_families_exist_at_zero() {
    let h = harness(SimConfig::default(), |_| {}, |_| {}, 100).await;
    let m = h.metrics();
    for needle in [
        "bridge_oneview_polls_total{appliance=\"ov-test\",kind=\"full\",outcome=\"success\"}",
        "bridge_oneview_polls_total{appliance=\"ov-test\",kind=\"incremental\",outcome=\"failure\"}",
        "bridge_oneview_poll_duration_seconds_count{appliance=\"ov-test\",kind=\"incremental\"}",
        "bridge_oneview_alerts_in_last_poll",
        "bridge_oneview_alerts_malformed_total{appliance=\"ov-test\"} 0",
        "bridge_oneview_request_duration_seconds_count{appliance=\"ov-test\",endpoint=\"alert\",status_class=\"error\"} 0",
        "bridge_oneview_logins_total{appliance=\"ov-test\",outcome=\"auth_failed\"} 0",
        "bridge_oneview_session_age_seconds",
        "bridge_oneview_last_successful_poll_timestamp_seconds",
        "bridge_oneview_open_alerts",
    ] {
        assert!(m.contains(needle), "{needle} missing in\n{m}");
    }
    promtool_accepts(&bridge::metrics::openmetrics_to_prometheus_text(&m));
    h.shutdown().await.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_sync_keeps_initial_sync_unmet_with_the_reason() {
    let h = harness(
        SimConfig::default(),
        |s| s.handle.update_faults(|f| f.html_next = 1),
        |_| {},
        100,
    )
    .await;
    let s = h.status.clone();
    wait_for("first cycle", Duration::from_secs(10), || {
        s.snapshot().cycles >= 1
    })
    .await;
    let report = h.readiness.report();
    let unmet: Vec<_> = report.unmet.iter().map(|u| u.condition.as_str()).collect();
    assert_eq!(unmet, vec!["initial_sync"], "{report:?}");
    assert!(report.unmet[0].reason.contains("<html>"), "{report:?}");
    h.poll().await;
    assert!(h.readiness.report().ready);
    h.shutdown().await.stop().await;
}

/// Each way an appliance can fail, one after the other on one running poller: while it fails,
/// polling backs off (each failed cycle is one probe of a few requests, never a hammering loop)
/// and readiness goes down; once the appliance is healthy the poller recovers on its own and
/// sees what changed meanwhile.
#[tokio::test(start_paused = true)]
async fn every_failure_mode_backs_off_and_recovers_on_its_own() {
    let mut h = harness(
        SimConfig::default(),
        |s| {
            s.handle.add_alert(spec("Critical", "Active"));
        },
        |r| r.oneview.request_timeout = Duration::from_secs(5),
        1000,
    )
    .await;
    h.ready().await;
    h.drain();
    let many = 1_000_000;
    let modes: Vec<(&str, Faults)> = vec![
        (
            "down (503)",
            Faults {
                fail_next: many,
                ..Faults::default()
            },
        ),
        (
            "connections dropped",
            Faults {
                drop_next: many,
                ..Faults::default()
            },
        ),
        (
            "garbage JSON",
            Faults {
                garbage_next: many,
                ..Faults::default()
            },
        ),
        (
            "HTML error pages",
            Faults {
                html_next: many,
                ..Faults::default()
            },
        ),
        (
            "JSON without members",
            Faults {
                bad_envelope_next: many,
                ..Faults::default()
            },
        ),
        (
            "slow (10 s answers)",
            Faults {
                latency_ms: 10_000,
                ..Faults::default()
            },
        ),
    ];
    let mut faults_checked = 0;
    for (name, faults) in modes {
        h.sim.handle.reset_counters();
        h.sim.handle.set_faults(faults);
        let before = h.status.snapshot().cycles;
        tokio::time::sleep(Duration::from_secs(900)).await;
        let cycles = h.status.snapshot().cycles - before;
        let requests = h.sim.handle.counters().requests("alerts");
        // A 30 s interval without backoff would be 30 cycles; with backoff (30 s doubling to
        // the 300 s cap, jittered) it is a handful.
        assert!(
            (2..=12).contains(&cycles),
            "{name}: {cycles} cycles in 15 minutes"
        );
        assert!(
            requests <= 3 * cycles.max(1),
            "{name}: {requests} requests for {cycles} cycles"
        );
        let report = h.readiness.report();
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.condition == "appliance:ov-test"),
            "{name}: the failing appliance is a named warning: {report:?}"
        );
        // Healthy again: recovers without help, within one backoff step, and sees the news.
        h.sim.handle.set_faults(Faults::default());
        let uri = h.sim.handle.add_alert(spec("Warning", "Active"));
        let r = h.readiness.clone();
        wait_for(name, Duration::from_secs(700), || {
            r.report().warnings.is_empty()
        })
        .await;
        let seen = h.drain().iter().any(|c| c.alert.uri == uri);
        assert!(
            seen,
            "{name}: the alert raised during the failure is seen after recovery"
        );
        faults_checked += 1;
    }
    assert_eq!(faults_checked, 6);
    h.shutdown().await.stop().await;
}

/// Sessions that expire every 3 seconds while polling every 5: each poll logs in again and
/// replays, no cycle fails, readiness stays up and changes keep flowing.
#[tokio::test(start_paused = true)]
async fn sessions_expiring_every_few_seconds_do_not_fail_polls() {
    let mut h = harness(
        SimConfig {
            idle_timeout: Duration::from_secs(3),
            ..SimConfig::default()
        },
        |s| {
            s.handle.add_alert(spec("Critical", "Active"));
        },
        |r| r.poller.interval = Duration::from_secs(5),
        1000,
    )
    .await;
    h.ready().await;
    h.drain();
    h.sim.handle.reset_counters();
    let before = h.status.snapshot().cycles;
    let mut raised = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        raised.push(h.sim.handle.add_alert(spec("Warning", "Active")));
        assert!(h.readiness.report().ready, "{:?}", h.readiness.report());
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cycles = h.status.snapshot().cycles - before;
    let logins = h.sim.handle.counters().requests("login");
    assert!(cycles >= 50, "{cycles} cycles in 5 minutes");
    assert!(logins >= 40, "sessions really expired: {logins} logins");
    assert!(
        logins <= cycles + 2,
        "one login per expired session: {logins} for {cycles}"
    );
    let seen: Vec<String> = h.drain().iter().map(|c| c.alert.uri.clone()).collect();
    for uri in &raised {
        assert!(seen.contains(uri), "{uri} seen");
    }
    h.shutdown().await.stop().await;
}
