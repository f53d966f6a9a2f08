//! HTTPS on the connections spendguard opens itself: webhook deliveries
//! (`notifications.yaml`) and `spendguard approve --api https://…`. rustls with the ring
//! provider (the same stack as the API's and PostgreSQL's TLS), TLS 1.2 and 1.3, server
//! certificates checked against the public roots of `webpki-roots` plus, optionally, a
//! PEM file of extra CAs (a receiver behind a private CA). No client certificates: a
//! webhook receiver authenticates its sender by the HMAC signature, the API by the token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("cannot read the CA file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    #[error("the CA file {path} holds no usable CA certificate: {message}")]
    CaCertificate { path: PathBuf, message: String },
    #[error("cannot build the TLS client configuration: {0}")]
    Config(String),
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

impl TlsClientError {
    /// Settings or files to fix: retrying does not help.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// A client configuration trusting the public roots and every certificate of `extra_ca`
/// (PEM, one or more `CERTIFICATE` blocks). Built once at load time and shared.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsClientError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<_, _>>())
            .map_err(|e| TlsClientError::CaFile {
                path: path.into(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsClientError::CaCertificate {
                path: path.into(),
                message: "no CERTIFICATE block in the file".into(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| TlsClientError::CaCertificate {
                path: path.into(),
                message: e.to_string(),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsClientError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // Both clients speak HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The name a certificate must be valid for: the URL's host (a DNS name or an IP
/// address; brackets of an IPv6 literal removed).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsClientError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string()).map_err(|_| TlsClientError::ServerName(host.into()))
}

/// TLS over an open TCP connection; a refused certificate is an I/O error carrying the
/// rustls error (its text says why: unknown issuer, not valid for the name, expired).
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    tcp: TcpStream,
) -> std::io::Result<TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}
