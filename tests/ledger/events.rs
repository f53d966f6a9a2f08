//! Ledger integration tests against the real PostgreSQL: every event type, append-only
//! refusal for the service role, idempotency, reservations moved and released, votes.

use crate::harness::db::{TestDb, at, fresh_db, origin};
use crate::harness::intent::{intent, parse};
use crate::harness::policies::standard_set;
use rust_decimal::Decimal;
use spendguard::decision::Effect;
use spendguard::intent::IntentError;
use spendguard::kill_switch::Scope;
use spendguard::ledger::{DecideStatus, LedgerError, Outcome, VerifiedVote, Vote, VoteResult};
use sqlx::Row;

fn vote(intent: &str, approver: &str, v: Vote) -> VerifiedVote {
    VerifiedVote {
        intent_id: intent.into(),
        approver_id: approver.into(),
        vote: v,
        signed_at: chrono::Utc::now(),
        proof: None,
        registered: None,
    }
}

async fn usage(db: &TestDb, agent: &str, kind: &str) -> (Decimal, Decimal) {
    let mut c = db.superuser().await;
    sqlx::query_as::<_, (Decimal, Decimal)>(
        "SELECT coalesce(sum(committed),0), coalesce(sum(reserved),0) FROM usage_window WHERE agent_id = $1 AND kind = $2",
    )
    .bind(agent)
    .bind(kind)
    .fetch_one(&mut c)
    .await
    .unwrap()
}

