//! Lag of the consumer group's committed offsets over every partition of the input
//! topics, whoever consumes them, or nobody.
//!
//! `spendguard_consumer_lag_messages` comes from an instance's own assignment, so a
//! partition the broker left without an owner (tansu 0.6 strands a dead member's
//! partitions, docs/reliability.md) has no series at all and no lag alert can see it.
//! This task reads what the group committed for every partition of `spend.intents`,
//! `spend.approvals` and `spend.settlements` and the partitions' high watermarks, and
//! exports `spendguard_consumer_group_lag_messages{topic,partition}` and
//! `spendguard_consumer_group_committed_offset{topic,partition}`; alert
//! `SpendguardPartitionNotConsumed` fires when a partition has lag and its committed
//! offset has not moved for a while. Every instance reports the same values (the rules
//! take the maximum over instances).
//!
//! It never holds up the pipeline: its own task, its broker calls on a blocking thread,
//! each with a timeout, and a whole sample abandoned once past its deadline. A failed
//! sample leaves the gauges at their last values and is counted by kind in
//! `spendguard_consumer_group_lag_errors_total{error}`.

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Shared, subscribed_topics};
use crate::bus::group::GroupConsumer;
use crate::telemetry;

/// How often the group's lag is sampled. Slower than the per-instance gauges (2 s): one
/// sample is a metadata request per topic, one offset fetch and a watermark query per
/// partition, repeated by every instance; a stranded partition is a matter of minutes.
const INTERVAL_MS: u64 = 10_000;
/// Bound on each broker call of a sample.
const CALL_TIMEOUT_MS: u64 = 2_000;
/// No call of a sample starts after this much time: a slow broker cannot keep the
/// sampler's thread for more than this plus one call.
const SAMPLE_DEADLINE_MS: u64 = 6_000;
const _: () = assert!(SAMPLE_DEADLINE_MS + CALL_TIMEOUT_MS < INTERVAL_MS);
/// Partitions sampled at most (over the three topics), so one sample's work is bounded
/// whatever partition counts the topics were created with.
const MAX_PARTITIONS: usize = 256;

/// One partition's lag, as exported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PartitionLag {
    pub topic: String,
    pub partition: i32,
    /// What the group committed; the low watermark when it committed nothing (where the
    /// group would start: `auto.offset.reset` is `earliest`).
    pub committed: i64,
    /// High watermark minus `committed`, never negative.
    pub lag: i64,
}

/// Why a sample failed, as counted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SampleError {
    #[error("{stage}: {source}")]
    Broker {
        stage: &'static str,
        source: KafkaError,
    },
    #[error("topic {0} is unknown to the broker")]
    UnknownTopic(String),
    #[error("the sample was not finished within {SAMPLE_DEADLINE_MS} ms")]
    Deadline,
    #[error("the sampling task failed: {0}")]
    Task(String),
}

impl SampleError {
    /// The `error` label of `spendguard_consumer_group_lag_errors_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SampleError::Broker { source, .. } => match source.rdkafka_error_code() {
                Some(
                    RDKafkaErrorCode::OperationTimedOut
                    | RDKafkaErrorCode::RequestTimedOut
                    | RDKafkaErrorCode::BrokerTransportFailure
                    | RDKafkaErrorCode::AllBrokersDown,
                ) => "unreachable",
                Some(
                    RDKafkaErrorCode::WaitingForCoordinator
                    | RDKafkaErrorCode::CoordinatorNotAvailable
                    | RDKafkaErrorCode::NotCoordinator
                    | RDKafkaErrorCode::CoordinatorLoadInProgress,
                ) => "no_coordinator",
                _ => "broker",
            },
            SampleError::UnknownTopic(_) => "unknown_topic",
            SampleError::Deadline => "deadline",
            SampleError::Task(_) => "task",
        }
    }

    /// Whether the next sample may succeed without anyone acting: all but a topic the
    /// broker does not know (deleted, or a wrong prefix) and a failed task.
    pub(crate) fn is_transient(&self) -> bool {
        !matches!(self, SampleError::UnknownTopic(_) | SampleError::Task(_))
    }
}

