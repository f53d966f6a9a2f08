//! Publishes the ledger's outbox (decisions and outcomes) to Kafka, keyed by agentId.
//!
//! Rows are claimed from PostgreSQL (several instances never publish the same claim at
//! once), produced, and marked published only after the broker acknowledged them. A crash
//! in between republishes the same bytes: consumers may see a decision twice, identical.

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::telemetry::{self, Stage};

// A claim outlives every delivery attempt of its rows by a wide margin, so a slow
// broker never lets another instance claim and publish the same rows meanwhile.
const _: () = assert!(
    crate::bus::SERVICE_PRODUCE_TIMEOUT_MS * 2 < crate::ledger::OUTBOX_LEASE_SECONDS as u64 * 1000
);

/// Longest claim → produce → mark round; its rows stay leased to this instance, which
/// claims them again first.
const OUTBOX_ROUND_DEADLINE_MS: u64 = 25_000;

/// How readiness names this task when the database refuses it systemically.
const TASK: &str = "outbox publisher";

/// Rows claimed per round trip.
const CLAIM_BATCH: usize = 500;
/// Pause when the client's local queue is full.
const QUEUE_FULL_BACKOFF_MS: u64 = 2;

pub async fn run(shared: Arc<Shared>) {
    let poll = Duration::from_millis(shared.settings.outbox_poll_interval_ms);
    loop {
        let stopping = shared.shutting_down();
        let published = tokio::time::timeout(
            Duration::from_millis(OUTBOX_ROUND_DEADLINE_MS),
            publish_batch(&shared),
        )
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no answer within {OUTBOX_ROUND_DEADLINE_MS} ms (database or broker)"
            ))
        });
        match published {
            // A full batch: more may be waiting, go again at once.
            Ok(n) if n == CLAIM_BATCH => continue,
            Ok(_) if stopping => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "outbox publish failed; retrying");
                metrics::counter!("spendguard_outbox_errors_total").increment(1);
                if stopping {
                    // The rows stay in the outbox: the next instance to run publishes them.
                    return;
                }
            }
        }
        let mut stop = shared.shutdown.clone();
        tokio::select! {
            _ = shared.outbox_ready.notified() => {}
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Claims, produces and marks one batch; returns how many rows were claimed.
/// One claim → produce → mark round; the error is logged and the round retried (rows
/// not marked stay leased and are claimed again after the lease).
async fn publish_batch(shared: &Shared) -> Result<usize, String> {
    // serve starts the publisher only with a broker; without one the rows stay unclaimed.
    let Some(producer) = shared.producer.as_ref() else {
        return Ok(0);
    };
    let rows = shared.ledger.outbox_claim(CLAIM_BATCH).await;
    shared.systemic.observe(TASK, &rows);
    let rows = rows.map_err(|e| e.to_string())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let claimed = std::time::Instant::now();
    // Row written to claimed; the two clocks are the database's and this host's (a skew
    // between them shows here, and only here).
    let now = chrono::Utc::now();
    for row in &rows {
        if let Ok(waited) = (now - row.created_at).to_std() {
            telemetry::record_stage(Stage::OutboxWait, waited);
        }
    }
    // Enqueue the whole batch first (in claim order, so one agent's messages keep their
    // order on its partition), then wait for the acknowledgements.
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in &rows {
        let topic = shared.topics.resolve(&row.topic);
        let mut record = FutureRecord::to(&topic)
            .key(row.key.as_bytes())
            .payload(row.payload.as_bytes());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push((row.id, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(QUEUE_FULL_BACKOFF_MS)).await;
                }
                Err((e, _)) => return Err(format!("cannot enqueue outbox row {}: {e}", row.id)),
            }
        }
    }
    let mut published = Vec::with_capacity(rows.len());
    let mut failed = 0usize;
    for (id, delivery) in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {
                telemetry::record_stage(Stage::ProduceAck, claimed.elapsed());
                published.push(id);
            }
            Ok(Err((e, _))) => {
                failed += 1;
                tracing::warn!(error = %e, outbox_id = id, "publish failed; the row stays in the outbox");
            }
            Err(_) => failed += 1,
        }
    }
    let marking = std::time::Instant::now();
    let marked = shared.ledger.outbox_mark_published(&published).await;
    shared.systemic.observe(TASK, &marked);
    marked.map_err(|e| e.to_string())?;
    telemetry::record_stage(Stage::Mark, marking.elapsed());
    metrics::counter!("spendguard_published_total").increment(published.len() as u64);
    if failed > 0 {
        return Err(format!(
            "{failed} of {} outbox rows were not acknowledged by the broker",
            rows.len()
        ));
    }
    Ok(rows.len())
}