async fn event_types(db: &TestDb) -> Vec<String> {
    let mut c = db.superuser().await;
    sqlx::query_scalar("SELECT DISTINCT event_type FROM ledger_event ORDER BY 1")
        .fetch_all(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_event_type_is_recorded_and_the_ledger_replays() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    ledger.activate_policies(&set, "tester").await.unwrap();
    ledger
        .activate_registry(spendguard::approvals::Registry::default(), "tester")
        .await
        .unwrap();

    // ALLOW, then HITL over the daily cap, then MSIG over the threshold.
    let a = ledger
        .decide(&set, &intent("i-allow", "ag", "300.00"), &o)
        .await
        .unwrap();
    assert_eq!(a.message.effect, Effect::Allow);
    assert_eq!(a.status, DecideStatus::New);
    assert!(a.message.ledger_seq.is_some());
    let h = ledger
        .decide(&set, &intent("i-hitl", "ag", "250.00"), &o)
        .await
        .unwrap();
    assert_eq!(h.message.effect, Effect::RequireHitl);
    let m = ledger
        .decide(&set, &intent("i-msig", "ag2", "900.00"), &o)
        .await
        .unwrap();
    assert_eq!(m.message.effect, Effect::RequireMsig);
    assert_eq!(m.message.approvals_required, 2);

    // Invalid intent and idempotency conflict.
    let err = IntentError {
        code: "invalid_json",
        message: "bad".into(),
        field: None,
    };
    ledger
        .record_invalid_intent(b"{not json", &err, &o)
        .await
        .unwrap();

    // A message set aside (its dead letter refused), recorded once per Kafka origin:
    // the retry after a COMMIT of unknown outcome gets the first seq back.
    let kafka = spendguard::ledger::Origin::kafka("test", 4, 1234);
    let raw = b"{\"intentId\": \"4111 1111 1111 1111\"}";
    let aside = ledger
        .record_set_aside(
            "spend.intents",
            raw,
            "dead_letter_refused",
            "too large",
            &kafka,
        )
        .await
        .unwrap();
    let again = ledger
        .record_set_aside(
            "spend.intents",
            raw,
            "dead_letter_refused",
            "too large",
            &kafka,
        )
        .await
        .unwrap();
    assert_eq!(aside, again, "a retry must not append a second event");
    let invalid_kafka = ledger
        .record_invalid_intent(b"{not json", &err, &kafka)
        .await
        .unwrap();
    assert_eq!(
        invalid_kafka,
        ledger
            .record_invalid_intent(b"{not json", &err, &kafka)
            .await
            .unwrap()
    );
    // Junk over the audit bound, counted in a summary; recorded once per Kafka origin
    // (its last counted message) like the other intake records.
    let mut budget = spendguard::audit_budget::AuditBudget::new(1, 60_000);
    for (i, code) in ["invalid_json", "invalid_json", "missing_field"]
        .iter()
        .enumerate()
    {
        budget.admit(&4, code, 0, Some(2000 + i as i64));
    }
    let summary = budget.drain().pop().expect("a summary");
    assert_eq!(summary.total(), 2);
    let last = spendguard::ledger::Origin::kafka("test", 4, 2002);
    let summarized = ledger
        .record_refusals_summary("spend.intents", &summary, &last)
        .await
        .unwrap();
    assert_eq!(
        summarized,
        ledger
            .record_refusals_summary("spend.intents", &summary, &last)
            .await
            .unwrap(),
        "a retry must not append a second summary"
    );
    let conflict = ledger
        .decide(&set, &intent("i-allow", "ag", "301.00"), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, LedgerError::IdempotencyConflict { .. }),
        "{conflict}"
    );

    // Votes: accepted (HITL approved), refused (duplicate / not waiting / unknown), pre-ledger refusal.
    let r = ledger
        .apply_vote(&vote("i-hitl", "alice", Vote::Approve), &o)
        .await
        .unwrap();
    let VoteResult::Accepted {
        outcome: Some(out), ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(out.outcome, Outcome::Approved);
    assert_eq!(out.approvers, vec!["alice".to_string()]);
    let r = ledger
        .apply_vote(&vote("i-hitl", "bob", Vote::Approve), &o)
        .await
        .unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "already_closed"),
        "{r:?}"
    );
    let r = ledger
        .apply_vote(&vote("i-allow", "bob", Vote::Approve), &o)
        .await
        .unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "not_awaiting_approval"),
        "{r:?}"
    );
    let r = ledger
        .apply_vote(&vote("nope", "bob", Vote::Approve), &o)
        .await
        .unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "unknown_intent"),
        "{r:?}"
    );
    ledger
        .refuse_vote(
            br#"{"intentId":"i-msig","approverId":"mallory"}"#,
            "bad_signature",
            "signature does not verify",
            &o,
        )
        .await
        .unwrap();

    // Kill switch on and off, and an erasure.
    ledger
        .set_kill_switch(&Scope::Agent("ag9".into()), true, "ops", "incident 1", &o)
        .await
        .unwrap();
    ledger
        .set_kill_switch(&Scope::Agent("ag9".into()), false, "ops", "resolved", &o)
        .await
        .unwrap();
    ledger
        .forget_subject("utility:light", "dpo", &o)
        .await
        .unwrap();

    // Lifecycle: a capture, a refused capture, a malformed settlement and an expiry.
    let capture = spendguard::settlement::parse_settlement(
        br#"{"settlementId":"s-1","intentId":"i-allow","type":"CAPTURE","amount":"100.00","currency":"BRL"}"#,
    )
    .unwrap();
    let applied = ledger.settle(&set, &capture, &o).await.unwrap();
    assert_eq!(applied.outcome().unwrap().outcome, Outcome::Captured);
    let over = spendguard::settlement::parse_settlement(
        br#"{"settlementId":"s-2","intentId":"i-allow","type":"CAPTURE","amount":"200.01","currency":"BRL"}"#,
    )
    .unwrap();
    let refused = ledger.settle(&set, &over, &o).await.unwrap();
    assert!(
        matches!(&refused, spendguard::ledger::settle::SettleResult::Refused { code, .. } if code == "exceeds_remainder"),
        "{refused:?}"
    );
    let bad = spendguard::settlement::parse_settlement(b"{}").unwrap_err();
    ledger
        .record_invalid_settlement(b"{}", &bad, &o)
        .await
        .unwrap();
    let expired = ledger
        .expire_authorizations(chrono::Utc::now() + chrono::Duration::days(8))
        .await
        .unwrap();
    assert_eq!(
        expired.iter().map(|m| m.outcome).collect::<Vec<_>>(),
        vec![Outcome::AuthExpired, Outcome::AuthExpired],
        "i-allow's remainder and i-hitl's approved authorization"
    );

    ledger
        .set_fx_rate(
            "USD",
            "BRL",
            "5.25".parse().unwrap(),
            "treasury",
            "fixing",
            &o,
        )
        .await
        .unwrap();
    // An audit-only record (the promotion gate's evidence; tests/ledger/shadow.rs).
    let evidence = spendguard::ledger::events::PromotionEvidence {
        intents: 0,
        unchanged: 0,
        deny_to_allow: 0,
        newly_allowed: 0,
        tightened: 0,
        tightening_pct: rust_decimal::Decimal::ZERO,
        transitions: Default::default(),
    };
    ledger
        .record_promotion(
            spendguard::ledger::events::PolicyPromoted {
                policy: set.get("p").unwrap().identity.clone(),
                actor: "alice".into(),
                from: chrono::Utc::now().date_naive(),
                to: chrono::Utc::now().date_naive(),
                patterns: vec!["default".into()],
                thresholds: spendguard::ledger::events::PromotionThresholds {
                    max_deny_to_allow: 0,
                    max_newly_allowed: 0,
                    max_tightening_pct: rust_decimal::Decimal::ONE,
                },
                impact: evidence.clone(),
                shadow: evidence,
            },
            &o,
        )
        .await
        .unwrap();

    // A policies directory refused by serve (SPEC §16).
    ledger
        .record_policy_set_refused(
            spendguard::ledger::events::PolicySetRefused {
                dir: "policies".into(),
                stage: "reload".into(),
                errors: vec![spendguard::ledger::events::PolicyRefusalReason {
                    code: "unknown_country".into(),
                    message: "country \"XX\" is not an ISO 3166-1 code".into(),
                    location: "policy p".into(),
                }],
            },
            &o,
        )
        .await
        .unwrap();

    // Subject keys re-wrapped under another KEK and back (a rotation and its undo).
    let with_account = intent("i-account", "ag8", "10.00");
    let with_account = spendguard::intent::SpendIntent {
        beneficiary: spendguard::intent::Beneficiary {
            id: "person:rewrap".into(),
            account: Some("0001-23456-7".into()),
            country: Some("BR".into()),
        },
        ..with_account
    };
    ledger.decide(&set, &with_account, &o).await.unwrap();
    let kek = db.key_wrap();
    let other = spendguard::keywrap::LocalKek::generate();
    for (from, to) in [
        (kek.as_ref(), &other as &dyn spendguard::keywrap::KeyWrap),
        (&other, kek.as_ref()),
    ] {
        let done = ledger
            .rewrap_subject_keys(from, to, 500, "sec", &o)
            .await
            .unwrap();
        assert_eq!(done.keys, 1);
    }

    let mut types = event_types(&db).await;
    types.sort();
    let mut all: Vec<String> = spendguard::ledger::events::kind::ALL
        .iter()
        .map(|s| s.to_string())
        .collect();
    all.sort();
    assert_eq!(types, all);

    let v = ledger.audit_verify().await.unwrap();
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.decisions, 4);
    assert_eq!(report.decisions_reevaluated, 4);
}

