//! The one decision path: idempotency check, usage windows, kill switch, evaluation,
//! event + outbox + projections, all in one transaction holding the agents' locks.
//!
//! Per batch (any number of intents, any agents): BEGIN; lock the kill-switch key
//! (shared) and the agents' chains (exclusive, sorted); read chain heads, kill switch,
//! earlier decisions of these intentIds, and the usage rows; evaluate every intent in
//! order against in-memory state (so intents of one batch see each other); write with
//! one statement per table; COMMIT. Intents of one agent are decided in input order.

use super::chain::{self, agent_chain};
use super::events::{self, Origin, kind};
use super::store::{self, DECISIONS_TOPIC, DecisionRow, PendingRow, WriteSet};
use super::usage;
use super::{DecideStatus, Decided, Ledger, LedgerError};
use crate::decision::{DecisionMessage, Effect, KillState, Usage, UsageReport, WindowRef};
use crate::intent::SpendIntent;
use crate::policy::{self, CompiledPolicy, EvalInput, PolicySet};
use crate::privacy;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Most intents one `decide_batch` transaction takes (bounds lock hold time and memory).
pub const MAX_BATCH: usize = 1_000;

struct Existing {
    seq: i64,
    fingerprint: Vec<u8>,
    decision_hash: Vec<u8>,
    message: String,
}

/// The kill-switch scope covering an intent, if any (global first, then entity, agent).
pub fn kill_scope_for(active: &HashSet<String>, agent_id: &str, entity_id: &str) -> KillState {
    for scope in [
        "global".to_string(),
        format!("entity:{entity_id}"),
        format!("agent:{agent_id}"),
    ] {
        if active.contains(&scope) {
            return KillState::On { scope };
        }
    }
    KillState::Off
}

/// The intent as stored in events: account masked, every PAN-looking string masked.
pub fn masked_intent(intent: &SpendIntent) -> serde_json::Value {
    // The intent as given (amount keeps its scale: replay must see exactly the same
    // input); the canonical form is only used for the fingerprint.
    let mut v = serde_json::to_value(intent).unwrap_or(serde_json::Value::Null);
    if let Some(account) = &intent.beneficiary.account
        && let Some(b) = v.get_mut("beneficiary").and_then(|b| b.as_object_mut())
    {
        b.insert(
            "account".into(),
            serde_json::Value::String(privacy::mask_account(account)),
        );
    }
    privacy::mask_pans_in_json(&mut v);
    v
}

impl Ledger {
    /// Decides one intent (see [`Ledger::decide_batch`]).
    pub async fn decide(
        &self,
        set: &PolicySet,
        intent: &SpendIntent,
        origin: &Origin,
    ) -> Result<Decided, LedgerError> {
        let mut out = self
            .decide_batch_at(set, &[(intent.clone(), origin.clone())], None)
            .await?;
        out.pop().unwrap_or_else(|| {
            Err(LedgerError::Internal(anyhow::anyhow!(
                "internal: empty batch result"
            )))
        })
    }

    /// Decides one intent as if the ledger accepted it at `at` (tests of window
    /// boundaries; production code uses the database clock through `decide`).
    #[doc(hidden)]
    pub async fn decide_at(
        &self,
        set: &PolicySet,
        intent: &SpendIntent,
        origin: &Origin,
        at: DateTime<Utc>,
    ) -> Result<Decided, LedgerError> {
        let mut out = self
            .decide_batch_at(set, &[(intent.clone(), origin.clone())], Some(at))
            .await?;
        out.pop().unwrap_or_else(|| {
            Err(LedgerError::Internal(anyhow::anyhow!(
                "internal: empty batch result"
            )))
        })
    }

