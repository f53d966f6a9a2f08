//! Approval state (SPEC §4): applying verified votes and closing waiting intents
//! (APPROVED / REJECTED / EXPIRED / KILLED). The rules are `machine::step_vote` and
//! `machine::step_expire`; this module loads their snapshot under the agent's chain
//! lock (like `decide`, so a vote, an expiry and a decision of the same agent never
//! interleave), appends the events and writes their delta.

use super::chain::{self, INTAKE_CHAIN, agent_chain};
use super::events::{LedgerEvent, Origin};
use super::machine::{self, Projections, Staged};
use super::store::{self, KillRow, OutcomeRow, PendingRow, VoteRow, WriteSet};
use super::{Ledger, LedgerError, OutcomeMessage, VerifiedVote, VoteResult};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The columns of `pending_approval`, `approval_vote` and `intent_outcome`, in the
/// order of their row types (replay reads the same rows).
pub(crate) const PENDING_COLUMNS: &str = "intent_id, agent_id, entity_id, effect, approvals_required, amount, currency, tz, day, month, decided_seq, expires_at, authorization_ttl_secs, fx_rate, intent_amount, intent_currency";
pub(crate) const VOTE_COLUMNS: &str = "intent_id, approver_id, vote, signed_at, seq";
pub(crate) const OUTCOME_COLUMNS: &str = "intent_id, agent_id, outcome, closed_at, seq, message";

