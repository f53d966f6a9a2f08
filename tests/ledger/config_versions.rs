//! Approver registry and bindings versions as audited ledger events (SPEC §14, §16):
//! recorded once per distinct content, named by the decisions and votes that used them,
//! replayed, and the stored vote signatures re-verified from the ledger alone by
//! `spendguard audit verify-votes`.

use crate::harness::db::{fresh_db, origin};
use crate::harness::intent::{ENTITY, intent};
use crate::harness::policies::{policy_set, policy_text, standard_set};
use crate::harness::scenario::period_args;
use crate::harness::serve::run;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::SigningKey;
use spendguard::approvals::{Registry, VoteSubject, sign_vote};
use spendguard::decision::Effect;
use spendguard::ledger::events::ConfigVersion;
use spendguard::ledger::{Outcome, Vote, VoteResult};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn registry_text(approvers: &[(&str, &SigningKey)]) -> String {
    let mut s = "approvers:\n".to_string();
    for (id, k) in approvers {
        s += &format!(
            "  - id: {id}\n    publicKey: \"{}\"\n    entities: [\"acme-*\"]\n",
            B64.encode(k.verifying_key().to_bytes())
        );
    }
    s
}

fn registry(approvers: &[(&str, &SigningKey)]) -> Registry {
    Registry::parse(&registry_text(approvers)).expect("registry")
}

async fn count_events(pool: &sqlx::PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger_event WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn registry_changes_are_recorded_once_per_distinct_content() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (ka, kb) = (key(1), key(2));
    let both = ledger
        .activate_registry(registry(&[("alice", &ka), ("bob", &kb)]), "tester")
        .await
        .unwrap();
    assert_eq!(both.version().map(|v| v.version), Some(1));
    // Same content in another order, and from another instance: no new version.
    let again = db
        .ledger_named("other-instance")
        .await
        .activate_registry(registry(&[("bob", &kb), ("alice", &ka)]), "other")
        .await
        .unwrap();
    assert_eq!(again.version(), both.version());
    let alice_only = ledger
        .activate_registry(registry(&[("alice", &ka)]), "tester")
        .await
        .unwrap();
    assert_eq!(alice_only.version().map(|v| v.version), Some(2));
    // Content seen before, after another: it came back, a version of its own.
    let back = ledger
        .activate_registry(registry(&[("alice", &ka), ("bob", &kb)]), "tester")
        .await
        .unwrap();
    assert_eq!(back.version().map(|v| v.version), Some(3));
    assert_eq!(
        back.version().map(|v| &v.sha256),
        both.version().map(|v| &v.sha256)
    );

    let pool = db.pool().await;
    assert_eq!(count_events(&pool, "registry_activated").await, 3);
    let (actor, resource, payload): (String, String, String) = sqlx::query_as(
        "SELECT actor, resource, payload FROM ledger_event WHERE event_type = 'registry_activated' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (actor.as_str(), resource.as_str()),
        ("tester", "registry:v1")
    );
    // The content itself is recorded, every key included.
    assert!(
        payload.contains(&B64.encode(kb.verifying_key().to_bytes())),
        "{payload}"
    );
    // The service role activates through the ledger, and cannot change versions itself.
    let svc = spendguard::ledger::Ledger::connect(&db.url_as("spendguard_service"), "svc")
        .await
        .unwrap();
    let bob_only = svc
        .activate_registry(registry(&[("bob", &kb)]), "svc")
        .await
        .unwrap();
    assert_eq!(bob_only.version().map(|v| v.version), Some(4));
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url_as("spendguard_service"))
        .await
        .unwrap();
    for forged in [
        "UPDATE config_version SET canonical = '{\"approvers\":[]}'",
        "DELETE FROM config_version",
        "INSERT INTO config_version (kind, version, sha256, canonical, actor, seq) VALUES ('registry', 9, 'x', '{}', 'mallory', 1)",
        "SELECT ledger_write_config_version('registry', 9, 'x', '{}', 'mallory', 1)",
    ] {
        let refused = sqlx::query(forged).execute(&mut c).await;
        assert!(refused.is_err(), "the service role ran {forged}");
    }
    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test]