    /// Decides several intents in one transaction (in order). The outer error is a
    /// failure of the whole transaction (nothing recorded); inner results are per intent.
    pub async fn decide_batch(
        &self,
        set: &PolicySet,
        items: &[(SpendIntent, Origin)],
    ) -> Result<Vec<Result<Decided, LedgerError>>, LedgerError> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(MAX_BATCH) {
            out.extend(self.decide_batch_at(set, chunk, None).await?);
        }
        Ok(out)
    }

    #[doc(hidden)]
    pub async fn decide_batch_at(
        &self,
        set: &PolicySet,
        items: &[(SpendIntent, Origin)],
        at: Option<DateTime<Utc>>,
    ) -> Result<Vec<Result<Decided, LedgerError>>, LedgerError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Policies are resolved outside the transaction (in memory); any identity not yet
        // recorded is recorded first, so replay can always find the version used.
        let policies: Vec<Option<Arc<CompiledPolicy>>> = items
            .iter()
            .map(|(i, _)| set.resolve(&i.agent_id, &i.entity_id))
            .collect();
        let unrecorded: Vec<_> = policies
            .iter()
            .flatten()
            .filter(|p| !self.is_activated(&p.identity.sha256))
            .map(|p| (p.identity.clone(), p.canonical_json().to_string()))
            .collect();
        if !unrecorded.is_empty() {
            self.activate(unrecorded, "spendguard", &items[0].1).await?;
        }
        let fingerprints: Vec<[u8; 32]> = items
            .iter()
            .map(|(i, _)| self.fingerprint(i.canonical_json().as_bytes()))
            .collect();

        let mut chains: Vec<String> = items
            .iter()
            .map(|(i, _)| agent_chain(&i.agent_id))
            .collect();
        chains.sort();
        chains.dedup();

        let mut tx = self.pool.begin().await?;
        let db_now = store::lock_chains(&mut tx, &chains, None, true).await?;
        let now = chain::to_micros(at.unwrap_or(db_now));

        // Window keys of every intent that has a policy.
        let mut wanted = Vec::new();
        let mut windows = Vec::with_capacity(items.len());
        for ((intent, _), policy) in items.iter().zip(&policies) {
            let w = policy
                .as_ref()
                .map(|p| usage::keys(&intent.agent_id, p.tz, p.currency.code, now));
            if let Some((d, m, _)) = &w {
                wanted.push(d.clone());
                wanted.push(m.clone());
            }
            windows.push(w);
        }
        wanted.sort();
        wanted.dedup();

        // Everything the batch reads, in one round trip and one statement issued after
        // the locks are held (READ COMMITTED: its snapshot is taken now, so it sees every
        // decision, window and kill-switch change committed before we got the locks).
        let mut ws = WriteSet::default();
        let ids: Vec<&str> = items.iter().map(|(i, _)| i.intent_id.as_str()).collect();
        let mut active_kills: HashSet<String> = HashSet::new();
        let mut existing: HashMap<String, Existing> = HashMap::new();
        let mut usage_state = usage::UsageState::new();
        for r in sqlx::query(
            "SELECT 'h'::text AS k, chain_id AS s1, NULL::text AS s2, NULL::text AS s3, NULL::text AS s4,
                    NULL::date AS d, chain_pos AS i, hash AS b1, NULL::bytea AS b2,
                    NULL::numeric AS n1, NULL::numeric AS n2
             FROM chain_head WHERE chain_id = ANY($1)
             UNION ALL
             SELECT 'k', scope, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
             FROM kill_switch WHERE active
             UNION ALL
             SELECT 'e', intent_id, message, NULL, NULL, NULL, seq, fingerprint, decision_hash, NULL, NULL
             FROM decision WHERE intent_id = ANY($2)
             UNION ALL
             SELECT 'u', u.agent_id, u.kind, u.tz, u.currency, u.window_start, NULL, NULL, NULL,
                    u.committed, u.reserved
             FROM usage_window u
             JOIN unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::date[])
               AS w(agent_id, kind, tz, currency, window_start)
               USING (agent_id, kind, tz, currency, window_start)",
        )
        .bind(&chains)
        .bind(&ids)
        .bind(wanted.iter().map(|k| k.agent_id.as_str()).collect::<Vec<_>>())
        .bind(wanted.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>())
        .bind(wanted.iter().map(|k| k.tz.as_str()).collect::<Vec<_>>())
        .bind(wanted.iter().map(|k| k.currency.as_str()).collect::<Vec<_>>())
        .bind(wanted.iter().map(|k| k.start).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?
        {
            match r.try_get::<&str, _>("k")? {
                "h" => {
                    let bytes: Vec<u8> = r.try_get("b1")?;
                    let mut hash = chain::GENESIS;
                    if bytes.len() == hash.len() {
                        hash.copy_from_slice(&bytes);
                    }
                    ws.heads.insert(r.try_get("s1")?, r.try_get("i")?, hash);
                }
                "k" => {
                    active_kills.insert(r.try_get("s1")?);
                }
                "e" => {
                    existing.insert(
                        r.try_get("s1")?,
                        Existing {
                            seq: r.try_get("i")?,
                            fingerprint: r.try_get("b1")?,
                            decision_hash: r.try_get("b2")?,
                            message: r.try_get("s2")?,
                        },
                    );
                }
                "u" => {
                    let k = usage::UsageKey {
                        agent_id: r.try_get("s1")?,
                        kind: r.try_get("s2")?,
                        tz: r.try_get("s3")?,
                        currency: r.try_get("s4")?,
                        start: r.try_get("d")?,
                    };
                    usage_state.insert(k, (r.try_get("n1")?, r.try_get("n2")?));
                }
                other => {
                    return Err(LedgerError::Internal(anyhow::anyhow!(
                        "internal: unexpected row kind {other:?} in the batch read"
                    )));
                }
            }
        }

        // Events this batch appends: one per new intent and one per conflict (a second
        // copy of an intentId in the batch is judged against the first).
        let needed = {
            let mut fps: HashMap<&str, &[u8]> = existing
                .iter()
                .map(|(k, e)| (k.as_str(), e.fingerprint.as_slice()))
                .collect();
            let mut n = 0;
            for ((i, _), fp) in items.iter().zip(&fingerprints) {
                match fps.get(i.intent_id.as_str()) {
                    Some(prev) if *prev == fp.as_slice() => {}
                    Some(_) => n += 1,
                    None => {
                        fps.insert(i.intent_id.as_str(), fp.as_slice());
                        n += 1;
                    }
                }
            }
            n
        };
        ws.reserve_seqs(&mut tx, needed).await?;

        // Subject keys for intents carrying personal data.
        let subjects: Vec<String> = {
            let mut s: Vec<String> = items
                .iter()
                .filter(|(i, _)| i.beneficiary.account.is_some())
                .map(|(i, _)| i.beneficiary.id.clone())
                .collect();
            s.sort();
            s.dedup();
            s
        };
        let keys = if subjects.is_empty() {
            HashMap::new()
        } else {
            subject_keys(&mut tx, &subjects).await?
        };

        let mut results: Vec<Result<Decided, LedgerError>> = Vec::with_capacity(items.len());
        for (idx, (intent, origin)) in items.iter().enumerate() {
            let fp = fingerprints[idx];
            if let Some(e) = existing.get(&intent.intent_id) {
                if e.fingerprint == fp {
                    let message: DecisionMessage =
                        serde_json::from_str(&e.message).map_err(anyhow::Error::from)?;
                    results.push(Ok(Decided {
                        message,
                        decision_hash: hex::encode(&e.decision_hash),
                        status: DecideStatus::Redelivered,
                    }));
                } else {
                    let payload = events::IdempotencyConflict {
                        intent_id: intent.intent_id.clone(),
                        fingerprint: hex::encode(fp),
                        existing_fingerprint: hex::encode(&e.fingerprint),
                        existing_seq: e.seq,
                    };
                    let chain_id = agent_chain(&intent.agent_id);
                    let audit_seq = ws
                        .append(
                            &chain_id,
                            kind::IDEMPOTENCY_CONFLICT,
                            now,
                            &intent.agent_id,
                            &intent.intent_id,
                            origin,
                            &payload,
                        )?
                        .seq;
                    results.push(Err(LedgerError::IdempotencyConflict {
                        intent_id: intent.intent_id.clone(),
                        existing_seq: e.seq,
                        audit_seq,
                    }));
                }
                continue;
            }

            let policy = policies[idx].as_deref();
            let kill = kill_scope_for(&active_kills, &intent.agent_id, &intent.entity_id);
            let (usage_seen, report) = match (&windows[idx], policy) {
                (Some((d, m, w)), Some(p)) => {
                    let u = Usage {
                        daily_so_far: usage::total(&usage_state, d),
                        monthly_so_far: usage::total(&usage_state, m),
                    };
                    let report = UsageReport {
                        daily_so_far: u.daily_so_far,
                        monthly_so_far: u.monthly_so_far,
                        window: WindowRef {
                            day: w.day,
                            month: w.month.format("%Y-%m").to_string(),
                            tz: p.tz.name().to_string(),
                        },
                    };
                    (u, Some(report))
                }
                _ => (Usage::default(), None),
            };
            let evaluated_from = std::time::Instant::now();
            let evaluation = match policy {
                Some(p) => policy::evaluate(
                    p,
                    &EvalInput {
                        intent,
                        usage: usage_seen,
                        kill: &kill,
                        accepted_at: now,
                    },
                ),
                None => policy::no_policy_bound(intent),
            };
            crate::telemetry::record_evaluation(
                evaluation.effect,
                policy.map_or("none", |p| p.identity.name.as_str()),
                evaluated_from.elapsed(),
            );
            let expires_at = (evaluation.effect.needs_approval())
                .then(|| policy.map(|p| chain::to_micros(now + p.approval_ttl)))
                .flatten();
            let seq = ws
                .peek_seq()
                .ok_or_else(|| anyhow::anyhow!("internal: ledger sequence pool exhausted"))?;
            let message = DecisionMessage {
                intent_id: intent.intent_id.clone(),
                agent_id: intent.agent_id.clone(),
                entity_id: intent.entity_id.clone(),
                effect: evaluation.effect,
                approvals_required: evaluation.approvals_required,
                reasons: evaluation.reasons.clone(),
                policy: policy.map(|p| p.identity.clone()),
                usage: report.clone(),
                decided_at: now,
                ledger_seq: Some(seq),
            };
            let personal = match (
                &intent.beneficiary.account,
                keys.get(&intent.beneficiary.id),
            ) {
                (Some(account), Some(key)) => {
                    let clear = serde_json::json!({ "account": account }).to_string();
                    Some(privacy::seal(
                        key,
                        &intent.beneficiary.id,
                        &intent.intent_id,
                        clear.as_bytes(),
                    ))
                }
                (Some(_), None) => {
                    return Err(LedgerError::Internal(anyhow::anyhow!(
                        "internal: no key for data subject {}",
                        intent.beneficiary.id
                    )));
                }
                _ => None,
            };
            let payload = events::IntentDecided {
                intent: masked_intent(intent),
                personal,
                fingerprint: hex::encode(fp),
                accepted_at: now,
                kill,
                policy: message.policy.clone(),
                usage: report,
                evaluation: evaluation.clone(),
                expires_at,
            };
            let chain_id = agent_chain(&intent.agent_id);
            let row = ws.append(
                &chain_id,
                kind::INTENT_DECIDED,
                now,
                &intent.agent_id,
                &intent.intent_id,
                origin,
                &payload,
            )?;
            debug_assert_eq!(row.seq, seq);
            let decision_hash = row.hash.to_vec();

            // Usage: ALLOW commits, HITL/MSIG reserves, DENY changes nothing.
            if let (Some((d, m, w)), Some(p)) = (&windows[idx], policy) {
                let amount = intent.amount;
                let (committed, reserved) = match evaluation.effect {
                    Effect::Allow => (amount, Decimal::ZERO),
                    Effect::RequireHitl | Effect::RequireMsig => (Decimal::ZERO, amount),
                    Effect::Deny => (Decimal::ZERO, Decimal::ZERO),
                };
                if !committed.is_zero() || !reserved.is_zero() {
                    for k in [d, m] {
                        usage::add(&mut usage_state, k, committed, reserved);
                        ws.add_usage(k.clone(), committed, reserved);
                    }
                }
                if let Some(expires_at) = expires_at {
                    ws.pending_insert.push(PendingRow {
                        intent_id: intent.intent_id.clone(),
                        agent_id: intent.agent_id.clone(),
                        entity_id: intent.entity_id.clone(),
                        effect: evaluation.effect.as_str().to_string(),
                        approvals_required: i32::try_from(evaluation.approvals_required.max(1))
                            .unwrap_or(i32::MAX),
                        amount,
                        currency: p.currency.code.to_string(),
                        tz: p.tz.name().to_string(),
                        day: w.day,
                        month: w.month,
                        decided_seq: seq,
                        expires_at,
                    });
                }
            }
            let message_text = serde_json::to_string(&message).map_err(anyhow::Error::from)?;
            ws.decisions.push(DecisionRow {
                intent_id: intent.intent_id.clone(),
                agent_id: intent.agent_id.clone(),
                entity_id: intent.entity_id.clone(),
                seq,
                fingerprint: fp.to_vec(),
                decision_hash: decision_hash.clone(),
                effect: evaluation.effect.as_str().to_string(),
                message: message_text.clone(),
            });
            ws.outbox.push((
                seq,
                DECISIONS_TOPIC.to_string(),
                intent.agent_id.clone(),
                message_text.clone(),
            ));
            // A second copy of this intentId later in the same batch sees this decision.
            existing.insert(
                intent.intent_id.clone(),
                Existing {
                    seq,
                    fingerprint: fp.to_vec(),
                    decision_hash: decision_hash.clone(),
                    message: message_text,
                },
            );
            results.push(Ok(Decided {
                message,
                decision_hash: hex::encode(decision_hash),
                status: DecideStatus::New,
            }));
        }
        ws.flush(&mut tx).await?;
        tx.commit().await?;
        Ok(results)
    }
}

