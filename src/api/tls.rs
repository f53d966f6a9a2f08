//! HTTPS for the operators' API (SPEC §14 "In transit"): `serve` speaks TLS itself when
//! given a certificate chain and its private key (`--tls-cert-file`, `--tls-key-file`,
//! PEM), with rustls (TLS 1.2 and 1.3, the ring provider, no client certificates: callers
//! authenticate with bearer tokens). Without them the API is plain HTTP, for a loopback
//! address or behind a TLS-terminating proxy (docs/operations.md).
//!
//! A renewed certificate is picked up without a restart: [`watch`] checks the two files
//! every [`CERT_POLL_INTERVAL_MS`] and swaps the configuration new handshakes use when
//! they changed and still make a valid pair (until then the old one keeps serving).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot read the API's TLS certificate chain {path}: {message}")]
    Certificate { path: PathBuf, message: String },
    /// The key's content is never shown.
    #[error("cannot read the API's TLS private key {path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the API's TLS certificate and key do not make a usable configuration: {0}")]
    Config(String),
    #[error("--tls-cert-file and --tls-key-file go together: give both or neither")]
    Incomplete,
}

impl TlsConfigError {
    /// Files to fix: an operator must act.
    pub fn is_transient(&self) -> bool {
        false
    }
}

/// Where the API's certificate chain and key are (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both paths or neither.
    pub fn from_pair(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsConfigError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            (None, None) => Ok(None),
            _ => Err(TlsConfigError::Incomplete),
        }
    }

    /// Reads both files into a server configuration (at start: a bad file stops `serve`
    /// before it listens).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        server_config(&self.cert, &self.key)
    }
}

/// A rustls server configuration from a PEM certificate chain (leaf first) and a PEM
/// private key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| TlsConfigError::Certificate {
            path: cert.into(),
            message: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsConfigError::Certificate {
            path: cert.into(),
            message: "no CERTIFICATE block in the file".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsConfigError::Key {
        path: key.into(),
        message: match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no PRIVATE KEY block in the file".into()
            }
            _ => "not a PEM private key".into(),
        },
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsConfigError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// How often [`watch`] looks at the certificate and key files (two `stat` calls).
pub const CERT_POLL_INTERVAL_MS: u64 = 2_000;

fn modified(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&files.cert), m(&files.key))
}

/// Reloads `config` from `files` whenever either file changes, for as long as it runs
/// (the API task aborts it when it stops). A change that does not load (a key written
/// after its certificate, a bad file) is logged and the previous configuration stays.
pub async fn watch(files: TlsFiles, config: axum_server::tls_rustls::RustlsConfig) {
    let mut seen = modified(&files);
    let mut tick = tokio::time::interval(Duration::from_millis(CERT_POLL_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = modified(&files);
        if now == seen {
            continue;
        }
        seen = now;
        match files.server_config() {
            Ok(fresh) => {
                config.reload_from_config(fresh);
                tracing::info!(cert = %files.cert.display(), "API TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(
                error = %e,
                "API TLS certificate or key changed but does not load; still serving the previous one"
            ),
        }
    }
}
