//! The report built from a synthetic event stream whose totals are known, checked in
//! every format. (`tests/report_*.rs` does the same from a real ledger.)

use super::compliance::*;
use super::events::EventRecord;
use super::render::{Format, render};
use chrono::{NaiveDate, TimeZone, Utc};
use serde_json::json;

fn ev(seq: i64, kind: &str, day: u32, minute: u32, payload: serde_json::Value) -> EventRecord {
    EventRecord {
        seq,
        event_type: kind.into(),
        recorded_at: Utc.with_ymd_and_hms(2026, 11, day, 12, minute, 0).unwrap(),
        actor: "actor".into(),
        resource: "r".into(),
        origin: json!({}),
        payload,
    }
}

#[allow(clippy::too_many_arguments)] // a table row of the scenario, read positionally
fn decided(
    seq: i64,
    day: u32,
    minute: u32,
    id: &str,
    agent: &str,
    amount: &str,
    effect: &str,
    codes: &[&str],
) -> EventRecord {
    let at = Utc.with_ymd_and_hms(2026, 11, day, 12, minute, 0).unwrap();
    ev(
        seq,
        "intent_decided",
        day,
        minute,
        json!({
            "intent": {"intentId": id, "agentId": agent, "entityId": "acme", "amount": amount, "currency": "BRL",
                       "category": "utility", "beneficiary": {"id": "b", "account": "411111******1111"}, "purpose": "PIX"},
            "acceptedAt": at, "kill": "Off",
            "policy": {"name": "p", "version": "1", "sha256": "abc"},
            "usage": {"dailySoFar": "0", "monthlySoFar": "0", "window": {"day": format!("2026-11-{day:02}"), "month": "2026-11", "tz": "UTC"}},
            "evaluation": {"effect": effect, "approvalsRequired": 0,
                           "reasons": codes.iter().map(|c| json!({"effect": effect, "code": c, "detail": "d"})).collect::<Vec<_>>()}
        }),
    )
}

pub(crate) fn scenario() -> Vec<EventRecord> {
    let closed = |seq, day, minute, id: &str, outcome: &str| {
        let at = Utc.with_ymd_and_hms(2026, 11, day, 12, minute, 0).unwrap();
        ev(
            seq,
            "intent_closed",
            day,
            minute,
            json!({"intentId": id, "agentId": "a1", "entityId": "acme", "outcome": outcome, "approvers": ["alice"], "closedAt": at}),
        )
    };
    vec![
        ev(
            1,
            "policy_activated",
            1,
            0,
            json!({"policy": {"name": "p", "version": "1", "sha256": "abc"}, "canonical": "{\"caps\":{\"daily\":\"500.00\",\"monthly\":\"5000\",\"perTxn\":\"300\"}}"}),
        ),
        decided(
            2,
            2,
            0,
            "i1",
            "a1",
            "100.00",
            "ALLOW",
            &["policy_compliant_all_checks_passed"],
        ),
        decided(
            3,
            2,
            1,
            "i2",
            "a1",
            "400.00",
            "DENY",
            &["exceeds_per_transaction_limit"],
        ),
        decided(
            4,
            2,
            2,
            "i3",
            "a1",
            "250.00",
            "REQUIRE_HITL",
            &["would_exceed_daily_limit"],
        ),
        ev(
            5,
            "vote_accepted",
            2,
            12,
            json!({"intentId": "i3", "approverId": "alice", "vote": "APPROVE", "signedAt": "2026-11-02T12:12:00Z"}),
        ),
        closed(6, 2, 12, "i3", "APPROVED"),
        ev(
            7,
            "vote_refused",
            2,
            13,
            json!({"intentId": "i3", "approverId": "mallory", "reason": "bad_signature", "detail": "x"}),
        ),
        ev(
            8,
            "kill_switch_set",
            3,
            0,
            json!({"scope": "global", "active": true, "actor": "ops", "reason": "incident"}),
        ),
        decided(
            9,
            3,
            1,
            "i4",
            "a2",
            "50.00",
            "DENY",
            &["kill_switch_activated"],
        ),
        ev(
            10,
            "kill_switch_set",
            3,
            2,
            json!({"scope": "global", "active": false, "actor": "ops", "reason": "resolved"}),
        ),
        ev(11, "intent_invalid", 3, 3, json!({"code": "invalid_json"})),
        decided(
            12,
            4,
            0,
            "i5",
            "a2",
            "80.00",
            "REQUIRE_HITL",
            &["beneficiary_requires_approval"],
        ),
        closed(13, 4, 30, "i5", "REJECTED"),
        decided(
            14,
            4,
            1,
            "i6",
            "a2",
            "90.00",
            "REQUIRE_HITL",
            &["beneficiary_requires_approval"],
        ),
        ev(
            15,
            "subject_erased",
            5,
            0,
            json!({"subject": "b", "actor": "dpo"}),
        ),
        // After the period: must not count.
        decided(
            16,
            20,
            0,
            "i7",
            "a1",
            "10.00",
            "ALLOW",
            &["policy_compliant_all_checks_passed"],
        ),
    ]
    .into_iter()
    .chain(lifecycle_events())
    .collect()
}

