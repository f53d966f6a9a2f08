//! Which policy governs which agent (SPEC §2 "Binding"): `policies/bindings.yaml` maps agent
//! and entity globs to policy names. Agent over entity over `default`; the agent never
//! chooses its policy, and an agent nothing covers gets no policy (DENY `no_policy_bound`).

use super::compile::glob_match;
use super::error::PolicyError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The bindings file as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BindingsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<super::model::ApiVersion>,
    /// `PolicyBindings` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<BindingsKind>,
    /// Policy for agents no agent or entity pattern covers. Without it such agents are denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// Entity id pattern -> policy name.
    #[serde(default)]
    pub entities: BTreeMap<String, String>,
    /// Agent id pattern -> policy name. Wins over entity bindings.
    #[serde(default)]
    pub agents: BTreeMap<String, String>,
    /// Candidates evaluated beside the enforced policy on live traffic, never enforced
    /// (SPEC §16 "Shadow mode"); resolved with the same rules as the enforced bindings.
    #[serde(default, skip_serializing_if = "ShadowBindings::is_empty")]
    pub shadow: ShadowBindings,
}

/// The `shadow:` section: agent and entity patterns -> candidate policy name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShadowBindings {
    #[serde(default)]
    pub entities: BTreeMap<String, String>,
    #[serde(default)]
    pub agents: BTreeMap<String, String>,
}

impl ShadowBindings {
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty() && self.agents.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BindingsKind {
    PolicyBindings,
}

#[derive(Debug, Clone)]
struct Binding {
    pattern: String,
    is_glob: bool,
    /// Non-wildcard characters: the more, the more specific.
    literal_len: usize,
    policy: String,
}

/// Compiled bindings: for each level, patterns ordered most specific first.
#[derive(Debug, Clone)]
pub struct Bindings {
    agents: Vec<Binding>,
    entities: Vec<Binding>,
    default: Option<String>,
    /// Canonical JSON of what decides (default, entities, agents; not the envelope):
    /// what `bindings_activated` records and hashes (SPEC §16).
    canonical: String,
    shadow_agents: Vec<Binding>,
    shadow_entities: Vec<Binding>,
}

impl Default for Bindings {
    /// No bindings file: every agent is unbound (a version of its own once activated).
    fn default() -> Bindings {
        Bindings::from_file(&BindingsFile::default())
    }
}

impl Bindings {
    pub fn parse(text: &str, origin: &str) -> Result<(Bindings, BindingsFile), PolicyError> {
        let file: BindingsFile = super::compile::from_text(text, origin)?;
        Ok((Bindings::from_file(&file), file))
    }

    pub fn from_file(file: &BindingsFile) -> Bindings {
        let content = BindingsFile {
            api_version: None,
            kind: None,
            ..file.clone()
        };
        Bindings {
            agents: compile_level(&file.agents),
            entities: compile_level(&file.entities),
            default: file.default.clone(),
            canonical: crate::ledger::events::canonical(&content),
            shadow_agents: compile_level(&file.shadow.agents),
            shadow_entities: compile_level(&file.shadow.entities),
        }
    }

    /// Name of the shadow candidate for this agent, by the rules of [`Bindings::resolve`]
    /// (there is no shadow `default`).
    pub fn resolve_shadow(&self, agent_id: &str, entity_id: &str) -> Option<&str> {
        best(&self.shadow_agents, agent_id).or_else(|| best(&self.shadow_entities, entity_id))
    }

    /// Whether any shadow candidate is bound (deciding skips the lookup otherwise).
    pub fn has_shadow(&self) -> bool {
        !self.shadow_agents.is_empty() || !self.shadow_entities.is_empty()
    }

    /// Bindings as `bindings_activated` recorded them ([`Bindings::canonical`]).
    pub fn from_canonical(text: &str) -> Result<Bindings, PolicyError> {
        Bindings::parse(text, "recorded bindings").map(|(b, _)| b)
    }

    /// The canonical content (what the ledger records and hashes).
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Hex SHA-256 of [`Bindings::canonical`].
    pub fn sha256(&self) -> String {
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            self.canonical.as_bytes(),
        ))
    }

    /// Name of the policy for this agent: the most specific agent pattern, else the most
    /// specific entity pattern, else `default`. Specificity: an exact id beats any glob;
    /// among globs the one with more literal characters wins; ties go to the pattern
    /// that sorts first, so the answer never depends on file order.
    pub fn resolve(&self, agent_id: &str, entity_id: &str) -> Option<&str> {
        best(&self.agents, agent_id)
            .or_else(|| best(&self.entities, entity_id))
            .or(self.default.as_deref())
    }

    /// Name of the policy an entity's own binding gives: the most specific entity
    /// pattern, else `default` (agent patterns are not consulted).
    pub fn resolve_entity(&self, entity_id: &str) -> Option<&str> {
        best(&self.entities, entity_id).or(self.default.as_deref())
    }

    /// Every policy name referenced, with where (`agents["x"]`, `default`).
    pub fn references(&self) -> Vec<(String, &str)> {
        let mut v: Vec<(String, &str)> = Vec::new();
        for b in &self.agents {
            v.push((format!("agents[{:?}]", b.pattern), &b.policy));
        }
        for b in &self.entities {
            v.push((format!("entities[{:?}]", b.pattern), &b.policy));
        }
        if let Some(d) = &self.default {
            v.push(("default".into(), d));
        }
        for b in &self.shadow_agents {
            v.push((format!("shadow.agents[{:?}]", b.pattern), &b.policy));
        }
        for b in &self.shadow_entities {
            v.push((format!("shadow.entities[{:?}]", b.pattern), &b.policy));
        }
        v
    }
}

