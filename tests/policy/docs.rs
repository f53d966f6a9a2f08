//! The examples in docs/policy-language.md are real: every fenced `policy` block compiles
//! and lints clean of errors, every `bindings` block parses.

use spendguard::policy::lint::{Severity, lint};
use spendguard::policy::{Bindings, CompiledPolicy};

fn blocks(doc: &str, tag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in doc.lines() {
        match &mut cur {
            None if line.starts_with("```") && line.ends_with(&format!(" {tag}")) => {
                cur = Some(String::new())
            }
            Some(b) if line.starts_with("```") => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn documented_policies_parse_and_have_no_lint_errors() {
    let doc = std::fs::read_to_string("docs/policy-language.md").unwrap();
    let policies = blocks(&doc, "policy");
    assert!(
        policies.len() >= 3,
        "expected the documented examples, found {}",
        policies.len()
    );
    for (k, text) in policies.iter().enumerate() {
        let p = CompiledPolicy::parse(text, &format!("doc block {k}"))
            .unwrap_or_else(|e| panic!("{e}"));
        let errors: Vec<_> = lint(p.spec())
            .into_iter()
            .filter(|l| l.severity == Severity::Error)
            .collect();
        assert!(errors.is_empty(), "doc block {k}: {errors:?}");
    }
    let bindings = blocks(&doc, "bindings");
    assert_eq!(
        bindings.len(),
        2,
        "the bindings example and the shadow example"
    );
    let (b, _) = Bindings::parse(&bindings[0], "doc bindings").unwrap();
    assert_eq!(
        b.resolve("agent-invest-3", "x"),
        Some("aggressive-investment-agent")
    );
    let (shadow, _) = Bindings::parse(&bindings[1], "doc shadow bindings").unwrap();
    assert_eq!(
        shadow.resolve("agent-1", "acme-br"),
        Some("conservative-brazilian-agent")
    );
    assert_eq!(
        shadow.resolve_shadow("agent-1", "acme-br"),
        Some("aggressive-investment-agent")
    );
}

#[test]
fn every_lint_code_is_documented() {
    let doc = std::fs::read_to_string("docs/policy-language.md").unwrap();
    for (code, _) in spendguard::policy::lint::LINT_CODES {
        assert!(doc.contains(&format!("`{code}`")), "{code} undocumented");
    }
    for code in spendguard::policy::codes::ALL {
        assert!(doc.contains(&format!("`{code}`")), "{code} undocumented");
    }
}

#[test]
fn the_documented_lifecycle_fields_compile_to_their_values() {
    let doc = std::fs::read_to_string("docs/policy-language.md").unwrap();
    let text = blocks(&doc, "policy")
        .into_iter()
        .find(|b| b.contains("authorizationTtl"))
        .expect("an example with authorizationTtl");
    let p = CompiledPolicy::parse(&text, "doc lifecycle block").unwrap();
    assert_eq!(p.authorization_ttl, chrono::Duration::hours(60), "2d12h");
    assert!(p.refunds_restore);
    // Without the fields: 7 days, refunds ignored.
    let bare = text
        .lines()
        .filter(|l| !l.contains("authorizationTtl") && !l.contains("refunds"))
        .collect::<Vec<_>>()
        .join("\n");
    let p = CompiledPolicy::parse(&bare, "doc lifecycle block, defaults").unwrap();
    assert_eq!(p.authorization_ttl, chrono::Duration::days(7));
    assert!(!p.refunds_restore);
    assert!(
        CompiledPolicy::parse(
            &text.replace("2d12h", "31d"),
            "doc lifecycle block, too long"
        )
        .is_err(),
        "authorizationTtl is at most 30d"
    );
}

/// examples/settlements.jsonl: every line is a valid settlement naming an intent of
/// examples/intents.jsonl in its currency, captures stay within what was authorized, and
/// every type is shown. (Which intents the example policies ALLOW or send for approval:
/// `spendguard evaluate --policies policies --input examples/intents.jsonl`.)
#[test]
fn example_settlements_parse_and_settle_example_intents() {
    use spendguard::settlement::{SettlementType, parse_settlement};
    let intents: std::collections::HashMap<String, serde_json::Value> =
        std::fs::read_to_string("examples/intents.jsonl")
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["intentId"].as_str()?.to_string(), v)))
            .collect();
    let text = std::fs::read_to_string("examples/settlements.jsonl").unwrap();
    let mut captured: std::collections::HashMap<String, rust_decimal::Decimal> = Default::default();
    let mut kinds = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let s = parse_settlement(line.as_bytes()).unwrap_or_else(|e| panic!("line {n}: {e:?}"));
        let intent = intents
            .get(&s.intent_id)
            .unwrap_or_else(|| panic!("line {n}: {} is not an example intent", s.intent_id));
        kinds.insert(s.kind.as_str());
        if let Some(c) = &s.currency {
            assert_eq!(Some(c.as_str()), intent["currency"].as_str(), "line {n}");
        }
        if s.kind == SettlementType::Capture {
            let total = captured.entry(s.intent_id.clone()).or_default();
            *total += s.amount.unwrap();
            let authorized: rust_decimal::Decimal =
                intent["amount"].as_str().unwrap().parse().unwrap();
            assert!(
                *total <= authorized,
                "line {n} captures more than authorized"
            );
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["CANCEL", "CAPTURE", "REFUND", "VOID"]
    );
}

