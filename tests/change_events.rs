//! Change events from OneView tasks (issue 17 §3), end to end through the assembled bridge
//! (`App::build` + `App::run`) against the OneView simulator's `/rest/tasks` and the PagerDuty
//! simulator's `/v2/change/enqueue`, over real HTTP on loopback, with the file state backend:
//! a finished firmware task becomes one change event on the route its resource picks, tasks
//! off the allow-lists and running tasks are not sent (a running one is once it finishes),
//! every body validates against PagerDuty's OpenAPI file, nothing is sent again after a
//! restart, and a 429 or 500 is retried until the event arrives exactly once.

use std::time::Duration;

use bridge::config::{self, RawConfig, RawRoute, Role};
use bridge::sim::oneview::{self as ovsim, SimConfig, TaskSpec};
use bridge::sim::pagerduty::{self as pdsim, Faults, LoggedEvent};
use secrecy::SecretString;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const DEFAULT_KEY: &str = "CHANGEDEFAULTKEY0000000000000001";
const HARDWARE_KEY: &str = "CHANGEHARDWAREKEY000000000000002";
const URGENT_KEY: &str = "CHANGEURGENTKEY00000000000000003";
const APPLIANCE: &str = "synergy-ce";
const WAIT: Duration = Duration::from_secs(30);

struct Bridge {
    url: String,
    stop: CancellationToken,
    app: tokio::task::JoinHandle<()>,
}

impl Bridge {
    async fn start(ov: &ovsim::RunningSim, pd: &pdsim::SimHandle, state: &std::path::Path) -> Self {
        let sim_cfg = ov.handle.config();
        let mut raw = RawConfig::default();
        raw.oneview.url = Some(ov.url());
        raw.oneview.name = Some(APPLIANCE.into());
        raw.oneview.username = Some(sim_cfg.username);
        raw.oneview.password = Some(SecretString::from(sim_cfg.password));
        raw.pagerduty.routing_key = Some(SecretString::from(DEFAULT_KEY.to_owned()));
        raw.pagerduty.events_url = pd.events_url();
        raw.pagerduty.retry_initial_delay = Duration::from_millis(50);
        raw.pagerduty.retry_max_delay = Duration::from_millis(200);
        raw.pagerduty.routes = vec![
            // Severity only: alerts' urgency split; it takes no change event.
            RawRoute {
                name: Some("urgent".into()),
                severities: vec!["Critical".into()],
                routing_key: Some(SecretString::from(URGENT_KEY.to_owned())),
                ..RawRoute::default()
            },
            RawRoute {
                name: Some("hardware".into()),
                severities: vec!["Critical".into(), "Warning".into()],
                resource_categories: vec!["server-hardware".into()],
                routing_key: Some(SecretString::from(HARDWARE_KEY.to_owned())),
                ..RawRoute::default()
            },
        ];
        raw.poller.interval = Duration::from_secs(1);
        // Every task of the test is read again by every poll, and after the restart: only the
        // bridge's durable memory of what it sent keeps it from sending them twice.
        raw.poller.watermark_overlap = Duration::from_secs(60);
        raw.change_events.enabled = true;
        raw.change_events.interval = Duration::from_secs(1);
        raw.state.path = Some(state.to_owned());
        raw.server.listen = "127.0.0.1:0".into();
        raw.server.shutdown_timeout = Duration::from_secs(3);
        raw.server.drain_delay = Duration::ZERO;
        let cfg = config::validate(raw, Role::All).unwrap();
        let app = bridge::App::build(cfg).await.unwrap();
        let url = format!("http://{}", app.local_addr());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let app = tokio::spawn(async move { app.run(s).await.unwrap() });
        Self { url, stop, app }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.app)
            .await
            .expect("bridge stops within its shutdown timeout")
            .unwrap();
    }

    /// One series of `/metrics`.
    async fn metric(&self, series: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in /metrics:\n{text}"))
    }

    async fn polls(&self) -> f64 {
        self.metric(&format!(
            "bridge_change_events_polls_total{{appliance=\"{APPLIANCE}\",outcome=\"ok\"}}"
        ))
        .await
    }

    /// Waits for `n` more successful task polls than now: what was there is read by then.
    async fn polls_more(&self, n: f64) {
        let start = self.polls().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.polls().await < start + n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {n} more task polls within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `/change/enqueue` request schema of PagerDuty's OpenAPI file, `$ref`s inlined.
fn change_validator() -> jsonschema::Validator {
    let doc: Value =
        serde_json::from_str(include_str!("fixtures/pagerduty/events-v2-openapiv3.json")).unwrap();
    let schema = doc["paths"]["/change/enqueue"]["post"]["requestBody"]["content"]
        ["application/json"]["schema"]
        .clone();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&inline_refs(schema, &doc))
        .unwrap()
}

