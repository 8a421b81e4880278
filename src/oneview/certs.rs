//! The SCMB certificates, read through the appliance's REST API as HPE's SDKs do: the RabbitMQ
//! client keypair (`GET /rest/certificates/client/rabbitmq/keypair/default`, generated with
//! `POST /rest/certificates/client/rabbitmq` and its task when the appliance has none yet) and
//! the appliance CA (`GET /rest/certificates/ca`: a PEM string before API 600, a collection
//! of `members[].certificateDetails.base64Data` filtered to `certType:INTERNAL` from 600 on).
//! Files in `[scmb]` (`client_cert_file` + `client_key_file`, `ca_file`) replace what they
//! name. It uses the appliance's [`OneViewClient`] (session, 401 re-login, errors naming the
//! URL, HTTP status and errorCode) and owns nothing else.
//!
//! Keys: appliances label theirs `BEGIN RSA PRIVATE KEY` (PKCS#1), and HPE's Java SDK parses
//! the same data as PKCS#8, so the label is not trusted: [`normalize_key`] reads the DER and
//! labels it by what it is.

use std::time::Duration;

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::client::{OneViewClient, Reply};
use super::error::OneViewError;
use super::metrics::Endpoint;
use super::scmb::ScmbTls;
use crate::config::ScmbConfig;

pub const KEYPAIR_PATH: &str = "/rest/certificates/client/rabbitmq/keypair/default";
pub const GENERATE_PATH: &str = "/rest/certificates/client/rabbitmq";
pub const CA_PATH: &str = "/rest/certificates/ca";
/// `GET /rest/certificates/ca` answers a collection from this API version on.
pub const CA_COLLECTION_FROM: u32 = 600;
/// The errorCode of a generate request when the keypair exists already.
pub const CONFLICT: &str = "RABBITMQ_CLIENTCERT_CONFLICT";

/// How long to wait for the generate task, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct TaskWait {
    pub every: Duration,
    pub at_most: Duration,
}

impl Default for TaskWait {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            at_most: Duration::from_secs(300),
        }
    }
}

/// Why the SCMB certificates are not available. Each names what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The appliance refused or failed a request (the URL, HTTP status and errorCode are in it).
    #[error("{0}")]
    OneView(#[from] OneViewError),
    #[error(
        "the appliance has no RabbitMQ client keypair yet and refused to generate one: POST {url} answered HTTP {status}{}: {message}; generating it needs the Infrastructure administrator role: give the bridge's OneView user that role once, generate it yourself (POST {url} {{\"type\":\"RabbitMqClientCertV2\",\"commonName\":\"default\"}}), or set scmb.client_cert_file and scmb.client_key_file. Polling continues meanwhile",
        .error_code.as_ref().map(|c| format!(" (errorCode {c})")).unwrap_or_default()
    )]
    NoRightsToGenerate {
        url: String,
        status: u16,
        error_code: Option<String>,
        message: String,
    },
    #[error("the task generating the RabbitMQ client keypair ({url}) ended {state}: {detail}")]
    TaskFailed {
        url: String,
        state: String,
        detail: String,
    },
    #[error(
        "the task generating the RabbitMQ client keypair ({url}) did not finish within {waited:?}"
    )]
    TaskTimeout { url: String, waited: Duration },
    #[error("{url} sent an unusable answer: {detail}")]
    BadAnswer { url: String, detail: String },
    #[error("{key} ({path}): {detail}")]
    File {
        key: &'static str,
        path: String,
        detail: String,
    },
}

