//! Systemic faults this instance is waiting out (SPEC §15, issue 16): the database
//! refuses every request alike because the deployment is wrong (privileges revoked,
//! schema missing, credentials refused). The tasks that meet one hold their work and
//! retry ([`super::retry_bounded`]); this is where they say so, for the readiness
//! probe, the `spendguard_ledger_systemic_fault` gauge and the log.

use std::sync::Mutex;

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
        if s.held == 1 {
            metrics::gauge!("spendguard_ledger_systemic_fault").set(1.0);
        }
        Held { faults: self }
    }

    /// Updates the reason a call already held gives (the fault may change while held).
    pub fn update(&self, reason: String) {
        self.lock().reason = Some(reason);
    }

    /// `Some(reason)` while at least one call is held.
    pub fn current(&self) -> Option<String> {
        let s = self.lock();
        (s.held > 0).then(|| s.reason.clone().unwrap_or_default())
    }

    fn release(&self) {
        let mut s = self.lock();
        s.held = s.held.saturating_sub(1);
        if s.held == 0 {
            s.reason = None;
            metrics::gauge!("spendguard_ledger_systemic_fault").set(0.0);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
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
}
