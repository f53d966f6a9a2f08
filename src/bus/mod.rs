//! Kafka plumbing over rdkafka: topic names and creation, the producer, the consumer
//! group of `serve`, the per-instance control consumer, and the dead-letter topic.
//!
//! Nothing here decides anything; it only moves bytes and reports what Kafka said.

pub mod dlq;
pub mod group;
pub mod properties;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

use crate::config::{CONTROL_PARTITIONS, Settings};

/// How long admin and metadata requests may take before we report the broker as down.
pub const ADMIN_TIMEOUT_MS: u64 = 10_000;
/// tansu answers a fetch only when `fetch.wait.max.ms` expires, even if data arrived
/// meanwhile (Apache Kafka answers as soon as `fetch.min.bytes` is there), so this bounds
/// the consume latency; each idle consumer then sends ~1000/FETCH_WAIT_MAX_MS fetches/s,
/// which costs the broker CPU. `SPENDGUARD_FETCH_WAIT_MAX_MS` overrides it (1..=500).
pub const FETCH_WAIT_MAX_MS: u32 = 2;
const FETCH_WAIT_MAX_MS_LIMIT: u32 = 500;

/// The `fetch.wait.max.ms` every consumer of this process uses.
pub fn fetch_wait_max_ms() -> String {
    let Ok(raw) = std::env::var("SPENDGUARD_FETCH_WAIT_MAX_MS") else {
        return FETCH_WAIT_MAX_MS.to_string();
    };
    match raw.trim().parse::<u32>() {
        Ok(ms) if (1..=FETCH_WAIT_MAX_MS_LIMIT).contains(&ms) => ms.to_string(),
        _ => {
            // A typo must not pass unnoticed, but it is no reason to refuse to consume.
            tracing::warn!(
                value = %raw,
                "SPENDGUARD_FETCH_WAIT_MAX_MS must be a whole number of milliseconds from 1 to {FETCH_WAIT_MAX_MS_LIMIT}; using {FETCH_WAIT_MAX_MS}"
            );
            FETCH_WAIT_MAX_MS.to_string()
        }
    }
}
/// How long a produce may wait in the client queue / for the broker before it fails.
pub const PRODUCE_TIMEOUT_MS: u64 = 30_000;

/// The topic names of one deployment (all share the configured prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub intents: String,
    pub decisions: String,
    pub approvals: String,
    /// Settlement messages of payment services (SPEC §11), key = agentId.
    pub settlements: String,
    pub control: String,
    pub dlq: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Topics {
        Topics {
            intents: format!("{prefix}spend.intents"),
            decisions: format!("{prefix}spend.decisions"),
            approvals: format!("{prefix}spend.approvals"),
            settlements: format!("{prefix}spend.settlements"),
            control: format!("{prefix}spend.control"),
            dlq: format!("{prefix}spend.dlq"),
        }
    }

    /// The deployment's name of a topic named without prefix (as the ledger's outbox
    /// records it: `spend.decisions`).
    pub fn resolve(&self, logical: &str) -> String {
        match logical {
            "spend.intents" => self.intents.clone(),
            "spend.decisions" => self.decisions.clone(),
            "spend.approvals" => self.approvals.clone(),
            "spend.settlements" => self.settlements.clone(),
            "spend.control" => self.control.clone(),
            "spend.dlq" => self.dlq.clone(),
            other => other.to_string(),
        }
    }

    /// Every topic with the partition count it is created with.
    pub fn layout(&self, s: &Settings) -> Vec<(String, i32)> {
        vec![
            (self.intents.clone(), s.intent_partitions),
            (self.decisions.clone(), s.intent_partitions),
            (self.approvals.clone(), s.approval_partitions),
            (self.settlements.clone(), s.settlement_partitions),
            (self.control.clone(), CONTROL_PARTITIONS),
            (self.dlq.clone(), s.dlq_partitions),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error(
        "Kafka client error talking to {brokers}: {source} (is the broker running? `scripts/tansu.sh start`; with TLS or SASL, check kafka_properties)"
    )]
    Client {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create topic {topic}: {message}")]
    CreateTopic { topic: String, message: String },
    #[error("publish to {topic} failed: {message}")]
    Publish {
        topic: String,
        message: String,
        /// What the broker or the client said, when it said something specific.
        code: Option<RDKafkaErrorCode>,
    },
}

impl BusError {
    /// Whether retrying the same call can succeed: the broker unreachable, a leader
    /// election, a full queue or a timeout are transient; a message the broker refuses
    /// for what it is (too large, malformed, not allowed) is not, and retrying it would
    /// hold its partition for ever (SPEC §15).
    pub fn is_transient(&self) -> bool {
        match self {
            // A client librdkafka refuses to create (a CA file that cannot be read, a
            // property it rejects) stays refused: the settings must change.
            BusError::Client { source, .. } => !matches!(
                source,
                rdkafka::error::KafkaError::ClientCreation(_)
                    | rdkafka::error::KafkaError::ClientConfig(..)
            ),
            BusError::CreateTopic { .. } => false,
            BusError::Publish { code, .. } => !code.is_some_and(refused_for_what_it_is),
        }
    }
}

/// Broker / client codes that refuse a message for its content or destination.
fn refused_for_what_it_is(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::InvalidRequiredAcks
            | RDKafkaErrorCode::Fatal
    )
}

