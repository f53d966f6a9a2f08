//! [`PropagationProbe`]: each `serve` instance's copy of the tripped scopes.
//!
//! It gates nothing. Decisions and quorums read the ledger's `kill_switch` table inside
//! their own transaction, under the kill-switch lock, so a change is in force for every
//! instance the moment its ledger event commits, whether or not this copy has heard of
//! it. The copy exists to show how the change travels: it is restored from the ledger at
//! start-up, updated by every `spend.control` message and re-read from the ledger every
//! `kill_switch_resync_ms`, and it feeds the `spendguard_kill_switch_active{scope}` gauge,
//! the `spendguard_kill_switch_propagation_seconds` histogram, the
//! `kill-switch applied instance=… propagation_ms=…` log line and the start-up warning.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Scope;

/// The tripped scopes as this instance last heard of them (control messages and ledger
/// re-reads). Not consulted by any decision: see the module documentation.
#[derive(Debug, Default)]
pub struct PropagationProbe {
    active: RwLock<BTreeSet<Scope>>,
    /// Bumped by every control message, so a slow re-read of the ledger that started
    /// before a message arrived cannot overwrite the newer state.
    generation: AtomicU64,
}

impl PropagationProbe {
    /// The current generation; pass it to [`PropagationProbe::replace_if_unchanged`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Replaces the state read from the ledger unless a control message was applied since
    /// `generation` was taken (then that message is newer than the read). Returns whether
    /// the state was replaced.
    pub fn replace_if_unchanged(
        &self,
        generation: u64,
        active: impl IntoIterator<Item = Scope>,
    ) -> bool {
        let next: BTreeSet<Scope> = active.into_iter().collect();
        let mut guard = self.active.write().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return false;
        }
        *guard = next;
        true
    }

    /// Applies a control message.
    pub fn set(&self, scope: Scope, on: bool) {
        let mut guard = self.active.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        if on {
            guard.insert(scope);
        } else {
            guard.remove(&scope);
        }
    }

    /// The tripped scopes, broadest first.
    pub fn active(&self) -> Vec<Scope> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_set_and_clear_scopes() {
        let probe = PropagationProbe::default();
        assert!(probe.active().is_empty());
        probe.set(Scope::Agent("a2".into()), true);
        probe.set(Scope::Entity("e1".into()), true);
        probe.set(Scope::Global, true);
        assert_eq!(
            probe.active(),
            vec![
                Scope::Global,
                Scope::Entity("e1".into()),
                Scope::Agent("a2".into())
            ]
        );
        probe.set(Scope::Global, false);
        probe.set(Scope::Entity("e1".into()), false);
        assert_eq!(probe.active(), vec![Scope::Agent("a2".into())]);
        assert!(probe.replace_if_unchanged(probe.generation(), []));
        assert!(probe.active().is_empty());
    }

    #[test]
    fn a_stale_ledger_read_does_not_undo_a_newer_message() {
        let ks = PropagationProbe::default();
        let before = ks.generation();
        ks.set(Scope::Global, true);
        assert!(!ks.replace_if_unchanged(before, []));
        assert_eq!(ks.active(), vec![Scope::Global]);
        assert!(ks.replace_if_unchanged(ks.generation(), []));
        assert!(ks.active().is_empty());
    }
}
