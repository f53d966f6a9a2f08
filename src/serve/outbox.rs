//! Publishes the ledger's outbox (decisions and outcomes) to Kafka, keyed by agentId.
//!
//! Rows are claimed from PostgreSQL (several instances never publish the same claim at
//! once), produced, and marked published only after the broker acknowledged them. A crash
//! in between republishes the same bytes: consumers may see a decision twice, identical.

use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

use super::Shared;
use crate::ledger::OutboxRow;
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
/// The same for the direct publisher (its own name: the claim round succeeding must not
/// clear a fault only the direct publisher meets, such as marking rows published).
const TASK_DIRECT: &str = "direct publisher";

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
    record_outbox_wait(&rows);
    let deliveries = enqueue(producer, shared, &rows).await?;
    let (published, failed) = await_deliveries(deliveries, claimed).await;
    let marking = std::time::Instant::now();
    let marked = shared.ledger.outbox_mark_published(&published).await;
    shared.systemic.observe(TASK, &marked);
    marked.map_err(|e| e.to_string())?;
    telemetry::record_stage(Stage::Mark, marking.elapsed());
    metrics::counter!("spendguard_published_total").increment(published.len() as u64);
    if !failed.is_empty() {
        return Err(format!(
            "{} of {} outbox rows were not acknowledged by the broker",
            failed.len(),
            rows.len()
        ));
    }
    Ok(rows.len())
}

/// Enqueues `rows` in their order (one agent's messages keep their order on its
/// partition: the producer has one request in flight per connection), waiting while the
/// client's local queue is full. Stops at the first row the client refuses outright (the
/// rows enqueued before it still go out, and may go out again with the retried rows:
/// identical copies, which consumers handle).
async fn enqueue(
    producer: &FutureProducer,
    shared: &Shared,
    rows: &[OutboxRow],
) -> Result<Vec<(i64, DeliveryFuture)>, String> {
    let mut deliveries = Vec::with_capacity(rows.len());
    for row in rows {
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
    Ok(deliveries)
}

/// Waits for every delivery (each fails within the producer's delivery timeout):
/// (acknowledged ids, failed ids).
async fn await_deliveries(
    deliveries: Vec<(i64, DeliveryFuture)>,
    enqueued: Instant,
) -> (Vec<i64>, Vec<i64>) {
    let mut published = Vec::with_capacity(deliveries.len());
    let mut failed = Vec::new();
    for (id, delivery) in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {
                telemetry::record_stage(Stage::ProduceAck, enqueued.elapsed());
                published.push(id);
            }
            Ok(Err((e, _))) => {
                tracing::warn!(error = %e, outbox_id = id, "publish failed; the row stays in the outbox");
                failed.push(id);
            }
            Err(_) => failed.push(id),
        }
    }
    (published, failed)
}

/// Hand-overs (one committed transaction's rows each) waiting for the direct publisher:
/// when it is full, transactions leave their rows to the claim round instead of waiting.
pub const DIRECT_QUEUE_BATCHES: usize = 256;
/// Hand-overs enqueued to the broker and not yet acknowledged and marked; the next waits
/// (and the queue above fills) when the broker or the database falls behind.
const DIRECT_IN_FLIGHT_BATCHES: usize = 64;
/// How long shutdown waits for the direct publisher's last acknowledgements (a delivery
/// fails within the producer's timeout, so this is that and a mark).
const DIRECT_DRAIN_DEADLINE_MS: u64 = crate::bus::SERVICE_PRODUCE_TIMEOUT_MS + 5_000;

/// The claimer name of this instance's direct publisher (never the claim round's own).
pub fn direct_claimer(instance: &str) -> String {
    format!("{instance}/direct")
}

/// Publishes the rows committed transactions handed over (`ledger::outbox`) as soon as
/// they arrive, without a claim round: enqueued in hand-over order, acknowledged and
/// marked concurrently with the next ones. A row the broker did not take is released to
/// the claim round; one whose mark failed stays leased and is published again by
/// whoever claims it after the lease (identical bytes, as after any crash).
pub async fn run_direct(shared: Arc<Shared>, mut handed: mpsc::Receiver<Vec<OutboxRow>>) {
    let Some(producer) = shared.producer.as_ref() else {
        return;
    };
    let in_flight = Arc::new(Semaphore::new(DIRECT_IN_FLIGHT_BATCHES));
    let mut stop = shared.shutdown.clone();
    let mut closing = false;
    loop {
        let rows = if closing {
            handed.recv().await
        } else {
            tokio::select! {
                rows = handed.recv() => rows,
                _ = stop.changed() => {
                    // No new hand-over from here on (a transaction that finds the queue
                    // closed leaves its rows to the claim round); what is queued goes out.
                    handed.close();
                    closing = true;
                    continue;
                }
            }
        };
        let Some(rows) = rows else { break };
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            break;
        };
        record_outbox_wait(&rows);
        let enqueued = Instant::now();
        let deliveries = match enqueue(producer, &shared, &rows).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "direct publish failed; the rows go to the claim round");
                release(&shared, rows.iter().map(|r| r.id).collect()).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (published, failed) = await_deliveries(deliveries, enqueued).await;
            let marking = Instant::now();
            let marked = shared.ledger.outbox_mark_published(&published).await;
            shared.systemic.observe(TASK_DIRECT, &marked);
            match marked {
                Ok(()) => {
                    telemetry::record_stage(Stage::Mark, marking.elapsed());
                    metrics::counter!("spendguard_published_total")
                        .increment(published.len() as u64);
                    metrics::counter!("spendguard_published_direct_total")
                        .increment(published.len() as u64);
                }
                Err(e) => {
                    tracing::warn!(error = %e, rows = published.len(), "published rows not marked; they are published again after their lease")
                }
            }
            release(&shared, failed).await;
            // Rows of the same agents that waited behind these can now be claimed.
            shared.outbox_ready.notify_one();
            drop(slot);
        });
    }
    // Shutdown: wait for the acknowledgements and marks still running.
    let drained = tokio::time::timeout(
        Duration::from_millis(DIRECT_DRAIN_DEADLINE_MS),
        in_flight.acquire_many(DIRECT_IN_FLIGHT_BATCHES as u32),
    )
    .await;
    if drained.is_err() {
        tracing::warn!(
            "direct publisher stopped with deliveries unanswered; their rows are published again after their lease"
        );
    }
}

/// Gives rows back to the claim round (their delivery failed) and wakes it.
async fn release(shared: &Shared, ids: Vec<i64>) {
    if ids.is_empty() {
        return;
    }
    let claimer = direct_claimer(&shared.settings.instance);
    let released = shared.ledger.outbox_release(&claimer, &ids).await;
    shared.systemic.observe(TASK_DIRECT, &released);
    match released {
        Ok(_) => shared.outbox_ready.notify_one(),
        Err(e) => {
            tracing::warn!(error = %e, rows = ids.len(), "rows not released; the claim round takes them after their lease")
        }
    }
}

/// Row written (database clock) → in a publisher's hands (this host's clock).
fn record_outbox_wait(rows: &[OutboxRow]) {
    let now = chrono::Utc::now();
    for row in rows {
        if let Ok(waited) = (now - row.created_at).to_std() {
            telemetry::record_stage(Stage::OutboxWait, waited);
        }
    }
}
