//! Gauges that describe waiting work rather than events: intents waiting for approval,
//! outbox rows not yet published, and consumer lag per assigned partition. They are
//! sampled on a timer, because counting them on every change would put a query or a
//! broker round trip on the decision path.

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::bus::group::GroupConsumer;
use crate::telemetry;

/// How often the gauges are refreshed.
const SAMPLE_INTERVAL_MS: u64 = 2_000;
/// Bound on one watermark query, so a slow broker cannot stall the sampler for long.
const WATERMARK_TIMEOUT_MS: u64 = 1_000;
/// Partitions whose lag is reported at most (a larger assignment is truncated, with a
/// warning, so the sampler's work stays bounded).
const MAX_LAG_PARTITIONS: usize = 256;

/// `consumer`: `None` without Kafka (no lag to report).
pub async fn run(shared: Arc<Shared>, consumer: Option<Arc<GroupConsumer>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(SAMPLE_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let backlog = tokio::time::timeout(
            Duration::from_millis(SAMPLE_INTERVAL_MS),
            shared.ledger.backlog(),
        )
        .await;
        match backlog {
            Ok(Ok(b)) => {
                telemetry::set_pending_approvals(b.pending_approvals);
                telemetry::set_outbox_backlog(b.outbox_messages);
                metrics::gauge!("spendguard_database_up").set(1.0);
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "backlog gauges not refreshed");
                metrics::gauge!("spendguard_database_up").set(0.0);
            }
            Err(_) => {
                tracing::debug!("backlog gauges not refreshed: no answer from the database");
                metrics::gauge!("spendguard_database_up").set(0.0);
            }
        }
        let Some(consumer) = consumer.clone() else {
            continue;
        };
        // fetch_watermarks blocks the calling thread: keep it off the async workers.
        match tokio::task::spawn_blocking(move || consumer_lag(&consumer)).await {
            Ok(Ok(lags)) => {
                for (topic, partition, lag) in lags {
                    telemetry::set_consumer_lag(&topic, partition, lag);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "consumer lag not refreshed"),
            Err(e) => tracing::debug!(error = %e, "consumer lag task failed"),
        }
    }
}

/// (topic, partition, messages behind the high watermark) for each assigned partition.
/// A partition with no position yet (nothing consumed since assignment) counts from the
/// low watermark, which over-states rather than hides lag.
fn consumer_lag(
    consumer: &GroupConsumer,
) -> Result<Vec<(String, i32, i64)>, rdkafka::error::KafkaError> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(Vec::new());
    }
    let positions: TopicPartitionList = consumer.position()?;
    let mut out = Vec::with_capacity(assignment.count().min(MAX_LAG_PARTITIONS));
    for (i, e) in positions.elements().iter().enumerate() {
        if i >= MAX_LAG_PARTITIONS {
            tracing::warn!(
                assigned = assignment.count(),
                reported = MAX_LAG_PARTITIONS,
                "consumer lag reported for the first partitions only"
            );
            break;
        }
        let (low, high) = consumer.fetch_watermarks(
            e.topic(),
            e.partition(),
            Duration::from_millis(WATERMARK_TIMEOUT_MS),
        )?;
        let position = match e.offset() {
            Offset::Offset(o) => o,
            _ => low,
        };
        out.push((
            e.topic().to_string(),
            e.partition(),
            (high - position).max(0),
        ));
    }
    Ok(out)
}
