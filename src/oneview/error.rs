//! Errors of the OneView side. Every message names what failed (endpoint, URL, HTTP status,
//! OneView `errorCode`, configuration key) and what to do about it. None carries a secret: the
//! session id and the password never enter an error, and text the appliance (or whatever
//! answers in its place) sends back is scrubbed of both ([`OneViewError::redact`]) before it
//! becomes part of one. TLS failures are told apart from unreachable appliances
//! ([`tls_problem`]), because their fix is a certificate setting, not the network.

use std::time::Duration;

use serde::Deserialize;
use tokio_rustls::rustls;

use crate::secret::SecretError;

/// The OneView error body (`errorCode`, `message`, `recommendedActions`, ...), as far as the
/// bridge uses it. Every field is optional: proxies in front of appliances answer with HTML.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ErrorBody {
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub details: Option<String>,
    pub recommended_actions: Option<Vec<String>>,
}

/// Something went wrong talking to OneView.
#[derive(Debug, thiserror::Error)]
pub enum OneViewError {
    /// The HTTP client could not be built (TLS material, for one).
    #[error("{key}: {detail}")]
    Setup { key: &'static str, detail: String },

    /// The password file could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),

    /// The appliance rejected the credentials (`AUTHN_AUTH_FAIL`, `AUTHN_AUTH_DIR_FAIL`, or a
    /// missing banner acknowledgement).
    #[error(
        "OneView at {url} rejected the login (errorCode {code}): {message}; check oneview.username, oneview.password and oneview.auth_login_domain. The bridge retries with growing backoff and does not hammer the appliance"
    )]
    AuthFailed {
        url: String,
        code: String,
        message: String,
    },

    /// The request never got an HTTP answer (connect failure, timeout, reset).
    #[error(
        "OneView {endpoint} request to {url} failed: {detail}; check that the appliance is reachable (oneview.url, oneview.connect_timeout, oneview.request_timeout)"
    )]
    Transport {
        endpoint: &'static str,
        url: String,
        detail: String,
        timeout: bool,
    },

    /// The TLS handshake with the appliance failed, most often over its certificate.
    #[error("OneView {endpoint} request to {url} failed: {problem}; {advice} (TLS error: {detail})",
        advice = problem.advice(url, ca_file.as_deref()))]
    Tls {
        endpoint: &'static str,
        url: String,
        problem: TlsProblem,
        detail: String,
        /// `oneview.ca_file` as configured, to tell "not set" from "set to the wrong CA".
        ca_file: Option<String>,
    },

    /// A response body longer than `oneview.max_response_bytes`: the bridge stopped reading it.
    #[error("OneView {endpoint} {url} answered with {} than oneview.max_response_bytes ({}); the bridge stopped reading there and dropped the connection. If the appliance really sends pages this large, raise oneview.max_response_bytes or lower poller.page_size",
        match .declared { Some(d) => format!("a body of {d} bytes (Content-Length), more"), None => "more bytes".to_owned() },
        human_bytes(*.limit))]
    ResponseTooLarge {
        endpoint: &'static str,
        url: String,
        limit: u64,
        /// The `Content-Length` the answer announced, when it did.
        declared: Option<u64>,
    },

    /// A link (`nextPageUri`, an alert URI) that leaves the appliance: every request carries
    /// the session token, so only the origin of `oneview.url` is followed.
    #[error(
        "refusing to follow {link} ({what}): it is not on the appliance {appliance} (scheme, host and port of oneview.url), and every OneView request carries the session token. If the appliance names itself differently in its links, set oneview.url to that name"
    )]
    ForeignLink {
        /// Where the link came from, e.g. "nextPageUri of https://ov/rest/alerts?start=0".
        what: String,
        link: String,
        appliance: String,
    },

    /// The appliance answered with an error status.
    #[error("OneView {endpoint} {url} answered HTTP {status}{}: {message}{}",
        .error_code.as_ref().map(|c| format!(" (errorCode {c})")).unwrap_or_default(),
        if .recommended_actions.is_empty() { String::new() } else { format!("; recommended: {}", .recommended_actions.join(" ")) })]
    Api {
        endpoint: &'static str,
        url: String,
        status: u16,
        error_code: Option<String>,
        message: String,
        recommended_actions: Vec<String>,
    },

    /// A 2xx answer the bridge cannot use (not JSON, no `members`, no `sessionID`).
    #[error("OneView {endpoint} {url} sent an unusable response: {detail}")]
    BadResponse {
        endpoint: &'static str,
        url: String,
        detail: String,
    },

    /// A previous login failed and the next attempt is not due yet.
    #[error("not logging in to OneView again for {}: the last login failed: {last}", humantime::format_duration(*.retry_in))]
    LoginBackoff { retry_in: Duration, last: String },

    /// A full sync would have resolved many open alerts, and a sample of them checked one by
    /// one is still open: the collection answer was a glitch (appliances answer `total: 0`
    /// while their services restart). Nothing was resolved; the next cycle reads it again.
    #[error(
        "implausible_snapshot: OneView's alert collection left out {missing} of {open} open alerts, but {still_open} of {sampled} sampled ones are still open (for example {example}); nothing was resolved, the next cycle syncs again"
    )]
    ImplausibleSnapshot {
        missing: usize,
        open: usize,
        sampled: usize,
        still_open: usize,
        example: String,
    },

    /// The consumer of alert changes went away.
    #[error("the alert change channel is closed: the delivery side stopped")]
    ChannelClosed,
}

