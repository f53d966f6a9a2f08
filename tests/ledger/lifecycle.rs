//! The authorization lifecycle (SPEC §11) on the real PostgreSQL: every row of the
//! settlement table allowed and refused at its boundaries, usage windows following the
//! money in the window of the original acceptance, expiry and forced captures,
//! concurrency of deciders and settlement writers, and replay over every state.

use crate::harness::db::{TestDb, at, fresh_db, origin};
use crate::harness::intent::intent;
use crate::harness::policies::{DEFAULT_BINDINGS, policy_set, policy_text, standard_set};
use rust_decimal::Decimal;
use spendguard::decision::Effect;
use spendguard::ledger::settle::SettleResult;
use spendguard::ledger::{Ledger, Outcome, VerifiedVote, Vote, VoteResult};
use spendguard::policy::PolicySet;
use spendguard::settlement::parse_settlement;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// A settlement message: `amount` "" = none (a VOID of the remainder, a CANCEL).
fn msg(id: &str, intent: &str, kind: &str, amount: &str, extra: &str) -> String {
    let money = if amount.is_empty() {
        String::new()
    } else {
        format!(r#","amount":"{amount}","currency":"BRL""#)
    };
    format!(r#"{{"settlementId":"{id}","intentId":"{intent}","type":"{kind}"{money}{extra}}}"#)
}

async fn settle(ledger: &Ledger, set: &PolicySet, text: &str) -> SettleResult {
    let s = parse_settlement(text.as_bytes()).expect("valid settlement");
    ledger.settle(set, &s, &origin()).await.expect("settle")
}

async fn settle_at(ledger: &Ledger, set: &PolicySet, text: &str, when: &str) -> SettleResult {
    let s = parse_settlement(text.as_bytes()).expect("valid settlement");
    ledger
        .settle_at(set, &s, &origin(), Some(at(when)))
        .await
        .expect("settle")
}

/// The outcome of an applied settlement (panics with the result otherwise).
fn applied(r: &SettleResult, outcome: Outcome) -> spendguard::ledger::OutcomeMessage {
    match r {
        SettleResult::Applied { outcome: o, .. } if o.outcome == outcome => (**o).clone(),
        other => panic!("expected {outcome:?}, got {other:?}"),
    }
}

fn refused(r: &SettleResult, code: &str) {
    assert!(
        matches!(r, SettleResult::Refused { code: c, .. } if c == code),
        "expected refusal {code}, got {r:?}"
    );
}

/// committed + reserved of an agent's day window starting `day`.
async fn day_usage(db: &TestDb, agent: &str, day: &str) -> Decimal {
    let mut c = db.superuser().await;
    sqlx::query_scalar::<_, Decimal>(
        "SELECT coalesce(sum(committed + reserved), 0) FROM usage_window
         WHERE agent_id = $1 AND kind = 'D' AND window_start = $2::date",
    )
    .bind(agent)
    .bind(day)
    .fetch_one(&mut c)
    .await
    .unwrap()
}

fn vote(intent: &str, approver: &str) -> VerifiedVote {
    VerifiedVote {
        intent_id: intent.into(),
        approver_id: approver.into(),
        vote: Vote::Approve,
        signed_at: chrono::Utc::now(),
        proof: None,
        registered: None,
    }
}

#[tokio::test]
async fn every_row_of_the_settlement_table_at_its_boundaries() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set(); // perTxn 1000, daily 500, MSIG above 800
    let o = origin();
    let allow = ledger
        .decide(&set, &intent("i-a", "ag", "100.00"), &o)
        .await
        .unwrap();
    assert_eq!(allow.message.effect, Effect::Allow);

    // CAPTURE: amount ≤ authorized − captured − voided, one minor unit over is refused.
    refused(
        &settle(&ledger, &set, &msg("s1", "i-a", "CAPTURE", "100.01", "")).await,
        "exceeds_remainder",
    );
    let c = applied(
        &settle(&ledger, &set, &msg("s2", "i-a", "CAPTURE", "60.00", "")).await,
        Outcome::Captured,
    );
    let totals = c.authorization.as_ref().unwrap();
    assert_eq!(
        (totals.captured, totals.outstanding, totals.is_final),
        (d("60.00"), d("40.00"), false)
    );
    assert_eq!(c.settlement_id.as_deref(), Some("s2"));
    assert_eq!(c.amount, Some(d("60.00")));
    // Wrong currency.
    let usd = r#"{"settlementId":"s3","intentId":"i-a","type":"CAPTURE","amount":"1.00","currency":"USD"}"#;
    refused(&settle(&ledger, &set, usd).await, "currency_mismatch");
    // VOID: a part of the remainder; one minor unit over is refused.
    refused(
        &settle(&ledger, &set, &msg("s4", "i-a", "VOID", "40.01", "")).await,
        "exceeds_remainder",
    );
    let v = applied(
        &settle(&ledger, &set, &msg("s5", "i-a", "VOID", "10.00", "")).await,
        Outcome::Voided,
    );
    assert_eq!(v.authorization.as_ref().unwrap().outstanding, d("30.00"));
    // Capture of exactly the remainder: nothing left, the authorization is final.
    let last = applied(
        &settle(&ledger, &set, &msg("s6", "i-a", "CAPTURE", "30.00", "")).await,
        Outcome::Captured,
    );
    assert!(last.authorization.as_ref().unwrap().is_final);
    refused(
        &settle(&ledger, &set, &msg("s7", "i-a", "CAPTURE", "0.01", "")).await,
        "already_final",
    );
    refused(
        &settle(&ledger, &set, &msg("s8", "i-a", "VOID", "", "")).await,
        "already_final",
    );
    // REFUND: amount ≤ captured − refunded.
    refused(
        &settle(&ledger, &set, &msg("s9", "i-a", "REFUND", "90.01", "")).await,
        "exceeds_refundable",
    );
    applied(
        &settle(&ledger, &set, &msg("s10", "i-a", "REFUND", "90.00", "")).await,
        Outcome::Refunded,
    );
    refused(
        &settle(&ledger, &set, &msg("s11", "i-a", "REFUND", "0.01", "")).await,
        "exceeds_refundable",
    );
    // CANCEL of an authorized intent: not waiting for approval.
    refused(
        &settle(&ledger, &set, &msg("s12", "i-a", "CANCEL", "", "")).await,
        "not_awaiting_approval",
    );
    // Idempotency: the same message again changes nothing and answers the same outcome;
    // the same id with another payload is refused.
    let again = settle(&ledger, &set, &msg("s2", "i-a", "CAPTURE", "60.00", "")).await;
    match &again {
        SettleResult::Redelivered { outcome } => assert_eq!(**outcome, c),
        other => panic!("expected a redelivery, got {other:?}"),
    }
    refused(
        &settle(&ledger, &set, &msg("s2", "i-a", "CAPTURE", "60.01", "")).await,
        "idempotency_conflict",
    );
    // Unknown intent; a DENY authorizes nothing.
    refused(
        &settle(&ledger, &set, &msg("s13", "nope", "CAPTURE", "1.00", "")).await,
        "unknown_intent",
    );
    let deny = ledger
        .decide(&set, &intent("i-d", "ag", "1000.01"), &o)
        .await
        .unwrap();
    assert_eq!(deny.message.effect, Effect::Deny);
    refused(
        &settle(&ledger, &set, &msg("s14", "i-d", "CAPTURE", "1.00", "")).await,
        "not_authorized",
    );

    // A waiting intent: nothing to capture; CANCEL closes it and releases the
    // reservation; votes and a second CANCEL are refused afterwards.
    let hitl = ledger
        .decide(&set, &intent("i-h", "ag", "450.00"), &o)
        .await
        .unwrap();
    assert_eq!(hitl.message.effect, Effect::RequireHitl, "90 + 450 > 500");
    refused(
        &settle(&ledger, &set, &msg("s15", "i-h", "CAPTURE", "1.00", "")).await,
        "not_authorized",
    );
    let day = hitl.message.usage.as_ref().unwrap().window.day.to_string();
    // i-a holds what it captured (90: final), i-h reserves 450.
    assert_eq!(day_usage(&db, "ag", &day).await, d("540.00"));
    applied(
        &settle(&ledger, &set, &msg("s16", "i-h", "CANCEL", "", "")).await,
        Outcome::Cancelled,
    );
    assert_eq!(
        day_usage(&db, "ag", &day).await,
        d("90.00"),
        "reservation released"
    );
    refused(
        &settle(&ledger, &set, &msg("s17", "i-h", "CANCEL", "", "")).await,
        "not_awaiting_approval",
    );
    let r = ledger.apply_vote(&vote("i-h", "alice"), &o).await.unwrap();
    assert!(
        matches!(&r, VoteResult::Refused { reason, .. } if reason == "already_closed"),
        "{r:?}"
    );
    refused(
        &settle(&ledger, &set, &msg("s18", "i-h", "CAPTURE", "1.00", "")).await,
        "not_authorized",
    );

    // MSIG approved by two: an authorization in the window of the request.
    let msig = ledger
        .decide(&set, &intent("i-m", "ag2", "900.00"), &o)
        .await
        .unwrap();
    assert_eq!(msig.message.effect, Effect::RequireMsig);
    ledger.apply_vote(&vote("i-m", "alice"), &o).await.unwrap();
    ledger.apply_vote(&vote("i-m", "bob"), &o).await.unwrap();
    let c = applied(
        &settle(
            &ledger,
            &set,
            &msg("s19", "i-m", "CAPTURE", "700.00", r#","final":true"#),
        )
        .await,
        Outcome::Captured,
    );
    let t = c.authorization.as_ref().unwrap();
    assert_eq!(
        (t.captured, t.voided, t.outstanding, t.is_final),
        (d("700.00"), d("200.00"), Decimal::ZERO, true),
        "a final capture releases the uncaptured remainder"
    );
    let day = msig.message.usage.as_ref().unwrap().window.day.to_string();
    assert_eq!(day_usage(&db, "ag2", &day).await, d("700.00"));

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
    assert_eq!(
        report.settlements_reapplied, 5,
        "s2, s5, s6, s10, s19 (a CANCEL closes)"
    );
}

#[tokio::test]
async fn usage_follows_the_money_in_the_window_of_acceptance() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let restore = format!(
        "{}refunds: restore\nauthorizationTtl: 2d\n",
        policy_text(
            "r",
            "America/Sao_Paulo",
            "1000.00",
            "500.00",
            "2000.00",
            "800.00",
            "3600s"
        )
    );
    let ignore = policy_text(
        "p",
        "America/Sao_Paulo",
        "1000.00",
        "500.00",
        "2000.00",
        "800.00",
        "3600s",
    );
    let (_d, set) = policy_set(
        &[("p.yaml", &ignore), ("r.yaml", &restore)],
        &format!("{DEFAULT_BINDINGS}agents:\n  \"restorer\": r\n"),
    );
    let o = origin();
    // Day D = 2026-11-10 in Sao Paulo (UTC-3).
    let on_d = "2026-11-10T15:00:00Z";
    for (id, amount) in [("w1", "100.00"), ("w2", "100.00"), ("w3", "50.00")] {
        let r = ledger
            .decide_at(&set, &intent(id, "ag", amount), &o, at(on_d))
            .await
            .unwrap();
        assert_eq!(r.message.effect, Effect::Allow);
    }
    assert_eq!(day_usage(&db, "ag", "2026-11-10").await, d("250.00"));
    // Captured for less on D+1: the adjustment lands on day D.
    settle_at(
        &ledger,
        &set,
        &msg("c1", "w1", "CAPTURE", "80.00", r#","final":true"#),
        "2026-11-11T15:00:00Z",
    )
    .await;
    assert_eq!(day_usage(&db, "ag", "2026-11-10").await, d("230.00"));
    assert_eq!(day_usage(&db, "ag", "2026-11-11").await, Decimal::ZERO);
    // Voided: the whole remainder goes.
    settle(&ledger, &set, &msg("v2", "w2", "VOID", "", "")).await;
    assert_eq!(day_usage(&db, "ag", "2026-11-10").await, d("130.00"));
    // Refund under `refunds: ignore` gives nothing back.
    settle(&ledger, &set, &msg("r1", "w1", "REFUND", "30.00", "")).await;
    assert_eq!(day_usage(&db, "ag", "2026-11-10").await, d("130.00"));
    // The released budget is usable again on day D: 130 + 370 = 500 (equality passes).
    let more = ledger
        .decide_at(&set, &intent("w4", "ag", "370.00"), &o, at(on_d))
        .await
        .unwrap();
    assert_eq!(more.message.effect, Effect::Allow);
    assert_eq!(
        more.message.usage.as_ref().unwrap().daily_so_far,
        d("130.00")
    );

    // Expiry (7 days by default) releases w3's 50 and w4's 370; a forced capture counts
    // again and is flagged.
    let expired = ledger
        .expire_authorizations(at("2026-11-17T15:00:00Z"))
        .await
        .unwrap();
    assert_eq!(expired.len(), 2);
    assert!(expired.iter().all(|m| m.outcome == Outcome::AuthExpired));
    assert_eq!(day_usage(&db, "ag", "2026-11-10").await, d("80.00"));
    assert!(
        ledger
            .expire_authorizations(at("2026-11-18T15:00:00Z"))
            .await
            .unwrap()
            .is_empty(),
        "an authorization expires once"
    );
    let forced = applied(
        &settle_at(
            &ledger,
            &set,
            &msg("c3", "w3", "CAPTURE", "20.00", ""),
            "2026-11-18T15:00:00Z",
        )
        .await,
        Outcome::Captured,
    );
    assert_eq!(forced.flags, vec!["capture_after_expiry".to_string()]);
    assert_eq!(day_usage(&db, "ag", "2026-11-10").await, d("100.00"));

    // `refunds: restore` (agent bound to policy r): a refund gives budget back; its TTL
    // of 2 days is recorded with the authorization.
    ledger
        .decide_at(&set, &intent("x1", "restorer", "100.00"), &o, at(on_d))
        .await
        .unwrap();
    let auth = ledger.authorization("x1").await.unwrap().unwrap();
    assert_eq!(auth.state.expires_at, at("2026-11-12T15:00:00Z"));
    settle(&ledger, &set, &msg("xc", "x1", "CAPTURE", "100.00", "")).await;
    settle(&ledger, &set, &msg("xr", "x1", "REFUND", "30.00", "")).await;
    assert_eq!(day_usage(&db, "restorer", "2026-11-10").await, d("70.00"));

    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
}

#[tokio::test]
async fn replay_detects_a_tampered_captured_amount() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    ledger
        .decide(&set, &intent("t1", "ag", "100.00"), &o)
        .await
        .unwrap();
    settle(&ledger, &set, &msg("tc", "t1", "CAPTURE", "40.00", "")).await;
    assert!(ledger.replay(true).await.unwrap().ok());
    let mut su = db.superuser().await;
    sqlx::query("UPDATE authorization_state SET captured = 100.00 WHERE intent_id = 't1'")
        .execute(&mut su)
        .await
        .unwrap();
    let report = ledger.replay(true).await.unwrap();
    assert!(!report.ok());
    assert!(
        report
            .projection_differences
            .iter()
            .any(|p| p.starts_with("authorization_state \"t1\"")),
        "{report:#?}"
    );
    // Settlements and spend records are kept as digests while replaying: a row that
    // differs is still named, with the rebuilt row beside the live one.
    sqlx::query("UPDATE settlement SET message = replace(message, 'CAPTURED', 'VOIDED') WHERE settlement_id = 'tc'")
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query("UPDATE spend_record SET category = 'forged-category' WHERE intent_id = 't1'")
        .execute(&mut su)
        .await
        .unwrap();
    let report = ledger.replay(true).await.unwrap();
    let named = |prefix: &str, needle: &str| {
        report
            .projection_differences
            .iter()
            .any(|p| p.starts_with(prefix) && p.contains(needle))
    };
    assert!(
        named("settlement \"tc\": rebuilt SettlementRow", "CAPTURED")
            && named("settlement \"tc\"", "live SettlementRow"),
        "{report:#?}"
    );
    assert!(
        named(
            "spend_record \"t1\": rebuilt SpendRecordRow",
            "forged-category"
        ),
        "{report:#?}"
    );
    // A settlement row deleted, and a spend record with no events behind it.
    sqlx::query("DELETE FROM settlement WHERE settlement_id = 'tc'")
        .execute(&mut su)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO spend_record SELECT 'forged', agent_id, entity_id, accepted_at, category,
                beneficiary_id, country, purpose, currency, amount, counts, seq
         FROM spend_record WHERE intent_id = 't1'",
    )
    .execute(&mut su)
    .await
    .unwrap();
    let report = ledger.replay(true).await.unwrap();
    let found = |prefix: &str, end: &str| {
        report
            .projection_differences
            .iter()
            .any(|p| p.starts_with(prefix) && p.ends_with(end))
    };
    assert!(
        found("settlement \"tc\"", "missing in the live table"),
        "{report:#?}"
    );
    assert!(
        found("spend_record \"forged\"", "has no events behind it"),
        "{report:#?}"
    );
}

