//! The consumer context of `serve`'s group consumer, and how it gets a stranded group
//! moving again on tansu 0.6.
//!
//! tansu 0.6.0's group coordinator (tansu-broker, `src/coordinator/group/administrator.rs`)
//! expires a member whose session timed out in `Inner<O, Formed>::heartbeat`, through
//! `Inner<O, Formed>::missed_heartbeat`: the member is dropped from `members`, but the
//! group stays Formed with the same generation, leader and stored assignments, and the
//! `Wrapper::missed_heartbeat` that `Controller::heartbeat` runs afterwards (the one that
//! would move the group to Forming) finds nothing left to expire. Only the member whose
//! heartbeat noticed is answered REBALANCE_IN_PROGRESS; its rejoin takes the "existing
//! member" path of `Inner<O, Formed>::join` (same generation) and `Inner<O, Formed>::sync`
//! hands back the stored assignment, ignoring what a leader sends. The dead member's
//! partitions are then consumed by nobody, for ever: after a SIGKILL, whenever the expiry
//! is noticed by a heartbeat rather than by a JoinGroup, SyncGroup or LeaveGroup.
//!
//! A LeaveGroup is what moves such a group on: `Inner<O, Formed>::leave` goes to Forming
//! with a new generation, and without a leader when the leader is the member that died,
//! so every member rejoins and the new leader assigns over the live members only. So a
//! member handed an assignment without a new generation (the signature of the fault: a
//! real rebalance always brings a new one) asks the consume loop to leave the group and
//! join again as a new member ([`GroupContext::rejoin_requested`]). On Apache Kafka a
//! rejoin into a stable group can also be answered with the current generation; there
//! it costs one extra rebalance.
//!
//! The context also decides where an assigned partition starts (see
//! [`RESUME_REWIND_MESSAGES`]): tansu 0.6's default storage answers a fetch with the
//! record batches whose *base* offset is at or after the fetch offset (`tansu-storage`
//! `dynostore.rs` `fetch`: `offsets.split_off(&offset)`), so a consumer that resumes at
//! a committed offset inside a batch never receives the rest of that batch: measured in
//! `tests/service/bus_smoke.rs`, docs/reliability.md. So each assigned partition starts
//! a bounded number of messages before its committed offset, what arrives below the
//! committed offset is dropped ([`GroupContext::admit`]), and a partition whose first
//! message is past the committed offset anyway is counted as a gap.

use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// How many messages before its committed offset an assigned partition starts. The
/// committed offset of a partition serve consumed is usually inside a record batch (it
/// stores an offset per message, producers send several per batch), and tansu 0.6's
/// default storage answers a fetch from inside a batch with the batches that start after
/// it: the rest of the batch would never be delivered. Starting this far back fetches
/// the whole batch whenever fewer messages of it precede the committed offset; a
/// producer with librdkafka's defaults never puts more than 10,000 in one batch
/// (`batch.num.messages`), Java's default `batch.size` (16 KiB) far fewer. The cost is
/// bounded: at most this many messages per partition and assignment are fetched again
/// and dropped before any worker (Apache Kafka, which answers from inside a batch, pays
/// it too). A larger batch still loses its start; that is counted as a gap.
pub const RESUME_REWIND_MESSAGES: i64 = 10_000;
/// Bound on reading the committed offsets when partitions are assigned. librdkafka runs
/// the rebalance callback inside a poll of the consume loop, which waits meanwhile; on
/// a timeout the partitions start at their committed offsets, unchecked.
const COMMITTED_TIMEOUT_MS: u64 = 5_000;

/// `serve`'s group consumer.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Watches the generation of every assignment and where assigned partitions resume
/// (see the module documentation).
#[derive(Default)]
pub struct GroupContext {
    /// Generation of the last assignment; `None` before the first one and after a
    /// rejoin was requested.
    last_generation: Mutex<Option<i32>>,
    rejoin: Notify,
    /// Assigned partitions whose first message at or after the committed offset has not
    /// arrived yet.
    resuming: Mutex<Vec<Resuming>>,
    /// `resuming.len()`, read without the lock: nearly always 0, so [`GroupContext::admit`]
    /// costs one atomic load per message.
    resuming_count: AtomicUsize,
}

