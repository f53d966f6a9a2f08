//! The ledger: append-only, hash-chained events in PostgreSQL, and the projections
//! derived from them (usage windows, pending approvals, kill switch, outbox).
//!
//! Every decision is made here, in one transaction per call (or per batch):
//!
//! ```text
//! Ledger::connect(database_url, instance)      // runs the migrations
//! ledger.activate_policies(&set, actor)        // policy_activated per new identity
//! ledger.decide(&set, &intent, &origin)        // -> Decided { message, decision_hash, status: New | Redelivered }
//!                                              //    Err(LedgerError::IdempotencyConflict) is audited
//! ledger.decide_batch(&set, &[(intent, origin)]) // many intents, one transaction
//! ledger.record_invalid_intent(raw, &err, &origin)
//! ledger.apply_vote(&VerifiedVote, &origin)    // -> Accepted { outcome } | Refused { reason }
//! ledger.refuse_vote(raw, reason, detail, &origin)
//! ledger.expire_due(now)                       // EXPIRED outcomes; safe with several instances
//! ledger.set_kill_switch(scope, on, actor, reason, &origin) / kill_switch_state()
//! ledger.decision(intent_id)                   // decision + votes + outcome + decision hash
//! ledger.outbox_claim(limit) / outbox_mark_published(&ids)
//! ledger.forget_subject(subject, actor, &origin) // LGPD erasure
//! ledger.audit_verify() / replay(verify)
//! ```
//!
//! Guarantees and how they are enforced are in docs/ledger.md.

pub mod authorization;
pub mod chain;
pub mod checkpoint;
pub mod config;
pub mod decide;
pub mod events;
pub mod fault;
pub mod limit_usage;
pub mod machine;
pub mod notifications;
pub mod outbox;
mod packed;
pub mod policy_history;
pub mod query;
pub mod replay;
pub mod settle;
pub mod store;
pub mod subject_keys;
pub mod sweep;
mod timeline;
mod tls;
pub mod usage;
pub mod vote_audit;
pub mod votes;

pub use events::Origin;

use crate::decision::{DecisionMessage, PolicyIdentity};
use crate::intent::IntentError;
use crate::kill_switch::Scope;
use crate::policy::PolicySet;
use crate::privacy;
use chain::{GLOBAL_CHAIN, INTAKE_CHAIN};
use chrono::{DateTime, Utc};
use events::LedgerEvent;
use machine::{Projections, Staged};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use std::collections::HashSet;
use std::sync::Mutex;
use store::{KillRow, WriteSet};

