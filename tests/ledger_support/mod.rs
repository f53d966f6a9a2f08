//! Helpers of the ledger integration tests: a fresh database per test on the real
//! PostgreSQL (`DATABASE_URL`, default the local server), policies written to a temp
//! dir, intents. A test that cannot reach PostgreSQL FAILS when `CI=true`; otherwise it
//! skips with a visible message.
#![allow(dead_code)]

use spendguard::intent::{Beneficiary, Purpose, SpendIntent, parse_intent};
use spendguard::ledger::{ConnectOptions, Ledger, Origin};
use spendguard::policy::PolicySet;
use sqlx::Connection;
use std::path::PathBuf;

#[path = "../common/mod.rs"]
pub mod common;

/// A database made for one test.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

/// Creates a fresh database, or returns None (skip) when PostgreSQL is unreachable and
/// CI is not set. Panics under `CI=true`.
pub async fn fresh_db() -> Option<TestDb> {
    if !common::require_postgres() {
        return None;
    }
    let url = common::fresh_database("sg_ledger_").await;
    let name = url.rsplit('/').next().unwrap_or_default().to_string();
    Some(TestDb { url, name })
}

impl TestDb {
    /// URL of this database as another role.
    pub fn url_as(&self, role: &str) -> String {
        let rest = self.url.split_once("://").map(|x| x.1).unwrap_or(&self.url);
        let host = rest.rsplit_once('@').map(|x| x.1).unwrap_or(rest);
        format!("postgres://{role}@{host}")
    }

    pub async fn ledger(&self) -> Ledger {
        Ledger::connect(&self.url, "test")
            .await
            .expect("connect ledger")
    }

    pub async fn ledger_with(&self, max_connections: u32) -> Ledger {
        Ledger::connect_with(
            &self.url,
            "test",
            ConnectOptions {
                max_connections,
                migrate: true,
                ..Default::default()
            },
        )
        .await
        .expect("connect ledger")
    }

    pub async fn superuser(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect as superuser")
    }
}

/// A policy directory: `policies` are (file name, text); bindings bind every agent to
/// `default_policy`.
pub fn policy_dir(policies: &[(&str, &str)], bindings: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in policies {
        std::fs::write(dir.path().join(name), text).expect("write policy");
    }
    std::fs::write(dir.path().join("bindings.yaml"), bindings).expect("write bindings");
    let p = dir.path().to_path_buf();
    (dir, p)
}

pub fn policy_set(policies: &[(&str, &str)], bindings: &str) -> (tempfile::TempDir, PolicySet) {
    let (dir, path) = policy_dir(policies, bindings);
    let set = PolicySet::load_dir(&path).expect("load policies");
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

pub const DEFAULT_BINDINGS: &str = "default: p\n";

/// Policy `p`: perTxn 1000, daily 500, monthly 2000, MSIG above 800, TTL 1h, Sao Paulo.
pub fn standard_set() -> (tempfile::TempDir, PolicySet) {
    let text = policy_text(
        "p",
        "America/Sao_Paulo",
        "1000.00",
        "500.00",
        "2000.00",
        "800.00",
        "3600s",
    );
    policy_set(&[("p.yaml", &text)], DEFAULT_BINDINGS)
}

pub fn intent(id: &str, agent: &str, amount: &str) -> SpendIntent {
    SpendIntent {
        intent_id: id.to_string(),
        agent_id: agent.to_string(),
        entity_id: "acme-br".into(),
        amount: amount.parse().expect("amount"),
        currency: "BRL".into(),
        category: "utility".into(),
        beneficiary: Beneficiary {
            id: "utility:light".into(),
            account: None,
            country: Some("BR".into()),
        },
        purpose: Purpose::Pix,
        metadata: None,
    }
}

pub fn intent_json(id: &str, agent: &str, amount: &str) -> String {
    serde_json::to_string(&intent(id, agent, amount)).expect("json")
}

pub fn parse(json: &str) -> SpendIntent {
    parse_intent(json.as_bytes()).expect("valid intent")
}

pub fn origin() -> Origin {
    Origin::cli("test")
}

pub fn at(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("time")
        .with_timezone(&chrono::Utc)
}

/// Path of the built `spendguard` binary (integration tests get it from Cargo).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_spendguard"))
}
