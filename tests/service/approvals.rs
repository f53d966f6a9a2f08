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
    let (db, topics) = (rig.db.url.clone(), &rig.topics);

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

/// Approvers with no database (SPEC §13.1), registered for `acme-*`; carol only for
/// another entity; the agent itself is registered too (and must never approve itself).
fn inbox_registry_yaml() -> String {
    let b64 = |k: &SigningKey| {
        base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
    };
    format!(
        "approvers:\n  - {{id: alice, publicKey: {}, entities: ['acme-*']}}\n  - {{id: bob, publicKey: {}, entities: ['acme-*']}}\n  - {{id: carol, publicKey: {}, entities: ['globex-*']}}\n  - {{id: {AGENT}, publicKey: {}, entities: ['acme-*']}}\n",
        b64(&key(1)),
        b64(&key(2)),
        b64(&key(3)),
        b64(&key(4)),
    )
}

/// One approver's files: its secret key and its API token, nothing else.
struct ApproverFiles {
    id: &'static str,
    key: std::path::PathBuf,
    token_file: std::path::PathBuf,
    token: String,
}

fn approver_files(dir: &std::path::Path, id: &'static str, seed: u8) -> ApproverFiles {
    let key = dir.join(format!("{id}.key"));
    std::fs::write(
        &key,
        base64::engine::general_purpose::STANDARD.encode([seed; 32]),
    )
    .unwrap();
    let token = format!("{id}-approver-token");
    let token_file = dir.join(format!("{id}.token"));
    std::fs::write(&token_file, &token).unwrap();
    ApproverFiles {
        id,
        key,
        token_file,
        token,
    }
}