/// A partition assigned with a committed offset, until its first message at or past it.
#[derive(Debug, Clone, PartialEq)]
struct Resuming {
    topic: String,
    partition: i32,
    committed: i64,
}

/// Where a partition whose committed offset is `committed` starts fetching.
fn rewound_start(committed: i64) -> i64 {
    committed.saturating_sub(RESUME_REWIND_MESSAGES).max(0)
}

impl GroupContext {
    /// Completes when this member was handed an assignment of a generation it already
    /// had: the consume loop should then leave the group and subscribe again.
    pub async fn rejoin_requested(&self) {
        self.rejoin.notified().await;
    }

    /// Whether the message at `offset` of `topic`/`partition` goes to a worker: false
    /// for a message below the committed offset the partition was assigned with (the
    /// group handled it; it is here because the partition started
    /// [`RESUME_REWIND_MESSAGES`] earlier). Messages of a partition arrive in order, so
    /// once one at or past the committed offset arrived the partition is no longer
    /// checked; if that first one is past the committed offset, the messages between
    /// were never delivered to this group: counted in
    /// `spendguard_consumer_offset_gaps_total{topic}` and logged.
    pub fn admit(&self, topic: &str, partition: i32, offset: i64) -> bool {
        if self.resuming_count.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut resuming = lock(&self.resuming);
        let Some(at) = resuming
            .iter()
            .position(|r| r.partition == partition && r.topic == topic)
        else {
            return true;
        };
        let committed = resuming[at].committed;
        if offset < committed {
            return false;
        }
        resuming.swap_remove(at);
        self.resuming_count.store(resuming.len(), Ordering::Release);
        drop(resuming);
        if offset > committed {
            metrics::counter!("spendguard_consumer_offset_gaps_total", "topic" => topic.to_string())
                .increment(1);
            tracing::warn!(
                topic,
                partition,
                committed,
                first_delivered = offset,
                missing = offset - committed,
                "the first message delivered after an assignment is past the group's committed offset: the messages between were never delivered to this group (a record batch larger than the rewind on tansu, records deleted by retention, or a transaction marker); check the producers of those offsets"
            );
        }
        true
    }

    /// Remembers the committed offsets the partitions of an assignment start from (the
    /// partitions without one are not checked).
    fn resume_from(&self, committed: Vec<Resuming>) {
        let mut resuming = lock(&self.resuming);
        resuming.retain(|r| {
            !committed
                .iter()
                .any(|c| c.partition == r.partition && c.topic == r.topic)
        });
        resuming.extend(committed);
        self.resuming_count.store(resuming.len(), Ordering::Release);
    }

    /// Forgets the revoked partitions (`None`: all of them).
    fn stop_resuming(&self, revoked: Option<&TopicPartitionList>) {
        let mut resuming = lock(&self.resuming);
        match revoked {
            Some(tpl) => resuming.retain(|r| tpl.find_partition(&r.topic, r.partition).is_none()),
            None => resuming.clear(),
        }
        self.resuming_count.store(resuming.len(), Ordering::Release);
    }

