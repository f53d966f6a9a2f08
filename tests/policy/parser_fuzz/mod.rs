//! Fuzzing of the parsers (SPEC §15, issue 16): the intent, settlement, vote, policy,
//! bindings, approver-registry and kill-switch control parsers, and the HTTP API's request bodies
//! (`http`), under generated hostile input: arbitrary bytes, byte edits of valid examples
//! and structure-aware edits of their JSON/YAML trees.
//!
//! Every target asserts that nothing panics, that every refusal carries one of the
//! documented stable codes, and that what is accepted satisfies the parser's invariants
//! (re-serializing and re-parsing gives the same value, amounts are in range, ...).
//!
//! Budget: a few hundred cases per target in the normal run. A long run on demand:
//! `SPENDGUARD_FUZZ_CASES=200000 cargo test --release --test policy fuzz_`
//! (see docs/reliability.md, "Fuzzing").

mod http;
mod mutate;

use mutate::{config, hostile_input};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rust_decimal::Decimal;
use spendguard::approvals::{self, Registry, parse_vote};
use spendguard::decision::{KillState, Usage};
use spendguard::intent::{self, MAX_INTENT_BYTES, parse_intent};
use spendguard::kill_switch::{ControlMessage, MAX_REASON_LEN, Scope};
use spendguard::policy::{Bindings, BindingsFile, CompiledPolicy, EvalInput, evaluate};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Cases per target in the normal test run (debug build: a few seconds in all).
const CI_CASES: u32 = 256;

/// Every code `parse_intent` may return (documented on `IntentError::code`).
const INTENT_CODES: &[&str] = &[
    "message_too_large",
    "invalid_utf8",
    "invalid_json",
    "missing_field",
    "invalid_field",
    "unknown_field",
    "invalid_amount",
    "non_positive_amount",
    "amount_scale_exceeds_currency",
    "amount_too_large",
    "unknown_currency",
    "unknown_purpose",
    "metadata_too_large",
];

/// Every code the policy and bindings parsers may return.
const POLICY_CODES: &[&str] = &[
    "syntax_error",
    "io_error",
    "unknown_field",
    "missing_field",
    "unknown_value",
    "invalid_field",
    "policy_too_large",
    "name_conflict",
    "missing_name",
    "invalid_name",
    "invalid_amount",
    "invalid_approvals",
    "list_too_long",
    "too_many_rules",
    "invalid_condition",
    "rego_too_large",
    "rego_uses_wall_clock",
    "rego_compile_error",
];

/// Every code `parse_settlement` may return (documented on `SettlementError`).
const SETTLEMENT_CODES: &[&str] = &[
    "message_too_large",
    "invalid_utf8",
    "invalid_json",
    "missing_field",
    "invalid_field",
    "unknown_field",
    "unknown_type",
    "invalid_amount",
    "non_positive_amount",
    "amount_scale_exceeds_currency",
    "amount_too_large",
    "unknown_currency",
    "amount_required",
    "amount_not_allowed",
    "currency_required",
    "metadata_too_large",
];

const CONTROL_CODES: &[&str] = &[
    "malformed_control_message",
    "invalid_actor",
    "reason_too_long",
];

/// Runs `f`, turning a panic into a test failure that names the parser.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TestCaseError::fail(format!("{what} panicked: {msg}"))
    })
}

/// Re-serialized, an accepted message parses to the same value (when it still fits in
/// `max_bytes`: a message at the limit can grow when serde re-escapes it).
fn round_trips<T, E>(
    parser: &str,
    value: &T,
    max_bytes: usize,
    parse: impl Fn(&[u8]) -> Result<T, E>,
) -> Result<(), TestCaseError>
where
    T: serde::Serialize + PartialEq + std::fmt::Debug,
    E: std::fmt::Debug,
{
    let again = serde_json::to_vec(value).unwrap();
    if again.len() <= max_bytes {
        let parsed = no_panic(&format!("{parser} (again)"), || parse(&again))?;
        prop_assert!(
            parsed.is_ok(),
            "{parser} refused its own output: {:?}",
            parsed
        );
        prop_assert_eq!(parsed.as_ref().ok(), Some(value));
    }
    Ok(())
}

fn known_code(code: &str, known: &[&str], what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        !code.is_empty() && known.contains(&code),
        "{what} refused with code {code:?}, which is not one of {known:?}"
    );
    Ok(())
}

