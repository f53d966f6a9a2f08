//! One worker: handles the messages of the partitions mapped to it, one at a time, and
//! stores each offset only once the ledger has committed what the message caused.

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use std::sync::Arc;
use tokio::sync::mpsc;

use super::{Shared, retry};
use crate::approvals::{self, VoteSubject};
use crate::bus::dlq::{self, DeadLetter};
use crate::intent::{self, IntentError};
use crate::ledger::{self, LedgerError, Origin, VoteResult};

/// Intents decided in one ledger transaction at most (what is already queued is taken,
/// nothing is waited for: a lone intent is decided at once).
const MAX_DECIDE_BATCH: usize = 64;
/// Attempts for a ledger failure that is not a database error (a bug or a state the
/// ledger refuses) before the message is dead-lettered instead of blocking its partition.
const MAX_INTERNAL_ATTEMPTS: u32 = 5;

pub async fn run(
    shared: Arc<Shared>,
    consumer: Arc<StreamConsumer>,
    mut rx: mpsc::Receiver<OwnedMessage>,
) {
    let mut batch: Vec<OwnedMessage> = Vec::with_capacity(MAX_DECIDE_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_DECIDE_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        // Votes are rare: handle them one by one, in their place; intents in between
        // are decided together.
        let mut intents: Vec<&OwnedMessage> = Vec::new();
        let mut handled = true;
        for msg in &batch {
            if msg.topic() == shared.topics.intents {
                intents.push(msg);
                continue;
            }
            handled = handled && handle_intents(&shared, &intents).await;
            intents.clear();
            let origin = Origin::kafka(&shared.settings.instance, msg.partition(), msg.offset());
            handled = handled && handle_vote(&shared, msg, &origin).await;
        }
        handled = handled && handle_intents(&shared, &intents).await;
        if handled {
            for msg in &batch {
                if let Err(e) = consumer.store_offset(msg.topic(), msg.partition(), msg.offset()) {
                    // The partition was revoked meanwhile: its new owner redelivers this
                    // message and the ledger answers with what was just recorded.
                    tracing::debug!(error = %e, "offset not stored (partition no longer assigned)");
                }
            }
        }
        // Not handled = shutting down mid-retry: offsets stay unstored, the next owner
        // redelivers.
        batch.clear();
    }
}

/// Decides a run of intent messages in one ledger transaction. Returns true when every
/// message is fully handled (its offset may be committed).
async fn handle_intents(shared: &Shared, msgs: &[&OwnedMessage]) -> bool {
    if msgs.is_empty() {
        return true;
    }
    let mut items = Vec::with_capacity(msgs.len());
    let mut item_msgs = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let origin = Origin::kafka(&shared.settings.instance, msg.partition(), msg.offset());
        match intent::parse_intent(msg.payload().unwrap_or_default()) {
            Ok(i) => {
                items.push((i, origin));
                item_msgs.push(*msg);
            }
            Err(err) => {
                if !dead_letter_intent(shared, msg, &origin, &err).await {
                    return false;
                }
            }
        }
    }
    if items.is_empty() {
        return true;
    }
    let policies = shared.policies.load_full();
    let started = std::time::Instant::now();
    let internal_failures = std::sync::atomic::AtomicU32::new(0);
    let results = retry(shared, "ledger decide", || {
        let policies = &policies;
        let items = &items;
        let failures = &internal_failures;
        async move {
            match shared.ledger.decide_batch(policies, items).await {
                Ok(r) => Ok(Some(r)),
                Err(LedgerError::Database(e)) => Err(e.to_string()),
                Err(e) => {
                    let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n >= MAX_INTERNAL_ATTEMPTS {
                        Ok(None)
                    } else {
                        Err(e.to_string())
                    }
                }
            }
        }
    })
    .await;
    let Some(results) = results else { return false };
    let Some(results) = results else {
        // The ledger keeps refusing this batch for a reason that is not the database:
        // dead-letter it so the partition moves on, and say so loudly.
        tracing::error!(
            intents = items.len(),
            "ledger refused the batch repeatedly; dead-lettering it"
        );
        for msg in item_msgs {
            let err = IntentError {
                code: "internal_error",
                message:
                    "the ledger could not record a decision for this intent; see the service log"
                        .into(),
                field: None,
            };
            if !send_dead_letter(shared, msg, &err).await {
                return false;
            }
        }
        return true;
    };
    metrics::histogram!("spendguard_decide_batch_seconds").record(started.elapsed().as_secs_f64());
    shared.outbox_ready.notify_one();
    for (result, msg) in results.into_iter().zip(item_msgs) {
        match result {
            Ok(d) => {
                metrics::counter!("spendguard_decisions_total", "effect" => d.message.effect.as_str())
                    .increment(1);
            }
            // Same intentId, different payload: the ledger refused and audited it; the
            // message goes to the DLQ so the sender sees it was not decided.
            Err(e @ LedgerError::IdempotencyConflict { .. }) => {
                let err = IntentError {
                    code: "idempotency_conflict",
                    message: e.to_string(),
                    field: Some("intentId"),
                };
                if !send_dead_letter(shared, msg, &err).await {
                    return false;
                }
            }
            Err(e) => {
                let err = IntentError {
                    code: "internal_error",
                    message: e.to_string(),
                    field: None,
                };
                tracing::error!(error = %e, "ledger could not decide an intent; dead-lettering it");
                if !send_dead_letter(shared, msg, &err).await {
                    return false;
                }
            }
        }
    }
    true
}

