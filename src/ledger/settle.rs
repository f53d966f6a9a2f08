//! The authorization lifecycle's I/O (SPEC §11): applying settlement messages and
//! releasing expired authorizations. The rules are `machine::step_settle` and
//! `machine::step_expire_authorizations` (the money itself: `authorization`); this
//! module loads their snapshot under the agent's chain lock, the same lock deciding
//! takes, so a capture and a new intent of one agent never race past a cap and two
//! captures of one intent never both see the same remainder.

use super::chain::{self, INTAKE_CHAIN, agent_chain};
use super::events::{self, LedgerEvent, Origin};
use super::machine::{self, Projections, SettleInput, SettleStep, SettledIntent};
use super::store::{
    self, AuthorizationRow, OutcomeRow, PendingRow, SettlementRow, VoteRow, WriteSet,
};
use super::votes::{OUTCOME_COLUMNS, PENDING_COLUMNS, VOTE_COLUMNS};
use super::{Ledger, LedgerError, OutcomeMessage};
use crate::decision::Effect;
use crate::policy::PolicySet;
use crate::privacy;
use crate::settlement::{Settlement, SettlementError};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use std::collections::HashMap;

/// The columns of `authorization_state` and `settlement`, in their row types' order.
pub(crate) const AUTHORIZATION_COLUMNS: &str = "intent_id, agent_id, entity_id, authorized, captured, voided, refunded, restored, expired_amount, is_final, expired, expires_at, currency, tz, day, month, seq, fx_rate, usage_currency";
pub(crate) const SPEND_RECORD_COLUMNS: &str = "intent_id, agent_id, entity_id, accepted_at, category, beneficiary_id, country, purpose, currency, amount, counts, seq";
pub(crate) const SETTLEMENT_COLUMNS: &str =
    "settlement_id, intent_id, agent_id, fingerprint, seq, message";

/// Most settlement messages one transaction applies (bounds lock hold time).
pub const MAX_SETTLE_BATCH: usize = 256;

/// The result already computed in this batch for the message recorded as `seq`.
fn results_of_seq(results: &[SettleResult], seq: i64) -> Result<SettleResult, LedgerError> {
    results
        .iter()
        .find(|r| match r {
            SettleResult::Applied { seq: s, .. } | SettleResult::Refused { seq: s, .. } => {
                *s == seq
            }
            SettleResult::Redelivered { .. } => false,
        })
        .map(|r| match r {
            SettleResult::Applied { outcome, .. } => SettleResult::Redelivered {
                outcome: outcome.clone(),
            },
            other => other.clone(),
        })
        .ok_or_else(|| LedgerError::Bug(format!("no result for seq {seq} in this batch")))
}

/// Source topic and `intake_record` kind of settlement messages.
pub const SETTLEMENTS_TOPIC: &str = "spend.settlements";
const SETTLEMENT_APPLIED_KEY: &str = "settlement_handled";

/// What a settlement message did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum SettleResult {
    /// Applied now: its event and the outcome published on `spend.decisions`.
    Applied {
        seq: i64,
        outcome: Box<OutcomeMessage>,
    },
    /// Applied before with the same payload: the outcome recorded then.
    Redelivered { outcome: Box<OutcomeMessage> },
    /// Refused and audited (`settlement_refused`); `code` is stable (SPEC §11).
    Refused {
        seq: i64,
        code: String,
        detail: String,
    },
}

impl SettleResult {
    pub fn outcome(&self) -> Option<&OutcomeMessage> {
        match self {
            SettleResult::Applied { outcome, .. } | SettleResult::Redelivered { outcome } => {
                Some(outcome)
            }
            SettleResult::Refused { .. } => None,
        }
    }
}