/// Base client settings shared by every client of one deployment.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        // tansu (and Kafka) give every client its own id in logs; keep it recognisable.
        .set("client.id", "spendguard")
        .set("socket.keepalive.enable", "true");
    // librdkafka's own debug contexts (`cgrp`, `fetch`, `broker`, `all`...) for an
    // operator chasing a broker or consumer-group problem; logged through `rdkafka`.
    if let Ok(contexts) = std::env::var("SPENDGUARD_KAFKA_DEBUG")
        && !contexts.trim().is_empty()
    {
        c.set("debug", contexts.trim());
    }
    // TLS / SASL of the deployment (SPEC §14), from its settings.
    if let Some(security) = properties::installed() {
        security.apply(&mut c);
    }
    c
}

fn client_err(brokers: &str) -> impl Fn(rdkafka::error::KafkaError) -> BusError + '_ {
    move |source| BusError::Client {
        brokers: brokers.to_string(),
        source,
    }
}

/// Creates every missing topic with its configured partition count. Existing topics are
/// left as they are (a partition count is never changed behind an operator's back).
pub async fn ensure_topics(brokers: &str, topics: &[(String, i32)]) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers)
        .create()
        .map_err(client_err(brokers))?;
    let existing = existing_topics(brokers)?;
    let missing: Vec<NewTopic<'_>> = topics
        .iter()
        .filter(|(name, _)| !existing.contains(name))
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_millis(
        ADMIN_TIMEOUT_MS,
    ))));
    let results = admin
        .create_topics(missing.iter(), &opts)
        .await
        .map_err(client_err(brokers))?;
    for result in results {
        match result {
            Ok(_) => {}
            // Another instance created it between our metadata read and our request.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(BusError::CreateTopic {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Names of the topics the broker knows.
pub fn existing_topics(brokers: &str) -> Result<Vec<String>, BusError> {
    let consumer: BaseConsumer = client_config(brokers)
        .create()
        .map_err(client_err(brokers))?;
    let md = consumer
        .fetch_metadata(None, Duration::from_millis(ADMIN_TIMEOUT_MS))
        .map_err(client_err(brokers))?;
    Ok(md.topics().iter().map(|t| t.name().to_string()).collect())
}

/// Partition count of a topic, if it exists.
pub fn partition_count(brokers: &str, topic: &str) -> Result<Option<usize>, BusError> {
    let consumer: BaseConsumer = client_config(brokers)
        .create()
        .map_err(client_err(brokers))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_millis(ADMIN_TIMEOUT_MS))
        .map_err(client_err(brokers))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len()))
}

/// A producer tuned for the service: acks from the leader, small linger so one decision
/// is not held back waiting for a batch, and key-hashed partitioning (same agent, same
/// partition) that matches the Java client so other producers agree with us.
pub fn producer(brokers: &str) -> Result<FutureProducer, BusError> {
    // One request in flight per broker connection: the client's own retries (broker
    // restart, leader change) then resend in order, so one agent's partition receives
    // its decisions in ledger order and an outcome never overtakes its decision (SPEC
    // §15); a retry may duplicate a message, which consumers already handle (at least
    // once, identical copies). Not `enable.idempotence`: on tansu a producer that
    // reconnected after an outage was answered ProducerFenced, a fatal state in which
    // every later delivery failed (measured: 204 decisions never published). A delivery
    // fails within SERVICE_PRODUCE_TIMEOUT_MS, well inside the outbox lease, so a row is
    // never published by two instances at once.
    producer_config(brokers, SERVICE_LINGER_MS, SERVICE_PRODUCE_TIMEOUT_MS)
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .map_err(client_err(brokers))
}

/// Delivery timeout of the service's producer; the outbox lease
/// (`ledger::OUTBOX_LEASE_SECONDS`, 30 s) must stay well above it.
pub const SERVICE_PRODUCE_TIMEOUT_MS: u64 = 10_000;

/// How long the service's producer waits to fill a batch. The outbox hands it whole
/// batches at once, so waiting longer would only add latency.
const SERVICE_LINGER_MS: u32 = 1;
/// librdkafka's own default `linger.ms`: what a payment service's producer has unless
/// it tunes it. A producer sending one message at a time at a steady rate needs it to
/// form batches: on one tansu node with 12 partitions, 1 ms instead of 5 took the
/// pipeline's p99 at 2,000 intents/s from 231 ms to 1,003 ms (docs/benchmarks.md).
pub const CLIENT_LINGER_MS: u32 = 5;

