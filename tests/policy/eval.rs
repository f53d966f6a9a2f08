//! SPEC §2.1 decision table, row by row and code by code, with cap boundaries (equal to a
//! cap passes, one minor unit above does not), plus the Rego row and unbound agents.

use rust_decimal::Decimal;
use spendguard::decision::{Effect, Evaluation, KillState, Usage};
use spendguard::intent::{SpendIntent, parse_intent};
use spendguard::policy::{CompiledPolicy, EvalInput, PolicySet, codes, evaluate, no_policy_bound};
use std::collections::BTreeSet;
use std::path::Path;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn noon_utc() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into()
}

#[derive(Clone, Copy)]
struct Case {
    name: &'static str,
    amount: &'static str,
    currency: &'static str,
    category: &'static str,
    beneficiary: &'static str,
    country: Option<&'static str>,
    purpose: &'static str,
    daily: &'static str,
    monthly: &'static str,
    kill: bool,
    effect: Effect,
    approvals: u32,
    codes: &'static [&'static str],
}

const BASE: Case = Case {
    name: "",
    amount: "100.00",
    currency: "BRL",
    category: "utility",
    beneficiary: "ok:light",
    country: Some("BR"),
    purpose: "PIX",
    daily: "0",
    monthly: "0",
    kill: false,
    effect: Effect::Allow,
    approvals: 0,
    codes: &[codes::POLICY_COMPLIANT],
};

fn intent_of(c: &Case) -> SpendIntent {
    let mut v = serde_json::json!({
        "intentId": "0b8f7a52-2f7e-4a4e-9d51-3c7e1f0a9b11", "agentId": "agent-42", "entityId": "acme-br",
        "amount": c.amount, "currency": c.currency, "category": c.category,
        "beneficiary": {"id": c.beneficiary}, "purpose": c.purpose
    });
    if let Some(country) = c.country {
        v["beneficiary"]["country"] = country.into();
    }
    parse_intent(v.to_string().as_bytes()).unwrap()
}

fn run(p: &CompiledPolicy, c: &Case) -> Evaluation {
    let kill = if c.kill {
        KillState::On {
            scope: "global".into(),
        }
    } else {
        KillState::Off
    };
    let i = intent_of(c);
    let usage = Usage {
        daily_so_far: dec(c.daily),
        monthly_so_far: dec(c.monthly),
    };
    evaluate(
        p,
        &EvalInput {
            intent: &i,
            usage,
            kill: &kill,
            accepted_at: noon_utc(),
        },
    )
}

fn check(p: &CompiledPolicy, cases: &[Case]) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for c in cases {
        let e = run(p, c);
        let got: Vec<&str> = e.reasons.iter().map(|f| f.code.as_ref()).collect();
        assert_eq!(got, c.codes, "case {}: {e:#?}", c.name);
        assert_eq!(e.effect, c.effect, "case {}: {e:#?}", c.name);
        assert_eq!(e.approvals_required, c.approvals, "case {}: {e:#?}", c.name);
        // Most severe first, and the decision is the most severe finding.
        assert!(
            e.reasons.windows(2).all(|w| w[0].effect >= w[1].effect),
            "case {}",
            c.name
        );
        assert_eq!(e.reasons[0].effect, e.effect, "case {}", c.name);
        seen.extend(got.iter().map(|s| s.to_string()));
    }
    seen
}

const BASE_POLICY: &str = r#"
name: table-base
version: "1"
currency: BRL
timezone: America/Sao_Paulo
caps: { perTxn: 500, daily: 1000, monthly: 5000 }
allowLists:
  beneficiaries: ["ok:*", "bank:itau"]
  countries: [BR]
blockLists:
  categories: [gambling, "adult*"]
  beneficiaries: ["sanctioned:*"]
"#;

