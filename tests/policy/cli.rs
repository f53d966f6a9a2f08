//! Runs the built binary on `policies/` and `examples/`.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_spendguard");
const AT: &str = "2026-11-25T15:00:00Z";

fn run(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command refused on its arguments exits before reading stdin: a closed pipe is
    // then the expected outcome of writing, not a test failure.
    if let Err(e) = input.write_all(stdin.unwrap_or("").as_bytes()) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn evaluate_examples_covers_every_outcome_and_reports_bad_lines() {
    let (code, out, err) = run(
        &[
            "evaluate",
            "--policies",
            "policies",
            "--input",
            "examples/intents.jsonl",
            "--at",
            AT,
        ],
        None,
    );
    assert_eq!(code, 2, "{err}");
    let v = lines(&out);
    let input_lines = std::fs::read_to_string("examples/intents.jsonl")
        .unwrap()
        .lines()
        .count();
    assert_eq!(v.len(), input_lines, "one output line per input line");
    let effects: std::collections::BTreeSet<&str> =
        v.iter().filter_map(|d| d["effect"].as_str()).collect();
    assert_eq!(
        effects.into_iter().collect::<Vec<_>>(),
        ["ALLOW", "DENY", "REQUIRE_HITL", "REQUIRE_MSIG"]
    );
    let first = &v[0];
    assert_eq!(first["policy"]["name"], "conservative-brazilian-agent");
    assert_eq!(first["policy"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(first["usage"]["window"]["day"], "2026-11-25");
    assert_eq!(first["usage"]["window"]["tz"], "America/Sao_Paulo");
    assert_eq!(first["decidedAt"], "2026-11-25T15:00:00Z");
    assert!(first.get("ledgerSeq").is_none());
    let unbound = v.iter().find(|d| d["agentId"] == "agent-rogue-01").unwrap();
    assert_eq!(unbound["reasons"][0]["code"], "no_policy_bound");
    let errors: Vec<_> = v.iter().filter(|d| d.get("error").is_some()).collect();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["line"], 15);
    assert_eq!(errors[0]["error"]["code"], "non_positive_amount");
    assert_eq!(errors[1]["error"]["code"], "invalid_json");
}

#[test]
fn evaluate_single_policy_from_stdin_with_usage_and_kill_switch() {
    let intent = r#"{"intentId":"3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b90","agentId":"agent-ops-01","entityId":"acme-br","amount":"250.00","currency":"BRL","category":"utility","beneficiary":{"id":"utility:light_company","country":"BR"},"purpose":"PIX"}"#;
    let policy = "policies/conservative-brazilian-agent.json";
    let (code, out, _) = run(&["evaluate", "--policy", policy, "--at", AT], Some(intent));
    assert_eq!(code, 0);
    assert_eq!(lines(&out)[0]["effect"], "ALLOW");
    let (code, out, _) = run(
        &[
            "evaluate",
            "--policy",
            policy,
            "--at",
            AT,
            "--daily-so-far",
            "750.01",
            "--monthly-so-far",
            "800",
        ],
        Some(intent),
    );
    assert_eq!(code, 0);
    let d = &lines(&out)[0];
    assert_eq!(d["effect"], "REQUIRE_HITL");
    assert_eq!(d["reasons"][0]["code"], "would_exceed_daily_limit");
    assert_eq!(d["usage"]["dailySoFar"], "750.01");
    let (code, out, _) = run(
        &["evaluate", "--policy", policy, "--at", AT, "--kill-switch"],
        Some(&format!("{intent}\n\n{intent}\n")),
    );
    assert_eq!(code, 0);
    let v = lines(&out);
    assert_eq!(v.len(), 2, "blank lines are skipped");
    assert!(
        v.iter()
            .all(|d| d["reasons"][0]["code"] == "kill_switch_activated"
                && d["reasons"].as_array().unwrap().len() == 1)
    );
    let (code, _, err) = run(
        &["evaluate", "--policy", policy, "--daily-so-far=-1"],
        Some(intent),
    );
    assert_eq!(code, 1);
    assert!(err.contains("daily-so-far"), "{err}");
}

#[test]
fn check_passes_the_shipped_policies_with_warnings_only() {
    let (code, out, _) = run(&["policy", "check", "policies"], None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 error(s)"), "{out}");
    let (code, out, _) = run(&["policy", "check", "--format", "json", "policies"], None);
    assert_eq!(code, 0);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["errors"], 0);
    assert_eq!(report["files"], 4);
}

#[test]
fn check_reports_errors_with_location_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "name: bad\ncurrency: BRL\ncaps:\n  perTxn: 500\n  daily: 1000\n  montly: 5000\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("lint.json"),
        r#"{"name":"lint","version":"1","currency":"BRL","caps":{"perTxn":500,"daily":400,"monthly":5000},
"allowLists":{"beneficiaries":["x:1"],"countries":["BR","XX"]},"blockLists":{"beneficiaries":["x:*"]}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("bindings.yaml"), "default: nowhere\n").unwrap();
    let (code, out, _) = run(
        &[
            "policy",
            "check",
            "--format",
            "json",
            dir.path().to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1, "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diags = report["diagnostics"].as_array().unwrap();
    let find = |c: &str| {
        diags
            .iter()
            .find(|d| d["code"] == c)
            .unwrap_or_else(|| panic!("{c} missing in {out}"))
    };
    let unknown = find("unknown_field");
    assert!(unknown["file"].as_str().unwrap().ends_with("bad.yaml"));
    assert_eq!(unknown["line"], 6);
    assert!(unknown["hint"].as_str().unwrap().contains("schema"));
    assert_eq!(find("daily_below_per_txn")["severity"], "warning");
    assert_eq!(find("pattern_allowed_and_blocked")["severity"], "error");
    assert_eq!(find("unknown_country")["severity"], "error");
    assert_eq!(find("unknown_policy_in_binding")["severity"], "error");
    let (code, out, _) = run(
        &[
            "policy",
            "check",
            dir.path().join("bad.yaml").to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(out.contains("bad.yaml:6:"), "{out}");
}

#[test]
fn schema_is_generated_and_describes_the_language() {
    let (code, out, _) = run(&["policy", "schema"], None);
    assert_eq!(code, 0);
    let schema: serde_json::Value = serde_json::from_str(&out).unwrap();
    let text = schema.to_string();
    for field in [
        "perTxn",
        "approvalTtl",
        "beneficiaryNotInAllow",
        "countryNotIn",
        "apiVersion",
        "policy.orchestra.v1",
        "REQUIRE_MSIG",
    ] {
        assert!(text.contains(field), "schema lacks {field}");
    }
    // The lifecycle fields (SPEC §11) and limits (SPEC §12) are part of the language.
    let defs = &schema["$defs"];
    let spec = &defs["PolicySpec"]["properties"];
    for field in ["authorizationTtl", "refunds", "limits"] {
        assert!(
            spec.get(field).is_some(),
            "PolicySpec lacks {field}: {spec}"
        );
    }
    assert_eq!(spec["limits"]["items"]["$ref"], "#/$defs/LimitSpec");
    let names = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        names(&defs["LimitSpec"]["properties"]),
        [
            "amount",
            "approvals",
            "count",
            "effect",
            "filter",
            "name",
            "scope",
            "window"
        ]
    );
    assert_eq!(defs["LimitSpec"]["additionalProperties"], false);
    let limit = &defs["LimitSpec"]["properties"];
    assert_eq!(limit["count"]["minimum"], 1, "{limit}");
    assert_eq!(
        (
            &limit["approvals"]["minimum"],
            &limit["approvals"]["maximum"]
        ),
        (&serde_json::json!(1), &serde_json::json!(32))
    );
    assert_eq!(limit["name"]["minLength"], 1);
    // Exactly one of `calendar` / `trailing`.
    assert_eq!(defs["LimitWindow"]["minProperties"], 1);
    assert_eq!(defs["LimitWindow"]["maxProperties"], 1);
    assert_eq!(
        names(&defs["LimitWindow"]["properties"]),
        ["calendar", "trailing"]
    );
    assert_eq!(
        names(&defs["LimitFilter"]["properties"]),
        ["beneficiaryIn", "categoryIn", "countryIn", "purposeIn"]
    );
    let calendar = defs["CalendarWindow"].to_string();
    for w in ["day", "week", "month", "year", "all_time"] {
        assert!(calendar.contains(&format!("\"{w}\"")), "{calendar}");
    }
    assert!(defs["TrailingWindow"].to_string().contains("366d"));
    let scope = defs["LimitScope"].to_string();
    assert!(
        scope.contains("\"agent\"") && scope.contains("\"entity\""),
        "{scope}"
    );
    let refunds = defs["RefundMode"].to_string();
    assert!(
        refunds.contains("\"restore\"") && refunds.contains("\"ignore\""),
        "{refunds}"
    );
    assert_eq!(defs["AuthorizationTtl"]["default"], "7d");
}

#[test]
fn check_prints_limit_lints_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("limits.yaml");
    std::fs::write(
        &file,
        "name: lim\nversion: \"1\"\ncurrency: BRL\ncaps: {perTxn: 500, daily: 1000, monthly: 5000}\nlimits:\n  - name: burst\n    window: {trailing: 10m}\n    count: 5\n  - name: burst\n    window: {calendar: day}\n    count: 0\n",
    )
    .unwrap();
    let (code, out, _) = run(&["policy", "check", file.to_str().unwrap()], None);
    assert_eq!(code, 1, "{out}");
    // The second limit's `name` is on line 9, column 5.
    assert!(
        out.contains("limits.yaml:9:5: error[duplicate_limit_name]"),
        "{out}"
    );
    assert!(
        out.contains("limits.yaml:9:5: error[count_limit_zero]"),
        "{out}"
    );
}

#[test]
fn policy_test_passes_on_the_shipped_policies_and_writes_junit() {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let (code, out, err) = run(
        &[
            "policy",
            "test",
            "policies",
            "--junit",
            junit.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(" failed, 0 error(s)") && out.contains(", 0 failed,"),
        "{out}"
    );
    // Every example policy has tests of its own.
    for p in [
        "conservative-brazilian-agent",
        "aggressive-investment-agent",
        "night-guard-agent",
    ] {
        assert!(
            std::path::Path::new(&format!("policies/tests/{p}.test.yaml")).exists(),
            "{p} has no test file"
        );
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites "),
        "{xml}"
    );
    assert!(xml.contains("failures=\"0\" errors=\"0\""), "{xml}");
    assert!(xml.contains("<testcase classname=\"policies/tests/night-guard-agent.test.yaml\" name=\"a sizeable payment at night needs a human\"/>"), "{xml}");
}

#[test]
fn policy_test_fails_with_a_readable_diff() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "policies/conservative-brazilian-agent.json",
        dir.path().join("conservative-brazilian-agent.json"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("tests/broken.test.yaml"),
        r#"
policy: conservative-brazilian-agent
cases:
  - name: someone expects the cap to be exclusive
    at: 2026-11-25T15:00:00Z
    intent:
      amount: "600.00"
      category: utility
      purpose: PIX
      beneficiary: { id: "utility:light_company", country: BR }
    expect: { effect: REQUIRE_MSIG, codes: [high_value_requires_dual_approval, amount_requires_multiple_approvals] }
  - name: passes
    at: 2026-11-25T15:00:00Z
    intent: { amount: "10.00", category: utility, purpose: PIX, beneficiary: { id: "bank:itau", country: BR } }
    expect: { effect: ALLOW }
"#,
    )
    .unwrap();
    let junit = dir.path().join("junit.xml");
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = run(
        &["policy", "test", d, "--junit", junit.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("FAIL  ")
            && out.contains("broken.test.yaml: someone expects the cap to be exclusive"),
        "{out}"
    );
    assert!(
        out.contains("effect: expected REQUIRE_MSIG, got DENY"),
        "{out}"
    );
    assert!(
        out.contains("+ exceeds_per_transaction_limit (not expected)"),
        "{out}"
    );
    assert!(
        out.contains("DENY exceeds_per_transaction_limit: 600.00 > 500.00 BRL"),
        "{out}"
    );
    assert!(
        out.contains("2 test(s) in 1 file(s): 1 passed, 1 failed, 0 error(s)"),
        "{out}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("tests=\"2\" failures=\"1\""), "{xml}");
    assert!(
        xml.contains("<failure message=\"effect: expected REQUIRE_MSIG, got DENY\">"),
        "{xml}"
    );

    // A test file that is not the format is an error (exit 1), with its position.
    std::fs::write(
        dir.path().join("tests/broken.test.yaml"),
        "cases:\n  - name: x\n    when: 1\n",
    )
    .unwrap();
    let (code, out, _) = run(&["policy", "test", d], None);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("ERROR ") && out.contains("unknown field `when`"),
        "{out}"
    );
}
