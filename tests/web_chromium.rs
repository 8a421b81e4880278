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

/// A Chrome DevTools Protocol session with one page, over `--remote-debugging-pipe`: Chromium
/// reads commands on its fd 3 and writes answers and events on its fd 4, each a JSON text
/// ended by a NUL byte. A shell puts the child's stdin and stdout on those fds, so no socket
/// and no websocket crate are needed.
struct Cdp {
    _child: tokio::process::Child,
    _profile: tempfile::TempDir,
    tx: tokio::process::ChildStdin,
    rx: tokio::io::BufReader<tokio::process::ChildStdout>,
    next: u64,
    session: Option<String>,
    /// Every event received so far (answers are not kept).
    events: Vec<serde_json::Value>,
}

impl Cdp {
    async fn launch(browser: &str) -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" \"$@\" 3<&0 4>&1 0</dev/null 1>/dev/null")
            .arg(browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        let tx = child.stdin.take().unwrap();
        let rx = tokio::io::BufReader::new(child.stdout.take().unwrap());
        let mut cdp = Self {
            _child: child,
            _profile: profile,
            tx,
            rx,
            next: 0,
            session: None,
            events: Vec::new(),
        };
        let target = cdp
            .call(
                "Target.createTarget",
                serde_json::json!({"url": "about:blank"}),
            )
            .await;
        let attached = cdp
            .call(
                "Target.attachToTarget",
                serde_json::json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        cdp.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        cdp
    }

    /// The next message Chromium sends.
    async fn read(&mut self) -> serde_json::Value {
        use tokio::io::AsyncBufReadExt;
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(30), self.rx.read_until(0, &mut buf))
            .await
            .expect("chromium answers within 30 s")
            .unwrap();
        assert!(n > 0, "chromium closed the pipe");
        buf.pop();
        serde_json::from_slice(&buf).unwrap()
    }

    /// Sends a command (to the page once attached) and returns its result; events that arrive
    /// meanwhile are kept.
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use tokio::io::AsyncWriteExt;
        self.next += 1;
        let id = self.next;
        let mut msg = serde_json::json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = serde_json::json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.tx.write_all(&bytes).await.unwrap();
        loop {
            let m = self.read().await;
            if m["id"] == id {
                assert!(m.get("error").is_none(), "{method} failed: {m}");
                return m["result"].clone();
            }
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    /// Reads events until `f` holds for the events so far.
    async fn until(&mut self, what: &str, f: impl Fn(&[serde_json::Value]) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !f(&self.events) {
            assert!(tokio::time::Instant::now() < deadline, "never saw {what}");
            let m = self.read().await;
            if m.get("method").is_some() {
                self.events.push(m);
            }
        }
    }

    /// Evaluates `js` in the page (the page's CSP does not apply to the inspector) and returns
    /// its JSON-able value.
    async fn eval(&mut self, js: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": js, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{js}: {r}");
        r["result"]["value"].clone()
    }

    fn count(&self, f: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.events.iter().filter(|e| f(e)).count()
    }

    /// Console errors, uncaught exceptions and browser log errors (CSP violations among them).
    fn errors(&self) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.consoleAPICalled") => {
                    matches!(e["params"]["type"].as_str(), Some("error" | "assert"))
                }
                Some("Runtime.exceptionThrown") => true,
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .cloned()
            .collect()
    }
}

/// Records CSP violations in the page from before its first script runs.
const CSP_PROBE: &str = "window.__csp=[];document.addEventListener('securitypolicyviolation',\
function(e){window.__csp.push(e.violatedDirective+' '+e.blockedURI+' '+e.sourceFile+':'+e.lineNumber+' '+e.sample);});";