const RULES_POLICY: &str = r#"
name: table-rules
currency: BRL
caps: { perTxn: 500, daily: 1000, monthly: 5000 }
msig: { threshold: { higherThan: 300, approvals: 2 } }
allowLists: { beneficiaries: ["ok:*"] }
rules:
  - if: { categoryIn: [travel] }
    then: { effect: REQUIRE_HITL, reason: travel_needs_review }
  - if: { categoryIn: [travel, food] }
    then: { effect: DENY, reason: food_denied }
  - if: { amountGte: 400, purposeIn: [WIRE] }
    then: { effect: REQUIRE_MSIG, approvals: 3, reason: large_wire }
  - if: { categoryIn: [investment] }
    then: { effect: ALLOW, reason: investment_ok }
  - if: { categoryIn: [investment, software] }
    then: { effect: REQUIRE_HITL, reason: software_review }
  - if: { countryIn: [AR], beneficiaryIn: ["ok:ar*"] }
    then: { effect: DENY, reason: argentina_ok_blocked }
  - if: { countryNotIn: [BR, AR], purposeIn: [CARD] }
    then: { effect: REQUIRE_HITL, reason: foreign_card }
  - if: { beneficiaryNotInAllow: true, amountGt: 50 }
    then: { effect: REQUIRE_HITL, reason: new_beneficiary_over_50 }
"#;

#[test]
fn base_checks_rows_1_to_9_with_boundaries() {
    let p = CompiledPolicy::parse(BASE_POLICY, "base.yaml").unwrap();
    use codes::*;
    let deny = Effect::Deny;
    let hitl = Effect::RequireHitl;
    let cases = [
        Case {
            name: "baseline",
            ..BASE
        },
        // 1. kill switch: alone, even with other violations present.
        Case {
            name: "kill",
            kill: true,
            amount: "600.00",
            category: "gambling",
            effect: deny,
            codes: &[KILL_SWITCH_ACTIVATED],
            ..BASE
        },
        // 2. currency.
        Case {
            name: "usd",
            currency: "USD",
            effect: deny,
            codes: &[CURRENCY_NOT_SUPPORTED],
            ..BASE
        },
        Case {
            name: "usd over caps skips money checks",
            currency: "USD",
            amount: "9000.00",
            daily: "999",
            effect: deny,
            codes: &[CURRENCY_NOT_SUPPORTED],
            ..BASE
        },
        // 3. perTxn: equal passes, +0.01 denies.
        Case {
            name: "perTxn equal",
            amount: "500.00",
            ..BASE
        },
        Case {
            name: "perTxn +0.01",
            amount: "500.01",
            effect: deny,
            codes: &[EXCEEDS_PER_TRANSACTION_LIMIT],
            ..BASE
        },
        // 4. category block list, exact and glob.
        Case {
            name: "category exact",
            category: "gambling",
            effect: deny,
            codes: &[CATEGORY_BLOCKED],
            ..BASE
        },
        Case {
            name: "category glob",
            category: "adult_content",
            effect: deny,
            codes: &[CATEGORY_BLOCKED],
            ..BASE
        },
        Case {
            name: "category near miss",
            category: "gambling2",
            ..BASE
        },
        // 5. beneficiary block list (glob); it is also outside the allow list (row 9).
        Case {
            name: "beneficiary glob",
            beneficiary: "sanctioned:acme",
            effect: deny,
            codes: &[BENEFICIARY_BLOCKED, BENEFICIARY_REQUIRES_APPROVAL],
            ..BASE
        },
        // 6. countries: other and missing.
        Case {
            name: "country US",
            country: Some("US"),
            effect: deny,
            codes: &[COUNTRY_NOT_ALLOWED],
            ..BASE
        },
        Case {
            name: "country missing",
            country: None,
            effect: deny,
            codes: &[COUNTRY_NOT_ALLOWED],
            ..BASE
        },
        // 7. daily: equal passes, +0.01 needs a human.
        Case {
            name: "daily equal",
            daily: "900.00",
            ..BASE
        },
        Case {
            name: "daily +0.01",
            daily: "900.01",
            effect: hitl,
            approvals: 1,
            codes: &[WOULD_EXCEED_DAILY_LIMIT],
            ..BASE
        },
        // 8. monthly.
        Case {
            name: "monthly equal",
            monthly: "4900",
            ..BASE
        },
        Case {
            name: "monthly +0.01",
            monthly: "4900.01",
            effect: hitl,
            approvals: 1,
            codes: &[WOULD_EXCEED_MONTHLY_LIMIT],
            ..BASE
        },
        // 9. beneficiary allow list (glob and exact).
        Case {
            name: "not allowed beneficiary",
            beneficiary: "shop:new",
            effect: hitl,
            approvals: 1,
            codes: &[BENEFICIARY_REQUIRES_APPROVAL],
            ..BASE
        },
        Case {
            name: "exact allowed beneficiary",
            beneficiary: "bank:itau",
            ..BASE
        },
        // Deny overrides; every check ran; stable order within a severity.
        Case {
            name: "everything at once",
            amount: "600.00",
            category: "gambling",
            beneficiary: "sanctioned:x",
            country: Some("US"),
            daily: "900",
            monthly: "4500",
            effect: deny,
            codes: &[
                EXCEEDS_PER_TRANSACTION_LIMIT,
                CATEGORY_BLOCKED,
                BENEFICIARY_BLOCKED,
                COUNTRY_NOT_ALLOWED,
                WOULD_EXCEED_DAILY_LIMIT,
                WOULD_EXCEED_MONTHLY_LIMIT,
                BENEFICIARY_REQUIRES_APPROVAL,
            ],
            ..BASE
        },
    ];
    let seen = check(&p, &cases);
    for code in [
        KILL_SWITCH_ACTIVATED,
        CURRENCY_NOT_SUPPORTED,
        EXCEEDS_PER_TRANSACTION_LIMIT,
        CATEGORY_BLOCKED,
        BENEFICIARY_BLOCKED,
        COUNTRY_NOT_ALLOWED,
        WOULD_EXCEED_DAILY_LIMIT,
        WOULD_EXCEED_MONTHLY_LIMIT,
        BENEFICIARY_REQUIRES_APPROVAL,
        POLICY_COMPLIANT,
    ] {
        assert!(seen.contains(code), "{code} not exercised");
    }
}

