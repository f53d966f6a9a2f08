//! `spendguard audit verify-votes` (SPEC §14): every accepted vote's signature checked
//! again, from the ledger alone, against the approver registry version in force when it
//! was accepted (its content is in `registry_activated`), with the same rule that
//! accepted it (`Registry::verify`: approver registered for the intent's entity,
//! `verify_strict` over the signed bytes). The decision hash the signature covers must
//! be the hash of the recorded `intent_decided` event, so a proof cannot be moved onto
//! another decision. `audit verify` checks the hash chains; this checks what the chained
//! votes claim.

use super::events::{ConfigActivated, EventKind, LedgerEvent, VoteAccepted};
use super::{Ledger, LedgerError, Vote, chain};
use crate::approvals::{Registry, SignedAt, VoteMessage, VoteSubject};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;

/// Intents whose decisions are read per statement.
const DECISIONS_PER_QUERY: usize = 1_000;

/// What `audit verify-votes` found.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteAudit {
    /// Accepted votes in the period.
    pub votes: usize,
    /// Signatures that verify against the registry of their time.
    pub verified: usize,
    /// Votes recorded before signatures were kept (nothing to re-check).
    pub without_proof: usize,
    /// Votes with a proof but no registry version recorded before them (recorded
    /// before registry versions were audited): listed, not failures.
    pub without_registry: Vec<VoteProblem>,
    pub failures: Vec<VoteProblem>,
}

impl VoteAudit {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// One vote that does not verify, named by its event, intent and approver.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteProblem {
    pub seq: i64,
    pub intent_id: String,
    pub approver_id: String,
    pub problem: String,
}

/// The recorded decision a vote is about.
struct DecisionOf {
    hash: String,
    agent_id: String,
    entity_id: String,
}

/// A registry version as recorded, compiled once.
struct RecordedRegistry {
    seq: i64,
    sha256: String,
    registry: Result<Registry, String>,
}

