//! Systemic faults this instance is waiting out (SPEC §15, issue 16): the database
//! refuses every request alike because the deployment is wrong (privileges revoked,
//! schema missing, credentials refused). The tasks that meet one hold their work and
//! retry ([`super::retry_bounded`]); this is where they say so, for the readiness
//! probe, the `spendguard_ledger_systemic_fault` gauge and the log.
//!
//! Two kinds of reporters: calls held in a retry loop (workers, the synchronous API)
//! hold a [`Held`] while they wait; background tasks (outbox publisher, expiry sweeper,
//! chain verification, webhooks, checkpoints) retry on their own tick, so each reports
//! the outcome of its latest ledger call with [`SystemicFaults::observe`].

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::ledger::LedgerError;

/// The calls currently held on a systemic fault, and the last reason given.
#[derive(Debug, Default)]
pub struct SystemicFaults {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Calls being retried on a systemic fault right now (several workers can be).
    held: usize,
    /// The classified reason of the latest one (no server text: readiness shows it).
    reason: Option<String>,
    /// Background tasks whose latest ledger call met a systemic fault, with its reason.
    tasks: BTreeMap<&'static str, String>,
}

impl State {
    fn faulty(&self) -> bool {
        self.held > 0 || !self.tasks.is_empty()
    }
}

/// While alive, one call is held on a systemic fault; dropping it (the call succeeded,
/// failed otherwise, or the instance stops) releases it.
#[must_use]
pub struct Held<'a> {
    faults: &'a SystemicFaults,
}

impl SystemicFaults {
    /// One more call held on a systemic fault, for `reason`.
    pub fn hold(&self, reason: String) -> Held<'_> {
        let mut s = self.lock();
        s.held += 1;
        s.reason = Some(reason);
        set_gauge(&s);
        Held { faults: self }
    }

    /// Records what background `task`'s latest ledger call says about the deployment:
    /// a systemic fault is reported until the task's next success; any other failure
    /// (an outage, a timeout) says nothing about it and changes nothing.
    pub fn observe<T>(&self, task: &'static str, outcome: &Result<T, LedgerError>) {
        let reason = match outcome {
            Ok(_) => None,
            Err(e) => match e.systemic_reason() {
                Some(reason) => Some(reason),
                None => return,
            },
        };
        let mut s = self.lock();
        match reason {
            Some(reason) => {
                if s.tasks.insert(task, reason.clone()).is_none() {
                    tracing::error!(
                        task,
                        reason = %reason,
                        "{task}: the deployment is at fault (systemic), not a message; retrying until an operator fixes the database (readiness reports it)"
                    );
                }
            }
            None => {
                if s.tasks.remove(task).is_some() {
                    tracing::warn!(
                        task,
                        "{task} succeeded again: the systemic fault has cleared"
                    );
                }
            }
        }
        set_gauge(&s);
    }

    /// Updates the reason a call already held gives (the fault may change while held).
    pub fn update(&self, reason: String) {
        self.lock().reason = Some(reason);
    }

    /// `Some(reason)` while at least one call is held or one background task is failing
    /// systemically (a held call's reason first: it is the one that holds decisions).
    pub fn current(&self) -> Option<String> {
        let s = self.lock();
        if s.held > 0 {
            return Some(s.reason.clone().unwrap_or_default());
        }
        s.tasks
            .iter()
            .next()
            .map(|(task, reason)| format!("{reason}, met by the {task}"))
    }

    fn release(&self) {
        let mut s = self.lock();
        s.held = s.held.saturating_sub(1);
        if s.held == 0 {
            s.reason = None;
        }
        set_gauge(&s);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn set_gauge(s: &State) {
    metrics::gauge!("spendguard_ledger_systemic_fault").set(f64::from(u8::from(s.faulty())));
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.faults.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_until_every_holder_is_released() {
        let faults = SystemicFaults::default();
        assert_eq!(faults.current(), None);
        let a = faults.hold("SQLSTATE 42501 insufficient_privilege".into());
        let b = faults.hold("SQLSTATE 42883 undefined_function".into());
        assert_eq!(
            faults.current().as_deref(),
            Some("SQLSTATE 42883 undefined_function")
        );
        drop(b);
        assert!(faults.current().is_some(), "one call is still held");
        faults.update("SQLSTATE 3D000 invalid_catalog_name".into());
        assert_eq!(
            faults.current().as_deref(),
            Some("SQLSTATE 3D000 invalid_catalog_name")
        );
        drop(a);
        assert_eq!(faults.current(), None);
    }

    fn systemic_error() -> LedgerError {
        LedgerError::Setup("migrations refused".into())
    }

    #[test]
    fn a_background_task_is_reported_until_its_next_success() {
        let faults = SystemicFaults::default();
        faults.observe("outbox publisher", &Err::<(), _>(systemic_error()));
        let reason = faults.current().expect("reported");
        assert!(reason.contains("outbox publisher"), "{reason}");
        assert!(reason.contains("database setup"), "{reason}");
        // An outage says nothing about the deployment: the report stays.
        let outage = LedgerError::Database(sqlx::Error::PoolTimedOut);
        assert!(outage.systemic_reason().is_none());
        faults.observe("outbox publisher", &Err::<(), _>(outage));
        assert!(faults.current().is_some());
        // Another task's success does not clear this one's.
        faults.observe("expiry sweeper", &Ok(()));
        assert!(faults.current().is_some());
        faults.observe("outbox publisher", &Ok(3));
        assert_eq!(faults.current(), None);
    }

    #[test]
    fn a_held_call_is_named_before_a_background_task() {
        let faults = SystemicFaults::default();
        faults.observe("expiry sweeper", &Err::<(), _>(systemic_error()));
        let held = faults.hold("SQLSTATE 42501 insufficient_privilege".into());
        assert_eq!(
            faults.current().as_deref(),
            Some("SQLSTATE 42501 insufficient_privilege")
        );
        drop(held);
        assert!(faults.current().unwrap().contains("expiry sweeper"));
    }
}