/// The TLS material for the appliance's bus: files where `[scmb]` names them, the rest over
/// REST (generating the keypair when the appliance has none).
pub async fn fetch_tls(
    client: &OneViewClient,
    cfg: &ScmbConfig,
    wait: TaskWait,
) -> Result<ScmbTls, CertError> {
    let mut sources = Vec::new();
    let (cert, key) = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(c), Some(k)) => {
            let cert = read_file("scmb.client_cert_file", c)?;
            let key = read_file("scmb.client_key_file", k)?;
            let key = normalize_key(&key).map_err(|detail| CertError::File {
                key: "scmb.client_key_file",
                path: k.display().to_string(),
                detail,
            })?;
            sources.push(format!("{} + {}", c.display(), k.display()));
            (cert, key)
        }
        _ => {
            let kp = keypair_or_generate(client, wait).await?;
            sources.push(format!("GET {KEYPAIR_PATH}"));
            kp
        }
    };
    let ca = match &cfg.ca_file {
        Some(f) => {
            sources.push(f.display().to_string());
            read_file("scmb.ca_file", f)?
        }
        None => {
            sources.push(format!("GET {CA_PATH}"));
            appliance_ca(client).await?
        }
    };
    let tls = ScmbTls {
        client_cert_pem: cert,
        client_key_pem: key,
        ca_pem: ca,
        source: sources.join(", "),
    };
    super::scmb::check_tls(&tls).map_err(|e| CertError::BadAnswer {
        url: tls.source.clone(),
        detail: e.to_string(),
    })?;
    Ok(tls)
}

fn read_file(key: &'static str, path: &std::path::Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::File {
        key,
        path: path.display().to_string(),
        detail: format!("cannot read it: {e}"),
    })
}