#[tokio::test]
async fn service_role_cannot_update_delete_or_truncate_events() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    ledger
        .decide(&set, &intent("i1", "ag", "10.00"), &origin())
        .await
        .unwrap();

    // The service role works through the ledger API ...
    let svc = spendguard::ledger::Ledger::connect(&db.url_as("spendguard_service"), "svc")
        .await
        .unwrap();
    svc.decide(&set, &intent("i2", "ag", "10.00"), &origin())
        .await
        .unwrap();
    // ... but cannot change events.
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url_as("spendguard_service"))
        .await
        .unwrap();
    for sql in [
        "UPDATE ledger_event SET payload = '{}'",
        "DELETE FROM ledger_event",
        "TRUNCATE ledger_event",
    ] {
        let e = sqlx::query(sql).execute(&mut c).await.unwrap_err();
        assert!(
            e.to_string().contains("permission denied") || e.to_string().contains("append-only"),
            "{sql}: {e}"
        );
    }
    // Even the owner (superuser) is stopped by the triggers.
    let mut su = db.superuser().await;
    for sql in [
        "UPDATE ledger_event SET payload = '{}'",
        "DELETE FROM ledger_event",
        "TRUNCATE ledger_event",
    ] {
        let e = sqlx::query(sql).execute(&mut su).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_event")
        .fetch_one(&mut su)
        .await
        .unwrap();
    assert!(n >= 3);
}

