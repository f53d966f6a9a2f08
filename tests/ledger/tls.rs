//! TLS to PostgreSQL (SPEC §14 "In transit", issue 13 item 9), against a cluster of its
//! own with `ssl=on`, a certificate from a CA made at test time and `hostssl`-only
//! access ([`TlsPostgres`]): `sslmode=verify-full` with that CA connects, migrates and
//! is encrypted; another CA, a host name not in the certificate, and no TLS at all are
//! refused; a client certificate named in the URL authenticates.

use crate::harness::tls::{CONNECT_TIMEOUT, TestCa, TlsPostgres};
use spendguard::ledger::{Ledger, LedgerError};
use sqlx::Connection;

async fn ledger(url: &str) -> Result<Ledger, LedgerError> {
    tokio::time::timeout(CONNECT_TIMEOUT, Ledger::connect(url, "tls-test"))
        .await
        .expect("connect did not finish in time")
}

async fn session(url: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect(url))
        .await
        .expect("connect did not finish in time")
}

#[tokio::test]
async fn verify_full_with_the_test_ca_connects_migrates_and_is_encrypted() {
    let ca = TestCa::new("spendguard test CA");
    let Some(pg) = TlsPostgres::start(&ca) else {
        return;
    };
    let root = ca.write(pg.dir.path(), "ca.crt");
    let url = pg.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", root.display()),
    );
    let ledger = ledger(&url)
        .await
        .unwrap_or_else(|e| panic!("verify-full with the right CA: {e}\n{}", pg.log()));
    // Migrated and usable: the kill switch reads back (no entry on a fresh ledger).
    let state = ledger
        .kill_switch_state()
        .await
        .expect("ledger works over TLS");
    assert!(state.iter().all(|e| !e.active), "{state:?}");
    ledger.close().await;
    // The server sees this session as TLS (the ledger's own sessions are alike).
    let mut s = session(&url).await.expect("session");
    let (ssl, version): (bool, String) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut s)
            .await
            .expect("pg_stat_ssl");
    assert!(ssl, "session not encrypted");
    assert!(version.starts_with("TLSv1."), "{version}");
    let migrated: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut s)
        .await
        .expect("migrations table");
    assert!(migrated > 0);
}

#[tokio::test]
async fn another_ca_a_name_not_in_the_certificate_and_no_tls_are_refused() {
    let ca = TestCa::new("spendguard test CA");
    let Some(pg) = TlsPostgres::start(&ca) else {
        return;
    };
    let root = ca.write(pg.dir.path(), "ca.crt");
    let wrong = TestCa::new("some other CA").write(pg.dir.path(), "wrong-ca.crt");

    // A certificate the client's CA did not sign: refused, as a settings error that says
    // what to check (not retried as an outage).
    let url = pg.url(
        "postgres",
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", wrong.display()),
    );
    let err = ledger(&url)
        .await
        .map(drop)
        .expect_err("wrong CA must be refused");
    let text = err.to_string();
    assert!(matches!(err, LedgerError::Setup(_)), "{err:?}");
    assert!(!err.is_transient(), "{err:?}");
    assert!(
        text.contains("TLS to PostgreSQL failed") && text.contains("sslrootcert"),
        "{text}"
    );
    assert!(
        text.contains("UnknownIssuer") || text.contains("certificate"),
        "{text}"
    );

    // The reports' read-only reader says the same.
    let reader = tokio::time::timeout(
        CONNECT_TIMEOUT,
        spendguard::ledger::query::LedgerReader::connect(&url, 1),
    )
    .await
    .expect("connect did not finish in time");
    let err = reader.map(drop).expect_err("wrong CA must be refused");
    assert!(matches!(err, LedgerError::Setup(_)), "{err:?}");

    // The right CA, but the URL's host (127.0.0.1) is not a name of the certificate
    // (localhost): verify-full refuses, verify-ca (no name check) accepts.
    let by_ip = |mode: &str| {
        pg.url(
            "postgres",
            "127.0.0.1",
            &format!("sslmode={mode}&sslrootcert={}", root.display()),
        )
    };
    let err = session(&by_ip("verify-full"))
        .await
        .map(drop)
        .expect_err("a name not in the certificate must be refused");
    assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    session(&by_ip("verify-ca"))
        .await
        .expect("verify-ca checks the CA only");

    // Without TLS: the server (hostssl only) refuses.
    let err = ledger(&pg.url("postgres", "localhost", "sslmode=disable"))
        .await
        .map(drop)
        .expect_err("a session without TLS must be refused");
    let text = err.to_string();
    assert!(
        text.contains("no pg_hba.conf entry") && text.contains("no encryption"),
        "{text}"
    );
}

#[tokio::test]
async fn a_client_certificate_from_the_url_authenticates() {
    let ca = TestCa::new("spendguard test CA");
    let Some(pg) = TlsPostgres::start(&ca) else {
        return;
    };
    let root = ca.write(pg.dir.path(), "ca.crt");
    let (cert, key) = ca.client("certuser").write(pg.dir.path(), "certuser");
    let base = format!("sslmode=verify-full&sslrootcert={}", root.display());
    let with_cert = format!("{base}&sslcert={}&sslkey={}", cert.display(), key.display());
    let mut s = session(&pg.url("certuser", "localhost", &with_cert))
        .await
        .unwrap_or_else(|e| panic!("client certificate: {e}\n{}", pg.log()));
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut s)
        .await
        .expect("current_user");
    assert_eq!(user, "certuser");
    // The same role without the certificate: refused by the `cert` rule.
    let err = session(&pg.url("certuser", "localhost", &base))
        .await
        .map(drop)
        .expect_err("certuser without a certificate must be refused");
    assert!(
        err.to_string().contains("certificate"),
        "{err}\n{}",
        pg.log()
    );
}