impl OneViewError {
    /// Worth retrying the same request soon: no answer, or a 5xx/429 answer.
    pub fn is_transient(&self) -> bool {
        match self {
            OneViewError::Transport { .. } => true,
            OneViewError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The login failed because of the credentials, not the network.
    pub fn is_auth_failure(&self) -> bool {
        matches!(self, OneViewError::AuthFailed { .. })
    }

    /// The OneView `errorCode`, when the appliance sent one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            OneViewError::Api { error_code, .. } => error_code.as_deref(),
            OneViewError::AuthFailed { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, when the appliance answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            OneViewError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The same error with every occurrence of the given secrets (session id, password) in its
    /// text replaced by `<redacted>`: an echoing proxy or a hostile peer must not be able to
    /// make the bridge log its own token.
    pub(crate) fn redact(self, secrets: &[&str]) -> Self {
        let secrets: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
        if secrets.is_empty() {
            return self;
        }
        let r = |s: String| redact_text(s, &secrets);
        match self {
            OneViewError::Setup { key, detail } => OneViewError::Setup {
                key,
                detail: r(detail),
            },
            OneViewError::AuthFailed { url, code, message } => OneViewError::AuthFailed {
                url: r(url),
                code: r(code),
                message: r(message),
            },
            OneViewError::Transport {
                endpoint,
                url,
                detail,
                timeout,
            } => OneViewError::Transport {
                endpoint,
                url: r(url),
                detail: r(detail),
                timeout,
            },
            OneViewError::Tls {
                endpoint,
                url,
                problem,
                detail,
                ca_file,
            } => OneViewError::Tls {
                endpoint,
                url: r(url),
                problem: problem.redact(&secrets),
                detail: r(detail),
                ca_file,
            },
            OneViewError::ResponseTooLarge {
                endpoint,
                url,
                limit,
                declared,
            } => OneViewError::ResponseTooLarge {
                endpoint,
                url: r(url),
                limit,
                declared,
            },
            OneViewError::ForeignLink {
                what,
                link,
                appliance,
            } => OneViewError::ForeignLink {
                what: r(what),
                link: r(link),
                appliance,
            },
            OneViewError::Api {
                endpoint,
                url,
                status,
                error_code,
                message,
                recommended_actions,
            } => OneViewError::Api {
                endpoint,
                url: r(url),
                status,
                error_code: error_code.map(r),
                message: r(message),
                recommended_actions: recommended_actions.into_iter().map(r).collect(),
            },
            OneViewError::BadResponse {
                endpoint,
                url,
                detail,
            } => OneViewError::BadResponse {
                endpoint,
                url: r(url),
                detail: r(detail),
            },
            OneViewError::LoginBackoff { retry_in, last } => OneViewError::LoginBackoff {
                retry_in,
                last: r(last),
            },
            e @ (OneViewError::Secret(_)
            | OneViewError::ChannelClosed
            | OneViewError::ImplausibleSnapshot { .. }) => e,
        }
    }

    /// A short, bounded name of the failure for the `reason` label of
    /// `bridge_oneview_request_errors_total`; `None` for answers counted by status instead.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            OneViewError::Transport { timeout: true, .. } => Some("timeout"),
            OneViewError::Transport { .. } => Some("connect"),
            OneViewError::Tls { problem, .. } if problem.is_certificate() => Some("certificate"),
            OneViewError::Tls { .. } => Some("tls"),
            OneViewError::ResponseTooLarge { .. } => Some("too_large"),
            OneViewError::ForeignLink { .. } => Some("foreign_link"),
            _ => None,
        }
    }
}

fn redact_text(mut s: String, secrets: &[&str]) -> String {
    for secret in secrets {
        if s.contains(secret) {
            s = s.replace(secret, "<redacted>");
        }
    }
    s
}

/// `67108864 bytes (64 MiB)`.
pub(crate) fn human_bytes(n: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{n} bytes ({} MiB)", n / MIB)
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{n} bytes ({} KiB)", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

/// What went wrong in a TLS handshake with the appliance, in the terms of its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsProblem {
    /// Self-signed, or signed by a CA this host does not trust (`UnknownIssuer`): the usual
    /// first-run failure, since appliances ship with their own certificates.
    UnknownIssuer,
    /// The certificate does not name the host of `oneview.url`; `presented` are the names it
    /// holds, when rustls says.
    NameMismatch {
        presented: Vec<String>,
    },
    Expired,
    NotYetValid,
    Revoked,
    /// Another certificate refusal (bad signature, wrong purpose, unsupported algorithm...).
    OtherCertificate,
    /// A handshake failure that is not about the certificate (protocol versions, ciphers, a
    /// plain-HTTP port answering a TLS hello).
    Handshake,
}

/// The README section with the command that saves the appliance's CA.
pub const CA_DOC: &str =
    "\"Trusting the appliance's certificate\" in the README and in docs/RUNBOOK.md";

impl TlsProblem {
    /// A refusal of the certificate itself (as opposed to the rest of the handshake).
    pub fn is_certificate(&self) -> bool {
        !matches!(self, TlsProblem::Handshake)
    }