/// Connections the ledger opens by default (2 cores: more only adds contention).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 8;
/// Most input bytes kept in an audit event (the dead-letter topic keeps the original).
pub const MAX_RAW_STORED_BYTES: usize = 16 * 1024;
/// How long an outbox claim is leased before another instance may publish it.
pub const OUTBOX_LEASE_SECONDS: i64 = 30;
/// Most pending approvals one `expire_due` call closes.
pub const EXPIRE_BATCH_MAX: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecideStatus {
    /// Decided now.
    New,
    /// Already decided: the recorded decision, unchanged.
    Redelivered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decided {
    pub message: DecisionMessage,
    /// Hex SHA-256 of the `intent_decided` event: what approvers sign.
    pub decision_hash: String,
    pub status: DecideStatus,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "idempotency_conflict: intent {intent_id} was already decided (ledgerSeq {existing_seq}) with a different payload; the conflict is recorded as ledgerSeq {audit_seq}. Use a new intentId for a new intent."
    )]
    IdempotencyConflict {
        intent_id: String,
        existing_seq: i64,
        audit_seq: i64,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The stored ledger contradicts itself (a row or event that cannot be read back).
    #[error("corrupt ledger: {0}")]
    Corrupt(String),
    /// An invariant of this code does not hold: a bug, never an input problem.
    #[error("internal: {0}")]
    Bug(String),
    /// The server cannot be reached (refused, timed out, authentication).
    #[error(
        "cannot connect to PostgreSQL ({0}). Is it running? `scripts/postgres.sh` starts a local one; set DATABASE_URL or --database-url."
    )]
    Connect(#[source] sqlx::Error),
    /// The database cannot be used as configured (URL, migrations, role): an operator
    /// must act; retrying does not help.
    #[error("{0}")]
    Setup(String),
    /// A subject key cannot be wrapped or unwrapped: no KEK, the wrong KEK, a tampered
    /// row (see [`crate::keywrap`]).
    #[error("subject key: {0}")]
    SubjectKey(#[from] crate::keywrap::KeyWrapError),
}

/// A stored event that does not read back is a corrupt ledger (the ledger wrote it).
impl From<events::EventError> for LedgerError {
    fn from(e: events::EventError) -> Self {
        LedgerError::Corrupt(e.to_string())
    }
}

/// A stored event that does not fold is a corrupt ledger too.
impl From<machine::FoldError> for LedgerError {
    fn from(e: machine::FoldError) -> Self {
        LedgerError::Corrupt(e.to_string())
    }
}

impl LedgerError {
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::IdempotencyConflict { .. } => "idempotency_conflict",
            LedgerError::Database(_) => "database_error",
            LedgerError::Corrupt(_) => "corrupt_ledger",
            LedgerError::Bug(_) => "internal_error",
            LedgerError::Connect(_) => "database_unavailable",
            LedgerError::Setup(_) => "database_setup",
            LedgerError::SubjectKey(_) => "subject_key",
        }
    }

    /// Whether retrying can succeed (SPEC §15): the database was unavailable, failing
    /// over, timed out or lost a race. An idempotency conflict never becomes right.
    pub fn is_transient(&self) -> bool {
        self.fault().is_transient()
    }

    /// Whether the deployment rather than the request is at fault (SPEC §15, see
    /// [`fault::Fault::Systemic`]): hold the work and alert, never dead-letter.
    pub fn is_systemic(&self) -> bool {
        self.fault().is_systemic()
    }

    /// For a systemic fault, what may be shown without the server's own words (an
    /// unauthenticated readiness probe, a log summary): `SQLSTATE 42501
    /// insufficient_privilege`, `database setup`, `key-encryption key`.
    pub fn systemic_reason(&self) -> Option<String> {
        if !self.is_systemic() {
            return None;
        }
        Some(match self {
            LedgerError::Database(sqlx::Error::Database(db))
            | LedgerError::Connect(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                format!("SQLSTATE {code} {}", fault::systemic_name(&code))
            }
            LedgerError::SubjectKey(_) => "key-encryption key".into(),
            _ => "database setup".into(),
        })
    }

    /// How a caller should treat this failure ([`fault`]).
    pub fn fault(&self) -> fault::Fault {
        use crate::keywrap::KeyWrapError as K;
        use fault::Fault;
        match self {
            LedgerError::IdempotencyConflict { .. }
            | LedgerError::Corrupt(_)
            | LedgerError::Bug(_) => Fault::Permanent,
            LedgerError::Database(e) | LedgerError::Connect(e) => fault::classify(e),
            // Migrations refused, wrong role: an operator must act, whatever the message.
            LedgerError::Setup(_) => Fault::Systemic,
            LedgerError::SubjectKey(e) if e.is_transient() => Fault::Transient,
            // No usable KEK, or the one configured is not the one the keys were wrapped
            // by (a rotation without kek_previous_file): every subject alike.
            LedgerError::SubjectKey(
                K::NotConfigured
                | K::Read { .. }
                | K::Invalid { .. }
                | K::Ambiguous { .. }
                | K::WrongKek { .. },
            ) => Fault::Systemic,
            // One subject's row (tampered, still in clear): that subject's messages only.
            LedgerError::SubjectKey(_) => Fault::Permanent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Vote {
    Approve,
    Reject,
}

impl Vote {
    pub fn as_str(self) -> &'static str {
        match self {
            Vote::Approve => "APPROVE",
            Vote::Reject => "REJECT",
        }
    }

    pub fn parse(stored: &str) -> Option<Vote> {
        [Vote::Approve, Vote::Reject]
            .into_iter()
            .find(|v| v.as_str() == stored)
    }
}

/// A vote whose signature the approvals module has already checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedVote {
    pub intent_id: String,
    pub approver_id: String,
    pub vote: Vote,
    pub signed_at: DateTime<Utc>,
    /// The verified signature, recorded with the accepted vote (`None`: a vote made in
    /// process, as tests and scenarios do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<events::VoteProof>,
    /// The approver ids of the registry the vote was verified under: earlier votes of an
    /// approver no longer in it stop counting toward the quorum (SPEC §14). `None`: no
    /// registry (in-process votes), every earlier vote counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered: Option<Vec<String>>,
}

/// What happened to an intent after its decision: the approval outcomes (SPEC §3) and
/// the lifecycle outcomes of its authorization (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Approved,
    Rejected,
    Expired,
    Killed,
    Cancelled,
    Captured,
    Voided,
    Refunded,
    AuthExpired,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Approved,
        Outcome::Rejected,
        Outcome::Expired,
        Outcome::Killed,
        Outcome::Cancelled,
        Outcome::Captured,
        Outcome::Voided,
        Outcome::Refunded,
        Outcome::AuthExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "APPROVED",
            Outcome::Rejected => "REJECTED",
            Outcome::Expired => "EXPIRED",
            Outcome::Killed => "KILLED",
            Outcome::Cancelled => "CANCELLED",
            Outcome::Captured => "CAPTURED",
            Outcome::Voided => "VOIDED",
            Outcome::Refunded => "REFUNDED",
            Outcome::AuthExpired => "AUTH_EXPIRED",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// SPEC §3 outcome event, published on `spend.decisions` (key = agentId).
