//! Each lint code: one policy that triggers it and a close one that does not.

use spendguard::policy::CompiledPolicy;
use spendguard::policy::lint::{LINT_CODES, lint};

const HEAD: &str = "name: l\nversion: \"1\"\ncurrency: BRL\n";
const CAPS: &str = "caps: {perTxn: 500, daily: 1000, monthly: 5000}\n";

fn codes(body: &str) -> Vec<&'static str> {
    let p = CompiledPolicy::parse(&format!("{HEAD}{body}"), "lint.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    lint(p.spec()).into_iter().map(|l| l.code).collect()
}

fn case(code: &str, triggers: &str, clean: &str) {
    assert!(
        codes(triggers).contains(&code),
        "{code} not raised by:\n{triggers}\n got {:?}",
        codes(triggers)
    );
    assert!(
        !codes(clean).contains(&code),
        "{code} raised by clean policy:\n{clean}"
    );
}

#[test]
fn every_lint_triggers_and_has_a_clean_twin() {
    case(
        "daily_below_per_txn",
        "caps: {perTxn: 500, daily: 499.99, monthly: 5000}\n",
        "caps: {perTxn: 500, daily: 500, monthly: 5000}\n",
    );
    case(
        "monthly_below_daily",
        "caps: {perTxn: 500, daily: 1000, monthly: 999}\n",
        CAPS,
    );
    case(
        "msig_threshold_above_per_txn",
        &format!("{CAPS}msig: {{threshold: {{higherThan: 500, approvals: 2}}}}\n"),
        &format!("{CAPS}msig: {{threshold: {{higherThan: 499.99, approvals: 2}}}}\n"),
    );
    case(
        "pattern_allowed_and_blocked",
        &format!(
            "{CAPS}allowLists: {{beneficiaries: [\"bank:itau\"]}}\nblockLists: {{beneficiaries: [\"bank:*\"]}}\n"
        ),
        &format!(
            "{CAPS}allowLists: {{beneficiaries: [\"bank:itau\"]}}\nblockLists: {{beneficiaries: [\"sanctioned:*\"]}}\n"
        ),
    );
    case(
        "unknown_category",
        &format!("{CAPS}blockLists: {{categories: [gamblng]}}\n"),
        &format!("{CAPS}blockLists: {{categories: [gambling, \"adult*\"]}}\n"),
    );
    case(
        "unknown_country",
        &format!("{CAPS}allowLists: {{countries: [BR, XK]}}\n"),
        &format!("{CAPS}allowLists: {{countries: [BR, US]}}\n"),
    );
    case(
        "rule_unreachable",
        &format!(
            "{CAPS}rules:\n  - if: {{amountGt: 500}}\n    then: {{effect: REQUIRE_HITL, reason: r}}\n"
        ),
        &format!(
            "{CAPS}rules:\n  - if: {{amountGt: 499.99}}\n    then: {{effect: REQUIRE_HITL, reason: r}}\n"
        ),
    );
    case(
        "rule_unreachable",
        &format!(
            "{CAPS}rules:\n  - if: {{beneficiaryNotInAllow: true}}\n    then: {{effect: REQUIRE_HITL, reason: r}}\n"
        ),
        &format!(
            "{CAPS}allowLists: {{beneficiaries: [a]}}\nrules:\n  - if: {{beneficiaryNotInAllow: true}}\n    then: {{effect: REQUIRE_HITL, reason: r}}\n"
        ),
    );
    case(
        "rule_shadowed",
        &format!(
            "{CAPS}rules:\n  - if: {{categoryIn: [travel, food]}}\n    then: {{effect: DENY, reason: a}}\n  - if: {{categoryIn: [travel], amountGt: 100}}\n    then: {{effect: REQUIRE_HITL, reason: b}}\n"
        ),
        &format!(
            "{CAPS}rules:\n  - if: {{categoryIn: [travel, food], purposeIn: [WIRE]}}\n    then: {{effect: DENY, reason: a}}\n  - if: {{categoryIn: [travel], amountGt: 100}}\n    then: {{effect: REQUIRE_HITL, reason: b}}\n"
        ),
    );
    case(
        "rule_shadowed",
        &format!(
            "{CAPS}rules:\n  - if: {{amountGt: 100}}\n    then: {{effect: DENY, reason: a}}\n  - if: {{amountGte: 200}}\n    then: {{effect: DENY, reason: b}}\n"
        ),
        &format!(
            "{CAPS}rules:\n  - if: {{amountGt: 200}}\n    then: {{effect: DENY, reason: a}}\n  - if: {{amountGte: 200}}\n    then: {{effect: DENY, reason: b}}\n"
        ),
    );
    case(
        "allow_rule_relaxes_nothing",
        &format!(
            "{CAPS}rules:\n  - if: {{categoryIn: [investment]}}\n    then: {{effect: ALLOW, reason: ok}}\n"
        ),
        &format!(
            "{CAPS}rules:\n  - if: {{categoryIn: [investment]}}\n    then: {{effect: ALLOW, reason: ok}}\n  - if: {{amountGt: 100}}\n    then: {{effect: REQUIRE_HITL, reason: review}}\n"
        ),
    );
    case(
        "rule_order_can_lower_severity",
        &format!(
            "{CAPS}rules:\n  - if: {{amountGt: 100}}\n    then: {{effect: REQUIRE_HITL, reason: a}}\n  - if: {{categoryIn: [travel]}}\n    then: {{effect: DENY, reason: b}}\n"
        ),
        &format!(
            "{CAPS}rules:\n  - if: {{categoryIn: [travel]}}\n    then: {{effect: DENY, reason: b}}\n  - if: {{amountGt: 100}}\n    then: {{effect: REQUIRE_HITL, reason: a}}\n"
        ),
    );
    let unversioned =
        CompiledPolicy::parse(&format!("name: l\ncurrency: BRL\n{CAPS}"), "v.yaml").unwrap();
    assert!(
        lint(unversioned.spec())
            .iter()
            .any(|l| l.code == "missing_version")
    );
    assert!(
        codes(CAPS).is_empty(),
        "a plain policy has no lints: {:?}",
        codes(CAPS)
    );
}

#[test]
fn the_lint_code_table_is_complete() {
    // Every code in the table is exercised above (this list mirrors the calls).
    let exercised = [
        "rule_shadowed",
        "rule_unreachable",
        "rule_order_can_lower_severity",
        "daily_below_per_txn",
        "monthly_below_daily",
        "pattern_allowed_and_blocked",
        "msig_threshold_above_per_txn",
        "allow_rule_relaxes_nothing",
        "unknown_category",
        "unknown_country",
        "missing_version",
    ];
    let table: Vec<&str> = LINT_CODES.iter().map(|(c, _)| *c).collect();
    assert_eq!(table.len(), exercised.len());
    for c in exercised {
        assert!(table.contains(&c), "{c}");
    }
}
