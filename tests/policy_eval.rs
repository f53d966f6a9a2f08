//! SPEC §2.1 decision table, row by row, with cap boundaries; plus the origin policies.

use rust_decimal::Decimal;
use spendguard::decision::{Effect, Evaluation, KillState, Usage};
use spendguard::intent::{SpendIntent, parse_intent};
use spendguard::policy::{CompiledPolicy, EvalInput, PolicySet, evaluate, no_policy_bound};
use std::path::Path;

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn at() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into()
}

fn intent(amount: &str, category: &str, beneficiary: &str, country: Option<&str>) -> SpendIntent {
    let mut v = serde_json::json!({
        "intentId": "0b8f7a52-2f7e-4a4e-9d51-3c7e1f0a9b11", "agentId": "agent-42", "entityId": "acme-br",
        "amount": amount, "currency": "BRL", "category": category,
        "beneficiary": {"id": beneficiary}, "purpose": "PIX"
    });
    if let Some(c) = country {
        v["beneficiary"]["country"] = c.into();
    }
    parse_intent(v.to_string().as_bytes()).unwrap()
}

fn eval_with(p: &CompiledPolicy, i: &SpendIntent, daily: &str, monthly: &str) -> Evaluation {
    let kill = KillState::Off;
    evaluate(
        p,
        &EvalInput {
            intent: i,
            usage: Usage {
                daily_so_far: dec(daily),
                monthly_so_far: dec(monthly),
            },
            kill: &kill,
            accepted_at: at(),
        },
    )
}

fn codes(e: &Evaluation) -> Vec<&str> {
    e.reasons.iter().map(|f| f.code.as_ref()).collect()
}

fn conservative() -> CompiledPolicy {
    CompiledPolicy::parse(
        &std::fs::read_to_string("policies/conservative-brazilian-agent.json").unwrap(),
        "c.json",
    )
    .unwrap()
}

#[test]
fn smoke_conservative_allows_small_utility_payment() {
    let p = conservative();
    let e = eval_with(
        &p,
        &intent("250.00", "utility", "utility:light_company", Some("BR")),
        "0",
        "0",
    );
    assert_eq!(e.effect, Effect::Allow, "{e:?}");
    assert_eq!(codes(&e), ["policy_compliant_all_checks_passed"]);
    let e = eval_with(
        &p,
        &intent("600.00", "crypto", "sanctioned:x", Some("US")),
        "900",
        "0",
    );
    assert_eq!(e.effect, Effect::Deny);
    println!("{e:#?}");
}

#[test]
fn smoke_load_dir() {
    let set = PolicySet::load_dir(Path::new("policies")).unwrap();
    assert_eq!(
        set.resolve("agent-invest-1", "x").unwrap().identity.name,
        "aggressive-investment-agent"
    );
    assert!(set.resolve("agent-1", "other").is_none());
    let i = intent("1.00", "utility", "x", None);
    assert_eq!(no_policy_bound(&i).effect, Effect::Deny);
}
