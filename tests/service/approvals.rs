//! Signed approvals end to end over tansu + PostgreSQL: HITL and MSIG completed, REJECT
//! closes, and every refused vote is audited with its reason.

use crate::harness::intent::svc_intent_json;
use crate::harness::policies::test_policies;
use crate::harness::serve::{InProcess, Rig, json, read_until};
use crate::harness::{self, serial};
use base64::Engine as _;
use ed25519_dalek::SigningKey;
use spendguard::approvals::{self, Vote, VoteMessage};
use spendguard::bus;
use spendguard::config::ServiceArgs;
use spendguard::ledger::Ledger;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT_MS: u64 = 60_000;
const AGENT: &str = "agent-ap";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn registry_yaml() -> String {
    let b64 = |k: &SigningKey| {
        base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
    };
    format!(
        "approvers:\n  - {{id: alice, publicKey: {}, entities: ['*']}}\n  - {{id: bob, publicKey: {}, entities: ['*']}}\n  - {{id: carol, publicKey: {}, entities: ['nobody-*']}}\n  - {{id: {AGENT}, publicKey: {}, entities: ['*']}}\n",
        b64(&key(1)),
        b64(&key(2)),
        b64(&key(3)),
        b64(&key(4)),
    )
}

async fn refusal_reasons(db: &str) -> Vec<(String, String)> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_as(
        "SELECT coalesce(payload::jsonb->>'intentId', ''), payload::jsonb->>'reason' FROM ledger_event WHERE event_type = 'vote_refused' ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// Sums of committed and reserved over every usage window row.
async fn usage_totals(db: &str) -> (rust_decimal::Decimal, rust_decimal::Decimal) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    sqlx::query_as(
        "SELECT coalesce(sum(committed), 0), coalesce(sum(reserved), 0) FROM usage_window",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

async fn wait_for<F: Fn() -> Fut, Fut: std::future::Future<Output = bool>>(what: &str, f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(WAIT_MS);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_complete_reject_and_refuse_with_audited_reasons() {
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    harness::init_test_logs("warn");
    let rig = Rig::with("sg_approvals_", "appr", |dir| {
        test_policies(dir, "1", "1000000", "1h")
    })
    .await;
    let approvers = rig.dir.path().join("approvers.yaml");
    std::fs::write(&approvers, registry_yaml()).unwrap();
    let service = InProcess::start(ServiceArgs {
        approvers: Some(approvers),
        ..rig.service_args("approvals-test")
    });
    let (db, topics) = (rig.db.clone(), &rig.topics);

    // Large amounts need two approvals; an unknown beneficiary needs one.
    let producer = bus::producer(&brokers).unwrap();
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push((format!("big-{i}"), "2500.00", "vendor:known"));
    }
    for i in 0..4 {
        ids.push((format!("new-{i}"), "190.00", "vendor:new"));
    }
    for (id, amount, beneficiary) in &ids {
        bus::publish(
            &producer,
            &topics.intents,
            AGENT.as_bytes(),
            svc_intent_json(id, AGENT, amount, beneficiary).as_bytes(),
            None,
        )
        .await
        .unwrap();
    }
    let decisions = read_until(&brokers, &topics.decisions, WAIT_MS, |ms| {
        ms.len() >= ids.len()
    })
    .await;
    let effects: BTreeMap<String, String> = decisions
        .iter()
        .map(json)
        .map(|v| {
            (
                v["intentId"].as_str().unwrap().to_string(),
                v["effect"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let of = |e: &str| -> Vec<String> {
        effects
            .iter()
            .filter(|(_, x)| *x == e)
            .map(|(k, _)| k.clone())
            .collect()
    };
    let hitl = of("REQUIRE_HITL");
    let msig = of("REQUIRE_MSIG");
    assert!(
        !hitl.is_empty() && msig.len() >= 3,
        "the policy must ask for HITL and MSIG here: {effects:?}"
    );

    let ledger = Ledger::connect(&db, "approvals-test-check").await.unwrap();
    let hash = |id: String| {
        let ledger = &ledger;
        async move {
            ledger
                .decision(&id)
                .await
                .unwrap()
                .expect("decision recorded")
                .decision_hash
        }
    };
    let send = |m: VoteMessage| {
        let producer = producer.clone();
        let topic = topics.approvals.clone();
        async move {
            bus::publish(
                &producer,
                &topic,
                m.intent_id.as_bytes(),
                &serde_json::to_vec(&m).unwrap(),
                None,
            )
            .await
            .unwrap();
        }
    };

    let h = hitl[0].clone();
    let h_hash = hash(h.clone()).await;
    let (m1, m2, m3) = (msig[0].clone(), msig[1].clone(), msig[2].clone());
    let m1_hash = hash(m1.clone()).await;

    // Refusals on the HITL intent.
    let unsigned = VoteMessage {
        signature: None,
        ..approvals::sign_vote(&key(1), &h, "alice", &h_hash, Vote::Approve)
    };
    send(unsigned).await;
    send(approvals::sign_vote(
        &key(9),
        &h,
        "alice",
        &h_hash,
        Vote::Approve,
    ))
    .await; // forged
    send(approvals::sign_vote(
        &key(9),
        &h,
        "eve",
        &h_hash,
        Vote::Approve,
    ))
    .await; // unknown
    send(approvals::sign_vote(
        &key(3),
        &h,
        "carol",
        &h_hash,
        Vote::Approve,
    ))
    .await; // wrong entity
    send(approvals::sign_vote(
        &key(4),
        &h,
        AGENT,
        &h_hash,
        Vote::Approve,
    ))
    .await; // self
    let replayed = VoteMessage {
        intent_id: h.clone(),
        ..approvals::sign_vote(&key(1), &m1, "alice", &m1_hash, Vote::Approve)
    };
    send(replayed).await;
    send(approvals::sign_vote(
        &key(1),
        "no-such-intent",
        "alice",
        &h_hash,
        Vote::Approve,
    ))
    .await;
    // Then the valid one: HITL completes with one approval.
    send(approvals::sign_vote(
        &key(1),
        &h,
        "alice",
        &h_hash,
        Vote::Approve,
    ))
    .await;

    // MSIG: alice twice counts once, then bob completes it.
    send(approvals::sign_vote(
        &key(1),
        &m1,
        "alice",
        &m1_hash,
        Vote::Approve,
    ))
    .await;
    send(approvals::sign_vote(
        &key(1),
        &m1,
        "alice",
        &m1_hash,
        Vote::Approve,
    ))
    .await;
    send(approvals::sign_vote(
        &key(2),
        &m1,
        "bob",
        &m1_hash,
        Vote::Approve,
    ))
    .await;
    // REJECT closes.
    let m2_hash = hash(m2.clone()).await;
    send(approvals::sign_vote(
        &key(2),
        &m2,
        "bob",
        &m2_hash,
        Vote::Reject,
    ))
    .await;

    let outcome = |id: String| {
        let ledger = &ledger;
        async move {
            ledger
                .decision(&id)
                .await
                .unwrap()
                .and_then(|r| r.outcome)
                .map(|o| o.outcome.as_str().to_string())
        }
    };
    wait_for("outcomes", || async {
        outcome(h.clone()).await.is_some()
            && outcome(m1.clone()).await.is_some()
            && outcome(m2.clone()).await.is_some()
    })
    .await;
    assert_eq!(outcome(h.clone()).await.as_deref(), Some("APPROVED"));
    assert_eq!(outcome(m1.clone()).await.as_deref(), Some("APPROVED"));
    assert_eq!(outcome(m2.clone()).await.as_deref(), Some("REJECTED"));
    // A vote after the intent closed is refused too.
    send(approvals::sign_vote(
        &key(2),
        &h,
        "bob",
        &h_hash,
        Vote::Approve,
    ))
    .await;

    // Kill switch on at quorum: the intent cannot be approved.
    let m3_hash = hash(m3.clone()).await;
    ledger
        .set_kill_switch(
            &spendguard::kill_switch::Scope::Entity("acme-br".into()),
            true,
            "tester",
            "test",
            &spendguard::ledger::Origin::cli("t"),
        )
        .await
        .unwrap();
    send(approvals::sign_vote(
        &key(1),
        &m3,
        "alice",
        &m3_hash,
        Vote::Approve,
    ))
    .await;
    send(approvals::sign_vote(
        &key(2),
        &m3,
        "bob",
        &m3_hash,
        Vote::Approve,
    ))
    .await;
    wait_for("the killed outcome", || async {
        outcome(m3.clone()).await.is_some()
    })
    .await;
    assert_eq!(outcome(m3.clone()).await.as_deref(), Some("KILLED"));

    // 6 on the HITL intent (unsigned, forged, unknown, wrong entity, self, replayed),
    // the unknown intent, the duplicate MSIG vote, and the vote after closing.
    const REFUSALS: usize = 9;
    wait_for("every refusal audited", || async {
        refusal_reasons(&db).await.len() >= REFUSALS
    })
    .await;
    let reasons = refusal_reasons(&db).await;
    assert_eq!(reasons.len(), REFUSALS, "{reasons:?}");
    let on_h: Vec<&str> = reasons
        .iter()
        .filter(|(i, _)| *i == h)
        .map(|(_, r)| r.as_str())
        .collect();
    for expected in [
        "missing_signature",
        "bad_signature",
        "unknown_approver",
        "approver_not_registered_for_entity",
        "self_approval",
    ] {
        assert!(
            on_h.contains(&expected),
            "{expected} not audited for {h}: {reasons:?}"
        );
    }
    assert_eq!(
        on_h.iter().filter(|r| **r == "bad_signature").count(),
        2,
        "forged and replayed: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r == "unknown_intent"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(i, r)| *i == m1 && r == "duplicate_approver"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(i, r)| *i == h && (r == "already_closed" || r == "not_awaiting_approval")),
        "{reasons:?}"
    );

    // Usage: what was approved is committed, what still waits is reserved, nothing else.
    let (committed, reserved) = usage_totals(&db).await;
    let approved: rust_decimal::Decimal = "2690.00".parse().unwrap(); // h (190) + m1 (2500)
    let waiting_amount = ids
        .iter()
        .filter(|(id, _, _)| ![&h, &m1, &m2, &m3].contains(&&id.to_string()))
        .map(|(_, a, _)| a.parse::<rust_decimal::Decimal>().unwrap())
        .sum::<rust_decimal::Decimal>();
    // Day and month windows each hold the same amounts.
    assert_eq!(committed, approved * rust_decimal::Decimal::from(2));
    assert_eq!(reserved, waiting_amount * rust_decimal::Decimal::from(2));

    service.stop().await;
}
