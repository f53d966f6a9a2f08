//! Shared helpers for integration tests that need the real servers.
//!
//! A test that cannot reach PostgreSQL or the broker FAILS when `CI=true`; otherwise it
//! skips with a visible message (a developer without the services still gets a green
//! unit-test run, and is told what did not run).
#![allow(dead_code)]

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
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("connect to PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let (server, _) = base.rsplit_once('/').unwrap_or((&base, ""));
    format!("{server}/{name}")
}
