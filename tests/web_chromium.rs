//! The status page in a real browser: headless Chromium (Debian's `chromium`) loads it from a
//! bridge running on the simulators, and the test asserts what a person sees: the open alerts,
//! a cleared alert leaving, and the error banner when OneView stops answering. Chromium
//! executing the page's script also proves the CSP nonce works.
//!
//! Without Chromium the test is skipped locally, but fails when `CI=true`.

mod web_support;

use std::process::Stdio;
use std::time::Duration;

use bridge::config::Role;
use bridge::sim::oneview::{AlertSpec, Faults as OvFaults};
use web_support::*;

fn chromium() -> Option<String> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(p);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(str::to_owned)
}

/// The DOM after Chromium loaded `url` and ran its scripts.
async fn dump_dom(browser: &str, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--virtual-time-budget=2000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("--dump-dom")
            .arg(url)
            .kill_on_drop(true)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("chromium answers within 60 s")
    .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Loads the page until `f` holds (the poller runs every second).
async fn until(browser: &str, url: &str, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let dom = dump_dom(browser, url).await;
        if f(&dom) {
            return dom;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed {what}; last DOM:\n{dom}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "CI=true but chromium is missing: install the Debian packages `chromium` and `chromium-driver`"
            );
        }
        eprintln!("SKIPPED: chromium is not installed (apt-get install chromium chromium-driver)");
        return;
    };
    let s = sims().await;
    let b = start(raw(Some(&s)), Role::All).await;
    let spec = |sev: &str, d: &str| AlertSpec {
        severity: Some(sev.into()),
        description: Some(d.into()),
        resource_name: Some("Enclosure 1, bay 4".into()),
        ..Default::default()
    };
    let psu =
        s.ov.handle
            .add_alert(spec("Critical", "Power supply 2 failed"));
    let _fan = s.ov.handle.add_alert(spec("Warning", "Fan 5 is degraded"));
    assert!(s.pd.wait_until(WAIT, |pd| pd.incidents().len() == 2).await);
    let url = format!("{}/?token={TOKEN}&refresh=1", b.url);

    let dom = until(&browser, &url, "both alerts", |d| {
        d.contains("Power supply 2 failed")
            && d.contains("Fan 5 is degraded")
            && d.contains("trigger accepted")
    })
    .await;
    assert!(
        dom.contains("data-live=\"on\""),
        "the page script ran (CSP nonce accepted)"
    );
    assert!(
        dom.contains("class=\"card alert sev-critical\""),
        "critical alerts are coloured"
    );
    assert!(
        dom.contains(&format!("#/activity/r{psu}\"")),
        "a link to the alert in OneView"
    );
    assert!(dom.contains(">logged in<"));
    assert!(dom.contains("id=\"queue-depth\">0<"));
    assert!(
        !dom.contains("id=\"oneview-down\""),
        "no banner while OneView answers"
    );

    // A cleared alert leaves the page.
    s.ov.handle.clear(id_of(&psu)).unwrap();
    let dom = until(&browser, &url, "the cleared alert gone", |d| {
        !d.contains("Power supply 2 failed")
    })
    .await;
    assert!(dom.contains("Fan 5 is degraded"));
    assert!(dom.contains("id=\"alert-count\">1<"));

    // OneView stops answering: a banner in plain words.
    s.ov.handle.set_faults(OvFaults {
        error_rate: 1.0,
        ..Default::default()
    });
    let dom = until(&browser, &url, "the OneView banner", |d| {
        d.contains("id=\"oneview-down\"")
    })
    .await;
    assert!(dom.contains("is not answering"), "{dom}");
    b.stop().await;
    s.stop().await;
}