#[tokio::test]
async fn idempotency_same_payload_returns_recorded_decision_changed_payload_is_refused() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let first = ledger
        .decide(&set, &intent("i1", "ag", "100.00"), &o)
        .await
        .unwrap();
    // Same intent, amount written differently and keys reordered: same canonical form.
    let again_json = r#"{"purpose":"PIX","amount":100,"intentId":"i1","agentId":"ag","entityId":"acme-br","currency":"BRL","category":"utility","beneficiary":{"country":"BR","id":"utility:light"}}"#;
    let again = ledger.decide(&set, &parse(again_json), &o).await.unwrap();
    assert_eq!(again.status, DecideStatus::Redelivered);
    assert_eq!(again.message, first.message);
    assert_eq!(again.decision_hash, first.decision_hash);

    let changed = ledger
        .decide(&set, &intent("i1", "ag", "100.01"), &o)
        .await
        .unwrap_err();
    let LedgerError::IdempotencyConflict {
        existing_seq,
        audit_seq,
        ..
    } = changed
    else {
        panic!("{changed}")
    };
    assert_eq!(Some(existing_seq), first.message.ledger_seq);
    let mut c = db.superuser().await;
    let t: String = sqlx::query_scalar("SELECT event_type FROM ledger_event WHERE seq = $1")
        .bind(audit_seq)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(t, "idempotency_conflict");
    // Exactly one decision, and usage counted once.
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_event WHERE event_type = 'intent_decided'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        usage(&db, "ag", "D").await,
        (Decimal::new(10000, 2), Decimal::ZERO)
    );

    // Within one batch: the second copy is a redelivery of the first.
    let items = vec![
        (intent("b1", "ag", "1.00"), o.clone()),
        (intent("b1", "ag", "1.00"), o.clone()),
    ];
    let res = ledger.decide_batch(&set, &items).await.unwrap();
    assert_eq!(res[0].as_ref().unwrap().status, DecideStatus::New);
    assert_eq!(res[1].as_ref().unwrap().status, DecideStatus::Redelivered);
}

