//! [`Scope`]: where a kill switch applies, and [`Scope::parse`], the one validator of
//! scope text (CLI `--scope`, `POST /v1/kill-switch` bodies, `spend.control` messages).
//!
//! The text form (`global`, `entity:ID`, `agent:ID`) is what the ledger stores (table
//! `kill_switch.scope`, the `kill_switch_set` event's `scope`, `KillState::On { scope }` in
//! decisions); [`Display`](fmt::Display) writes exactly that, so existing ledgers replay.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::intent::MAX_ID_LEN;

/// Where a kill switch applies. Ordered by precedence: `Global` covers everything, then
/// an entity, then an agent (the order [`Scope::covering`] lists them in).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Global,
    Entity(String),
    Agent(String),
}

/// Why a scope text was refused. Every message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("kill-switch scope is empty: use `global`, `entity:ID` or `agent:ID`")]
    Empty,
    #[error(
        "unknown kill-switch scope {given:?}: use `global`, `entity:ID` or `agent:ID` (lower case)"
    )]
    Unknown { given: String },
    #[error("kill-switch scope `global` takes no ID (got {given:?})")]
    GlobalWithId { given: String },
    #[error("kill-switch scope `{kind}` needs an ID: `{kind}:ID`")]
    MissingId { kind: &'static str },
    #[error("kill-switch scope `{kind}:ID`: the ID is {len} bytes, at most {MAX_ID_LEN}")]
    IdTooLong { kind: &'static str, len: usize },
    #[error("kill-switch scope `{kind}:ID`: the ID contains a control character")]
    ControlCharacter { kind: &'static str },
}

impl Scope {
    /// The one validator: `global`, `entity:ID` or `agent:ID`, ID 1..=`MAX_ID_LEN`
    /// bytes without control characters (`agent:a:b` is agent `a:b`).
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        let given = || text.chars().take(80).collect::<String>();
        let (kind, id) = match text.split_once(':') {
            _ if text.is_empty() => return Err(ScopeError::Empty),
            None if text == "global" => return Ok(Scope::Global),
            Some(("global", _)) => return Err(ScopeError::GlobalWithId { given: given() }),
            None if text == "entity" || text == "agent" => (text, ""),
            Some((kind @ ("entity" | "agent"), id)) => (kind, id),
            _ => return Err(ScopeError::Unknown { given: given() }),
        };
        let kind: &'static str = if kind == "entity" { "entity" } else { "agent" };
        if id.is_empty() {
            return Err(ScopeError::MissingId { kind });
        }
        if id.len() > MAX_ID_LEN {
            return Err(ScopeError::IdTooLong {
                kind,
                len: id.len(),
            });
        }
        if id.chars().any(char::is_control) {
            return Err(ScopeError::ControlCharacter { kind });
        }
        // Agent and entity ids are masked at intake (SPEC §14): a scope naming one with
        // a card number in it matches only in its masked form.
        let id = crate::privacy::mask_pans(id);
        Ok(match kind {
            "entity" => Scope::Entity(id),
            _ => Scope::Agent(id),
        })
    }

    /// The scopes that cover an intent of `agent_id` for `entity_id`, in precedence
    /// order: global, the entity, the agent. The decision reports the first one tripped.
    pub fn covering(agent_id: &str, entity_id: &str) -> [Scope; 3] {
        [
            Scope::Global,
            Scope::Entity(entity_id.to_string()),
            Scope::Agent(agent_id.to_string()),
        ]
    }
}

/// The stored text: `global`, `entity:ID`, `agent:ID`.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Entity(id) => write!(f, "entity:{id}"),
            Scope::Agent(id) => write!(f, "agent:{id}"),
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Scope, ScopeError> {
        Scope::parse(text)
    }
}