/// `decidedAt` = `closedAt`: the moment this outcome was decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeMessage {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub outcome: Outcome,
    pub approvers: Vec<String>,
    pub decided_at: DateTime<Utc>,
    pub closed_at: DateTime<Utc>,
    pub ledger_seq: i64,
    /// Lifecycle outcomes (SPEC §11): the settlement, the amount it applied, the
    /// authorization's running totals and flags (`capture_after_expiry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement_id: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub amount: Option<rust_decimal::Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Box<authorization::AuthorizationTotals>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// Approval outcomes (SPEC §13.1): the approvals the decision required and the terms
    /// its approvers signed against, as the decision message stated them. Absent in
    /// outcomes of events recorded before these fields, and in lifecycle outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<u32>,
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub terms: Option<crate::decision::ApprovalTerms>,
    /// Approval outcomes (SPEC §13.1): every accepted vote, the closing one last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<events::ClosingVote>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VoteResult {
    Accepted {
        seq: i64,
        /// Boxed: an outcome message is large, and most accepted votes close nothing.
        outcome: Option<Box<OutcomeMessage>>,
    },
    /// `reason` is a stable code: `unknown_intent`, `not_awaiting_approval`,
    /// `already_closed`, `expired`, `self_approval`, `duplicate_approver`.
    Refused {
        seq: i64,
        reason: String,
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct KillSwitchEntry {
    pub scope: String,
    pub active: bool,
    pub actor: String,
    pub reason: String,
    pub changed_at: DateTime<Utc>,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteRecord {
    pub approver_id: String,
    pub vote: Vote,
    pub signed_at: DateTime<Utc>,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingInfo {
    pub approvals_required: u32,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionRecord {
    pub message: DecisionMessage,
    pub decision_hash: String,
    pub votes: Vec<VoteRecord>,
    pub pending: Option<PendingInfo>,
    pub outcome: Option<OutcomeMessage>,
}

/// Work waiting in the ledger (see [`Ledger::backlog`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub pending_approvals: u64,
    pub outbox_messages: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub seq: i64,
    pub topic: String,
    pub key: String,
    pub payload: String,
    /// When the deciding transaction wrote it (database clock).
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// What is known of an intent's beneficiary account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersonalData {
    /// The intent had no `beneficiary.account`.
    None,
    Clear(String),
    /// The subject's key was erased (`privacy forget`).
    Erased,
}

#[derive(Debug)]
pub struct Ledger {
    pool: PgPool,
    instance: String,
    fingerprint_key: Vec<u8>,
    /// Wraps the per-subject keys (SPEC §14); without it, personal data can be neither
    /// sealed nor opened.
    key_wrap: Option<std::sync::Arc<dyn crate::keywrap::KeyWrap>>,
    /// Policy identities known to be recorded (avoids a lookup per decision).
    activated: Mutex<HashSet<String>>,
    /// (kind, sha256) → the registry / bindings version this instance activated or
    /// used for that content (`config`).
    configs: Mutex<std::collections::HashMap<(events::ConfigKind, String), events::ConfigVersion>>,
    /// Where committed outbox rows go to be published at once (serve's direct
    /// publisher); without it every row waits for `outbox_claim`.
    handoff: Option<outbox::OutboxHandoff>,
}

/// Options of [`Ledger::connect_with`].
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// Apply pending migrations (needs a role allowed to change the schema).
    pub migrate: bool,
    pub timeouts: SessionTimeouts,
    /// The key-encryption key of the subject keys. With it, connecting also wraps any
    /// subject key still stored in clear (written before keys were wrapped).
    pub key_wrap: Option<std::sync::Arc<dyn crate::keywrap::KeyWrap>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            migrate: true,
            timeouts: SessionTimeouts::default(),
            key_wrap: None,
        }
    }
}

/// Limits set on every session of the ledger's pool (SPEC §15), so that no statement,
/// lock wait or abandoned transaction can hold the ledger: an instance paused
/// mid-transaction (SIGSTOP, VM pause, network partition) loses its session after
/// `idle_in_transaction_ms`, which releases its locks, so a kill switch waiting behind
/// them applies within about that delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimeouts {
    /// `statement_timeout`: longest single statement (reports and replay included).
    pub statement_ms: u64,
    /// `lock_timeout`: longest wait for a lock; the wait fails with 55P03 (transient,
    /// retried). Longer than `idle_in_transaction_ms`, so a lock held by a paused
    /// instance is released before a waiter gives up.
    pub lock_ms: u64,
    /// `idle_in_transaction_session_timeout`: a transaction whose client sends nothing
    /// for this long is ended by the server. The ledger's transactions are a few round
    /// trips with no waiting between them.
    pub idle_in_transaction_ms: u64,
    /// Longest wait for a connection from the pool (the database down or saturated):
    /// `PoolTimedOut`, transient.
    pub acquire_ms: u64,
}

pub const DEFAULT_STATEMENT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_LOCK_TIMEOUT_MS: u64 = 3_000;
pub const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_ACQUIRE_TIMEOUT_MS: u64 = 5_000;

impl Default for SessionTimeouts {
    fn default() -> Self {
        SessionTimeouts {
            statement_ms: DEFAULT_STATEMENT_TIMEOUT_MS,
            lock_ms: DEFAULT_LOCK_TIMEOUT_MS,
            idle_in_transaction_ms: DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS,
            acquire_ms: DEFAULT_ACQUIRE_TIMEOUT_MS,
        }
    }
}