/// Deciders and settlement writers on the same agents at the same time, through
/// separate ledgers (each its own pool) and a child process (`ledger submit` with
/// settlement lines). Afterwards no window is over its cap, no authorization is captured
/// past what it authorized, and replay reproduces every decision and settlement in
/// ledger order (which re-checks each against the state it saw).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deciders_and_settlers_never_pass_a_cap_or_over_capture() {
    const AGENTS: usize = 3;
    const INTENTS: usize = 40;
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let (_d, set) = standard_set(); // daily 500
    let set = std::sync::Arc::new(set);
    let when = at("2026-11-20T15:00:00Z");
    // A child process settles too: captures of 10 on the first decider's intents (those
    // not decided yet when it gets there are refused as unknown: exit code 2).
    let (_pd, policy_path) = crate::harness::policies::standard_dir();
    let lines: String = (0..INTENTS)
        .map(|i| {
            msg(
                &format!("child-{i}"),
                &format!("c0-{i}"),
                "CAPTURE",
                "10.00",
                "",
            ) + "\n"
        })
        .collect();
    let mut child = std::process::Command::new(crate::harness::serve::binary())
        .env("SPENDGUARD_KEK", crate::harness::db::kek_for(&db.url))
        .args(["ledger", "submit", "--database-url", &db.url, "--policies"])
        .arg(&policy_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn spendguard");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..2 {
        let ledger = std::sync::Arc::new(db.ledger_named(&format!("decider-{t}")).await);
        let set = set.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..INTENTS {
                let amount = format!("{}.00", 20 + (i * 7 + t * 3) % 60);
                ledger
                    .decide_at(
                        &set,
                        &intent(
                            &format!("c{t}-{i}"),
                            &format!("agent-{}", i % AGENTS),
                            &amount,
                        ),
                        &origin(),
                        when,
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    // Two settlers race on the same intents: each tries a capture of 15 and a final
    // capture of 30 per intent; only what fits the remainder may apply.
    for s in 0..2 {
        let ledger = std::sync::Arc::new(db.ledger_named(&format!("settler-{s}")).await);
        let set = set.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..3 {
                for t in 0..2 {
                    for i in 0..INTENTS {
                        let id = format!("c{t}-{i}");
                        let (kind, amount, extra) = match (round + s + i) % 3 {
                            0 => ("CAPTURE", "15.00", ""),
                            1 => ("CAPTURE", "30.00", r#","final":true"#),
                            _ => ("VOID", "5.00", ""),
                        };
                        let text = msg(&format!("s{s}-{round}-{id}"), &id, kind, amount, extra);
                        let st = parse_settlement(text.as_bytes()).unwrap();
                        ledger.settle(&set, &st, &origin()).await.unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 2)),
        "child: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        INTENTS
    );
    let mut su = db.superuser().await;
    // Reservations of waiting intents may pass the cap (that is what waits); what was
    // allowed without a human may not.
    let windows: Vec<(String, Decimal)> =
        sqlx::query_as("SELECT agent_id, committed FROM usage_window WHERE kind = 'D'")
            .fetch_all(&mut su)
            .await
            .unwrap();
    assert!(!windows.is_empty());
    for (agent, used) in windows {
        assert!(used <= d("500.00"), "agent {agent}: {used} > daily cap 500");
    }
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ledger_event WHERE event_type = 'settlement_applied'",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert!(applied > 0, "some settlements applied");
    let over: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM authorization_state WHERE captured + voided > authorized",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(over, 0);
    // Usage equals what the authorizations hold (outstanding + captured; no refunds).
    let (live, derived): (Decimal, Decimal) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(committed), 0) FROM usage_window WHERE kind = 'D'),
                (SELECT coalesce(sum(CASE WHEN is_final OR expired THEN captured
                                          ELSE authorized - voided END), 0) FROM authorization_state)",
    )
    .fetch_one(&mut su)
    .await
    .unwrap();
    assert_eq!(live, derived);
    let ledger = db.ledger().await;
    let report = ledger.replay(true).await.unwrap();
    assert!(report.ok(), "{report:#?}");
    assert_eq!(report.settlements_reapplied as i64, applied);
}

/// `settle_batch` (what serve uses) applies settlements in order in one transaction,
/// exactly as one at a time would; a batch redelivered from Kafka gets the recorded
/// results and appends nothing.
#[tokio::test]
async fn a_batch_of_settlements_applies_in_order_like_one_at_a_time() {
    let Some(db) = fresh_db("sg_ledger_").await else {
        return;
    };
    let ledger = db.ledger().await;
    let (_d, set) = standard_set();
    let o = origin();
    for (id, agent, amount) in [("b1", "ag", "100.00"), ("b2", "ag2", "50.00")] {
        ledger
            .decide(&set, &intent(id, agent, amount), &o)
            .await
            .unwrap();
    }
    let texts = [
        msg("s1", "b1", "CAPTURE", "60.00", ""),
        msg("s2", "b1", "CAPTURE", "50.00", ""),
        msg("s1", "b1", "CAPTURE", "60.00", ""),
        msg("s3", "b2", "VOID", "", ""),
        msg("s4", "ghost", "CAPTURE", "1.00", ""),
        msg("s5", "b1", "CAPTURE", "40.00", r#","final":true"#),
    ];
    let items: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(k, t)| {
            (
                parse_settlement(t.as_bytes()).unwrap(),
                spendguard::ledger::Origin::kafka("test", 3, 100 + k as i64),
            )
        })
        .collect();
    let summary = |results: &[SettleResult]| -> Vec<String> {
        results
            .iter()
            .map(|r| match r {
                SettleResult::Applied { outcome, .. } => {
                    format!("applied {}", outcome.outcome.as_str())
                }
                SettleResult::Redelivered { outcome } => {
                    format!("redelivered {}", outcome.outcome.as_str())
                }
                SettleResult::Refused { code, .. } => format!("refused {code}"),
            })
            .collect()
    };
    let first = ledger.settle_batch(&set, &items).await.unwrap();
    assert_eq!(
        summary(&first),
        [
            "applied CAPTURED",
            "refused exceeds_remainder",
            "redelivered CAPTURED",
            "applied VOIDED",
            "refused unknown_intent",
            "applied CAPTURED",
        ]
    );
    let events = |db: &TestDb| {
        let url = db.url.clone();
        async move {
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                .await
                .unwrap();
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM ledger_event")
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    };
    let before = events(&db).await;
    // The same Kafka messages again (a rebalance): recorded answers, nothing appended.
    let again = ledger.settle_batch(&set, &items).await.unwrap();
    assert_eq!(
        summary(&again),
        [
            "redelivered CAPTURED",
            "refused exceeds_remainder",
            "redelivered CAPTURED",
            "redelivered VOIDED",
            "refused unknown_intent",
            "redelivered CAPTURED",
        ]
    );
    assert_eq!(events(&db).await, before);
    let auth = ledger.authorization("b1").await.unwrap().unwrap();
    assert_eq!(
        (auth.state.captured, auth.state.is_final),
        (d("100.00"), true)
    );
    assert!(ledger.replay(true).await.unwrap().ok());
}