/// A `settlement_applied` event as the ledger records it (the fields reports read).
#[allow(clippy::too_many_arguments)] // a table row of the scenario, read positionally
fn applied(
    seq: i64,
    day: u32,
    id: &str,
    entity: &str,
    kind: &str,
    amount: &str,
    released: &str,
    forced: bool,
    currency: &str,
) -> EventRecord {
    ev(
        seq,
        "settlement_applied",
        day,
        seq as u32 % 60,
        json!({
            "settlement": {"settlementId": format!("s-{seq}"), "fingerprint": "00"},
            "intentId": id, "agentId": "a1", "entityId": entity, "type": kind,
            "final": false, "amount": amount, "released": released, "forced": forced,
            "restores": false, "usageDelta": "0",
            "authorization": {"authorized": "100.00", "captured": "0", "voided": "0", "refunded": "0",
                              "restored": "0", "expiredAmount": "0", "final": false, "expired": false,
                              "expiresAt": "2026-11-09T12:00:00Z", "currency": currency, "tz": "UTC",
                              "day": "2026-11-02", "month": "2026-11-01"}
        }),
    )
}

/// The lifecycle of the scenario's authorizations: i1 (ALLOW 100, day 2) and i3
/// (APPROVED 250, day 2). Known totals in BRL for entity acme: authorized 350, captured
/// 60 + 30 (day 3) + 120 forced (day 9) = 210, voided 10 released by the final capture
/// (day 3) + 50 (day 4) = 60, refunded 20 (day 4), expired 200 (day 9); one refusal
/// `exceeds_remainder` of i1. Outside acme: a USD capture of 5 (entity other) and a
/// malformed message (`invalid_json`, no intent). After the period: a capture of 1.
fn lifecycle_events() -> Vec<EventRecord> {
    vec![
        applied(17, 3, "i1", "acme", "CAPTURE", "60.00", "0", false, "BRL"),
        applied(
            18, 3, "i1", "acme", "CAPTURE", "30.00", "10.00", false, "BRL",
        ),
        applied(19, 4, "i1", "acme", "REFUND", "20.00", "0", false, "BRL"),
        applied(20, 4, "i3", "acme", "VOID", "50.00", "0", false, "BRL"),
        ev(
            21,
            "settlement_refused",
            5,
            0,
            json!({"settlementId": "s-x", "intentId": "i1", "type": "CAPTURE", "code": "exceeds_remainder", "detail": "capture 1 > 0 BRL remaining", "fingerprint": "00"}),
        ),
        ev(
            22,
            "settlement_refused",
            5,
            1,
            json!({"code": "invalid_json", "detail": "x", "fingerprint": "00", "raw": "{"}),
        ),
        applied(23, 5, "o1", "other", "CAPTURE", "5.00", "0", false, "USD"),
        ev(
            24,
            "authorization_expired",
            9,
            0,
            json!({"intentId": "i3", "agentId": "a1", "entityId": "acme", "released": "200.00", "usageDelta": "-200.00",
                   "authorization": {"currency": "BRL"}}),
        ),
        applied(25, 9, "i3", "acme", "CAPTURE", "120.00", "0", true, "BRL"),
        applied(26, 20, "i1", "acme", "REFUND", "1.00", "0", false, "BRL"),
    ]
}

fn report() -> ComplianceReport {
    let period = Period {
        from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2026, 11, 10).unwrap(),
        entity: None,
    };
    let chain = ChainCheck {
        ok: true,
        events_checked: 16,
        first_problem: None,
    };
    build(
        &scenario(),
        period,
        chain,
        Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap(),
    )
}

