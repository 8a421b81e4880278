//! The delivery pipeline against the PagerDuty simulator over real HTTP, fed `AlertChange`s
//! built from the real OneView fixtures.
//!
//! Every test runs on paused tokio time: rate windows, `Retry-After` and "nothing more happens
//! before X" are asserted on the virtual clock the simulator and the pipeline share, exactly and
//! without slack, whatever the load on the machine (see `pagerduty_support` for the waits).

mod pagerduty_support;

use std::collections::HashMap;
use std::time::Duration;

use bridge::model::{ChangeKind, Severity};
use bridge::sim::pagerduty::{Faults, IncidentStatus, Outage};
use pagerduty_support::*;

#[tokio::test(start_paused = true)]
async fn raised_alerts_open_one_incident_each_and_clears_resolve_them() {
    let h = Harness::start(Faults::default(), |_| {}).await;
    let mut live = h.status.subscribe();
    let alerts = fixture_alerts();
    let n = alerts.len();
    assert!(n >= 5);
    for a in &alerts {
        h.send(ChangeKind::Raised, a).await;
    }
    h.wait_accepted(n).await;
    let first = live.recv().await.unwrap();
    assert!(first.accepted && first.summary.contains(" - "), "{first:?}");
    let incidents = h.sim.incidents();
    assert_eq!(incidents.len(), n);
    assert!(
        incidents
            .iter()
            .all(|i| i.status == IncidentStatus::Triggered)
    );
    assert!(incidents.iter().all(|i| i.routing_key == ROUTING_KEY));
    let sev: HashMap<_, _> = incidents
        .iter()
        .map(|i| (i.dedup_key.clone(), i.severity.clone()))
        .collect();
    for a in &alerts {
        let want = if a.severity == Severity::Critical {
            "critical"
        } else {
            "warning"
        };
        assert_eq!(sev[&dedup_key(a)], want);
    }

    for a in &alerts {
        let mut cleared = a.clone();
        cleared.alert_state = bridge::model::AlertState::Cleared;
        h.send(ChangeKind::Cleared, &cleared).await;
    }
    h.wait_accepted(2 * n).await;
    h.wait_idle().await;
    let incidents = h.sim.incidents();
    assert_eq!(incidents.len(), n);
    assert!(
        incidents
            .iter()
            .all(|i| i.status == IncidentStatus::Resolved)
    );
    // Resolves carry the payload too.
    for e in h
        .sim
        .accepted()
        .iter()
        .filter(|e| e.event_action.as_deref() == Some("resolve"))
    {
        assert!(e.body.as_ref().unwrap()["payload"]["summary"].is_string());
    }
    let m = h.metrics();
    assert_eq!(
        sample(
            &m,
            r#"bridge_pagerduty_events_total{action="trigger",outcome="accepted"}"#
        ),
        Some(n as f64)
    );
    assert_eq!(
        sample(
            &m,
            r#"bridge_pagerduty_events_total{action="resolve",outcome="accepted"}"#
        ),
        Some(n as f64)
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn metrics_exist_at_zero_before_any_event() {
    let h = Harness::start(Faults::default(), |_| {}).await;
    let m = h.metrics();
    for series in [
        r#"bridge_pagerduty_events_total{action="trigger",outcome="accepted"}"#,
        r#"bridge_pagerduty_events_total{action="resolve",outcome="retried"}"#,
        r#"bridge_pagerduty_http_responses_total{code="connect_error"}"#,
        r#"bridge_pagerduty_http_responses_total{code="429"}"#,
        "bridge_pagerduty_queue_depth",
        "bridge_pagerduty_queue_oldest_age_seconds",
        "bridge_pagerduty_rate_limit_waits_total",
        "bridge_pagerduty_dead_letters",
        "bridge_pagerduty_dedup_cache_entries",
        "bridge_pagerduty_cancelled_total",
    ] {
        assert_eq!(sample(&m, series), Some(0.0), "{series} missing in\n{m}");
    }
    assert!(m.contains(r#"bridge_pagerduty_delivery_duration_seconds_count{action="trigger"} 0"#));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn severity_change_is_one_more_trigger_on_the_same_incident_and_unchanged_is_not_resent() {
    let h = Harness::start(Faults::default(), |_| {}).await;
    let alerts = fixture_alerts();
    let mut a = alerts
        .iter()
        .find(|a| a.severity == Severity::Warning)
        .unwrap()
        .clone();
    let marker1 = &alerts[alerts.len() - 1];
    h.send(ChangeKind::Raised, &a).await;
    h.wait_accepted(1).await;

    a.severity = Severity::Critical;
    h.send(ChangeKind::Updated, &a).await;
    h.wait_accepted(2).await;
    let inc = h.sim.incidents();
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].triggers, 2);
    assert_eq!(inc[0].severity, "critical");

    // The same alert seen again (resync, restart of the poller's view): nothing is sent.
    h.send(ChangeKind::Raised, &a).await;
    h.send(ChangeKind::Updated, &a).await;
    // A marker behind them in the channel proves they were processed.
    h.send(ChangeKind::Raised, marker1).await;
    h.wait_accepted(3).await;
    h.wait_idle().await;
    let keys: Vec<_> = h
        .sim
        .accepted()
        .iter()
        .map(|e| e.dedup_key.clone().unwrap())
        .collect();
    assert_eq!(
        keys.iter().filter(|k| **k == dedup_key(&a)).count(),
        2,
        "{keys:?}"
    );
    assert_eq!(h.sim.incidents().len(), 2);

    // A second clear after the resolve is not re-sent either.
    h.send(ChangeKind::Cleared, &a).await;
    h.send(ChangeKind::Cleared, &a).await;
    h.wait_accepted(4).await;
    h.send(ChangeKind::Cleared, marker1).await;
    h.wait_accepted(5).await;
    h.wait_idle().await;
    assert_eq!(h.sim.accepted().len(), 5);
    // The cache size gauge is refreshed once a second.
    let ok = wait_for(|| sample(&h.metrics(), "bridge_pagerduty_dedup_cache_entries") == Some(2.0))
        .await;
    assert!(ok, "{}", h.metrics());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn rejected_event_is_not_retried_and_becomes_a_dead_letter() {
    let alerts = fixture_alerts();
    let bad = alerts[1].clone();
    let faults = Faults {
        reject_dedup_key_containing: Some(bad.uri.clone()),
        ..Default::default()
    };
    let h = Harness::start(faults, |_| {}).await;
    for a in &alerts {
        h.send(ChangeKind::Raised, a).await;
    }
    h.wait_accepted(alerts.len() - 1).await;
    h.wait_idle().await;
    let tries = h
        .sim
        .events()
        .iter()
        .filter(|e| e.dedup_key.as_deref() == Some(&dedup_key(&bad)))
        .count();
    assert_eq!(tries, 1, "a 400 is never retried");
    let snap = h.status.snapshot();
    assert_eq!(snap.dead_letters.len(), 1);
    let dl = &snap.dead_letters[0];
    assert_eq!(dl.dedup_key, dedup_key(&bad));
    assert_eq!(dl.status, 400);
    assert!(dl.errors.iter().any(|e| e.contains("dedup_key")), "{dl:?}");
    let m = h.metrics();
    assert_eq!(sample(&m, "bridge_pagerduty_dead_letters"), Some(1.0));
    assert_eq!(
        sample(
            &m,
            r#"bridge_pagerduty_events_total{action="trigger",outcome="rejected"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, r#"bridge_pagerduty_http_responses_total{code="400"}"#),
        Some(1.0)
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn thirty_percent_errors_still_deliver_everything_once() {
    let faults = Faults {
        error_rate: 0.3,
        error_statuses: vec![429, 500, 502, 503],
        retry_after_secs: Some(0),
        seed: 7,
        ..Default::default()
    };
    let h = Harness::start(faults, |_| {}).await;
    let alerts = many_alerts(60);
    for a in &alerts {
        h.send(ChangeKind::Raised, a).await;
    }
    h.wait_accepted(60).await;
    h.wait_idle().await;
    let incidents = h.sim.incidents();
    assert_eq!(incidents.len(), 60, "no duplicate incident");
    assert!(incidents.iter().all(|i| i.triggers == 1));
    assert!(h.sim.counters().injected_errors > 0);
    let m = h.metrics();
    assert!(
        sample(
            &m,
            r#"bridge_pagerduty_events_total{action="trigger",outcome="retried"}"#
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(sample(&m, "bridge_pagerduty_dead_letters"), Some(0.0));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn outage_then_recovery_delivers_all_in_per_key_order() {
    let h = Harness::start(Faults::default(), |r| {
        r.pagerduty.concurrency = 4;
    })
    .await;
    h.sim.set_faults(Faults {
        outage: Some(Outage::Drop),
        ..Default::default()
    });
    let alerts = many_alerts(8);
    for a in &alerts {
        h.send(ChangeKind::Raised, a).await;
    }
    // Wait until the first attempts failed: 4 keys are in flight (retrying), 4 queued.
    assert!(wait_for(|| h.sim.counters().dropped_connections >= 4).await);
    assert!(
        h.readiness.report().ready,
        "PagerDuty down is a warning, not a 503"
    );
    let warned = wait_for(|| {
        h.readiness
            .report()
            .warnings
            .iter()
            .any(|w| w.condition == "pagerduty")
    })
    .await;
    assert!(warned, "{:?}", h.readiness.report());
    // Changes during the outage: severity bump for every alert, then a clear for half.
    for a in &alerts {
        let mut b = a.clone();
        b.severity = Severity::Critical;
        b.description =
            Some(format!("{} (worse)", a.description.as_deref().unwrap_or_default()).into());
        h.send(ChangeKind::Updated, &b).await;
    }
    for a in &alerts[..4] {
        h.send(ChangeKind::Cleared, a).await;
    }
    // 200 ms into the outage: the 4 keys in flight retried (at most retry_max_delay = 40 ms
    // apart, so at least 4 times each), every attempt was dropped, none accepted.
    let dropped = h.sim.counters().dropped_connections;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.sim.accepted().len(), 0);
    assert!(
        h.sim.counters().dropped_connections >= dropped + 4 * 4,
        "the 4 keys in flight kept retrying: {:?}",
        h.sim.counters()
    );
    h.sim.set_faults(Faults::default());
    h.wait_idle().await;
    assert!(
        !h.readiness
            .report()
            .warnings
            .iter()
            .any(|w| w.condition == "pagerduty")
    );

    let accepted = h.sim.accepted();
    let mut per_key: HashMap<String, Vec<(String, Option<String>)>> = HashMap::new();
    for e in &accepted {
        per_key
            .entry(e.dedup_key.clone().unwrap())
            .or_default()
            .push((e.event_action.clone().unwrap(), e.severity.clone()));
    }
    for a in &alerts[4..] {
        // Not cleared: a trigger and its update, in order; still one incident.
        let seq = &per_key[&dedup_key(a)];
        let actions: Vec<_> = seq
            .iter()
            .map(|(a, s)| (a.as_str(), s.as_deref()))
            .collect();
        // In flight during the outage: the original, then the update; queued: only the update.
        assert!(actions.len() <= 2, "{actions:?}");
        assert_eq!(
            actions.last().unwrap(),
            &("trigger", Some("critical")),
            "{actions:?}"
        );
        assert!(actions.iter().all(|(a, _)| *a == "trigger"));
    }
    for a in &alerts[..4] {
        // Cleared: whatever was sent ends with the resolve, and the incident (if any) is closed.
        let seq = per_key.get(&dedup_key(a)).cloned().unwrap_or_default();
        if let Some(last) = seq.last() {
            assert_eq!(last.0, "resolve", "{seq:?}");
            assert_eq!(
                seq[0].0, "trigger",
                "a resolve never overtakes its trigger: {seq:?}"
            );
        }
    }
    let incidents = h.sim.incidents();
    let by_key: HashMap<_, Vec<_>> = incidents.iter().fold(HashMap::new(), |mut m, i| {
        m.entry(i.dedup_key.clone())
            .or_insert_with(Vec::new)
            .push(i.status);
        m
    });
    for a in &alerts[4..] {
        assert_eq!(by_key[&dedup_key(a)], vec![IncidentStatus::Triggered]);
    }
    for a in &alerts[..4] {
        if let Some(st) = by_key.get(&dedup_key(a)) {
            assert_eq!(st, &vec![IncidentStatus::Resolved]);
        }
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn storm_under_the_rate_limit_sends_critical_first_and_never_exceeds_the_limit() {
    // PagerDuty's own minute: on paused time it costs nothing to wait through five of them.
    let window = bridge::pagerduty::ratelimit::WINDOW;
    let limit = 3usize;
    let h = Harness::start(Faults::default(), |r| {
        r.pagerduty.rate_limit_per_minute = limit as u32;
    })
    .await;
    let alerts = many_alerts(15);
    // Fillers use up the first window.
    for a in &alerts[..3] {
        let mut w = a.clone();
        w.severity = Severity::Warning;
        h.send(ChangeKind::Raised, &w).await;
    }
    // They go at once, and the clock stands still until they are answered ...
    let start = tokio::time::Instant::now();
    assert!(settle(|| h.sim.accepted().len() == 3 && h.status.snapshot().in_flight == 0).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // ... so the storm, warnings first, then criticals, is all queued a whole window before a
    // slot comes back (nothing here waits), and that slot finds the criticals waiting.
    let (warn, crit) = alerts[3..].split_at(6);
    for a in warn {
        let mut w = a.clone();
        w.severity = Severity::Warning;
        h.send(ChangeKind::Raised, &w).await;
    }
    for a in crit {
        let mut c = a.clone();
        c.severity = Severity::Critical;
        h.send(ChangeKind::Raised, &c).await;
    }
    h.wait_accepted(15).await;
    let accepted = h.sim.accepted();
    let storm = &accepted[3..];
    let first_warning = storm
        .iter()
        .position(|e| e.severity.as_deref() == Some("warning"))
        .unwrap();
    let last_critical = storm
        .iter()
        .rposition(|e| e.severity.as_deref() == Some("critical"))
        .unwrap();
    assert!(
        last_critical < first_warning,
        "critical events go first: {:?}",
        storm.iter().map(|e| e.severity.clone()).collect::<Vec<_>>()
    );
    // No window of virtual time holds more than `limit` arrivals: any limit+1 of them span at
    // least a whole window, with no slack (without the limiter all 15 arrive at one instant).
    let mut times: Vec<u64> = h.sim.events().iter().map(|e| e.received_us).collect();
    times.sort_unstable();
    assert_eq!(times.len(), 15, "no retries: {times:?}");
    let window_us = window.as_micros() as u64;
    for w in times.windows(limit + 1) {
        assert!(
            w[limit] - w[0] >= window_us,
            "more than {limit} requests within {window:?}: {times:?} (us)"
        );
    }
    // And no longer than it must: a slot comes back one window after the answer that held it,
    // so the five rounds of 3 span four windows, not five.
    let span = times[14] - times[0];
    assert!(
        span < 5 * window_us,
        "15 events at {limit} a window took {span} us"
    );
    let m = h.metrics();
    assert!(sample(&m, "bridge_pagerduty_rate_limit_waits_total").unwrap() >= 1.0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn trigger_and_clear_while_queued_sends_nothing() {
    let h = Harness::start(Faults::default(), |r| {
        r.pagerduty.rate_limit_per_minute = 1;
    })
    .await;
    let alerts = fixture_alerts();
    h.send(ChangeKind::Raised, &alerts[0]).await;
    assert!(settle(|| h.sim.accepted().len() == 1).await);
    // The limit is used up for a minute: these wait in the queue, where the clear cancels its
    // trigger. Nothing of it needs a timer, so the clock stands still: the minute is not over.
    let start = tokio::time::Instant::now();
    h.send(ChangeKind::Raised, &alerts[1]).await;
    h.send(ChangeKind::Cleared, &alerts[1]).await;
    let m_ok =
        settle(|| sample(&h.metrics(), "bridge_pagerduty_cancelled_total") == Some(1.0)).await;
    assert!(m_ok, "{}", h.metrics());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(h.status.queue_depth(), 0);
    let sim = h.stop().await;
    assert_eq!(sim.events().len(), 1, "nothing sent for the cancelled pair");
}

#[tokio::test(start_paused = true)]
async fn routes_send_to_their_routing_keys() {
    use bridge::config::RawRoute;
    use secrecy::SecretString;
    let h = Harness::start(Faults::default(), |r| {
        r.pagerduty.routes = vec![
            RawRoute {
                name: Some("storage".into()),
                resource_categories: vec!["sas-interconnects".into()],
                routing_key: Some(SecretString::from(STORAGE_KEY.to_owned())),
                ..Default::default()
            },
            RawRoute {
                name: Some("bios".into()),
                alert_types: vec!["Trap.BI*".into()],
                resource_name: Some("sgh817*".into()),
                routing_key: Some(SecretString::from(TRAP_KEY.to_owned())),
                ..Default::default()
            },
            RawRoute {
                name: Some("never".into()),
                severities: vec!["Disabled".into()],
                routing_key: Some(SecretString::from(TRAP_KEY.to_owned())),
                ..Default::default()
            },
        ];
    })
    .await;
    let alerts = fixture_alerts();
    for a in &alerts {
        h.send(ChangeKind::Raised, a).await;
    }
    h.wait_accepted(alerts.len()).await;
    let by_key: HashMap<_, _> = h
        .sim
        .incidents()
        .into_iter()
        .map(|i| (i.dedup_key.clone(), i.routing_key))
        .collect();
    for a in &alerts {
        let cat = a.resource_category().unwrap();
        let want = if cat == "sas-interconnects" {
            STORAGE_KEY
        } else if a.alert_type_id.as_deref() == Some("Trap.BIOS") {
            TRAP_KEY
        } else {
            ROUTING_KEY
        };
        assert_eq!(by_key[&dedup_key(a)], want, "{:?}", a.alert_type_id);
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn routes_sharing_a_routing_key_share_its_rate_limit() {
    use bridge::config::RawRoute;
    use secrecy::SecretString;
    // Two routes, one PagerDuty integration: PagerDuty's limit is per key, so is ours.
    let h = Harness::start(Faults::default(), |r| {
        r.pagerduty.rate_limit_per_minute = 5;
        r.pagerduty.routing_key = Some(SecretString::from(STORAGE_KEY.to_owned()));
        r.pagerduty.routes = vec![RawRoute {
            name: Some("critical".into()),
            severities: vec!["Critical".into()],
            routing_key: Some(SecretString::from(STORAGE_KEY.to_owned())),
            ..Default::default()
        }];
    })
    .await;
    let alerts = many_alerts(12);
    for (i, a) in alerts.iter().enumerate() {
        let mut a = a.clone();
        a.severity = if i % 2 == 0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        h.send(ChangeKind::Raised, &a).await;
    }
    // The first five go at once, and the clock stands still until they are answered ...
    let start = tokio::time::Instant::now();
    assert!(settle(|| h.sim.accepted().len() >= 5 && h.status.snapshot().in_flight == 0).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // ... so their slots come back a minute from now, and until a millisecond before that
    // nothing else goes, on either route.
    let window = bridge::pagerduty::ratelimit::WINDOW;
    h.sleep_until_sim(h.sim_elapsed() + window - Duration::from_millis(1))
        .await;
    assert_eq!(
        h.sim.accepted().len(),
        5,
        "5 per minute for the key, not 5 per route"
    );
    assert_eq!(
        h.status.queue_depth(),
        7,
        "the rest waits for the key's window"
    );
    let m = h.metrics();
    assert!(sample(&m, "bridge_pagerduty_rate_limit_waits_total").unwrap() >= 1.0);
    // The other seven follow in the next two windows; no minute of arrivals holds more than 5.
    h.wait_accepted(12).await;
    let mut times: Vec<u64> = h.sim.events().iter().map(|e| e.received_us).collect();
    times.sort_unstable();
    assert_eq!(times.len(), 12, "no retries: {times:?}");
    for w in times.windows(6) {
        assert!(
            w[5] - w[0] >= window.as_micros() as u64,
            "6 requests for one routing key within a minute: {times:?} (us)"
        );
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn long_multibyte_description_is_cut_to_1024_characters() {
    let h = Harness::start(Faults::default(), |_| {}).await;
    let mut a = fixture_alerts()[0].clone();
    let unit = "Lüfter ausgefallen – 风扇故障 🔥 ";
    let mut d = String::new();
    while d.chars().count() < 5000 {
        d.push_str(unit);
    }
    a.description = Some(d.chars().take(5000).collect::<String>().into());
    h.send(ChangeKind::Raised, &a).await;
    h.wait_accepted(1).await;
    let e = &h.sim.accepted()[0];
    let summary = e.summary.clone().unwrap();
    assert_eq!(summary.chars().count(), 1024);
    assert!(summary.ends_with('…'));
    assert!(summary.starts_with("Warning: SGH817YECA, bay 5 - Lüfter"));
    // The full text still reaches PagerDuty in custom_details.
    let body = e.body.as_ref().unwrap();
    assert_eq!(
        body["payload"]["custom_details"]["description"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        5000
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_makes_the_poller_wait() {
    let h = Harness::start(Faults::default(), |r| {
        r.pagerduty.queue_capacity = 2;
        r.pagerduty.concurrency = 1;
    })
    .await;
    h.sim.set_faults(Faults {
        outage: Some(Outage::Hang),
        ..Default::default()
    });
    let alerts = many_alerts(10);
    let mut sent = 0;
    for a in &alerts {
        let r = tokio::time::timeout(
            Duration::from_millis(300),
            h.changes.send(change(ChangeKind::Raised, a)),
        )
        .await;
        if r.is_err() {
            break;
        }
        sent += 1;
    }
    // Two in the pipeline's queue and two in the channel; the fifth send waits.
    assert_eq!(sent, 4);
    assert_eq!(h.status.queue_depth(), 2);
    h.sim.set_faults(Faults::default());
    h.wait_accepted(4).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_delivers_what_is_queued() {
    let h = Harness::start(Faults::default(), |_| {}).await;
    h.sim.set_faults(Faults {
        latency_ms: 20,
        ..Default::default()
    });
    let alerts = many_alerts(30);
    for a in &alerts {
        h.send(ChangeKind::Raised, a).await;
    }
    let sim = h.stop().await;
    assert_eq!(sim.accepted().len(), 30);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let h = Harness::start(
        Faults {
            error_rate: 1.0,
            error_statuses: vec![429],
            retry_after_secs: Some(1),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    let a = &fixture_alerts()[0];
    h.send(ChangeKind::Raised, a).await;
    assert!(settle(|| !h.sim.events().is_empty()).await);
    h.sim.set_faults(Faults::default());
    h.wait_accepted(1).await;
    let ev = h.sim.events();
    assert_eq!(ev.len(), 2, "one 429, then the accepted retry");
    // On the virtual clock the retry comes exactly when Retry-After allows (the backoff alone,
    // at most retry_max_delay = 40 ms, would have sent it much sooner), not a second later.
    let gap = Duration::from_micros(ev[1].received_us - ev[0].received_us);
    assert!(
        (Duration::from_secs(1)..Duration::from_millis(1100)).contains(&gap),
        "the retry waited for Retry-After ({gap:?}): {ev:?}"
    );
    let m = h.metrics();
    assert_eq!(
        sample(&m, r#"bridge_pagerduty_http_responses_total{code="429"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"bridge_pagerduty_events_total{action="trigger",outcome="retried"}"#
        ),
        Some(1.0)
    );
    h.wait_idle().await;
    let key = h.status.key(&dedup_key(a)).unwrap();
    assert_eq!((key.outcome, key.attempts), ("accepted", 2));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn updates_to_a_queued_trigger_send_only_the_latest_state() {
    let h = Harness::start(Faults::default(), |r| {
        r.pagerduty.rate_limit_per_minute = 1;
    })
    .await;
    let alerts = fixture_alerts();
    h.send(ChangeKind::Raised, &alerts[4]).await;
    let start = tokio::time::Instant::now();
    assert!(settle(|| h.sim.accepted().len() == 1).await);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The minute is used up: these three changes meet one queued trigger (sent back to back,
    // they are queued before the clock can move).
    let mut a = alerts[0].clone();
    a.severity = Severity::Warning;
    h.send(ChangeKind::Raised, &a).await;
    a.severity = Severity::Critical;
    h.send(ChangeKind::Updated, &a).await;
    a.description = Some("Fan 3 failed".into());
    h.send(ChangeKind::Updated, &a).await;
    h.wait_accepted(2).await;
    h.wait_idle().await;
    let sent: Vec<_> = h
        .sim
        .events()
        .into_iter()
        .filter(|e| e.dedup_key.as_deref() == Some(&dedup_key(&a)))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].severity.as_deref(), Some("critical"));
    assert_eq!(
        sent[0].summary.as_deref(),
        Some("Critical: SGH817YECA, bay 5 - Fan 3 failed")
    );
    h.stop().await;
}
