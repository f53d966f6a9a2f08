//! rdkafka against the real broker (tansu): create topics, produce, consume from a
//! group and from a manual assignment, and dead-letter with headers.

mod common;

use futures::StreamExt;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Headers;
use spendguard::bus::{self, dlq};
use std::collections::BTreeMap;
use std::time::Duration;

const MESSAGES: usize = 30;
const RECEIVE_TIMEOUT_MS: u64 = 20_000;

#[tokio::test]
async fn create_produce_consume_round_trip() {
    if !common::require_broker() {
        return;
    }
    let brokers = common::brokers();
    let topic = common::unique("smoke.");
    bus::ensure_topics(&brokers, &[(topic.clone(), 3)])
        .await
        .expect("create topic");
    // Creating again is a no-op, not an error.
    bus::ensure_topics(&brokers, &[(topic.clone(), 3)])
        .await
        .expect("create topic twice");
    assert_eq!(bus::partition_count(&brokers, &topic).unwrap(), Some(3));

    let producer = bus::producer(&brokers).unwrap();
    let mut sent_partition: BTreeMap<String, i32> = BTreeMap::new();
    for i in 0..MESSAGES {
        let key = format!("agent-{}", i % 5);
        let (partition, _) = bus::publish(
            &producer,
            &topic,
            key.as_bytes(),
            format!("m{i}").as_bytes(),
            None,
        )
        .await
        .expect("publish");
        // The same key always lands on the same partition (per-agent ordering relies on it).
        assert_eq!(*sent_partition.entry(key).or_insert(partition), partition);
    }

    let group = common::unique("smoke-group-");
    let consumer = bus::group_consumer(&brokers, &group, "smoke").unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut seen = Vec::new();
    let mut stream = consumer.stream();
    while seen.len() < MESSAGES {
        let msg = tokio::time::timeout(Duration::from_millis(RECEIVE_TIMEOUT_MS), stream.next())
            .await
            .expect("timed out waiting for messages from the group consumer")
            .expect("stream ended")
            .expect("consume error");
        seen.push(String::from_utf8(msg.payload().unwrap().to_vec()).unwrap());
        consumer.store_offset_from_message(&msg).unwrap();
    }
    drop(stream);
    consumer
        .commit_consumer_state(CommitMode::Sync)
        .expect("commit");
    seen.sort();
    let mut expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected);

    // Manual assignment from the beginning reads every partition without a group.
    let reader = bus::standalone_consumer(&brokers).unwrap();
    assert_eq!(
        bus::assign_all(&reader, &brokers, &topic, rdkafka::Offset::Beginning).unwrap(),
        3
    );
    let mut count = 0;
    let mut stream = reader.stream();
    while count < MESSAGES {
        tokio::time::timeout(Duration::from_millis(RECEIVE_TIMEOUT_MS), stream.next())
            .await
            .expect("timed out waiting for messages from the assigned consumer")
            .unwrap()
            .unwrap();
        count += 1;
    }
}

#[tokio::test]
async fn dead_letters_keep_bytes_and_carry_the_error() {
    if !common::require_broker() {
        return;
    }
    let brokers = common::brokers();
    let topic = common::unique("smoke-dlq.");
    bus::ensure_topics(&brokers, &[(topic.clone(), 1)])
        .await
        .unwrap();
    let producer = bus::producer(&brokers).unwrap();
    let original: &[u8] = &[0xff, 0x00, b'{', 0xfe];
    let letter = dlq::DeadLetter {
        code: "invalid_utf8",
        message: "message is not valid UTF-8",
        field: None,
        source_topic: "spend.intents",
        source_partition: 2,
        source_offset: 41,
        instance: "smoke",
    };
    dlq::send(&producer, &topic, Some(b"agent-1"), original, &letter)
        .await
        .unwrap();

    let reader = bus::standalone_consumer(&brokers).unwrap();
    bus::assign_all(&reader, &brokers, &topic, rdkafka::Offset::Beginning).unwrap();
    let msg = tokio::time::timeout(Duration::from_millis(RECEIVE_TIMEOUT_MS), reader.recv())
        .await
        .expect("timed out waiting for the dead letter")
        .unwrap();
    assert_eq!(msg.payload().unwrap(), original);
    assert_eq!(msg.key().unwrap(), b"agent-1");
    let headers = msg.headers().expect("dead letter has headers");
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(get(dlq::HEADER_ERROR_CODE).as_deref(), Some("invalid_utf8"));
    assert_eq!(get(dlq::HEADER_SOURCE_OFFSET).as_deref(), Some("41"));
    assert_eq!(get(dlq::HEADER_SOURCE_PARTITION).as_deref(), Some("2"));
}