/// Samples every [`INTERVAL_MS`] until the instance stops (the caller aborts it).
pub async fn run(shared: Arc<Shared>, consumer: Arc<GroupConsumer>) {
    let topics: Vec<String> = subscribed_topics(&shared.topics)
        .iter()
        .map(|t| t.to_string())
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let consumer = consumer.clone();
        let topics = topics.clone();
        // Waited for in full (at most SAMPLE_DEADLINE_MS + CALL_TIMEOUT_MS): samples
        // never pile up on the blocking pool.
        let sampled = tokio::task::spawn_blocking(move || sample(&consumer, &topics))
            .await
            .unwrap_or_else(|e| Err(SampleError::Task(e.to_string())));
        match sampled {
            Ok(lags) => {
                if failing {
                    tracing::info!("consumer group lag sampled again");
                }
                failing = false;
                for l in lags {
                    telemetry::set_consumer_group_lag(&l.topic, l.partition, l.committed, l.lag);
                }
            }
            Err(e) => {
                metrics::counter!("spendguard_consumer_group_lag_errors_total", "error" => e.kind())
                    .increment(1);
                // Once per failing stretch: a broker outage would otherwise log every
                // interval.
                if failing {
                    tracing::debug!(error = %e, "consumer group lag not sampled");
                } else {
                    tracing::warn!(
                        error = %e,
                        transient = e.is_transient(),
                        "consumer group lag not sampled; spendguard_consumer_group_lag_messages keeps its last values"
                    );
                }
                failing = true;
            }
        }
    }
}

/// One sample: partitions from the broker's metadata, the group's committed offsets in
/// one request, then each partition's watermarks.
fn sample(consumer: &GroupConsumer, topics: &[String]) -> Result<Vec<PartitionLag>, SampleError> {
    let deadline = Instant::now() + Duration::from_millis(SAMPLE_DEADLINE_MS);
    let timeout = Duration::from_millis(CALL_TIMEOUT_MS);
    let in_time = || {
        if Instant::now() < deadline {
            Ok(())
        } else {
            Err(SampleError::Deadline)
        }
    };
    let broker = |stage| move |source| SampleError::Broker { stage, source };
    let mut all = TopicPartitionList::new();
    'topics: for topic in topics {
        in_time()?;
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(broker("metadata"))?;
        let Some(found) = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
        else {
            return Err(SampleError::UnknownTopic(topic.clone()));
        };
        for p in found.partitions() {
            if all.count() >= MAX_PARTITIONS {
                tracing::warn!(
                    reported = MAX_PARTITIONS,
                    "consumer group lag sampled for the first partitions only"
                );
                break 'topics;
            }
            all.add_partition(topic, p.id());
        }
    }
    in_time()?;
    let committed = consumer
        .committed_offsets(all, timeout)
        .map_err(broker("committed offsets"))?;
    let mut out = Vec::with_capacity(committed.count());
    for e in committed.elements() {
        in_time()?;
        let (low, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), timeout)
            .map_err(broker("watermarks"))?;
        out.push(partition_lag(
            e.topic(),
            e.partition(),
            e.offset(),
            low,
            high,
        ));
    }
    Ok(out)
}

fn partition_lag(
    topic: &str,
    partition: i32,
    committed: Offset,
    low: i64,
    high: i64,
) -> PartitionLag {
    let committed = match committed {
        Offset::Offset(at) if at >= 0 => at,
        _ => low,
    };
    PartitionLag {
        topic: topic.to_string(),
        partition,
        committed,
        lag: (high - committed).max(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_committed_offset_or_from_the_start() {
        let l = partition_lag("t", 2, Offset::Offset(7), 0, 10);
        assert_eq!((l.committed, l.lag), (7, 3));
        // Nothing committed: everything still on the partition waits.
        let l = partition_lag("t", 2, Offset::Invalid, 4, 10);
        assert_eq!((l.committed, l.lag), (4, 6));
        // A watermark read before the commit landed: no negative lag.
        let l = partition_lag("t", 2, Offset::Offset(12), 0, 10);
        assert_eq!(l.lag, 0);
    }

    #[test]
    fn errors_are_classified() {
        let timed_out = SampleError::Broker {
            stage: "watermarks",
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut),
        };
        assert_eq!(timed_out.kind(), "unreachable");
        assert!(timed_out.is_transient());
        let coordinator = SampleError::Broker {
            stage: "committed offsets",
            source: KafkaError::MetadataFetch(RDKafkaErrorCode::WaitingForCoordinator),
        };
        assert_eq!(coordinator.kind(), "no_coordinator");
        assert_eq!(SampleError::Deadline.kind(), "deadline");
        let unknown = SampleError::UnknownTopic("x".into());
        assert_eq!(unknown.kind(), "unknown_topic");
        assert!(!unknown.is_transient());
    }
}
