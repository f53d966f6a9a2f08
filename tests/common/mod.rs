//! Shared helpers for integration tests that need the real servers.
//!
//! A test that cannot reach PostgreSQL or the broker FAILS when `CI=true`; otherwise it
//! skips with a visible message (a developer without the services still gets a green
//! unit-test run, and is told what did not run).
#![allow(dead_code)]

pub mod http;
pub mod proxy;

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub const CONNECT_TIMEOUT_MS: u64 = 1_000;

pub fn brokers() -> String {
    std::env::var("SPENDGUARD_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn reachable(host_port: &str) -> bool {
    let Ok(addrs) = host_port.to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, Duration::from_millis(CONNECT_TIMEOUT_MS)).is_ok())
}

/// Host:port of a PostgreSQL URL (`postgres://user@host:port/db`).
fn pg_host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    }
}

/// True when the server is up. Otherwise panics under `CI=true`, or prints why the test
/// is skipped and returns false.
pub fn require(what: &str, host_port: &str) -> bool {
    if reachable(host_port) {
        return true;
    }
    let msg =
        format!("{what} is not reachable at {host_port} (start it with scripts/services.sh up)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}; CI=true so this test fails instead of skipping");
    }
    eprintln!("SKIPPED: {msg}");
    false
}

pub fn require_broker() -> bool {
    let b = brokers();
    let first = b.split(',').next().unwrap_or("127.0.0.1:9092").to_string();
    require("Kafka broker", &first)
}

pub fn require_postgres() -> bool {
    require("PostgreSQL", &pg_host_port(&database_url()))
}

/// A unique short name for topics / databases of one test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates a fresh, empty database on the server of `DATABASE_URL` and returns its URL.
pub async fn fresh_database(prefix: &str) -> String {
    use sqlx::Connection;
    let base = database_url();
    let name = unique(prefix).replace(['-', '.'], "_");
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .expect("connect to PostgreSQL");
    // The name is made here from a UUID: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (server, _) = base.rsplit_once('/').unwrap_or((&base, ""));
    format!("{server}/{name}")
}

/// Reads `topic` from the beginning until `done(messages so far)` is true or `timeout_ms`
/// passed; returns what was read.
pub async fn read_until(
    brokers: &str,
    topic: &str,
    timeout_ms: u64,
    done: impl Fn(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = spendguard::bus::standalone_consumer(brokers).expect("consumer");
    spendguard::bus::assign_all(&consumer, brokers, topic, rdkafka::Offset::Beginning)
        .expect("assign");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut out = Vec::new();
    while !done(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            Ok(Err(e)) => eprintln!("read error on {topic}: {e}"),
            Err(_) => break,
        }
    }
    out
}

/// Payload of a message as JSON (panics with the text when it is not JSON: test output).
pub fn json(msg: &rdkafka::message::OwnedMessage) -> serde_json::Value {
    use rdkafka::Message;
    let bytes = msg.payload().unwrap_or_default();
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// A `spendguard serve` process started from the built binary, its stderr in a file.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
    pub instance: String,
}

/// Environment that points a spendguard command at one test's database and topics.
pub fn service_env(
    db: &str,
    prefix: &str,
    group: &str,
    policies: &std::path::Path,
) -> Vec<(String, String)> {
    vec![
        ("DATABASE_URL".into(), db.into()),
        ("SPENDGUARD_BROKERS".into(), brokers()),
        ("SPENDGUARD_TOPIC_PREFIX".into(), prefix.into()),
        ("SPENDGUARD_GROUP_ID".into(), group.into()),
        ("SPENDGUARD_POLICIES".into(), policies.display().to_string()),
        ("SPENDGUARD_LOG".into(), "warn".into()),
    ]
}

pub fn spendguard(env: &[(String, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_spendguard"));
    cmd.env_remove("SPENDGUARD_CONFIG")
        .env_remove("SPENDGUARD_APPROVERS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl ServeProcess {
    /// Starts `serve` and waits until it reports ready.
    pub fn start(
        env: &[(String, String)],
        instance: &str,
        dir: &std::path::Path,
        extra: &[&str],
    ) -> ServeProcess {
        let log = dir.join(format!("{instance}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = spendguard(env)
            .arg("serve")
            .args(["--instance", instance])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn spendguard serve");
        let mut p = ServeProcess {
            child,
            log,
            instance: instance.to_string(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !p.log_text().contains("ready") {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("serve {instance} exited with {status}:\n{}", p.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "serve {instance} not ready:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "serve {} did not stop after SIGTERM:\n{}",
                    self.instance,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // A test that failed midway must not leave servers behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The policies the service tests run with: the repository's `policies/`, or the
/// directory in `SPENDGUARD_TEST_POLICIES` (to try the tests against other policies).
pub fn policies_dir() -> std::path::PathBuf {
    std::env::var_os("SPENDGUARD_TEST_POLICIES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies"))
}

/// A policy directory made for one service test (the repository's example policies
/// change with the product; these tests need known effects): entities `acme-*` are
/// bound to policy `svc-test` in BRL. An intent is REQUIRE_HITL when its beneficiary is
/// not `vendor:known`, REQUIRE_MSIG (2 approvals) above 1000 BRL, DENY above 10000 BRL or
/// past `daily_cap`, ALLOW otherwise. Returns the directory.
pub fn test_policies(
    dir: &std::path::Path,
    version: &str,
    daily_cap: &str,
    approval_ttl: &str,
) -> std::path::PathBuf {
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

/// An intent of `agent` for entity `acme-br` in BRL.
pub fn intent_json(id: &str, agent: &str, amount: &str, beneficiary: &str) -> String {
    serde_json::json!({
        "intentId": id, "agentId": agent, "entityId": "acme-br", "amount": amount,
        "currency": "BRL", "category": "supplies",
        "beneficiary": {"id": beneficiary, "country": "BR"}, "purpose": "PIX"
    })
    .to_string()
}
