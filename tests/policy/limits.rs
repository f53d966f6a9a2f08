//! Limits in the evaluator (SPEC §12), table-driven and pure: every window kind, scope,
//! filter and effect, at the boundary (exactly at the limit passes; one minor unit or
//! one intent more does not), with what counted before given directly.

use rust_decimal::Decimal;
use spendguard::decision::{Effect, KillState, Usage};
use spendguard::intent::{Beneficiary, Purpose, SpendIntent};
use spendguard::policy::limits::SoFar;
use spendguard::policy::{CompiledPolicy, EvalInput, evaluate_limited};

const POLICY: &str = r#"
name: limits-table
currency: BRL
timezone: America/Sao_Paulo
caps: { perTxn: "100000.00", daily: "1000000.00", monthly: "10000000.00" }
limits:
  - { name: day-amount, window: { calendar: day }, amount: "100.00" }
  - { name: week-count, window: { calendar: week }, count: 3, effect: DENY }
  - { name: month-entity, window: { calendar: month }, amount: "1000.00", scope: entity, effect: REQUIRE_MSIG, approvals: 3 }
  - { name: year-travel, window: { calendar: year }, amount: "500.00", filter: { categoryIn: ["travel*"] } }
  - { name: forever-wire, window: { calendar: all_time }, count: 1, filter: { purposeIn: [WIRE], countryIn: [US] }, effect: DENY }
  - { name: burst, window: { trailing: 10m }, count: 2, amount: "50.00", filter: { beneficiaryIn: ["shop:*"] } }
"#;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn intent(
    amount: &str,
    category: &str,
    beneficiary: &str,
    country: &str,
    purpose: Purpose,
) -> SpendIntent {
    SpendIntent {
        intent_id: "i".into(),
        agent_id: "a".into(),
        entity_id: "e".into(),
        amount: dec(amount),
        currency: "BRL".into(),
        category: category.into(),
        beneficiary: Beneficiary {
            id: beneficiary.into(),
            account: None,
            country: Some(country.into()),
        },
        purpose,
        metadata: None,
    }
}

/// One row: the intent, what counted before per limit (amount, count), the expected
/// effect, approvals and finding codes (most severe first).
struct Row {
    name: &'static str,
    intent: SpendIntent,
    so_far: [(&'static str, u32); 6],
    effect: Effect,
    approvals: u32,
    codes: &'static [&'static str],
}

const ZERO: [(&str, u32); 6] = [("0", 0); 6];

fn with(i: usize, amount: &'static str, count: u32) -> [(&'static str, u32); 6] {
    let mut s = ZERO;
    s[i] = (amount, count);
    s
}

#[test]
fn every_window_scope_filter_and_effect_at_its_boundary() {
    let p = CompiledPolicy::parse(POLICY, "limits.yaml").unwrap();
    assert_eq!(p.limits().len(), 6);
    let plain = || intent("10.00", "utility", "utility:light", "BR", Purpose::Pix);
    let rows = vec![
        Row {
            name: "nothing counted",
            intent: plain(),
            so_far: ZERO,
            effect: Effect::Allow,
            approvals: 0,
            codes: &["policy_compliant_all_checks_passed"],
        },
        // calendar day, amount, agent, HITL (default effect)
        Row {
            name: "day: exactly at the limit",
            intent: plain(),
            so_far: with(0, "90.00", 5),
            effect: Effect::Allow,
            approvals: 0,
            codes: &["policy_compliant_all_checks_passed"],
        },
        Row {
            name: "day: one minor unit over",
            intent: plain(),
            so_far: with(0, "90.01", 5),
            effect: Effect::RequireHitl,
            approvals: 1,
            codes: &["would_exceed_amount_limit"],
        },
        // calendar week, count, DENY
        Row {
            name: "week: third intent passes",
            intent: plain(),
            so_far: with(1, "0", 2),
            effect: Effect::Allow,
            approvals: 0,
            codes: &["policy_compliant_all_checks_passed"],
        },
        Row {
            name: "week: fourth intent denied",
            intent: plain(),
            so_far: with(1, "0", 3),
            effect: Effect::Deny,
            approvals: 0,
            codes: &["would_exceed_count_limit"],
        },
        // calendar month, entity scope, MSIG 3
        Row {
            name: "month entity: at the limit",
            intent: plain(),
            so_far: with(2, "990.00", 0),
            effect: Effect::Allow,
            approvals: 0,
            codes: &["policy_compliant_all_checks_passed"],
        },
        Row {
            name: "month entity: over",
            intent: plain(),
            so_far: with(2, "990.01", 0),
            effect: Effect::RequireMsig,
            approvals: 3,
            codes: &["would_exceed_amount_limit"],
        },
        // calendar year, filtered by category glob: counts and checks travel only
        Row {
            name: "year travel: other category not checked",
            intent: plain(),
            so_far: with(3, "999.00", 0),
            effect: Effect::Allow,
            approvals: 0,
            codes: &["policy_compliant_all_checks_passed"],
        },
        Row {
            name: "year travel: travel-air over",
            intent: intent("10.00", "travel-air", "air:x", "BR", Purpose::Card),
            so_far: with(3, "490.01", 0),
            effect: Effect::RequireHitl,
            approvals: 1,
            codes: &["would_exceed_amount_limit"],
        },
        // all time, purpose + country filter (both must hold)
        Row {
            name: "all time: WIRE to BR not checked",
            intent: intent("10.00", "utility", "bank:x", "BR", Purpose::Wire),
            so_far: with(4, "0", 1),
            effect: Effect::Allow,
            approvals: 0,
            codes: &["policy_compliant_all_checks_passed"],
        },
        Row {
            name: "all time: second WIRE to US denied",
            intent: intent("10.00", "utility", "bank:x", "US", Purpose::Wire),
            so_far: with(4, "0", 1),
            effect: Effect::Deny,
            approvals: 0,
            codes: &["would_exceed_count_limit"],
        },
        // trailing, amount and count on one limit, beneficiary glob
        Row {
            name: "burst: both at the limit",
            intent: intent("25.00", "utility", "shop:1", "BR", Purpose::Pix),
            so_far: with(5, "25.00", 1),
            effect: Effect::Allow,
            approvals: 0,
            codes: &["policy_compliant_all_checks_passed"],
        },
        Row {
            name: "burst: both over",
            intent: intent("25.01", "utility", "shop:1", "BR", Purpose::Pix),
            so_far: with(5, "25.00", 2),
            effect: Effect::RequireHitl,
            approvals: 1,
            codes: &["would_exceed_amount_limit", "would_exceed_count_limit"],
        },
        // deny overrides across limits; every finding is reported
        Row {
            name: "deny overrides MSIG and HITL",
            intent: plain(),
            so_far: [
                ("100.00", 0),
                ("0", 3),
                ("1000.00", 0),
                ("0", 0),
                ("0", 0),
                ("0", 0),
            ],
            effect: Effect::Deny,
            approvals: 0,
            codes: &[
                "would_exceed_count_limit",
                "would_exceed_amount_limit",
                "would_exceed_amount_limit",
            ],
        },
    ];
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into();
    for row in rows {
        let so_far: Vec<SoFar> = row
            .so_far
            .iter()
            .map(|(a, c)| SoFar {
                amount: dec(a),
                count: *c,
            })
            .collect();
        let e = evaluate_limited(
            &p,
            &EvalInput {
                intent: &row.intent,
                usage: Usage::default(),
                kill: &KillState::Off,
                accepted_at: at,
            },
            &so_far,
        );
        let codes: Vec<&str> = e.reasons.iter().map(|r| r.code.as_ref()).collect();
        assert_eq!(codes, row.codes, "{}: {e:#?}", row.name);
        assert_eq!(e.effect, row.effect, "{}", row.name);
        assert_eq!(e.approvals_required, row.approvals, "{}", row.name);
    }
}

