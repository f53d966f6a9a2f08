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
        "duplicate_limit_name",
        "count_limit_zero",
        "limit_filter_matches_nothing",
        "limit_unreachable",
        "limit_redundant_with_caps",
    ];
    let table: Vec<&str> = LINT_CODES.iter().map(|(c, _)| *c).collect();
    assert_eq!(table.len(), exercised.len());
    for c in exercised {
        assert!(table.contains(&c), "{c}");
    }
}

/// `limits:` with the given entries (YAML flow mappings, one per line).
fn limits(entries: &[&str]) -> String {
    let mut s = format!("{CAPS}limits:\n");
    for e in entries {
        s.push_str(&format!("  - {e}\n"));
    }
    s
}

#[test]
fn limit_lints_trigger_and_have_clean_twins() {
    case(
        "duplicate_limit_name",
        &limits(&[
            "{name: a, window: {calendar: week}, amount: 900}",
            "{name: a, window: {trailing: 1h}, count: 5}",
        ]),
        &limits(&[
            "{name: a, window: {calendar: week}, amount: 900}",
            "{name: b, window: {trailing: 1h}, count: 5}",
        ]),
    );
    case(
        "count_limit_zero",
        &limits(&["{name: none, window: {calendar: day}, count: 0}"]),
        &limits(&["{name: one, window: {calendar: day}, count: 1}"]),
    );
    for empty in [
        "{categoryIn: []}",
        "{beneficiaryIn: []}",
        "{countryIn: []}",
        "{purposeIn: []}",
    ] {
        case(
            "limit_filter_matches_nothing",
            &limits(&[&format!(
                "{{name: f, window: {{calendar: week}}, count: 3, filter: {empty}}}"
            )]),
            &limits(&[
                "{name: f, window: {calendar: week}, count: 3, filter: {categoryIn: [travel]}}",
            ]),
        );
    }
    // day 600 inside week 500: whenever the day limit is exceeded the week limit is too.
    case(
        "limit_unreachable",
        &limits(&[
            "{name: d, window: {calendar: day}, amount: 600, effect: DENY}",
            "{name: w, window: {calendar: week}, amount: 500, effect: DENY}",
        ]),
        &limits(&[
            "{name: d, window: {calendar: day}, amount: 400, effect: DENY}",
            "{name: w, window: {calendar: week}, amount: 500, effect: DENY}",
        ]),
    );
    // Trailing by length, counts too.
    case(
        "limit_unreachable",
        &limits(&[
            "{name: t1, window: {trailing: 1h}, count: 10}",
            "{name: t24, window: {trailing: 24h}, count: 10}",
        ]),
        &limits(&[
            "{name: t1, window: {trailing: 1h}, count: 9}",
            "{name: t24, window: {trailing: 24h}, count: 10}",
        ]),
    );
    // A stricter effect on the narrower limit still matters.
    case(
        "limit_unreachable",
        &limits(&[
            "{name: d, window: {calendar: day}, amount: 600}",
            "{name: m, window: {calendar: month}, amount: 500, effect: REQUIRE_MSIG, approvals: 2}",
        ]),
        &limits(&[
            "{name: d, window: {calendar: day}, amount: 600, effect: DENY}",
            "{name: m, window: {calendar: month}, amount: 500, effect: REQUIRE_MSIG, approvals: 2}",
        ]),
    );
    // Different filter or scope: not compared.
    case(
        "limit_unreachable",
        &limits(&[
            "{name: d, window: {calendar: day}, amount: 600, scope: entity, filter: {categoryIn: [travel]}}",
            "{name: y, window: {calendar: year}, amount: 500, scope: entity, filter: {categoryIn: [travel]}}",
        ]),
        &limits(&[
            "{name: d, window: {calendar: day}, amount: 600, scope: entity, filter: {categoryIn: [travel]}}",
            "{name: y, window: {calendar: year}, amount: 500, scope: entity, filter: {categoryIn: [food]}}",
        ]),
    );
    // A filter whose payments are always denied by the lists.
    case(
        "limit_unreachable",
        &format!(
            "{}blockLists: {{categories: [gambling]}}\n",
            limits(&[
                "{name: g, window: {calendar: week}, count: 2, filter: {categoryIn: [gambling]}}"
            ])
        ),
        &format!(
            "{}blockLists: {{categories: [gambling]}}\n",
            limits(&[
                "{name: g, window: {calendar: week}, count: 2, filter: {categoryIn: [gambling, travel]}}"
            ])
        ),
    );
    case(
        "limit_redundant_with_caps",
        &limits(&["{name: d, window: {calendar: day}, amount: 1000}"]),
        &limits(&["{name: d, window: {calendar: day}, amount: 999.99}"]),
    );
    case(
        "limit_redundant_with_caps",
        &limits(&[
            "{name: m, window: {calendar: month}, amount: 6000, filter: {categoryIn: [travel]}}",
        ]),
        &limits(&["{name: m, window: {calendar: month}, amount: 6000, effect: DENY}"]),
    );
    // Entity scope sums every agent of the entity: the agent's cap does not cover it.
    assert!(
        !codes(&limits(&[
            "{name: e, window: {calendar: day}, amount: 1000, scope: entity}"
        ]))
        .contains(&"limit_redundant_with_caps")
    );
}