#[test]
fn numbers_match_the_scenario() {
    let r = report();
    assert_eq!(r.decisions.total, 6);
    assert_eq!(
        (
            r.decisions.by_effect.allow,
            r.decisions.by_effect.hitl,
            r.decisions.by_effect.deny
        ),
        (1, 3, 2)
    );
    assert_eq!(
        r.decisions.top_deny_reasons,
        vec![
            ("exceeds_per_transaction_limit".into(), 1),
            ("kill_switch_activated".into(), 1)
        ]
    );
    assert_eq!(
        (
            r.approvals.requested,
            r.approvals.approved,
            r.approvals.rejected,
            r.approvals.still_pending
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(r.approvals.time_to_approve_seconds, vec![600]);
    assert_eq!(
        r.approvals.refused_votes_by_reason.get("bad_signature"),
        Some(&1)
    );
    assert_eq!(r.kill_switch.len(), 2);
    assert_eq!(r.invalid_inputs, 1);
    assert_eq!(r.privacy.masked_accounts, 6);
    assert_eq!(r.privacy.erased_subjects.len(), 1);
    let a1 = r
        .spend_by_agent
        .iter()
        .find(|s| s.agent_id == "a1")
        .unwrap();
    // 100 allowed + 250 approved (counted in the day of the request).
    assert_eq!(a1.spent.to_string(), "350.00");
    assert_eq!(a1.daily_cap.map(|c| c.to_string()), Some("500.00".into()));
}

#[test]
fn every_format_carries_the_same_numbers() {
    let r = report();
    let json: serde_json::Value = serde_json::from_str(&render(&r, Format::Json)).unwrap();
    assert_eq!(json["decisions"]["total"], 6);
    assert_eq!(json["decisions"]["byEffect"]["REQUIRE_HITL"], 3);
    assert_eq!(json["approvals"]["timeToApproveP50Seconds"], 600);
    let md = render(&r, Format::Md);
    assert!(md.contains("| decisions | 6 |"), "{md}");
    assert!(md.contains("| REQUIRE_HITL | 3 |"));
    assert!(md.contains("| time to approve p50 | 600 s |"));
    assert!(md.contains("## PCI DSS 10.2.2 mapping"));
    assert!(md.contains("## LGPD Art. 37 record of processing"));
    let html = render(&r, Format::Html);
    assert!(html.contains("<td>decisions</td><td>6</td>"));
    assert!(html.contains("<td>time to approve p50</td><td>600 s</td>"));
    assert_eq!(html.matches("<svg").count(), 3, "three charts");
    // Self-contained: no external resource or script.
    for needle in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(
            !html.contains(needle),
            "HTML must be self-contained: found {needle}"
        );
    }
}

#[test]
fn entity_filter_excludes_other_entities() {
    let period = Period {
        from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2026, 11, 10).unwrap(),
        entity: Some("other".into()),
    };
    let r = build(
        &scenario(),
        period,
        ChainCheck {
            ok: true,
            events_checked: 0,
            first_problem: None,
        },
        Utc::now(),
    );
    assert_eq!(r.decisions.total, 0);
    assert_eq!(r.approvals.refused_votes, 0);
    assert_eq!(r.invalid_inputs, 0);
    // The global kill switch applies to every entity.
    assert_eq!(r.kill_switch.len(), 2);
}

fn brl(r: &ComplianceReport, day: Option<u32>) -> LifecycleAmounts {
    let l = &r.lifecycle;
    match day {
        None => l.totals.get("BRL").cloned().unwrap_or_default(),
        Some(d) => l
            .per_day
            .get(&NaiveDate::from_ymd_opt(2026, 11, d).unwrap())
            .and_then(|c| c.get("BRL"))
            .cloned()
            .unwrap_or_default(),
    }
}

fn amounts(values: [&str; 5]) -> LifecycleAmounts {
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
    LifecycleAmounts {
        authorized: d(values[0]),
        captured: d(values[1]),
        voided: d(values[2]),
        refunded: d(values[3]),
        expired: d(values[4]),
    }
}

#[test]
fn lifecycle_amounts_per_day_and_currency_match_the_scenario() {
    let r = report();
    // Authorized on the day of the decision (ALLOW) and of the approval (APPROVED).
    assert_eq!(brl(&r, Some(2)), amounts(["350.00", "0", "0", "0", "0"]));
    // A final capture's released remainder counts as voided.
    assert_eq!(brl(&r, Some(3)), amounts(["0", "90.00", "10.00", "0", "0"]));
    assert_eq!(brl(&r, Some(4)), amounts(["0", "0", "50.00", "20.00", "0"]));
    assert_eq!(
        brl(&r, Some(9)),
        amounts(["0", "120.00", "0", "0", "200.00"])
    );
    assert_eq!(
        brl(&r, None),
        amounts(["350.00", "210.00", "60.00", "20.00", "200.00"])
    );
    assert_eq!(
        r.lifecycle
            .totals
            .get("USD")
            .map(|a| a.captured.to_string()),
        Some("5.00".into())
    );
    assert!(
        !r.lifecycle
            .per_day
            .contains_key(&NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()),
        "after the period"
    );
    assert_eq!(r.lifecycle.settlements_applied, 6);
    assert_eq!(r.lifecycle.refused_settlements, 2);
    assert_eq!(
        r.lifecycle
            .refused_settlements_by_code
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        vec![("exceeds_remainder", 1), ("invalid_json", 1)]
    );
    let forced = &r.lifecycle.forced_captures;
    assert_eq!(forced.len(), 1);
    assert_eq!(
        (
            forced[0].intent_id.as_str(),
            forced[0].agent_id.as_str(),
            forced[0].settlement_id.as_str(),
            forced[0].amount.to_string().as_str(),
            forced[0].seq
        ),
        ("i3", "a1", "s-25", "120.00", 25)
    );
    assert_eq!(
        forced[0].at,
        Utc.with_ymd_and_hms(2026, 11, 9, 12, 25, 0).unwrap()
    );
    // Refused settlements are not invalid intents.
    assert_eq!(r.invalid_inputs, 1);
}

