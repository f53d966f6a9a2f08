//! Service settings: command-line flags, then the environment, then a config file
//! (`--config FILE`, YAML or JSON), then defaults — first one that sets a value wins.
//!
//! Every subcommand that talks to PostgreSQL, Kafka or the policies directory takes the
//! same [`ServiceArgs`] (flattened), so `--database-url` / `DATABASE_URL`, `--brokers` /
//! `SPENDGUARD_BROKERS` and `--policies` / `SPENDGUARD_POLICIES` mean the same everywhere.

use serde::Deserialize;
use std::path::{Path, PathBuf};

use crate::ledger::{
    DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS, DEFAULT_LOCK_TIMEOUT_MS, DEFAULT_STATEMENT_TIMEOUT_MS,
    SessionTimeouts,
};

/// Default partition count of `spend.intents` (and `spend.decisions`): the unit of
/// scale-out, so it bounds how many `serve` instances can share the work.
pub const DEFAULT_INTENT_PARTITIONS: i32 = 12;
/// Approvals are rare next to intents.
pub const DEFAULT_APPROVAL_PARTITIONS: i32 = 3;
/// Partitions of `spend.settlements` (as many as intents: one settlement per intent).
pub const DEFAULT_SETTLEMENT_PARTITIONS: i32 = DEFAULT_INTENT_PARTITIONS;
/// The control topic has one partition: kill-switch messages are totally ordered.
pub const CONTROL_PARTITIONS: i32 = 1;
pub const DEFAULT_DLQ_PARTITIONS: i32 = 3;
pub const DEFAULT_GROUP_ID: &str = "spendguard";
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// How often the expiry sweeper looks for waiting intents past their `approvalTtl`.
pub const DEFAULT_EXPIRY_SWEEP_INTERVAL_MS: u64 = 1_000;
/// How often the policies directory is checked for changes (mtime poll).
pub const DEFAULT_POLICY_POLL_INTERVAL_MS: u64 = 1_000;
/// How often the outbox is polled when no local decision woke the publisher (rows left
/// by a crashed instance are picked up within this delay).
pub const DEFAULT_OUTBOX_POLL_INTERVAL_MS: u64 = 200;
/// How often the kill-switch state is re-read from the ledger, a safety net for a control
/// message lost between the ledger write and the publish.
pub const DEFAULT_KILL_SWITCH_RESYNC_MS: u64 = 2_000;
/// Most parallel deciders per instance by default (each owns a subset of the partitions,
/// so one agent's intents are still decided in order). The default is one per CPU core
/// up to this: more concurrent transactions than cores only split the same work into
/// smaller batches (measured in docs/benchmarks.md: on 2 cores, 2 workers gave p50 34 ms
/// where 8 gave 80 ms at 1,000 intents/s).
pub const DEFAULT_WORKERS_MAX: usize = 8;