#[test]
fn windows_that_are_not_certainly_nested_are_not_compared() {
    // An ISO week can straddle two months (and two years): a week limit above a month
    // limit can still fire alone. Trailing and calendar windows are not comparable either
    // (a day can last 25 hours), except that everything lies in all_time.
    for (narrow, wide) in [
        ("{calendar: week}", "{calendar: month}"),
        ("{calendar: week}", "{calendar: year}"),
        ("{calendar: day}", "{trailing: 24h}"),
        ("{trailing: 1h}", "{calendar: day}"),
        ("{calendar: month}", "{calendar: week}"),
        ("{trailing: 2d}", "{trailing: 1d}"),
    ] {
        let body = limits(&[
            &format!("{{name: n, window: {narrow}, amount: 600, effect: DENY}}"),
            &format!("{{name: w, window: {wide}, amount: 500, effect: DENY}}"),
        ]);
        assert!(
            !codes(&body).contains(&"limit_unreachable"),
            "{narrow} vs {wide}: {:?}",
            codes(&body)
        );
    }
    for (narrow, wide) in [
        ("{calendar: day}", "{calendar: year}"),
        ("{calendar: month}", "{calendar: year}"),
        ("{calendar: week}", "{calendar: all_time}"),
        ("{trailing: 366d}", "{calendar: all_time}"),
        ("{trailing: 10s}", "{trailing: 10s}"),
    ] {
        let body = limits(&[
            &format!("{{name: n, window: {narrow}, amount: 600, effect: DENY}}"),
            &format!("{{name: w, window: {wide}, amount: 500, effect: DENY}}"),
        ]);
        assert!(
            codes(&body).contains(&"limit_unreachable"),
            "{narrow} vs {wide}"
        );
    }
    // Two identical limits: only the second is reported.
    let p = CompiledPolicy::parse(
        &format!(
            "{HEAD}{}",
            limits(&[
                "{name: a, window: {calendar: week}, count: 3}",
                "{name: b, window: {calendar: week}, count: 3}",
            ])
        ),
        "twins.yaml",
    )
    .unwrap();
    let found: Vec<_> = lint(p.spec())
        .into_iter()
        .filter(|l| l.code == "limit_unreachable")
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].message.starts_with("limit \"b\""), "{found:?}");
}

#[test]
fn limit_lints_point_at_the_limit() {
    let text = format!(
        "{HEAD}{}",
        limits(&[
            "{name: a, window: {calendar: week}, amount: 900}",
            "{name: a, window: {trailing: 1h}, count: 0}",
        ])
    );
    let p = CompiledPolicy::parse(&text, "at.yaml").unwrap();
    let l = lint(p.spec());
    let dup = l.iter().find(|l| l.code == "duplicate_limit_name").unwrap();
    let keys: Vec<&str> = dup.keys.iter().map(String::as_str).collect();
    // HEAD is 3 lines, CAPS 1, `limits:` 1: the second limit is on line 7.
    assert_eq!(spendguard::policy::error::locate(&text, &keys), (7, 6));
    assert!(dup.message.contains("\"a\""), "{}", dup.message);
    let zero = l.iter().find(|l| l.code == "count_limit_zero").unwrap();
    assert!(zero.message.contains("count 0"), "{}", zero.message);
}

#[test]
fn trailing_windows_out_of_range_are_parse_errors_with_a_clear_message() {
    // `t.yaml:7:13: error[invalid_field]: limits[0].window: trailing window "5s" is out of
    // range: 10s … 366d`: file, line and column of the window, the field's path, the bounds.
    for len in ["5s", "367d", "9s"] {
        let text = format!(
            "{HEAD}{CAPS}limits:\n  - name: t\n    window: {{trailing: {len}}}\n    count: 3\n"
        );
        let e = CompiledPolicy::parse(&text, "t.yaml").unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains(&format!(
                "trailing window \"{len}\" is out of range: 10s … 366d"
            )),
            "{shown}"
        );
        assert_eq!((e.line, e.code), (7, "invalid_field"), "{shown}");
        assert!(shown.starts_with("t.yaml:7:"), "{shown}");
        assert!(shown.contains("limits[0].window"), "{shown}");
    }
    let e = CompiledPolicy::parse(
        &format!("{HEAD}{CAPS}limits:\n  - {{name: t, window: {{trailing: 24}}, count: 3}}\n"),
        "t.yaml",
    )
    .unwrap_err();
    assert!(e.to_string().contains("ends without a unit"), "{e}");
    for ok in ["10s", "366d", "24h"] {
        CompiledPolicy::parse(
            &format!(
                "{HEAD}{CAPS}limits:\n  - {{name: t, window: {{trailing: {ok}}}, count: 3}}\n"
            ),
            "t.yaml",
        )
        .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
}