/// Runs `spendguard approve` as an approver would: an environment holding the broker
/// and topic prefix only (no DATABASE_URL, no service settings).
fn approve_cli(rig: &Rig, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(crate::harness::serve::binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPENDGUARD_BROKERS", harness::brokers())
        .env("SPENDGUARD_TOPIC_PREFIX", &rig.prefix)
        .arg("approve")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run spendguard approve");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The raw message published on spend.decisions for `id`: its decision, or its outcome.
fn on_topic<'a>(
    messages: &'a [rdkafka::message::OwnedMessage],
    id: &str,
    outcome: bool,
) -> Option<&'a rdkafka::message::OwnedMessage> {
    messages.iter().find(|m| {
        let v = json(m);
        v["intentId"] == id && v.get("outcome").is_some() == outcome
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvers_sign_with_the_decision_and_a_key_over_kafka_and_the_api() {
    use crate::harness::http::request;
    use crate::harness::serve::ServeProcess;
    use rdkafka::Message;
    use spendguard::api::auth::hash_token;
    let Some(_serial) = serial::service_test().await else {
        return;
    };
    let brokers = harness::brokers();
    let mut rig = Rig::with("sg_approvers_", "apprv", |dir| {
        test_policies(dir, "1", "1000000", "1h")
    })
    .await;
    let dir = rig.dir.path().to_path_buf();
    let approvers = dir.join("approvers.yaml");
    std::fs::write(&approvers, inbox_registry_yaml()).unwrap();
    rig.set_env("SPENDGUARD_APPROVERS", &approvers.display().to_string());
    let alice = approver_files(&dir, "alice", 1);
    let bob = approver_files(&dir, "bob", 2);
    let carol = approver_files(&dir, "carol", 3);
    let own = approver_files(&dir, AGENT, 4);
    let mut tokens = String::from("tokens:\n");
    for a in [&alice, &bob, &carol, &own] {
        tokens.push_str(&format!(
            "  - {{name: {}-phone, role: approver, approverId: {}, sha256: {}}}\n",
            a.id,
            a.id,
            hash_token(&a.token)
        ));
    }
    let tokens_file = dir.join("tokens.yaml");
    std::fs::write(&tokens_file, tokens).unwrap();
    let serve = ServeProcess::start(
        &rig.env,
        "apprv-1",
        &dir,
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--api-tokens",
            &tokens_file.display().to_string(),
        ],
    );
    let addr = serve.api_addr();
    let api = format!("http://{addr}");

    // Three MSIG intents of AGENT (one for the CLI over Kafka, one over the API, one
    // for refusals) and one of another agent of the same entity.
    let producer = bus::producer(&brokers).unwrap();
    for (id, agent) in [
        ("ms-kafka", AGENT),
        ("ms-api", AGENT),
        ("ms-refused", AGENT),
        ("ms-other", "agent-other"),
    ] {
        bus::publish(
            &producer,
            &rig.topics.intents,
            agent.as_bytes(),
            svc_intent_json(id, agent, "2500.00", "vendor:known").as_bytes(),
            None,
        )
        .await
        .unwrap();
    }
    let decisions = read_until(&brokers, &rig.topics.decisions, WAIT_MS, |ms| ms.len() >= 4).await;
    let published = on_topic(&decisions, "ms-kafka", false).expect("decision tailed");
    let message = json(published);
    assert_eq!(message["effect"], "REQUIRE_MSIG", "{message}");
    assert_eq!(message["approvalsRequired"], 2, "{message}");
    assert_eq!(message["approvals"], serde_json::json!([]), "{message}");
    assert_eq!(message["amount"], "2500.00", "{message}");
    assert!(message["expiresAt"].is_string(), "{message}");
    let decision_hash = message["decisionHash"]
        .as_str()
        .expect("decisionHash")
        .to_string();
    assert_eq!(decision_hash.len(), 64, "{message}");
    // The file an approver gets: the message exactly as tailed.
    let decision_file = dir.join("ms-kafka.json");
    std::fs::write(&decision_file, published.payload().unwrap()).unwrap();

    // Two approvers sign with `spendguard approve`, the decision file and their keys.
    for a in [&alice, &bob] {
        let (code, out) = approve_cli(
            &rig,
            &[
                "--decision",
                &decision_file.display().to_string(),
                "--approver",
                a.id,
                "--key",
                &a.key.display().to_string(),
                "--yes",
            ],
        );
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("needs 2 approval(s)"), "{out}");
        assert!(out.contains(&decision_hash), "{out}");
    }
    // Without --yes and without a terminal nothing is signed.
    let (code, out) = approve_cli(
        &rig,
        &[
            "--decision",
            &decision_file.display().to_string(),
            "--approver",
            "alice",
            "--key",
            &alice.key.display().to_string(),
        ],
    );
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("--yes"), "{out}");
    let closed = read_until(&brokers, &rig.topics.decisions, WAIT_MS, |ms| {
        on_topic(ms, "ms-kafka", true).is_some()
    })
    .await;
    let outcome = json(on_topic(&closed, "ms-kafka", true).expect("ms-kafka outcome"));
    assert_eq!(outcome["outcome"], "APPROVED", "{outcome}");
    assert_eq!(
        outcome["approvers"],
        serde_json::json!(["alice", "bob"]),
        "{outcome}"
    );
    let votes: Vec<(&str, &str)> = outcome["approvals"]
        .as_array()
        .expect("the outcome lists the approvals")
        .iter()
        .map(|v| {
            (
                v["approverId"].as_str().unwrap(),
                v["vote"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        votes,
        [("alice", "APPROVE"), ("bob", "APPROVE")],
        "{outcome}"
    );
    // The outcome repeats what the approvers signed against, as the decision stated it.
    assert_eq!(outcome["decisionHash"], decision_hash.as_str(), "{outcome}");
    assert_eq!(outcome["approvalsRequired"], 2, "{outcome}");
    assert_eq!(outcome["expiresAt"], message["expiresAt"], "{outcome}");

    // The inbox: what each approver's token may vote on, with reasons, usage, expiry.
    let inbox = |token: String| async move {
        let (status, body) = request(
            addr,
            "GET",
            "/v1/approvals?status=pending",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut ids: Vec<String> = v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["intentId"].as_str().unwrap().to_string())
            .collect();
        // Oldest decision first, but agents' intents are decided side by side.
        ids.sort();
        (ids, v)
    };
    let (ids, alice_inbox) = inbox(alice.token.clone()).await;
    assert_eq!(ids, ["ms-api", "ms-other", "ms-refused"], "{alice_inbox}");
    let entry_of = |v: &serde_json::Value, id: &str| -> serde_json::Value {
        v["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["intentId"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {v}"))
    };
    let entry = &entry_of(&alice_inbox, "ms-api");
    assert!(entry["reasons"][0]["code"].is_string(), "{entry}");
    assert!(entry["usage"]["dailySoFar"].is_string(), "{entry}");
    assert!(entry["expiresAt"].is_string(), "{entry}");
    assert_eq!(
        entry["decision"]["decisionHash"], entry["decisionHash"],
        "{entry}"
    );
    // carol is registered for another entity; the agent never sees its own intents.
    assert_eq!(inbox(carol.token.clone()).await.0, Vec::<String>::new());
    assert_eq!(inbox(own.token.clone()).await.0, ["ms-other"]);

    // Through the API: alice with the CLI (decision fetched from her inbox, vote
    // POSTed), bob with a plain POST of a signed vote.
    let (code, out) = approve_cli(
        &rig,
        &[
            "--api",
            &api,
            "--token-file",
            &alice.token_file.display().to_string(),
            "--intent",
            "ms-api",
            "--approver",
            "alice",
            "--key",
            &alice.key.display().to_string(),
            "--yes",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("accepted"), "{out}");
    let api_hash = entry_of(&alice_inbox, "ms-api")["decisionHash"]
        .as_str()
        .unwrap()
        .to_string();
    let post = |token: String, vote: VoteMessage| async move {
        let path = format!("/v1/approvals/{}/votes", vote.intent_id);
        let body = serde_json::to_string(&vote).unwrap();
        let (status, answer) = request(addr, "POST", &path, Some(&token), Some(&body)).await;
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        (status, v)
    };
    let bob_vote = approvals::sign_vote(&key(2), "ms-api", "bob", &api_hash, Vote::Approve);
    let (status, answer) = post(bob.token.clone(), bob_vote).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["outcome"], "APPROVED", "{answer}");
    // Closed through the API, the published outcome carries the same terms.
    let closed = read_until(&brokers, &rig.topics.decisions, WAIT_MS, |ms| {
        on_topic(ms, "ms-api", true).is_some()
    })
    .await;
    let api_outcome = json(on_topic(&closed, "ms-api", true).expect("ms-api outcome"));
    assert_eq!(
        api_outcome["decisionHash"],
        api_hash.as_str(),
        "{api_outcome}"
    );
    assert_eq!(api_outcome["approvalsRequired"], 2, "{api_outcome}");
    assert_eq!(
        api_outcome["expiresAt"],
        entry_of(&alice_inbox, "ms-api")["expiresAt"],
        "{api_outcome}"
    );
    assert_eq!(
        api_outcome["approvals"][1]["approverId"], "bob",
        "{api_outcome}"
    );
    // The accepted vote keeps its signature and what it covered (SPEC §14), so an
    // auditor can verify it again with the registry's key.
    {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&rig.db).await.unwrap();
        let proof: serde_json::Value = sqlx::query_scalar(
            "SELECT payload::jsonb->'proof' FROM ledger_event
             WHERE event_type = 'vote_accepted' AND payload::jsonb->>'intentId' = 'ms-api'
               AND payload::jsonb->>'approverId' = 'bob'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(proof["decisionHash"], api_hash.as_str(), "{proof}");
        let message = approvals::signing_message(approvals::Signed {
            intent_id: "ms-api",
            decision_hash: &api_hash,
            vote: Vote::Approve,
            approver_id: "bob",
            signed_at: &approvals::SignedAt::parse(proof["signedAt"].as_str().unwrap()).unwrap(),
        });
        let sig = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            proof["signature"].as_str().unwrap(),
        )
        .unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        key(2)
            .verifying_key()
            .verify_strict(&message, &sig)
            .unwrap();
        // Verified under the registry serve recorded at start, which the auditor's
        // command reads back from the ledger to check every kept signature.
        assert_eq!(proof["registry"]["version"], 1, "{proof}");
    }
    let (code, text) =
        crate::harness::serve::run(&["audit", "verify-votes", "--database-url", &rig.db]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(" 0 failed, 0 recorded without a signature, 0 without a registry"),
        "{text}"
    );

    // Refusals, each audited. Over the API: a valid token never makes a bad signature
    // count, and a token cannot carry another approver's vote.
    let ref_hash = entry_of(&alice_inbox, "ms-refused")["decisionHash"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = approvals::sign_vote(&key(3), "ms-refused", "alice", &ref_hash, Vote::Approve);
    let (status, answer) = post(alice.token.clone(), forged).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (422, &"bad_signature".into())
    );
    let bobs = approvals::sign_vote(&key(2), "ms-refused", "bob", &ref_hash, Vote::Approve);
    let (status, answer) = post(alice.token.clone(), bobs).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (422, &"approver_token_mismatch".into())
    );
    let stale_at = approvals::SignedAt::new(chrono::Utc::now() - chrono::Duration::minutes(20));
    let stale = approvals::sign_vote_at(
        &key(1),
        "ms-refused",
        "alice",
        &ref_hash,
        Vote::Approve,
        stale_at.clone(),
    );
    let (status, answer) = post(alice.token.clone(), stale).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (422, &"stale_signature".into())
    );
    // Over Kafka: stale, wrong hash, wrong approver, own agent, the retired format.
    let send = |m: VoteMessage| {
        let producer = producer.clone();
        let topic = rig.topics.approvals.clone();
        async move {
            let bytes = serde_json::to_vec(&m).unwrap();
            bus::publish(&producer, &topic, m.intent_id.as_bytes(), &bytes, None)
                .await
                .unwrap();
        }
    };
    send(approvals::sign_vote_at(
        &key(2),
        "ms-refused",
        "bob",
        &ref_hash,
        Vote::Approve,
        stale_at,
    ))
    .await;
    send(approvals::sign_vote(
        &key(2),
        "ms-refused",
        "bob",
        &"0".repeat(64),
        Vote::Approve,
    ))
    .await;
    send(approvals::sign_vote(
        &key(3),
        "ms-refused",
        "carol",
        &ref_hash,
        Vote::Approve,
    ))
    .await;
    send(approvals::sign_vote(
        &key(4),
        "ms-refused",
        AGENT,
        &ref_hash,
        Vote::Approve,
    ))
    .await;
    send(approvals::sign_vote_legacy(
        &key(1),
        "ms-refused",
        "alice",
        &ref_hash,
        Vote::Approve,
    ))
    .await;

    let expected = [
        ("api", "alice", "bad_signature"),
        ("api", "bob", "approver_token_mismatch"),
        ("api", "alice", "stale_signature"),
        ("kafka", "bob", "stale_signature"),
        ("kafka", "bob", "bad_signature"),
        ("kafka", "carol", "approver_not_registered_for_entity"),
        ("kafka", AGENT, "self_approval"),
        ("kafka", "alice", "signature_format_outdated"),
    ];
    let audited = || async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&rig.db).await.unwrap();
        sqlx::query_as::<_, (String, String, String, String)>(
            "SELECT origin::jsonb->>'source', actor, payload::jsonb->>'reason', payload::jsonb->>'intentId'
               FROM ledger_event WHERE event_type = 'vote_refused' ORDER BY seq",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    wait_for("every refusal audited", || async {
        audited().await.len() >= expected.len()
    })
    .await;
    let rows = audited().await;
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (source, approver, reason) in expected {
        assert!(
            rows.iter().any(|(s, a, r, i)| s == source
                && a == approver
                && r == reason
                && i == "ms-refused"),
            "{source} {approver} {reason} not audited: {rows:?}"
        );
    }
    // None of them counted: the intent still waits with no approval.
    let (ids, after) = inbox(alice.token.clone()).await;
    assert_eq!(ids, ["ms-other", "ms-refused"], "{after}");
    assert_eq!(
        entry_of(&after, "ms-refused")["approvalsReceived"],
        0,
        "{after}"
    );

    // The decision read from spend.decisions itself; the vote then shows in the other
    // approvers' inboxes as an approval so far, and leaves alice's.
    let (code, out) = approve_cli(
        &rig,
        &[
            "--from-topic",
            "--intent",
            "ms-other",
            "--approver",
            "alice",
            "--key",
            &alice.key.display().to_string(),
            "--yes",
        ],
    );
    assert_eq!(code, 0, "{out}");
    wait_for("alice's vote on ms-other", || async {
        inbox(alice.token.clone()).await.0 == ["ms-refused"]
    })
    .await;
    let (_, bobs) = inbox(bob.token.clone()).await;
    let other = entry_of(&bobs, "ms-other");
    assert_eq!(other["approvalsReceived"], 1, "{other}");
    assert_eq!(other["approvals"][0]["approverId"], "alice", "{other}");
    assert_eq!(
        other["decision"]["approvals"][0]["vote"], "APPROVE",
        "{other}"
    );

    // A registry change is applied live and recorded as version 2 (SPEC §14), by the
    // same instance that recorded the registry it started with.
    let registry_versions = || async {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&rig.db).await.unwrap();
        sqlx::query_as::<_, (i64, String)>(
            "SELECT version, actor FROM config_version WHERE kind = 'registry' ORDER BY version",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap()
    };
    assert_eq!(registry_versions().await.len(), 1);
    std::fs::write(
        &approvers,
        inbox_registry_yaml().replace("['globex-*']", "['globex-*', 'acme-*']"),
    )
    .unwrap();
    wait_for("registry version 2", || async {
        registry_versions().await.len() == 2
    })
    .await;
    let versions = registry_versions().await;
    assert_eq!(versions[1].1, versions[0].1, "{versions:?}");
    assert_eq!(serve.terminate(), Some(0));
}

