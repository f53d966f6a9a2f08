//! Approval expiry on a running `serve`: a waiting intent past its policy's approvalTtl
//! is closed EXPIRED by the sweeper (published on spend.decisions, reservation released),
//! and a vote arriving afterwards is refused with its audited reason.

use crate::harness::intent::svc_intent_json;
use crate::harness::policies::test_policies;
use crate::harness::serve::{Rig, ServeProcess, json, read_until};
use crate::harness::{self, serial};
use ed25519_dalek::SigningKey;
use spendguard::approvals::{self, Vote};
use spendguard::bus;
use spendguard::ledger::Ledger;
use sqlx::Connection;
use std::time::Duration;

const AGENT: &str = "agent-exp";
const WAIT_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_expires_and_a_late_vote_is_refused() {
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
    } = Rig::with("sg_expiry_", "exp", |dir| {
        test_policies(dir, "1", "1000000", "2s")
    })
    .await;
    // The default registry location, next to the policies (and ignored by their loader).
    let alice = SigningKey::from_bytes(&[1; 32]);
    std::fs::write(
        policies.join("approvers.yaml"),
        format!(
            "approvers:\n  - {{id: alice, publicKey: {}, entities: ['*']}}\n",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                alice.verifying_key().to_bytes()
            )
        ),
    )
    .unwrap();
    let server = ServeProcess::start(&env, "expiry-0", dir.path(), &[]);
    let producer = bus::producer(&brokers).unwrap();

    // An unknown beneficiary: human approval, which nobody gives in time.
    let body = svc_intent_json("e-1", AGENT, "100.00", "vendor:new");
    bus::publish(
        &producer,
        &topics.intents,
        AGENT.as_bytes(),
        body.as_bytes(),
        None,
    )
    .await
    .unwrap();
    let outcome_of = |ms: &[rdkafka::message::OwnedMessage]| {
        ms.iter()
            .map(json)
            .find(|v| v["intentId"] == "e-1" && v.get("outcome").is_some())
    };
    let ms = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        outcome_of(ms).is_some()
    })
    .await;
    let first = ms
        .iter()
        .map(json)
        .find(|v| v["intentId"] == "e-1")
        .unwrap_or_else(|| panic!("no decision for e-1:\n{}", server.log_text()));
    assert_eq!(first["effect"], "REQUIRE_HITL", "{first}");
    let outcome = outcome_of(&ms).unwrap_or_else(|| panic!("no outcome:\n{}", server.log_text()));
    assert_eq!(outcome["outcome"], "EXPIRED", "{outcome}");
    // The expiry closes it with the decision's terms, and no approvals were given.
    assert_eq!(outcome["decisionHash"], first["decisionHash"], "{outcome}");
    assert!(outcome["decisionHash"].is_string(), "{outcome}");
    assert_eq!(outcome["expiresAt"], first["expiresAt"], "{outcome}");
    assert_eq!(outcome["approvalsRequired"], 1, "{outcome}");
    assert!(outcome.get("approvals").is_none(), "{outcome}");

    // The reservation is released.
    let mut conn = sqlx::PgConnection::connect(&db).await.unwrap();
    let reserved: rust_decimal::Decimal =
        sqlx::query_scalar("SELECT coalesce(sum(reserved), 0) FROM usage_window")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(reserved.is_zero(), "reserved {reserved} after expiry");

    // A correctly signed vote after expiry is refused, and the refusal audited.
    let ledger = Ledger::connect(&db, "expiry-check").await.unwrap();
    let hash = ledger.decision("e-1").await.unwrap().unwrap().decision_hash;
    let vote = approvals::sign_vote(&alice, "e-1", "alice", &hash, Vote::Approve);
    bus::publish(
        &producer,
        &topics.approvals,
        b"e-1",
        &serde_json::to_vec(&vote).unwrap(),
        None,
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    let refusal: (String, String) = loop {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT payload::jsonb->>'reason', payload::jsonb->>'detail' FROM ledger_event WHERE event_type = 'vote_refused' AND resource = 'e-1'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap();
        if let Some(r) = row {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "late vote never refused:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The sweeper closed it first (already_closed ... as EXPIRED); a vote racing the
    // sweeper would be refused as `expired` instead.
    assert!(
        (refusal.0 == "already_closed" && refusal.1.contains("EXPIRED")) || refusal.0 == "expired",
        "{refusal:?}"
    );
    let still: String =
        sqlx::query_scalar("SELECT outcome FROM intent_outcome WHERE intent_id = 'e-1'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(still, "EXPIRED");

    assert_eq!(server.terminate(), Some(0));
}