impl SessionTimeouts {
    /// Startup parameters of every session (milliseconds, PostgreSQL's default unit).
    pub fn startup_options(&self) -> [(&'static str, String); 3] {
        [
            ("statement_timeout", self.statement_ms.to_string()),
            ("lock_timeout", self.lock_ms.to_string()),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_ms.to_string(),
            ),
        ]
    }
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// True when every migration of this build is applied (the service role, which may
/// not create tables, can then start without migrating).
pub async fn is_migrated(pool: &PgPool) -> bool {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            Err(_) => return false,
        };
    MIGRATOR.iter().all(|m| applied.contains(&m.version))
}

/// Applies pending migrations (`spendguard db migrate`).
pub async fn migrate(pool: &PgPool) -> Result<(), LedgerError> {
    if is_migrated(pool).await {
        return Ok(());
    }
    let applied = MIGRATOR.run(pool).await;
    applied.map_err(|e| LedgerError::Setup(format!("applying database migrations failed: {e}. Check that the role in DATABASE_URL may create tables (run `spendguard db migrate` as the schema owner).")))
}

/// The ledger's tables start empty and grow by thousands of rows a minute; PostgreSQL
/// plans its statements from table statistics that only ANALYZE (autovacuum, by default)
/// refreshes. With autovacuum off the statistics of an empty ledger stay for good, and so
/// do plans that scan whole tables (measured in issue 15): say so at start-up, it is the
/// operator's setting to fix. Advisory only: a server that cannot answer is caught later.
async fn warn_if_statistics_frozen(pool: &PgPool) {
    let setting: Result<String, _> = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await;
    if setting.is_ok_and(|s| s == "off") {
        tracing::warn!(
            "autovacuum is off on this PostgreSQL: the ledger's table statistics never refresh, and plans made while its tables were small can scan them whole on every decision; turn autovacuum on, or ANALYZE the ledger's tables regularly (docs/operations.md, \"PostgreSQL settings\")"
        );
    }
}

impl Ledger {
    pub async fn connect(database_url: &str, instance: &str) -> Result<Ledger, LedgerError> {
        Ledger::connect_with(database_url, instance, ConnectOptions::default()).await
    }