async fn dead_letter_intent(
    shared: &Shared,
    msg: &OwnedMessage,
    origin: &Origin,
    err: &IntentError,
) -> bool {
    metrics::counter!("spendguard_invalid_intents_total", "code" => err.code).increment(1);
    let raw = msg.payload().unwrap_or_default();
    let audited = retry(shared, "ledger record_invalid_intent", || {
        shared.ledger.record_invalid_intent(raw, err, origin)
    })
    .await;
    audited.is_some() && send_dead_letter(shared, msg, err).await
}

async fn send_dead_letter(shared: &Shared, msg: &OwnedMessage, err: &IntentError) -> bool {
    let letter = DeadLetter {
        code: err.code,
        message: &err.message,
        field: err.field,
        source_topic: msg.topic(),
        source_partition: msg.partition(),
        source_offset: msg.offset(),
        instance: &shared.settings.instance,
    };
    let raw = msg.payload().unwrap_or_default();
    retry(shared, "dead-letter publish", || {
        dlq::send(
            &shared.producer,
            &shared.topics.dlq,
            msg.key(),
            raw,
            &letter,
        )
    })
    .await
    .is_some()
}

async fn handle_vote(shared: &Shared, msg: &OwnedMessage, origin: &Origin) -> bool {
    let raw = msg.payload().unwrap_or_default();
    let vote = match approvals::parse_vote(raw) {
        Ok(v) => v,
        Err(refusal) => {
            let as_intent_error = IntentError {
                code: refusal.code(),
                message: refusal.to_string(),
                field: None,
            };
            return refuse(shared, raw, refusal.code(), &refusal.to_string(), origin).await
                && send_dead_letter(shared, msg, &as_intent_error).await;
        }
    };
    let Some(record) = retry(shared, "ledger decision lookup", || {
        shared.ledger.decision(&vote.intent_id)
    })
    .await
    else {
        return false;
    };
    let Some(record) = record else {
        let refusal = approvals::VoteRefusal::UnknownIntent(vote.intent_id.clone());
        return refuse(shared, raw, refusal.code(), &refusal.to_string(), origin).await;
    };
    let subject = VoteSubject {
        agent_id: &record.message.agent_id,
        entity_id: &record.message.entity_id,
        decision_hash: &record.decision_hash,
    };
    let verified = match shared.approvers.load().verify(&vote, subject) {
        Ok(v) => v,
        Err(refusal) => {
            return refuse(shared, raw, refusal.code(), &refusal.to_string(), origin).await;
        }
    };
    let verified = ledger::VerifiedVote {
        intent_id: verified.intent_id,
        approver_id: verified.approver_id,
        vote: match verified.vote {
            approvals::Vote::Approve => ledger::Vote::Approve,
            approvals::Vote::Reject => ledger::Vote::Reject,
        },
        signed_at: verified.signed_at,
    };
    match retry(shared, "ledger apply_vote", || {
        shared.ledger.apply_vote(&verified, origin)
    })
    .await
    {
        None => false,
        Some(VoteResult::Accepted { outcome, .. }) => {
            metrics::counter!("spendguard_votes_total", "result" => "accepted").increment(1);
            if outcome.is_some() {
                shared.outbox_ready.notify_one();
            }
            true
        }
        Some(VoteResult::Refused { reason, .. }) => {
            // The ledger audited the refusal (duplicate approver, closed, expired, killed).
            tracing::info!(intent = %vote.intent_id, approver = %vote.approver_id, %reason, "vote refused by the ledger");
            metrics::counter!("spendguard_votes_total", "result" => "refused").increment(1);
            true
        }
    }
}

async fn refuse(
    shared: &Shared,
    raw: &[u8],
    code: &'static str,
    detail: &str,
    origin: &Origin,
) -> bool {
    tracing::info!(%code, %detail, "vote refused");
    metrics::counter!("spendguard_votes_total", "result" => "refused").increment(1);
    retry(shared, "ledger refuse_vote", || {
        shared.ledger.refuse_vote(raw, code, detail, origin)
    })
    .await
    .is_some()
}