/// The lifecycle state of `intent_ids`: authorizations, pending approvals, outcomes,
/// and the rows of `settlement_ids`, with their outcome messages by settlementId (the
/// projections keep only what idempotency needs; a redelivery is answered with the
/// message). Call under the agents' locks.
pub(super) async fn load_lifecycle(
    conn: &mut PgConnection,
    intent_ids: &[String],
    settlement_ids: &[String],
) -> Result<(Projections, HashMap<String, String>), LedgerError> {
    let mut s = Projections::default();
    let mut messages = HashMap::new();
    let sql = format!(
        "SELECT {AUTHORIZATION_COLUMNS} FROM authorization_state WHERE intent_id = ANY($1)"
    );
    for a in sqlx::query_as::<_, AuthorizationRow>(sqlx::AssertSqlSafe(sql))
        .bind(intent_ids)
        .fetch_all(&mut *conn)
        .await?
    {
        s.insert_authorization(a);
    }
    let sql = format!("SELECT {PENDING_COLUMNS} FROM pending_approval WHERE intent_id = ANY($1)");
    for p in sqlx::query_as::<_, PendingRow>(sqlx::AssertSqlSafe(sql))
        .bind(intent_ids)
        .fetch_all(&mut *conn)
        .await?
    {
        s.pending.insert(p);
    }
    // A settlement that cancels an intent still waiting for approval names the approvals
    // so far in its outcome, as the pure step does from the full projections (replay).
    let sql = format!("SELECT {VOTE_COLUMNS} FROM approval_vote WHERE intent_id = ANY($1)");
    for v in sqlx::query_as::<_, VoteRow>(sqlx::AssertSqlSafe(sql))
        .bind(intent_ids)
        .fetch_all(&mut *conn)
        .await?
    {
        s.votes
            .insert((v.intent_id.clone(), v.approver_id.clone()), v);
    }
    let sql = format!("SELECT {OUTCOME_COLUMNS} FROM intent_outcome WHERE intent_id = ANY($1)");
    for o in sqlx::query_as::<_, OutcomeRow>(sqlx::AssertSqlSafe(sql))
        .bind(intent_ids)
        .fetch_all(&mut *conn)
        .await?
    {
        s.outcomes.insert(o.intent_id.clone(), o);
    }
    if !settlement_ids.is_empty() {
        let sql =
            format!("SELECT {SETTLEMENT_COLUMNS} FROM settlement WHERE settlement_id = ANY($1)");
        for st in sqlx::query_as::<_, SettlementRow>(sqlx::AssertSqlSafe(sql))
            .bind(settlement_ids)
            .fetch_all(&mut *conn)
            .await?
        {
            s.settlements.insert(
                machine::intent_key(&st.settlement_id),
                machine::AppliedSettlement::of(&st),
            );
            messages.insert(st.settlement_id, st.message);
        }
    }
    Ok((s, messages))
}

/// A recorded outcome message, read back.
fn outcome_of(text: &str) -> Result<Box<OutcomeMessage>, LedgerError> {
    serde_json::from_str(text)
        .map(Box::new)
        .map_err(|e| LedgerError::Corrupt(format!("settlement outcome does not parse: {e}")))
}

impl Ledger {
    /// The keyed fingerprint the ledger records for a settlement.
    pub fn settlement_fingerprint(&self, s: &Settlement) -> [u8; 32] {
        self.fingerprint(s.canonical_json().as_bytes())
    }

    /// Applies one settlement message (SPEC §11). Refusals are recorded and returned
    /// with a stable code; see [`SettleResult`].
    pub async fn settle(
        &self,
        set: &PolicySet,
        settlement: &Settlement,
        origin: &Origin,
    ) -> Result<SettleResult, LedgerError> {
        self.settle_at(set, settlement, origin, None).await
    }

    /// [`Ledger::settle`] as if the ledger received it at `at` (tests of expiry).
    #[doc(hidden)]
    pub async fn settle_at(
        &self,
        set: &PolicySet,
        settlement: &Settlement,
        origin: &Origin,
        at: Option<DateTime<Utc>>,
    ) -> Result<SettleResult, LedgerError> {
        let mut out = self
            .settle_batch_at(set, &[(settlement.clone(), origin.clone())], at)
            .await?;
        out.pop()
            .ok_or_else(|| LedgerError::Bug("empty settlement batch result".into()))
    }