async fn a_bindings_change_mid_stream_is_recorded_and_replay_reproduces_the_decisions() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let tz = "America/Sao_Paulo";
    let p = policy_text("p", tz, "1000.00", "500.00", "2000.00", "800.00", "3600s");
    // q asks two approvals above 100.
    let q = policy_text("q", tz, "1000.00", "500.00", "2000.00", "100.00", "3600s");
    let files = [("p.yaml", p.as_str()), ("q.yaml", q.as_str())];
    let (_d1, before) = policy_set(&files, "default: p\n");
    let (_d2, after) = policy_set(&files, "default: p\nagents:\n  ag-x: q\n");
    let o = origin();

    ledger.activate_policies(&before, "tester").await.unwrap();
    let first = ledger
        .decide(&before, &intent("b-1", "ag-x", "200.00"), &o)
        .await
        .unwrap()
        .message;
    ledger.activate_policies(&after, "tester").await.unwrap();
    // Activating the same bindings again records nothing.
    ledger.activate_policies(&after, "tester").await.unwrap();
    let second = ledger
        .decide(&after, &intent("b-2", "ag-x", "200.00"), &o)
        .await
        .unwrap()
        .message;
    let third = ledger
        .decide(&after, &intent("b-3", "ag-y", "200.00"), &o)
        .await
        .unwrap()
        .message;
    // An instance still on the earlier files (a rolling change) names what it used.
    let stale = ledger
        .decide(&before, &intent("b-4", "ag-x", "10.00"), &o)
        .await
        .unwrap()
        .message;

    let version =
        |m: &spendguard::decision::DecisionMessage| m.bindings.as_ref().map(|b| b.version);
    let policy =
        |m: &spendguard::decision::DecisionMessage| m.policy.as_ref().map(|p| p.name.clone());
    assert_eq!(
        (version(&first), policy(&first).as_deref(), first.effect),
        (Some(1), Some("p"), Effect::Allow)
    );
    assert_eq!(
        (version(&second), policy(&second).as_deref(), second.effect),
        (Some(2), Some("q"), Effect::RequireMsig)
    );
    assert_eq!(
        (version(&third), policy(&third).as_deref(), third.effect),
        (Some(2), Some("p"), Effect::Allow)
    );
    assert_eq!(
        (version(&stale), policy(&stale).as_deref()),
        (Some(1), Some("p"))
    );
    let pool = db.pool().await;
    assert_eq!(count_events(&pool, "bindings_activated").await, 2);
    // The published message carries it (an added field).
    let stored: String = sqlx::query_scalar("SELECT message FROM decision WHERE intent_id = 'b-2'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let published: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert_eq!(published["bindings"]["version"], 2, "{stored}");

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.decisions_reevaluated, 4);

    // The compliance report lists the bindings versions with the policies in force.
    let out = tempfile::tempdir().unwrap();
    let json = out.path().join("report.json");
    let (from, to) = period_args();
    let (code, text) = run(&[
        "report",
        "--database-url",
        &db.url,
        "--from",
        &from,
        "--to",
        &to,
        "--format",
        "json",
        "--out",
        &json.display().to_string(),
    ]);
    assert_eq!(code, 0, "{text}");
    let listed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let bindings: Vec<(String, String)> = listed["policies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "bindings")
        .map(|p| {
            (
                p["version"].as_str().unwrap().to_string(),
                p["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        bindings,
        [
            ("v1".to_string(), "tester".to_string()),
            ("v2".into(), "tester".into())
        ],
        "{listed}"
    );

    // A decision claiming the earlier bindings chose q is caught by replay (the events
    // are rewritten by a superuser; only the bindings check names the policy).
    let mut su = db.superuser().await;
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut su)
        .await
        .unwrap();
    let version = |v: i64| {
        let pool = pool.clone();
        async move {
            let sha256: String = sqlx::query_scalar(
                "SELECT sha256 FROM config_version WHERE kind = 'bindings' AND version = $1",
            )
            .bind(v)
            .fetch_one(&pool)
            .await
            .unwrap();
            serde_json::to_string(&ConfigVersion { version: v, sha256 }).unwrap()
        }
    };
    let (v1, v2) = (version(1).await, version(2).await);
    sqlx::query(
        "UPDATE ledger_event SET payload = replace(payload, $1, $2)
         WHERE event_type = 'intent_decided' AND resource = 'b-2'",
    )
    .bind(format!("\"bindings\":{v2}"))
    .bind(format!("\"bindings\":{v1}"))
    .execute(&mut su)
    .await
    .unwrap();
    let report = ledger.replay(true).await.unwrap();
    assert!(
        report
            .decision_mismatches
            .iter()
            .any(|m| m.contains("intent b-2: bindings version 1 choose policy Some(\"p\")")),
        "{report:#?}"
    );
}

#[tokio::test]
async fn audit_verify_votes_rechecks_stored_signatures_against_the_registry_of_their_time() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let (ka, kb, kc) = (key(11), key(12), key(13));
    let v1 = ledger
        .activate_registry(registry(&[("alice", &ka), ("bob", &kb)]), "tester")
        .await
        .unwrap();
    let m = ledger
        .decide(&set, &intent("v-msig", "ag3", "900.00"), &o)
        .await
        .unwrap();
    assert_eq!(m.message.effect, Effect::RequireMsig);
    let hash = m.decision_hash.clone();
    let vote = |registry: &Registry, approver: &str, k: &SigningKey| {
        registry
            .verify(
                &sign_vote(k, "v-msig", approver, &hash, Vote::Approve),
                VoteSubject {
                    agent_id: "ag3",
                    entity_id: ENTITY,
                    decision_hash: &hash,
                },
            )
            .expect("verifies")
    };
    let seq_of = |r: VoteResult| match r {
        VoteResult::Accepted { seq, outcome } => (seq, outcome),
        other => panic!("{other:?}"),
    };
    let (alice_seq, _) = seq_of(
        ledger
            .apply_vote(&vote(&v1, "alice", &ka), &o)
            .await
            .unwrap(),
    );
    // alice leaves, carol joins: her vote was good under version 1 only.
    let v2 = ledger
        .activate_registry(registry(&[("bob", &kb), ("carol", &kc)]), "tester")
        .await
        .unwrap();
    let (bob_seq, outcome) = seq_of(ledger.apply_vote(&vote(&v2, "bob", &kb), &o).await.unwrap());
    assert_eq!(
        outcome, None,
        "removal before quorum: alice no longer counts"
    );
    let (_, outcome) = seq_of(
        ledger
            .apply_vote(&vote(&v2, "carol", &kc), &o)
            .await
            .unwrap(),
    );
    assert_eq!(outcome.map(|o| o.outcome), Some(Outcome::Approved));

    let audit = || run(&["audit", "verify-votes", "--database-url", &db.url]);
    let (code, text) = audit();
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("3 accepted vote(s): 3 signature(s) verified"),
        "{text}"
    );

    let mut su = db.superuser().await;
    sqlx::raw_sql("SET session_replication_role = replica")
        .execute(&mut su)
        .await
        .unwrap();
    let payload_of = |seq: i64| {
        sqlx::query_scalar::<_, String>("SELECT payload FROM ledger_event WHERE seq = $1").bind(seq)
    };
    let set_payload = |seq: i64, payload: String| {
        sqlx::query("UPDATE ledger_event SET payload = $2 WHERE seq = $1")
            .bind(seq)
            .bind(payload)
    };
    // bob's stored signature replaced by alice's (a well-formed signature, not his).
    let alice_vote = payload_of(alice_seq).fetch_one(&mut su).await.unwrap();
    let bob_vote = payload_of(bob_seq).fetch_one(&mut su).await.unwrap();
    let signature = |p: &str| {
        let v: serde_json::Value = serde_json::from_str(p).unwrap();
        v["proof"]["signature"].as_str().unwrap().to_string()
    };
    let forged = bob_vote.replace(&signature(&bob_vote), &signature(&alice_vote));
    assert_ne!(forged, bob_vote);
    set_payload(bob_seq, forged).execute(&mut su).await.unwrap();
    let (code, text) = audit();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "FAILED seq {bob_seq}: intent v-msig approver bob: bad_signature"
        )),
        "{text}"
    );
    assert!(
        text.contains("2 signature(s) verified against the registry version in force, 1 failed"),
        "{text}"
    );
    set_payload(bob_seq, bob_vote)
        .execute(&mut su)
        .await
        .unwrap();
    assert_eq!(audit().0, 0);

    // alice's key in the recorded registry version 1 replaced by carol's.
    let (registry_seq, registry_payload): (i64, String) = sqlx::query_as(
        "SELECT seq, payload FROM ledger_event WHERE event_type = 'registry_activated' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    let swapped = registry_payload.replace(
        &B64.encode(ka.verifying_key().to_bytes()),
        &B64.encode(kc.verifying_key().to_bytes()),
    );
    assert_ne!(swapped, registry_payload);
    set_payload(registry_seq, swapped)
        .execute(&mut su)
        .await
        .unwrap();
    let (code, text) = audit();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&format!(
            "FAILED seq {alice_seq}: intent v-msig approver alice: registry version 1"
        )),
        "{text}"
    );
    // Votes under version 2 are untouched by it.
    assert!(
        text.contains("2 signature(s) verified against the registry version in force, 1 failed"),
        "{text}"
    );
}
