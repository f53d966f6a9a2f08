//! `serve` over the real broker (tansu) and PostgreSQL: the example intents are decided
//! once each and published, every kind of malformed message is dead-lettered and audited
//! while processing continues, and a redelivery yields no second decision.

use crate::harness::policies::policies_dir;
use crate::harness::serve::{InProcess, Rig, json, read_until};
use crate::harness::{self, serial};
use rdkafka::Message;
use rdkafka::message::Headers;
use spendguard::bus::{self, dlq};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const WAIT_MS: u64 = 60_000;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example_intents() -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(root().join("examples/intents.jsonl"))
        .expect("examples/intents.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            // Only the well-formed examples; malformed ones are covered below explicitly.
            spendguard::intent::parse_intent(l.as_bytes()).ok()?;
            Some((v["agentId"].as_str()?.to_string(), l.as_bytes().to_vec()))
        })
        .collect()
}

fn malformed() -> Vec<(&'static str, Vec<u8>)> {
    let good = r#"{"intentId":"m-1","agentId":"agent-m","entityId":"acme-br","amount":"10.00","currency":"BRL","category":"utility","beneficiary":{"id":"utility:x","country":"BR"},"purpose":"PIX"}"#;
    let with = |k: &str, v: serde_json::Value| {
        let mut j: serde_json::Value = serde_json::from_str(good).unwrap();
        j[k] = v;
        j.to_string().into_bytes()
    };
    vec![
        ("invalid_json", b"this is not json".to_vec()),
        ("invalid_field", with("agentId", serde_json::json!(42))),
        (
            "non_positive_amount",
            with("amount", serde_json::json!("-5.00")),
        ),
        (
            "unknown_currency",
            with("currency", serde_json::json!("XYZ")),
        ),
        // Valid, but published under another agent's key (`agent-m`): SPEC §14.
        (
            "key_not_agent_id",
            with("agentId", serde_json::json!("agent-other")),
        ),
        (
            "message_too_large",
            with(
                "metadata",
                serde_json::json!({"blob": "x".repeat(spendguard::intent::MAX_INTENT_BYTES)}),
            ),
        ),
    ]
}

async fn count_events(db: &str, event_type: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM ledger_event WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn intents_are_decided_once_and_malformed_input_is_dead_lettered() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    let rig = Rig::with("sg_pipeline_", "pipe", |_| policies_dir()).await;
    let service = InProcess::start(rig.service_args("pipeline-test"));
    let (db, topics) = (rig.db.url.clone(), &rig.topics);

    let intents = example_intents();
    assert!(
        !intents.is_empty(),
        "examples/intents.jsonl has no valid intent"
    );
    let bad = malformed();
    // Malformed messages are interleaved with good ones: processing must go on.
    bus::ensure_topics(&brokers, &[(topics.intents.clone(), 12)])
        .await
        .unwrap();
    let producer = bus::producer(&brokers).unwrap();
    for (i, (agent, bytes)) in intents.iter().enumerate() {
        if let Some((_, junk)) = bad.get(i) {
            bus::publish(&producer, &topics.intents, b"agent-m", junk, None)
                .await
                .unwrap();
        }
        bus::publish(&producer, &topics.intents, agent.as_bytes(), bytes, None)
            .await
            .unwrap();
    }
    for (_, junk) in bad.iter().skip(intents.len()) {
        bus::publish(&producer, &topics.intents, b"agent-m", junk, None)
            .await
            .unwrap();
    }

    let ids: BTreeSet<String> = intents.iter().map(|(_, b)| common_id(b)).collect();
    let decisions = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        decided_ids(ms).is_superset(&ids)
    })
    .await;
    assert!(
        decided_ids(&decisions).is_superset(&ids),
        "not every example intent was decided"
    );
    let letters = read_until(&brokers, &topics.dlq, WAIT_MS, |ms| ms.len() >= bad.len()).await;
    let mut codes: Vec<String> = letters
        .iter()
        .map(|m| header(m, dlq::HEADER_ERROR_CODE))
        .collect();
    codes.sort();
    let mut expected: Vec<String> = bad.iter().map(|(c, _)| c.to_string()).collect();
    expected.sort();
    assert_eq!(codes, expected);
    for (code, bytes) in &bad {
        let letter = letters
            .iter()
            .find(|m| header(m, dlq::HEADER_ERROR_CODE) == *code)
            .unwrap();
        assert_eq!(
            letter.payload().unwrap_or_default(),
            bytes.as_slice(),
            "{code}: original bytes kept"
        );
    }
    assert_eq!(
        count_events(&db, "intent_invalid").await,
        bad.len() as i64,
        "each malformed message audited"
    );
    assert_eq!(count_events(&db, "intent_decided").await, ids.len() as i64);

    // Each published decision is the one the ledger recorded (the ledger is the truth).
    let by_id: BTreeMap<String, serde_json::Value> = decisions
        .iter()
        .map(json)
        .filter(|v| v.get("outcome").is_none())
        .map(|v| (v["intentId"].as_str().unwrap().to_string(), v))
        .collect();
    let ledger = spendguard::ledger::Ledger::connect(&db, "pipeline-test-check")
        .await
        .unwrap();
    for id in &ids {
        let record = ledger.decision(id).await.unwrap().expect("recorded");
        assert_eq!(
            serde_json::to_value(&record.message).unwrap(),
            by_id[id],
            "{id}"
        );
    }

    // Redelivery: the same bytes again give no second decision event.
    for (agent, bytes) in intents.iter().take(3) {
        bus::publish(&producer, &topics.intents, agent.as_bytes(), bytes, None)
            .await
            .unwrap();
    }
    // A marker intent after the redeliveries: once it is decided, they were processed.
    let marker = r#"{"intentId":"marker-1","agentId":"agent-marker","entityId":"acme-br","amount":"1.00","currency":"BRL","category":"utility","beneficiary":{"id":"utility:x","country":"BR"},"purpose":"PIX"}"#;
    bus::publish(
        &producer,
        &topics.intents,
        b"agent-marker",
        marker.as_bytes(),
        None,
    )
    .await
    .unwrap();
    let after = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        decided_ids(ms).contains("marker-1")
    })
    .await;
    assert!(decided_ids(&after).contains("marker-1"));
    assert_eq!(
        count_events(&db, "intent_decided").await,
        ids.len() as i64 + 1,
        "redelivery decided nothing new"
    );

    service.stop().await;
}

fn common_id(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["intentId"]
        .as_str()
        .unwrap()
        .to_string()
}

fn decided_ids(ms: &[rdkafka::message::OwnedMessage]) -> BTreeSet<String> {
    ms.iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(m.payload()?).ok())
        .filter(|v| v.get("outcome").is_none())
        .filter_map(|v| v["intentId"].as_str().map(String::from))
        .collect()
}

fn header(m: &rdkafka::message::OwnedMessage, name: &str) -> String {
    m.headers()
        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}