    /// Sets each assigned partition's start [`RESUME_REWIND_MESSAGES`] before its
    /// committed offset (read from the group coordinator now) and remembers the
    /// committed offsets for [`GroupContext::admit`]. A partition without a committed
    /// offset keeps librdkafka's start (`auto.offset.reset`); one below the low
    /// watermark after the rewind is reset the same way. If the committed offsets
    /// cannot be read, the assignment is left as it is (librdkafka reads them itself)
    /// and the failure is counted.
    fn rewind(&self, consumer: &BaseConsumer<Self>, assigned: &mut TopicPartitionList) {
        let committed = match consumer.committed_offsets(
            assigned.clone(),
            Duration::from_millis(COMMITTED_TIMEOUT_MS),
        ) {
            Ok(committed) => committed,
            Err(e) => {
                metrics::counter!("spendguard_consumer_resume_unchecked_total").increment(1);
                tracing::warn!(
                    error = %e,
                    partitions = assigned.count(),
                    "committed offsets not read at assignment: these partitions resume at their committed offsets without the rewind, a resumption inside a record batch may skip messages on tansu"
                );
                return;
            }
        };
        let mut resuming = Vec::with_capacity(committed.count());
        for e in committed.elements() {
            if let Err(error) = e.error() {
                metrics::counter!("spendguard_consumer_resume_unchecked_total").increment(1);
                tracing::warn!(topic = e.topic(), partition = e.partition(), %error, "committed offset not read at assignment: the partition resumes without the rewind");
                continue;
            }
            let Offset::Offset(at) = e.offset() else {
                continue;
            };
            let start = Offset::Offset(rewound_start(at));
            if let Err(error) = assigned.set_partition_offset(e.topic(), e.partition(), start) {
                tracing::warn!(topic = e.topic(), partition = e.partition(), %error, "assignment start not set: the partition resumes without the rewind");
                continue;
            }
            resuming.push(Resuming {
                topic: e.topic().to_string(),
                partition: e.partition(),
                committed: at,
            });
        }
        tracing::debug!(
            ?resuming,
            "assigned partitions resume before their committed offsets"
        );
        self.resume_from(resuming);
    }

    /// Whether an assignment of `generation` repeats the previous one's generation;
    /// remembers it.
    fn assigned(&self, generation: i32) -> bool {
        let mut last = lock(&self.last_generation);
        if *last == Some(generation) {
            // The member joins again under a new id: whatever generation that brings is
            // a first one.
            *last = None;
            true
        } else {
            *last = Some(generation);
            false
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    /// rdkafka's own rebalance (pre hook, assign or unassign, post hook), with the start
    /// of each assigned partition moved back first ([`GroupContext::rewind`]).
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.rewind(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS if cooperative => {
                self.stop_resuming(Some(tpl));
            }
            _ => self.stop_resuming(None),
        }
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        self.pre_rebalance(consumer, &rebalance);
        let applied = match (&rebalance, cooperative) {
            (Rebalance::Assign(tpl), true) => consumer.incremental_assign(tpl),
            (Rebalance::Assign(tpl), false) => consumer.assign(tpl),
            (_, true) => consumer.incremental_unassign(tpl),
            (_, false) => consumer.unassign(),
        };
        if let Err(e) = applied {
            // librdkafka reports a failed (un)assignment as an error event too; the
            // consume loop counts those.
            tracing::warn!(error = %e, "consumer group (un)assignment failed");
        }
        self.post_rebalance(consumer, &rebalance);
    }

    /// Counts rebalances: a revocation while no instance starts or stops means this
    /// instance was put out of the group (a consume loop that did not poll for
    /// `max.poll.interval.ms`) or the group is churning. librdkafka calls this from
    /// within a poll of the consume loop.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (kind, partitions) = match rebalance {
            Rebalance::Assign(tpl) => ("assigned", tpl.count()),
            Rebalance::Revoke(tpl) => ("revoked", tpl.count()),
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "consumer group rebalance failed");
                return;
            }
        };
        metrics::counter!("spendguard_consumer_rebalances_total", "kind" => kind).increment(1);
        tracing::info!(partitions, kind, "consumer group rebalance");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        let Some(generation) = generation(consumer.client()) else {
            return;
        };
        if self.assigned(generation) {
            tracing::warn!(
                generation,
                partitions = partitions.count(),
                "assigned again without a new group generation (a member expired without a rebalance, a tansu 0.6 coordinator fault): leaving the group to join again"
            );
            metrics::counter!("spendguard_group_rejoins_total").increment(1);
            self.rejoin.notify_one();
        }
    }
}