fn inline_refs(v: Value, doc: &Value) -> Value {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let path = r.strip_prefix("#/").expect("local reference");
                let target = path.split('/').fold(doc, |node, part| &node[part]);
                assert!(!target.is_null(), "unresolved {r}");
                return inline_refs(target.clone(), doc);
            }
            Value::Object(
                map.into_iter()
                    .map(|(k, v)| (k, inline_refs(v, doc)))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(|v| inline_refs(v, doc)).collect()),
        other => other,
    }
}

fn body(e: &LoggedEvent) -> &Value {
    e.body.as_deref().expect("the simulator keeps the body")
}

fn summaries(pd: &pdsim::SimHandle) -> Vec<String> {
    pd.accepted_changes()
        .iter()
        .map(|e| e.summary.clone().unwrap_or_default())
        .collect()
}

fn task(name: &str, state: &str, category: &str, resource: &str) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        task_state: state.into(),
        resource_category: category.into(),
        resource_name: resource.into(),
        resource_uri: format!("/rest/{category}/{}", resource.replace([' ', ','], "")),
        ..TaskSpec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_become_change_events_once_on_their_route_even_across_a_restart() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bridge.redb");

    let b = Bridge::start(&ov, &pd, &state).await;
    // The first poll sets the watermark at the appliance's clock: the simulator's task history
    // (hours old) is never sent.
    b.polls_more(2.0).await;
    assert!(
        pd.changes().is_empty(),
        "history sent: {:?}",
        summaries(&pd)
    );

    let firmware = ov.handle.add_task(task(
        "Update firmware",
        "Completed",
        "server-hardware",
        "SGH8..YECA, bay 3",
    ));
    ov.handle.add_task(task(
        "Apply profile",
        "Completed",
        "server-profiles",
        "esx-prod-07",
    ));
    // Off the allow-lists: a name and a category not on them.
    ov.handle.add_task(task(
        "Refresh",
        "Completed",
        "server-hardware",
        "SGH8..YECA, bay 4",
    ));
    ov.handle.add_task(task(
        "Update",
        "Completed",
        "ethernet-networks",
        "prod-vlan-100",
    ));
    let power = ov.handle.add_task(task(
        "Power off",
        "Running",
        "server-hardware",
        "SGH8..YECA, bay 5",
    ));

    assert!(
        pd.wait_until(WAIT, |pd| pd.accepted_changes().len() >= 2)
            .await,
        "the two allowed finished tasks arrive: {:?}",
        summaries(&pd)
    );
    // Later polls read the same tasks again (the overlap) and send nothing more.
    b.polls_more(3.0).await;
    let accepted = pd.accepted_changes();
    assert_eq!(accepted.len(), 2, "{:?}", summaries(&pd));
    let by_summary = |s: &str| {
        accepted
            .iter()
            .find(|e| e.summary.as_deref().is_some_and(|x| x.starts_with(s)))
            .unwrap_or_else(|| panic!("no change event {s:?}: {:?}", summaries(&pd)))
    };
    let fw = by_summary("Update firmware completed on SGH8..YECA, bay 3 (synergy-ce)");
    assert_eq!(
        fw.routing_key.as_deref(),
        Some(HARDWARE_KEY),
        "a server-hardware task goes to the hardware route (its severities are ignored)"
    );
    assert_eq!(body(fw)["payload"]["custom_details"]["taskUri"], firmware);
    assert_eq!(
        body(fw)["links"][0]["href"],
        format!("{}/#/activity/r{firmware}", ov.url())
    );
    let profile = by_summary("Apply profile completed on esx-prod-07");
    assert_eq!(
        profile.routing_key.as_deref(),
        Some(DEFAULT_KEY),
        "the severity-only route takes no change event: the default does"
    );

    // The running task is sent once it completes.
    ov.handle.set_task_state(&power, "Completed").unwrap();
    assert!(
        pd.wait_until(WAIT, |pd| pd.accepted_changes().len() >= 3)
            .await,
        "the completed power task arrives: {:?}",
        summaries(&pd)
    );
    b.polls_more(2.0).await;
    assert_eq!(pd.accepted_changes().len(), 3, "{:?}", summaries(&pd));
    let series = |name: &str, extra: &str| format!("{name}{{appliance=\"{APPLIANCE}\"{extra}}}");
    assert_eq!(
        b.metric(&series("bridge_change_events_sent_total", ""))
            .await,
        3.0
    );
    assert_eq!(
        b.metric(&series("bridge_oneview_tasks_seen_total", ""))
            .await,
        5.0
    );
    assert_eq!(
        b.metric(&series(
            "bridge_oneview_tasks_skipped_total",
            ",reason=\"not_allowed\""
        ))
        .await,
        2.0
    );
    assert_eq!(
        b.metric(&series("bridge_change_events_failed_total", ""))
            .await,
        0.0
    );

    // Every body validates against PagerDuty's OpenAPI file and the simulator's own checks.
    let schema = change_validator();
    for e in pd.changes() {
        let v = body(&e);
        let errors: Vec<String> = schema.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?} in {v}");
        assert!(pdsim::validate_change(v).is_empty());
        assert!(v.get("event_action").is_none() && v.get("dedup_key").is_none());
        assert_eq!(e.status, 202);
    }

    // A restart with the same state file: nothing is sent again, a task that finished while the
    // bridge was down is sent, and new tasks still are.
    b.stop().await;
    ov.handle.add_task(task(
        "Power on",
        "Completed",
        "server-hardware",
        "SGH8..YECA, bay 5",
    ));
    let b = Bridge::start(&ov, &pd, &state).await;
    assert!(
        pd.wait_until(WAIT, |pd| pd.accepted_changes().len() >= 4)
            .await,
        "the task that finished while the bridge was down arrives: {:?}",
        summaries(&pd)
    );
    b.polls_more(3.0).await;
    assert_eq!(
        pd.changes().len(),
        4,
        "re-sent after the restart: {:?}",
        summaries(&pd)
    );
    assert!(summaries(&pd)[3].starts_with("Power on completed on SGH8..YECA, bay 5"));
    ov.handle.add_task(task(
        "Reset",
        "Error",
        "interconnects",
        "SGH8..YECA, interconnect 3",
    ));
    assert!(
        pd.wait_until(WAIT, |pd| pd.accepted_changes().len() >= 5)
            .await,
        "a task after the restart arrives: {:?}",
        summaries(&pd)
    );
    b.polls_more(2.0).await;
    assert_eq!(pd.changes().len(), 5, "{:?}", summaries(&pd));
    assert!(
        summaries(&pd)[4].starts_with("Reset failed on SGH8..YECA, interconnect 3"),
        "{:?}",
        summaries(&pd)
    );
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_and_a_500_are_retried_and_the_change_event_arrives_exactly_once() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = Bridge::start(&ov, &pd, &dir.path().join("bridge.redb")).await;
    b.polls_more(1.0).await;

    pd.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![429, 500],
        ..Faults::default()
    });
    ov.handle.add_task(task(
        "Update firmware",
        "Completed",
        "server-hardware",
        "SGH8..YECA, bay 9",
    ));
    let saw = |pd: &pdsim::SimHandle, status: u16| pd.changes().iter().any(|e| e.status == status);
    assert!(
        pd.wait_until(WAIT, |pd| saw(pd, 429) && saw(pd, 500)).await,
        "both a 429 and a 500 answered: {:?}",
        pd.changes().iter().map(|e| e.status).collect::<Vec<_>>()
    );
    assert!(pd.accepted_changes().is_empty());
    pd.set_faults(Faults::default());
    assert!(
        pd.wait_until(WAIT, |pd| !pd.accepted_changes().is_empty())
            .await,
        "the change event arrives once PagerDuty accepts again"
    );
    b.polls_more(3.0).await;
    let statuses: Vec<u16> = pd.changes().iter().map(|e| e.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "exactly once: {statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&202), "{statuses:?}");
    let retried = b
        .metric(&format!(
            "bridge_change_events_retried_total{{appliance=\"{APPLIANCE}\"}}"
        ))
        .await;
    assert_eq!(retried as usize, statuses.len() - 1, "{statuses:?}");
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_event_refused_with_400_is_logged_and_not_sent_again() {
    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(
        loopback,
        Faults {
            reject_change_summary_containing: Some("REFUSED".into()),
            ..Faults::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = Bridge::start(&ov, &pd, &dir.path().join("bridge.redb")).await;
    b.polls_more(1.0).await;
    ov.handle.add_task(task(
        "Update firmware",
        "Completed",
        "server-hardware",
        "REFUSED, bay 1",
    ));
    ov.handle.add_task(task(
        "Update firmware",
        "Completed",
        "server-hardware",
        "SGH8..YECA, bay 2",
    ));
    assert!(
        pd.wait_until(WAIT, |pd| pd.accepted_changes().len() == 1)
            .await,
        "the next task is not held up by the refused one: {:?}",
        summaries(&pd)
    );
    b.polls_more(3.0).await;
    let statuses: Vec<u16> = pd.changes().iter().map(|e| e.status).collect();
    assert_eq!(statuses, [400, 202], "refused once, never retried");
    let series = |name: &str| format!("{name}{{appliance=\"{APPLIANCE}\"}}");
    assert_eq!(
        b.metric(&series("bridge_change_events_failed_total")).await,
        1.0
    );
    assert_eq!(
        b.metric(&series("bridge_change_events_sent_total")).await,
        1.0
    );
    assert_eq!(
        b.metric(&series("bridge_change_events_retried_total"))
            .await,
        0.0
    );
    b.stop().await;
    pd.shutdown();
    ov.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulators_serve_tasks_page_by_page_and_validate_change_events() {
    use bridge::oneview::collection::Walker;
    use bridge::oneview::tasks::{self, Task};
    use bridge::oneview::{OneViewClient, OneViewMetrics};

    let loopback = "127.0.0.1:0".parse().unwrap();
    let ov = ovsim::start(SimConfig::default(), loopback).await.unwrap();
    let pd = pdsim::start(loopback, Faults::default()).await.unwrap();

    // Tasks added through the control API, walked by the bridge's own client two per page.
    let http = reqwest::Client::new();
    let added: Value = http
        .post(format!("{}/sim/tasks", ov.url()))
        .json(&serde_json::json!([
            {"name": "Update firmware", "taskState": "Completed"},
            {"name": "Power off", "taskState": "Running", "resourceName": "SGH8..YECA, bay 2"},
            {"name": "Reset", "taskState": "Error", "taskErrors": [["RESET_FAILED", "The iLO did not answer."]]},
            {"name": "Apply profile", "taskState": "Warning", "resourceCategory": "server-profiles"},
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let uris: Vec<String> = serde_json::from_value(added["uris"].clone()).unwrap();
    assert_eq!(uris.len(), 4);
    let mut raw = RawConfig::default();
    let sim_cfg = ov.handle.config();
    raw.oneview.url = Some(ov.url());
    raw.oneview.username = Some(sim_cfg.username);
    raw.oneview.password = Some(SecretString::from(sim_cfg.password));
    raw.pagerduty.routing_key = Some(SecretString::from(DEFAULT_KEY.to_owned()));
    let cfg = config::validate(raw, Role::Poller).unwrap();
    let client =
        OneViewClient::new(&cfg.appliances[0].oneview, OneViewMetrics::unregistered()).unwrap();
    let metrics = OneViewMetrics::unregistered();
    let (client, metrics) = (&client, &metrics);
    let walk = |since: i64| async move {
        let q = tasks::finished_since(since, 2);
        let mut w = Walker::<Task>::of(client, &q, metrics);
        let mut got: Vec<Task> = Vec::new();
        while let Some(p) = w.next_page().await.unwrap() {
            got.extend(p);
        }
        (got, w.pages, w.appliance_clock_floor_ms)
    };
    // Since the epoch: the five finished history tasks and the three finished new ones, oldest
    // first, in pages of two.
    let (all, pages, clock) = walk(0).await;
    assert_eq!(all.len(), 8, "{all:?}");
    assert_eq!(pages, 4);
    assert!(clock.is_some(), "the simulator sends Date");
    assert!(
        all.windows(2)
            .all(|w| w[0].modified_ms() <= w[1].modified_ms())
    );
    assert!(all.iter().all(Task::is_terminal));
    // Since a minute ago: the new ones, the running one left out until it completes.
    let recent = ov.handle.now_ms() - 60_000;
    let (new, _, _) = walk(recent).await;
    let names: Vec<&str> = new.iter().filter_map(|t| t.name.as_deref()).collect();
    assert_eq!(names, ["Update firmware", "Reset", "Apply profile"]);
    let reset = &new[1];
    assert_eq!(
        reset.task_errors[0].message.as_deref(),
        Some("The iLO did not answer.")
    );
    assert_eq!(reset.resource_category(), Some("server-hardware"));
    let id = uris[1].trim_start_matches("/rest/tasks/");
    let r = http
        .post(format!("{}/sim/tasks/{id}/state", ov.url()))
        .json(&serde_json::json!({"taskState": "Completed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (new, _, _) = walk(recent).await;
    assert_eq!(
        new.last().and_then(|t| t.name.as_deref()),
        Some("Power off")
    );

    // PagerDuty's side: 202 with the spec's success body, 400 with errors for a bad payload.
    let post = |body: Value| {
        let http = http.clone();
        let url = pd.change_url();
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    };
    let (status, answer) = post(serde_json::json!({
        "routing_key": DEFAULT_KEY,
        "payload": {"summary": "Update firmware completed", "timestamp": "2024-05-01T10:05:00.000Z",
            "source": "SGH8..YECA, bay 3", "custom_details": {"taskUri": "/rest/tasks/1"}},
        "links": [{"href": "https://ov.example.com/#/activity/r/rest/tasks/1", "text": "Task"}],
    }))
    .await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("success")));
    let (status, answer) = post(serde_json::json!({
        "routing_key": "short",
        "payload": {"summary": "", "timestamp": "yesterday", "custom_details": "text"},
        "links": [{"text": "no href"}],
    }))
    .await;
    assert_eq!(status, 400);
    let errors: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert_eq!(pd.accepted_changes().len(), 1);
    assert!(
        pd.events().is_empty(),
        "change events are kept apart from alert events"
    );
    pd.shutdown();
    ov.stop().await;
}