#[test]
fn lifecycle_respects_the_entity_filter() {
    let period = Period {
        from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2026, 11, 10).unwrap(),
        entity: Some("acme".into()),
    };
    let chain = ChainCheck {
        ok: true,
        events_checked: 0,
        first_problem: None,
    };
    let r = build(&scenario(), period.clone(), chain.clone(), Utc::now());
    assert_eq!(
        brl(&r, None),
        amounts(["350.00", "210.00", "60.00", "20.00", "200.00"])
    );
    assert!(!r.lifecycle.totals.contains_key("USD"), "entity other's");
    assert_eq!(r.lifecycle.settlements_applied, 5);
    // The malformed message names no intent: unfiltered reports only.
    assert_eq!(
        r.lifecycle
            .refused_settlements_by_code
            .keys()
            .collect::<Vec<_>>(),
        vec!["exceeds_remainder"]
    );
    assert_eq!(r.lifecycle.forced_captures.len(), 1);

    let other = build(
        &scenario(),
        Period {
            entity: Some("other".into()),
            ..period
        },
        chain,
        Utc::now(),
    );
    assert!(!other.lifecycle.totals.contains_key("BRL"));
    assert_eq!(other.lifecycle.settlements_applied, 1);
    assert_eq!(other.lifecycle.refused_settlements, 0);
    assert!(other.lifecycle.forced_captures.is_empty());
}

#[test]
fn lifecycle_is_rendered_in_every_format() {
    let r = report();
    let json: serde_json::Value = serde_json::from_str(&render(&r, Format::Json)).unwrap();
    let l = &json["lifecycle"];
    assert_eq!(l["totals"]["BRL"]["captured"], "210.00");
    assert_eq!(l["perDay"]["2026-11-03"]["BRL"]["voided"], "10.00");
    assert_eq!(l["refusedSettlementsByCode"]["exceeds_remainder"], 1);
    assert_eq!(l["forcedCaptures"][0]["intentId"], "i3");
    assert_eq!(l["forcedCaptures"][0]["seq"], 25);

    let md = render(&r, Format::Md);
    for row in [
        "## Authorization lifecycle",
        "| currency | authorized | captured | voided | refunded | expired |",
        "| BRL | 350 | 210 | 60 | 20 | 200 |",
        "| USD | 0 | 5 | 0 | 0 | 0 |",
        "| 2026-11-03 | BRL | 0 | 90 | 10 | 0 | 0 |",
        "| 2026-11-09 | BRL | 0 | 120 | 0 | 0 | 200 |",
        "| exceeds_remainder | 1 |",
        "| invalid_json | 1 |",
        "| 2026-11-09T12:25:00+00:00 | i3 | a1 | s-25 | 120 | BRL | 25 |",
        "| settlements applied | 6 |",
        "| settlements refused | 2 |",
        "| forced captures | 1 |",
    ] {
        assert!(md.contains(row), "markdown lacks {row:?}:\n{md}");
    }

    let html = render(&r, Format::Html);
    for cell in [
        "<h2>Authorization lifecycle</h2>",
        "<td>BRL</td><td>350</td><td>210</td><td>60</td><td>20</td><td>200</td>",
        "<td>2026-11-04</td><td>BRL</td><td>0</td><td>0</td><td>50</td><td>20</td><td>0</td>",
        "<td>i3</td><td>a1</td><td>s-25</td><td>120</td><td>BRL</td><td>25</td>",
        "<td>forced captures</td><td>1</td>",
    ] {
        assert!(html.contains(cell), "HTML lacks {cell}");
    }
}

#[test]
fn an_empty_lifecycle_renders_as_none() {
    let period = Period {
        from: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        to: NaiveDate::from_ymd_opt(2026, 12, 2).unwrap(),
        entity: None,
    };
    let r = build(
        &scenario(),
        period,
        ChainCheck {
            ok: true,
            events_checked: 0,
            first_problem: None,
        },
        Utc::now(),
    );
    assert_eq!(r.lifecycle, Lifecycle::default());
    let md = render(&r, Format::Md);
    let section = md
        .split("## Authorization lifecycle")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    assert_eq!(section.matches("_none_").count(), 4, "{section}");
}