/// The group generation the consumer last joined, from librdkafka (the rdkafka crate
/// does not expose it): `None` if librdkafka has no group.
fn generation<C: ClientContext>(client: &Client<C>) -> Option<i32> {
    use rdkafka::bindings as rd;
    // SAFETY: the handle is the live one of `client`, borrowed for this call; the
    // metadata librdkafka returns is ours, read once and destroyed.
    unsafe {
        let cgmd = rd::rd_kafka_consumer_group_metadata(client.native_ptr());
        if cgmd.is_null() {
            return None;
        }
        let generation = rd::rd_kafka_consumer_group_metadata_generation_id(cgmd);
        rd::rd_kafka_consumer_group_metadata_destroy(cgmd);
        Some(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_generation_asks_for_one_rejoin() {
        let context = GroupContext::default();
        assert!(!context.assigned(3), "a first assignment");
        assert!(!context.assigned(4), "a real rebalance");
        assert!(context.assigned(4), "assigned again, same generation");
        assert!(
            !context.assigned(4),
            "after the rejoin: a first assignment again"
        );
        assert!(!context.assigned(6));
    }

    fn resuming(topic: &str, partition: i32, committed: i64) -> Resuming {
        Resuming {
            topic: topic.into(),
            partition,
            committed,
        }
    }

    #[test]
    fn a_partition_starts_a_bounded_rewind_before_its_committed_offset() {
        assert_eq!(rewound_start(0), 0);
        assert_eq!(rewound_start(5), 0);
        assert_eq!(rewound_start(RESUME_REWIND_MESSAGES + 7), 7);
        assert_eq!(rewound_start(i64::MIN), 0, "nothing below the first offset");
    }

    #[test]
    fn messages_below_the_committed_offset_are_dropped_until_the_partition_caught_up() {
        let context = GroupContext::default();
        assert!(
            context.admit("t", 0, 3),
            "nothing assigned yet: every message"
        );
        context.resume_from(vec![resuming("t", 0, 5), resuming("t", 1, 0)]);
        for offset in 0..5 {
            assert!(
                !context.admit("t", 0, offset),
                "offset {offset} was handled"
            );
        }
        assert!(context.admit("u", 0, 1), "another topic is not checked");
        assert!(context.admit("t", 0, 5));
        assert!(context.admit("t", 0, 3), "caught up: no longer checked");
        assert_eq!(context.resuming_count.load(Ordering::Acquire), 1);
        // A gap: the first message after the assignment is past the committed offset.
        assert!(context.admit("t", 1, 4));
        assert_eq!(context.resuming_count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_new_assignment_replaces_the_committed_offset_and_a_revocation_forgets_it() {
        let context = GroupContext::default();
        context.resume_from(vec![resuming("t", 0, 5), resuming("t", 1, 9)]);
        context.resume_from(vec![resuming("t", 0, 8)]);
        assert!(
            !context.admit("t", 0, 7),
            "the newer committed offset counts"
        );
        let mut revoked = TopicPartitionList::new();
        revoked.add_partition("t", 0);
        context.stop_resuming(Some(&revoked));
        assert!(context.admit("t", 0, 7));
        assert!(!context.admit("t", 1, 8), "partition 1 was not revoked");
        context.stop_resuming(None);
        assert!(context.admit("t", 1, 8));
        assert_eq!(context.resuming_count.load(Ordering::Acquire), 0);
    }

    /// Against librdkafka itself, without a broker: a consumer that never joined is at
    /// generation -1.
    #[tokio::test]
    async fn librdkafka_gives_the_generation() {
        let consumer: GroupConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "spendguard-generation-test")
            .create_with_context(GroupContext::default())
            .unwrap();
        assert_eq!(generation(consumer.client()), Some(-1));
    }
}
