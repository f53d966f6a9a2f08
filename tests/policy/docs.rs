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
    assert_eq!(bindings.len(), 1);
    let (b, _) = Bindings::parse(&bindings[0], "doc bindings").unwrap();
    assert_eq!(
        b.resolve("agent-invest-3", "x"),
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