#[tokio::test]
async fn reservations_are_moved_by_approval_and_released_by_reject_expiry_and_kill() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let t0 = at("2026-03-10T15:00:00Z");

    // 400 allowed (committed), then 200 over the daily cap of 500 -> HITL (reserved).
    ledger
        .decide_at(&set, &intent("a1", "ag", "400.00"), &o, t0)
        .await
        .unwrap();
    let h = ledger
        .decide_at(&set, &intent("h1", "ag", "200.00"), &o, t0)
        .await
        .unwrap();
    assert_eq!(h.message.effect, Effect::RequireHitl);
    assert_eq!(
        usage(&db, "ag", "D").await,
        (Decimal::new(400, 0), Decimal::new(200, 0))
    );
    // The reservation counts: another 50 now sees 600 and also needs approval.
    let h2 = ledger
        .decide_at(&set, &intent("h2", "ag", "50.00"), &o, t0)
        .await
        .unwrap();
    assert_eq!(h2.message.effect, Effect::RequireHitl);
    assert_eq!(
        h2.message.usage.as_ref().unwrap().daily_so_far,
        Decimal::new(600, 0)
    );

    // Approve h1: reserved -> committed.
    let r = ledger
        .apply_vote_at(&vote("h1", "alice", Vote::Approve), &o, Some(t0))
        .await
        .unwrap();
    assert!(
        matches!(r, VoteResult::Accepted { outcome: Some(ref x), .. } if x.outcome == Outcome::Approved),
        "{r:?}"
    );
    assert_eq!(
        usage(&db, "ag", "D").await,
        (Decimal::new(600, 0), Decimal::new(50, 0))
    );
    // Reject h2: released.
    let r = ledger
        .apply_vote_at(&vote("h2", "bob", Vote::Reject), &o, Some(t0))
        .await
        .unwrap();
    assert!(
        matches!(r, VoteResult::Accepted { outcome: Some(ref x), .. } if x.outcome == Outcome::Rejected),
        "{r:?}"
    );
    assert_eq!(
        usage(&db, "ag", "D").await,
        (Decimal::new(600, 0), Decimal::ZERO)
    );

    // Expiry: a new HITL, swept after its TTL (1h).
    ledger
        .decide_at(&set, &intent("h3", "ag", "10.00"), &o, t0)
        .await
        .unwrap();
    assert!(
        ledger
            .expire_due(t0 + chrono::Duration::minutes(59))
            .await
            .unwrap()
            .is_empty()
    );
    let expired = ledger
        .expire_due(t0 + chrono::Duration::minutes(61))
        .await
        .unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].outcome, Outcome::Expired);
    assert_eq!(
        usage(&db, "ag", "D").await,
        (Decimal::new(600, 0), Decimal::ZERO)
    );
    // A second sweeper finds nothing; a late vote is refused.
    assert!(
        ledger
            .expire_due(t0 + chrono::Duration::minutes(62))
            .await
            .unwrap()
            .is_empty()
    );
    let r = ledger
        .apply_vote(&vote("h3", "alice", Vote::Approve), &o)
        .await
        .unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "already_closed"),
        "{r:?}"
    );

    // Vote arriving after the TTL but before any sweep: expired and refused.
    ledger
        .decide_at(&set, &intent("h4", "ag", "10.00"), &o, t0)
        .await
        .unwrap();
    let r = ledger
        .apply_vote_at(
            &vote("h4", "alice", Vote::Approve),
            &o,
            Some(t0 + chrono::Duration::hours(2)),
        )
        .await
        .unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "expired"),
        "{r:?}"
    );
    assert_eq!(
        ledger
            .decision("h4")
            .await
            .unwrap()
            .unwrap()
            .outcome
            .unwrap()
            .outcome,
        Outcome::Expired
    );

    // MSIG: 2 distinct approvals; same approver counts once; self-approval refused;
    // kill switch tripped before quorum -> KILLED, reservation released.
    let m = ledger
        .decide_at(&set, &intent("m1", "ag2", "900.00"), &o, t0)
        .await
        .unwrap();
    assert_eq!(m.message.effect, Effect::RequireMsig);
    let r = ledger
        .apply_vote_at(&vote("m1", "alice", Vote::Approve), &o, Some(t0))
        .await
        .unwrap();
    assert!(
        matches!(r, VoteResult::Accepted { outcome: None, .. }),
        "{r:?}"
    );
    let r = ledger
        .apply_vote_at(&vote("m1", "alice", Vote::Approve), &o, Some(t0))
        .await
        .unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "duplicate_approver"),
        "{r:?}"
    );
    let r = ledger
        .apply_vote_at(&vote("m1", "ag2", Vote::Approve), &o, Some(t0))
        .await
        .unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "self_approval"),
        "{r:?}"
    );
    assert_eq!(
        usage(&db, "ag2", "M").await,
        (Decimal::ZERO, Decimal::new(900, 0))
    );
    ledger
        .set_kill_switch(&Scope::Entity("acme-br".into()), true, "ops", "fraud", &o)
        .await
        .unwrap();
    let r = ledger
        .apply_vote_at(&vote("m1", "carol", Vote::Approve), &o, Some(t0))
        .await
        .unwrap();
    let VoteResult::Accepted {
        outcome: Some(out), ..
    } = r
    else {
        panic!("{r:?}")
    };
    assert_eq!(out.outcome, Outcome::Killed);
    assert_eq!(
        out.approvers,
        vec!["alice".to_string(), "carol".to_string()]
    );
    assert_eq!(usage(&db, "ag2", "M").await, (Decimal::ZERO, Decimal::ZERO));

    // While the switch is on, decisions in scope are denied.
    let k = ledger
        .decide(&set, &intent("k1", "ag3", "1.00"), &o)
        .await
        .unwrap();
    assert_eq!(k.message.effect, Effect::Deny);
    assert_eq!(k.message.reasons[0].code, "kill_switch_activated");
    let state = ledger.kill_switch_state().await.unwrap();
    assert!(
        state
            .iter()
            .any(|s| s.scope == "entity:acme-br" && s.active && s.reason == "fraud")
    );

    let rec = ledger.decision("m1").await.unwrap().unwrap();
    assert_eq!(rec.votes.len(), 2);
    assert_eq!(rec.decision_hash, m.decision_hash);

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test]
async fn outbox_holds_every_decision_and_outcome_until_published() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let d1 = ledger
        .decide(&set, &intent("o1", "ag", "10.00"), &o)
        .await
        .unwrap();
    ledger
        .decide(&set, &intent("o2", "ag", "600.00"), &o)
        .await
        .unwrap();
    ledger
        .apply_vote(&vote("o2", "alice", Vote::Reject), &o)
        .await
        .unwrap();
    ledger
        .decide(&set, &intent("o1", "ag", "10.00"), &o)
        .await
        .unwrap(); // redelivery: no new row

    let rows = ledger.outbox_claim(10).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.topic == "spend.decisions" && r.key == "ag")
    );
    let first: spendguard::decision::DecisionMessage =
        serde_json::from_str(&rows[0].payload).unwrap();
    assert_eq!(first, d1.message);
    let last: serde_json::Value = serde_json::from_str(&rows[2].payload).unwrap();
    assert_eq!(last["outcome"], "REJECTED");

    // Leased rows are not handed to another instance.
    let other = spendguard::ledger::Ledger::connect(&db.url, "other")
        .await
        .unwrap();
    assert!(other.outbox_claim(10).await.unwrap().is_empty());
    ledger
        .outbox_mark_published(&rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(ledger.outbox_claim(10).await.unwrap().is_empty());

    let mut c = db.superuser().await;
    let row = sqlx::query("SELECT count(*) AS n FROM outbox")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(row.get::<i64, _>("n"), 0);
}