/// One decider per CPU core, at most [`DEFAULT_WORKERS_MAX`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, DEFAULT_WORKERS_MAX)
}
/// How often `serve` verifies the hash chains by default (an hour: a full read of the
/// ledger, cheap next to an hour of writes).
pub const DEFAULT_CHAIN_VERIFY_INTERVAL_S: u64 = 3_600;
pub const DEFAULT_CHECKPOINT_INTERVAL_S: u64 = 60;
/// Messages queued per worker before the partitions feeding it wait (enough to fill
/// the largest decide batch several times over, small enough that a full queue costs
/// little memory).
pub const DEFAULT_WORKER_QUEUE_LEN: usize = 256;
/// librdkafka's own default: how long the consume loop may go without polling before
/// the instance leaves the group. The loop never waits on a worker, so this only bounds
/// a wedged process.
pub const DEFAULT_MAX_POLL_INTERVAL_MS: u64 = 300_000;
/// The group consumer's `session.timeout.ms`; librdkafka refuses a poll interval below it.
pub const SESSION_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_CHECKPOINT_EVERY_EVENTS: i64 = 100_000;
/// Longest config file accepted.
const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// The flags shared by every service-side subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServiceArgs {
    /// Config file (YAML or JSON) with any of the settings below, in snake_case.
    #[arg(long, env = "SPENDGUARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// PostgreSQL URL of the ledger.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "SPENDGUARD_BROKERS")]
    pub brokers: Option<String>,
    /// Directory with the policies, `bindings.yaml` and `approvers.yaml`.
    #[arg(long, env = "SPENDGUARD_POLICIES")]
    pub policies: Option<PathBuf>,
    /// Approver registry (default: `<policies>/approvers.yaml`).
    #[arg(long, env = "SPENDGUARD_APPROVERS")]
    pub approvers: Option<PathBuf>,
    /// Webhooks (default: `<policies>/notifications.yaml`; absent file = no webhooks).
    #[arg(long, env = "SPENDGUARD_NOTIFICATIONS")]
    pub notifications: Option<PathBuf>,
    /// Prefix of every topic name (`test1.` gives `test1.spend.intents`), to run several
    /// deployments or tests on one broker.
    #[arg(long, env = "SPENDGUARD_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,
    /// Consumer group of the `serve` instances.
    #[arg(long, env = "SPENDGUARD_GROUP_ID")]
    pub group_id: Option<String>,
    /// Name of this instance in the audit trail (default: host-pid).
    #[arg(long, env = "SPENDGUARD_INSTANCE")]
    pub instance: Option<String>,
    /// PostgreSQL `statement_timeout` of every ledger session, in ms [default: 30000].
    #[arg(long, env = "SPENDGUARD_DB_STATEMENT_TIMEOUT_MS")]
    pub db_statement_timeout_ms: Option<u64>,
    /// PostgreSQL `lock_timeout` of every ledger session, in ms [default: 3000].
    #[arg(long, env = "SPENDGUARD_DB_LOCK_TIMEOUT_MS")]
    pub db_lock_timeout_ms: Option<u64>,
    /// PostgreSQL `idle_in_transaction_session_timeout` of every ledger session, in ms:
    /// how long a paused instance can hold the ledger's locks [default: 500].
    #[arg(long, env = "SPENDGUARD_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS")]
    pub db_idle_in_transaction_timeout_ms: Option<u64>,
    /// File holding the key-encryption key of the per-subject keys (base64 of 32 bytes,
    /// from `spendguard privacy kek-gen`); keep it off the database host. Instead, the
    /// KEK itself can be in SPENDGUARD_KEK (never a flag: flags show in the process list).
    #[arg(long, env = "SPENDGUARD_KEK_FILE")]
    pub kek_file: Option<PathBuf>,
    /// During a KEK rotation: the previous KEK's file, still used to unwrap the keys not
    /// yet re-wrapped (`spendguard privacy rotate-kek`).
    #[arg(long, env = "SPENDGUARD_KEK_PREVIOUS_FILE")]
    pub kek_previous_file: Option<PathBuf>,
    /// librdkafka security properties for every Kafka client, `key=value,key=value`
    /// (e.g. `security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=svc,ssl.ca.location=/etc/ca.pem`);
    /// each key replaces the same key of `kafka_properties` in the config file. No
    /// secrets here: see --kafka-sasl-password-file.
    #[arg(long, env = "SPENDGUARD_KAFKA_PROPERTIES")]
    pub kafka_properties: Option<String>,
    /// File holding the SASL password (`sasl.password`). The password can also come from
    /// the environment variable SPENDGUARD_KAFKA_SASL_PASSWORD (never from a flag).
    #[arg(long, env = "SPENDGUARD_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
}

/// Environment variable holding the SASL password itself (read by [`ServiceArgs::resolve`],
/// never a flag: a flag shows in the process list).
pub const KAFKA_SASL_PASSWORD_ENV: &str = "SPENDGUARD_KAFKA_SASL_PASSWORD";