const LAYOUT: &str = "JSON.stringify({\
live: document.getElementById('main').getAttribute('data-live'),\
series: document.querySelectorAll('svg.history g.series').length,\
pageSeries: document.querySelectorAll('svg.history g.series.pages').length,\
bars: document.querySelectorAll('svg.history rect').length,\
title: document.querySelector('svg.history > title').textContent,\
svgWidth: document.querySelector('svg.history').getBoundingClientRect().width,\
tickHeight: document.querySelector('svg.history text.tick').getBoundingClientRect().height,\
scrollWidth: document.documentElement.scrollWidth,\
clientWidth: document.documentElement.clientWidth,\
wide: Array.from(document.querySelectorAll('body *')).filter(function(e){\
var r=e.getBoundingClientRect();return r.right>document.documentElement.clientWidth+0.5&&!e.closest('.sr-only');})\
.slice(0,5).map(function(e){return e.tagName+'.'+e.className+' '+e.getBoundingClientRect().right;}),\
incidents: document.querySelectorAll('a.incident').length,\
silences: Array.from(document.querySelectorAll('#silences li')).map(function(e){return e.className;}),\
silencedRows: document.querySelectorAll('li.alert [data-marker=silenced]').length,\
ages: Array.from(document.querySelectorAll('.age')).map(function(e){return e.textContent;}),\
csp: window.__csp})";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_at_phone_and_desktop_width_without_console_errors() {
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
    let spec = |sev: &str, d: &str, age_ms: i64| AlertSpec {
        severity: Some(sev.into()),
        description: Some(d.into()),
        resource_name: Some("Enclosure-SGH0123456789-interconnect-bay-4-module-B".into()),
        age_ms: Some(age_ms),
        ..Default::default()
    };
    // A long unbroken word, markup and quotes from OneView: wrapped, and inert.
    let _psu = s.ov.handle.add_alert(spec(
        "Critical",
        "Power supply 2 failed: PSU_SERIAL_5CG0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ <script>alert('x')</script>",
        (3 * 3600 + 12 * 60 + 2) * 1000,
    ));
    let _fan =
        s.ov.handle
            .add_alert(spec("Warning", "Fan 5 is degraded", 122_000));
    let gone =
        s.ov.handle
            .add_alert(spec("Critical", "Blade 3 overheating", 60_000));
    // Raised before the bridge starts: their `modified` is as old as they are, so the first
    // full sync finds them (an incremental poll asks for changes since its start).
    let b = start(raw(Some(&s)), Role::All).await;
    assert!(s.pd.wait_until(WAIT, |pd| pd.incidents().len() == 3).await);
    s.ov.handle.clear(id_of(&gone)).unwrap();
    assert!(
        s.pd.wait_until(WAIT, |pd| pd.counters().incidents_resolved == 1)
            .await
    );
    // The resolve is on the picture once the dispatcher took PagerDuty's answer.
    let c = client();
    assert!(
        eventually_text(&c, &format!("{}/?token={TOKEN}", b.url), |p| {
            p.contains("data-total=\"1\"") && !p.contains("Blade 3 overheating")
        })
        .await
    );
    // A maintenance window on the fan (active: its row is marked) and one upcoming, with a
    // long unbroken glob and comment: the Silences section must wrap like the rest.
    for (matchers, starts_in, comment) in [
        (
            serde_json::json!({"severity": "Warning",
                "resource_name": "Enclosure-SGH0123456789-interconnect-bay-4-module-*"}),
            None,
            "Firmware update of interconnect bay 4 (change CHG0012345678901234567890)",
        ),
        (
            serde_json::json!({"resource_category": "server-hardware"}),
            Some(chrono::TimeDelta::hours(2)),
            "Blade swaps in frame 2",
        ),
    ] {
        let mut body = serde_json::json!({
            "matchers": matchers,
            "duration": "2h",
            "created_by": "chromium-test",
            "comment": comment,
        });
        if let Some(d) = starts_in {
            body["starts_at"] = serde_json::json!((chrono::Utc::now() + d).to_rfc3339());
        }
        let r = c
            .post(format!("{}/api/v1/silences", b.url))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    assert!(
        eventually_text(&c, &format!("{}/?token={TOKEN}", b.url), |p| {
            p.contains("silence-upcoming") && p.contains("silence-active")
        })
        .await
    );
    let url = format!("{}/?token={TOKEN}&refresh=1", b.url);

    for (width, height, mobile) in [(390, 844, true), (1440, 900, false)] {
        let mut cdp = Cdp::launch(&browser).await;
        for m in [
            "Page.enable",
            "Runtime.enable",
            "Log.enable",
            "Network.enable",
        ] {
            cdp.call(m, serde_json::json!({})).await;
        }
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        cdp.call(
            "Page.addScriptToEvaluateOnNewDocument",
            serde_json::json!({"source": CSP_PROBE}),
        )
        .await;
        cdp.call("Page.navigate", serde_json::json!({"url": url}))
            .await;
        cdp.until("the page loaded", |ev| {
            ev.iter().any(|e| e["method"] == "Page.loadEventFired")
        })
        .await;
        // The page script re-fetches itself every second and swaps <main>: wait until one
        // re-fetch has finished, so its swap is what gets measured.
        cdp.until("a refresh of the page", |ev| {
            let ids: Vec<&serde_json::Value> = ev
                .iter()
                .filter(|e| {
                    e["method"] == "Network.requestWillBeSent"
                        && e["params"]["request"]["url"]
                            .as_str()
                            .is_some_and(|u| u.contains("refresh=1"))
                })
                .map(|e| &e["params"]["requestId"])
                .collect();
            ids.len() >= 2
                && ev.iter().any(|e| {
                    e["method"] == "Network.loadingFinished" && &e["params"]["requestId"] == ids[1]
                })
        })
        .await;
        // One more round trip to the browser lets the swap run after the body arrived.
        cdp.eval("1").await;
        let v: serde_json::Value =
            serde_json::from_str(cdp.eval(LAYOUT).await.as_str().unwrap()).unwrap();
        let at = format!("{width}x{height}");
        assert_eq!(
            v["live"], "on",
            "{at}: the page script ran (CSP nonce accepted)"
        );
        assert_eq!(
            v["series"], 2,
            "{at}: pages and resolves of one appliance: {v}"
        );
        assert_eq!(v["pageSeries"], 1, "{at}: {v}");
        assert_eq!(
            v["bars"], 2,
            "{at}: one bucket of 3 pages, one of 1 resolve: {v}"
        );
        assert_eq!(v["title"], "Pages and resolves, last 24 hours");
        assert_eq!(v["incidents"], 0, "no webhook told an incident URL yet");
        assert_eq!(
            v["silences"],
            serde_json::json!([
                "card silence silence-active",
                "card silence silence-upcoming"
            ]),
            "{at}: {v}"
        );
        assert_eq!(v["silencedRows"], 1, "{at}: the fan's row is marked: {v}");
        assert_eq!(
            v["ages"],
            serde_json::json!(["open for 3 h 12 min", "open for 2 min"]),
            "{at}: {v}"
        );
        assert!(
            v["svgWidth"].as_f64().unwrap() > f64::from(width) * 0.4,
            "{at}: the picture uses the width: {v}"
        );
        assert!(
            v["tickHeight"].as_f64().unwrap() >= 10.0,
            "{at}: axis labels readable: {v}"
        );
        assert!(
            v["scrollWidth"].as_f64() <= v["clientWidth"].as_f64(),
            "{at}: no horizontal overflow: {v}"
        );
        assert_eq!(
            v["wide"],
            serde_json::json!([]),
            "{at}: nothing wider than the viewport"
        );
        assert_eq!(v["csp"], serde_json::json!([]), "{at}: no CSP violation");
        assert_eq!(
            cdp.errors(),
            Vec::<serde_json::Value>::new(),
            "{at}: no console error"
        );
        assert!(
            cdp.count(|e| e["method"] == "Runtime.consoleAPICalled") == 0,
            "{at}: the page logs nothing"
        );

        // The detectors work: an inline script the CSP refuses is one violation and one error.
        cdp.eval(
            "(function(){var s=document.createElement('script');s.textContent='window.__ran=1';\
document.body.appendChild(s);return 1;})()",
        )
        .await;
        cdp.until("the refused inline script logged", |ev| {
            ev.iter().any(|e| {
                e["method"] == "Log.entryAdded" && e["params"]["entry"]["level"] == "error"
            })
        })
        .await;
        let probe = cdp
            .eval("JSON.stringify({csp: window.__csp.length, ran: window.__ran === 1})")
            .await;
        assert_eq!(
            probe.as_str().unwrap(),
            "{\"csp\":1,\"ran\":false}",
            "{at}: the CSP refused it and the probe saw it"
        );
        assert_eq!(cdp.errors().len(), 1, "{at}");
    }
    b.stop().await;
    s.stop().await;
}

/// Fetches `url` until its body satisfies `f` (or `WAIT` passes).
async fn eventually_text(c: &reqwest::Client, url: &str, f: impl Fn(&str) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let body = c.get(url).send().await.unwrap().text().await.unwrap();
        if f(&body) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("last page:\n{body}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
