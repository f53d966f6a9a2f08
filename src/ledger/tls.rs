//! TLS to PostgreSQL (SPEC §14 "In transit"). sqlx reads `sslmode`, `sslrootcert`,
//! `sslcert` and `sslkey` from the database URL as libpq does, and speaks TLS with rustls:
//! `sslmode=verify-full` checks the server's certificate against `sslrootcert` (and the
//! public web roots) and its name against the URL's host. This module only makes the
//! outcome clear: a refused certificate stops the start with what to check, and a
//! connection to another machine that is not verified is reported.

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::LedgerError;

/// A connection error at start-up: TLS failures (a certificate signed by another CA, a
/// name that does not match, a server without TLS under `sslmode=require`) are settings
/// to fix, not an outage to wait out; anything else is [`LedgerError::Connect`].
pub(crate) fn connect_error(e: sqlx::Error) -> LedgerError {
    let tls_failure: Option<String> = match &e {
        sqlx::Error::Tls(cause) => Some(cause.to_string()),
        // rustls reports a refused certificate through the socket: an I/O error that
        // carries the rustls error.
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|r| r.to_string()),
        _ => None,
    };
    match tls_failure {
        Some(cause) => LedgerError::Setup(format!(
            "TLS to PostgreSQL failed: {cause}. Check the sslmode of DATABASE_URL, its sslrootcert (the CA that signed the server's certificate) and that the URL's host is a name in that certificate (sslmode=verify-full)"
        )),
        None => LedgerError::Connect(e),
    }
}

/// The connection options of `database_url`, with the ledger's TLS default: a server on
/// this machine (loopback address, `localhost` or a Unix socket) is reached without TLS
/// unless the URL's `sslmode` or `PGSSLMODE` asks for it. Traffic on loopback never
/// leaves the kernel, so TLS there protects nothing, and it is not free: with libpq's
/// `prefer` the synchronous API fell from 998 to 409 decisions/s on a 2-core host whose
/// PostgreSQL has `ssl=on` (docs/benchmarks.md). A server elsewhere keeps libpq's rules
/// and [`warn_if_unverified`].
pub(crate) fn connect_options(database_url: &str) -> Result<PgConnectOptions, LedgerError> {
    let url = database_url.parse::<PgConnectOptions>().map_err(|e| {
        LedgerError::Setup(format!(
            "DATABASE_URL / --database-url is not a valid PostgreSQL URL: {e}"
        ))
    })?;
    let explicit = url_names_sslmode(database_url) || std::env::var_os("PGSSLMODE").is_some();
    Ok(if explicit || is_remote(url.get_host()) {
        url
    } else {
        url.ssl_mode(PgSslMode::Disable)
    })
}

/// Whether the URL's query string sets `sslmode` (sqlx's options do not say whether a
/// mode was asked for or defaulted).
fn url_names_sslmode(database_url: &str) -> bool {
    database_url
        .split_once('?')
        .is_some_and(|(_, query)| query.split('&').any(|kv| kv.starts_with("sslmode=")))
}

/// Whether the connection leaves this machine (not a Unix socket, not loopback).
fn is_remote(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    !(host.starts_with('/')
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()))
}

/// What is wrong with the URL's TLS settings for a connection to another machine, if
/// anything: anything short of `verify-full` can be read or impersonated on the way.
pub(crate) fn unverified_reason(url: &PgConnectOptions) -> Option<String> {
    if !is_remote(url.get_host()) {
        return None;
    }
    match url.get_ssl_mode() {
        PgSslMode::VerifyFull => None,
        PgSslMode::VerifyCa => Some(format!(
            "sslmode=verify-ca to {}: the certificate is checked but not its name (use sslmode=verify-full)",
            url.get_host()
        )),
        mode => Some(format!(
            "sslmode={} to {}: the server's certificate is not checked, the connection can be intercepted (use sslmode=verify-full with sslrootcert)",
            match mode {
                PgSslMode::Disable => "disable",
                PgSslMode::Allow => "allow",
                PgSslMode::Prefer => "prefer",
                _ => "require",
            },
            url.get_host()
        )),
    }
}

/// Logs [`unverified_reason`] as a warning (the URL itself is never logged: it may
/// hold a password).
pub(crate) fn warn_if_unverified(url: &PgConnectOptions) {
    if let Some(reason) = unverified_reason(url) {
        tracing::warn!("PostgreSQL connection not verified: {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> PgConnectOptions {
        url.parse().unwrap()
    }

    #[test]
    fn a_local_server_is_reached_without_tls_unless_asked() {
        // PGSSLMODE would make every URL explicit; the suite does not set it.
        if std::env::var_os("PGSSLMODE").is_some() {
            eprintln!("skipped: PGSSLMODE is set in this environment");
            return;
        }
        let mode = |url: &str| connect_options(url).unwrap().get_ssl_mode();
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db"),
            PgSslMode::Disable
        ));
        assert!(matches!(
            mode("postgres://u@localhost:5433/db"),
            PgSslMode::Disable
        ));
        assert!(matches!(mode("postgres://u@[::1]/db"), PgSslMode::Disable));
        assert!(matches!(
            mode("postgres://u@127.0.0.1/db?sslmode=require"),
            PgSslMode::Require
        ));
        assert!(matches!(
            mode("postgres://u@localhost/db?application_name=x&sslmode=verify-full"),
            PgSslMode::VerifyFull
        ));
        assert!(matches!(
            mode("postgres://u@db.example/db"),
            PgSslMode::Prefer
        ));
        assert!(connect_options("postgres://u@127.0.0.1:notaport/db").is_err());
    }

    #[test]
    fn only_remote_connections_short_of_verify_full_are_reported() {
        assert_eq!(unverified_reason(&opts("postgres://u@127.0.0.1/db")), None);
        assert_eq!(unverified_reason(&opts("postgres://u@localhost/db")), None);
        assert_eq!(
            unverified_reason(&opts("postgres://u@db.example/db?sslmode=verify-full")),
            None
        );
        let r = unverified_reason(&opts("postgres://u@db.example/db")).unwrap();
        assert!(
            r.contains("sslmode=prefer") && r.contains("db.example"),
            "{r}"
        );
        let r = unverified_reason(&opts("postgres://u@10.0.0.5/db?sslmode=verify-ca")).unwrap();
        assert!(r.contains("verify-full"), "{r}");
        let r = unverified_reason(&opts("postgres://u:pw@db.example/db?sslmode=require")).unwrap();
        assert!(!r.contains("pw"), "{r}");
    }

    #[test]
    fn tls_failures_at_start_are_settings_not_outages() {
        let e = connect_error(sqlx::Error::Tls(
            "invalid peer certificate: UnknownIssuer".into(),
        ));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let refused = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = connect_error(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            refused,
        )));
        assert!(!e.is_transient());
        assert!(e.to_string().contains("TLS to PostgreSQL failed"), "{e}");
        let e = connect_error(sqlx::Error::Io(std::io::Error::other("refused")));
        assert!(e.is_transient());
    }
}