#[test]
fn rules_and_msig_rows_10_and_11() {
    let p = CompiledPolicy::parse(RULES_POLICY, "rules.yaml").unwrap();
    use codes::*;
    let msig = Effect::RequireMsig;
    let hitl = Effect::RequireHitl;
    let cases = [
        // 11. msig: equal passes, +0.01 needs 2 approvals.
        Case {
            name: "msig equal",
            amount: "300.00",
            ..BASE
        },
        Case {
            name: "msig +0.01",
            amount: "300.01",
            effect: msig,
            approvals: 2,
            codes: &[AMOUNT_REQUIRES_MULTIPLE_APPROVALS],
            ..BASE
        },
        // 10. first matching rule only: travel matches rules 1 and 2, rule 1 wins.
        Case {
            name: "first match",
            category: "travel",
            effect: hitl,
            approvals: 1,
            codes: &["travel_needs_review"],
            ..BASE
        },
        Case {
            name: "second rule",
            category: "food",
            effect: Effect::Deny,
            codes: &["food_denied"],
            ..BASE
        },
        // amountGte boundary + purposeIn; rule approvals beat the msig approvals.
        Case {
            name: "gte equal",
            amount: "400.00",
            purpose: "WIRE",
            effect: msig,
            approvals: 3,
            codes: &["large_wire", AMOUNT_REQUIRES_MULTIPLE_APPROVALS],
            ..BASE
        },
        Case {
            name: "gte -0.01",
            amount: "399.99",
            purpose: "WIRE",
            effect: msig,
            approvals: 2,
            codes: &[AMOUNT_REQUIRES_MULTIPLE_APPROVALS],
            ..BASE
        },
        Case {
            name: "gte other purpose",
            amount: "400.00",
            purpose: "PIX",
            effect: msig,
            approvals: 2,
            codes: &[AMOUNT_REQUIRES_MULTIPLE_APPROVALS],
            ..BASE
        },
        // An ALLOW rule stops the rule list (rule 5 would match software too)...
        Case {
            name: "allow rule",
            category: "investment",
            codes: &["investment_ok", POLICY_COMPLIANT],
            ..BASE
        },
        Case {
            name: "rule after allow",
            category: "software",
            effect: hitl,
            approvals: 1,
            codes: &["software_review"],
            ..BASE
        },
        // ...but lowers nothing.
        Case {
            name: "allow rule vs msig",
            category: "investment",
            amount: "450.00",
            effect: msig,
            approvals: 2,
            codes: &[AMOUNT_REQUIRES_MULTIPLE_APPROVALS, "investment_ok"],
            ..BASE
        },
        Case {
            name: "allow rule vs allow list",
            category: "investment",
            beneficiary: "new:x",
            effect: hitl,
            approvals: 1,
            codes: &[BENEFICIARY_REQUIRES_APPROVAL, "investment_ok"],
            ..BASE
        },
        // countryIn + beneficiaryIn glob; countryNotIn with a missing country matches.
        Case {
            name: "countryIn",
            country: Some("AR"),
            beneficiary: "ok:ar-shop",
            effect: Effect::Deny,
            codes: &["argentina_ok_blocked"],
            ..BASE
        },
        Case {
            name: "countryIn other",
            country: Some("AR"),
            beneficiary: "ok:br-shop",
            ..BASE
        },
        Case {
            name: "countryNotIn missing",
            country: None,
            purpose: "CARD",
            effect: hitl,
            approvals: 1,
            codes: &["foreign_card"],
            ..BASE
        },
        Case {
            name: "countryNotIn BR",
            country: Some("BR"),
            purpose: "CARD",
            ..BASE
        },
        // beneficiaryNotInAllow (the origin's never-matching condition) with amountGt.
        Case {
            name: "notInAllow over 50",
            beneficiary: "new:x",
            amount: "50.01",
            effect: hitl,
            approvals: 1,
            codes: &[BENEFICIARY_REQUIRES_APPROVAL, "new_beneficiary_over_50"],
            ..BASE
        },
        Case {
            name: "notInAllow at 50",
            beneficiary: "new:x",
            amount: "50.00",
            effect: hitl,
            approvals: 1,
            codes: &[BENEFICIARY_REQUIRES_APPROVAL],
            ..BASE
        },
        // HITL + MSIG: the larger approval count.
        Case {
            name: "hitl and msig",
            beneficiary: "new:x",
            amount: "350.00",
            effect: msig,
            approvals: 2,
            codes: &[
                AMOUNT_REQUIRES_MULTIPLE_APPROVALS,
                BENEFICIARY_REQUIRES_APPROVAL,
                "new_beneficiary_over_50",
            ],
            ..BASE
        },
    ];
    check(&p, &cases);
}

