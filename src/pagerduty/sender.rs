//! One HTTP attempt against the Events API, and the table that says what each answer means.
//!
//! | answer                          | class       | what happens                            |
//! |---------------------------------|-------------|-----------------------------------------|
//! | 2xx (PagerDuty answers 202)     | accepted    | done                                    |
//! | 400                             | rejected    | dead letter, PagerDuty's `errors` logged |
//! | 401, 404, 413, 422, other 4xx   | rejected    | the request itself is wrong: resending it cannot help |
//! | 403                             | retry       | PagerDuty has used 403 for throttling   |
//! | 408, 429                        | retry       | honouring `Retry-After`                 |
//! | 5xx                             | retry       |                                         |
//! | 1xx/3xx                         | retry       | unexpected; most likely a proxy         |
//! | timeout, connection error       | retry       |                                         |
//!
//! Retries back off exponentially with full jitter (see `dispatcher`) and never give up while
//! the process runs.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use url::Url;

use super::error::PagerDutyError;

/// What a status code means for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Accepted,
    Rejected,
    Retry,
}

/// The status -> class table (see the module docs).
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Accepted,
        403 | 408 | 429 => Class::Retry,
        400..=499 => Class::Rejected,
        _ => Class::Retry,
    }
}

/// The bounded `code` label of `bridge_pagerduty_http_responses_total` for a status.
pub fn code_label(status: u16) -> &'static str {
    match status {
        200..=299 => "2xx",
        400 => "400",
        403 => "403",
        408 => "408",
        429 => "429",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Every value of the `code` label, for creating the series at zero.
pub const CODE_LABELS: &[&str] = &[
    "2xx",
    "400",
    "403",
    "408",
    "429",
    "5xx",
    "other",
    "timeout",
    "connect_error",
    "not_leader",
];

/// PagerDuty's answer body (202 and errors share it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Answer {
    pub status: Option<String>,
    pub message: Option<String>,
    pub dedup_key: Option<String>,
    pub errors: Vec<String>,
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub enum Attempt {
    Accepted {
        answer: Answer,
    },
    Rejected {
        status: u16,
        answer: Answer,
    },
    Retry {
        /// HTTP status, when PagerDuty answered at all.
        status: Option<u16>,
        /// `code` label value.
        code: &'static str,
        retry_after: Option<Duration>,
        /// Human-readable reason (status and PagerDuty's message, or the transport error).
        reason: String,
    },
}

/// The attempt of a poller whose send gate is closed: kept for the leader, never sent.
fn not_leader() -> Attempt {
    Attempt::Retry {
        status: None,
        code: "not_leader",
        retry_after: None,
        reason: "this poller does not hold the leadership lease (any more); the leader sends"
            .into(),
    }
}

/// The pooled keep-alive client and the Events API URL.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    url: Url,
    /// With a shared state database: sending is allowed only while this poller's lease is
    /// surely still valid (`crate::leader`).
    gate: Option<Arc<crate::leader::SendGate>>,
}

impl Sender {
    pub fn new(url: Url, request_timeout: Duration) -> Result<Self, PagerDutyError> {
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            // The Events API does not redirect; a 3xx is classified like any unexpected answer
            // (and not following it spares a URL parse per request).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "oneview-pagerduty-bridge/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| PagerDutyError::Client(e.to_string()))?;
        Ok(Self {
            client,
            url,
            gate: None,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Sends only while `gate` is open (see [`crate::leader`]).
    pub fn with_gate(mut self, gate: Option<Arc<crate::leader::SendGate>>) -> Self {
        self.gate = gate;
        self
    }

    fn gate_closed(&self) -> bool {
        self.gate.as_ref().is_some_and(|g| !g.is_open())
    }

    /// Posts one request body. Errors are described without the body (which holds the key).
    pub async fn post(&self, body: Vec<u8>) -> Attempt {
        if self.gate_closed() {
            // Checked last thing before the request: past this instant another poller may lead.
            return not_leader();
        }
        let len = body.len();
        let body = match &self.gate {
            None => reqwest::Body::from(body),
            // Checked again when the connection writes the body: between the check above and
            // the write there may be a connection to open, or a pause (GC, SIGSTOP) that outlasts
            // the lease. A request whose body is refused never reaches PagerDuty whole, so it is
            // not an event there.
            Some(gate) => {
                let gate = gate.clone();
                reqwest::Body::wrap_stream(futures::stream::once(async move {
                    if gate.is_open() {
                        Ok(bytes::Bytes::from(body))
                    } else {
                        Err(std::io::Error::other(
                            "the leadership lease could have expired",
                        ))
                    }
                }))
            }
        };
        let res = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(body)
            .send()
            .await;
        if res.is_err() && self.gate_closed() {
            return not_leader();
        }
        let resp = match res {
            Ok(r) => r,
            Err(e) => {
                let code = if e.is_timeout() {
                    "timeout"
                } else {
                    "connect_error"
                };
                return Attempt::Retry {
                    status: None,
                    code,
                    retry_after: None,
                    reason: format!(
                        "{} posting to {}: {}",
                        code.replace('_', " "),
                        self.url,
                        error_chain(&e)
                    ),
                };
            }
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) if e.is_timeout() => {
                return Attempt::Retry {
                    status: Some(status.as_u16()),
                    code: "timeout",
                    retry_after: None,
                    reason: format!("timeout reading the answer of {}", self.url),
                };
            }
            Err(_) => String::new(),
        };
        let answer: Answer = serde_json::from_str(&text).unwrap_or_default();
        match classify(status.as_u16()) {
            Class::Accepted => Attempt::Accepted { answer },
            Class::Rejected => Attempt::Rejected {
                status: status.as_u16(),
                answer,
            },
            Class::Retry => Attempt::Retry {
                status: Some(status.as_u16()),
                code: code_label(status.as_u16()),
                retry_after,
                reason: describe(status, &answer),
            },
        }
    }
}

fn describe(status: StatusCode, a: &Answer) -> String {
    let mut s = format!("HTTP {status}");
    if let Some(m) = a.message.as_deref().or(a.status.as_deref()) {
        s.push_str(": ");
        s.push_str(m);
    }
    if !a.errors.is_empty() {
        s.push_str(&format!(" ({})", a.errors.join("; ")));
    }
    s
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// `Retry-After` as seconds or an HTTP date, capped at an hour so a broken header cannot stall
/// delivery for days.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
        (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(Duration::from_secs(3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_retry_table() {
        let table: &[(u16, Class, &str)] = &[
            (202, Class::Accepted, "2xx"),
            (200, Class::Accepted, "2xx"),
            (400, Class::Rejected, "400"),
            (401, Class::Rejected, "other"),
            (404, Class::Rejected, "other"),
            (413, Class::Rejected, "other"),
            (422, Class::Rejected, "other"),
            (403, Class::Retry, "403"),
            (408, Class::Retry, "408"),
            (429, Class::Retry, "429"),
            (500, Class::Retry, "5xx"),
            (502, Class::Retry, "5xx"),
            (503, Class::Retry, "5xx"),
            (504, Class::Retry, "5xx"),
            (301, Class::Retry, "other"),
        ];
        for (status, class, label) in table {
            assert_eq!(classify(*status), *class, "status {status}");
            assert_eq!(code_label(*status), *label, "status {status}");
            assert!(CODE_LABELS.contains(label));
        }
    }

    #[test]
    fn retry_after_seconds_and_cap() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, "999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3600)));
        h.insert(RETRY_AFTER, "garbage".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