    fn redact(self, secrets: &[&str]) -> Self {
        match self {
            TlsProblem::NameMismatch { presented } => TlsProblem::NameMismatch {
                presented: presented
                    .into_iter()
                    .map(|p| redact_text(p, secrets))
                    .collect(),
            },
            p => p,
        }
    }

    /// What to do, for the error message.
    fn advice(&self, url: &str, ca_file: Option<&str>) -> String {
        let host = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| url.to_owned());
        match self {
            TlsProblem::UnknownIssuer => match ca_file {
                None => format!(
                    "appliances serve a self-signed or internal-CA certificate, so this is expected on a first run. Set oneview.ca_file to the appliance's CA certificate (PEM), which GET /rest/certificates/ca returns after a login (from API 600 on as members[].certificateDetails.base64Data of ?filter=certType:INTERNAL); the command that saves it is under {CA_DOC}"
                ),
                Some(f) => format!(
                    "oneview.ca_file ({f}) does not hold the CA that signed this certificate. Save the appliance's CA again (GET /rest/certificates/ca; the command is under {CA_DOC}), or, when the certificate was signed by your own CA, put that CA in the file"
                ),
            },
            TlsProblem::NameMismatch { presented } => format!(
                "the certificate is not valid for {host}{}. Set oneview.url to a name the certificate holds (usually the appliance's fully qualified name rather than its IP address), or have the appliance's certificate reissued with this name; oneview.ca_file does not change this",
                if presented.is_empty() {
                    String::new()
                } else {
                    format!(" (it names {})", presented.join(", "))
                }
            ),
            TlsProblem::Expired => "renew the appliance's certificate (OneView: Settings > Security > Certificates), or check this host's clock if the certificate should still be valid".to_owned(),
            TlsProblem::NotYetValid => "check the clocks of this host and of the appliance (NTP): the certificate is only valid from a later date".to_owned(),
            TlsProblem::Revoked => "the appliance's certificate was revoked: have it reissued".to_owned(),
            TlsProblem::OtherCertificate => format!(
                "check the appliance's certificate (openssl s_client -connect {host}:443 shows it); when it is signed by a CA you trust, put that CA in oneview.ca_file (see {CA_DOC})"
            ),
            TlsProblem::Handshake => "check that oneview.url names the appliance's HTTPS port (a plain-HTTP port or another service answers differently), and that the appliance allows TLS 1.2 or 1.3".to_owned(),
        }
    }
}