/// As the stored text.
impl Serialize for Scope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Through [`Scope::parse`].
impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scope, D::Error> {
        let text = String::deserialize(d)?;
        Scope::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::KillState;
    use crate::ledger::machine::{Projections, kills_from_scopes};
    use std::collections::HashSet;

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
    fn parse_accepts_the_three_forms() {
        assert_eq!(Scope::parse("global"), Ok(Scope::Global));
        assert_eq!(
            Scope::parse("entity:acme-br"),
            Ok(Scope::Entity("acme-br".into()))
        );
        assert_eq!(Scope::parse("agent:a-1"), Ok(Scope::Agent("a-1".into())));
        // The first colon separates: the ID may hold more.
        assert_eq!(Scope::parse("agent:a:b"), Ok(Scope::Agent("a:b".into())));
        assert_eq!(Scope::parse("entity:ç"), Ok(Scope::Entity("ç".into())));
        let longest = "a".repeat(MAX_ID_LEN);
        assert_eq!(
            Scope::parse(&format!("agent:{longest}")),
            Ok(Scope::Agent(longest))
        );
        assert_eq!("global".parse::<Scope>(), Ok(Scope::Global));
    }

    #[test]
    fn parse_refuses_each_invalid_form_with_its_own_error() {
        let unknown = |given: &str| ScopeError::Unknown {
            given: given.into(),
        };
        let cases = [
            ("", ScopeError::Empty),
            ("globe", unknown("globe")),
            ("Global", unknown("Global")),
            ("team:x", unknown("team:x")),
            ("Agent:a1", unknown("Agent:a1")),
            (":a1", unknown(":a1")),
            (
                "global:x",
                ScopeError::GlobalWithId {
                    given: "global:x".into(),
                },
            ),
            (
                "global:",
                ScopeError::GlobalWithId {
                    given: "global:".into(),
                },
            ),
            ("entity", ScopeError::MissingId { kind: "entity" }),
            ("entity:", ScopeError::MissingId { kind: "entity" }),
            ("agent", ScopeError::MissingId { kind: "agent" }),
            ("agent:", ScopeError::MissingId { kind: "agent" }),
            (
                "agent:a\u{1}",
                ScopeError::ControlCharacter { kind: "agent" },
            ),
            (
                "entity:e\n1",
                ScopeError::ControlCharacter { kind: "entity" },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(Scope::parse(text), Err(want), "{text:?}");
        }
        let long = format!("entity:{}", "e".repeat(MAX_ID_LEN + 1));
        assert_eq!(
            Scope::parse(&long),
            Err(ScopeError::IdTooLong {
                kind: "entity",
                len: MAX_ID_LEN + 1
            })
        );
        // Long garbage is quoted truncated, and every message says what is accepted.
        let garbage = "x".repeat(500);
        let err = Scope::parse(&garbage).unwrap_err();
        assert_eq!(err, unknown(&"x".repeat(80)));
        for err in [
            err,
            ScopeError::Empty,
            ScopeError::MissingId { kind: "agent" },
        ] {
            let text = err.to_string();
            assert!(text.contains("kill-switch scope"), "{text}");
        }
        assert!(unknown("x").to_string().contains("`entity:ID`"));
    }

    #[test]
    fn serde_uses_the_stored_text_and_the_validator() {
        let scope = Scope::Entity("acme-br".into());
        assert_eq!(
            serde_json::to_string(&scope).unwrap(),
            r#""entity:acme-br""#
        );
        assert_eq!(
            serde_json::from_str::<Scope>(r#""agent:a1""#).unwrap(),
            Scope::Agent("a1".into())
        );
        let err = serde_json::from_str::<Scope>(r#""team:x""#).unwrap_err();
        assert!(
            err.to_string().contains("unknown kill-switch scope"),
            "{err}"
        );
        assert!(serde_json::from_str::<Scope>("7").is_err());
    }

    #[test]
    fn covering_lists_global_then_entity_then_agent() {
        assert_eq!(
            Scope::covering("a1", "e1").map(|s| s.to_string()),
            ["global", "entity:e1", "agent:a1"]
        );
    }

    /// The rule decisions apply (`Projections::kill_state` over [`Scope::covering`]): the
    /// broadest tripped scope covering the intent.
    #[test]
    fn state_covers_by_scope() {
        let state = |on: &[&str], agent: &str, entity: &str| {
            let scopes: HashSet<String> = on.iter().map(|s| s.to_string()).collect();
            let mut s = Projections::default();
            s.kills = kills_from_scopes(&scopes);
            s.kill_state(agent, entity)
        };
        let on = |scope: &str| KillState::On {
            scope: scope.into(),
        };
        assert_eq!(state(&[], "a1", "e1"), KillState::Off);
        assert_eq!(state(&["entity:e1"], "a1", "e1"), on("entity:e1"));
        assert_eq!(state(&["entity:e1"], "a1", "e2"), KillState::Off);
        assert_eq!(
            state(&["entity:e1", "agent:a2"], "a2", "e2"),
            on("agent:a2")
        );
        assert_eq!(
            state(&["entity:e1", "agent:a1"], "a1", "e1"),
            on("entity:e1")
        );
        assert_eq!(
            state(&["entity:e1", "agent:a2", "global"], "zz", "zz"),
            on("global")
        );
        assert_eq!(
            state(&["entity:e1", "agent:a2", "global"], "a2", "e1"),
            on("global")
        );
        assert_eq!(state(&["agent:a2"], "a1", "e1"), KillState::Off);
    }
}