impl Ledger {
    /// Re-verifies the signature of every `vote_accepted` recorded in `[from, to)`
    /// (either bound open), reading only the ledger, in one snapshot.
    pub async fn audit_votes(
        &self,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<VoteAudit, LedgerError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let mut registries: HashMap<i64, RecordedRegistry> = HashMap::new();
        // (seq, version) in ledger order: the version in force before a given seq.
        let mut activations: Vec<(i64, i64)> = Vec::new();
        let rows =
            sqlx::query("SELECT seq, payload FROM ledger_event WHERE event_type = $1 ORDER BY seq")
                .bind(EventKind::RegistryActivated.as_str())
                .fetch_all(&mut *tx)
                .await?;
        for r in rows {
            let seq: i64 = r.try_get("seq")?;
            let payload: String = r.try_get("payload")?;
            let Ok(LedgerEvent::RegistryActivated(a)) =
                LedgerEvent::parse(EventKind::RegistryActivated.as_str(), &payload)
            else {
                return Err(LedgerError::Corrupt(format!(
                    "seq {seq}: registry_activated payload does not parse"
                )));
            };
            activations.push((seq, a.version));
            registries
                .entry(a.version)
                .or_insert_with(|| compile_registry(seq, &a));
        }

        let rows = sqlx::query(
            "SELECT seq, payload FROM ledger_event WHERE event_type = $1
               AND ($2::timestamptz IS NULL OR recorded_at >= $2)
               AND ($3::timestamptz IS NULL OR recorded_at < $3)
             ORDER BY seq",
        )
        .bind(EventKind::VoteAccepted.as_str())
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
        let mut votes: Vec<(i64, VoteAccepted)> = Vec::with_capacity(rows.len());
        let mut report = VoteAudit::default();
        for r in rows {
            let seq: i64 = r.try_get("seq")?;
            let payload: String = r.try_get("payload")?;
            match LedgerEvent::parse(EventKind::VoteAccepted.as_str(), &payload) {
                Ok(LedgerEvent::VoteAccepted(v)) => votes.push((seq, v)),
                _ => {
                    report.votes += 1;
                    report.failures.push(VoteProblem {
                        seq,
                        intent_id: String::new(),
                        approver_id: String::new(),
                        problem: "vote_accepted payload does not parse".into(),
                    });
                }
            }
        }

        let mut ids: Vec<&str> = votes.iter().map(|(_, v)| v.intent_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut decisions: HashMap<String, DecisionOf> = HashMap::new();
        for chunk in ids.chunks(DECISIONS_PER_QUERY) {
            let rows = sqlx::query(
                "SELECT resource, hash, payload FROM ledger_event
                 WHERE event_type = $1 AND resource = ANY($2) ORDER BY seq",
            )
            .bind(EventKind::IntentDecided.as_str())
            .bind(chunk)
            .fetch_all(&mut *tx)
            .await?;
            for r in rows {
                let resource: String = r.try_get("resource")?;
                let hash: Vec<u8> = r.try_get("hash")?;
                let payload: String = r.try_get("payload")?;
                let intent = serde_json::from_str::<serde_json::Value>(&payload)
                    .ok()
                    .and_then(|v| v.get("intent").cloned());
                let field = |name: &str| {
                    intent
                        .as_ref()
                        .and_then(|i| i.get(name))
                        .and_then(|x| x.as_str())
                        .unwrap_or_default()
                        .to_string()
                };
                // The first decision of an intent is the one votes are about.
                decisions.entry(resource).or_insert_with(|| DecisionOf {
                    hash: hex::encode(hash),
                    agent_id: field("agentId"),
                    entity_id: field("entityId"),
                });
            }
        }
        tx.commit().await?;

        for (seq, v) in votes {
            report.votes += 1;
            let problem = |problem: String| VoteProblem {
                seq,
                intent_id: v.intent_id.clone(),
                approver_id: v.approver_id.clone(),
                problem,
            };
            let Some(proof) = &v.proof else {
                report.without_proof += 1;
                continue;
            };
            let in_force = match &proof.registry {
                Some(rv) => match registries.get(&rv.version) {
                    None => Err(format!(
                        "the vote names registry version {} but no registry_activated records it",
                        rv.version
                    )),
                    Some(r) if r.seq > seq => Err(format!(
                        "the vote names registry version {}, activated after the vote (seq {})",
                        rv.version, r.seq
                    )),
                    Some(r) if r.sha256 != rv.sha256 => Err(format!(
                        "the vote was verified under registry version {} with sha256 {}, but the ledger records {} for it",
                        rv.version, rv.sha256, r.sha256
                    )),
                    Some(r) => Ok(r),
                },
                None => {
                    let before = activations.iter().rev().find(|(s, _)| *s < seq);
                    match before.and_then(|(_, version)| registries.get(version)) {
                        Some(r) => Ok(r),
                        None => {
                            report.without_registry.push(problem(
                                "no registry version recorded before this vote".into(),
                            ));
                            continue;
                        }
                    }
                }
            };
            let outcome = in_force.and_then(|r| {
                let registry = r.registry.as_ref().map_err(Clone::clone)?;
                let decision = decisions
                    .get(&v.intent_id)
                    .ok_or_else(|| format!("no intent_decided event for intent {}", v.intent_id))?;
                check_vote(registry, &v, decision)
            });
            match outcome {
                Ok(()) => report.verified += 1,
                Err(p) => report.failures.push(problem(p)),
            }
        }
        Ok(report)
    }
}

/// A recorded registry, refused when its content is not what its hash says (an edited
/// key) or no longer passes the registry's checks.
fn compile_registry(seq: i64, a: &ConfigActivated) -> RecordedRegistry {
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        a.canonical.as_bytes(),
    ));
    let registry = if actual != a.sha256 {
        Err(format!(
            "registry version {} (seq {seq}): its content hashes to {actual}, not the recorded {}",
            a.version, a.sha256
        ))
    } else {
        Registry::from_canonical(&a.canonical).map_err(|e| {
            format!(
                "registry version {} (seq {seq}) does not load: {e}",
                a.version
            )
        })
    };
    RecordedRegistry {
        seq,
        sha256: a.sha256.clone(),
        registry,
    }
}

