//! SIGKILL at random instants during a storm: the built binary runs against both simulators
//! with a state file; it is killed 10 times while 2,000 alerts are raised and 1,000 of them
//! cleared, and restarted each time. In the end PagerDuty has exactly one incident per alert
//! ever raised (none opened twice), open for the alerts still active and resolved for the
//! cleared ones.

mod bridge_proc;

use std::collections::HashMap;
use std::time::Duration;

use bridge::sim::oneview::{self as ovsim, GenerateSpec, SimConfig};
use bridge::sim::pagerduty::{self as pdsim, Faults, IncidentStatus};
use bridge_proc::{BridgeEnv, dedup_key, sigkill, sigterm};
use rand::{Rng, SeedableRng};

const ALERTS_PER_WAVE: usize = 1000;
const KILLS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_storm_never_duplicates_or_loses_an_incident() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = BridgeEnv::new(ov.url(), pd.events_url(), dir.path());
    env.set("BRIDGE_LOG__LEVEL", "info");
    env.set("BRIDGE_PAGERDUTY__CONCURRENCY", "32");
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        std::env::var("CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
    );

    let mut raised: Vec<u64> = ov
        .handle
        .generate(&GenerateSpec {
            count: ALERTS_PER_WAVE,
            ..Default::default()
        })
        .collect();
    let mut cleared: Vec<u64> = Vec::new();
    for round in 0..KILLS {
        let mut child = env.spawn();
        // Kill somewhere between "still opening the store" and "well into delivery".
        let life = Duration::from_millis(rng.random_range(300..3000));
        let half = life / 2;
        tokio::time::sleep(half).await;
        match round {
            3 => raised.extend(ov.handle.generate(&GenerateSpec {
                count: ALERTS_PER_WAVE,
                ..Default::default()
            })),
            5 => {
                // Half of everything raised is cleared mid-storm, alerts that already have an
                // incident first (an alert raised and cleared while no bridge ran never pages).
                let mut ids = raised.clone();
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.random_range(0..=i));
                }
                // Let this run page most of the storm first, however the earlier kills fell.
                let want = raised.len() * 3 / 4;
                pd.wait_until(Duration::from_secs(20), |pd| pd.incidents().len() >= want)
                    .await;
                let paged = incidents_by_key(&pd);
                ids.sort_by_key(|id| !paged.contains_key(&dedup_key(*id)));
                for id in ids.into_iter().take(raised.len() / 2) {
                    ov.handle.clear(id).unwrap();
                    cleared.push(id);
                }
            }
            _ => {}
        }
        tokio::time::sleep(life - half).await;
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the bridge exited on its own ({status}):\n{}", env.log());
        }
        sigkill(&mut child);
    }
    assert_eq!(raised.len(), 2 * ALERTS_PER_WAVE);
    assert_eq!(cleared.len(), ALERTS_PER_WAVE);

    // The last run converges (after its own first full sync, so the end state is its work
    // and SIGTERM reaches a bridge that has its signal handler installed).
    let syncs_before = env.log().matches("OneView full sync finished").count();
    let mut child = env.spawn();
    let mut synced = false;
    for _ in 0..300 {
        if env.log().matches("OneView full sync finished").count() > syncs_before {
            synced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(synced, "the last run finishes a full sync:\n{}", env.log());
    let cleared_set: std::collections::HashSet<u64> = cleared.iter().copied().collect();
    // Still active: exactly one open incident. Cleared: its incident (if it ever had one:
    // cleared before any run saw it, it never paged) is resolved.
    let settled = |by_key: &HashMap<String, Vec<IncidentStatus>>, id: &u64| match by_key
        .get(&dedup_key(*id))
    {
        None => cleared_set.contains(id),
        Some(v) if cleared_set.contains(id) => v.iter().all(|s| *s == IncidentStatus::Resolved),
        Some(v) => v.iter().all(|s| *s == IncidentStatus::Triggered),
    };
    let converged = pd
        .wait_until(Duration::from_secs(30), |pd| {
            let by_key = incidents_by_key(pd);
            raised.iter().all(|id| settled(&by_key, id))
        })
        .await;
    let status = sigterm(&mut child, Duration::from_secs(10));
    let by_key = incidents_by_key(&pd);
    let missing = raised
        .iter()
        .filter(|id| !cleared_set.contains(id) && !by_key.contains_key(&dedup_key(**id)))
        .count();
    let cleared_paged = cleared
        .iter()
        .filter(|id| by_key.contains_key(&dedup_key(**id)))
        .count();
    let twice: Vec<&String> = by_key
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    let wrong_state = raised.iter().filter(|id| !settled(&by_key, id)).count();
    let c = pd.counters();
    eprintln!(
        "crash storm: {} alerts raised, {} cleared ({cleared_paged} of them after paging), {KILLS} SIGKILLs + 1 graceful stop, {} events accepted by PagerDuty, {} incidents opened, {} resolved",
        raised.len(),
        cleared.len(),
        c.accepted,
        c.incidents_opened,
        c.incidents_resolved
    );
    let log = env.log();
    let tail: Vec<&str> = log
        .lines()
        .filter(|l| {
            !l.contains("alert change")
                && !l.contains("PagerDuty accepted")
                && !l.contains("configuration warning")
        })
        .rev()
        .take(40)
        .collect();
    eprintln!(
        "bridge log (last lines, newest first):\n{}",
        tail.join("\n")
    );
    assert!(
        twice.is_empty(),
        "incidents opened twice for {} keys, e.g. {:?}",
        twice.len(),
        twice.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(missing, 0, "active alerts without an incident");
    assert_eq!(wrong_state, 0, "incidents in the wrong state");
    assert!(converged);
    assert_eq!(
        by_key.len(),
        raised.len() - cleared.len() + cleared_paged,
        "no incident for an alert never raised"
    );
    assert_eq!(c.incidents_opened, by_key.len() as u64);
    assert!(
        cleared_paged >= cleared.len() / 2,
        "the storm is meant to clear alerts that paged: only {cleared_paged}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop exits 0: {status:?}\n{}",
        env.log()
    );
    pd.shutdown();
    ov.stop().await;
}

fn incidents_by_key(pd: &pdsim::SimHandle) -> HashMap<String, Vec<IncidentStatus>> {
    let mut m: HashMap<String, Vec<IncidentStatus>> = HashMap::new();
    for i in pd.incidents() {
        m.entry(i.dedup_key.clone()).or_default().push(i.status);
    }
    m
}
