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

/// How a caller should treat a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database is unreachable, restarting, failing over, overloaded, or a timeout
    /// or a lost race ended the statement: retry with back-off.
    Transient,
    /// The request itself is refused (constraint, bad data, a bug): bounded retries,
    /// then the message is dead-lettered or set aside.
    Permanent,
}

impl Fault {
    pub fn is_transient(self) -> bool {
        self == Fault::Transient
    }
}

/// SQLSTATE classes and codes that mean "not now" rather than "not this".
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
pub fn classify_sqlstate(code: &str) -> Fault {
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
            ("42P01", Fault::Permanent), // undefined table (schema not migrated)
            ("42501", Fault::Permanent), // insufficient privilege
            ("P0001", Fault::Permanent), // raise exception (append-only trigger)
            ("XX000", Fault::Permanent), // internal error
            ("25P02", Fault::Permanent), // in failed transaction: a bug of ours
        ];
        for (code, want) in cases {
            assert_eq!(classify_sqlstate(code), want, "SQLSTATE {code}");
        }
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
        let conflict = LedgerError::IdempotencyConflict {
            intent_id: "i".into(),
            existing_seq: 1,
            audit_seq: 2,
        };
        assert!(!conflict.is_transient());
    }
}
