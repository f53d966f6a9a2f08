//! A fresh ledger database per test, on the real PostgreSQL of `DATABASE_URL` (default
//! the local server).

use spendguard::keywrap::{KeyWrap, LocalKek};
use spendguard::ledger::{ConnectOptions, Ledger, SessionTimeouts};
use sqlx::Connection;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The test KEK of each database (by name), made at random the first time it is asked
/// for: a ledger opened by the test, a `spendguard` command run on it ([`super::serve::run`])
/// and a `serve` over it ([`super::serve::service_env`]) all use the same one, and no
/// two test databases share one.
pub fn kek_for(url: &str) -> String {
    static KEKS: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let name = url
        .split('?')
        .next()
        .unwrap_or(url)
        .rsplit('/')
        .next()
        .unwrap_or(url)
        .to_string();
    let mut keks = KEKS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    keks.entry(name)
        .or_insert_with(|| LocalKek::generate().to_base64())
        .clone()
}

/// [`kek_for`] as the ledger's key wrap.
pub fn key_wrap_for(url: &str) -> Arc<dyn KeyWrap> {
    Arc::new(LocalKek::parse(&kek_for(url), "test KEK").expect("test KEK"))
}

/// Creates a fresh, empty database on the server of `DATABASE_URL` and returns its URL.
/// The caller has required PostgreSQL already (see [`fresh_db`], which does both).
async fn fresh_database(prefix: &str) -> String {
    let base = super::database_url();
    let name = super::unique(prefix).replace(['-', '.'], "_");
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

/// `pg_dump --data-only` of the database at `url` (as the role of the URL): every row of
/// every table, for tests that look for what must not be stored. Panics with pg_dump's
/// error when it fails.
pub fn pg_dump(url: &str) -> String {
    let out = std::process::Command::new("pg_dump")
        .args(["--no-owner", "--data-only", url])
        .output()
        .expect("run pg_dump (is it installed?)");
    assert!(
        out.status.success(),
        "pg_dump failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A database made for one test.
pub struct TestDb {
    pub url: String,
    pub name: String,
}

/// Creates a fresh database named `{prefix}…`, or returns None (skip) when PostgreSQL is
/// unreachable and CI is not set. Panics under `CI=true`.
pub async fn fresh_db(prefix: &str) -> Option<TestDb> {
    if !super::require_postgres() {
        return None;
    }
    Some(TestDb::create(prefix).await)
}

/// A database outlives its test only when the test failed (kept for inspection, its URL
/// printed) or `SPENDGUARD_TEST_KEEP_DB` is set: a full run makes about 180 of them,
/// about 1 GB.
impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SPENDGUARD_TEST_KEEP_DB").is_some() {
            eprintln!("test database kept: {}", self.url);
            return;
        }
        drop_database(&self.name);
    }
}

/// `DROP DATABASE … WITH (FORCE)` through psql (a `Drop` cannot await), which also ends
/// the connections a test left open. A failure is printed, never raised: a panic in a
/// `Drop` while unwinding would abort the whole test binary.
fn drop_database(name: &str) {
    // The name was made by `fresh_database` from a UUID: safe to splice.
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    match std::process::Command::new("psql")
        .args([super::database_url().as_str(), "-qAtc", &sql])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "test database {name} not dropped: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("test database {name} not dropped: cannot run psql: {e}"),
    }
}

/// A test database reads as its URL wherever a `&str` is wanted.
impl std::ops::Deref for TestDb {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl TestDb {
    /// A fresh database named `{prefix}…` ([`fresh_database`]); the caller has required
    /// PostgreSQL already.
    pub async fn create(prefix: &str) -> TestDb {
        let url = fresh_database(prefix).await;
        let name = url.rsplit('/').next().unwrap_or_default().to_string();
        TestDb { url, name }
    }

    /// URL of this database as another role.
    pub fn url_as(&self, role: &str) -> String {
        let rest = self.url.split_once("://").map(|x| x.1).unwrap_or(&self.url);
        let host = rest.rsplit_once('@').map(|x| x.1).unwrap_or(rest);
        format!("postgres://{role}@{host}")
    }

    /// A ledger on this database (migrated), instance `test`.
    pub async fn ledger(&self) -> Ledger {
        self.ledger_named("test").await
    }

    /// With this database's test KEK ([`kek_for`]).
    pub async fn ledger_named(&self, instance: &str) -> Ledger {
        Ledger::connect_with(
            &self.url,
            instance,
            ConnectOptions {
                key_wrap: Some(self.key_wrap()),
                ..Default::default()
            },
        )
        .await
        .expect("connect ledger")
    }

    /// This database's test KEK, base64 (what `SPENDGUARD_KEK` holds).
    pub fn kek(&self) -> String {
        kek_for(&self.url)
    }

    pub fn key_wrap(&self) -> Arc<dyn KeyWrap> {
        key_wrap_for(&self.url)
    }

    pub async fn ledger_with(&self, max_connections: u32) -> Ledger {
        Ledger::connect_with(
            &self.url,
            "test",
            ConnectOptions {
                max_connections,
                migrate: true,
                key_wrap: Some(self.key_wrap()),
                ..Default::default()
            },
        )
        .await
        .expect("connect ledger")
    }

    /// A pool of its own on this database, for what a test reads or changes in the
    /// tables directly (the ledger gives out no connection).
    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect to the test database")
    }

    /// A session with the ledger's own session limits ([`SessionTimeouts`] defaults),
    /// as one of the ledger's pooled sessions would have.
    pub async fn ledger_session(&self) -> sqlx::PgConnection {
        let opts: sqlx::postgres::PgConnectOptions = self.url.parse().expect("database URL");
        sqlx::PgConnection::connect_with(
            &opts.options(SessionTimeouts::default().startup_options()),
        )
        .await
        .expect("connect with the ledger's session limits")
    }

    pub async fn superuser(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect as superuser")
    }
}

/// The origin of what a test records through the ledger API.
pub fn origin() -> spendguard::ledger::Origin {
    spendguard::ledger::Origin::cli("test")
}

/// An instant from RFC 3339 text (for `decide_at`).
pub fn at(rfc3339: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .expect("time")
        .with_timezone(&chrono::Utc)
}
