//! Approval state (SPEC §4): applying verified votes, closing waiting intents
//! (APPROVED / REJECTED / EXPIRED / KILLED) and moving or releasing their reservations.
//! Every write holds the agent's chain lock, like `decide`, so a vote, an expiry and a
//! decision of the same agent never interleave.

use super::chain::{self, INTAKE_CHAIN, agent_chain};
use super::decide::kill_scope_for;
use super::events::{self, Origin, kind};
use super::store::{self, DECISIONS_TOPIC, OutcomeRow, VoteRow, WriteSet};
use super::usage;
use super::{EXPIRE_BATCH_MAX, Ledger, Outcome, OutcomeMessage, VerifiedVote, Vote, VoteResult};
use crate::decision::KillState;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, HashSet};

/// A waiting intent as kept in `pending_approval`.
#[derive(Debug, Clone)]
struct Pending {
    intent_id: String,
    agent_id: String,
    entity_id: String,
    approvals_required: i32,
    amount: Decimal,
    currency: String,
    tz: String,
    day: NaiveDate,
    month: NaiveDate,
    expires_at: DateTime<Utc>,
}

async fn load_pending(conn: &mut PgConnection, ids: &[String]) -> sqlx::Result<Vec<Pending>> {
    let rows = sqlx::query(
        "SELECT intent_id, agent_id, entity_id, approvals_required, amount, currency, tz, day, month, expires_at
         FROM pending_approval WHERE intent_id = ANY($1) ORDER BY decided_seq",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Pending {
                intent_id: r.try_get("intent_id")?,
                agent_id: r.try_get("agent_id")?,
                entity_id: r.try_get("entity_id")?,
                approvals_required: r.try_get("approvals_required")?,
                amount: r.try_get("amount")?,
                currency: r.try_get("currency")?,
                tz: r.try_get("tz")?,
                day: r.try_get("day")?,
                month: r.try_get("month")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .collect()
}

/// Appends the outcome event, the projection changes and the outbox message.
#[allow(clippy::too_many_arguments)]
fn close(
    ws: &mut WriteSet,
    p: &Pending,
    outcome: Outcome,
    approvers: Vec<String>,
    kill_scope: Option<String>,
    now: DateTime<Utc>,
    actor: &str,
    origin: &Origin,
) -> anyhow::Result<OutcomeMessage> {
    let payload = events::IntentClosed {
        intent_id: p.intent_id.clone(),
        agent_id: p.agent_id.clone(),
        entity_id: p.entity_id.clone(),
        outcome: outcome.as_str().to_string(),
        approvers: approvers.clone(),
        closed_at: now,
        amount: p.amount,
        currency: p.currency.clone(),
        tz: p.tz.clone(),
        day: p.day,
        month: p.month,
        kill_scope,
    };
    let seq = ws
        .append(
            &agent_chain(&p.agent_id),
            kind::INTENT_CLOSED,
            now,
            actor,
            &p.intent_id,
            origin,
            &payload,
        )?
        .seq;
    apply_close(ws, &payload);
    let message = OutcomeMessage {
        intent_id: p.intent_id.clone(),
        agent_id: p.agent_id.clone(),
        entity_id: p.entity_id.clone(),
        outcome,
        approvers,
        decided_at: now,
        closed_at: now,
        ledger_seq: seq,
    };
    let text = serde_json::to_string(&message)?;
    ws.outcomes.push(OutcomeRow {
        intent_id: p.intent_id.clone(),
        agent_id: p.agent_id.clone(),
        outcome: outcome.as_str().to_string(),
        closed_at: now,
        seq,
        message: text.clone(),
    });
    ws.outbox
        .push((seq, DECISIONS_TOPIC.to_string(), p.agent_id.clone(), text));
    Ok(message)
}

/// Usage change of an outcome: APPROVED moves the reservation to committed (in the
/// windows of the request), anything else releases it. Shared with replay.
pub fn usage_change(c: &events::IntentClosed) -> [(usage::UsageKey, Decimal, Decimal); 2] {
    let committed = if c.outcome == Outcome::Approved.as_str() {
        c.amount
    } else {
        Decimal::ZERO
    };
    [usage::DAY, usage::MONTH].map(|kind| {
        let start = if kind == usage::DAY { c.day } else { c.month };
        (
            usage::key(&c.agent_id, kind, &c.tz, &c.currency, start),
            committed,
            -c.amount,
        )
    })
}

fn apply_close(ws: &mut WriteSet, c: &events::IntentClosed) {
    for (k, committed, reserved) in usage_change(c) {
        ws.add_usage(k, committed, reserved);
    }
    ws.pending_delete.push(c.intent_id.clone());
}

fn refuse(
    ws: &mut WriteSet,
    chain_id: &str,
    vote: &VerifiedVote,
    reason: &str,
    detail: String,
    now: DateTime<Utc>,
    origin: &Origin,
) -> anyhow::Result<VoteResult> {
    let payload = events::VoteRefused {
        intent_id: Some(vote.intent_id.clone()),
        approver_id: Some(vote.approver_id.clone()),
        vote: Some(vote.vote.as_str().to_string()),
        reason: reason.to_string(),
        detail: detail.clone(),
        raw: None,
    };
    let seq = ws
        .append(
            chain_id,
            kind::VOTE_REFUSED,
            now,
            &vote.approver_id,
            &vote.intent_id,
            origin,
            &payload,
        )?
        .seq;
    Ok(VoteResult::Refused {
        seq,
        reason: reason.to_string(),
        detail,
    })
}

/// `intake_record` kind of a vote message the ledger applied (accepted or refused).
const VOTE_APPLIED_KEY: &str = "vote_applied";

/// What applying a vote returned the first time, read back from its event.
async fn recorded_vote_result(tx: &mut PgConnection, seq: i64) -> anyhow::Result<VoteResult> {
    let (event_type, payload): (String, String) =
        sqlx::query_as("SELECT event_type, payload FROM ledger_event WHERE seq = $1")
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
    if event_type == kind::VOTE_ACCEPTED {
        // The outcome (if this vote closed the intent) is already in the outbox.
        return Ok(VoteResult::Accepted { seq, outcome: None });
    }
    let refused: events::VoteRefused = serde_json::from_str(&payload)?;
    Ok(VoteResult::Refused {
        seq,
        reason: refused.reason,
        detail: refused.detail,
    })
}

impl Ledger {
    /// Applies a vote whose signature was verified. Refusals are recorded (and returned)
    /// with a stable reason; see [`VoteResult`].
    pub async fn apply_vote(
        &self,
        vote: &VerifiedVote,
        origin: &Origin,
    ) -> anyhow::Result<VoteResult> {
        self.apply_vote_at(vote, origin, None).await
    }

    #[doc(hidden)]
    pub async fn apply_vote_at(
        &self,
        vote: &VerifiedVote,
        origin: &Origin,
        at: Option<DateTime<Utc>>,
    ) -> anyhow::Result<VoteResult> {
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
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        ws.reserve_seqs(&mut tx, 2).await?;

        let result = match agent {
            None => refuse(
                &mut ws,
                &chain_id,
                vote,
                "unknown_intent",
                format!("no decision is recorded for intent {}", vote.intent_id),
                now,
                origin,
            )?,
            Some(agent_id) => {
                let pending = load_pending(&mut tx, std::slice::from_ref(&vote.intent_id))
                    .await?
                    .pop();
                match pending {
                    None => {
                        let outcome: Option<String> = sqlx::query_scalar(
                            "SELECT outcome FROM intent_outcome WHERE intent_id = $1",
                        )
                        .bind(&vote.intent_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                        match outcome {
                            Some(o) => refuse(
                                &mut ws,
                                &chain_id,
                                vote,
                                "already_closed",
                                format!("intent {} is already closed as {o}", vote.intent_id),
                                now,
                                origin,
                            )?,
                            None => refuse(
                                &mut ws,
                                &chain_id,
                                vote,
                                "not_awaiting_approval",
                                format!(
                                    "intent {} was not decided REQUIRE_HITL or REQUIRE_MSIG",
                                    vote.intent_id
                                ),
                                now,
                                origin,
                            )?,
                        }
                    }
                    Some(p) if now >= p.expires_at => {
                        let approvers = approvers_so_far(&mut tx, &p.intent_id).await?;
                        close(
                            &mut ws,
                            &p,
                            Outcome::Expired,
                            approvers,
                            None,
                            now,
                            "spendguard",
                            origin,
                        )?;
                        refuse(
                            &mut ws,
                            &chain_id,
                            vote,
                            "expired",
                            format!(
                                "the approval window of intent {} closed at {}",
                                p.intent_id,
                                chain::format_time(&p.expires_at)
                            ),
                            now,
                            origin,
                        )?
                    }
                    Some(_) if vote.approver_id == agent_id => refuse(
                        &mut ws,
                        &chain_id,
                        vote,
                        "self_approval",
                        format!("approver {} is the requesting agent", vote.approver_id),
                        now,
                        origin,
                    )?,
                    Some(p) => {
                        let voted: Vec<(String, String)> =
                            sqlx::query_as("SELECT approver_id, vote FROM approval_vote WHERE intent_id = $1 ORDER BY seq")
                                .bind(&p.intent_id)
                                .fetch_all(&mut *tx)
                                .await?;
                        if voted.iter().any(|(a, _)| a == &vote.approver_id) {
                            refuse(
                                &mut ws,
                                &chain_id,
                                vote,
                                "duplicate_approver",
                                format!(
                                    "approver {} already voted on intent {}",
                                    vote.approver_id, p.intent_id
                                ),
                                now,
                                origin,
                            )?
                        } else {
                            self.accept(&mut tx, &mut ws, &chain_id, &p, vote, voted, now, origin)
                                .await?
                        }
                    }
                }
            }
        };
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

    #[allow(clippy::too_many_arguments)]
    async fn accept(
        &self,
        tx: &mut PgConnection,
        ws: &mut WriteSet,
        chain_id: &str,
        p: &Pending,
        vote: &VerifiedVote,
        voted: Vec<(String, String)>,
        now: DateTime<Utc>,
        origin: &Origin,
    ) -> anyhow::Result<VoteResult> {
        let payload = events::VoteAccepted {
            intent_id: vote.intent_id.clone(),
            approver_id: vote.approver_id.clone(),
            vote: vote.vote.as_str().to_string(),
            signed_at: chain::to_micros(vote.signed_at),
        };
        let seq = ws
            .append(
                chain_id,
                kind::VOTE_ACCEPTED,
                now,
                &vote.approver_id,
                &vote.intent_id,
                origin,
                &payload,
            )?
            .seq;
        ws.votes.push(VoteRow {
            intent_id: vote.intent_id.clone(),
            approver_id: vote.approver_id.clone(),
            vote: vote.vote.as_str().to_string(),
            signed_at: payload.signed_at,
            seq,
        });
        let outcome = match vote.vote {
            Vote::Reject => Some(close(
                ws,
                p,
                Outcome::Rejected,
                vec![vote.approver_id.clone()],
                None,
                now,
                &vote.approver_id,
                origin,
            )?),
            Vote::Approve => {
                let mut approvers: Vec<String> = voted
                    .into_iter()
                    .filter(|(_, v)| v == Vote::Approve.as_str())
                    .map(|(a, _)| a)
                    .collect();
                approvers.push(vote.approver_id.clone());
                if approvers.len() >= usize::try_from(p.approvals_required.max(1)).unwrap_or(1) {
                    let active: HashSet<String> = sqlx::query_scalar::<_, String>(
                        "SELECT scope FROM kill_switch WHERE active",
                    )
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();
                    Some(match kill_scope_for(&active, &p.agent_id, &p.entity_id) {
                        KillState::On { scope } => close(
                            ws,
                            p,
                            Outcome::Killed,
                            approvers,
                            Some(scope),
                            now,
                            &vote.approver_id,
                            origin,
                        )?,
                        KillState::Off => close(
                            ws,
                            p,
                            Outcome::Approved,
                            approvers,
                            None,
                            now,
                            &vote.approver_id,
                            origin,
                        )?,
                    })
                } else {
                    None
                }
            }
        };
        Ok(VoteResult::Accepted { seq, outcome })
    }

    /// [`Ledger::expire_due`] at the database's clock, the clock every other ledger
    /// time comes from (decisions, votes): an instance whose own clock is off can
    /// neither close a window early nor keep it open late.
    pub async fn expire_due_now(&self) -> anyhow::Result<Vec<OutcomeMessage>> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?;
        self.expire_due(now).await
    }

    /// Closes as EXPIRED every waiting intent whose approval window ended at `now`.
    /// Several instances may run this at once: each agent's intents are closed under
    /// the agent's lock and re-read after taking it, so an intent is closed once.
    pub async fn expire_due(&self, now: DateTime<Utc>) -> anyhow::Result<Vec<OutcomeMessage>> {
        let due: Vec<(String, String)> = sqlx::query_as(
            "SELECT intent_id, agent_id FROM pending_approval WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2",
        )
        .bind(now)
        .bind(EXPIRE_BATCH_MAX)
        .fetch_all(&self.pool)
        .await?;
        let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (intent, agent) in due {
            by_agent.entry(agent).or_default().push(intent);
        }
        let origin = Origin {
            instance: self.instance.clone(),
            source: "sweeper".into(),
            partition: None,
            offset: None,
        };
        let mut out = Vec::new();
        for (agent, intents) in by_agent {
            let chains = vec![agent_chain(&agent)];
            let mut tx = self.pool.begin().await?;
            store::lock_chains(&mut tx, &chains, None, false).await?;
            let still: Vec<Pending> = load_pending(&mut tx, &intents)
                .await?
                .into_iter()
                .filter(|p| p.expires_at <= now)
                .collect();
            if still.is_empty() {
                tx.rollback().await?;
                continue;
            }
            let mut ws = WriteSet::default();
            ws.load_heads(&mut tx, &chains).await?;
            ws.reserve_seqs(&mut tx, still.len()).await?;
            let closed_at = chain::to_micros(now);
            for p in &still {
                let approvers = approvers_so_far(&mut tx, &p.intent_id).await?;
                out.push(close(
                    &mut ws,
                    p,
                    Outcome::Expired,
                    approvers,
                    None,
                    closed_at,
                    "spendguard",
                    &origin,
                )?);
            }
            ws.flush(&mut tx).await?;
            tx.commit().await?;
        }
        Ok(out)
    }
}

async fn approvers_so_far(conn: &mut PgConnection, intent_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT approver_id FROM approval_vote WHERE intent_id = $1 AND vote = 'APPROVE' ORDER BY seq")
        .bind(intent_id)
        .fetch_all(conn)
        .await
}