/// The current key of each subject, created when missing.
async fn subject_keys(
    conn: &mut sqlx::PgConnection,
    subjects: &[String],
) -> Result<HashMap<String, privacy::SubjectKey>, LedgerError> {
    let fresh: Vec<privacy::SubjectKey> = subjects
        .iter()
        .map(|_| privacy::SubjectKey::generate())
        .collect();
    sqlx::query(
        "INSERT INTO subject_key (subject_id, key_id, key)
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::bytea[]) ON CONFLICT (subject_id) DO NOTHING",
    )
    .bind(subjects)
    .bind(fresh.iter().map(|k| k.key_id).collect::<Vec<_>>())
    .bind(fresh.iter().map(|k| k.key.to_vec()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    // A new statement: sees rows another transaction committed while we waited on them.
    let mut out = HashMap::new();
    for r in
        sqlx::query("SELECT subject_id, key_id, key FROM subject_key WHERE subject_id = ANY($1)")
            .bind(subjects)
            .fetch_all(&mut *conn)
            .await?
    {
        let key_bytes: Vec<u8> = r.try_get("key")?;
        if let Some(k) = privacy::SubjectKey::from_bytes(r.try_get("key_id")?, &key_bytes) {
            out.insert(r.try_get("subject_id")?, k);
        }
    }
    Ok(out)
}
