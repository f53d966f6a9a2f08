//! Kill switch (SPEC §5): scopes, the control message on `spend.control`, and the
//! in-memory state every `serve` instance keeps.
//!
//! The ledger is the source of truth (tripping is an audited ledger event and survives
//! restarts); this module holds each instance's copy, restored from the ledger at start
//! and updated by every control message, so an instance can refuse work in scope before
//! touching anything else.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::decision::KillState;
use crate::intent::MAX_ID_LEN;

/// Longest accepted reason text.
pub const MAX_REASON_LEN: usize = 1024;

/// Where a kill switch applies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Global,
    Entity(String),
    Agent(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid kill-switch scope {given:?}: use `global`, `entity:ID` or `agent:ID` (ID 1..={MAX_ID_LEN} characters)"
)]
pub struct ScopeError {
    pub given: String,
}

impl Scope {
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let err = || ScopeError {
            given: text.chars().take(80).collect(),
        };
        let valid_id = |id: &str| {
            !id.is_empty() && id.len() <= MAX_ID_LEN && !id.chars().any(char::is_control)
        };
        match text.split_once(':') {
            None if text == "global" => Ok(Scope::Global),
            Some(("entity", id)) if valid_id(id) => Ok(Scope::Entity(id.to_string())),
            Some(("agent", id)) if valid_id(id) => Ok(Scope::Agent(id.to_string())),
            _ => Err(err()),
        }
    }

    /// True when this scope covers an intent of `agent_id` for `entity_id`.
    pub fn covers(&self, agent_id: &str, entity_id: &str) -> bool {
        match self {
            Scope::Global => true,
            Scope::Entity(e) => e == entity_id,
            Scope::Agent(a) => a == agent_id,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Entity(id) => write!(f, "entity:{id}"),
            Scope::Agent(id) => write!(f, "agent:{id}"),
        }
    }
}

impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let text = String::deserialize(d)?;
        Scope::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The message on `spend.control`. Written by `spendguard kill-switch` after the ledger
/// event is committed; `sent_at` lets each instance measure propagation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlMessage {
    pub scope: Scope,
    pub on: bool,
    pub actor: String,
    pub reason: String,
    pub sent_at: DateTime<Utc>,
}

/// Why a control message was refused. `code` values are stable (logged, asserted by tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ControlError {
    /// `malformed_control_message`, `invalid_actor` or `reason_too_long`.
    pub code: &'static str,
    pub message: String,
}

