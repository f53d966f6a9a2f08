//! Policy directories for the tests: made per test in a temp dir, or the repository's.

use spendguard::policy::PolicySet;
use std::path::{Path, PathBuf};

/// A policy directory: `policies` are (file name, text), `bindings` the text of
/// `bindings.yaml`.
pub fn policy_dir(policies: &[(&str, &str)], bindings: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in policies {
        std::fs::write(dir.path().join(name), text).expect("write policy");
    }
    std::fs::write(dir.path().join("bindings.yaml"), bindings).expect("write bindings");
    let p = dir.path().to_path_buf();
    (dir, p)
}

pub fn load(dir: &Path) -> PolicySet {
    PolicySet::load_dir(dir).expect("load policies")
}

pub fn policy_set(policies: &[(&str, &str)], bindings: &str) -> (tempfile::TempDir, PolicySet) {
    let (dir, path) = policy_dir(policies, bindings);
    let set = load(&path);
    (dir, set)
}

/// A BRL policy in `tz` with the given caps (perTxn, daily, monthly) and an MSIG
/// threshold; approvals wait `ttl`.
pub fn policy_text(
    name: &str,
    tz: &str,
    per_txn: &str,
    daily: &str,
    monthly: &str,
    msig_over: &str,
    ttl: &str,
) -> String {
    format!(
        "name: {name}\ndescription: test\ncurrency: BRL\ntimezone: {tz}\ncaps: {{ perTxn: \"{per_txn}\", daily: \"{daily}\", monthly: \"{monthly}\" }}\nmsig: {{ threshold: {{ higherThan: \"{msig_over}\", approvals: 2 }} }}\napprovalTtl: {ttl}\n"
    )
}

/// Bindings that bind every agent to policy `p`.
pub const DEFAULT_BINDINGS: &str = "default: p\n";

/// The directory of policy `p`: perTxn 1000, daily 500, monthly 2000, MSIG above 800,
/// TTL 1h, Sao Paulo; bound to every agent.
pub fn standard_dir() -> (tempfile::TempDir, PathBuf) {
    let text = policy_text(
        "p",
        "America/Sao_Paulo",
        "1000.00",
        "500.00",
        "2000.00",
        "800.00",
        "3600s",
    );
    policy_dir(&[("p.yaml", &text)], DEFAULT_BINDINGS)
}

/// Policy `p` of [`standard_dir`], loaded.
pub fn standard_set() -> (tempfile::TempDir, PolicySet) {
    let (dir, path) = standard_dir();
    let set = load(&path);
    (dir, set)
}

/// The policies the service tests run with: the repository's `policies/`, or the
/// directory in `SPENDGUARD_TEST_POLICIES` (to try the tests against other policies).
pub fn policies_dir() -> PathBuf {
    std::env::var_os("SPENDGUARD_TEST_POLICIES")
        .map(PathBuf::from)
        .unwrap_or_else(repository_policies)
}

/// The repository's `policies/` (the example policies).
pub fn repository_policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A policy directory made for one service test (the repository's example policies
/// change with the product; these tests need known effects): entities `acme-*` are
/// bound to policy `svc-test` in BRL. An intent is REQUIRE_HITL when its beneficiary is
/// not `vendor:known`, REQUIRE_MSIG (2 approvals) above 1000 BRL, DENY above 10000 BRL or
/// past `daily_cap`, ALLOW otherwise; category `gambling` is blocked. Returns the
/// directory (`dir/policies`).
pub fn test_policies(dir: &Path, version: &str, daily_cap: &str, approval_ttl: &str) -> PathBuf {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).expect("create policy dir");
    std::fs::write(
        policies.join("bindings.yaml"),
        "apiVersion: policy.spendguard.v1\nkind: PolicyBindings\nentities:\n  \"acme-*\": svc-test\n",
    )
    .expect("write bindings");
    std::fs::write(
        policies.join("svc-test.yaml"),
        format!(
            "name: svc-test\nversion: \"{version}\"\ncurrency: BRL\ntimezone: America/Sao_Paulo\napprovalTtl: {approval_ttl}\ncaps: {{perTxn: 10000, daily: {daily_cap}, monthly: 100000000}}\nmsig: {{threshold: {{higherThan: 1000, approvals: 2}}}}\nallowLists: {{beneficiaries: [\"vendor:known\"]}}\nblockLists: {{categories: [gambling]}}\n"
        ),
    )
    .expect("write policy");
    policies
}