#[test]
fn details_are_concrete() {
    let p = CompiledPolicy::parse(BASE_POLICY, "base.yaml").unwrap();
    let e = run(
        &p,
        &Case {
            amount: "500.01",
            daily: "900",
            ..BASE
        },
    );
    assert_eq!(e.reasons[0].detail, "500.01 > 500.00 BRL");
    assert_eq!(
        e.reasons[1].detail,
        "daily so far 900.00 + 500.01 = 1400.01 > 1000.00 BRL"
    );
    let e = run(
        &p,
        &Case {
            beneficiary: "sanctioned:acme",
            ..BASE
        },
    );
    assert_eq!(
        e.reasons[0].detail,
        "beneficiary sanctioned:acme matches blocked pattern sanctioned:*"
    );
    let r = CompiledPolicy::parse(RULES_POLICY, "rules.yaml").unwrap();
    let e = run(
        &r,
        &Case {
            amount: "400.00",
            purpose: "WIRE",
            ..BASE
        },
    );
    assert_eq!(
        e.reasons[0].detail,
        "rule 3 matched: amount 400.00 >= 400.00 BRL; purpose WIRE"
    );
    assert_eq!(
        e.reasons[1].detail,
        "400.00 > 300.00 BRL: 2 approvals required"
    );
}

