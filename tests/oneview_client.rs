//! The OneView client against the simulator over real HTTP: paging, login (banner, wrong
//! password), session expiry and single-flight re-login, version negotiation, error bodies,
//! write-back and logout.

mod oneview_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bridge::config::ApiVersionSetting;
use bridge::oneview::client::AlertUpdate;
use bridge::oneview::collection::{AlertQuery, fetch_all};
use bridge::oneview::{OneViewError, OneViewMetrics};
use bridge::sim::oneview::{Faults, GenerateSpec, PageUriStyle, SimConfig};
use oneview_support::*;

fn all_query(page_size: u32) -> AlertQuery {
    AlertQuery {
        filters: vec![],
        sort: None,
        page_size,
    }
}

#[tokio::test]
async fn pages_through_1234_alerts_100_at_a_time() {
    let sim = start_sim(SimConfig::default()).await;
    sim.handle.generate(&GenerateSpec {
        count: 1234,
        ..GenerateSpec::default()
    });
    let cfg = config(&sim.url(), |_| {});
    let c = client(&cfg);
    let walk = fetch_all(&c, &all_query(100), &OneViewMetrics::unregistered())
        .await
        .unwrap();
    assert_eq!(walk.alerts.len(), 1234);
    assert_eq!(walk.pages, 13);
    let uris: HashSet<_> = walk.alerts.iter().map(|a| a.uri.clone()).collect();
    assert_eq!(uris.len(), 1234, "no alert twice");
    let counters = sim.handle.counters();
    assert_eq!(counters.requests("alerts"), 13);
    assert_eq!(counters.members_sent, 1234);
    sim.stop().await;
}

#[tokio::test]
async fn null_and_empty_page_uris_both_end_the_walk() {
    for style in [PageUriStyle::Null, PageUriStyle::Empty] {
        let sim = start_sim(SimConfig {
            page_uri_style: style,
            ..SimConfig::default()
        })
        .await;
        sim.handle.generate(&GenerateSpec {
            count: 250,
            ..GenerateSpec::default()
        });
        let c = client(&config(&sim.url(), |_| {}));
        let walk = fetch_all(&c, &all_query(100), &OneViewMetrics::unregistered())
            .await
            .unwrap();
        assert_eq!(walk.alerts.len(), 250, "{style:?}");
        assert_eq!(sim.handle.counters().requests("alerts"), 3, "{style:?}");
        sim.stop().await;
    }
}

#[tokio::test]
async fn filters_are_evaluated_server_side_and_encoded_like_oneview_clients() {
    let sim = start_sim(SimConfig::default()).await;
    sim.handle.add_alerts(&[
        spec("Critical", "Active"),
        spec("Warning", "Locked"),
        spec("Critical", "Cleared"),
        spec("OK", "Active"),
    ]);
    let c = client(&config(&sim.url(), |_| {}));
    let q = AlertQuery {
        filters: vec![
            "alertState='Active' OR alertState='Locked'".into(),
            "severity='Critical' OR severity='Warning'".into(),
        ],
        sort: None,
        page_size: 10,
    };
    let walk = fetch_all(&c, &q, &OneViewMetrics::unregistered())
        .await
        .unwrap();
    assert_eq!(walk.alerts.len(), 2);
    assert_eq!(sim.handle.counters().members_sent, 2);
    sim.stop().await;
}

