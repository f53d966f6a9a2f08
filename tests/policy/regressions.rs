//! One test per defect of the origin sketch (SPEC §9): the sketch's wrong answer is not ours.

use spendguard::decision::{Effect, Evaluation, KillState, Usage};
use spendguard::intent::{SpendIntent, parse_intent};
use spendguard::policy::{CompiledPolicy, EvalInput, PolicySet, evaluate};
use std::path::Path;

fn policies() -> PolicySet {
    PolicySet::load_dir(Path::new("policies")).unwrap()
}

fn intent(
    amount: &str,
    currency: &str,
    category: &str,
    beneficiary: &str,
    country: &str,
) -> SpendIntent {
    let v = serde_json::json!({
        "intentId": "5d1c2b8e-7a43-4f0e-8e2a-96a0c4f3d7e2", "agentId": "agent-7", "entityId": "acme-br",
        "amount": amount, "currency": currency, "category": category,
        "beneficiary": {"id": beneficiary, "country": country}, "purpose": "PIX"
    });
    parse_intent(v.to_string().as_bytes()).unwrap()
}

fn eval(p: &CompiledPolicy, i: &SpendIntent, daily: &str) -> Evaluation {
    let usage = Usage {
        daily_so_far: daily.parse().unwrap(),
        monthly_so_far: daily.parse().unwrap(),
    };
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into();
    evaluate(
        p,
        &EvalInput {
            intent: i,
            usage,
            kill: &KillState::Off,
            accepted_at: at,
        },
    )
}

fn codes(e: &Evaluation) -> Vec<&str> {
    e.reasons.iter().map(|f| f.code.as_ref()).collect()
}

/// Sketch: daily/monthly returned HITL before blocked categories were checked.
#[test]
fn blocked_category_over_daily_cap_is_denied_not_sent_to_a_human() {
    let set = policies();
    let p = set.get("conservative-brazilian-agent").unwrap();
    let e = eval(
        p,
        &intent("200.00", "BRL", "gambling", "bank:itau", "BR"),
        "950.00",
    );
    assert_eq!(e.effect, Effect::Deny, "{e:?}");
    assert_eq!(
        codes(&e),
        [
            "category_blocked",
            "prohibited_category_high_risk",
            "would_exceed_daily_limit"
        ]
    );
}

/// Sketch: a `categoryIn` rule always denied, so the origin's own ALLOW rule denied investments.
#[test]
fn allow_rule_on_category_is_not_turned_into_deny() {
    let set = policies();
    let p = set.get("aggressive-investment-agent").unwrap();
    let e = eval(
        p,
        &intent(
            "800.00",
            "BRL",
            "investment",
            "investment:tesouro_direto",
            "BR",
        ),
        "0",
    );
    assert_eq!(e.effect, Effect::Allow, "{e:?}");
    assert_eq!(
        codes(&e),
        [
            "investment_category_approved",
            "policy_compliant_all_checks_passed"
        ]
    );
}

/// Sketch: `beneficiaryNotInAllow` compared against a formatted string and never matched.
#[test]
fn beneficiary_not_in_allow_rule_matches() {
    let set = policies();
    let p = set.get("conservative-brazilian-agent").unwrap();
    let e = eval(
        p,
        &intent("120.00", "BRL", "utility", "utility:new_gas_company", "BR"),
        "0",
    );
    assert_eq!(e.effect, Effect::RequireHitl);
    assert_eq!(
        codes(&e),
        [
            "beneficiary_requires_approval",
            "new_beneficiary_requires_human_verification"
        ]
    );
}

/// Sketch: block lists hold globs but were compared with exact equality.
#[test]
fn glob_block_list_entries_match() {
    let set = policies();
    let p = set.get("conservative-brazilian-agent").unwrap();
    for b in ["sanctioned:acme_ltda", "high_risk:offshore_7"] {
        let e = eval(p, &intent("10.00", "BRL", "utility", b, "BR"), "0");
        assert_eq!(e.effect, Effect::Deny, "{b}: {e:?}");
        assert_eq!(e.reasons[0].code, "beneficiary_blocked");
    }
}

/// Sketch: currency and `allowLists.countries` were never checked, so caps could be
/// bypassed by paying in another currency or country.
#[test]
fn currency_and_country_are_checked() {
    let set = policies();
    let p = set.get("conservative-brazilian-agent").unwrap();
    let e = eval(
        p,
        &intent("100.00", "USD", "utility", "bank:itau", "BR"),
        "0",
    );
    assert_eq!(e.effect, Effect::Deny);
    assert_eq!(codes(&e), ["currency_not_supported"]);
    let e = eval(
        p,
        &intent("100.00", "BRL", "utility", "bank:itau", "AR"),
        "0",
    );
    assert_eq!(e.effect, Effect::Deny);
    assert_eq!(codes(&e), ["country_not_allowed"]);
}

/// Sketch: the kill switch's `activatedAt` was "now" on every read. Here the kill switch is
/// an input to a pure function: the same (state, intent, time) gives the same decision,
/// whenever it is computed, and the explanation names the scope instead of a read time.
/// (Propagation timing is measured by the service's benchmark, not here.)
#[test]
fn kill_switch_decision_is_a_pure_function_of_its_inputs() {
    let set = policies();
    let p = set.get("conservative-brazilian-agent").unwrap();
    let i = intent("10.00", "BRL", "utility", "bank:itau", "BR");
    let kill = KillState::On {
        scope: "entity:acme-br".into(),
    };
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into();
    let input = EvalInput {
        intent: &i,
        usage: Usage::default(),
        kill: &kill,
        accepted_at: at,
    };
    let first = evaluate(p, &input);
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(evaluate(p, &input), first);
    assert_eq!(codes(&first), ["kill_switch_activated"]);
    assert!(first.reasons[0].detail.contains("entity:acme-br"));
}
