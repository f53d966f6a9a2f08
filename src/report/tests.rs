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