/// The direct path of the outbox (issue 15): a committed decision is handed to the
/// direct publisher leased to it, unless an older row of its agent is still in the
/// outbox; the claim round never takes a handed-over row, nor anything behind it; a
/// released row goes back to the claim round; a full hand-over queue leaves the rows to
/// the claim round.
#[tokio::test]
async fn committed_rows_go_to_the_direct_publisher_without_breaking_per_agent_order() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let mut ledger = db.ledger().await;
    let (tx, mut handed) = tokio::sync::mpsc::channel(1);
    ledger.hand_outbox_to("inst/direct", tx);
    let (_d, set) = standard_set();
    let o = origin();

    let d1 = ledger
        .decide(&set, &intent("h1", "ag", "10.00"), &o)
        .await
        .unwrap();
    let first = handed
        .try_recv()
        .expect("a committed decision is handed over");
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].key.as_str(), first[0].topic.as_str()),
        ("ag", "spend.decisions")
    );
    let message: spendguard::decision::DecisionMessage =
        serde_json::from_str(&first[0].payload).unwrap();
    assert_eq!(message, d1.message);

    // Same agent while h1 is unpublished: not handed over, and the claim round waits
    // behind the handed-over row.
    ledger
        .decide(&set, &intent("h2", "ag", "11.00"), &o)
        .await
        .unwrap();
    assert!(handed.try_recv().is_err(), "h2 must wait behind h1");
    assert!(ledger.outbox_claim(10).await.unwrap().is_empty());
    ledger.outbox_mark_published(&[first[0].id]).await.unwrap();
    let claimed = ledger.outbox_claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        claimed[0].payload.contains("\"h2\""),
        "{}",
        claimed[0].payload
    );
    ledger
        .outbox_mark_published(&[claimed[0].id])
        .await
        .unwrap();

    // Another agent: handed over; a failed delivery is released to the claim round.
    ledger
        .decide(&set, &intent("h3", "bo", "12.00"), &o)
        .await
        .unwrap();
    let third = handed.try_recv().expect("h3 handed over");
    assert_eq!(third.len(), 1);
    assert_eq!(
        ledger
            .outbox_release("someone-else", &[third[0].id])
            .await
            .unwrap(),
        0
    );
    assert!(
        ledger.outbox_claim(10).await.unwrap().is_empty(),
        "still leased"
    );
    assert_eq!(
        ledger
            .outbox_release("inst/direct", &[third[0].id])
            .await
            .unwrap(),
        1
    );
    let claimed = ledger.outbox_claim(10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![third[0].id]
    );
    ledger.outbox_mark_published(&[third[0].id]).await.unwrap();

    // A full queue (capacity 1, not drained): the rows stay for the claim round.
    ledger
        .decide(&set, &intent("h4", "ci", "13.00"), &o)
        .await
        .unwrap();
    ledger
        .decide(&set, &intent("h5", "di", "14.00"), &o)
        .await
        .unwrap();
    let fourth = handed.try_recv().expect("h4 handed over");
    assert!(fourth[0].payload.contains("\"h4\""));
    assert!(handed.try_recv().is_err());
    let claimed = ledger.outbox_claim(10).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(claimed[0].payload.contains("\"h5\""));

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test]
async fn replay_names_every_live_row_that_differs_from_the_events() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    for (id, amount) in [("t-a1", "10.00"), ("t-a2", "20.00"), ("t-h1", "600.00")] {
        ledger
            .decide(&set, &intent(id, "tamper-ag", amount), &o)
            .await
            .unwrap();
    }
    let clean = ledger.replay(true).await.unwrap();
    assert!(clean.ok(), "{clean:#?}");

    // Projections are mutable by design (only events are append-only): change each kind
    // of live row once and expect each change to be named.
    let mut su = db.superuser().await;
    for sql in [
        "UPDATE decision SET effect = 'DENY' WHERE intent_id = 't-a1'",
        // Only the message: replay compares decision rows by digest, and must still name
        // the one field that differs.
        "UPDATE decision SET message = ' ' || message WHERE intent_id = 't-h1'",
        "DELETE FROM decision WHERE intent_id = 't-a2'",
        "INSERT INTO decision SELECT 't-ghost', agent_id, entity_id, seq, fingerprint, decision_hash, effect, message FROM decision WHERE intent_id = 't-a1'",
        "UPDATE usage_window SET committed = committed + 1 WHERE agent_id = 'tamper-ag' AND kind = 'D'",
        "DELETE FROM pending_approval WHERE intent_id = 't-h1'",
    ] {
        sqlx::query(sql).execute(&mut su).await.unwrap();
    }
    let report = ledger.replay(true).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.decision_mismatch_count, 0, "{report:#?}");
    assert!(report.chain_problems.is_empty(), "{report:#?}");
    assert_eq!(report.projection_difference_count, 6, "{report:#?}");
    let diffs = &report.projection_differences;
    let has = |needle: &str| diffs.iter().any(|d| d.contains(needle));
    assert!(
        has("decision \"t-a1\": effect: rebuilt ALLOW, live DENY"),
        "{diffs:#?}"
    );
    assert!(
        has("decision \"t-h1\": message: rebuilt {") && has(", live  {"),
        "{diffs:#?}"
    );
    assert!(
        has("decision \"t-a2\": rebuilt from seq") && has("missing in the live table"),
        "{diffs:#?}"
    );
    assert!(
        has("decision \"t-ghost\": live row") && has("has no events behind it"),
        "{diffs:#?}"
    );
    assert!(
        has("usage_window") && has("rebuilt (30, 600), live (31, 600)"),
        "{diffs:#?}"
    );
    assert!(has("pending_approval \"t-h1\""), "{diffs:#?}");
}