impl std::fmt::Display for TlsProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsProblem::UnknownIssuer => {
                "the appliance's TLS certificate is not trusted (unknown issuer: self-signed or signed by a CA this host does not know)"
            }
            TlsProblem::NameMismatch { .. } => {
                "the appliance's TLS certificate does not match the host name in oneview.url"
            }
            TlsProblem::Expired => "the appliance's TLS certificate has expired",
            TlsProblem::NotYetValid => "the appliance's TLS certificate is not valid yet",
            TlsProblem::Revoked => "the appliance's TLS certificate is revoked",
            TlsProblem::OtherCertificate => "the appliance's TLS certificate was refused",
            TlsProblem::Handshake => "the TLS handshake with the appliance failed",
        })
    }
}

/// The rustls error somewhere in `err`'s source chain, classified. `io::Error` hides its inner
/// error from `source()` (it returns the inner error's source), so each one is opened with
/// `get_ref` on the way.
pub fn tls_problem(err: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(classify(r));
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(p) = tls_problem(inner)
        {
            return Some(p);
        }
        cur = e.source();
    }
    None
}

fn classify(e: &rustls::Error) -> TlsProblem {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => TlsProblem::UnknownIssuer,
            C::NotValidForName => TlsProblem::NameMismatch { presented: vec![] },
            C::NotValidForNameContext { presented, .. } => TlsProblem::NameMismatch {
                presented: presented.iter().map(|p| plain_name(p)).collect(),
            },
            C::Expired | C::ExpiredContext { .. } => TlsProblem::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsProblem::NotYetValid,
            C::Revoked => TlsProblem::Revoked,
            _ => TlsProblem::OtherCertificate,
        },
        _ => TlsProblem::Handshake,
    }
}

/// Builds an [`OneViewError::Api`] from a status and a body that may or may not be OneView JSON.
pub(crate) fn api_error(
    endpoint: &'static str,
    url: &str,
    status: u16,
    body: &[u8],
) -> OneViewError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (error_code, message, recommended_actions) = match parsed {
        Some(b) if b.error_code.is_some() || b.message.is_some() => (
            b.error_code,
            b.message
                .or(b.details)
                .unwrap_or_else(|| "no message".to_owned()),
            b.recommended_actions.unwrap_or_default(),
        ),
        _ => (None, snippet(body), Vec::new()),
    };
    OneViewError::Api {
        endpoint,
        url: url.to_owned(),
        status,
        error_code,
        message,
        recommended_actions,
    }
}

/// The start of a non-JSON body, on one line, for error messages (HTML error pages).
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        "empty body".to_owned()
    } else {
        format!("body starts with {one_line:?}")
    }
}

