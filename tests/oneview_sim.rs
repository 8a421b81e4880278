//! The OneView simulator's own contract, over HTTP: the control API, the filter grammar as
//! clients send it, paging limits, alert PUT/DELETE rules, faults, the CA endpoint in both
//! shapes, and the size of a 5,000-alert page against the default response cap.

mod oneview_support;

use bridge::sim::oneview::SimConfig;
use oneview_support::*;
use serde_json::{Value, json};

struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn login(base: &str) -> Api {
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{base}/rest/login-sessions"))
            .header("X-API-Version", "4600")
            .json(&json!({"userName": "administrator", "password": "sim-password", "loginMsgAck": true}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        Api {
            base: base.to_owned(),
            http,
            token: r["sessionID"].as_str().unwrap().to_owned(),
        }
    }

    async fn get(&self, path_and_query: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .header("X-API-Version", "4600")
            .header("auth", &self.token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn put(&self, path: &str, body: Value) -> (u16, String) {
        let r = self
            .http
            .put(format!("{}{path}", self.base))
            .header("X-API-Version", "4600")
            .header("auth", &self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap_or(Value::Null)
    }
}

fn filter(expr: &str) -> String {
    bridge::oneview::collection::encode(&format!("\"{expr}\""))
}

#[tokio::test]
async fn control_api_adds_generates_modifies_and_counts() {
    let sim = start_sim(SimConfig::default()).await;
    let api = Api::login(&sim.url()).await;
    use reqwest::Method;
    let added = api
        .control(
            Method::POST,
            "/sim/alerts",
            Some(json!([{"severity": "Critical", "description": "PSU 2 failed", "resourceName": "enc-1"}, {"alertState": "Cleared"}])),
        )
        .await;
    assert_eq!(added["uris"].as_array().unwrap().len(), 2);
    let generated = api
        .control(
            Method::POST,
            "/sim/alerts/generate",
            Some(json!({"count": 30, "severity": "Warning"})),
        )
        .await;
    assert_eq!(generated["count"], 30);
    let a = api
        .control(
            Method::PATCH,
            "/sim/alerts/1",
            Some(json!({"severity": "Warning", "description": "PSU 2 degraded"})),
        )
        .await;
    assert_eq!(a["severity"], "Warning");
    assert_eq!(a["description"], "PSU 2 degraded");
    assert!(a["modified"].as_str().unwrap() >= a["created"].as_str().unwrap());
    let a = api.control(Method::POST, "/sim/alerts/1/clear", None).await;
    assert_eq!(a["alertState"], "Cleared");
    api.control(Method::PUT, "/sim/faults", Some(json!({"fail_next": 1})))
        .await;
    let (status, body) = api.get("/rest/alerts/2").await;
    assert_eq!(status, 503);
    assert_eq!(body["errorCode"], "SIM_INJECTED_FAILURE");
    let expired = api
        .control(Method::POST, "/sim/sessions/expire", None)
        .await;
    assert_eq!(expired["expired"], 1);
    let (status, body) = api.get("/rest/alerts/2").await;
    assert_eq!(status, 401);
    assert_eq!(body["errorCode"], "AUTHORIZATION");
    let counters = api.control(Method::GET, "/sim/counters", None).await;
    assert_eq!(counters["logins"], 1);
    assert_eq!(counters["requests"]["alert"], 2);
    assert_eq!(counters["unauthorized"], 1);
    let status = api.control(Method::GET, "/sim", None).await;
    assert_eq!(status["alerts"], 32);
    sim.stop().await;
}

#[tokio::test]
async fn generated_alerts_look_like_real_ones() {
    let sim = start_sim(SimConfig::default()).await;
    sim.handle.generate(&bridge::sim::oneview::GenerateSpec {
        count: 5,
        ..Default::default()
    });
    let a = sim.handle.alert(3).unwrap();
    let parsed: bridge::model::Alert = serde_json::from_value(a.clone()).unwrap();
    assert_eq!(parsed.uri, "/rest/alerts/3");
    assert!(
        parsed
            .description
            .as_deref()
            .unwrap()
            .contains("IPv4 address")
    );
    assert!(
        parsed
            .corrective_action
            .as_deref()
            .unwrap()
            .starts_with("Correct the IPv4")
    );
    assert_eq!(parsed.resource_category(), Some("logical-enclosures"));
    assert_eq!(a["type"], "AlertResourceV3");
    assert!(a["created"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        a["created"].as_str().unwrap().len(),
        24,
        "millisecond stamps"
    );
    sim.stop().await;
}

#[tokio::test]
async fn filter_grammar_as_clients_send_it() {
    let sim = start_sim(SimConfig::default()).await;
    sim.handle.add_alerts(&[
        spec("Critical", "Active"),
        spec("Warning", "Locked"),
        spec("Critical", "Cleared"),
        spec("OK", "Active"),
    ]);
    let api = Api::login(&sim.url()).await;
    let total = |v: &Value| v["total"].as_u64().unwrap();
    // The encoding of a real appliance log.
    let (_, v) = api
        .get("/rest/alerts?filter=%22alertState%3D%27Active%27%22")
        .await;
    assert_eq!(total(&v), 2);
    let (_, v) = api
        .get(&format!(
            "/rest/alerts?filter={}",
            filter("alertState EQ 'Active' OR alertState EQ 'Locked'")
        ))
        .await;
    assert_eq!(total(&v), 3);
    // Repeated filters are ANDed.
    let (_, v) = api
        .get(&format!(
            "/rest/alerts?filter={}&filter={}",
            filter("alertState='Active' OR alertState='Locked'"),
            filter("severity='Critical' OR severity='Warning'")
        ))
        .await;
    assert_eq!(total(&v), 2);
    // query= as the zabbix template sends it.
    let (_, v) = api
        .get(&format!(
            "/rest/alerts?query={}",
            bridge::oneview::collection::encode("severity EQ 'Critical'")
        ))
        .await;
    assert_eq!(total(&v), 2);
    // Bare and quoted timestamps.
    let past = "2001-01-01T00:00:00.000Z";
    for expr in [format!("created > {past}"), format!("modified >= '{past}'")] {
        let (s, v) = api
            .get(&format!("/rest/alerts?filter={}", filter(&expr)))
            .await;
        assert_eq!(s, 200, "{expr}");
        assert_eq!(total(&v), 4, "{expr}");
    }
    let (_, v) = api
        .get(&format!(
            "/rest/alerts?filter={}",
            filter("modified >= '2999-01-01T00:00:00.000Z'")
        ))
        .await;
    assert_eq!(total(&v), 0);
    // Errors name the problem.
    let (s, v) = api
        .get(&format!("/rest/alerts?filter={}", filter("colour='red'")))
        .await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains("colour"));
    sim.stop().await;
}

#[tokio::test]
async fn paging_defaults_caps_and_envelope() {
    let sim = start_sim(SimConfig {
        max_page_size: 40,
        ..SimConfig::default()
    })
    .await;
    sim.handle
        .add_alerts(&vec![spec("Critical", "Active"); 100]);
    let api = Api::login(&sim.url()).await;
    let (_, v) = api.get("/rest/alerts").await;
    assert_eq!(v["count"], 25, "without count a page holds 25");
    let (_, v) = api.get("/rest/alerts?count=-1").await;
    assert_eq!(v["count"], 25, "count=-1 still gives 25");
    let (_, v) = api.get("/rest/alerts?start=80&count=500").await;
    assert_eq!(v["count"], 20);
    assert_eq!(v["total"], 100);
    assert!(v["nextPageUri"].is_null());
    assert_eq!(v["prevPageUri"], "/rest/alerts?start=40&count=40");
    for key in [
        "type",
        "members",
        "count",
        "total",
        "start",
        "prevPageUri",
        "nextPageUri",
        "uri",
        "category",
        "eTag",
        "created",
        "modified",
    ] {
        assert!(v.get(key).is_some(), "envelope lacks {key}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn alert_put_and_delete_follow_the_real_rules() {
    let sim = start_sim(SimConfig::default()).await;
    let uris = sim
        .handle
        .add_alerts(&[spec("Critical", "Active"), spec("Critical", "Locked")]);
    let api = Api::login(&sim.url()).await;
    // A stale eTag is refused.
    let (s, _) = api
        .put(&uris[0], json!({"notes": "x", "eTag": "not-current"}))
        .await;
    assert_eq!(s, 412);
    // A locked alert cannot be cleared by a user.
    let (s, body) = api.put(&uris[1], json!({"alertState": "Cleared"})).await;
    assert_eq!(s, 400, "{body}");
    // Only cleared alerts can be deleted.
    let del = |u: &str| {
        api.http
            .delete(format!("{}{u}", api.base))
            .header("X-API-Version", "4600")
            .header("auth", &api.token)
            .send()
    };
    assert_eq!(del(&uris[0]).await.unwrap().status(), 400);
    let (s, _) = api
        .put(&uris[0], json!({"alertState": "Cleared", "notes": "done"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(del(&uris[0]).await.unwrap().status(), 204);
    assert_eq!(sim.handle.alert_count(), 1);
    sim.stop().await;
}

/// Scale check for the benchmarks (`cargo test --release --test oneview_sim -- --ignored`).
#[tokio::test]
#[ignore = "scale check; slow in debug builds"]
async fn holds_500k_alerts_and_answers_incremental_queries_from_its_index() {
    let sim = start_sim(SimConfig::default()).await;
    let t = std::time::Instant::now();
    sim.handle.generate(&bridge::sim::oneview::GenerateSpec {
        count: 500_000,
        state: Some("Cleared".into()),
        max_age_ms: 30 * 24 * 3600 * 1000,
        ..Default::default()
    });
    eprintln!("generate 500k: {:?}", t.elapsed());
    let api = Api::login(&sim.url()).await;
    let t = std::time::Instant::now();
    let (_, v) = api
        .get(&format!(
            "/rest/alerts?count=500&filter={}",
            filter("modified >= '2999-01-01T00:00:00.000Z'")
        ))
        .await;
    eprintln!("incremental query: {:?}", t.elapsed());
    assert_eq!(v["total"], 0);
    let t = std::time::Instant::now();
    let (_, v) = api
        .get(&format!(
            "/rest/alerts?count=500&filter={}",
            filter("alertState='Active' OR alertState='Locked'")
        ))
        .await;
    eprintln!("full-scan query: {:?}", t.elapsed());
    assert_eq!(v["total"], 0);
    sim.stop().await;
}

#[tokio::test]
async fn the_default_response_cap_holds_a_5000_alert_page_ten_times_over() {
    let sim = start_sim(SimConfig {
        max_page_size: 5000,
        ..SimConfig::default()
    })
    .await;
    sim.handle.generate(&bridge::sim::oneview::GenerateSpec {
        count: 5000,
        ..Default::default()
    });
    let api = Api::login(&sim.url()).await;
    let r = api
        .http
        .get(format!("{}/rest/alerts?count=5000", api.base))
        .header("X-API-Version", "4600")
        .header("auth", &api.token)
        .send()
        .await
        .unwrap();
    let page = r.bytes().await.unwrap().len() as u64;
    eprintln!("a 5,000-member page of the simulator's real alert content: {page} bytes");
    assert_eq!(sim.handle.counters().members_sent, 5000);
    assert!(
        page * 10 <= bridge::config::DEFAULT_MAX_RESPONSE_BYTES,
        "{page} bytes"
    );
    sim.stop().await;
}

#[tokio::test]
async fn the_new_faults_are_set_over_the_control_api() {
    let sim = start_sim(SimConfig::default()).await;
    let api = Api::login(&sim.url()).await;
    let f = api
        .control(
            reqwest::Method::PUT,
            "/sim/faults",
            Some(json!({"endless_page_next": 1, "next_page_origin": "http://127.0.0.1:9", "echo_auth_next": 2})),
        )
        .await;
    assert_eq!(f["endless_page_next"], 1);
    assert_eq!(f["next_page_origin"], "http://127.0.0.1:9");
    assert_eq!(f["echo_auth_next"], 2);
    // The echo quotes the session the request carried.
    let (s, v) = api.get("/rest/alerts/1").await;
    assert_eq!(s, 400);
    assert!(v["message"].as_str().unwrap().contains(&api.token), "{v}");
    sim.stop().await;
}

#[tokio::test]
async fn certificates_ca_answers_in_the_shape_of_the_api_version() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let path = |f: &str| std::path::PathBuf::from(format!("{dir}/{f}"));
    let ca = std::fs::read_to_string(path("ca.pem")).unwrap();
    let tls = bridge::sim::oneview::TlsFiles::read(&path("server.pem"), &path("server.key"))
        .unwrap()
        .with_ca(&path("ca.pem"))
        .unwrap();
    let sim = bridge::sim::oneview::start_with(
        SimConfig {
            current_version: 6600,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        Some(tls),
    )
    .await
    .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let token: Value = http
        .post(format!("{}/rest/login-sessions", sim.url()))
        .header("X-API-Version", "4600")
        .json(
            &json!({"userName": "administrator", "password": "sim-password", "loginMsgAck": true}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["sessionID"].as_str().unwrap().to_owned();
    let get = |version: &str, query: &str, details: bool, auth: bool| {
        let mut r = http
            .get(format!("{}/rest/certificates/ca{query}", sim.url()))
            .header("X-API-Version", version);
        if details {
            r = r.header("If-Req-CertDetails", "true");
        }
        if auth {
            r = r.header("Auth", &token);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Before 600: the PEM as a JSON string.
    let (s, v) = get("500", "", false, true).await;
    assert_eq!(s, 200);
    assert_eq!(v.as_str().unwrap().trim(), ca.trim());
    // From 600: a collection; the PEM only with the details asked for.
    let (s, v) = get("600", "?filter=certType:INTERNAL", true, true).await;
    assert_eq!(s, 200);
    assert_eq!(v["members"].as_array().unwrap().len(), 1);
    assert_eq!(v["members"][0]["certType"], "INTERNAL");
    assert_eq!(
        v["members"][0]["certificateDetails"]["base64Data"]
            .as_str()
            .unwrap()
            .trim(),
        ca.trim()
    );
    let (_, v) = get("6600", "?filter=certType:INTERNAL", false, true).await;
    assert!(v["members"][0]["certificateDetails"]["base64Data"].is_null());
    let (_, v) = get("6600", "?filter=certType:EXTERNAL", true, true).await;
    assert_eq!(v["members"].as_array().unwrap().len(), 0);
    // A session is needed, like on an appliance.
    let (s, _) = get("6600", "", true, false).await;
    assert_eq!(s, 401);
    sim.stop().await;

    // Over plain HTTP the simulator has no CA.
    let plain = start_sim(SimConfig::default()).await;
    let api = Api::login(&plain.url()).await;
    let (s, _) = api.get("/rest/certificates/ca").await;
    assert_eq!(s, 404);
    plain.stop().await;
}
