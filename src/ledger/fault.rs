//! What a failed database call means for the caller (SPEC §15): retry it, or stop
//! retrying and set the message aside / dead-letter it.
//!
//! The rule: anything that says "the database is not able to answer right now" is
//! transient and is retried without end (while the database is down no message can be
//! handled anyway, and giving up would skip work); anything that says "this request is
//! wrong" is permanent (retrying repeats it). A commit whose outcome is unknown (the
//! connection broke during COMMIT) is transient: the retry is answered by the ledger's
//! idempotency (intentId for decisions, the Kafka origin for intake records and votes),
//! never by a second event.
//!
//! Between the two sits a third kind: an error about the *deployment* rather than the
//! message (the service role lost its privileges, the schema is not migrated, the
//! credentials or the database are gone). It is as permanent as a bad request, but it
//! would refuse every message alike, so dead-lettering is wrong: each message would be
//! thrown away undecided for a fault that is not its own. Such a fault is systemic: the
//! caller holds its work, retries slowly and raises an alarm until an operator fixes
//! the deployment, then carries on without having lost anything.

/// How a caller should treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database is unreachable, restarting, failing over, overloaded, or a timeout
    /// or a lost race ended the statement: retry with back-off.
    Transient,
    /// The deployment is broken (privileges revoked, schema or database missing,
    /// credentials refused): every request fails alike until an operator acts. Hold
    /// the work, retry with a capped back-off, report it (metric, readiness); never
    /// dead-letter because of it.
    Systemic,
    /// The request itself is refused (constraint, bad data, a bug): bounded retries,
    /// then the message is dead-lettered or set aside.
    Permanent,
}

impl Fault {
    pub fn is_transient(self) -> bool {
        self == Fault::Transient
    }

    pub fn is_systemic(self) -> bool {
        self == Fault::Systemic
    }

    /// Whether the work must be kept and retried without end (transient or systemic):
    /// only a permanent fault lets a message go to the dead-letter topic.
    pub fn is_retried_without_end(self) -> bool {
        self != Fault::Permanent
    }

    /// Stable name for logs, metrics labels and readiness details.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Transient => "transient",
            Fault::Systemic => "systemic",
            Fault::Permanent => "permanent",
        }
    }
}

/// SQLSTATEs that say the deployment, not the request, is wrong. The service's SQL is
/// fixed in this build, so "no such table / function / column" means the schema is not
/// the one this build was migrated for, and "permission denied" means the role was
/// changed under the service: neither depends on which message is being handled.
pub fn is_systemic_sqlstate(code: &str) -> bool {
    let class = code.get(..2).unwrap_or(code);
    // 28 invalid authorization specification (28000 role refused, 28P01 password);
    // 3D invalid catalog name (3D000: the database does not exist); 3F invalid schema
    // name (3F000).
    matches!(class, "28" | "3D" | "3F")
        || matches!(
            code,
            // insufficient_privilege: a GRANT revoked (table, sequence, EXECUTE on a
            // ledger function) or the service connected as the wrong role.
            "42501"
            // undefined_table, undefined_function, undefined_column, undefined_object:
            // the schema is missing, older or newer than this build's migrations.
            | "42P01"
            | "42883"
            | "42703"
            | "42704"
        )
}

/// PostgreSQL's name of a systemic SQLSTATE ([`is_systemic_sqlstate`]), for what an
/// unauthenticated readiness probe and a metric may say (the server's message, which
/// names roles and tables, stays in the log).
pub fn systemic_name(code: &str) -> &'static str {
    match code {
        "42501" => "insufficient_privilege",
        "42P01" => "undefined_table",
        "42883" => "undefined_function",
        "42703" => "undefined_column",
        "42704" => "undefined_object",
        "28P01" => "invalid_password",
        "3D000" => "invalid_catalog_name",
        "3F000" => "invalid_schema_name",
        c if c.starts_with("28") => "invalid_authorization_specification",
        _ => "deployment_fault",
    }
}

/// SQLSTATE classes and codes that mean "not now" rather than "not this".
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
pub fn classify_sqlstate(code: &str) -> Fault {
    if is_systemic_sqlstate(code) {
        return Fault::Systemic;
    }
    let class = code.get(..2).unwrap_or(code);
    let transient = match class {
        // 08 connection exception; 40 transaction rollback (serialization failure,
        // deadlock, 40003 statement completion unknown); 53 insufficient resources
        // (too many connections, out of memory, disk full); 58 system error (I/O);
        // 57 operator intervention: 57014 statement timeout / cancel, 57P01-57P05
        // shutdown, crash recovery, cannot connect now, idle session timeout.
        "08" | "40" | "53" | "58" | "57" => true,
        _ => matches!(
            code,
            // read_only_sql_transaction: a failover demoted the primary (or the database
            // was switched to read-only for maintenance).
            "25006"
            // idle_in_transaction_session_timeout ended the session.
            | "25P03"
            // lock_not_available: lock_timeout expired behind a stuck holder.
            | "55P03"
            // object_in_use (e.g. a database being dropped / restored).
            | "55006" // too_many_connections is 53300 (class 53 above); cannot_connect_now 57P03.
        ),
    };
    if transient {
        Fault::Transient
    } else {
        Fault::Permanent
    }
}

