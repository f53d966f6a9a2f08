//! The consumer of `serve`'s group, and what it reports of the group's rebalances: a
//! revocation while no instance starts or stops means this instance was put out of the
//! group (a consume loop that did not poll for `max.poll.interval.ms`) or the group is
//! churning. librdkafka calls these from within a poll of the consume loop.

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};

/// The consumer of `serve`'s group.
pub(crate) type GroupConsumer = StreamConsumer<GroupContext>;

pub(crate) struct GroupContext;

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let kind = match rebalance {
            Rebalance::Assign(_) => "assigned",
            Rebalance::Revoke(_) => "revoked",
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "consumer group rebalance failed");
                return;
            }
        };
        metrics::counter!("spendguard_consumer_rebalances_total", "kind" => kind).increment(1);
        if let Rebalance::Assign(tpl) | Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), kind, "consumer group rebalance");
        }
    }
}
