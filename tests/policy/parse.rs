//! The language's surface: forms, defaults, identity, and located errors.

use spendguard::policy::CompiledPolicy;

const BARE_JSON: &str = r#"{"name":"p","version":"2.0.0","currency":"BRL","caps":{"perTxn":500,"daily":1000,"monthly":5000},
 "blockLists":{"categories":["gambling","crypto"]}}"#;

const ENVELOPE_YAML: &str = "apiVersion: policy.spendguard.v1\nkind: SpendPolicy\nmetadata: {name: p, version: \"2.0.0\"}\nspec:\n  blockLists:\n    categories: [crypto, gambling, crypto]\n  caps: {monthly: \"5000.00\", daily: 1000.0, perTxn: 500}\n  currency: BRL\n  timezone: UTC\n  approvalTtl: 24h\n";

#[test]
fn bare_and_envelope_json_and_yaml_share_one_identity() {
    let a = CompiledPolicy::parse(BARE_JSON, "a.json").unwrap();
    let b = CompiledPolicy::parse(ENVELOPE_YAML, "b.yaml").unwrap();
    assert_eq!(a.identity, b.identity);
    assert_eq!(a.identity.name, "p");
    assert_eq!(a.identity.version, "2.0.0");
    assert_eq!(a.identity.sha256.len(), 64);
    let alias = ENVELOPE_YAML.replace("policy.spendguard.v1", "policy.orchestra.v1");
    assert_eq!(
        CompiledPolicy::parse(&alias, "c.yaml").unwrap().identity,
        a.identity
    );
    let changed = BARE_JSON.replace("\"perTxn\":500", "\"perTxn\":501");
    assert_ne!(
        CompiledPolicy::parse(&changed, "d.json")
            .unwrap()
            .identity
            .sha256,
        a.identity.sha256
    );
}

#[test]
fn defaults_timezone_utc_and_ttl_24h() {
    let a = CompiledPolicy::parse(BARE_JSON, "a.json").unwrap();
    assert_eq!(a.tz, chrono_tz::UTC);
    assert_eq!(a.approval_ttl, chrono::Duration::hours(24));
    let b = CompiledPolicy::parse(
        &BARE_JSON.replace(
            "\"currency\"",
            "\"timezone\":\"America/Sao_Paulo\",\"approvalTtl\":\"30m\",\"currency\"",
        ),
        "b.json",
    )
    .unwrap();
    assert_eq!(b.tz, chrono_tz::America::Sao_Paulo);
    assert_eq!(b.approval_ttl, chrono::Duration::minutes(30));
}

fn err(text: &str) -> spendguard::policy::PolicyError {
    CompiledPolicy::parse(text, "bad.yaml").unwrap_err()
}

#[test]
fn errors_are_located_and_coded() {
    let e = err("name: p\ncaps: {perTxn: 1, daily: 1, monthly: 1}\n");
    assert_eq!(e.code, "missing_field");
    assert!(e.message.contains("currency"), "{e}");
    let e = err("name: p\ncurrency: BRL\ncaps: {perTxn: 1, daily: 1, monthly: 1}\nallowList: {}\n");
    assert_eq!((e.code, e.line), ("unknown_field", 4));
    let e = err(
        "name: p\ncurrency: BRL\ntimezone: Mars/Olympus\ncaps: {perTxn: 1, daily: 1, monthly: 1}\n",
    );
    assert_eq!((e.code, e.line), ("invalid_field", 3), "{e}");
    assert!(e.message.contains("IANA"), "{e}");
    let e = err("name: p\ncurrency: BRX\ncaps: {perTxn: 1, daily: 1, monthly: 1}\n");
    assert_eq!((e.code, e.line), ("invalid_field", 2));
    let e = err("name: p\ncurrency: BRL\ncaps:\n  perTxn: -5\n  daily: 1\n  monthly: 1\n");
    assert_eq!((e.code, e.line), ("invalid_field", 4));
    let e =
        err("name: p\ncurrency: BRL\napprovalTtl: 24\ncaps: {perTxn: 1, daily: 1, monthly: 1}\n");
    assert_eq!((e.code, e.line), ("invalid_field", 3));
    let e = err("{\"name\": \"p\",\n \"currency\": \"BRL\",\n \"caps\": {\"perTxn\": 1,, }}");
    assert_eq!((e.code, e.line), ("syntax_error", 3));
    let e = err(
        "name: p\ncurrency: BRL\ncaps: {perTxn: 1, daily: 1, monthly: 1}\nrules:\n  - if: {amountGt: 1}\n    then: {effect: REQUIRE_MSIG, reason: big}\n",
    );
    assert_eq!((e.code, e.line), ("invalid_approvals", 5));
    let e = err(
        "name: p\ncurrency: BRL\ncaps: {perTxn: 1, daily: 1, monthly: 1}\nrules:\n  - if: {amountGt: 1}\n    then: {effect: MAYBE, reason: big}\n",
    );
    assert_eq!(e.code, "unknown_value");
    let e = err("currency: BRL\ncaps: {perTxn: 1, daily: 1, monthly: 1}\n");
    assert_eq!(e.code, "missing_name");
    let e = err("name: p\ncurrency: BRL\ncaps: {perTxn: 1.001, daily: 1, monthly: 1}\n");
    assert_eq!(e.code, "invalid_amount");
    // Display: file:line:column, code, hint.
    let shown =
        err("name: p\ncurrency: BRL\ntimezone: Nowhere\ncaps: {perTxn: 1, daily: 1, monthly: 1}\n")
            .to_string();
    assert!(shown.starts_with("bad.yaml:3:"), "{shown}");
    assert!(shown.contains("hint:"), "{shown}");
}