fn intent_seeds() -> Vec<String> {
    include_str!("../../../examples/intents.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The examples (captures, a void, a refund...) and a CANCEL and a VOID without amount.
fn settlement_seeds() -> Vec<String> {
    let mut seeds: Vec<String> = include_str!("../../../examples/settlements.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    seeds.push(r#"{"settlementId":"s-9","intentId":"i-9","type":"CANCEL"}"#.to_string());
    seeds.push(
        r#"{"settlementId":"s-8","intentId":"i-8","type":"VOID","metadata":{"k":[1,{"a":null}]}}"#
            .to_string(),
    );
    seeds
}

fn policy_seeds() -> Vec<String> {
    vec![
        include_str!("../../../policies/conservative-brazilian-agent.json").to_string(),
        include_str!("../../../policies/aggressive-investment-agent.yaml").to_string(),
        include_str!("../../../policies/night-guard-agent.yaml").to_string(),
        // The bare form in YAML and the envelope in JSON, so both forms meet both syntaxes.
        "name: tiny\ncurrency: JPY\ncaps: {perTxn: 100, daily: 1000, monthly: 5000}\n\
         approvalTtl: 1h30m\nrules:\n  - if: {purposeIn: [CARD], countryIn: [US]}\n    \
         then: {effect: REQUIRE_HITL, reason: card_abroad, approvals: 1}\n"
            .to_string(),
        r#"{"apiVersion":"policy.spendguard.v1","kind":"SpendPolicy","metadata":{"name":"env","version":"2","tags":["t"]},
            "spec":{"currency":"USD","caps":{"perTxn":"10.50","daily":"100","monthly":"1000"},
            "blockLists":{"categories":["gambling"],"beneficiaries":["x:*"]}}}"#
            .to_string(),
    ]
}

fn bindings_seeds() -> Vec<String> {
    vec![
        include_str!("../../../policies/bindings.yaml").to_string(),
        r#"{"default":"p","agents":{"a-*":"q","a-1":"r"},"entities":{"e?":"s"}}"#.to_string(),
    ]
}

fn vote_seeds() -> Vec<String> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let signed = approvals::sign_vote(
        &key,
        "3f2b8c1e-9a4d-4e7b-8c2a-1d5e6f7a8b90",
        "alice",
        &"ab".repeat(32),
        approvals::Vote::Approve,
    );
    vec![
        serde_json::to_string(&signed).unwrap(),
        r#"{"intentId":"i-1","approverId":"bob","vote":"REJECT","signedAt":"2026-11-25T15:00:00Z"}"#
            .to_string(),
    ]
}

fn control_seeds() -> Vec<String> {
    vec![
        r#"{"scope":"agent:agent-42","on":true,"actor":"ops-alice","reason":"runaway agent","sentAt":"2026-11-25T15:00:00.123Z"}"#.to_string(),
        r#"{"scope":"global","on":false,"actor":"api:ops","reason":"","sentAt":"2026-11-25T15:00:00Z"}"#.to_string(),
        r#"{"scope":"entity:acme-br","on":true,"actor":"x","reason":"fraud","sentAt":"2026-11-25T15:00:00+03:00"}"#.to_string(),
    ]
}

fn registry_seeds() -> Vec<String> {
    vec![include_str!("../../../policies/approvers.yaml").to_string()]
}

/// What every accepted amount satisfies: a known currency, positive, within the
/// currency's scale and the largest amount.
fn accepted_amount(amount: Decimal, currency: &str) -> Result<(), TestCaseError> {
    let cur = spendguard::money::currency(currency);
    prop_assert!(cur.is_some(), "accepted unknown currency {currency:?}");
    prop_assert!(amount > Decimal::ZERO, "accepted amount {amount}");
    prop_assert!(amount.normalize().scale() <= cur.unwrap().minor_units);
    prop_assert!(amount <= Decimal::from(spendguard::money::MAX_AMOUNT_MAJOR));
    Ok(())
}

/// What every accepted id satisfies: not empty, bounded, no control character.
fn accepted_id(id: &str) -> Result<(), TestCaseError> {
    prop_assert!(!id.is_empty() && id.len() <= intent::MAX_ID_LEN);
    prop_assert!(!id.chars().any(char::is_control));
    Ok(())
}

fn check_intent(bytes: &[u8]) -> Result<(), TestCaseError> {
    match no_panic("parse_intent", || parse_intent(bytes))? {
        Err(e) => {
            known_code(e.code, INTENT_CODES, "parse_intent")?;
            prop_assert!(!e.message.is_empty());
        }
        Ok(i) => {
            accepted_amount(i.amount, &i.currency)?;
            prop_assert!(i.validate().is_ok());
            round_trips("parse_intent", &i, MAX_INTENT_BYTES, parse_intent)?;
        }
    }
    Ok(())
}

fn check_settlement(bytes: &[u8]) -> Result<(), TestCaseError> {
    use spendguard::settlement::{MAX_SETTLEMENT_BYTES, SettlementType, parse_settlement};
    match no_panic("parse_settlement", || parse_settlement(bytes))? {
        Err(e) => {
            known_code(e.code, SETTLEMENT_CODES, "parse_settlement")?;
            prop_assert!(!e.message.is_empty());
        }
        Ok(s) => {
            for id in [&s.settlement_id, &s.intent_id] {
                accepted_id(id)?;
            }
            let needs_amount = matches!(s.kind, SettlementType::Capture | SettlementType::Refund);
            prop_assert!(
                !needs_amount || s.amount.is_some(),
                "{:?} without amount",
                s.kind
            );
            prop_assert!(s.kind != SettlementType::Cancel || s.amount.is_none());
            prop_assert!(!s.is_final || s.kind == SettlementType::Capture);
            if let Some(amount) = s.amount {
                accepted_amount(amount, s.currency.as_deref().unwrap_or_default())?;
            }
            round_trips(
                "parse_settlement",
                &s,
                MAX_SETTLEMENT_BYTES,
                parse_settlement,
            )?;
        }
    }
    Ok(())
}

fn check_vote(bytes: &[u8]) -> Result<(), TestCaseError> {
    match no_panic("parse_vote", || parse_vote(bytes))? {
        Err(e) => known_code(e.code(), &["malformed_vote"], "parse_vote")?,
        Ok(v) => {
            for id in [&v.intent_id, &v.approver_id] {
                accepted_id(id)?;
            }
            round_trips("parse_vote", &v, approvals::MAX_VOTE_BYTES, parse_vote)?;
        }
    }
    Ok(())
}

fn check_control(bytes: &[u8]) -> Result<(), TestCaseError> {
    match no_panic("ControlMessage::parse", || ControlMessage::parse(bytes))? {
        Err(e) => known_code(e.code(), CONTROL_CODES, "ControlMessage::parse")?,
        Ok(m) => {
            prop_assert!(!m.actor.is_empty() && m.actor.len() <= intent::MAX_ID_LEN);
            prop_assert!(m.reason.len() <= MAX_REASON_LEN);
            prop_assert_eq!(Scope::parse(&m.scope.to_string()), Ok(m.scope.clone()));
            round_trips(
                "ControlMessage::parse",
                &m,
                usize::MAX,
                ControlMessage::parse,
            )?;
        }
    }
    Ok(())
}

/// Intents to evaluate accepted policies with (so the compiled form is exercised too).
fn probe_intents() -> Vec<intent::SpendIntent> {
    intent_seeds()
        .iter()
        .filter_map(|l| parse_intent(l.as_bytes()).ok())
        .take(4)
        .collect()
}

fn check_policy(text: &str, probes: &[intent::SpendIntent]) -> Result<(), TestCaseError> {
    match no_panic("CompiledPolicy::parse", || {
        CompiledPolicy::parse(text, "fuzz.yaml")
    })? {
        Err(e) => {
            known_code(e.code, POLICY_CODES, "CompiledPolicy::parse")?;
            prop_assert!(e.line >= 1 && e.column >= 1);
            prop_assert!(!e.message.is_empty() && !e.hint.is_empty());
        }
        Ok(p) => {
            // The canonical form recorded in the ledger parses back to the same policy.
            let canonical = p.canonical_json().to_string();
            let q = no_panic("CompiledPolicy::parse (canonical)", || {
                CompiledPolicy::parse(&canonical, "canonical")
            })?;
            prop_assert!(q.is_ok(), "canonical form refused: {:?}", q.err());
            let q = q.unwrap();
            prop_assert_eq!(&q.identity, &p.identity);
            prop_assert_eq!(q.canonical_json(), p.canonical_json());
            // And the compiled policy evaluates without panicking.
            let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T02:00:00Z")
                .unwrap()
                .into();
            for i in probes {
                let e = no_panic("evaluate", || {
                    evaluate(
                        &p,
                        &EvalInput {
                            intent: i,
                            usage: Usage::default(),
                            kill: &KillState::Off,
                            accepted_at: at,
                        },
                    )
                })?;
                prop_assert!(!e.reasons.is_empty());
                prop_assert!(e.reasons.iter().all(|r| !r.code.is_empty()));
            }
        }
    }
    Ok(())
}

fn check_bindings(text: &str) -> Result<(), TestCaseError> {
    match no_panic("Bindings::parse", || Bindings::parse(text, "bindings.yaml"))? {
        Err(e) => {
            known_code(e.code, POLICY_CODES, "Bindings::parse")?;
            prop_assert!(e.line >= 1 && e.column >= 1);
        }
        Ok((b, file)) => {
            for (agent, entity) in [("a-1", "e1"), ("agent-invest-7", "acme-br"), ("", "")] {
                no_panic("Bindings::resolve", || {
                    b.resolve(agent, entity).map(str::to_string)
                })?;
            }
            let yaml = serde_yaml::to_string(&file).unwrap();
            let again = no_panic("Bindings::parse (again)", || {
                Bindings::parse(&yaml, "again.yaml")
            })?;
            prop_assert!(
                again.is_ok(),
                "re-serialized bindings refused: {:?}",
                again.err()
            );
            let (_, file2): (Bindings, BindingsFile) = again.unwrap();
            prop_assert_eq!(file2, file);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(CI_CASES))]

    #[test]
    fn fuzz_intent_parser(bytes in hostile_input(intent_seeds(), false)) {
        check_intent(&bytes)?;
    }

    #[test]
    fn fuzz_settlement_parser(bytes in hostile_input(settlement_seeds(), false)) {
        check_settlement(&bytes)?;
    }

    #[test]
    fn fuzz_vote_parser(bytes in hostile_input(vote_seeds(), false)) {
        check_vote(&bytes)?;
    }

    #[test]
    fn fuzz_control_message_parser(bytes in hostile_input(control_seeds(), false)) {
        check_control(&bytes)?;
    }

    #[test]
    fn fuzz_policy_parser(bytes in hostile_input(policy_seeds(), true)) {
        // Policies are files read as text: invalid UTF-8 is refused before parsing.
        let text = String::from_utf8_lossy(&bytes);
        check_policy(&text, &probe_intents())?;
    }

    #[test]
    fn fuzz_bindings_parser(bytes in hostile_input(bindings_seeds(), true)) {
        check_bindings(&String::from_utf8_lossy(&bytes))?;
    }

    #[test]
    fn fuzz_approver_registry_parser(bytes in hostile_input(registry_seeds(), true)) {
        // An operator's file, refused with a message (it has no machine code): no panic.
        let text = String::from_utf8_lossy(&bytes);
        if let Err(message) = no_panic("Registry::parse", || Registry::parse(&text))? {
            prop_assert!(!message.is_empty());
        }
    }
}

/// Decimal text around every edge `money::parse_decimal` has (sign, scale, exponent,
/// magnitude, whitespace), as a JSON string and as a JSON number in an intent.
fn amount_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::string::string_regex(
            "[ \t]{0,2}[-+]?[0-9]{0,32}(\\.[0-9]{0,32})?([eE][-+]?[0-9]{0,24})?[ \t]{0,2}"
        )
        .unwrap(),
        1 => proptest::string::string_regex("[-+0-9.eE_, xXnNaAiIfF]{0,70}").unwrap(),
        1 => any::<String>(),
    ]
}