const REGO_POLICY: &str = r#"
name: table-rego
currency: BRL
caps: { perTxn: 500, daily: 1000, monthly: 5000 }
rego:
  query: data.t.finding
  module: |
    package t
    finding := {"effect": "REQUIRE_MSIG", "reason": "busy_day", "approvals": 3, "detail": "usage"} if {
      input.usage.dailySoFarMinor >= 50000
    }
    finding := {"effect": "MAYBE", "reason": "bad"} if { input.intent.category == "weird" }
    finding := {"effect": "ALLOW", "reason": "x"} if { input.intent.category == "conflict" }
    finding := {"effect": "DENY", "reason": "y"} if { input.intent.category == "conflict" }
"#;

#[test]
fn rego_row_12_and_fail_closed() {
    let p = CompiledPolicy::parse(REGO_POLICY, "rego.yaml").unwrap();
    check(
        &p,
        &[
            Case {
                name: "rego silent",
                daily: "499.99",
                ..BASE
            },
            Case {
                name: "rego finding from usage",
                daily: "500.00",
                effect: Effect::RequireMsig,
                approvals: 3,
                codes: &["busy_day"],
                ..BASE
            },
            Case {
                name: "rego bad result",
                category: "weird",
                effect: Effect::Deny,
                codes: &[codes::REGO_ERROR],
                ..BASE
            },
            Case {
                name: "rego eval error",
                category: "conflict",
                effect: Effect::Deny,
                codes: &[codes::REGO_ERROR],
                ..BASE
            },
        ],
    );
    let e = run(
        &p,
        &Case {
            category: "weird",
            ..BASE
        },
    );
    assert!(e.reasons[0].detail.contains("MAYBE"), "{e:?}");
}

#[test]
fn rego_reads_time_from_the_input_not_the_clock() {
    let set = PolicySet::load_dir(Path::new("policies")).unwrap();
    let p = set.get("night-guard-agent").unwrap();
    let i = intent_of(&Case {
        amount: "150.00",
        ..BASE
    });
    let kill = KillState::Off;
    let at = |s: &str| -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().into()
    };
    let usage = Usage::default();
    // 02:00Z = 23:00 in Sao Paulo (UTC-3): night.
    let night = evaluate(
        p,
        &EvalInput {
            intent: &i,
            usage,
            kill: &kill,
            accepted_at: at("2026-11-26T02:00:00Z"),
        },
    );
    assert_eq!(night.effect, Effect::RequireHitl, "{night:?}");
    assert_eq!(night.reasons[0].code, "night_payment_requires_review");
    assert_eq!(
        night.reasons[0].detail,
        "15000 BRL cents at 23:00 Sao Paulo time"
    );
    let day = evaluate(
        p,
        &EvalInput {
            intent: &i,
            usage,
            kill: &kill,
            accepted_at: at("2026-11-25T15:00:00Z"),
        },
    );
    assert_eq!(day.effect, Effect::Allow, "{day:?}");
}

#[test]
fn wall_clock_in_rego_is_refused() {
    let text = REGO_POLICY.replace("input.usage.dailySoFarMinor >= 50000", "time.now_ns() > 0");
    let err = CompiledPolicy::parse(&text, "clock.yaml").unwrap_err();
    assert_eq!(err.code, "rego_uses_wall_clock");
    let bad = REGO_POLICY.replace("package t", "package");
    assert_eq!(
        CompiledPolicy::parse(&bad, "bad.yaml").unwrap_err().code,
        "rego_compile_error"
    );
}

#[test]
fn unbound_agents_are_denied_and_bindings_choose() {
    let set = PolicySet::load_dir(Path::new("policies")).unwrap();
    assert_eq!(
        set.resolve("agent-invest-7", "acme-br")
            .unwrap()
            .identity
            .name,
        "aggressive-investment-agent"
    );
    assert_eq!(
        set.resolve("agent-1", "acme-br").unwrap().identity.name,
        "conservative-brazilian-agent"
    );
    assert_eq!(
        set.resolve("agent-1", "acme-mx").unwrap().identity.name,
        "conservative-brazilian-agent"
    );
    assert!(set.resolve("agent-1", "globex").is_none());
    let e = no_policy_bound(&intent_of(&BASE));
    assert_eq!(e.effect, Effect::Deny);
    assert_eq!(e.reasons[0].code, codes::NO_POLICY_BOUND);
    assert!(e.reasons[0].detail.contains("agent-42"));
}