/// `GET` the keypair; `None` when the appliance has none (404).
pub async fn keypair(client: &OneViewClient) -> Result<Option<(String, SecretString)>, CertError> {
    let r = match client
        .call(Endpoint::Certificates, Method::GET, KEYPAIR_PATH, None)
        .await
    {
        Ok(r) => r,
        Err(OneViewError::Api { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = json(&r)?;
    let field = |name: &str| {
        v.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| CertError::BadAnswer {
                url: r.url.clone(),
                detail: format!("no {name} in the keypair"),
            })
    };
    let cert = field("base64SSLCertData")?.to_owned();
    let key = normalize_key(field("base64SSLKeyData")?).map_err(|detail| CertError::BadAnswer {
        url: r.url.clone(),
        detail: format!("base64SSLKeyData: {detail}"),
    })?;
    Ok(Some((cert, key)))
}

/// The keypair, generated first when the appliance has none.
pub async fn keypair_or_generate(
    client: &OneViewClient,
    wait: TaskWait,
) -> Result<(String, SecretString), CertError> {
    if let Some(kp) = keypair(client).await? {
        return Ok(kp);
    }
    tracing::info!(url = %client.base_url(), "the appliance has no RabbitMQ client keypair; generating it");
    generate(client, wait).await?;
    keypair(client).await?.ok_or_else(|| CertError::BadAnswer {
        url: KEYPAIR_PATH.to_owned(),
        detail: "still no keypair after its generation task completed".to_owned(),
    })
}

/// `POST /rest/certificates/client/rabbitmq` and waits for its task. A keypair that exists
/// already (errorCode `RABBITMQ_CLIENTCERT_CONFLICT`, at once or from the task) is success.
pub async fn generate(client: &OneViewClient, wait: TaskWait) -> Result<(), CertError> {
    let body = serde_json::json!({"type": "RabbitMqClientCertV2", "commonName": "default"});
    let r = match client
        .call(
            Endpoint::Certificates,
            Method::POST,
            GENERATE_PATH,
            Some(&body),
        )
        .await
    {
        Ok(r) => r,
        Err(e) if e.error_code() == Some(CONFLICT) => return Ok(()),
        Err(OneViewError::Api {
            url,
            status,
            error_code,
            message,
            ..
        }) if status == 403
            || status == 401
            || error_code
                .as_deref()
                .is_some_and(|c| c.contains("AUTHORIZATION") || c.contains("PERMISSION")) =>
        {
            return Err(CertError::NoRightsToGenerate {
                url,
                status,
                error_code,
                message,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let task = match json(&r)
        .ok()
        .and_then(|v| v.get("uri").and_then(Value::as_str).map(str::to_owned))
    {
        Some(uri) if uri.starts_with("/rest/tasks/") => uri,
        // Some versions answer with the certificate itself once done: nothing to wait for.
        _ => return Ok(()),
    };
    wait_task(client, &task, wait).await
}

async fn wait_task(client: &OneViewClient, uri: &str, wait: TaskWait) -> Result<(), CertError> {
    let start = tokio::time::Instant::now();
    loop {
        let r = client
            .call(Endpoint::Certificates, Method::GET, uri, None)
            .await?;
        let v = json(&r)?;
        let state = v
            .get("taskState")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match state.as_str() {
            "Completed" | "Warning" => return Ok(()),
            "Error" | "Terminated" | "Killed" => {
                let errors = v.get("taskErrors").and_then(Value::as_array);
                let conflict = errors.is_some_and(|es| {
                    es.iter()
                        .any(|e| e.get("errorCode").and_then(Value::as_str) == Some(CONFLICT))
                });
                if conflict {
                    return Ok(());
                }
                let detail = errors
                    .map(|es| {
                        es.iter()
                            .map(|e| {
                                format!(
                                    "{} ({})",
                                    e.get("message").and_then(Value::as_str).unwrap_or(""),
                                    e.get("errorCode").and_then(Value::as_str).unwrap_or("")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default();
                return Err(CertError::TaskFailed {
                    url: r.url,
                    state,
                    detail,
                });
            }
            _ => {}
        }
        if start.elapsed() >= wait.at_most {
            return Err(CertError::TaskTimeout {
                url: r.url,
                waited: wait.at_most,
            });
        }
        tokio::time::sleep(wait.every).await;
    }
}

/// The appliance's internal CA (PEM), in the shape of the negotiated API version.
pub async fn appliance_ca(client: &OneViewClient) -> Result<String, CertError> {
    client.ensure_session().await?;
    let collection = client.api_version().is_none_or(|v| v >= CA_COLLECTION_FROM);
    let path = if collection {
        format!("{CA_PATH}?filter=certType:INTERNAL")
    } else {
        CA_PATH.to_owned()
    };
    let r = client
        .call(Endpoint::Certificates, Method::GET, &path, None)
        .await?;
    let v = json(&r)?;
    parse_ca(&v).map_err(|detail| CertError::BadAnswer { url: r.url, detail })
}

/// Both shapes, whatever the version: a PEM string, or a collection whose INTERNAL members'
/// `certificateDetails.base64Data` are the CA(s).
pub fn parse_ca(v: &Value) -> Result<String, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    match v {
        Value::String(s) if s.contains(BEGIN) => Ok(s.clone()),
        Value::String(s) if s.contains("[object Object]") => Err(
            "the CA is \"[object Object]\": a client that read the API 600+ collection as a string; this answer is unusable".to_owned(),
        ),
        Value::String(_) => Err("the CA string holds no PEM certificate".to_owned()),
        Value::Object(o) => {
            let members = o
                .get("members")
                .and_then(Value::as_array)
                .ok_or("neither a PEM string nor a collection with members")?;
            let pems: Vec<&str> = members
                .iter()
                .filter(|m| {
                    m.get("certType")
                        .and_then(Value::as_str)
                        .is_none_or(|t| t == "INTERNAL")
                })
                .filter_map(|m| {
                    m.pointer("/certificateDetails/base64Data")
                        .and_then(Value::as_str)
                })
                .filter(|s| s.contains(BEGIN))
                .collect();
            if pems.is_empty() {
                return Err(format!(
                    "no INTERNAL member with certificateDetails.base64Data among {} member(s) (the request sends If-Req-CertDetails: true)",
                    members.len()
                ));
            }
            Ok(pems.join("\n"))
        }
        _ => Err("neither a PEM string nor a collection".to_owned()),
    }
}

fn json(r: &Reply) -> Result<Value, CertError> {
    serde_json::from_slice(&r.body).map_err(|e| CertError::BadAnswer {
        url: r.url.clone(),
        detail: format!("not JSON: {e}"),
    })
}

/// The key PEM labelled by what its DER is: PKCS#8 (`PRIVATE KEY`), PKCS#1
/// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`), whatever label it came with.
pub fn normalize_key(text: &str) -> Result<SecretString, String> {
    let p = pem::parse(text.trim()).map_err(|e| format!("not a PEM key: {e}"))?;
    let tag = match key_kind(p.contents()) {
        Some(KeyKind::Pkcs8) => "PRIVATE KEY",
        Some(KeyKind::Pkcs1) => "RSA PRIVATE KEY",
        Some(KeyKind::Sec1) => "EC PRIVATE KEY",
        None => {
            return Err(format!(
                "the {} block is neither a PKCS#8, PKCS#1 nor SEC1 private key",
                p.tag()
            ));
        }
    };
    let fixed = pem::Pem::new(tag, p.contents().to_vec());
    Ok(SecretString::from(pem::encode(&fixed)))
}

#[derive(Debug, PartialEq, Eq)]
enum KeyKind {
    Pkcs8,
    Pkcs1,
    Sec1,
}

/// The DER's shape: `SEQUENCE { INTEGER 0, SEQUENCE (algorithm) ... }` is PKCS#8,
/// `SEQUENCE { INTEGER 0, INTEGER (modulus) ... }` PKCS#1, `SEQUENCE { INTEGER 1, OCTET STRING
/// ... }` SEC1.
fn key_kind(der: &[u8]) -> Option<KeyKind> {
    let (tag, body, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, v1, rest) = tlv(body)?;
    if t1 != 0x02 {
        return None;
    }
    let (t2, _, _) = tlv(rest)?;
    match (v1, t2) {
        ([0], 0x30) | ([1], 0x30) => Some(KeyKind::Pkcs8),
        ([0], 0x02) => Some(KeyKind::Pkcs1),
        ([1], 0x04) => Some(KeyKind::Sec1),
        _ => None,
    }
}

/// One DER tag-length-value: (tag, value, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | usize::from(x);
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// For the tests: the key's label after [`normalize_key`].
#[doc(hidden)]
pub fn key_label(key: &SecretString) -> String {
    key.expose_secret()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `openssl genrsa -traditional 2048` (PKCS#1) and the same key as PKCS#8, test-only.
    const RSA_PKCS1: &str = include_str!("../../tests/fixtures/tls/scmb_rsa_pkcs1.key");
    const RSA_PKCS8: &str = include_str!("../../tests/fixtures/tls/scmb_rsa_pkcs8.key");

    #[test]
    fn pkcs1_and_pkcs8_keys_are_labelled_by_their_content() {
        let k1 = normalize_key(RSA_PKCS1).unwrap();
        assert_eq!(key_label(&k1), "-----BEGIN RSA PRIVATE KEY-----");
        let k8 = normalize_key(RSA_PKCS8).unwrap();
        assert_eq!(key_label(&k8), "-----BEGIN PRIVATE KEY-----");
        // PKCS#8 content under the appliance's PKCS#1 label (the Java SDK's reading).
        let mislabelled = RSA_PKCS8
            .replace("BEGIN PRIVATE KEY", "BEGIN RSA PRIVATE KEY")
            .replace("END PRIVATE KEY", "END RSA PRIVATE KEY");
        let fixed = normalize_key(&mislabelled).unwrap();
        assert_eq!(key_label(&fixed), "-----BEGIN PRIVATE KEY-----");
        use tokio_rustls::rustls::pki_types::PrivateKeyDer;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        for k in [&k1, &k8, &fixed] {
            let der = PrivateKeyDer::from_pem_slice(k.expose_secret().as_bytes()).unwrap();
            tokio_rustls::rustls::crypto::ring::sign::any_supported_type(&der)
                .expect("rustls loads the key");
        }
        assert!(normalize_key("garbage").is_err());
    }

    #[test]
    fn both_ca_shapes_parse() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert_eq!(parse_ca(&Value::String(pem.to_owned())).unwrap(), pem);
        let coll = serde_json::json!({"members": [
            {"certType": "EXTERNAL", "certificateDetails": {"base64Data": "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----"}},
            {"certType": "INTERNAL", "certificateDetails": {"base64Data": pem}},
        ]});
        assert_eq!(parse_ca(&coll).unwrap(), pem);
        let e = parse_ca(&Value::String("[object Object]".to_owned())).unwrap_err();
        assert!(e.contains("[object Object]"), "{e}");
        let e = parse_ca(
            &serde_json::json!({"members": [{"certType": "INTERNAL", "certificateDetails": {}}]}),
        )
        .unwrap_err();
        assert!(e.contains("If-Req-CertDetails"), "{e}");
    }
}
