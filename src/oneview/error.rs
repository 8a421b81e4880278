//! Errors of the OneView side. Every message names what failed (endpoint, URL, HTTP status,
//! OneView `errorCode`, configuration key) and what to do about it. None carries a secret: the
//! session id and the password never enter an error.

use std::time::Duration;

use serde::Deserialize;

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
