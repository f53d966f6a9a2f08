//! Refused input and the audit bound ([`crate::audit_budget`]): which refused messages
//! get their own audit event, and the `refusals_summarized` events of the others.
//! Every refused Kafka message is dead-lettered whatever the verdict; this decides only
//! what the ledger keeps of it.

use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use std::sync::Arc;
use std::time::Duration;

use super::{Attempt, Shared, retry_bounded};
use crate::audit_budget::{self, RefusalSource, Summary, Verdict};
use crate::ledger::Origin;

/// How often windows that ended are looked for (a source that went quiet has its
/// summary recorded at most this long after its window ends).
const FLUSH_EVERY_MS: u64 = 5_000;

/// Admits one refused Kafka message of logical topic `topic` with `code`; the summary
/// of its source's previous window is recorded first if that window just closed.
/// `None` when shutting down mid-retry (the offset stays unstored).
pub(super) async fn admit(
    shared: &Shared,
    topic: &'static str,
    msg: &OwnedMessage,
    code: &str,
) -> Option<Verdict> {
    let source = RefusalSource {
        topic,
        partition: Some(msg.partition()),
    };
    let now_ms = chrono::Utc::now().timestamp_millis();
    let (verdict, closed) = audit_budget::admit(
        &shared.audit_budget,
        &source,
        code,
        now_ms,
        Some(msg.offset()),
    );
    if let Some(summary) = closed
        && !record(shared, &summary).await
    {
        return None;
    }
    Some(verdict)
}

/// The origin a summary is recorded with: the last counted Kafka message's (a summary
/// recorded again after a crash is answered by the ledger's intake idempotency), or the
/// API's.
fn origin_of(shared: &Shared, summary: &Summary<RefusalSource>) -> Origin {
    match (summary.source.partition, summary.last_position) {
        (Some(p), Some(offset)) => Origin::kafka(&shared.settings.instance, p, offset),
        _ => Origin {
            instance: shared.settings.instance.clone(),
            source: "api".into(),
            partition: None,
            offset: None,
        },
    }
}

/// Records one summary. Returns false only when shutting down.
pub(super) async fn record(shared: &Shared, summary: &Summary<RefusalSource>) -> bool {
    let origin = origin_of(shared, summary);
    tracing::warn!(
        topic = summary.source.topic,
        partition = ?summary.source.partition,
        audited = summary.audited,
        counted = summary.total(),
        "refused input over the audit bound: recording a summary (every message is in the dead-letter topic)"
    );
    match retry_bounded(shared.hold(), "ledger record_refusals_summary", || {
        shared
            .ledger
            .record_refusals_summary(summary.source.topic, summary, &origin)
    })
    .await
    {
        Attempt::Done(_) => true,
        Attempt::Stopped => false,
        Attempt::GaveUp(last) => {
            tracing::error!(error = %last, counts = ?summary.counts, "refusal summary could not be recorded");
            true
        }
    }
}

/// Records the summaries of windows that ended, every [`FLUSH_EVERY_MS`], until the
/// instance stops (then [`drain`] records the rest).
pub(super) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(FLUSH_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        for summary in audit_budget::due(&shared.audit_budget, now_ms) {
            if !record(&shared, &summary).await {
                return;
            }
        }
    }
}

/// At shutdown, after the workers and the API have stopped: every open window with
/// counted refusals is recorded, one bounded attempt each (the stop signal is set, so
/// [`retry_bounded`] would not retry). A crash loses the counts of open windows instead,
/// never a message: every one is in the dead-letter topic.
pub(super) async fn drain(shared: &Shared) {
    for summary in audit_budget::drain(&shared.audit_budget) {
        let origin = origin_of(shared, &summary);
        let recorded = tokio::time::timeout(
            Duration::from_millis(super::CALL_DEADLINE_MS),
            shared
                .ledger
                .record_refusals_summary(summary.source.topic, &summary, &origin),
        )
        .await;
        match recorded {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, counts = ?summary.counts, "refusal summary not recorded at shutdown")
            }
            Err(_) => {
                tracing::error!(counts = ?summary.counts, "refusal summary not recorded at shutdown (no answer)")
            }
        }
    }
}
