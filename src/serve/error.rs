//! Why `serve` could not start or stopped, each with what the operator can do.

use crate::bus::BusError;
use crate::ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The ledger could not be opened, or refused a start-up read or write.
    #[error("{context}: {source}")]
    Ledger {
        context: &'static str,
        source: LedgerError,
    },
    /// The broker refused a client, a subscription or the control topic's set-up.
    #[error("{context}: {source}")]
    Broker {
        context: &'static str,
        source: BusError,
    },
    #[error("cannot subscribe to the intent and approval topics: {0}")]
    Subscribe(rdkafka::error::KafkaError),
    #[error("cannot load policies from {dir}: {source}")]
    Policies {
        dir: String,
        source: Box<crate::policy::SetRefusal>,
    },
    #[error("cannot load the approver registry: {0}")]
    Approvers(crate::approvals::RegistryError),
    #[error(
        "refusing to start with the repository's demo credentials, whose secrets are public (anyone can sign votes or call the API with them):\n  - {}\nReplace them: `spendguard approvers keygen` for each approver (update {approvers}), and for each API token `openssl rand -hex 32` with its SHA-256 in the token file. To run the demo anyway, pass --demo.",
        found.join("\n  - "),
        approvers = approvers.display()
    )]
    DemoCredentials {
        found: Vec<String>,
        approvers: std::path::PathBuf,
    },
    #[error("cannot listen on --http-addr {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// No usable key-encryption key: serve would have to store subject keys in clear or
    /// refuse every intent with personal data, so it does not start.
    #[error("refusing to start: {0}")]
    Kek(crate::keywrap::KeyWrapError),
    /// The API's certificate or key (`--tls-cert-file`, `--tls-key-file`) is unusable.
    #[error("HTTPS of the API: {0}")]
    ApiTls(#[from] crate::api::tls::TlsConfigError),
    #[error("cannot read the checkpoint key (checkpoint_key_file): {0}")]
    CheckpointKey(String),
    /// `notifications.yaml` is present but invalid, or its cursor cannot be set.
    #[error("webhooks (notifications.yaml): {0}")]
    Notifications(String),
    /// A task of the service ended when it should not have (a bug).
    #[error("{0}")]
    Stopped(String),
}

impl ServeError {
    pub(crate) fn ledger(context: &'static str) -> impl FnOnce(LedgerError) -> ServeError {
        move |source| ServeError::Ledger { context, source }
    }

    pub(crate) fn broker(context: &'static str) -> impl FnOnce(BusError) -> ServeError {
        move |source| ServeError::Broker { context, source }
    }
}