    /// Applies several settlement messages in one transaction, in order (the agents'
    /// locks held throughout: the same rules as one at a time). The error is a failure
    /// of the whole transaction (nothing recorded).
    pub async fn settle_batch(
        &self,
        set: &PolicySet,
        items: &[(Settlement, Origin)],
    ) -> Result<Vec<SettleResult>, LedgerError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_SETTLE_BATCH) {
            out.extend(self.settle_batch_at(set, chunk, None).await?);
        }
        Ok(out)
    }

    #[doc(hidden)]
    pub async fn settle_batch_at(
        &self,
        set: &PolicySet,
        items: &[(Settlement, Origin)],
        at: Option<DateTime<Utc>>,
    ) -> Result<Vec<SettleResult>, LedgerError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        assert!(
            items.len() <= MAX_SETTLE_BATCH,
            "settlement batch too large"
        );
        let intent_ids: Vec<String> = items.iter().map(|(s, _)| s.intent_id.clone()).collect();
        let settlement_ids: Vec<String> =
            items.iter().map(|(s, _)| s.settlement_id.clone()).collect();
        // Decision rows never change once written: reading them before the locks is safe.
        let decided: HashMap<String, (String, String, Effect)> = sqlx::query_as::<
            _,
            (String, String, String, String),
        >(
            "SELECT intent_id, agent_id, entity_id, effect FROM decision WHERE intent_id = ANY($1)",
        )
        .bind(&intent_ids)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|(i, a, e, effect)| {
            let effect = Effect::parse(&effect).ok_or_else(|| {
                LedgerError::Corrupt(format!("decision of intent {i} has effect {effect:?}"))
            })?;
            Ok((i, (a, e, effect)))
        })
        .collect::<Result<_, LedgerError>>()?;
        let intent_of = |s: &Settlement| {
            decided
                .get(&s.intent_id)
                .map(|(agent_id, entity_id, effect)| SettledIntent {
                    agent_id,
                    entity_id,
                    effect: *effect,
                })
        };
        let mut chains: Vec<String> = items
            .iter()
            .map(|(s, _)| {
                intent_of(s).map_or_else(|| INTAKE_CHAIN.to_string(), |i| agent_chain(i.agent_id))
            })
            .collect();
        chains.sort();
        chains.dedup();
        // A forced capture raises usage: under entity-scoped limits it takes the
        // entity's lock, like deciding does.
        let mut locks = chains.clone();
        for (s, _) in items {
            if let Some(i) = intent_of(s)
                && set
                    .resolve(i.agent_id, i.entity_id)
                    .as_deref()
                    .is_some_and(super::decide::has_entity_limits)
            {
                locks.push(super::decide::entity_limits_lock(i.entity_id));
            }
        }
        let mut tx = self.pool.begin().await?;
        let db_now = store::lock_chains(&mut tx, &locks, None, false).await?;
        let now = chain::to_micros(at.unwrap_or(db_now));
        let (mut snapshot, messages) =
            load_lifecycle(&mut tx, &intent_ids, &settlement_ids).await?;
        let mut ws = WriteSet::default();
        ws.load_heads(&mut tx, &chains).await?;
        // Messages handled before (a redelivery, or a retry after a COMMIT of unknown
        // outcome) get their recorded result, not a second event.
        let mut handled_before = Vec::with_capacity(items.len());
        for (_, origin) in items {
            handled_before.push(
                match store::IntakeKey::of(origin, SETTLEMENTS_TOPIC, SETTLEMENT_APPLIED_KEY) {
                    Some(key) => key.recorded(&mut tx).await?,
                    None => None,
                },
            );
        }
        let fingerprints: Vec<[u8; 32]> = items
            .iter()
            .map(|(s, _)| self.settlement_fingerprint(s))
            .collect();
        // Sequence numbers: one per message that appends an event. A repeat of a
        // settlement already applied appends nothing; a repeat of one first seen in this
        // batch appends only if that one was refused (then one more is reserved below),
        // so no number is ever left unused.
        let mut seen = std::collections::HashSet::new();
        let needed = items
            .iter()
            .zip(&fingerprints)
            .zip(&handled_before)
            .filter(|(((s, _), fp), before)| {
                before.is_none()
                    && snapshot
                        .settlements
                        .get(&machine::intent_key(&s.settlement_id))
                        .is_none_or(|r| r.fingerprint != Some(**fp))
                    && seen.insert((s.settlement_id.as_str(), **fp))
            })
            .count();
        ws.reserve_seqs(&mut tx, needed).await?;
        let mut results = Vec::with_capacity(items.len());
        let mut intake: Vec<(store::IntakeKey<'_>, i64)> = Vec::new();
        for (((settlement, origin), fingerprint), before) in
            items.iter().zip(&fingerprints).zip(&handled_before)
        {
            let intake_key =
                store::IntakeKey::of(origin, SETTLEMENTS_TOPIC, SETTLEMENT_APPLIED_KEY);
            if let Some(key) = &intake_key {
                // The same Kafka message twice in this batch: the first one's result.
                if let Some((_, seq)) = intake.iter().find(|(k, _)| k.same_message(key)) {
                    results.push(results_of_seq(&results, *seq)?);
                    continue;
                }
                if let Some(seq) = before {
                    results.push(recorded_result(&mut tx, *seq).await?);
                    continue;
                }
            }
            let intent = intent_of(settlement);
            let restore_refunds = intent
                .and_then(|i| set.resolve(i.agent_id, i.entity_id))
                .is_some_and(|p| p.refunds_restore);
            let step = machine::step_settle(
                &snapshot,
                intent,
                SettleInput {
                    settlement,
                    fingerprint: *fingerprint,
                    now,
                    restore_refunds,
                },
            );
            let (staged, refusal) = match step {
                SettleStep::Redelivered(earlier) => {
                    // Applied before this batch (its row was loaded), or earlier in it.
                    results.push(match messages.get(&settlement.settlement_id) {
                        Some(text) => SettleResult::Redelivered {
                            outcome: outcome_of(text)?,
                        },
                        None => results_of_seq(&results, earlier.seq)?,
                    });
                    continue;
                }
                SettleStep::Refused(staged, code) => (staged, Some(code)),
                SettleStep::Applied(staged) => (staged, None),
            };
            if !ws.has_reserved_seq() {
                ws.reserve_seqs(&mut tx, 1).await?;
            }
            let appended = ws.record(&mut snapshot, &staged, now, origin)?;
            let seq = appended.recorded.seq;
            results.push(match (refusal, appended.outcome) {
                (Some(code), _) => SettleResult::Refused {
                    seq,
                    code: code.as_str().to_string(),
                    detail: refused_detail(&staged),
                },
                (None, Some(outcome)) => SettleResult::Applied {
                    seq,
                    outcome: Box::new(outcome),
                },
                (None, None) => {
                    return Err(LedgerError::Bug(
                        "an applied settlement folded into no outcome".into(),
                    ));
                }
            });
            if let Some(key) = intake_key {
                intake.push((key, seq));
            }
        }
        let lease = self.direct_lease();
        let leased = ws
            .flush_leasing(&mut tx, lease.as_ref().map(|l| l.claimer))
            .await?;
        for (key, seq) in &intake {
            key.record(&mut tx, *seq).await?;
        }
        tx.commit().await?;
        if let Some(lease) = lease {
            lease.hand_over(leased);
        }
        Ok(results)
    }

    /// Records a settlement message that does not parse (`settlement_refused` with its
    /// parse code, chain `intake`).
    pub async fn record_invalid_settlement(
        &self,
        raw: &[u8],
        err: &SettlementError,
        origin: &Origin,
    ) -> Result<i64, LedgerError> {
        let (text, _) = super::stored_raw(raw);
        let (actor, resource) = super::ids_from_raw(raw, "settlementId", "intentId");
        let payload = events::SettlementRefused {
            settlement_id: (actor != "unknown").then(|| actor.clone()),
            intent_id: (resource != "unknown").then(|| resource.clone()),
            kind: None,
            code: err.code.to_string(),
            detail: privacy::mask_pans(&err.message),
            fingerprint: hex::encode(self.fingerprint(raw)),
            raw: Some(text),
        };
        self.append_single(
            INTAKE_CHAIN,
            "unknown",
            &resource,
            (origin, SETTLEMENTS_TOPIC),
            LedgerEvent::SettlementRefused(payload),
        )
        .await
    }

    /// [`Ledger::expire_authorizations`] at the database's clock.
    pub async fn expire_authorizations_now(&self) -> Result<Vec<OutcomeMessage>, LedgerError> {
        let now = self.db_now().await?;
        self.expire_authorizations(now).await
    }

    /// Releases every open authorization whose `authorizationTtl` ended at `now`
    /// (AUTH_EXPIRED). Safe with several instances (see `sweep`).
    pub async fn expire_authorizations(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutcomeMessage>, LedgerError> {
        self.sweep(super::sweep::Sweep::Authorizations, now).await
    }

    /// The authorization of an intent (SPEC §11), if it has one.
    pub async fn authorization(
        &self,
        intent_id: &str,
    ) -> Result<Option<AuthorizationRow>, LedgerError> {
        let sql =
            format!("SELECT {AUTHORIZATION_COLUMNS} FROM authorization_state WHERE intent_id = $1");
        Ok(
            sqlx::query_as::<_, AuthorizationRow>(sqlx::AssertSqlSafe(sql))
                .bind(intent_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }
}

fn refused_detail(staged: &machine::Staged) -> String {
    match &staged.event {
        LedgerEvent::SettlementRefused(r) => r.detail.clone(),
        _ => String::new(),
    }
}

/// What handling a settlement message returned the first time, read back from its event.
async fn recorded_result(tx: &mut PgConnection, seq: i64) -> Result<SettleResult, LedgerError> {
    let (event_type, payload): (String, String) =
        sqlx::query_as("SELECT event_type, payload FROM ledger_event WHERE seq = $1")
            .bind(seq)
            .fetch_one(&mut *tx)
            .await?;
    match LedgerEvent::parse(&event_type, &payload)? {
        LedgerEvent::SettlementRefused(r) => Ok(SettleResult::Refused {
            seq,
            code: r.code,
            detail: r.detail,
        }),
        LedgerEvent::SettlementApplied(_) | LedgerEvent::IntentClosed(_) => {
            let text: String = sqlx::query_scalar("SELECT message FROM settlement WHERE seq = $1")
                .bind(seq)
                .fetch_one(&mut *tx)
                .await?;
            Ok(SettleResult::Redelivered {
                outcome: outcome_of(&text)?,
            })
        }
        other => Err(LedgerError::Corrupt(format!(
            "intake record of a settlement points at seq {seq}, a {} event",
            other.kind()
        ))),
    }
}