/// Settings as read from a config file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    brokers: Option<String>,
    policies: Option<PathBuf>,
    approvers: Option<PathBuf>,
    notifications: Option<PathBuf>,
    topic_prefix: Option<String>,
    group_id: Option<String>,
    instance: Option<String>,
    intent_partitions: Option<i32>,
    approval_partitions: Option<i32>,
    settlement_partitions: Option<i32>,
    dlq_partitions: Option<i32>,
    workers: Option<usize>,
    worker_queue_len: Option<usize>,
    max_poll_interval_ms: Option<u64>,
    expiry_sweep_interval_ms: Option<u64>,
    policy_poll_interval_ms: Option<u64>,
    outbox_poll_interval_ms: Option<u64>,
    direct_publish: Option<bool>,
    kill_switch_resync_ms: Option<u64>,
    metrics_addr: Option<String>,
    db_statement_timeout_ms: Option<u64>,
    db_lock_timeout_ms: Option<u64>,
    db_idle_in_transaction_timeout_ms: Option<u64>,
    chain_verify_interval_s: Option<u64>,
    checkpoint_key_file: Option<PathBuf>,
    checkpoint_dir: Option<PathBuf>,
    kek_file: Option<PathBuf>,
    kek_previous_file: Option<PathBuf>,
    checkpoint_interval_s: Option<u64>,
    checkpoint_every_events: Option<i64>,
    kafka: Option<bool>,
    /// librdkafka security properties passed through (no secrets: kafka_secret_files).
    kafka_properties: Option<std::collections::BTreeMap<String, String>>,
    /// Secret librdkafka properties, each read from a file: `{sasl.password: /run/secrets/kafka}`.
    kafka_secret_files: Option<std::collections::BTreeMap<String, PathBuf>>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `serve --demo`: the repository's demo approver keys and API tokens are accepted
    /// (never from a config file or the environment: it must be asked for each time).
    pub demo: bool,
    pub database_url: String,
    pub brokers: String,
    pub policies_dir: PathBuf,
    pub approvers_file: PathBuf,
    /// Webhooks (SPEC §13.2); an absent file configures none.
    pub notifications_file: PathBuf,
    pub topic_prefix: String,
    pub group_id: String,
    pub instance: String,
    pub intent_partitions: i32,
    pub approval_partitions: i32,
    pub settlement_partitions: i32,
    pub dlq_partitions: i32,
    pub workers: usize,
    /// Messages queued per worker; past it the partitions feeding that worker wait in
    /// their own queues.
    pub worker_queue_len: usize,
    /// The group consumer's `max.poll.interval.ms`.
    pub max_poll_interval_ms: u64,
    pub expiry_sweep_interval_ms: u64,
    pub policy_poll_interval_ms: u64,
    pub outbox_poll_interval_ms: u64,
    /// Committed decisions go straight to the direct publisher (true) or all wait for the
    /// outbox's claim round (false, the default: on a quiet 2-core machine the direct
    /// path measured no end-to-end gain at 1,000/s, docs/benchmarks.md).
    pub direct_publish: bool,
    pub kill_switch_resync_ms: u64,
    /// `host:port` for the Prometheus `/metrics` endpoint, if wanted.
    pub metrics_addr: Option<String>,
    /// Statement, lock and idle-in-transaction limits of every ledger session.
    pub db_timeouts: SessionTimeouts,
    /// How often `serve` verifies every hash chain (0 = never).
    pub chain_verify_interval_s: u64,
    /// Signed checkpoints of the chain heads (SPEC §14): the Ed25519 secret key (from
    /// `spendguard audit keygen`, kept off the database host) and the directory they are
    /// written to; both or neither.
    pub checkpoint_key_file: Option<PathBuf>,
    pub checkpoint_dir: Option<PathBuf>,
    /// The key-encryption key's file (SPEC §14 "Keys apart from data"); when unset,
    /// `SPENDGUARD_KEK` is read ([`crate::keywrap::KeyRing::from_config`]). Only paths
    /// here: the key itself is read when the ledger is opened.
    pub kek_file: Option<PathBuf>,
    pub kek_previous_file: Option<PathBuf>,
    /// At most this long between checkpoints while events are appended.
    pub checkpoint_interval_s: u64,
    /// A checkpoint as soon as this many events were appended since the last one.
    pub checkpoint_every_events: i64,
    /// `false`: `serve` runs without a broker (`serve --no-kafka`, or `kafka: false` in the
    /// config file): the HTTP API decides, decisions wait in the outbox.
    pub kafka: bool,
    /// TLS / SASL properties of every Kafka client (SPEC §14 "In transit"); secrets are
    /// redacted from `Debug`.
    pub kafka_client: crate::bus::properties::ClientProperties,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is larger than {MAX_CONFIG_FILE_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error(
        "config file {path} is not valid YAML/JSON settings: {message} (keys are snake_case, e.g. database_url, brokers, policies)"
    )]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
    #[error("invalid Kafka client settings: {0}")]
    KafkaProperties(#[from] crate::bus::properties::PropertyError),
}

