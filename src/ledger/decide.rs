//! The one decision path: idempotency check, usage windows, kill switch, evaluation,
//! event + outbox + projections, all in one transaction holding the agents' locks.
//!
//! Per batch (any number of intents, any agents): BEGIN; lock the kill-switch key
//! (shared) and the agents' chains (exclusive, sorted); read chain heads, kill switch,
//! earlier decisions of these intentIds, and the usage rows; evaluate every intent in
//! order against in-memory state (so intents of one batch see each other); write with
//! one statement per table; COMMIT. Intents of one agent are decided in input order.

use super::chain::{self, agent_chain};
use super::limit_usage::{LimitSubject, load_limit_records};
use super::machine::{self, DecideInput, DecideStep, Existing, Projections};
use super::store::{self, KillRow, WriteSet};
use super::usage;
use super::{DecideStatus, Decided, Ledger, LedgerError, Origin};
use crate::decision::DecisionMessage;
use crate::intent::SpendIntent;
use crate::policy::{CompiledPolicy, PolicySet};
use crate::privacy;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// Most intents one `decide_batch` transaction takes (bounds lock hold time and memory).
pub const MAX_BATCH: usize = 1_000;

impl Ledger {
    /// The keyed fingerprint the ledger records for an intent (HMAC of its canonical
    /// form): equal for a redelivery, different for another payload under the same id.
    pub fn intent_fingerprint(&self, intent: &SpendIntent) -> [u8; 32] {
        self.fingerprint(intent.canonical_json().as_bytes())
    }

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
        out.pop()
            .unwrap_or_else(|| Err(LedgerError::Bug("empty batch result".into())))
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
        out.pop()
            .unwrap_or_else(|| Err(LedgerError::Bug("empty batch result".into())))
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
        let shadows: Vec<Option<Arc<CompiledPolicy>>> = if set.bindings().has_shadow() {
            items
                .iter()
                .map(|(i, _)| {
                    let name = set.bindings().resolve_shadow(&i.agent_id, &i.entity_id)?;
                    set.get(name).cloned()
                })
                .collect()
        } else {
            vec![None; items.len()]
        };
        let unrecorded: Vec<_> = policies
            .iter()
            .chain(&shadows)
            .flatten()
            .filter(|p| !self.is_activated(&p.identity.sha256))
            .map(|p| (p.identity.clone(), p.canonical_json().to_string()))
            .collect();
        if !unrecorded.is_empty() {
            self.activate(unrecorded, "spendguard", &items[0].1).await?;
        }
        let bindings = self.bindings_version(set.bindings(), &items[0].1).await?;
        let fingerprints: Vec<[u8; 32]> = items
            .iter()
            .map(|(i, _)| self.intent_fingerprint(i))
            .collect();

        let mut chains: Vec<String> = items
            .iter()
            .map(|(i, _)| agent_chain(&i.agent_id))
            .collect();
        chains.sort();
        chains.dedup();

        // Entity-scoped limits (SPEC §12): agents of one entity are serialized by the
        // entity's lock, so two of them cannot pass an entity limit together.
        let mut locks = chains.clone();
        for ((intent, _), policy) in items.iter().zip(&policies) {
            if policy.as_deref().is_some_and(has_entity_limits) {
                locks.push(entity_limits_lock(&intent.entity_id));
            }
        }
        let mut clock = crate::telemetry::PhaseClock::start();
        let mut tx = self.pool.begin().await?;
        clock.lap("begin");
        let db_now = store::lock_chains(&mut tx, &locks, None, true).await?;
        clock.lap("lock");
        let now = chain::to_micros(at.unwrap_or(db_now));

        // Window keys of every intent that has a policy (or a shadow candidate).
        let mut wanted = Vec::new();
        let governing = policies.iter().zip(items).chain(shadows.iter().zip(items));
        for (policy, (intent, _)) in governing {
            if let Some(p) = policy {
                let (d, m, _) = usage::keys(&intent.agent_id, p.tz, p.currency.code, now);
                wanted.push(d);
                wanted.push(m);
            }
        }
        wanted.sort();
        wanted.dedup();

