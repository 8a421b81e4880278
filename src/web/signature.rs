//! PagerDuty Webhooks v3 signature verification.
//!
//! PagerDuty signs the raw request body with HMAC-SHA256 under the subscription's secret and
//! sends `X-PagerDuty-Signature: v1=<hex>[,v1=<hex>...]` (several signatures while PagerDuty
//! rotates its side). We accept several secrets too (one per line in
//! `pagerduty.webhook_secrets_file`) so that operators can rotate ours. Verification happens on
//! the raw bytes before anything is parsed, and every comparison is constant-time.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook delivery was refused. Bounded, so it doubles as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-PagerDuty-Signature header")]
    Missing,
    #[error("X-PagerDuty-Signature has no v1= signature")]
    Malformed,
    #[error("no signature matches any configured webhook secret")]
    Mismatch,
    #[error("no webhook secret is configured (pagerduty.webhook_secrets_file)")]
    NoSecrets,
}

impl SignatureError {
    /// The metric label for this outcome.
    pub fn label(self) -> &'static str {
        match self {
            SignatureError::Missing => "missing",
            SignatureError::Malformed => "malformed",
            SignatureError::Mismatch => "mismatch",
            SignatureError::NoSecrets => "no_secrets",
        }
    }
}

/// Splits a secrets file into its secrets: one per line, blank lines and `#` comments ignored.
pub fn parse_secrets(content: &SecretString) -> Vec<SecretString> {
    content
        .expose_secret()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| SecretString::from(l.to_owned()))
        .collect()
}

/// The `v1=` signatures of a header value, decoded from hex. Unknown schemes are ignored.
fn signatures(header: &str) -> Vec<Vec<u8>> {
    header
        .split(',')
        .filter_map(|part| part.trim().strip_prefix("v1="))
        .filter_map(|h| hex::decode(h.trim()).ok())
        .collect()
}

/// Verifies `header` (the `X-PagerDuty-Signature` value) against `body` under any of `secrets`.
pub fn verify(
    secrets: &[SecretString],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    if secrets.is_empty() {
        return Err(SignatureError::NoSecrets);
    }
    let header = header.ok_or(SignatureError::Missing)?;
    let sigs = signatures(header);
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let Ok(mut mac) = HmacSha256::new_from_slice(secret.expose_secret().as_bytes()) else {
            continue;
        };
        mac.update(body);
        let expected = mac.finalize().into_bytes();
        for sig in &sigs {
            // Lengths are public (32 bytes for SHA-256); only the content comparison must not
            // leak timing, and every pair is compared so the count of matches leaks nothing.
            if sig.len() == expected.len() {
                matched |= expected.as_slice().ct_eq(sig.as_slice());
            }
        }
    }
    if bool::from(matched) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Computes the header value PagerDuty would send for `body` under `secret` (simulator, tests,
/// benchmarks).
pub fn sign(secret: &str, body: &[u8]) -> String {
    match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("v1={}", hex::encode(mac.finalize().into_bytes()))
        }
        // HMAC accepts keys of any length; this arm cannot be reached.
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_SECRET: &str = "lDQHScfUeXUKaQRNF+8XIiDKZ7XX3itBAYzwU0TARw8lJqRnkKl2iB1anSb0Z+IK";
    const VECTOR_BODY: &[u8] =
        include_bytes!("../../tests/fixtures/pagerduty/webhookv3-test-vector-body.json");
    const VECTOR_SIG: &str = "v1=0c0b9495b893a39e70d1fea2fe11fbe0a825f88b9f67846f6cc07dd2bc5476cd";
    const VECTOR_MISMATCH: &str =
        "v1=7020c8a7ec668a9b7012bc3dd82e483394b038f4230acc6785efbf2a7d8bcaf5";

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from((*s).to_owned()))
            .collect()
    }

    #[test]
    fn pagerduty_test_vector_passes() {
        assert_eq!(VECTOR_BODY.len(), 1655);
        assert_eq!(sign(VECTOR_SECRET, VECTOR_BODY), VECTOR_SIG);
        assert_eq!(
            verify(&secrets(&[VECTOR_SECRET]), Some(VECTOR_SIG), VECTOR_BODY),
            Ok(())
        );
    }

    #[test]
    fn mismatch_tamper_missing_and_malformed_are_refused() {
        let s = secrets(&[VECTOR_SECRET]);
        assert_eq!(
            verify(&s, Some(VECTOR_MISMATCH), VECTOR_BODY),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = VECTOR_BODY.to_vec();
        tampered[100] ^= 1;
        assert_eq!(
            verify(&s, Some(VECTOR_SIG), &tampered),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(&s, None, VECTOR_BODY), Err(SignatureError::Missing));
        assert_eq!(
            verify(&s, Some("sha1=abc"), VECTOR_BODY),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(&[], Some(VECTOR_SIG), VECTOR_BODY),
            Err(SignatureError::NoSecrets)
        );
    }

    #[test]
    fn several_signatures_and_rotated_secrets() {
        let header = format!("{VECTOR_MISMATCH}, {VECTOR_SIG}");
        let s = secrets(&["old-secret-no-longer-used", VECTOR_SECRET]);
        assert_eq!(verify(&s, Some(&header), VECTOR_BODY), Ok(()));
    }

    #[test]
    fn secrets_file_lines() {
        let parsed = parse_secrets(&SecretString::from(
            "# rotated 2026-11\nfirst\n\n  second  \n".to_owned(),
        ));
        let v: Vec<_> = parsed
            .iter()
            .map(|s| s.expose_secret().to_owned())
            .collect();
        assert_eq!(v, ["first", "second"]);
    }
}