/// The night-guard policy (the one with a Rego module) with its module edited and its
/// query replaced: regorus gets hostile modules and queries, compiled and evaluated.
fn rego_policies() -> impl Strategy<Value = String> {
    let policy: serde_json::Value =
        serde_yaml::from_str(include_str!("../../../policies/night-guard-agent.yaml")).unwrap();
    let module = policy["spec"]["rego"]["module"]
        .as_str()
        .unwrap()
        .to_string();
    const REGO_TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "(",
        ")",
        ":=",
        "=",
        "==",
        " if ",
        " else ",
        " some ",
        " every ",
        " in ",
        " not ",
        " with ",
        "default ",
        "import future.keywords\n",
        "import rego.v1\n",
        "package ",
        "#",
        "\"",
        "`",
        "0x",
        "1e999",
        "-",
        "/",
        "%",
        "|",
        "&",
        ".",
        ",",
        ";",
        "\n",
        "input.",
        "data.",
        "time.now_ns()",
        "object.get(",
        "sprintf(",
        "count(",
        "regex.match(",
        "to_number(",
        "__",
        "\u{0}",
        "é",
        "🙈",
    ];
    let edit = prop_oneof![
        (
            any::<proptest::sample::Index>(),
            proptest::sample::select(REGO_TOKENS)
        )
            .prop_map(|(i, t)| (i, 0usize, t.to_string())),
        (any::<proptest::sample::Index>(), 1..40usize).prop_map(|(i, n)| (i, n, String::new())),
    ];
    let query = prop_oneof![
        3 => Just("data.spendguard.night.finding".to_string()),
        1 => proptest::sample::select(&[
            "data", "data.spendguard", "input", "input.intent", "1 + 1", "x := 1", "data[",
            "data.spendguard.night.finding.effect", "[1,2,3][_]", "time.now_ns()", "\u{0}",
            "data.spendguard.night.local_hour / 0",
        ][..])
        .prop_map(str::to_string),
        1 => any::<String>(),
    ];
    (proptest::collection::vec(edit, 0..6), query).prop_map(move |(edits, query)| {
        let mut m: Vec<char> = module.chars().collect();
        for (at, delete, insert) in edits {
            let i = at.index(m.len() + 1);
            let end = (i + delete).min(m.len());
            m.splice(i..end, insert.chars());
        }
        let mut p = policy.clone();
        p["spec"]["rego"]["module"] = m.into_iter().collect::<String>().into();
        p["spec"]["rego"]["query"] = query.into();
        p.to_string()
    })
}