        let mut ws = WriteSet::default();
        let ids: Vec<&str> = items.iter().map(|(i, _)| i.intent_id.as_str()).collect();
        let agents: Vec<&str> = items.iter().map(|(i, _)| i.agent_id.as_str()).collect();
        let (mut snapshot, mut existing) =
            load_snapshot(&mut tx, &mut ws, &chains, &ids, &wanted, &agents).await?;
        let with_shadows = policies.iter().zip(items).chain(shadows.iter().zip(items));
        let limit_subjects = with_shadows.filter_map(|(p, (i, _))| {
            Some(LimitSubject {
                policy: p.as_deref()?,
                agent_id: Some(&i.agent_id),
                entity_id: &i.entity_id,
            })
        });
        load_limit_records(&mut tx, &mut snapshot, limit_subjects, now).await?;

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
        // The snapshot reserved one per intentId not decided yet, all of them needed;
        // conflicts and second copies in the batch (rare) take one more round trip.
        let reserved = ws.reserved_seqs();
        assert!(
            reserved <= needed,
            "{reserved} sequence numbers reserved for {needed} events: seqs would have gaps"
        );
        ws.reserve_seqs(&mut tx, needed - reserved).await?;

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
            super::subject_keys::for_subjects(&mut tx, self.key_wrap(), &subjects).await?
        };
        clock.lap("read");

        let mut results: Vec<Result<Decided, LedgerError>> = Vec::with_capacity(items.len());
        for (idx, (intent, origin)) in items.iter().enumerate() {
            let policy = policies[idx].as_deref();
            let personal = sealed_personal(intent, &keys)?;
            let evaluated_from = std::time::Instant::now();
            let step = machine::step_decide(
                &snapshot,
                existing.get(&intent.intent_id),
                DecideInput {
                    intent,
                    policy,
                    fingerprint: fingerprints[idx],
                    accepted_at: now,
                    personal,
                    bindings: Some(&bindings),
                },
            )
            .map_err(|e| LedgerError::Bug(e.to_string()))?;
            // The step's time: the rule and the event it stages, not the append.
            let evaluation_time = evaluated_from.elapsed();
            // On the same projections as the enforced step, before its decision folds in.
            let shadow = shadows[idx]
                .as_deref()
                .map(|c| machine::shadow_decision(&snapshot, intent, c, now));
            let mut staged = match step {
                DecideStep::Redelivered => {
                    let e = &existing[&intent.intent_id];
                    let message: DecisionMessage =
                        serde_json::from_str(&e.message).map_err(|err| {
                            LedgerError::Corrupt(format!(
                                "decision of intent {} (seq {}) does not parse: {err}",
                                intent.intent_id, e.seq
                            ))
                        })?;
                    results.push(Ok(Decided {
                        message,
                        decision_hash: hex::encode(&e.decision_hash),
                        status: DecideStatus::Redelivered,
                    }));
                    continue;
                }
                DecideStep::Conflict(staged) => {
                    let audit_seq = ws.record(&mut snapshot, &staged, now, origin)?.recorded.seq;
                    results.push(Err(LedgerError::IdempotencyConflict {
                        intent_id: intent.intent_id.clone(),
                        existing_seq: existing[&intent.intent_id].seq,
                        audit_seq,
                    }));
                    continue;
                }
                DecideStep::Decided(staged) => staged,
            };
            if let super::events::LedgerEvent::IntentDecided(d) = &mut staged.event {
                d.shadow = shadow;
            }
            let appended = ws.record(&mut snapshot, &staged, now, origin)?;
            if let machine::Staged {
                event: super::events::LedgerEvent::IntentDecided(d),
                ..
            } = &staged
            {
                crate::telemetry::record_evaluation(
                    d.evaluation.effect,
                    policy.map_or("none", |p| p.identity.name.as_str()),
                    evaluation_time,
                );
            }
            let (message, message_text) = appended.decision.ok_or_else(|| {
                LedgerError::Bug("an intent_decided event folded into no decision".into())
            })?;
            let decision_hash = appended.recorded.hash.to_vec();
            // A second copy of this intentId later in the same batch sees this decision.
            existing.insert(
                intent.intent_id.clone(),
                Existing {
                    seq: appended.recorded.seq,
                    fingerprint: fingerprints[idx].to_vec(),
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
        clock.lap("step");
        let lease = self.direct_lease();
        let leased = ws
            .flush_leasing(&mut tx, lease.as_ref().map(|l| l.claimer))
            .await?;
        clock.lap("write");
        tx.commit().await?;
        clock.lap("commit");
        if let Some(lease) = lease {
            lease.hand_over(leased);
        }
        Ok(results)
    }
}

/// Whether a policy has a limit summed over the agents of an entity.
pub(crate) fn has_entity_limits(p: &CompiledPolicy) -> bool {
    p.limits()
        .iter()
        .any(|l| l.scope == crate::policy::model::LimitScope::Entity)
}

/// The advisory-lock name that serializes an entity's agents while an entity-scoped
/// limit is checked or its usage can grow (deciding, forced captures).
pub(crate) fn entity_limits_lock(entity_id: &str) -> String {
    format!("entity-limits:{entity_id}")
}

/// The beneficiary's account sealed with the subject's key (the step is pure; sealing
/// draws a nonce, so it happens here).
fn sealed_personal(
    intent: &SpendIntent,
    keys: &HashMap<String, privacy::SubjectKey>,
) -> Result<Option<privacy::Sealed>, LedgerError> {
    let Some(account) = &intent.beneficiary.account else {
        return Ok(None);
    };
    let key = keys.get(&intent.beneficiary.id).ok_or_else(|| {
        LedgerError::Bug(format!("no key for data subject {}", intent.beneficiary.id))
    })?;
    let clear = serde_json::json!({ "account": account }).to_string();
    Ok(Some(privacy::seal(
        key,
        &intent.beneficiary.id,
        &intent.intent_id,
        clear.as_bytes(),
    )))
}

/// One row of the batch read, typed by its `k` tag (bytes as hex, amounts as exact
/// decimal text, so nothing goes through a float).
#[derive(serde::Deserialize)]
#[serde(tag = "k")]
enum SnapshotRow {
    #[serde(rename = "head", rename_all = "camelCase")]
    Head {
        chain_id: String,
        chain_pos: i64,
        hash: String,
    },
    #[serde(rename = "kill")]
    Kill(KillRow),
    #[serde(rename = "fx")]
    Fx(store::FxRateRow),
    #[serde(rename = "agentEntity")]
    AgentEntity(store::AgentEntityRow),
    #[serde(rename = "decided", rename_all = "camelCase")]
    Decided {
        intent_id: String,
        seq: i64,
        fingerprint: String,
        decision_hash: String,
        message: String,
    },
    /// Sequence numbers for the batch's events: one per intentId with no decision yet,
    /// each of which appends one event at least (a redelivery appends none, so it gets
    /// no number: seqs stay dense).
    #[serde(rename = "seqs")]
    Seqs { seqs: Vec<i64> },
    #[serde(rename = "window", rename_all = "camelCase")]
    Window {
        #[serde(flatten)]
        key: usage::UsageKey,
        #[serde(with = "rust_decimal::serde::str")]
        committed: rust_decimal::Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        reserved: rust_decimal::Decimal,
    },
}

/// Everything a batch reads, in one round trip and one statement issued after the
/// locks are held (READ COMMITTED: its snapshot is taken now, so it sees every
/// decision, window and kill-switch change committed before we got the locks): the
/// chain heads (into `ws`), the active kill switches and the wanted usage windows (the
/// step's snapshot), earlier decisions of these intentIds, and a sequence number per
/// intentId not decided yet (into `ws`; allocated under the locks, so within one chain
/// seq order is chain order; read in the same snapshot as the decisions). Each part is
/// one JSON object per row, decoded by name into [`SnapshotRow`].
async fn load_snapshot(
    tx: &mut sqlx::PgConnection,
    ws: &mut WriteSet,
    chains: &[String],
    ids: &[&str],
    wanted: &[usage::UsageKey],
    agents: &[&str],
) -> Result<(Projections, HashMap<String, Existing>), LedgerError> {
    let mut snapshot = Projections::default();
    let mut existing: HashMap<String, Existing> = HashMap::new();
    let rows: Vec<sqlx::types::Json<SnapshotRow>> = sqlx::query_scalar(
        "SELECT jsonb_build_object('k', 'head', 'chainId', chain_id, 'chainPos', chain_pos,
                                   'hash', encode(hash, 'hex'))
         FROM chain_head WHERE chain_id = ANY($1)
         UNION ALL
         SELECT jsonb_build_object('k', 'kill', 'scope', scope, 'active', active, 'actor', actor,
                                   'reason', reason, 'changed_at', changed_at, 'seq', seq)
         FROM kill_switch WHERE active
         UNION ALL
         SELECT jsonb_build_object('k', 'fx', 'pair', pair, 'rate', rate::text, 'set_at', set_at,
                                   'seq', seq)
         FROM fx_rate
         UNION ALL
         SELECT jsonb_build_object('k', 'agentEntity', 'agent_id', agent_id, 'entity_id', entity_id,
                                   'seq', seq)
         FROM agent_entity WHERE agent_id = ANY($8)
         UNION ALL
         SELECT jsonb_build_object('k', 'decided', 'intentId', intent_id, 'seq', seq,
                                   'fingerprint', encode(fingerprint, 'hex'),
                                   'decisionHash', encode(decision_hash, 'hex'), 'message', message)
         FROM decision WHERE intent_id = ANY($2)
         UNION ALL
         SELECT jsonb_build_object('k', 'window', 'agent_id', u.agent_id, 'kind', u.kind, 'tz', u.tz,
                                   'currency', u.currency, 'start', u.window_start,
                                   'committed', u.committed::text, 'reserved', u.reserved::text)
         FROM usage_window u
         JOIN unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::date[])
           AS w(agent_id, kind, tz, currency, window_start)
           USING (agent_id, kind, tz, currency, window_start)
         UNION ALL
         SELECT jsonb_build_object('k', 'seqs',
                                   'seqs', coalesce(array_agg(nextval('ledger_event_seq_seq')), '{}'))
         FROM (SELECT DISTINCT n.id FROM unnest($2::text[]) AS n(id)
               WHERE NOT EXISTS (SELECT 1 FROM decision d WHERE d.intent_id = n.id)) new",
    )
    .bind(chains)
    .bind(ids)
    .bind(wanted.iter().map(|k| k.agent_id.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.tz.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.currency.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.start).collect::<Vec<_>>())
    .bind(agents)
    // Planned for its arguments on every call, not cached: a generic plan made while the
    // tables were small hash-joins over full scans of `decision` and `usage_window`, and
    // a session keeps it until an ANALYZE invalidates it (never, with autovacuum off):
    // measured, every batch then read both tables whole (docs/benchmarks.md, issue 15).
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    let bytes = |what: &str, hex_text: &str| {
        hex::decode(hex_text).map_err(|e| LedgerError::Corrupt(format!("{what}: {e}")))
    };
    for row in rows {
        match row.0 {
            SnapshotRow::Head {
                chain_id,
                chain_pos,
                hash,
            } => {
                let hash: chain::Hash = bytes("chain head hash", &hash)?
                    .as_slice()
                    .try_into()
                    .map_err(|_| {
                        LedgerError::Corrupt(format!(
                            "chain head hash of {chain_id} is not 32 bytes"
                        ))
                    })?;
                ws.heads.insert(chain_id, chain_pos, hash);
            }
            SnapshotRow::Kill(k) => {
                snapshot.kills.insert(k.scope.clone(), k);
            }
            SnapshotRow::Fx(f) => {
                snapshot.fx_rates.insert(f.pair.clone(), f);
            }
            SnapshotRow::AgentEntity(a) => {
                snapshot.load_agent_entity(&a);
            }
            SnapshotRow::Decided {
                intent_id,
                seq,
                fingerprint,
                decision_hash,
                message,
            } => {
                let e = Existing {
                    seq,
                    fingerprint: bytes("decision fingerprint", &fingerprint)?,
                    decision_hash: bytes("decision hash", &decision_hash)?,
                    message,
                };
                existing.insert(intent_id, e);
            }
            SnapshotRow::Window {
                key,
                committed,
                reserved,
            } => snapshot.windows.add(&key, committed, reserved),
            SnapshotRow::Seqs { seqs } => ws.add_reserved_seqs(seqs),
        }
    }
    Ok((snapshot, existing))
}
