//! The README's main command, `scripts/demo.sh`, run for real (PostgreSQL, tansu, the
//! built binary): every line of examples/intents.jsonl gets exactly one answer — a
//! decision when the line is a valid intent, a dead letter when it is not.

use crate::harness::{self, serial};

#[test]
fn the_demo_answers_every_example_intent_once() {
    if !harness::require_broker() || !harness::require_postgres() {
        return;
    }
    let _serial = serial::exclusive_blocking();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let examples = std::fs::read_to_string(root.join("examples/intents.jsonl")).unwrap();
    let lines: Vec<&str> = examples.lines().filter(|l| !l.trim().is_empty()).collect();
    let valid: Vec<String> = lines
        .iter()
        .filter_map(|l| spendguard::intent::parse_intent(l.as_bytes()).ok())
        .map(|i| i.intent_id)
        .collect();
    let invalid = lines.len() - valid.len();
    assert!(
        !valid.is_empty() && invalid > 0,
        "the examples exercise both paths"
    );

    let out = std::process::Command::new(root.join("scripts/demo.sh"))
        .env("SPENDGUARD_BIN", env!("CARGO_BIN_EXE_spendguard"))
        .env("DATABASE_URL", harness::database_url())
        .env("SPENDGUARD_BROKERS", harness::brokers())
        .env_remove("SPENDGUARD_POLICIES")
        .env_remove("SPENDGUARD_CONFIG")
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let decisions_start = stdout.find("--- decisions on").expect("decisions header");
    let dead_start = stdout
        .find("--- dead letters on")
        .expect("dead letters header");
    let decisions: Vec<&str> = stdout[decisions_start..dead_start]
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let dead: Vec<&str> = stdout[dead_start..]
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("DEAD LETTER"))
        .collect();
    assert_eq!(decisions.len(), valid.len(), "{stdout}");
    for id in &valid {
        assert_eq!(
            decisions
                .iter()
                .filter(|l| l.starts_with(id.as_str()))
                .count(),
            1,
            "one decision for {id}:\n{stdout}"
        );
    }
    for effect in [" ALLOW ", " DENY ", " REQUIRE_HITL ", " REQUIRE_MSIG "] {
        assert!(
            decisions.iter().any(|l| l.contains(effect)),
            "no{effect}in the demo:\n{stdout}"
        );
    }
    assert_eq!(dead.len(), invalid, "{stdout}");
}