    pub async fn connect_with(
        database_url: &str,
        instance: &str,
        opts: ConnectOptions,
    ) -> Result<Ledger, LedgerError> {
        let url = tls::connect_options(database_url)?;
        tls::warn_if_unverified(&url);
        let connect = url.clone().options(opts.timeouts.startup_options());
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections)
            .acquire_timeout(std::time::Duration::from_millis(opts.timeouts.acquire_ms))
            .connect_with(connect)
            .await
            .map_err(tls::connect_error)?;
        if opts.migrate && !is_migrated(&pool).await {
            // A migration may outlast the service's statement and lock limits (an index
            // on a large ledger): it runs on a session of its own without them.
            let session = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(url)
                .await
                .map_err(tls::connect_error)?;
            migrate(&session).await?;
            session.close().await;
        }
        let fingerprint_key = load_fingerprint_key(&pool).await?;
        warn_if_statistics_frozen(&pool).await;
        let ledger = Ledger {
            pool,
            instance: instance.to_string(),
            fingerprint_key,
            key_wrap: opts.key_wrap,
            activated: Mutex::new(HashSet::new()),
            configs: Mutex::default(),
            handoff: None,
        };
        if let Some(kw) = &ledger.key_wrap {
            subject_keys::wrap_legacy(&ledger, kw.as_ref()).await?;
        }
        Ok(ledger)
    }

    /// The key-encryption key this ledger wraps subject keys with, if any.
    pub fn key_wrap(&self) -> Option<&dyn crate::keywrap::KeyWrap> {
        self.key_wrap.as_deref()
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn fingerprint(&self, bytes: &[u8]) -> [u8; 32] {
        privacy::fingerprint(&self.fingerprint_key, bytes)
    }

    fn is_activated(&self, sha: &str) -> bool {
        self.activated
            .lock()
            .map(|s| s.contains(sha))
            .unwrap_or(false)
    }

    fn mark_activated(&self, sha: &str) {
        if let Ok(mut s) = self.activated.lock() {
            s.insert(sha.to_string());
        }
    }

    /// Records a `policy_activated` event (with the full canonical content) for every
    /// policy of `set` not recorded before, and `bindings_activated` when its bindings
    /// differ from the last ones activated. Returns the new policy events' seqs.
    pub async fn activate_policies(
        &self,
        set: &PolicySet,
        actor: &str,
    ) -> Result<Vec<i64>, LedgerError> {
        let wanted: Vec<(PolicyIdentity, String)> = set
            .policies()
            .filter(|p| !self.is_activated(&p.identity.sha256))
            .map(|p| (p.identity.clone(), p.canonical_json().to_string()))
            .collect();
        let seqs = self
            .activate(wanted, actor, &Origin::cli(&self.instance))
            .await?;
        self.reactivate_returning(set, actor).await?;
        self.activate_bindings(set.bindings(), actor).await?;
        Ok(seqs)
    }

    pub(crate) async fn activate(
        &self,
        wanted: Vec<(PolicyIdentity, String)>,
        actor: &str,
        origin: &Origin,
    ) -> Result<Vec<i64>, LedgerError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let chains = vec![GLOBAL_CHAIN.to_string()];
        let now = store::lock_chains(&mut tx, &chains, None, false).await?;
        let shas: Vec<&str> = wanted.iter().map(|(i, _)| i.sha256.as_str()).collect();
        let known: Vec<String> =
            sqlx::query_scalar("SELECT sha256 FROM policy_version WHERE sha256 = ANY($1)")
                .bind(&shas)
                .fetch_all(&mut *tx)
                .await?;
        let mut new: Vec<&(PolicyIdentity, String)> = Vec::new();
        for w in &wanted {
            if !known.contains(&w.0.sha256) && !new.iter().any(|n| n.0.sha256 == w.0.sha256) {
                new.push(w);
            }
        }
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, new.len()).await?;
        let mut seqs = Vec::new();
        let mut snapshot = Projections::default();
        for (identity, canonical) in new {
            let staged = Staged {
                chain_id: GLOBAL_CHAIN.to_string(),
                actor: actor.to_string(),
                resource: format!("policy:{}@{}", identity.name, identity.version),
                event: LedgerEvent::PolicyActivated(events::PolicyActivated {
                    policy: identity.clone(),
                    canonical: canonical.clone(),
                    reactivates: None,
                    rollback: None,
                }),
            };
            seqs.push(ws.record(&mut snapshot, &staged, now, origin)?.recorded.seq);
        }
        ws.flush(&mut tx).await?;
        tx.commit().await?;
        for (identity, _) in &wanted {
            self.mark_activated(&identity.sha256);
        }
        Ok(seqs)
    }

    /// Records input that is not a valid intent (`intent_invalid`, chain `intake`).
    pub async fn record_invalid_intent(
        &self,
        raw: &[u8],
        err: &IntentError,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let (text, truncated) = stored_raw(raw);
        let (actor, resource) = ids_from_raw(raw, "agentId", "intentId");
        let payload = events::InvalidInput {
            raw: text,
            raw_bytes: raw.len(),
            truncated,
            raw_fingerprint: hex::encode(self.fingerprint(raw)),
            code: err.code.to_string(),
            message: privacy::mask_pans(&err.message),
            field: err.field.map(str::to_string),
        };
        self.append_single(
            INTAKE_CHAIN,
            &actor,
            &resource,
            (origin, "spend.intents"),
            LedgerEvent::IntentInvalid(payload),
        )
        .await
    }

    /// Records refused input counted beyond the full-audit bound of a window
    /// (`refusals_summarized`, chain `intake`; [`crate::audit_budget`]). `origin` is
    /// the last counted Kafka message's (so a redelivered summary is recorded once) or
    /// the API's.
    pub async fn record_refusals_summary(
        &self,
        source_topic: &str,
        summary: &crate::audit_budget::Summary<impl Sized>,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let at = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
        let payload = events::RefusalsSummarized {
            source_topic: source_topic.to_string(),
            source: origin.source.clone(),
            partition: origin.partition,
            first_offset: summary.first_position,
            last_offset: summary.last_position,
            window_start: at(summary.window_start_ms),
            window_end: at(summary.window_end_ms),
            audited: summary.audited,
            total: summary.total(),
            counts: summary.counts.clone(),
        };
        let resource = match origin.partition {
            Some(p) => format!(
                "{source_topic}/{p}@{}-{}",
                summary.first_position.unwrap_or(-1),
                summary.last_position.unwrap_or(-1)
            ),
            None => format!(
                "{source_topic}/{}@{}",
                origin.source, summary.window_start_ms
            ),
        };
        self.append_single(
            INTAKE_CHAIN,
            "spendguard",
            &resource,
            (origin, source_topic),
            LedgerEvent::RefusalsSummarized(payload),
        )
        .await
    }

    /// Records a message that could be neither handled nor dead-lettered after bounded
    /// retries (`message_set_aside`, chain `intake`): the partition moves on past it and
    /// this event is what remains of it (size, digest and keyed fingerprint; never the
    /// bytes, which may hold card data and may be as large as the broker allows).
    /// Idempotent per Kafka origin like the other intake records.
    pub async fn record_set_aside(
        &self,
        source_topic: &str,
        raw: &[u8],
        code: &str,
        detail: &str,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let payload = events::MessageSetAside {
            source_topic: source_topic.to_string(),
            raw_bytes: raw.len(),
            raw_fingerprint: hex::encode(self.fingerprint(raw)),
            code: code.to_string(),
            detail: privacy::mask_pans(&truncate_utf8(detail, MAX_DETAIL_BYTES)),
        };
        let resource = format!(
            "{source_topic}/{}@{}",
            origin.partition.unwrap_or(-1),
            origin.offset.unwrap_or(-1)
        );
        self.append_single(
            INTAKE_CHAIN,
            "spendguard",
            &resource,
            (origin, source_topic),
            LedgerEvent::MessageSetAside(payload),
        )
        .await
    }

    /// Records a vote refused before it reached the ledger (bad signature, unknown
    /// approver, ...). `reason` is the refusal's stable code.
    pub async fn refuse_vote(
        &self,
        raw: &[u8],
        reason: &str,
        detail: &str,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let (text, _) = stored_raw(raw);
        let (approver, intent) = ids_from_raw(raw, "approverId", "intentId");
        let vote = serde_json::from_slice::<serde_json::Value>(&privacy::mask_json_bytes(raw))
            .ok()
            .and_then(|v| {
                v.get("vote")
                    .and_then(|x| x.as_str())
                    .map(privacy::mask_pans)
            });
        let payload = events::VoteRefused {
            intent_id: (intent != "unknown").then(|| intent.clone()),
            approver_id: (approver != "unknown").then(|| approver.clone()),
            vote,
            reason: reason.to_string(),
            detail: privacy::mask_pans(detail),
            raw: Some(text),
        };
        self.append_single(
            INTAKE_CHAIN,
            &approver,
            &intent,
            (origin, "spend.approvals"),
            LedgerEvent::VoteRefused(payload),
        )
        .await
    }

    /// Appends one intake event. A message from Kafka is recorded once per (source
    /// topic, partition, offset, event type): a redelivery or a retry after a COMMIT of
    /// unknown outcome gets the seq recorded the first time, not a second event.
    async fn append_single(
        &self,
        chain_id: &str,
        actor: &str,
        resource: &str,
        (origin, source_topic): (&Origin, &str),
        event: LedgerEvent,
    ) -> Result<i64, LedgerError> {
        let event_type = event.kind().as_str();
        let mut tx = self.pool.begin().await?;
        let chains = vec![chain_id.to_string()];
        let now = store::lock_chains(&mut tx, &chains, None, false).await?;
        let intake_key = store::IntakeKey::of(origin, source_topic, event_type);
        let recorded = match &intake_key {
            Some(key) => key.recorded(&mut tx).await?,
            None => None,
        };
        if let Some(seq) = recorded {
            tx.rollback().await?;
            return Ok(seq);
        }
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, 1).await?;
        let staged = Staged {
            chain_id: chain_id.to_string(),
            actor: actor.to_string(),
            resource: resource.to_string(),
            event,
        };
        let seq = ws
            .record(&mut Projections::default(), &staged, now, origin)?
            .recorded
            .seq;
        ws.flush(&mut tx).await?;
        if let Some(key) = &intake_key {
            key.record(&mut tx, seq).await?;
        }
        tx.commit().await?;
        Ok(seq)
    }

    /// Trips (`on`) or clears a kill switch. Recorded only when the state changes (a
    /// repeated request records nothing); returns the seq of the event that set the
    /// current state. Operators go through [`crate::kill_switch::record_then_announce`],
    /// which calls this and then tells every instance.
    pub async fn set_kill_switch(
        &self,
        scope: &Scope,
        on: bool,
        actor: &str,
        reason: &str,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let mut tx = self.pool.begin().await?;
        let chains = vec![GLOBAL_CHAIN.to_string()];
        // Exclusive on the kill-switch key: waits for every decision in flight, and every
        // later decision waits for this commit, so none straddles the change.
        let now = store::lock_chains(&mut tx, &chains, Some(chain::kill_switch_lock_key()), false)
            .await?;
        let current: Option<KillRow> = sqlx::query_as(
            "SELECT scope, active, actor, reason, changed_at, seq FROM kill_switch WHERE scope = $1",
        )
        .bind(scope.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let mut snapshot = Projections::default();
        let current_seq = current.as_ref().map_or(0, |k| k.seq);
        if let Some(k) = current {
            snapshot.kills.insert(k.scope.clone(), k);
        }
        let Some(staged) = machine::step_kill_switch(&snapshot, scope, on, actor, reason) else {
            tx.rollback().await?;
            return Ok(current_seq);
        };
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, 1).await?;
        let seq = ws.record(&mut snapshot, &staged, now, origin)?.recorded.seq;
        ws.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Records an exchange rate (SPEC §12.3): `rate` units of `quote` per unit of
    /// `base`, used for intents accepted after this commits. Takes the kill-switch key
    /// exclusively, like a kill-switch change: no decision straddles the new rate, so
    /// ledger order is the order decisions saw rates in (replay relies on it).
    pub async fn set_fx_rate(
        &self,
        base: &str,
        quote: &str,
        rate: rust_decimal::Decimal,
        actor: &str,
        reason: &str,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let staged = Staged {
            chain_id: GLOBAL_CHAIN.to_string(),
            actor: actor.to_string(),
            resource: format!("fx:{}", machine::fx_pair(base, quote)),
            event: LedgerEvent::FxRateSet(events::FxRateSet {
                base: base.to_string(),
                quote: quote.to_string(),
                rate,
                actor: actor.to_string(),
                reason: reason.to_string(),
            }),
        };
        self.append_global(&staged, true, origin).await
    }

    /// Appends one event to the `global` chain in a transaction of its own; with
    /// `kill_exclusive`, under the kill-switch key in exclusive mode (no decision
    /// straddles it). Returns its seq.
    async fn append_global(
        &self,
        staged: &Staged,
        kill_exclusive: bool,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        assert_eq!(
            staged.chain_id, GLOBAL_CHAIN,
            "append_global appends to `global`"
        );
        let mut tx = self.pool.begin().await?;
        let chains = vec![GLOBAL_CHAIN.to_string()];
        let exclusive = kill_exclusive.then(chain::kill_switch_lock_key);
        let now = store::lock_chains(&mut tx, &chains, exclusive, false).await?;
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, 1).await?;
        let seq = ws
            .record(&mut Projections::default(), staged, now, origin)?
            .recorded
            .seq;
        ws.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Records a promotion and its evidence (`policy_promoted`, chain `global`).
    pub async fn record_promotion(
        &self,
        promoted: events::PolicyPromoted,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let staged = Staged {
            chain_id: GLOBAL_CHAIN.to_string(),
            actor: promoted.actor.clone(),
            resource: format!(
                "policy:{}@{}",
                promoted.policy.name, promoted.policy.version
            ),
            event: LedgerEvent::PolicyPromoted(Box::new(promoted)),
        };
        self.append_global(&staged, false, origin).await
    }

    pub async fn kill_switch_state(&self) -> Result<Vec<KillSwitchEntry>, LedgerError> {
        Ok(sqlx::query_as::<_, KillSwitchEntry>(
            "SELECT scope, active, actor, reason, changed_at, seq FROM kill_switch ORDER BY scope",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The recorded decision of an intent, with its votes, pending state and outcome.
    pub async fn decision(&self, intent_id: &str) -> Result<Option<DecisionRecord>, LedgerError> {
        let Some((message, decision_hash)) = sqlx::query_as::<_, (String, Vec<u8>)>(
            "SELECT message, decision_hash FROM decision WHERE intent_id = $1",
        )
        .bind(intent_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let message: DecisionMessage = stored("decision message", &message)?;
        let decision_hash = hex::encode(decision_hash);
        let sql = format!(
            "SELECT {} FROM approval_vote WHERE intent_id = $1 ORDER BY seq",
            votes::VOTE_COLUMNS
        );
        let votes = sqlx::query_as::<_, store::VoteRow>(sqlx::AssertSqlSafe(sql))
            .bind(intent_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|v| {
                let vote = Vote::parse(&v.vote).ok_or_else(|| {
                    LedgerError::Corrupt(format!("vote {:?} of intent {intent_id}", v.vote))
                })?;
                Ok(VoteRecord {
                    approver_id: v.approver_id,
                    vote,
                    signed_at: v.signed_at,
                    seq: v.seq,
                })
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        let pending = sqlx::query_as::<_, (i32, DateTime<Utc>)>(
            "SELECT approvals_required, expires_at FROM pending_approval WHERE intent_id = $1",
        )
        .bind(intent_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|(required, expires_at)| PendingInfo {
            approvals_required: u32::try_from(required).unwrap_or(0),
            expires_at,
        });
        let outcome = match sqlx::query_scalar::<_, String>(
            "SELECT message FROM intent_outcome WHERE intent_id = $1",
        )
        .bind(intent_id)
        .fetch_optional(&self.pool)
        .await?
        {
            Some(m) => Some(stored("outcome message", &m)?),
            None => None,
        };
        Ok(Some(DecisionRecord {
            message,
            decision_hash,
            votes,
            pending,
            outcome,
        }))
    }

    /// What the service's gauges report: intents waiting for approval and outbox rows
    /// not yet acknowledged by the broker (one round trip).
    pub async fn backlog(&self) -> Result<Backlog, LedgerError> {
        let (pending, outbox): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pending_approval), (SELECT count(*) FROM outbox)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Backlog {
            pending_approvals: u64::try_from(pending).unwrap_or(0),
            outbox_messages: u64::try_from(outbox).unwrap_or(0),
        })
    }

    /// LGPD erasure: destroys the subject's keys and records `subject_erased`. The
    /// events keep their ciphertext (now unreadable) so the chain and replay stay valid.
    pub async fn forget_subject(
        &self,
        subject: &str,
        actor: &str,
        origin: &Origin,
    ) -> Result<(i64, usize), LedgerError> {
        let mut tx = self.pool.begin().await?;
        let chains = vec![GLOBAL_CHAIN.to_string()];
        let now = store::lock_chains(&mut tx, &chains, None, false).await?;
        let key_ids: Vec<uuid::Uuid> =
            sqlx::query_scalar("DELETE FROM subject_key WHERE subject_id = $1 RETURNING key_id")
                .bind(subject)
                .fetch_all(&mut *tx)
                .await?;
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, 1).await?;
        let n = key_ids.len();
        let staged = Staged {
            chain_id: GLOBAL_CHAIN.to_string(),
            actor: actor.to_string(),
            resource: format!("subject:{subject}"),
            event: LedgerEvent::SubjectErased(events::SubjectErased {
                subject: subject.to_string(),
                key_ids,
                actor: actor.to_string(),
            }),
        };
        let seq = ws
            .record(&mut Projections::default(), &staged, now, origin)?
            .recorded
            .seq;
        ws.flush(&mut tx).await?;
        tx.commit().await?;
        Ok((seq, n))
    }

    /// The beneficiary account of a decided intent, decrypted if its subject's key exists.
    pub async fn beneficiary_account(
        &self,
        intent_id: &str,
    ) -> Result<Option<PersonalData>, LedgerError> {
        let Some(payload) = sqlx::query_scalar::<_, String>(
            "SELECT e.payload FROM decision d JOIN ledger_event e ON e.seq = d.seq WHERE d.intent_id = $1",
        )
        .bind(intent_id)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let decided: events::IntentDecided = stored("intent_decided payload", &payload)?;
        let Some(sealed) = decided.personal else {
            return Ok(Some(PersonalData::None));
        };
        let Some(key) = subject_keys::by_key_id(&self.pool, self.key_wrap(), sealed.key_id).await?
        else {
            return Ok(Some(PersonalData::Erased));
        };
        let clear = privacy::open(&key, &sealed, intent_id).map_err(|e| {
            LedgerError::Corrupt(format!("personal data of intent {intent_id}: {e}"))
        })?;
        let personal: serde_json::Value = serde_json::from_slice(&clear).map_err(|e| {
            LedgerError::Corrupt(format!("personal data of intent {intent_id}: {e}"))
        })?;
        Ok(Some(PersonalData::Clear(
            personal
                .get("account")
                .and_then(|a| a.as_str())
                .unwrap_or_default()
                .to_string(),
        )))
    }

    /// `spendguard audit verify`: recomputes every chain; problems sorted by seq.
    pub async fn audit_verify(&self) -> Result<chain::Verifier, LedgerError> {
        replay::verify_chains(&self.pool, None).await
    }

    /// `audit verify --checkpoints DIR`: also checks every position the signed
    /// checkpoints recorded (a rewrite with recomputed hashes shows there).
    pub async fn audit_verify_against(
        &self,
        expected: &mut checkpoint::Expectations,
    ) -> Result<chain::Verifier, LedgerError> {
        replay::verify_chains(&self.pool, Some(expected)).await
    }

    /// The highest event seq committed so far (0 for an empty ledger).
    pub async fn last_seq(&self) -> Result<i64, LedgerError> {
        Ok(
            sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM ledger_event")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The chain heads now and the highest seq visible, in one snapshot (what a
    /// checkpoint records).
    pub async fn chain_heads(&self) -> Result<(i64, Vec<(String, i64, chain::Hash)>), LedgerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let max_seq: i64 = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM ledger_event")
            .fetch_one(&mut *tx)
            .await?;
        let rows: Vec<(String, i64, Vec<u8>)> =
            sqlx::query_as("SELECT chain_id, chain_pos, hash FROM chain_head ORDER BY chain_id")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let heads = rows
            .into_iter()
            .map(|(chain_id, pos, hash)| {
                let hash: chain::Hash = hash.as_slice().try_into().map_err(|_| {
                    LedgerError::Corrupt(format!("chain head hash of {chain_id} is not 32 bytes"))
                })?;
                Ok((chain_id, pos, hash))
            })
            .collect::<Result<Vec<_>, LedgerError>>()?;
        Ok((max_seq, heads))
    }
}

async fn load_fingerprint_key(pool: &PgPool) -> Result<Vec<u8>, LedgerError> {
    let candidate = privacy::SubjectKey::generate().key.to_vec();
    sqlx::query("INSERT INTO ledger_secret (name, key) VALUES ('fingerprint', $1) ON CONFLICT (name) DO NOTHING")
        .bind(&candidate)
        .execute(pool)
        .await?;
    Ok(
        sqlx::query_scalar("SELECT key FROM ledger_secret WHERE name = 'fingerprint'")
            .fetch_one(pool)
            .await?,
    )
}

/// A JSON text the ledger wrote, read back: not parsing means the row was altered.
fn stored<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, LedgerError> {
    serde_json::from_str(text)
        .map_err(|e| LedgerError::Corrupt(format!("{what} does not parse: {e}")))
}

/// Most bytes of a free-text detail kept in an audit event.
const MAX_DETAIL_BYTES: usize = 2 * 1024;

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// Input kept in an audit event: PANs masked in the whole input first, then cut to
/// `MAX_RAW_STORED_BYTES` (cutting first could leave 13+ digits of a card number that
/// straddles the cut unrecognised).
fn stored_raw(raw: &[u8]) -> (String, bool) {
    let masked = privacy::mask_json_bytes(raw);
    let truncated = masked.len() > MAX_RAW_STORED_BYTES;
    let cut = &masked[..masked.len().min(MAX_RAW_STORED_BYTES)];
    // PostgreSQL text cannot hold NUL: a refused message must still be recorded.
    let text = String::from_utf8_lossy(cut).replace('\0', "\u{FFFD}");
    (text, truncated)
}

/// Best-effort actor and resource ids from a message that may not parse.
fn ids_from_raw(raw: &[u8], actor_field: &str, resource_field: &str) -> (String, String) {
    let v: Option<serde_json::Value> = serde_json::from_slice(&privacy::mask_json_bytes(raw)).ok();
    let get = |f: &str| {
        v.as_ref()
            .and_then(|v| v.get(f))
            .and_then(|x| x.as_str())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= crate::intent::MAX_ID_LEN
                    && !s.chars().any(char::is_control)
            })
            .map(privacy::mask_pans)
            .unwrap_or_else(|| "unknown".to_string())
    };
    (get(actor_field), get(resource_field))
}
