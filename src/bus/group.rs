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

use rdkafka::client::{Client, ClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use std::sync::Mutex;
use tokio::sync::Notify;

/// `serve`'s group consumer.
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// Watches the generation of every assignment (see the module documentation).
#[derive(Default)]
pub struct GroupContext {
    /// Generation of the last assignment; `None` before the first one and after a
    /// rejoin was requested.
    last_generation: Mutex<Option<i32>>,
    rejoin: Notify,
}

impl GroupContext {
    /// Completes when this member was handed an assignment of a generation it already
    /// had: the consume loop should then leave the group and subscribe again.
    pub async fn rejoin_requested(&self) {
        self.rejoin.notified().await;
    }

    /// Whether an assignment of `generation` repeats the previous one's generation;
    /// remembers it.
    fn assigned(&self, generation: i32) -> bool {
        let mut last = self
            .last_generation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
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

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
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