#[test]
fn a_finding_names_the_limit_window_and_amounts() {
    let p = CompiledPolicy::parse(POLICY, "limits.yaml").unwrap();
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into();
    let i = intent("300.00", "travel", "air:x", "BR", Purpose::Card);
    let so_far = [
        SoFar::default(),
        SoFar::default(),
        SoFar::default(),
        SoFar {
            amount: dec("1800"),
            count: 0,
        },
    ];
    let e = evaluate_limited(
        &p,
        &EvalInput {
            intent: &i,
            usage: Usage::default(),
            kill: &KillState::Off,
            accepted_at: at,
        },
        &so_far,
    );
    let details: Vec<&str> = e.reasons.iter().map(|r| r.detail.as_ref()).collect();
    assert!(
        details.contains(
            &"day-amount: 0.00 + 300.00 > 100.00 BRL (day 2026-11-25, America/Sao_Paulo)"
        ),
        "{details:?}"
    );
    assert!(
        details
            .contains(&"year-travel: 1800.00 + 300.00 > 500.00 BRL (year 2026, America/Sao_Paulo)"),
        "{details:?}"
    );
}

#[test]
fn invalid_limits_are_refused_with_a_located_error() {
    for (limits, code) in [
        (
            "  - { name: x, window: { calendar: week } }\n",
            "invalid_limit",
        ),
        ("  - { name: x, window: { }, count: 1 }\n", "invalid_limit"),
        (
            "  - { name: x, window: { calendar: week, trailing: 1h }, count: 1 }\n",
            "invalid_limit",
        ),
        (
            "  - { name: x, window: { trailing: 5s }, count: 1 }\n",
            "invalid_field",
        ),
        (
            "  - { name: x, window: { trailing: 367d }, count: 1 }\n",
            "invalid_field",
        ),
        (
            "  - { name: x, window: { calendar: week }, amount: \"1.001\" }\n",
            "invalid_amount",
        ),
        (
            "  - { name: x, window: { calendar: week }, count: 1, effect: ALLOW }\n",
            "invalid_effect",
        ),
        (
            "  - { name: x, window: { calendar: week }, count: 1, approvals: 2 }\n",
            "invalid_approvals",
        ),
        (
            "  - { name: x, window: { calendar: fortnight }, count: 1 }\n",
            "unknown_value",
        ),
    ] {
        let text = format!(
            "name: p\ncurrency: BRL\ncaps: {{ perTxn: 10, daily: 10, monthly: 10 }}\nlimits:\n{limits}"
        );
        let err = CompiledPolicy::parse(&text, "p.yaml").unwrap_err();
        assert_eq!(err.code, code, "{limits}: {err:?}");
        assert!(
            err.line >= 5,
            "{limits}: located at {}:{}",
            err.line,
            err.column
        );
    }
}