#[tokio::test]
async fn banner_login_needs_and_gets_the_acknowledgement() {
    let sim = start_sim(SimConfig {
        login_banner: true,
        ..SimConfig::default()
    })
    .await;
    // Without loginMsgAck the appliance refuses, naming the errorCode.
    let raw = reqwest::Client::new()
        .post(format!("{}/rest/login-sessions", sim.url()))
        .header("X-API-Version", "4600")
        .json(&serde_json::json!({"userName": "administrator", "password": "sim-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);
    let body: serde_json::Value = raw.json().await.unwrap();
    assert_eq!(
        body["errorCode"],
        "AUTHN_LOGIN_MESSAGE_ACKNOWLEDGMENT_REQUIRED"
    );
    // The bridge always acknowledges.
    let c = client(&config(&sim.url(), |_| {}));
    c.ensure_session().await.unwrap();
    assert!(c.is_logged_in());
    assert_eq!(sim.handle.counters().logins, 1);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn wrong_password_is_a_clear_error_and_logins_are_paced() {
    let sim = start_sim(SimConfig::default()).await;
    let cfg = config(&sim.url(), |r| {
        r.oneview.password = Some(secrecy::SecretString::from("wrong".to_owned()));
    });
    let c = client(&cfg);
    let err = c.ensure_session().await.unwrap_err();
    assert!(matches!(err, OneViewError::AuthFailed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("AUTHN_AUTH_FAIL"), "{msg}");
    assert!(msg.contains("oneview.password"), "{msg}");
    assert!(!msg.contains("wrong"), "the password must not leak: {msg}");
    // Calls right after do not reach the appliance.
    for _ in 0..20 {
        let e = c.ensure_session().await.unwrap_err();
        assert!(matches!(e, OneViewError::LoginBackoff { .. }), "{e:?}");
    }
    assert_eq!(sim.handle.counters().login_failures, 1);
    // Even a caller retrying in a tight loop for 10 minutes gets few attempts through.
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(600) {
        let _ = c.ensure_session().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let attempts = sim.handle.counters().login_failures;
    assert!(
        (3..=11).contains(&attempts),
        "{attempts} login attempts in 10 minutes"
    );
    sim.stop().await;
}

#[tokio::test]
async fn forced_401_with_20_concurrent_requests_logs_in_once() {
    let sim = start_sim(SimConfig::default()).await;
    let uris = sim.handle.add_alerts(&vec![spec("Critical", "Active"); 20]);
    let c = Arc::new(client(&config(&sim.url(), |_| {})));
    c.ensure_session().await.unwrap();
    assert_eq!(sim.handle.expire_sessions(), 1);
    let tasks: Vec<_> = uris
        .iter()
        .map(|u| {
            let c = c.clone();
            let u = u.clone();
            tokio::spawn(async move { c.get_alert(&u).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let counters = sim.handle.counters();
    assert_eq!(
        counters.logins, 2,
        "one initial login plus exactly one re-login"
    );
    assert!(counters.unauthorized >= 1);
    assert_eq!(sim.handle.session_count(), 1);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn idle_expiry_mid_run_relogs_in_and_replays() {
    let sim = start_sim(SimConfig {
        idle_timeout: Duration::from_secs(600),
        ..SimConfig::default()
    })
    .await;
    let uri = sim.handle.add_alert(spec("Critical", "Active"));
    let c = client(&config(&sim.url(), |_| {}));
    c.get_alert(&uri).await.unwrap();
    // Use within the idle timeout keeps the session alive.
    tokio::time::advance(Duration::from_secs(500)).await;
    c.get_alert(&uri).await.unwrap();
    assert_eq!(sim.handle.counters().logins, 1);
    // Idle for longer than the timeout: the appliance answers 401, the client re-logs in once.
    tokio::time::advance(Duration::from_secs(700)).await;
    let a = c.get_alert(&uri).await.unwrap();
    assert_eq!(a.uri, uri);
    let counters = sim.handle.counters();
    assert_eq!(counters.logins, 2);
    assert_eq!(counters.unauthorized, 1);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn session_is_refreshed_before_session_refresh_and_the_old_one_released() {
    let sim = start_sim(SimConfig::default()).await;
    let uri = sim.handle.add_alert(spec("Critical", "Active"));
    let c = client(&config(&sim.url(), |r| {
        r.oneview.session_refresh = Duration::from_secs(3600);
    }));
    c.get_alert(&uri).await.unwrap();
    tokio::time::advance(Duration::from_secs(3599)).await;
    c.get_alert(&uri).await.unwrap();
    assert_eq!(sim.handle.counters().logins, 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    c.get_alert(&uri).await.unwrap();
    let counters = sim.handle.counters();
    assert_eq!(counters.logins, 2);
    assert_eq!(counters.unauthorized, 0, "refreshed before any 401");
    assert_eq!(counters.logouts, 1, "the old session is released");
    assert_eq!(sim.handle.session_count(), 1);
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_keeps_using_the_current_session() {
    let sim = start_sim(SimConfig::default()).await;
    let uri = sim.handle.add_alert(spec("Critical", "Active"));
    let c = client(&config(&sim.url(), |r| {
        r.oneview.session_refresh = Duration::from_secs(3600);
    }));
    c.get_alert(&uri).await.unwrap();
    tokio::time::advance(Duration::from_secs(3601)).await;
    // The refresh login fails (one try and two quick retries); the request still succeeds.
    sim.handle.update_faults(|f| f.fail_next = 3);
    c.get_alert(&uri).await.unwrap();
    assert_eq!(sim.handle.counters().logins, 1);
    // Later, once the login pause is over, the refresh happens.
    tokio::time::advance(Duration::from_secs(10)).await;
    c.get_alert(&uri).await.unwrap();
    assert_eq!(sim.handle.counters().logins, 2);
    assert_eq!(sim.handle.session_count(), 1);
    sim.stop().await;
}

#[tokio::test]
async fn auto_version_is_capped_at_the_tested_maximum() {
    for (current, expected) in [(9000, 8400), (4600, 4600)] {
        let sim = start_sim(SimConfig {
            current_version: current,
            ..SimConfig::default()
        })
        .await;
        let c = client(&config(&sim.url(), |_| {}));
        c.ensure_session().await.unwrap();
        assert_eq!(c.api_version(), Some(expected));
        assert_eq!(sim.handle.counters().requests("version"), 1);
        sim.stop().await;
    }
}

#[tokio::test]
async fn a_412_falls_back_to_the_appliance_current_version() {
    let sim = start_sim(SimConfig {
        current_version: 4600,
        ..SimConfig::default()
    })
    .await;
    let uri = sim.handle.add_alert(spec("Critical", "Active"));
    let c = client(&config(&sim.url(), |r| {
        r.oneview.api_version = ApiVersionSetting::Fixed(5000);
    }));
    c.get_alert(&uri).await.unwrap();
    assert_eq!(c.api_version(), Some(4600));
    assert_eq!(sim.handle.counters().requests("version"), 1);
    sim.stop().await;
}

#[tokio::test]
async fn missing_version_header_is_404_like_an_appliance() {
    let sim = start_sim(SimConfig::default()).await;
    let r = reqwest::get(format!("{}/rest/alerts", sim.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = reqwest::Client::new()
        .get(format!("{}/rest/alerts", sim.url()))
        .header("X-API-Version", "99999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 412);
    sim.stop().await;
}

#[tokio::test]
async fn oneview_error_bodies_are_surfaced() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&config(&sim.url(), |_| {}));
    let e = c.get_alert("/rest/alerts/424242").await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert_eq!(e.error_code(), Some("RESOURCE_NOT_FOUND"));
    let msg = e.to_string();
    assert!(
        msg.contains("/rest/alerts/424242") && msg.contains("recommended"),
        "{msg}"
    );
    sim.stop().await;
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_then_reported() {
    let sim = start_sim(SimConfig::default()).await;
    let uri = sim.handle.add_alert(spec("Critical", "Active"));
    let c = client(&config(&sim.url(), |_| {}));
    c.ensure_session().await.unwrap();
    sim.handle.set_faults(Faults {
        fail_next: 1,
        drop_next: 0,
        ..Faults::default()
    });
    c.get_alert(&uri).await.unwrap();
    sim.handle.set_faults(Faults {
        drop_next: 1,
        ..Faults::default()
    });
    c.get_alert(&uri).await.unwrap();
    sim.handle.set_faults(Faults {
        fail_next: 10,
        ..Faults::default()
    });
    let e = c.get_alert(&uri).await.unwrap_err();
    assert_eq!(e.status(), Some(503));
    assert_eq!(e.error_code(), Some("SIM_INJECTED_FAILURE"));
    assert_eq!(sim.handle.faults().fail_next, 7, "one try plus two retries");
    sim.stop().await;
}

#[tokio::test]
async fn write_back_clears_and_adds_a_change_log_note() {
    let sim = start_sim(SimConfig::default()).await;
    let uri = sim.handle.add_alert(spec("Critical", "Active"));
    let c = client(&config(&sim.url(), |_| {}));
    let updated = c
        .update_alert(
            &uri,
            &AlertUpdate {
                alert_state: Some("Cleared".into()),
                notes: Some("PagerDuty incident Q1ABC resolved".into()),
                ..AlertUpdate::default()
            },
        )
        .await
        .unwrap()
        .expect("the updated alert");
    assert!(updated.is_cleared());
    let log = updated.change_log.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        log[0].notes.as_deref(),
        Some("PagerDuty incident Q1ABC resolved")
    );
    assert_eq!(updated.cleared_by_user.as_deref(), Some("administrator"));
    // Nothing to change: empty body.
    let again = c
        .update_alert(
            &uri,
            &AlertUpdate {
                alert_state: Some("Cleared".into()),
                ..AlertUpdate::default()
            },
        )
        .await
        .unwrap();
    assert!(again.is_none());
    sim.stop().await;
}

#[tokio::test]
async fn logout_releases_the_session() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&config(&sim.url(), |_| {}));
    c.ensure_session().await.unwrap();
    assert_eq!(sim.handle.session_count(), 1);
    c.logout().await.unwrap();
    assert_eq!(sim.handle.session_count(), 0);
    assert_eq!(sim.handle.counters().logouts, 1);
    assert!(!c.is_logged_in());
    sim.stop().await;
}

fn tls_sim_files() -> bridge::sim::oneview::TlsFiles {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    bridge::sim::oneview::TlsFiles::read(
        std::path::Path::new(&format!("{dir}/server.pem")),
        std::path::Path::new(&format!("{dir}/server.key")),
    )
    .unwrap()
}

#[tokio::test]
async fn tls_trusts_ca_file_refuses_unknown_ca_and_skips_checks_only_when_asked() {
    let sim = bridge::sim::oneview::start_with(
        SimConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
        Some(tls_sim_files()),
    )
    .await
    .unwrap();
    assert!(sim.url().starts_with("https://"));
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");

    let trusted = client(&config(&sim.url(), |r| r.oneview.ca_file = Some(ca.into())));
    trusted.ensure_session().await.unwrap();

    let untrusted = client(&config(&sim.url(), |_| {}));
    let e = untrusted.ensure_session().await.unwrap_err();
    assert!(matches!(e, OneViewError::Transport { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&sim.url()), "{msg}");
    assert!(msg.to_lowercase().contains("certificate"), "{msg}");

    let insecure = client(&config(&sim.url(), |r| {
        r.oneview.tls_insecure_skip_verify = true
    }));
    insecure.ensure_session().await.unwrap();
    assert_eq!(sim.handle.counters().logins, 2);
    sim.stop().await;
}