/// The approval state of `ids` (pending rows, votes, outcomes) and the active kill
/// switches: what `step_vote` and `step_expire` read. Call under the agent's lock.
pub(super) async fn load_approvals(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Projections, LedgerError> {
    let mut s = Projections::default();
    let sql = format!("SELECT {PENDING_COLUMNS} FROM pending_approval WHERE intent_id = ANY($1)");
    for p in sqlx::query_as::<_, PendingRow>(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
    {
        s.pending.insert(p);
    }
    for (intent_id, hash) in sqlx::query_as::<_, (String, Vec<u8>)>(
        "SELECT d.intent_id, d.decision_hash FROM decision d JOIN pending_approval p USING (intent_id) WHERE d.intent_id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?
    {
        s.waiting_hashes.insert(intent_id, hash);
    }
    let sql = format!("SELECT {VOTE_COLUMNS} FROM approval_vote WHERE intent_id = ANY($1)");
    for v in sqlx::query_as::<_, VoteRow>(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
    {
        s.votes
            .insert((v.intent_id.clone(), v.approver_id.clone()), v);
    }
    let sql = format!("SELECT {OUTCOME_COLUMNS} FROM intent_outcome WHERE intent_id = ANY($1)");
    for o in sqlx::query_as::<_, OutcomeRow>(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
    {
        s.outcomes.insert(o.intent_id.clone(), o);
    }
    for k in sqlx::query_as::<_, KillRow>(
        "SELECT scope, active, actor, reason, changed_at, seq FROM kill_switch WHERE active",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        s.kills.insert(k.scope.clone(), k);
    }
    Ok(s)
}

/// Appends staged events in order, returning what each produced.
fn record_all(
    ws: &mut WriteSet,
    snapshot: &mut Projections,
    staged: &[Staged],
    now: DateTime<Utc>,
    origin: &Origin,
) -> Result<Vec<store::Appended>, LedgerError> {
    staged
        .iter()
        .map(|st| ws.record(snapshot, st, now, origin))
        .collect()
}

/// `intake_record` kind of a vote message the ledger applied (accepted or refused).
const VOTE_APPLIED_KEY: &str = "vote_applied";

/// What applying a vote returned the first time, read back from its event.
async fn recorded_vote_result(tx: &mut PgConnection, seq: i64) -> Result<VoteResult, LedgerError> {
    let (event_type, payload): (String, String) =
        sqlx::query_as("SELECT event_type, payload FROM ledger_event WHERE seq = $1")
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
    match LedgerEvent::parse(&event_type, &payload) {
        // The outcome (if this vote closed the intent) is already in the outbox.
        Ok(LedgerEvent::VoteAccepted(_)) => Ok(VoteResult::Accepted { seq, outcome: None }),
        Ok(LedgerEvent::VoteRefused(refused)) => Ok(VoteResult::Refused {
            seq,
            reason: refused.reason,
            detail: refused.detail,
        }),
        Ok(other) => Err(LedgerError::Corrupt(format!(
            "intake record of a vote points at seq {seq}, a {} event",
            other.kind()
        ))),
        Err(e) => Err(LedgerError::Corrupt(format!("seq {seq}: {e}"))),
    }
}

impl Ledger {
    /// Applies a vote whose signature was verified. Refusals are recorded (and returned)
    /// with a stable reason; see [`VoteResult`].
    pub async fn apply_vote(
        &self,
        vote: &VerifiedVote,
        origin: &Origin,
    ) -> Result<VoteResult, LedgerError> {
        self.apply_vote_at(vote, origin, None).await
    }

    #[doc(hidden)]
    pub async fn apply_vote_at(
        &self,
        vote: &VerifiedVote,
        origin: &Origin,
        at: Option<DateTime<Utc>>,
    ) -> Result<VoteResult, LedgerError> {
        let agent: Option<String> =
            sqlx::query_scalar("SELECT agent_id FROM decision WHERE intent_id = $1")
                .bind(&vote.intent_id)
                .fetch_optional(&self.pool)
                .await?;
        let chain_id = match &agent {
            Some(a) => agent_chain(a),
            None => INTAKE_CHAIN.to_string(),
        };
        let chains = vec![chain_id.clone()];
        let mut tx = self.pool.begin().await?;
        // Shared kill-switch lock: a quorum reached here cannot straddle a kill switch.
        let db_now = store::lock_chains(&mut tx, &chains, None, true).await?;
        // A vote message applied before (a redelivery, or a retry after a COMMIT whose
        // outcome was unknown) gets its recorded result, not a second event.
        let intake_key = store::IntakeKey::of(origin, "spend.approvals", VOTE_APPLIED_KEY);
        let recorded = match &intake_key {
            Some(key) => key.recorded(&mut tx).await?,
            None => None,
        };
        if let Some(seq) = recorded {
            let recorded = recorded_vote_result(&mut tx, seq).await?;
            tx.rollback().await?;
            return Ok(recorded);
        }
        let now = chain::to_micros(at.unwrap_or(db_now));
        let mut snapshot = match agent {
            Some(_) => load_approvals(&mut tx, std::slice::from_ref(&vote.intent_id)).await?,
            None => Projections::default(),
        };
        let staged = machine::step_vote(&snapshot, agent.as_deref(), vote, now);
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, staged.len()).await?;
        let appended = record_all(&mut ws, &mut snapshot, &staged, now, origin)?;
        let result = vote_result(&staged, &appended)?;
        ws.flush(&mut tx).await?;
        if let Some(key) = &intake_key {
            let seq = match &result {
                VoteResult::Accepted { seq, .. } | VoteResult::Refused { seq, .. } => *seq,
            };
            key.record(&mut tx, seq).await?;
        }
        tx.commit().await?;
        Ok(result)
    }

    /// [`Ledger::expire_due`] at the database's clock.
    pub async fn expire_due_now(&self) -> Result<Vec<OutcomeMessage>, LedgerError> {
        let now = self.db_now().await?;
        self.expire_due(now).await
    }

    /// Closes as EXPIRED every waiting intent whose approval window ended at `now`.
    /// Safe with several instances (see `sweep`).
    pub async fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<OutcomeMessage>, LedgerError> {
        self.sweep(super::sweep::Sweep::Approvals, now).await
    }
}

/// A vote's result from its events: the last `vote_accepted` / `vote_refused`, with
/// the outcome a `vote_accepted` led to.
fn vote_result(staged: &[Staged], appended: &[store::Appended]) -> Result<VoteResult, LedgerError> {
    let mut result = None;
    for (st, a) in staged.iter().zip(appended) {
        match &st.event {
            LedgerEvent::VoteAccepted(_) => {
                result = Some(VoteResult::Accepted {
                    seq: a.recorded.seq,
                    outcome: None,
                })
            }
            LedgerEvent::VoteRefused(r) => {
                result = Some(VoteResult::Refused {
                    seq: a.recorded.seq,
                    reason: r.reason.clone(),
                    detail: r.detail.clone(),
                })
            }
            LedgerEvent::IntentClosed(_) => {
                if let Some(VoteResult::Accepted { outcome, .. }) = &mut result {
                    *outcome = a.outcome.clone().map(Box::new);
                }
            }
            other => {
                return Err(LedgerError::Bug(format!(
                    "step_vote staged a {} event",
                    other.kind()
                )));
            }
        }
    }
    result.ok_or_else(|| LedgerError::Bug("step_vote staged no vote event".into()))
}
