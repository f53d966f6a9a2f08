//! One worker: handles the messages of the partitions mapped to it, one at a time, and
//! stores each offset only once the ledger has committed what the message caused.

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;
use std::sync::Arc;
use tokio::sync::mpsc;

use super::{Attempt, Shared, refusals, retry_bounded};
use crate::approvals;
use crate::audit_budget::Verdict;
use crate::bus::dlq::{self, DeadLetter, DeadLetterReason};
use crate::intent::{self, IntentError};
use crate::ledger::settle::SettleResult;
use crate::ledger::{DecideStatus, LedgerError, Origin, VoteResult};
use crate::settlement;
use crate::telemetry;
use crate::telemetry::Stage;

/// Intents decided in one ledger transaction at most (what is already queued is taken,
/// nothing is waited for: a lone intent is decided at once).
const MAX_DECIDE_BATCH: usize = 64;

pub async fn run(
    shared: Arc<Shared>,
    consumer: Arc<crate::bus::group::GroupConsumer>,
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
        // Intents are decided together and settlements applied together; Kafka orders
        // messages per key (agent) only, so a message joins its group unless the other
        // group holds one of the same key (then both groups go first: a capture that
        // frees budget is applied before that agent's next intent). Votes are rare and
        // handled one by one, in their place.
        let mut intents: Vec<&OwnedMessage> = Vec::new();
        let mut settlements: Vec<&OwnedMessage> = Vec::new();
        let mut handled = true;
        for msg in &batch {
            let is_intent = msg.topic() == shared.topics.intents;
            let is_settlement = msg.topic() == shared.topics.settlements;
            let other: &[&OwnedMessage] = if is_intent { &settlements } else { &intents };
            if (is_intent || is_settlement) && !shares_key(other, msg) {
                if is_intent {
                    intents.push(msg);
                } else {
                    settlements.push(msg);
                }
                continue;
            }
            handled = handled && handle_groups(&shared, &intents, &settlements).await;
            intents.clear();
            settlements.clear();
            if is_intent {
                intents.push(msg);
            } else if is_settlement {
                settlements.push(msg);
            } else {
                let origin =
                    Origin::kafka(&shared.settings.instance, msg.partition(), msg.offset());
                handled = handled && handle_vote(&shared, msg, &origin).await;
            }
        }
        handled = handled && handle_groups(&shared, &intents, &settlements).await;
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

/// Whether `group` holds a message with `msg`'s key (a message without a key shares
/// every key: it keeps its place).
fn shares_key(group: &[&OwnedMessage], msg: &OwnedMessage) -> bool {
    match msg.key() {
        None => !group.is_empty(),
        Some(k) => group.iter().any(|m| m.key().is_none_or(|mk| mk == k)),
    }
}

/// The pending intents, then the pending settlements (no key in common: their relative
/// order is free).
async fn handle_groups(
    shared: &Shared,
    intents: &[&OwnedMessage],
    settlements: &[&OwnedMessage],
) -> bool {
    handle_intents(shared, intents).await && handle_settlements(shared, settlements).await
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
        match intent::parse_intent(msg.payload().unwrap_or_default())
            .and_then(|i| keyed_by_agent(msg, i))
        {
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
    // Producer timestamp to the start of deciding: broker delivery, consumer, worker queue.
    let now_ms = chrono::Utc::now().timestamp_millis();
    for msg in &item_msgs {
        if let Some(produced_ms) = msg.timestamp().to_millis()
            && let Ok(queued_ms) = u64::try_from(now_ms - produced_ms)
        {
            telemetry::record_stage(Stage::Queued, std::time::Duration::from_millis(queued_ms));
        }
    }
    // Ranges of `items` still to decide, first on top. A batch the ledger keeps refusing
    // is split in halves until the intent that causes it stands alone (SPEC §15: a
    // failing intent is isolated, never taking its neighbours to the DLQ); order is
    // kept, so one agent's intents are still decided in partition order.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
    todo.push(0..items.len());
    while let Some(range) = todo.pop() {
        let batch = &items[range.clone()];
        let batch_msgs = &item_msgs[range.clone()];
        match decide_batch(shared, batch).await {
            Attempt::Done(results) => {
                if !handle_results(shared, results, batch_msgs).await {
                    return false;
                }
            }
            Attempt::Stopped => return false,
            Attempt::GaveUp(last) if batch.len() > 1 => {
                tracing::warn!(
                    intents = batch.len(),
                    error = %last,
                    "ledger refused the batch repeatedly; splitting it to isolate the cause"
                );
                let mid = range.start + batch.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
            Attempt::GaveUp(last) => {
                tracing::error!(error = %last, "ledger refused one intent repeatedly; dead-lettering it");
                let reason = DeadLetterReason::NotRecorded(format!(
                    "the ledger could not record a decision for this intent: {last}"
                ));
                if !send_dead_letter(shared, batch_msgs[0], &reason).await {
                    return false;
                }
            }
        }
    }
    true
}

/// SPEC §1 / §14: an intent's Kafka key is its agentId. The key places the message in
/// its agent's partition, and only there is the agent's order kept; an intent keyed to
/// another agent would be decided out of order with that agent's intents. (The key is
/// not echoed: it is arbitrary bytes from the producer.)
fn keyed_by_agent(
    msg: &OwnedMessage,
    i: intent::SpendIntent,
) -> Result<intent::SpendIntent, IntentError> {
    // The agentId was masked at parse time (SPEC §14); the key is compared masked too.
    if msg.key().map(crate::privacy::mask_bytes).as_deref() == Some(i.agent_id.as_bytes()) {
        return Ok(i);
    }
    Err(IntentError::new(
        KEY_NOT_AGENT_ID,
        Some("agentId"),
        format!(
            "the Kafka message key is not the intent's agentId {:?}; publish intents keyed by agentId",
            i.agent_id
        ),
    ))
}

/// Dead-letter code of an intent whose Kafka key is not its agentId.
pub const KEY_NOT_AGENT_ID: &str = "key_not_agent_id";

async fn decide_batch(
    shared: &Shared,
    items: &[(intent::SpendIntent, Origin)],
) -> Attempt<Vec<Result<crate::ledger::Decided, LedgerError>>> {
    let policies = shared.policies.load_full();
    let started = std::time::Instant::now();
    let attempt = retry_bounded(shared.hold(), "ledger decide", || {
        shared.ledger.decide_batch(&policies, items)
    })
    .await;
    if matches!(attempt, Attempt::Done(_)) {
        telemetry::record_ledger_commit(started.elapsed());
        shared.outbox_ready.notify_one();
    }
    attempt
}

/// Metrics and dead letters for the per-intent results of one committed batch.
async fn handle_results(
    shared: &Shared,
    results: Vec<Result<crate::ledger::Decided, LedgerError>>,
    msgs: &[&OwnedMessage],
) -> bool {
    let decided_at_ms = chrono::Utc::now().timestamp_millis();
    for (result, msg) in results.into_iter().zip(msgs) {
        match result {
            Ok(d) => {
                metrics::counter!("spendguard_decisions_total", "effect" => d.message.effect.as_str())
                    .increment(1);
                // From the producer's timestamp to the ledger commit. Redeliveries are
                // left out: their decision was made long ago.
                if d.status == DecideStatus::New
                    && let Some(produced_ms) = msg.timestamp().to_millis()
                    && let Ok(latency_ms) = u64::try_from(decided_at_ms - produced_ms)
                {
                    telemetry::record_intent_to_decision(std::time::Duration::from_millis(
                        latency_ms,
                    ));
                }
            }
            // Same intentId, different payload: the ledger refused and audited it; the
            // message goes to the DLQ so the sender sees it was not decided.
            Err(e @ LedgerError::IdempotencyConflict { .. }) => {
                let reason = DeadLetterReason::IdempotencyConflict(e.to_string());
                if !send_dead_letter(shared, msg, &reason).await {
                    return false;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "ledger could not decide an intent; dead-lettering it");
                let reason = DeadLetterReason::NotRecorded(e.to_string());
                if !send_dead_letter(shared, msg, &reason).await {
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
    // Over the audit bound of its partition: dead-lettered all the same, counted in the
    // window's `refusals_summarized` instead of an event of its own.
    match refusals::admit(shared, "spend.intents", msg, err.code).await {
        None => return false,
        Some(Verdict::Count) => {
            return send_dead_letter(shared, msg, &DeadLetterReason::InvalidIntent(err.clone()))
                .await;
        }
        Some(Verdict::Audit) => {}
    }
    let raw = msg.payload().unwrap_or_default();
    match retry_bounded(shared.hold(), "ledger record_invalid_intent", || {
        shared.ledger.record_invalid_intent(raw, err, origin)
    })
    .await
    {
        Attempt::Stopped => false,
        Attempt::Done(_) => {
            send_dead_letter(shared, msg, &DeadLetterReason::InvalidIntent(err.clone())).await
        }
        // The dead letter still carries the bytes and the reason; the log says why the
        // audit event is missing.
        Attempt::GaveUp(last) => {
            tracing::error!(code = err.code, error = %last, "invalid intent could not be audited");
            send_dead_letter(shared, msg, &DeadLetterReason::InvalidIntent(err.clone())).await
        }
    }
}

/// Publishes a dead letter. While the broker is unreachable this waits (nothing else
/// can be published either); when the broker refuses the dead letter itself after
/// bounded attempts, the message is set aside with an audit record and the partition
/// moves on. Returns false only when shutting down (the next owner redelivers).
async fn send_dead_letter(shared: &Shared, msg: &OwnedMessage, reason: &DeadLetterReason) -> bool {
    let letter = DeadLetter {
        code: reason.code(),
        message: reason.message(),
        field: reason.field(),
        source_topic: msg.topic(),
        source_partition: msg.partition(),
        source_offset: msg.offset(),
        instance: &shared.settings.instance,
    };
    let raw = msg.payload().unwrap_or_default();
    // Workers run only with a broker (they consume from it): a producer is there.
    let Some(producer) = shared.producer.as_ref() else {
        return set_aside(shared, msg, "dead_letter_refused", "no producer").await;
    };
    let attempt = retry_bounded(shared.hold(), "dead-letter publish", || {
        dlq::send(
            producer,
            &shared.topics.dlq,
            msg.key(),
            raw,
            &letter,
            Some(shared.ledger.fingerprint(raw)),
        )
    })
    .await;
    match attempt {
        Attempt::Done(()) => {
            telemetry::record_dlq(reason.code());
            true
        }
        Attempt::Stopped => false,
        Attempt::GaveUp(last) => {
            let detail = format!(
                "refused as {} ({}); the dead letter was refused too: {last}",
                reason.code(),
                reason.message()
            );
            set_aside(shared, msg, "dead_letter_refused", &detail).await
        }
    }
}

/// The last resort for a message (SPEC §15): recorded in the ledger as
/// `message_set_aside` (size and fingerprint, not the bytes) so its partition can move
/// on. Returns false only when shutting down.
async fn set_aside(shared: &Shared, msg: &OwnedMessage, code: &str, detail: &str) -> bool {
    let origin = Origin::kafka(&shared.settings.instance, msg.partition(), msg.offset());
    let logical = if msg.topic() == shared.topics.intents {
        "spend.intents"
    } else if msg.topic() == shared.topics.settlements {
        "spend.settlements"
    } else {
        "spend.approvals"
    };
    let raw = msg.payload().unwrap_or_default();
    tracing::error!(
        topic = msg.topic(),
        partition = msg.partition(),
        offset = msg.offset(),
        bytes = raw.len(),
        %code,
        "message set aside: it could be neither handled nor dead-lettered"
    );
    metrics::counter!("spendguard_messages_set_aside_total", "topic" => logical, "code" => code.to_string())
        .increment(1);
    match retry_bounded(shared.hold(), "ledger record_set_aside", || {
        shared
            .ledger
            .record_set_aside(logical, raw, code, detail, &origin)
    })
    .await
    {
        Attempt::Done(_) => true,
        Attempt::Stopped => false,
        // Nothing more can be done for this message; the log line above and the metric
        // are what remain of it.
        Attempt::GaveUp(last) => {
            tracing::error!(error = %last, "set-aside message could not be audited");
            true
        }
    }
}

async fn handle_vote(shared: &Shared, msg: &OwnedMessage, origin: &Origin) -> bool {
    let raw = msg.payload().unwrap_or_default();
    let vote = match approvals::parse_vote(raw) {
        Ok(v) => v,
        Err(refusal) => {
            let reason = DeadLetterReason::VoteRefused {
                code: refusal.code(),
                detail: refusal.to_string(),
            };
            let audited =
                match refusals::admit(shared, "spend.approvals", msg, refusal.code()).await {
                    None => return false,
                    Some(v) => v == Verdict::Audit,
                };
            if !audited {
                // Counted in the window's summary; metrics as for any refused vote.
                metrics::counter!("spendguard_votes_total", "result" => "refused").increment(1);
                telemetry::record_refused_vote(refusal.code());
                return send_dead_letter(shared, msg, &reason).await;
            }
            return refuse(shared, raw, refusal.code(), reason.message(), origin).await
                && send_dead_letter(shared, msg, &reason).await;
        }
    };
    let registry = shared.approvers.load();
    let checked = match retry_bounded(shared.hold(), "ledger vote check", || {
        crate::vote_intake::check(&shared.ledger, &registry, &vote)
    })
    .await
    {
        Attempt::Done(r) => r,
        Attempt::Stopped => return false,
        Attempt::GaveUp(last) => {
            let detail = format!(
                "the decision of intent {} cannot be read: {last}",
                vote.intent_id
            );
            let reason = DeadLetterReason::NotRecorded(detail);
            return refuse(shared, raw, reason.code(), reason.message(), origin).await
                && send_dead_letter(shared, msg, &reason).await;
        }
    };
    let verified = match checked {
        Ok(v) => v,
        Err(refusal) => {
            return refuse(shared, raw, refusal.code(), &refusal.to_string(), origin).await;
        }
    };
    match retry_bounded(shared.hold(), "ledger apply_vote", || {
        shared.ledger.apply_vote(&verified, origin)
    })
    .await
    {
        Attempt::Stopped => false,
        Attempt::Done(VoteResult::Accepted { outcome, .. }) => {
            metrics::counter!("spendguard_votes_total", "result" => "accepted").increment(1);
            if outcome.is_some() {
                shared.outbox_ready.notify_one();
            }
            true
        }
        Attempt::Done(VoteResult::Refused { reason, .. }) => {
            // The ledger audited the refusal (duplicate approver, closed, expired, killed).
            tracing::info!(intent = %vote.intent_id, approver = %vote.approver_id, %reason, "vote refused by the ledger");
            metrics::counter!("spendguard_votes_total", "result" => "refused").increment(1);
            telemetry::record_refused_vote(&reason);
            true
        }
        Attempt::GaveUp(last) => {
            // Not a vote's fault we can name, but it must not stall the partition:
            // audit it as refused and keep the bytes in the dead-letter topic so an
            // operator can replay it once the cause is fixed.
            tracing::error!(intent = %vote.intent_id, error = %last, "ledger could not apply a vote; dead-lettering it");
            let reason = DeadLetterReason::NotRecorded(format!(
                "the ledger could not apply this vote: {last}"
            ));
            refuse(shared, raw, reason.code(), reason.message(), origin).await
                && send_dead_letter(shared, msg, &reason).await
        }
    }
}

async fn refuse(shared: &Shared, raw: &[u8], code: &str, detail: &str, origin: &Origin) -> bool {
    tracing::info!(%code, %detail, "vote refused");
    metrics::counter!("spendguard_votes_total", "result" => "refused").increment(1);
    telemetry::record_refused_vote(code);
    match retry_bounded(shared.hold(), "ledger refuse_vote", || {
        shared.ledger.refuse_vote(raw, code, detail, origin)
    })
    .await
    {
        Attempt::Done(_) => true,
        Attempt::Stopped => false,
        // The audit itself fails for a non-transient reason: the vote is still refused
        // (never applied); the log says why it is missing from the audit trail.
        Attempt::GaveUp(last) => {
            tracing::error!(%code, error = %last, "refused vote could not be audited");
            true
        }
    }
}

/// A run of settlement messages: the malformed ones audited and dead-lettered, the rest
/// applied in one ledger transaction; a batch the ledger keeps refusing is applied one
/// by one, so one bad message never takes its neighbours to the DLQ. Returns false only
/// when shutting down.
async fn handle_settlements(shared: &Shared, msgs: &[&OwnedMessage]) -> bool {
    match msgs {
        [] => return true,
        [one] => {
            let origin = Origin::kafka(&shared.settings.instance, one.partition(), one.offset());
            return handle_settlement(shared, one, &origin).await;
        }
        _ => {}
    }
    let mut items = Vec::with_capacity(msgs.len());
    let mut item_msgs = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let origin = Origin::kafka(&shared.settings.instance, msg.partition(), msg.offset());
        match settlement::parse_settlement(msg.payload().unwrap_or_default()) {
            Ok(s) => {
                items.push((s, origin));
                item_msgs.push(*msg);
            }
            // The single-message path audits and dead-letters it.
            Err(_) => {
                if !handle_settlement(shared, msg, &origin).await {
                    return false;
                }
            }
        }
    }
    if items.is_empty() {
        return true;
    }
    let policies = shared.policies.load_full();
    match retry_bounded(shared.hold(), "ledger settle_batch", || {
        shared.ledger.settle_batch(&policies, &items)
    })
    .await
    {
        Attempt::Stopped => false,
        Attempt::Done(results) => {
            for (result, msg) in results.into_iter().zip(&item_msgs) {
                if !settlement_result(shared, msg, result).await {
                    return false;
                }
            }
            true
        }
        Attempt::GaveUp(last) => {
            tracing::warn!(settlements = items.len(), error = %last, "ledger refused the settlement batch repeatedly; applying one by one");
            for (msg, (_, origin)) in item_msgs.iter().zip(&items) {
                if !handle_settlement(shared, msg, origin).await {
                    return false;
                }
            }
            true
        }
    }
}

/// Metrics, outbox wake-up and dead letter of one applied settlement's result.
async fn settlement_result(shared: &Shared, msg: &OwnedMessage, result: SettleResult) -> bool {
    match result {
        SettleResult::Applied { .. } => {
            metrics::counter!("spendguard_settlements_total", "result" => "applied").increment(1);
            shared.outbox_ready.notify_one();
            true
        }
        SettleResult::Redelivered { .. } => {
            metrics::counter!("spendguard_settlements_total", "result" => "redelivered")
                .increment(1);
            true
        }
        SettleResult::Refused { code, detail, .. } => {
            tracing::info!(%code, "settlement refused by the ledger");
            metrics::counter!("spendguard_settlements_total", "result" => "refused").increment(1);
            send_dead_letter(
                shared,
                msg,
                &DeadLetterReason::SettlementRefused { code, detail },
            )
            .await
        }
    }
}

/// One settlement message (SPEC §11): parsed, applied by the ledger (which audits
/// refusals), dead-lettered with its stable code when refused. Returns false only when
/// shutting down (the offset stays unstored; the ledger answers the redelivery from its
/// intake record).
async fn handle_settlement(shared: &Shared, msg: &OwnedMessage, origin: &Origin) -> bool {
    let raw = msg.payload().unwrap_or_default();
    let parsed = match settlement::parse_settlement(raw) {
        Ok(s) => s,
        Err(err) => {
            metrics::counter!("spendguard_settlements_total", "result" => "invalid").increment(1);
            match refusals::admit(shared, "spend.settlements", msg, err.code).await {
                None => return false,
                Some(Verdict::Count) => {
                    return send_dead_letter(
                        shared,
                        msg,
                        &DeadLetterReason::InvalidSettlement(err),
                    )
                    .await;
                }
                Some(Verdict::Audit) => {}
            }
            match retry_bounded(shared.hold(), "ledger record_invalid_settlement", || {
                shared.ledger.record_invalid_settlement(raw, &err, origin)
            })
            .await
            {
                Attempt::Stopped => return false,
                Attempt::Done(_) => {}
                Attempt::GaveUp(last) => {
                    tracing::error!(code = err.code, error = %last, "invalid settlement could not be audited");
                }
            }
            return send_dead_letter(shared, msg, &DeadLetterReason::InvalidSettlement(err)).await;
        }
    };
    let policies = shared.policies.load_full();
    match retry_bounded(shared.hold(), "ledger settle", || {
        shared.ledger.settle(&policies, &parsed, origin)
    })
    .await
    {
        Attempt::Stopped => false,
        Attempt::Done(result) => settlement_result(shared, msg, result).await,
        Attempt::GaveUp(last) => {
            tracing::error!(settlement = %parsed.settlement_id, error = %last, "ledger could not apply a settlement; dead-lettering it");
            let reason = DeadLetterReason::NotRecorded(format!(
                "the ledger could not apply this settlement: {last}"
            ));
            send_dead_letter(shared, msg, &reason).await
        }
    }
}
