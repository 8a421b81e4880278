//! Bearer tokens for the web API.
//!
//! Tokens come from `server.api_tokens_file` (one per line, so a new token can be added before
//! the old one is removed) or `server.api_tokens`. The file is re-read when it changes. Tokens
//! are compared through their SHA-256 digests in constant time, so neither their content nor
//! their length leaks through timing.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::ApiError;
use crate::secret::Secret;

/// The configured API tokens, if any.
#[derive(Debug, Clone)]
pub struct ApiTokens {
    source: Option<Arc<Secret>>,
}

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this endpoint needs `Authorization: Bearer <token>`")]
    Missing,
    #[error("the bearer token is not valid")]
    Invalid,
    #[error(
        "no API token is configured on this bridge (server.api_tokens_file), so the endpoint is disabled"
    )]
    Disabled,
    #[error("cannot read the API tokens: {0}")]
    Unreadable(String),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let (status, code) = match e {
            AuthError::Missing => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AuthError::Invalid => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AuthError::Disabled => (StatusCode::FORBIDDEN, "forbidden"),
            AuthError::Unreadable(_) => (StatusCode::SERVICE_UNAVAILABLE, "tokens_unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl ApiTokens {
    pub fn new(source: Option<Arc<Secret>>) -> Self {
        Self { source }
    }

    /// Whether any token source is configured.
    pub fn configured(&self) -> bool {
        self.source.is_some()
    }

    /// Checks the `Authorization: Bearer` header of a request.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let source = self.source.as_ref().ok_or(AuthError::Disabled)?;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let all = source
            .current()
            .map_err(|e| AuthError::Unreadable(e.to_string()))?;
        let presented = Sha256::digest(presented.as_bytes());
        let mut ok = subtle::Choice::from(0u8);
        for token in all
            .expose_secret()
            .split(['\n', ','])
            .map(str::trim)
            .filter(|t| !t.is_empty() && !t.starts_with('#'))
        {
            ok |= Sha256::digest(token.as_bytes()).ct_eq(&presented);
        }
        if bool::from(ok) {
            Ok(())
        } else {
            Err(AuthError::Invalid)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn tokens_from_file_with_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        std::fs::write(&p, "# ops team\nold-token\nnew-token\n").unwrap();
        let t = ApiTokens::new(Some(Arc::new(Secret::file("server.api_tokens", p.clone()))));
        assert_eq!(t.check(&headers("Bearer old-token")), Ok(()));
        assert_eq!(t.check(&headers("Bearer new-token")), Ok(()));
        assert_eq!(t.check(&headers("Bearer nope")), Err(AuthError::Invalid));
        assert_eq!(t.check(&HeaderMap::new()), Err(AuthError::Missing));
        assert_eq!(t.check(&headers("Basic abc")), Err(AuthError::Missing));
        std::fs::write(&p, "new-token\n").unwrap();
        assert_eq!(
            t.check(&headers("Bearer old-token")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            ApiTokens::new(None).check(&headers("Bearer x")),
            Err(AuthError::Disabled)
        );
    }
}
