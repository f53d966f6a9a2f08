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

/// Longest mark-and-claim transaction of one turn; rows it claimed stay leased to this
/// instance, which claims them again first.
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

/// Claims enqueued to the broker and not yet answered; the next claim waits for an
/// answer when this many are out (each holds at most `CLAIM_BATCH` rows).
const ROUNDS_IN_FLIGHT: usize = 8;

/// The broker's answer to one claim's rows.
struct Answered {
    round: u64,
    published: Vec<i64>,
    failed: Vec<i64>,
}

/// The claim round, pipelined: each turn marks what the broker acknowledged and claims
/// what was committed since, in one transaction (`Ledger::outbox_cycle`), and does not
/// wait for the broker to answer the rows it enqueued before claiming again (up to
/// `ROUNDS_IN_FLIGHT` claims out), except for the agents with a row still in flight. A
/// decision therefore waits for the next turn, not for the last claim's
/// acknowledgements and its mark (issue 15).
pub async fn run(shared: Arc<Shared>) {
    // serve starts the publisher only with a broker; without one the rows stay unclaimed.
    let Some(producer) = shared.producer.as_ref() else {
        return;
    };
    let poll = Duration::from_millis(shared.settings.outbox_poll_interval_ms);
    let (answers, mut answered) = mpsc::unbounded_channel::<Answered>();
    let mut out = Rounds::default();
    // The first turn claims what an earlier run left.
    let mut claim_wanted = true;
    loop {
        let stopping = shared.shutting_down();
        let claim = claim_wanted && out.has_room();
        // Marks ride on claims; with nothing to claim they go once the broker has
        // answered every claim (or at shutdown), not one transaction per answer.
        let mark = !out.acked.is_empty() && (claim || out.in_flight.is_empty() || stopping);
        if claim || mark {
            match turn(&shared, producer, &mut out, claim, &answers).await {
                // A full claim: more may be waiting, go again at once.
                Ok(claimed) => claim_wanted = claimed == CLAIM_BATCH,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox publish failed; retrying");
                    metrics::counter!("spendguard_outbox_errors_total").increment(1);
                    if stopping {
                        // The rows stay in the outbox: the next instance to run publishes them.
                        return;
                    }
                    claim_wanted = false;
                }
            }
        }
        if stopping && !claim_wanted && out.in_flight.is_empty() && out.acked.is_empty() {
            return;
        }
        if claim_wanted && out.has_room() {
            continue;
        }
        let mut stop = shared.shutdown.clone();
        tokio::select! {
            _ = shared.outbox_ready.notified() => claim_wanted = true,
            _ = tokio::time::sleep(poll) => claim_wanted = true,
            // Once stopping, a fresh receiver would report the change at once, every time.
            _ = stop.changed(), if !stopping => claim_wanted = true,
            Some(answer) = answered.recv() => out.answered(answer),
        }
    }
}

/// What the claim round has out: the keys of the rows enqueued, per claim, and the rows
/// acknowledged and not yet marked.
#[derive(Default)]
struct Rounds {
    next: u64,
    in_flight: std::collections::HashMap<u64, Vec<String>>,
    acked: Vec<i64>,
}

impl Rounds {
    fn has_room(&self) -> bool {
        self.in_flight.len() < ROUNDS_IN_FLIGHT
    }

    /// Keys with a row in flight: the next claim takes none of their rows.
    fn busy_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.in_flight.values().flatten().cloned().collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// A claim's answer: its acknowledged rows wait for the next mark; its failed rows,
    /// still leased to this instance and no longer in flight, are claimed again by the
    /// next turn, in order.
    fn answered(&mut self, a: Answered) {
        let sent = self.in_flight.remove(&a.round);
        assert!(
            sent.is_some(),
            "an answer for claim {} that was not out",
            a.round
        );
        self.acked.extend(a.published);
        if !a.failed.is_empty() {
            tracing::warn!(
                rows = a.failed.len(),
                "outbox rows were not acknowledged by the broker; they are published again"
            );
            metrics::counter!("spendguard_outbox_errors_total").increment(1);
        }
    }
}

/// One turn: marks the acknowledged rows and (when `claim`) claims and enqueues new
/// ones. Returns how many rows were claimed.
async fn turn(
    shared: &Shared,
    producer: &FutureProducer,
    out: &mut Rounds,
    claim: bool,
    answers: &mpsc::UnboundedSender<Answered>,
) -> Result<usize, String> {
    let started = Instant::now();
    let limit = if claim { CLAIM_BATCH } else { 0 };
    let busy = out.busy_keys();
    let cycle = shared.ledger.outbox_cycle(&out.acked, &busy, limit);
    let Ok(rows) =
        tokio::time::timeout(Duration::from_millis(OUTBOX_ROUND_DEADLINE_MS), cycle).await
    else {
        return Err(format!(
            "no answer within {OUTBOX_ROUND_DEADLINE_MS} ms from the database"
        ));
    };
    shared.systemic.observe(TASK, &rows);
    let rows = rows.map_err(|e| e.to_string())?;
    if !out.acked.is_empty() {
        telemetry::record_stage(Stage::Mark, started.elapsed());
        metrics::counter!("spendguard_published_total").increment(out.acked.len() as u64);
        out.acked.clear();
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let claimed = Instant::now();
    // Row written to claimed; the two clocks are the database's and this host's (a skew
    // between them shows here, and only here).
    record_outbox_wait(&rows);
    let (deliveries, refused) = enqueue(producer, shared, &rows).await;
    let round = out.next;
    out.next += 1;
    let keys = rows[..deliveries.len()].iter().map(|r| r.key.clone());
    out.in_flight.insert(round, keys.collect());
    let answers = answers.clone();
    tokio::spawn(async move {
        let (published, failed) = await_deliveries(deliveries, claimed).await;
        // The receiver lives as long as the round; after it, nobody needs the answer.
        let _ = answers.send(Answered {
            round,
            published,
            failed,
        });
    });
    match refused {
        // The rows after the refused one stay leased here: the next turn claims them.
        Some(e) => Err(e),
        None => Ok(rows.len()),
    }
}

/// Enqueues `rows` in their order (one agent's messages keep their order on its
/// partition: the producer has one request in flight per connection), waiting while the
/// client's local queue is full. Stops at the first row the client refuses outright (the
/// rows enqueued before it still go out, and may go out again with the retried rows:
/// identical copies, which consumers handle). Returns the deliveries of the rows
/// enqueued, and why the client refused the next one, if it did.
async fn enqueue(
    producer: &FutureProducer,
    shared: &Shared,
    rows: &[OutboxRow],
) -> (Vec<(i64, DeliveryFuture)>, Option<String>) {
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
                Err((e, _)) => {
                    let refused = format!("cannot enqueue outbox row {}: {e}", row.id);
                    return (deliveries, Some(refused));
                }
            }
        }
    }
    (deliveries, None)
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
            (d, None) => d,
            // The rows enqueued before the refused one still go out, and again through
            // the claim round: identical copies.
            (_, Some(e)) => {
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