impl ConfigError {
    /// Settings are read once at start: an operator must fix them.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl ServiceArgs {
    /// Resolves flags/environment over the config file over defaults.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let policies_dir = self
            .policies
            .clone()
            .or(file.policies)
            .unwrap_or_else(|| PathBuf::from("policies"));
        let approvers_file = self
            .approvers
            .clone()
            .or(file.approvers)
            .unwrap_or_else(|| policies_dir.join("approvers.yaml"));
        let notifications_file = self
            .notifications
            .clone()
            .or(file.notifications)
            .unwrap_or_else(|| policies_dir.join("notifications.yaml"));
        let settings = Settings {
            demo: false,
            database_url: pick(&self.database_url, file.database_url, DEFAULT_DATABASE_URL),
            brokers: pick(&self.brokers, file.brokers, DEFAULT_BROKERS),
            policies_dir,
            approvers_file,
            notifications_file,
            topic_prefix: pick(&self.topic_prefix, file.topic_prefix, ""),
            group_id: pick(&self.group_id, file.group_id, DEFAULT_GROUP_ID),
            instance: self
                .instance
                .clone()
                .or(file.instance)
                .unwrap_or_else(default_instance),
            intent_partitions: file.intent_partitions.unwrap_or(DEFAULT_INTENT_PARTITIONS),
            approval_partitions: file
                .approval_partitions
                .unwrap_or(DEFAULT_APPROVAL_PARTITIONS),
            settlement_partitions: file
                .settlement_partitions
                .unwrap_or(DEFAULT_SETTLEMENT_PARTITIONS),
            dlq_partitions: file.dlq_partitions.unwrap_or(DEFAULT_DLQ_PARTITIONS),
            workers: file.workers.unwrap_or_else(default_workers),
            worker_queue_len: file.worker_queue_len.unwrap_or(DEFAULT_WORKER_QUEUE_LEN),
            max_poll_interval_ms: file
                .max_poll_interval_ms
                .unwrap_or(DEFAULT_MAX_POLL_INTERVAL_MS),
            expiry_sweep_interval_ms: file
                .expiry_sweep_interval_ms
                .unwrap_or(DEFAULT_EXPIRY_SWEEP_INTERVAL_MS),
            policy_poll_interval_ms: file
                .policy_poll_interval_ms
                .unwrap_or(DEFAULT_POLICY_POLL_INTERVAL_MS),
            outbox_poll_interval_ms: file
                .outbox_poll_interval_ms
                .unwrap_or(DEFAULT_OUTBOX_POLL_INTERVAL_MS),
            direct_publish: file.direct_publish.unwrap_or(false),
            kill_switch_resync_ms: file
                .kill_switch_resync_ms
                .unwrap_or(DEFAULT_KILL_SWITCH_RESYNC_MS),
            metrics_addr: file.metrics_addr,
            db_timeouts: SessionTimeouts {
                statement_ms: self
                    .db_statement_timeout_ms
                    .or(file.db_statement_timeout_ms)
                    .unwrap_or(DEFAULT_STATEMENT_TIMEOUT_MS),
                lock_ms: self
                    .db_lock_timeout_ms
                    .or(file.db_lock_timeout_ms)
                    .unwrap_or(DEFAULT_LOCK_TIMEOUT_MS),
                idle_in_transaction_ms: self
                    .db_idle_in_transaction_timeout_ms
                    .or(file.db_idle_in_transaction_timeout_ms)
                    .unwrap_or(DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS),
                ..SessionTimeouts::default()
            },
            chain_verify_interval_s: file
                .chain_verify_interval_s
                .unwrap_or(DEFAULT_CHAIN_VERIFY_INTERVAL_S),
            checkpoint_key_file: file.checkpoint_key_file,
            checkpoint_dir: file.checkpoint_dir,
            kek_file: self.kek_file.clone().or(file.kek_file),
            kek_previous_file: self.kek_previous_file.clone().or(file.kek_previous_file),
            checkpoint_interval_s: file
                .checkpoint_interval_s
                .unwrap_or(DEFAULT_CHECKPOINT_INTERVAL_S),
            checkpoint_every_events: file
                .checkpoint_every_events
                .unwrap_or(DEFAULT_CHECKPOINT_EVERY_EVENTS),
            kafka: file.kafka.unwrap_or(true),
            kafka_client: self.kafka_client(file.kafka_properties, file.kafka_secret_files)?,
        };
        settings.validate()?;
        Ok(settings)
    }
}