impl ControlError {
    fn new(code: &'static str, message: impl Into<String>) -> ControlError {
        ControlError {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl ControlMessage {
    pub fn parse(bytes: &[u8]) -> Result<ControlMessage, ControlError> {
        let msg: ControlMessage = serde_json::from_slice(bytes).map_err(|e| {
            ControlError::new(
                "malformed_control_message",
                format!("invalid control message: {e}"),
            )
        })?;
        if msg.actor.is_empty() || msg.actor.len() > MAX_ID_LEN {
            return Err(ControlError::new(
                "invalid_actor",
                format!("control message actor must be 1..={MAX_ID_LEN} characters"),
            ));
        }
        if msg.reason.len() > MAX_REASON_LEN {
            return Err(ControlError::new(
                "reason_too_long",
                format!("control message reason is longer than {MAX_REASON_LEN} characters"),
            ));
        }
        Ok(msg)
    }
}

/// The set of tripped scopes. Reads vastly outnumber writes (every intent reads, an
/// operator writes), hence a `RwLock` over a small ordered set.
#[derive(Debug, Default)]
pub struct KillSwitch {
    active: RwLock<BTreeSet<Scope>>,
    /// Bumped by every control message, so a slow re-read of the ledger that started
    /// before a message arrived cannot overwrite the newer state.
    generation: AtomicU64,
}

impl KillSwitch {
    pub fn new(active: impl IntoIterator<Item = Scope>) -> KillSwitch {
        KillSwitch {
            active: RwLock::new(active.into_iter().collect()),
            generation: Default::default(),
        }
    }

    /// The current generation; pass it to [`KillSwitch::replace_if_unchanged`].
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

    /// Replaces the whole state (restore from the ledger).
    pub fn replace(&self, active: impl IntoIterator<Item = Scope>) {
        let next: BTreeSet<Scope> = active.into_iter().collect();
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = next;
    }

    pub fn set(&self, scope: Scope, on: bool) {
        let mut guard = self.active.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        if on {
            guard.insert(scope);
        } else {
            guard.remove(&scope);
        }
    }

    pub fn active(&self) -> Vec<Scope> {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The state the evaluator sees for an intent: the broadest tripped scope covering it.
    pub fn state_for(&self, agent_id: &str, entity_id: &str) -> KillState {
        let guard = self.active.read().unwrap_or_else(|p| p.into_inner());
        guard
            .iter()
            .find(|s| s.covers(agent_id, entity_id))
            .map_or(KillState::Off, |s| KillState::On {
                scope: s.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print_round_trip() {
        for text in ["global", "entity:acme-br", "agent:agent-42", "agent:a:b"] {
            assert_eq!(Scope::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "", "globe", "entity:", "agent", "team:x", "Global", "global:x",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(Scope::parse(&format!("agent:{}", "a".repeat(MAX_ID_LEN + 1))).is_err());
    }

    #[test]
    fn state_covers_by_scope() {
        let ks = KillSwitch::default();
        assert_eq!(ks.state_for("a1", "e1"), KillState::Off);
        ks.set(Scope::Entity("e1".into()), true);
        assert_eq!(
            ks.state_for("a1", "e1"),
            KillState::On {
                scope: "entity:e1".into()
            }
        );
        assert_eq!(ks.state_for("a1", "e2"), KillState::Off);
        ks.set(Scope::Agent("a2".into()), true);
        assert_eq!(
            ks.state_for("a2", "e2"),
            KillState::On {
                scope: "agent:a2".into()
            }
        );
        ks.set(Scope::Global, true);
        assert_eq!(
            ks.state_for("zz", "zz"),
            KillState::On {
                scope: "global".into()
            }
        );
        ks.set(Scope::Global, false);
        ks.set(Scope::Entity("e1".into()), false);
        assert_eq!(ks.state_for("a1", "e1"), KillState::Off);
        ks.replace([]);
        assert!(ks.active().is_empty());
    }

    #[test]
    fn a_stale_ledger_read_does_not_undo_a_newer_message() {
        let ks = KillSwitch::default();
        let before = ks.generation();
        ks.set(Scope::Global, true);
        assert!(!ks.replace_if_unchanged(before, []));
        assert_eq!(ks.active(), vec![Scope::Global]);
        assert!(ks.replace_if_unchanged(ks.generation(), []));
        assert!(ks.active().is_empty());
    }

    #[test]
    fn control_message_round_trips_and_rejects_garbage() {
        let msg = ControlMessage {
            scope: Scope::Agent("a1".into()),
            on: true,
            actor: "ops-alice".into(),
            reason: "runaway agent".into(),
            sent_at: Utc::now(),
        };
        let bytes = serde_json::to_vec(&msg).unwrap();
        assert_eq!(ControlMessage::parse(&bytes).unwrap(), msg);
        assert_eq!(
            ControlMessage::parse(b"not json").unwrap_err().code(),
            "malformed_control_message"
        );
        let text = String::from_utf8(bytes).unwrap();
        let bad_scope =
            ControlMessage::parse(text.replace("agent:a1", "team:x").as_bytes()).unwrap_err();
        assert_eq!(bad_scope.code(), "malformed_control_message");
        assert!(bad_scope.to_string().contains("scope"));
        let no_actor = text.replace("ops-alice", "");
        assert_eq!(
            ControlMessage::parse(no_actor.as_bytes())
                .unwrap_err()
                .code(),
            "invalid_actor"
        );
        let long = text.replace("runaway agent", &"r".repeat(MAX_REASON_LEN + 1));
        assert_eq!(
            ControlMessage::parse(long.as_bytes()).unwrap_err().code(),
            "reason_too_long"
        );
    }
}
