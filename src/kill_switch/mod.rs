//! Kill switch (SPEC §5): one type, one authority.
//!
//! - [`Scope`] (`scope.rs`) is where a switch applies, and [`Scope::parse`] the one
//!   validator of scope text, used by the CLI, the HTTP API, `spend.control` messages,
//!   the ledger ([`Ledger::set_kill_switch`](crate::ledger::Ledger::set_kill_switch)) and
//!   the ledger's state machine.
//! - [`record_then_announce`] (`change.rs`) is the one way a switch is changed, by
//!   `spendguard kill-switch` and `POST /v1/kill-switch` alike: the audited ledger event
//!   first, then a [`ControlMessage`] on `spend.control` so every instance hears of it.
//! - The ledger is the authority: every decision and every quorum reads the
//!   `kill_switch` table inside its own transaction, under the kill-switch lock
//!   (docs/ledger.md). Nothing in memory gates a decision; the copy each `serve` instance
//!   keeps is a [`PropagationProbe`] (`probe.rs`): it measures and shows how fast a change
//!   reaches the instance (gauge, histogram, log line).

mod change;
mod probe;
mod scope;

pub use change::{Announcer, Change, ChangeError, record_then_announce};
pub use probe::PropagationProbe;
pub use scope::{Scope, ScopeError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::intent::MAX_ID_LEN;

/// Longest accepted reason text.
pub const MAX_REASON_LEN: usize = 1024;

/// The message on `spend.control`, written by [`record_then_announce`] after the ledger
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

#[cfg(test)]
mod tests {
    use super::*;

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