impl ServiceArgs {
    /// The config file's `kafka_properties` and `kafka_secret_files`, then
    /// `--kafka-properties`, then the SASL password from its file or variable.
    fn kafka_client(
        &self,
        file_properties: Option<std::collections::BTreeMap<String, String>>,
        file_secrets: Option<std::collections::BTreeMap<String, PathBuf>>,
    ) -> Result<crate::bus::properties::ClientProperties, ConfigError> {
        let mut p = crate::bus::properties::ClientProperties::default();
        for (k, v) in file_properties.unwrap_or_default() {
            p.set(&k, &v)?;
        }
        for (k, path) in file_secrets.unwrap_or_default() {
            p.set_secret_file(&k, &path)?;
        }
        kafka_client_flags(
            p,
            self.kafka_properties.as_deref(),
            self.kafka_sasl_password_file.as_deref(),
        )
    }
}

/// `--kafka-properties` over `p`, then the SASL password from its file or
/// [`KAFKA_SASL_PASSWORD_ENV`]; validated. Also what commands without a config file
/// (`spendguard approve`) use.
pub fn kafka_client_flags(
    mut p: crate::bus::properties::ClientProperties,
    list: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<crate::bus::properties::ClientProperties, ConfigError> {
    if let Some(list) = list {
        p.set_list(list)?;
    }
    if let Some(path) = password_file {
        p.set_secret_file("sasl.password", path)?;
    } else if let Ok(password) = std::env::var(KAFKA_SASL_PASSWORD_ENV)
        && !password.is_empty()
    {
        p.set_secret("sasl.password", password)?;
    }
    p.validate()?;
    Ok(p)
}

impl Settings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name, message: &str| {
            Err(ConfigError::Invalid {
                name,
                message: message.into(),
            })
        };
        if self.checkpoint_key_file.is_some() != self.checkpoint_dir.is_some() {
            return invalid(
                "checkpoint_key_file",
                "signed checkpoints need both checkpoint_key_file and checkpoint_dir",
            );
        }
        if self.checkpoint_interval_s == 0 || self.checkpoint_every_events < 1 {
            return invalid(
                "checkpoint_interval_s",
                "checkpoint_interval_s and checkpoint_every_events must be at least 1",
            );
        }
        if self.brokers.trim().is_empty() {
            return invalid("brokers", "must name at least one host:port");
        }
        for (name, n) in [
            ("intent_partitions", self.intent_partitions),
            ("approval_partitions", self.approval_partitions),
            ("settlement_partitions", self.settlement_partitions),
            ("dlq_partitions", self.dlq_partitions),
        ] {
            if !(1..=1024).contains(&n) {
                return invalid(name, "must be between 1 and 1024");
            }
        }
        if !(1..=256).contains(&self.workers) {
            return invalid("workers", "must be between 1 and 256");
        }
        // 0 is refused by the channel itself (it would panic).
        if !(1..=65_536).contains(&self.worker_queue_len) {
            return invalid("worker_queue_len", "must be between 1 and 65536");
        }
        // librdkafka's own bounds, checked here so the mistake names the setting.
        if !(SESSION_TIMEOUT_MS..=86_400_000).contains(&self.max_poll_interval_ms) {
            return invalid(
                "max_poll_interval_ms",
                "must be between 10000 (the session timeout) and 86400000 (ms)",
            );
        }
        // 0 would switch a limit off: refused, every session must be bounded.
        for (name, ms) in [
            ("db_statement_timeout_ms", self.db_timeouts.statement_ms),
            ("db_lock_timeout_ms", self.db_timeouts.lock_ms),
            (
                "db_idle_in_transaction_timeout_ms",
                self.db_timeouts.idle_in_transaction_ms,
            ),
        ] {
            if !(10..=3_600_000).contains(&ms) {
                return invalid(name, "must be between 10 and 3600000 (ms)");
            }
        }
        if self.db_timeouts.lock_ms <= self.db_timeouts.idle_in_transaction_ms {
            return invalid(
                "db_lock_timeout_ms",
                "must be longer than db_idle_in_transaction_timeout_ms, so a lock held by a paused instance is released before waiters give up",
            );
        }
        if self
            .topic_prefix
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
        {
            return invalid(
                "topic_prefix",
                "may only contain ASCII letters, digits, '.', '_' and '-'",
            );
        }
        Ok(())
    }
}

fn pick(flag: &Option<String>, file: Option<String>, default: &str) -> String {
    flag.clone().or(file).unwrap_or_else(|| default.to_string())
}

fn default_instance() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    if meta.len() > MAX_CONFIG_FILE_BYTES {
        return Err(ConfigError::TooLarge { path: path.into() });
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    parse_settings(&text).map_err(|message| ConfigError::Parse {
        path: path.into(),
        message,
    })
}