/// A producer like a payment service's (`intents publish`, `loadgen`): the client
/// library's default batching.
pub fn client_producer(brokers: &str) -> Result<FutureProducer, BusError> {
    producer_lingering(brokers, CLIENT_LINGER_MS)
}

fn producer_lingering(brokers: &str, linger_ms: u32) -> Result<FutureProducer, BusError> {
    producer_config(brokers, linger_ms, PRODUCE_TIMEOUT_MS)
        .create()
        .map_err(client_err(brokers))
}

/// What every producer shares: acks from all replicas, Java-compatible key hashing (same
/// agent, same partition as other clients), no compression.
fn producer_config(brokers: &str, linger_ms: u32, timeout_ms: u64) -> ClientConfig {
    let mut c = client_config(brokers);
    c.set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", timeout_ms.to_string())
        .set("compression.type", "none");
    c
}

/// Messages fetched ahead per partition by the group consumer (`queued.min.messages`).
pub const QUEUED_MIN_MESSAGES: u32 = 1_000;

/// A group consumer whose offsets are committed only for messages the caller stored
/// (`store_offset` after the ledger commit); auto-commit then only ever commits
/// processed work. Its context ([`group::GroupContext`]) counts the rebalances and asks
/// for a rejoin when tansu strands the group; `max_poll_interval_ms` is how long the
/// caller may go without polling before librdkafka leaves the group for it.
pub fn group_consumer(
    brokers: &str,
    group_id: &str,
    instance: &str,
    max_poll_interval_ms: u64,
) -> Result<group::GroupConsumer, BusError> {
    client_config(brokers)
        .set("group.id", group_id)
        .set("client.id", format!("spendguard-{instance}"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            crate::config::SESSION_TIMEOUT_MS.to_string(),
        )
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", max_poll_interval_ms.to_string())
        // What librdkafka fetches ahead per partition (its default is 100,000 messages):
        // serve gives each partition a queue of its own, which fills up to this while
        // the partition's worker is busy; enough for several decide batches.
        .set("queued.min.messages", QUEUED_MIN_MESSAGES.to_string())
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_max_ms())
        .create_with_context(group::GroupContext::default())
        .map_err(client_err(brokers))
}

/// A consumer outside any group, for reading a topic in full (`decisions tail`, control,
/// tests): every instance gets every message.
pub fn standalone_consumer(brokers: &str) -> Result<StreamConsumer, BusError> {
    client_config(brokers)
        // librdkafka requires a group id even when we only `assign`; it is never joined.
        .set(
            "group.id",
            format!("spendguard-standalone-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", fetch_wait_max_ms())
        .create()
        .map_err(client_err(brokers))
}

/// Assigns every partition of `topic` to `consumer`, starting at `offset`.
pub fn assign_all(
    consumer: &StreamConsumer,
    brokers: &str,
    topic: &str,
    offset: rdkafka::Offset,
) -> Result<usize, BusError> {
    let count = partition_count(brokers, topic)?.ok_or_else(|| BusError::CreateTopic {
        topic: topic.to_string(),
        message:
            "topic does not exist (start `spendguard serve` once, or run scripts/services.sh up)"
                .into(),
    })?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..count {
        let p = i32::try_from(p).unwrap_or(i32::MAX);
        tpl.add_partition_offset(topic, p, offset)
            .map_err(client_err(brokers))?;
    }
    consumer.assign(&tpl).map_err(client_err(brokers))?;
    Ok(count)
}

/// Publishes one message and waits for the broker's acknowledgement.
pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    payload: &[u8],
    headers: Option<rdkafka::message::OwnedHeaders>,
) -> Result<(i32, i64), BusError> {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    producer
        .send(record, Duration::from_millis(PRODUCE_TIMEOUT_MS))
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| BusError::Publish {
            topic: topic.to_string(),
            message: e.to_string(),
            code: e.rdkafka_error_code(),
        })
}

/// Assigns every partition of `topic` at its current high watermark, read from the
/// broker now: unlike `Offset::End` (resolved lazily on first fetch), nothing produced
/// after this call returns can be missed.
pub fn assign_at_high_watermarks(
    consumer: &StreamConsumer,
    brokers: &str,
    topic: &str,
) -> Result<usize, BusError> {
    let count = partition_count(brokers, topic)?.ok_or_else(|| BusError::CreateTopic {
        topic: topic.to_string(),
        message: "topic does not exist".into(),
    })?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..count {
        let p = i32::try_from(p).unwrap_or(i32::MAX);
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_millis(ADMIN_TIMEOUT_MS))
            .map_err(client_err(brokers))?;
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(high))
            .map_err(client_err(brokers))?;
    }
    consumer.assign(&tpl).map_err(client_err(brokers))?;
    Ok(count)
}
