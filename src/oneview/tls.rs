//! The TLS configuration of the OneView REST clients: the system's root certificates, parsed
//! once per process and shared by every appliance, plus each appliance's own `ca_file`.
//!
//! reqwest's own rustls setup loads and parses the whole system root store for every client it
//! builds (≈ 100 KB of trust anchors each, plus a 256-entry session cache): 4.9 MB of a bridge
//! watching 50 appliances (BENCHMARKS.md, section 9). Here the system verifier, the crypto
//! provider and the session cache exist once; a client adds only the certificates of its own
//! `ca_file`. What is trusted is unchanged: the system roots plus `ca_file`, both with host name
//! checks, or nothing checked with `tls_insecure_skip_verify`.

use std::sync::{Arc, OnceLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::{ClientSessionMemoryCache, Resumption, WebPkiServerVerifier};
use tokio_rustls::rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// TLS sessions remembered for resumption, across all appliances (keyed by server name).
const SESSION_CACHE_ENTRIES: usize = 256;

/// What every client shares, made on first use.
struct Shared {
    provider: Arc<CryptoProvider>,
    /// `None` when the system has no usable root certificate (a slim container): then only a
    /// `ca_file` can make a certificate trusted.
    system: Option<Arc<WebPkiServerVerifier>>,
    resumption: Resumption,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        // Native stores often hold ancient or malformed certificates: skip those, as reqwest
        // does, rather than refuse the whole store.
        let loaded = rustls_native_certs::load_native_certs();
        let (_, skipped) = roots.add_parsable_certificates(loaded.certs);
        if skipped > 0 || !loaded.errors.is_empty() {
            tracing::debug!(
                skipped,
                errors = loaded.errors.len(),
                "some system root certificates could not be used"
            );
        }
        let system = if roots.is_empty() {
            None
        } else {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .ok()
        };
        Shared {
            provider,
            system,
            resumption: Resumption::store(Arc::new(ClientSessionMemoryCache::new(
                SESSION_CACHE_ENTRIES,
            ))),
        }
    })
}

/// Why a client's TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("a certificate in it cannot be used as a trust anchor: {0}")]
    BadAnchor(String),
    #[error("the TLS settings are refused by rustls: {0}")]
    Rustls(String),
}

/// The rustls configuration for one appliance: `ca_certs` (the parsed `ca_file`, may be empty)
/// on top of the shared system roots, or no checks at all when `insecure`.
pub fn client_config(
    ca_certs: Vec<CertificateDer<'static>>,
    insecure: bool,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let shared = shared();
    let algorithms = shared.provider.signature_verification_algorithms;
    let verifier = if insecure {
        ApplianceVerifier {
            insecure: true,
            own: None,
            system: None,
            algorithms,
        }
    } else {
        let own = if ca_certs.is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            for c in ca_certs {
                roots
                    .add(c)
                    .map_err(|e| TlsSetupError::BadAnchor(e.to_string()))?;
            }
            Some(
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    shared.provider.clone(),
                )
                .build()
                .map_err(|e| TlsSetupError::BadAnchor(e.to_string()))?,
            )
        };
        ApplianceVerifier {
            insecure: false,
            own,
            system: shared.system.clone(),
            algorithms,
        }
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(shared.provider.clone())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.resumption = shared.resumption.clone();
    // What reqwest offers by default with its http2 feature.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Trusts a chain that ends in the appliance's own CA or in a system root; with
/// `tls_insecure_skip_verify`, any certificate for any name. The handshake signatures are
/// checked either way.
#[derive(Debug)]
struct ApplianceVerifier {
    insecure: bool,
    own: Option<Arc<WebPkiServerVerifier>>,
    system: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ApplianceVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        let verify = |v: &WebPkiServerVerifier| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        };
        let unknown_issuer = |e: &rustls::Error| {
            matches!(
                e,
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
            )
        };
        // The appliance's own CA answers first: its verdict (a wrong name, an expired
        // certificate) is the one the user can act on. Only a chain it does not know at all is
        // tried against the system roots.
        let own_err = match &self.own {
            Some(own) => match verify(own) {
                Ok(v) => return Ok(v),
                Err(e) if !unknown_issuer(&e) => return Err(e),
                Err(e) => Some(e),
            },
            None => None,
        };
        match (&self.system, own_err) {
            (Some(system), own_err) => verify(system).map_err(|e| own_err.unwrap_or(e)),
            (None, Some(e)) => Err(e),
            (None, None) => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_shares_one_provider_and_session_cache() {
        let a = client_config(vec![], false).unwrap();
        let b = client_config(vec![], true).unwrap();
        assert!(Arc::ptr_eq(a.crypto_provider(), b.crypto_provider()));
        assert_eq!(a.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn a_ca_file_entry_that_is_no_certificate_is_refused() {
        let err = client_config(vec![CertificateDer::from(vec![1u8, 2, 3])], false).unwrap_err();
        assert!(matches!(err, TlsSetupError::BadAnchor(_)), "{err}");
    }
}