/// Classification of a sqlx error.
pub fn classify(e: &sqlx::Error) -> Fault {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Fault::Transient,
        sqlx::Error::Database(db) => db
            .code()
            .map_or(Fault::Permanent, |c| classify_sqlstate(&c)),
        _ => Fault::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstate_classes_are_classified() {
        // One case per class the service can meet (SPEC §15).
        let cases = [
            ("08006", Fault::Transient), // connection failure
            ("08001", Fault::Transient), // cannot establish connection
            ("40001", Fault::Transient), // serialization failure
            ("40P01", Fault::Transient), // deadlock
            ("40003", Fault::Transient), // statement completion unknown
            ("53300", Fault::Transient), // too many connections
            ("53100", Fault::Transient), // disk full
            ("57014", Fault::Transient), // statement timeout / query cancelled
            ("57P01", Fault::Transient), // admin shutdown
            ("57P02", Fault::Transient), // crash shutdown
            ("57P03", Fault::Transient), // cannot connect now (starting up)
            ("58030", Fault::Transient), // I/O error
            ("25006", Fault::Transient), // read-only transaction (failover)
            ("25P03", Fault::Transient), // idle-in-transaction timeout
            ("55P03", Fault::Transient), // lock timeout
            ("23505", Fault::Permanent), // unique violation
            ("23502", Fault::Permanent), // not null violation
            ("22P02", Fault::Permanent), // invalid text representation
            ("42601", Fault::Permanent), // syntax error: a bug of ours, per statement
            ("P0001", Fault::Permanent), // raise exception (append-only trigger)
            ("XX000", Fault::Permanent), // internal error
            ("25P02", Fault::Permanent), // in failed transaction: a bug of ours
        ];
        for (code, want) in cases {
            assert_eq!(classify_sqlstate(code), want, "SQLSTATE {code}");
        }
    }

    #[test]
    fn deployment_faults_are_systemic() {
        // One case per SQLSTATE that is about the deployment, not the message: held
        // and alerted on, never dead-lettered.
        let cases = [
            (
                "42501",
                "insufficient privilege (GRANT revoked, wrong role)",
            ),
            ("42P01", "undefined table (schema not migrated)"),
            (
                "42883",
                "undefined function (ledger functions missing or revoked)",
            ),
            ("42703", "undefined column (schema older than this build)"),
            ("42704", "undefined object (a type or role missing)"),
            (
                "28000",
                "invalid authorization specification (role refused)",
            ),
            ("28P01", "invalid password"),
            (
                "3D000",
                "invalid catalog name (the database does not exist)",
            ),
            ("3F000", "invalid schema name"),
        ];
        for (code, what) in cases {
            assert_eq!(classify_sqlstate(code), Fault::Systemic, "{code}: {what}");
            assert!(is_systemic_sqlstate(code), "{code}");
            assert_ne!(systemic_name(code), "deployment_fault", "{code} has a name");
            assert!(Fault::Systemic.is_retried_without_end());
            assert!(!Fault::Systemic.is_transient());
        }
        // Neighbours of those codes that are about one request stay permanent.
        for code in [
            "42601", "42P02", "42804", "23505", "22P02", "P0001", "XX000",
        ] {
            assert!(!is_systemic_sqlstate(code), "{code}");
            assert_eq!(classify_sqlstate(code), Fault::Permanent, "{code}");
        }
        assert!(!Fault::Permanent.is_retried_without_end());
        assert!(Fault::Transient.is_retried_without_end());
    }

    #[test]
    fn connection_level_errors_are_transient() {
        assert!(classify(&sqlx::Error::PoolTimedOut).is_transient());
        assert!(classify(&sqlx::Error::PoolClosed).is_transient());
        assert!(classify(&sqlx::Error::Io(std::io::Error::other("reset"))).is_transient());
        assert!(classify(&sqlx::Error::Protocol("unexpected eof".into())).is_transient());
        assert!(!classify(&sqlx::Error::RowNotFound).is_transient());
        assert!(!classify(&sqlx::Error::ColumnNotFound("x".into())).is_transient());
    }

    #[test]
    fn ledger_errors_say_whether_to_retry() {
        use crate::ledger::LedgerError;
        assert!(LedgerError::Database(sqlx::Error::PoolClosed).is_transient());
        assert!(LedgerError::Connect(sqlx::Error::PoolTimedOut).is_transient());
        assert!(!LedgerError::Database(sqlx::Error::RowNotFound).is_transient());
        assert!(!LedgerError::Corrupt("altered row".into()).is_transient());
        assert!(!LedgerError::Bug("no sequence reserved".into()).is_transient());
        assert!(!LedgerError::Setup("migrations refused".into()).is_transient());
        assert!(LedgerError::Setup("migrations refused".into()).is_systemic());
        let wrong_kek = crate::keywrap::KeyWrapError::WrongKek {
            wrapped_by: "a".into(),
            configured: "b".into(),
        };
        assert!(LedgerError::SubjectKey(wrong_kek).is_systemic());
        let tampered = crate::keywrap::KeyWrapError::Tampered {
            key_id: uuid::Uuid::nil(),
            kek_id: "a".into(),
        };
        assert_eq!(LedgerError::SubjectKey(tampered).fault(), Fault::Permanent);
        assert!(!LedgerError::Bug("no sequence reserved".into()).is_systemic());
        let conflict = LedgerError::IdempotencyConflict {
            intent_id: "i".into(),
            existing_seq: 1,
            audit_seq: 2,
        };
        assert!(!conflict.is_transient());
    }
}
