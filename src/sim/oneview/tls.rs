//! HTTPS for the simulator, so the bridge's TLS settings (`oneview.ca_file`,
//! `oneview.tls_insecure_skip_verify`) can be tried against it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

/// A server certificate chain and its key, PEM, and the CA the simulator names as its own.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Served at `GET /rest/certificates/ca`; without it, the last certificate of the chain
    /// (its root when the chain includes one, the certificate itself when it is self-signed).
    pub ca_pem: Option<Vec<u8>>,
}

impl TlsFiles {
    pub fn read(cert: &Path, key: &Path) -> std::io::Result<Self> {
        Ok(Self {
            cert_pem: std::fs::read(cert)?,
            key_pem: std::fs::read(key)?,
            ca_pem: None,
        })
    }

    /// The CA served at `GET /rest/certificates/ca`, read from `ca`.
    pub fn with_ca(mut self, ca: &Path) -> std::io::Result<Self> {
        self.ca_pem = Some(std::fs::read(ca)?);
        Ok(self)
    }

    /// The PEM text `GET /rest/certificates/ca` serves.
    pub(crate) fn served_ca_pem(&self) -> Option<String> {
        const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
        if let Some(ca) = &self.ca_pem {
            return Some(String::from_utf8_lossy(ca).trim().to_owned() + "\n");
        }
        let chain = String::from_utf8_lossy(&self.cert_pem);
        let last = chain.rfind(BEGIN)?;
        Some(chain[last..].trim().to_owned() + "\n")
    }

    pub(crate) fn acceptor(&self) -> std::io::Result<TlsAcceptor> {
        let bad = |what: &str, e: String| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("TLS certificate", e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(
                "TLS certificate",
                "no PEM certificate found".to_owned(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| bad("TLS key", e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS versions", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("TLS certificate/key", e.to_string()))?;
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }
}

/// A listener that hands axum TLS streams. Failed handshakes (a client that does not trust
/// the certificate) are logged and skipped.
pub(crate) struct TlsListener {
    pub(crate) tcp: TcpListener,
    pub(crate) acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, addr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => tracing::debug!(client = %addr, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(client = %addr, "TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