/// YAML is a superset of JSON, so one parser reads both.
fn parse_settings(text: &str) -> Result<FileSettings, String> {
    if text.trim().is_empty() {
        return Ok(FileSettings::default());
    }
    serde_yaml::from_str(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "brokers: file:9092\ndatabase_url: postgres://file/db\nworkers: 3\n",
        )
        .unwrap();
        let args = ServiceArgs {
            config: Some(path),
            brokers: Some("flag:9092".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.brokers, "flag:9092");
        assert_eq!(s.database_url, "postgres://file/db");
        assert_eq!(s.workers, 3);
        assert_eq!(s.group_id, DEFAULT_GROUP_ID);
        assert_eq!(s.approvers_file, PathBuf::from("policies/approvers.yaml"));
    }

    #[test]
    fn kek_files_come_from_the_flag_or_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "kek_file: /run/secrets/kek\nkek_previous_file: /run/secrets/kek.old\n",
        )
        .unwrap();
        let from_file = ServiceArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(from_file.kek_file, Some(PathBuf::from("/run/secrets/kek")));
        assert_eq!(
            from_file.kek_previous_file,
            Some(PathBuf::from("/run/secrets/kek.old"))
        );
        let flag = ServiceArgs {
            config: Some(path),
            kek_file: Some(PathBuf::from("/other/kek")),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(flag.kek_file, Some(PathBuf::from("/other/kek")));
    }

    #[test]
    fn json_config_and_errors_are_specific() {
        let s = parse_settings(r#"{"brokers": "a:1", "intent_partitions": 4}"#).unwrap();
        assert_eq!(s.intent_partitions, Some(4));
        let err = parse_settings("brokerz: x").unwrap_err();
        assert!(err.contains("brokerz"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "workers: 0\n").unwrap();
        let err = ServiceArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("workers"), "{err}");
        let missing = ServiceArgs {
            config: Some("/nonexistent/x.yaml".into()),
            ..Default::default()
        };
        assert!(matches!(missing.resolve(), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn worker_queue_and_poll_interval_come_from_the_file_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        let resolve = |text: &str| {
            std::fs::write(&path, text).unwrap();
            ServiceArgs {
                config: Some(path.clone()),
                ..Default::default()
            }
            .resolve()
        };
        let s = resolve("worker_queue_len: 4\nmax_poll_interval_ms: 10000\n").unwrap();
        assert_eq!((s.worker_queue_len, s.max_poll_interval_ms), (4, 10_000));
        assert!(!s.direct_publish, "the direct publisher is off by default");
        assert!(resolve("direct_publish: true\n").unwrap().direct_publish);
        let s = resolve("workers: 1\n").unwrap();
        assert_eq!(
            (s.worker_queue_len, s.max_poll_interval_ms),
            (DEFAULT_WORKER_QUEUE_LEN, DEFAULT_MAX_POLL_INTERVAL_MS)
        );
        for (text, name) in [
            ("worker_queue_len: 0\n", "worker_queue_len"),
            ("max_poll_interval_ms: 9999\n", "max_poll_interval_ms"),
        ] {
            let err = resolve(text).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn kafka_properties_come_from_the_file_and_flags_and_secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("kafka-password");
        std::fs::write(&secret, "s3cret-from-file\n").unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            format!(
                "kafka_properties:\n  security.protocol: SASL_SSL\n  sasl.mechanisms: PLAIN\n  ssl.ca.location: /etc/ca.pem\nkafka_secret_files:\n  sasl.password: {}\n",
                secret.display()
            ),
        )
        .unwrap();
        let args = ServiceArgs {
            config: Some(path.clone()),
            kafka_properties: Some("sasl.mechanisms=SCRAM-SHA-512".into()),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        let p = &s.kafka_client;
        assert_eq!(p.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(p.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        let mut c = rdkafka::ClientConfig::new();
        p.apply(&mut c);
        assert_eq!(c.get("sasl.password"), Some("s3cret-from-file"));
        assert!(!format!("{s:?}").contains("s3cret"), "secret in Debug");
        // A secret in clear in the file is refused.
        std::fs::write(&path, "kafka_properties:\n  sasl.password: clear\n").unwrap();
        let err = ServiceArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("sasl.password"), "{err}");
        assert!(!err.is_transient());
    }

    #[test]
    fn topic_prefix_is_restricted_to_kafka_safe_characters() {
        let args = ServiceArgs {
            topic_prefix: Some("bad prefix/".into()),
            ..Default::default()
        };
        assert!(args.resolve().is_err());
    }
}
