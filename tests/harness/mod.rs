//! The one harness of the integration tests (issue 9). Each test binary (`tests/ledger`,
//! `tests/service`, `tests/api`; `tests/policy` needs no server) includes it with
//!
//! ```ignore
//! #[path = "../harness/mod.rs"]
//! mod harness;
//! ```
//!
//! and finds here the one way to do each piece of set-up:
//! - reach a server: [`require_postgres`] / [`require_broker`]. A test that cannot reach
//!   PostgreSQL or the broker FAILS when `CI=true`; otherwise it skips with a visible
//!   message (a developer without the services still gets a green run, and is told what
//!   did not run). Every other "needs a tool" check goes through [`skip_or_fail`] too.
//! - a fresh ledger database: [`db::fresh_db`] (or [`db::TestDb::create`] once the
//!   servers were required), dropped when its test passes;
//! - policies: [`policies`] (a directory per test, the standard test policy, the service
//!   tests' `svc-test`, the repository's `policies/`);
//! - an intent: [`intent::intent`] and the setters of [`intent::IntentExt`];
//! - `spendguard serve`: [`serve::Rig`] (database, topics, policies, environment) and
//!   [`serve::ServeProcess`] (the built binary) or [`serve::InProcess`] (`serve::run`);
//! - tests that must not overlap in one process: [`serial`];
//! - [`http`] (a bare HTTP/1.1 client), [`proxy`] (fault injection), [`scenario`] (the
//!   report / impact / API scenarios with known totals).
#![allow(dead_code)]

pub mod db;
pub mod http;
pub mod intent;
pub mod policies;
pub mod proxy;
pub mod scenario;
pub mod serial;
pub mod serve;
pub mod tls;

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
pub fn pg_host_port(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5432")
    }
}

/// A line on the real stderr: libtest captures `eprintln!` of passing tests, which would
/// hide a skip or a note; a direct write is shown.
pub fn visible(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What a test does when something it needs is missing: panics under `CI=true` (no
/// silent skips in CI), otherwise prints a visible `SKIPPED: {msg}` and the caller
/// returns.
pub fn skip_or_fail(msg: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}; CI=true so this test fails instead of skipping");
    }
    visible(&format!("SKIPPED: {msg}"));
}

/// True when the server is up. Otherwise panics under `CI=true`, or prints why the test
/// is skipped and returns false.
pub fn require(what: &str, host_port: &str) -> bool {
    if reachable(host_port) {
        return true;
    }
    skip_or_fail(&format!(
        "{what} is not reachable at {host_port} (start it with scripts/services.sh up)"
    ));
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

/// Logs of the code under test that runs in this process (`serve` in-process), at
/// `filter`, into the output libtest captures for the test that emitted them (printed
/// when it fails; threads a test starts inherit its capture). Process-wide and
/// first-come, like `spendguard::telemetry::init`, which writes to the real stderr: in a
/// binary shared by many tests that would print every later test's in-process warnings
/// (librdkafka's connection errors in the proxy tests, PostgreSQL notices).
pub fn init_test_logs(filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// A unique short name for topics / databases of one test run.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}