/// The Limits section's example compiles to the limits it describes, lints clean, and its
/// finding details are the evaluator's, character for character.
#[test]
fn the_documented_limits_example_gives_the_documented_findings() {
    use spendguard::decision::{Effect, KillState, Usage};
    use spendguard::policy::eval::{EvalInput, evaluate_limited};
    use spendguard::policy::limits::SoFar;
    use spendguard::policy::model::{CalendarWindow, LimitScope, WindowKind};
    let doc = std::fs::read_to_string("docs/policy-language.md").unwrap();
    let text = blocks(&doc, "policy")
        .into_iter()
        .find(|b| b.contains("limits:"))
        .expect("an example with limits");
    let p = CompiledPolicy::parse(&text, "doc limits block").unwrap();
    assert!(lint(p.spec()).is_empty(), "{:?}", lint(p.spec()));
    let l = p.limits();
    assert_eq!(l.len(), 3);
    assert_eq!(l[0].window, WindowKind::Calendar(CalendarWindow::Week));
    assert_eq!(
        (l[0].effect, l[0].scope),
        (Effect::RequireHitl, LimitScope::Agent)
    );
    assert_eq!(l[1].window, WindowKind::Trailing(600));
    assert_eq!((l[1].count, l[1].effect), (Some(5), Effect::Deny));
    assert_eq!(
        (l[2].scope, l[2].effect, l[2].approvals),
        (LimitScope::Entity, Effect::RequireMsig, 2)
    );

    let intent = spendguard::intent::parse_intent(
        br#"{"intentId":"doc-1","agentId":"agent-travel-1","entityId":"acme-br","amount":"300.00","currency":"BRL","category":"travel","beneficiary":{"id":"airline:latam","country":"BR"},"purpose":"CARD"}"#,
    )
    .unwrap();
    // Wednesday 2026-11-25, 12:00 in São Paulo.
    let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T15:00:00Z")
        .unwrap()
        .into();
    let kill = KillState::Off;
    let input = EvalInput {
        intent: &intent,
        usage: Usage::default(),
        kill: &kill,
        accepted_at: at,
    };
    let so_far = |travel: &str, burst: u32| {
        [
            SoFar {
                amount: travel.parse().unwrap(),
                count: 6,
            },
            SoFar {
                amount: Default::default(),
                count: burst,
            },
            SoFar::default(),
        ]
    };
    let e = evaluate_limited(&p, &input, &so_far("1800.00", 4));
    assert_eq!(e.effect, Effect::RequireHitl);
    let shown = format!(
        "{} {}: {}",
        e.effect, e.reasons[0].code, e.reasons[0].detail
    );
    assert!(
        doc.contains(&format!("\n{shown}\n")),
        "the doc lacks {shown:?}"
    );
    let e = evaluate_limited(&p, &input, &so_far("1700.00", 5));
    assert_eq!(e.effect, Effect::Deny);
    let shown = format!(
        "{} {}: {}",
        e.effect, e.reasons[0].code, e.reasons[0].detail
    );
    assert!(
        doc.contains(&format!("`{shown}`")),
        "the doc lacks {shown:?}"
    );
    // 1700 + 300 = 2000: equality passes, and the count limit has room.
    assert_eq!(
        evaluate_limited(&p, &input, &so_far("1700.00", 4)).effect,
        Effect::Allow
    );
}

/// The foreign-currency example compiles and accepts exactly the listed currencies.
#[test]
fn the_documented_fx_example_accepts_the_listed_currencies() {
    let doc = std::fs::read_to_string("docs/policy-language.md").unwrap();
    let text = blocks(&doc, "fx-policy")
        .into_iter()
        .next()
        .expect("the fx example");
    let p = CompiledPolicy::parse(&text, "doc fx block").unwrap();
    assert!(p.accepts_fx("USD") && p.accepts_fx("EUR"));
    assert!(!p.accepts_fx("BRL") && !p.accepts_fx("JPY"));
    assert!(lint(p.spec()).is_empty(), "{:?}", lint(p.spec()));
}

#[test]
fn the_documented_policy_test_file_passes_against_the_example_policies() {
    let doc = std::fs::read_to_string("docs/policy-language.md").unwrap();
    let files = blocks(&doc, "policy-test");
    assert!(!files.is_empty(), "no policy-test block");
    let set = spendguard::policy::PolicySet::load_dir(std::path::Path::new("policies")).unwrap();
    for text in files {
        let r = spendguard::policy::testing::run_text(&set, &text, "docs");
        assert_eq!(r.error, None);
        for c in &r.cases {
            assert_eq!(
                c.status,
                spendguard::policy::testing::CaseStatus::Passed,
                "{}",
                c.name
            );
        }
    }
}
