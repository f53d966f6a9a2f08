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
    // The swap follows the ledger's record (activation, returning contents, bindings:
    // three transactions), so the log line, not the ledger row, says version 2 decides.
    while !server
        .log_text()
        .contains("policy-reload activated: svc-test@2")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version 2 never activated:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        activations_of(&db, "2").await,
        1,
        "swapped but not recorded"
    );
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

/// `policy_set_refused` events recorded so far: (stage, codes).
async fn refusals(db: &str) -> Vec<(String, Vec<String>)> {
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM ledger_event WHERE event_type = 'policy_set_refused' ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_str(p).unwrap();
            let codes = v["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["code"].as_str().unwrap().to_string())
                .collect();
            (v["stage"].as_str().unwrap().to_string(), codes)
        })
        .collect()
}

/// Issue 14 item 2: a set `policy check` would fail (lint errors, not parse errors) is
/// refused by hot reload and by start-up: the last good set keeps deciding, the refusal
/// is logged, counted and recorded in the ledger; lint warnings do not refuse a set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_with_lint_errors_is_refused_and_audited_warnings_are_not() {
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
    } = Rig::with("sg_reload_lint_", "reload-lint", |dir| {
        test_policies(dir, "1", "1000000", "1h")
    })
    .await;
    let server = ServeProcess::start_with_api(&env, "reload-lint-0", dir.path());
    let addr = server.api_addr();
    let refused_metric = || async move {
        let (status, text) = crate::harness::http::request(
            addr,
            "GET",
            "/metrics",
            Some("demo-operator-token"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find(|l| {
                l.starts_with("spendguard_policy_reloads_total{")
                    && l.contains("result=\"refused\"")
            })
            .and_then(|l| l.rsplit_once(' '))
            .map_or(0.0, |(_, v)| v.parse::<f64>().unwrap())
    };
    let producer = bus::producer(&brokers).unwrap();
    let (effect, version, _) = decide(&brokers, &producer, &topics, "l-1").await;
    assert_eq!((effect.as_str(), version.as_str()), ("ALLOW", "1"));
    assert_eq!(refused_metric().await, 0.0);

    // Version 2 parses, but blocks the beneficiary its allow list names: lint error
    // pattern_allowed_and_blocked (and a typo'd country, unknown_country).
    let file = policies.join("svc-test.yaml");
    let v1 = std::fs::read_to_string(&file).unwrap();
    let v2 = v1.replace("version: \"1\"", "version: \"2\"").replace(
        "blockLists: {categories: [gambling]}",
        "blockLists: {categories: [gambling, supplies], beneficiaries: [\"vendor:known\"]}\nrules: [{if: {countryIn: [XX]}, then: {effect: DENY, reason: nope}}]",
    );
    assert_ne!(v1, v2);
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_spendguard"))
        .args(["policy", "check", policies.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(checked.status.success(), "v1 passes policy check");
    replace(&file, &v2);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while !server.log_text().contains("policy-reload refused") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lint-erroring set was not refused:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = server.log_text();
    assert!(log.contains("pattern_allowed_and_blocked"), "{log}");
    assert!(log.contains("unknown_country"), "{log}");
    // The same verdict as `policy check`.
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_spendguard"))
        .args(["policy", "check", policies.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(1));
    // The last good set keeps deciding: v2 would have denied this intent.
    let (effect, version, _) = decide(&brokers, &producer, &topics, "l-2").await;
    assert_eq!((effect.as_str(), version.as_str()), ("ALLOW", "1"));
    assert_eq!(activations_of(&db, "2").await, 0);
    assert_eq!(refused_metric().await, 1.0);
    let recorded = refusals(&db).await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, "reload");
    assert!(
        recorded[0]
            .1
            .contains(&"pattern_allowed_and_blocked".to_string())
            && recorded[0].1.contains(&"unknown_country".to_string()),
        "{recorded:?}"
    );

    // Version 3 has only a warning (an unknown category): activated, the warning logged.
    let v3 = v1.replace("version: \"1\"", "version: \"3\"").replace(
        "blockLists: {categories: [gambling]}",
        "blockLists: {categories: [gambling, supplies, gamblng]}",
    );
    replace(&file, &v3);
    while activations_of(&db, "3").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version 3 (warnings only) never activated:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (effect, version, _) = decide(&brokers, &producer, &topics, "l-3").await;
    assert_eq!((effect.as_str(), version.as_str()), ("DENY", "3"));
    assert!(
        server.log_text().contains("unknown_category"),
        "{}",
        server.log_text()
    );
    assert_eq!(refused_metric().await, 1.0);
    assert_eq!(server.terminate(), Some(0));

    // Start-up refuses the lint-erroring set too, says why, and records it.
    replace(&file, &v2);
    let out = crate::harness::serve::spendguard(&env)
        .args(["serve", "--instance", "reload-lint-1"])
        .args(crate::harness::serve::demo_flag(&env, &[]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("pattern_allowed_and_blocked"), "{stderr}");
    let recorded = refusals(&db).await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert_eq!(recorded[1].0, "startup");
}