/// `spendguard approve --api https://…` (issue 12): against serve's HTTPS API with a
/// certificate from a CA made here, the CLI fetches the decision and POSTs the vote when
/// given the CA (`--ca-file`); without it the certificate is refused and nothing is
/// voted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_talks_to_an_https_api_whose_ca_it_is_given() {
    use crate::harness::serve::ServeProcess;
    use spendguard::api::auth::hash_token;
    if !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive().await;
    let mut rig = Rig::with("sg_approve_tls_", "apprvtls", |dir| {
        test_policies(dir, "1", "1000000", "1h")
    })
    .await;
    rig.set_env("SPENDGUARD_BROKERS", "127.0.0.1:1");
    rig.set_env(
        "SPENDGUARD_KEK",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    );
    let dir = rig.dir.path().to_path_buf();
    let approvers = dir.join("approvers.yaml");
    std::fs::write(&approvers, inbox_registry_yaml()).unwrap();
    rig.set_env("SPENDGUARD_APPROVERS", &approvers.display().to_string());
    let alice = approver_files(&dir, "alice", 1);
    let payments = "approve-tls-payment-token";
    let tokens_file = dir.join("tokens.yaml");
    std::fs::write(
        &tokens_file,
        format!(
            "tokens:\n  - {{name: alice-phone, role: approver, approverId: alice, sha256: {}}}\n  - {{name: pay, role: payment_service, sha256: {}}}\n",
            hash_token(&alice.token),
            hash_token(payments)
        ),
    )
    .unwrap();
    let ca = harness::tls::TestCa::new("spendguard API test CA");
    let ca_file = ca.write(&dir, "api-ca.pem");
    let (cert, key_file) = ca.server(&["localhost"]).write(&dir, "api");
    let serve = ServeProcess::start(
        &rig.env,
        "apprv-tls",
        &dir,
        &[
            "--no-kafka",
            "--http-addr",
            "127.0.0.1:0",
            "--api-tokens",
            &tokens_file.display().to_string(),
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key_file.display().to_string(),
        ],
    );
    let log = serve.log_text();
    let addr: std::net::SocketAddr = log
        .lines()
        .find_map(|l| l.split_once("HTTP API on https://").map(|x| x.1.trim()))
        .unwrap_or_else(|| panic!("no https address:\n{log}"))
        .parse()
        .unwrap();
    let api = format!("https://localhost:{}", addr.port());
    // The intent is decided through an HTTP client of the test's own (the CLI is what
    // is under test): a TLS client trusting the test CA.
    let client = harness::tls::tls_client(&ca.cert_pem);
    let body = svc_intent_json("ms-tls", AGENT, "2500.00", "vendor:known");
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = client.connect(name, tcp).await.expect("TLS to the API");
        let req = format!(
            "POST /v1/intents HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {payments}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("REQUIRE_MSIG"), "{answer}");

    let args = |ca: Option<&std::path::Path>| {
        let mut v = vec![
            "--api".to_string(),
            api.clone(),
            "--token-file".into(),
            alice.token_file.display().to_string(),
            "--intent".into(),
            "ms-tls".into(),
            "--approver".into(),
            "alice".into(),
            "--key".into(),
            alice.key.display().to_string(),
            "--yes".into(),
        ];
        if let Some(ca) = ca {
            v.push("--ca-file".into());
            v.push(ca.display().to_string());
        }
        v
    };
    let refused = args(None);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    let (code, out) = approve_cli(&rig, &refused);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("TLS with") && out.contains("UnknownIssuer"),
        "{out}"
    );
    let trusted = args(Some(&ca_file));
    let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
    let (code, out) = approve_cli(&rig, &trusted);
    assert_eq!(code, 0, "{out}\n{}", serve.log_text());
    assert!(out.contains("accepted"), "{out}");
    // One vote of two: the intent still waits, with alice's vote recorded once.
    let ledger = spendguard::ledger::Ledger::connect(&rig.db, "approve-tls-check")
        .await
        .unwrap();
    let record = ledger.decision("ms-tls").await.unwrap().unwrap();
    let voters: Vec<&str> = record
        .votes
        .iter()
        .map(|v| v.approver_id.as_str())
        .collect();
    assert_eq!(voters, ["alice"], "{record:?}");
    assert_eq!(serve.terminate(), Some(0));
}