proptest! {
    #![proptest_config(config(CI_CASES))]

    #[test]
    fn fuzz_amount_text(text in amount_text()) {
        match no_panic("parse_decimal", || spendguard::money::parse_decimal(&text))? {
            // Not a number, or more digits than are held exactly (refused, never
            // rounded: SPEC §14).
            Err(e) => prop_assert!(
                ["invalid_amount", "amount_scale_exceeds_currency"].contains(&e.code()),
                "{}",
                e.code()
            ),
            Ok(d) => {
                let brl = spendguard::money::currency("BRL").unwrap();
                if let Err(e) = no_panic("validate_amount", || {
                    spendguard::money::validate_amount(d, brl)
                })? {
                    known_code(e.code(), INTENT_CODES, "validate_amount")?;
                }
            }
        }
        let seed = &intent_seeds()[0];
        let mut v: serde_json::Value = serde_json::from_str(seed).unwrap();
        v["amount"] = serde_json::Value::String(text.clone());
        check_intent(v.to_string().as_bytes())?;
        // As a bare JSON number too (the text is spliced in raw).
        v["amount"] = "@@AMOUNT@@".into();
        let raw = v.to_string().replace("\"@@AMOUNT@@\"", &text);
        check_intent(raw.as_bytes())?;
    }

    #[test]
    fn fuzz_rego_module_and_query(text in rego_policies()) {
        check_policy(&text, &probe_intents())?;
    }
}