/// HITL / MSIG decision messages carry what an approver signs (SPEC §13.1); an event
/// written before that (no `approvalMessage`) still folds into the message it published.
#[tokio::test]
async fn waiting_decisions_carry_their_hash_and_older_events_fold_as_published() {
    use spendguard::ledger::events::LedgerEvent;
    use spendguard::ledger::machine::{self, Change, Recorded};
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let m = ledger
        .decide(&set, &intent("i-msig", "ag2", "900.00"), &o)
        .await
        .unwrap();
    let approval = m.message.approval.clone().expect("approval part");
    assert_eq!(approval.terms.decision_hash, m.decision_hash);
    assert_eq!(approval.amount.to_string(), "900.00");
    assert!(approval.approvals.is_empty());
    let a = ledger
        .decide(&set, &intent("i-allow", "ag", "30.00"), &o)
        .await
        .unwrap();
    assert_eq!(a.message.approval, None);

    let mut c = db.superuser().await;
    let (seq, payload, hash, recorded_at): (i64, String, Vec<u8>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT seq, payload, hash, recorded_at FROM ledger_event WHERE event_type = 'intent_decided' AND resource = 'i-msig'",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
    let fold = |payload: &str| {
        let event = LedgerEvent::parse("intent_decided", payload).unwrap();
        let r = Recorded {
            seq,
            hash: hash.clone().try_into().unwrap(),
            recorded_at,
        };
        let mut message = None;
        machine::delta(&r, &event, &mut |ch| {
            if let Change::Decision { message: msg, .. } = ch {
                message = Some(*msg);
            }
        })
        .unwrap();
        message.unwrap()
    };
    assert_eq!(
        fold(&payload),
        m.message,
        "replay rebuilds the published message"
    );
    let mut old: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(old["approvalMessage"], true);
    old.as_object_mut().unwrap().remove("approvalMessage");
    let legacy = fold(&old.to_string());
    assert_eq!(legacy.approval, None);
    assert_eq!(legacy.effect, m.message.effect);
}

/// SPEC §14: a vote carries the registry it was verified under; an approver removed
/// from the registry since voting no longer counts toward the quorum.
#[tokio::test]
async fn votes_of_an_approver_removed_from_the_registry_stop_counting() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    let m = ledger
        .decide(&set, &intent("r-msig", "ag3", "900.00"), &o)
        .await
        .unwrap();
    assert_eq!(m.message.effect, Effect::RequireMsig);
    assert_eq!(m.message.approvals_required, 2);
    let under = |approver: &str, registry: &[&str]| VerifiedVote {
        registered: Some(registry.iter().map(|s| s.to_string()).collect()),
        ..vote("r-msig", approver, Vote::Approve)
    };
    let accepted = |r: VoteResult| match r {
        VoteResult::Accepted { outcome, .. } => outcome,
        other => panic!("{other:?}"),
    };
    let r = ledger
        .apply_vote(&under("alice", &["alice", "bob", "carol"]), &o)
        .await
        .unwrap();
    assert_eq!(accepted(r), None, "one of two approvals");
    // alice is removed from the registry; bob's approval is the only one that counts.
    let r = ledger
        .apply_vote(&under("bob", &["bob", "carol"]), &o)
        .await
        .unwrap();
    assert_eq!(accepted(r), None, "alice's vote no longer counts");
    let r = ledger
        .apply_vote(&under("carol", &["bob", "carol"]), &o)
        .await
        .unwrap();
    let out = accepted(r).expect("bob and carol are a quorum");
    assert_eq!(out.outcome, Outcome::Approved);
    assert_eq!(out.approvers, vec!["bob".to_string(), "carol".to_string()]);
    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}