fn compile_level(map: &BTreeMap<String, String>) -> Vec<Binding> {
    let mut v: Vec<Binding> = map
        .iter()
        .map(|(pattern, policy)| Binding {
            is_glob: pattern.contains(['*', '?']),
            literal_len: pattern.chars().filter(|c| *c != '*' && *c != '?').count(),
            pattern: pattern.clone(),
            policy: policy.clone(),
        })
        .collect();
    // Exact ids first, then globs by literal length (desc), then pattern (the map's order).
    v.sort_by(|a, b| {
        a.is_glob
            .cmp(&b.is_glob)
            .then(b.literal_len.cmp(&a.literal_len))
            .then(a.pattern.cmp(&b.pattern))
    });
    v
}

fn best<'a>(level: &'a [Binding], id: &str) -> Option<&'a str> {
    level
        .iter()
        .find(|b| {
            if b.is_glob {
                glob_match(b.pattern.as_bytes(), id.as_bytes())
            } else {
                b.pattern == id
            }
        })
        .map(|b| b.policy.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_over_entity_over_default_and_most_specific_glob() {
        let (b, _) = Bindings::parse(
            "default: d\nentities:\n  \"acme-*\": e\n  acme-br: e2\nagents:\n  \"agent-*\": a\n  \"agent-inv*\": a2\n  agent-42: a3\n",
            "b.yaml",
        )
        .unwrap();
        assert_eq!(b.resolve("agent-42", "x"), Some("a3"));
        assert_eq!(b.resolve("agent-invest", "x"), Some("a2"));
        assert_eq!(b.resolve("agent-1", "acme-br"), Some("a"));
        assert_eq!(b.resolve("bot-1", "acme-br"), Some("e2"));
        assert_eq!(b.resolve("bot-1", "acme-us"), Some("e"));
        assert_eq!(b.resolve("bot-1", "other"), Some("d"));
        let (none, _) = Bindings::parse("agents:\n  a: p\n", "b.yaml").unwrap();
        assert_eq!(none.resolve("b", "e"), None);
    }

    /// SPEC §16: a bindings version is its content: order, format and the envelope are
    /// not a change; what is recorded resolves as the file did.
    #[test]
    fn canonical_content_ignores_order_format_and_envelope() {
        let (a, _) = Bindings::parse(
            "default: d\nagents:\n  x: a\n  \"y*\": b\nentities:\n  e: c\n",
            "b.yaml",
        )
        .unwrap();
        let (b, _) = Bindings::parse(
            "{\"apiVersion\": \"policy.spendguard.v1\", \"kind\": \"PolicyBindings\", \"entities\": {\"e\": \"c\"}, \"agents\": {\"y*\": \"b\", \"x\": \"a\"}, \"default\": \"d\"}",
            "b.json",
        )
        .unwrap();
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(a.sha256(), b.sha256());
        let (c, _) = Bindings::parse("default: d\nagents:\n  x: a\n", "b.yaml").unwrap();
        assert_ne!(a.sha256(), c.sha256());
        assert_ne!(Bindings::default().sha256(), a.sha256());
        let back = Bindings::from_canonical(a.canonical()).unwrap();
        assert_eq!(back.sha256(), a.sha256());
        assert_eq!(back.resolve("y1", "z"), Some("b"));
        assert_eq!(back.resolve("q", "e"), Some("c"));
    }

    #[test]
    fn shadow_candidates_resolve_apart_from_the_enforced_policy() {
        let (b, _) = Bindings::parse(
            "entities:\n  acme-br: enforced\nshadow:\n  entities:\n    \"acme-*\": cand\n  agents:\n    agent-7: cand7\n",
            "b.yaml",
        )
        .unwrap();
        assert!(b.has_shadow());
        assert_eq!(b.resolve("agent-1", "acme-br"), Some("enforced"));
        assert_eq!(b.resolve_shadow("agent-1", "acme-br"), Some("cand"));
        assert_eq!(b.resolve_shadow("agent-7", "acme-br"), Some("cand7"));
        assert_eq!(b.resolve_shadow("agent-1", "other"), None);
        assert!(
            b.references()
                .iter()
                .any(|(at, n)| at.starts_with("shadow.") && *n == "cand7")
        );
        let (plain, _) = Bindings::parse("default: d\n", "b.yaml").unwrap();
        assert!(!plain.has_shadow());
        assert!(Bindings::parse("shadow:\n  default: x\n", "b.yaml").is_err());
    }
}