/// The recorded vote through the rule that accepted it.
fn check_vote(registry: &Registry, v: &VoteAccepted, decision: &DecisionOf) -> Result<(), String> {
    let Some(proof) = &v.proof else {
        return Ok(());
    };
    if proof.decision_hash != decision.hash {
        return Err(format!(
            "the signed decisionHash {} is not the hash of the recorded decision ({})",
            proof.decision_hash, decision.hash
        ));
    }
    let vote = Vote::parse(&v.vote).ok_or_else(|| format!("vote {:?} is not a vote", v.vote))?;
    let signed_at = SignedAt::parse(&proof.signed_at)?;
    if chain::to_micros(signed_at.at()) != v.signed_at {
        return Err(format!(
            "the signed signedAt {} is not the recorded {}",
            proof.signed_at, v.signed_at
        ));
    }
    let message = VoteMessage {
        intent_id: v.intent_id.clone(),
        approver_id: v.approver_id.clone(),
        vote,
        signature: Some(proof.signature.clone()),
        signed_at,
    };
    registry
        .verify(
            &message,
            VoteSubject {
                agent_id: &decision.agent_id,
                entity_id: &decision.entity_id,
                decision_hash: &proof.decision_hash,
            },
        )
        .map(|_| ())
        .map_err(|refusal| format!("{}: {refusal}", refusal.code()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approvals::sign_vote;
    use base64::Engine as _;
    use ed25519_dalek::SigningKey;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn recorded(canonical: &str, sha256: String) -> ConfigActivated {
        ConfigActivated {
            version: 1,
            sha256,
            canonical: canonical.to_string(),
            actor: "test".into(),
        }
    }

    /// The pure half of `audit verify-votes`: a recorded registry is used only when its
    /// content is what its hash says, and a kept vote verifies only over the decision
    /// it was signed for.
    #[test]
    fn a_recorded_registry_and_a_kept_vote_are_checked_as_stored() {
        let alice = SigningKey::from_bytes(&[7; 32]);
        let registry = Registry::parse(&format!(
            "approvers:\n  - {{id: alice, publicKey: \"{}\", entities: ['acme-*']}}\n",
            base64::engine::general_purpose::STANDARD.encode(alice.verifying_key().to_bytes())
        ))
        .unwrap();
        let good = compile_registry(3, &recorded(registry.canonical(), registry.sha256()));
        let loaded = good.registry.expect("loads");
        let edited = registry.canonical().replace("acme-*", "*");
        let bad = compile_registry(3, &recorded(&edited, registry.sha256()));
        assert!(bad.registry.unwrap_err().contains("hashes to"));

        let msg = sign_vote(&alice, "i-1", "alice", HASH, Vote::Approve);
        let v = loaded
            .verify(
                &msg,
                VoteSubject {
                    agent_id: "agent-1",
                    entity_id: "acme-br",
                    decision_hash: HASH,
                },
            )
            .unwrap();
        let accepted = VoteAccepted {
            intent_id: v.intent_id,
            approver_id: v.approver_id,
            vote: v.vote.as_str().to_string(),
            signed_at: chain::to_micros(v.signed_at),
            proof: v.proof,
        };
        let decision = |hash: &str, entity: &str| DecisionOf {
            hash: hash.to_string(),
            agent_id: "agent-1".into(),
            entity_id: entity.into(),
        };
        assert_eq!(
            check_vote(&loaded, &accepted, &decision(HASH, "acme-br")),
            Ok(())
        );
        let other = "0".repeat(64);
        assert!(
            check_vote(&loaded, &accepted, &decision(&other, "acme-br"))
                .unwrap_err()
                .contains("is not the hash of the recorded decision")
        );
        assert!(
            check_vote(&loaded, &accepted, &decision(HASH, "globex"))
                .unwrap_err()
                .starts_with("approver_not_registered_for_entity")
        );
        let mut rejected = accepted.clone();
        rejected.vote = "REJECT".into();
        assert!(
            check_vote(&loaded, &rejected, &decision(HASH, "acme-br"))
                .unwrap_err()
                .starts_with("bad_signature")
        );
    }
}