/// Hand-written hostile documents the generators reach only by luck.
#[test]
fn fuzz_fixed_hostile_documents() {
    // Far past the parsers' recursion limit (128). Deeper only costs time: YAML parsing is
    // linear in depth (~45 µs a level in a debug build) and files stop at 1 MiB.
    let deep_json = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(5_000), "}".repeat(5_000));
    let deep_yaml = (0..1_000)
        .map(|i| format!("{}a:\n", " ".repeat(i)))
        .collect::<String>();
    let deep_block = (0..1_000)
        .map(|i| format!("{}- \n", " ".repeat(i)))
        .collect::<String>();
    // Alias expansion ("billion laughs"): serde_yaml bounds it.
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for (i, c) in ('b'..='j').enumerate() {
        let prev = (b'a' + i as u8) as char;
        laughs.push_str(&format!(
            "{c}: &{c} [{}]\n",
            vec![format!("*{prev}"); 9].join(", ")
        ));
    }
    let big = format!(
        "name: big\ncurrency: BRL\ndescription: \"{}\"\n",
        "x".repeat(2 << 20)
    );
    let many_rules = format!(
        "name: many\ncurrency: BRL\ncaps: {{perTxn: 1, daily: 1, monthly: 1}}\nrules:\n{}",
        "  - if: {amountGt: 1}\n    then: {effect: DENY, reason: r}\n".repeat(1_001)
    );
    let docs = [
        deep_json.as_str(),
        deep_object.as_str(),
        deep_yaml.as_str(),
        deep_block.as_str(),
        laughs.as_str(),
        big.as_str(),
        many_rules.as_str(),
        "",
        "\0",
        "---\n---\n",
        "!!binary aGVsbG8=",
        "*a",
        "{\"name\":\"x\",\"name\":\"y\"}",
        "name: x\nname: y\n",
    ];
    let probes = probe_intents();
    for doc in docs {
        check_policy(doc, &probes).unwrap();
        check_intent(doc.as_bytes()).unwrap();
        check_settlement(doc.as_bytes()).unwrap();
        check_vote(doc.as_bytes()).unwrap();
        check_control(doc.as_bytes()).unwrap();
        // Bindings and approver files are read through the same 1 MiB file limit as
        // policies (`policy::read_text`, `Registry::load`): no point parsing more here.
        if doc.len() <= spendguard::policy::compile::MAX_POLICY_BYTES {
            check_bindings(doc).unwrap();
            let _ = Registry::parse(doc);
        }
    }
}
