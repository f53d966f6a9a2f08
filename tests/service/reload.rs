//! Hot policy reload on a running `serve`: a valid change takes effect without a restart
//! and is recorded as a policy activation; a broken file is refused, logged and counted,
//! and the last good set stays in force.

use crate::harness::intent::svc_intent_json;
use crate::harness::policies::test_policies;
use crate::harness::serve::{Rig, ServeProcess, json, read_until};
use crate::harness::{self, serial};
use spendguard::bus::{self, Topics};
use sqlx::Connection;
use std::time::Duration;

const AGENT: &str = "agent-reload";
const WAIT_MS: u64 = 60_000;

async fn activations_of(db: &str, version: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM ledger_event WHERE event_type = 'policy_activated' AND payload::jsonb->'policy'->>'version' = $1",
    )
    .bind(version)
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Publishes one intent and returns its decision (effect, policy version, reason codes).
async fn decide(
    brokers: &str,
    producer: &rdkafka::producer::FutureProducer,
    topics: &Topics,
    id: &str,
) -> (String, String, String) {
    let body = svc_intent_json(id, AGENT, "100.00", "vendor:known");
    bus::publish(
        producer,
        &topics.intents,
        AGENT.as_bytes(),
        body.as_bytes(),
        None,
    )
    .await
    .unwrap();
    let found =
        |ms: &[rdkafka::message::OwnedMessage]| ms.iter().map(json).find(|v| v["intentId"] == id);
    let ms = read_until(brokers, &topics.decisions, WAIT_MS, |ms| {
        found(ms).is_some()
    })
    .await;
    let v = found(&ms).unwrap_or_else(|| panic!("no decision for {id}"));
    let codes: Vec<&str> = v["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["code"].as_str())
        .collect();
    (
        v["effect"].as_str().unwrap().to_string(),
        v["policy"]["version"].as_str().unwrap().to_string(),
        codes.join(","),
    )
}

/// Replaces a file the way docs/operations.md asks operators to: write aside, rename.
fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_change_applies_live_and_a_broken_one_is_refused() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    let Rig {
        db,
        dir,
        policies,
        env,
        topics,
        ..
    } = Rig::with("sg_reload_", "reload", |dir| {
        test_policies(dir, "1", "1000000", "1h")
    })
    .await;
    let server = ServeProcess::start(&env, "reload-0", dir.path(), &[]);
    let producer = bus::producer(&brokers).unwrap();

    let (effect, version, _) = decide(&brokers, &producer, &topics, "r-1").await;
    assert_eq!((effect.as_str(), version.as_str()), ("ALLOW", "1"));

    // Version 2 blocks the category of our intents.
    let file = policies.join("svc-test.yaml");
    let v1 = std::fs::read_to_string(&file).unwrap();
    let v2 = v1
        .replace("version: \"1\"", "version: \"2\"")
        .replace("categories: [gambling]", "categories: [gambling, supplies]");
    assert_ne!(v1, v2);
    replace(&file, &v2);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while activations_of(&db, "2").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version 2 never activated:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (effect, version, codes) = decide(&brokers, &producer, &topics, "r-2").await;
    assert_eq!(
        (effect.as_str(), version.as_str()),
        ("DENY", "2"),
        "{codes}"
    );
    assert!(codes.contains("category_blocked"), "{codes}");

    // A broken version 3: refused, logged, counted; version 2 stays.
    replace(
        &file,
        &v2.replace("version: \"2\"", "version: \"3\"")
            .replace("perTxn: 10000", "perTxn: -5"),
    );
    while !server.log_text().contains("policy-reload refused") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broken file was not refused:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("policy-reload refused"))
        .unwrap();
    assert!(refusal.contains("svc-test.yaml"), "{refusal}");
    assert!(log.contains("refused_total=1"), "not counted:\n{log}");
    let (effect, version, _) = decide(&brokers, &producer, &topics, "r-3").await;
    assert_eq!((effect.as_str(), version.as_str()), ("DENY", "2"));
    assert_eq!(activations_of(&db, "3").await, 0);

    assert_eq!(server.terminate(), Some(0));
}