/// `DnsName("ov.example.com")` / `IpAddress(10.0.0.5)` (how rustls lists a certificate's
/// names) as the plain name.
fn plain_name(p: &str) -> String {
    p.strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .or_else(|| {
            p.strip_prefix("IpAddress(")
                .and_then(|r| r.strip_suffix(')'))
        })
        .unwrap_or(p)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError as C;

    /// A rustls error the way hyper-rustls hands it up: inside an `io::Error`, whose
    /// `source()` skips it.
    fn wrapped(e: rustls::Error) -> Box<dyn std::error::Error + Send + Sync> {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        Box::new(Outer(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        )))
    }

    #[test]
    fn tls_failures_are_found_behind_io_errors_and_classified() {
        let cases = [
            (
                rustls::Error::InvalidCertificate(C::UnknownIssuer),
                TlsProblem::UnknownIssuer,
            ),
            (
                rustls::Error::InvalidCertificate(C::NotValidForName),
                TlsProblem::NameMismatch { presented: vec![] },
            ),
            (
                rustls::Error::InvalidCertificate(C::Expired),
                TlsProblem::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(C::NotValidYet),
                TlsProblem::NotYetValid,
            ),
            (
                rustls::Error::InvalidCertificate(C::Revoked),
                TlsProblem::Revoked,
            ),
            (
                rustls::Error::InvalidCertificate(C::BadSignature),
                TlsProblem::OtherCertificate,
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
                TlsProblem::Handshake,
            ),
        ];
        for (e, want) in cases {
            let outer = wrapped(e);
            assert_eq!(tls_problem(outer.as_ref()), Some(want));
        }
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_problem(&plain), None);
        assert_eq!(plain_name("DnsName(\"ov.example.com\")"), "ov.example.com");
        assert_eq!(plain_name("IpAddress(10.0.0.5)"), "10.0.0.5");
    }

    #[test]
    fn each_certificate_problem_says_what_to_do() {
        let msg = |problem: TlsProblem, ca_file: Option<&str>| {
            OneViewError::Tls {
                endpoint: "login",
                url: "https://ov.example.com/rest/login-sessions".into(),
                problem,
                detail: "invalid peer certificate".into(),
                ca_file: ca_file.map(str::to_owned),
            }
            .to_string()
        };
        let m = msg(TlsProblem::UnknownIssuer, None);
        assert!(
            m.contains("Set oneview.ca_file")
                && m.contains("/rest/certificates/ca")
                && m.contains(CA_DOC),
            "{m}"
        );
        let m = msg(TlsProblem::UnknownIssuer, Some("/etc/ca.pem"));
        assert!(
            m.contains("oneview.ca_file (/etc/ca.pem) does not hold"),
            "{m}"
        );
        let m = msg(
            TlsProblem::NameMismatch {
                presented: vec!["ov1.example.com".into()],
            },
            None,
        );
        assert!(
            m.contains("not valid for ov.example.com (it names ov1.example.com)")
                && m.contains("oneview.url"),
            "{m}"
        );
        assert!(msg(TlsProblem::Expired, None).contains("renew"));
        assert!(msg(TlsProblem::NotYetValid, None).contains("clocks"));
        assert!(msg(TlsProblem::Handshake, None).contains("HTTPS port"));
        for p in [TlsProblem::Expired, TlsProblem::Handshake] {
            assert!(!msg(p, None).contains("reachable"));
        }
    }

    #[test]
    fn redact_scrubs_every_text_field() {
        let e = OneViewError::Api {
            endpoint: "alert",
            url: "https://ov/rest/alerts/1?tok-1".into(),
            status: 400,
            error_code: Some("X tok-1".into()),
            message: "session tok-1 and password pw-2".into(),
            recommended_actions: vec!["forget tok-1".into()],
        }
        .redact(&["tok-1", "pw-2", ""]);
        let text = format!("{e} {e:?}");
        assert!(!text.contains("tok-1") && !text.contains("pw-2"), "{text}");
        assert_eq!(text.matches("<redacted>").count(), 10, "{text}");
        assert_eq!(human_bytes(64 * 1024 * 1024), "67108864 bytes (64 MiB)");
        assert_eq!(human_bytes(65536), "65536 bytes (64 KiB)");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
