//! The vocabulary of a decision (SPEC §2.1, §3): effects, findings, the evaluator's
//! result, and the usage it was computed from.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Severity-ordered: `Allow < RequireHitl < RequireMsig < Deny` (deny overrides).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Effect {
    Allow,
    RequireHitl,
    RequireMsig,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "ALLOW",
            Effect::RequireHitl => "REQUIRE_HITL",
            Effect::RequireMsig => "REQUIRE_MSIG",
            Effect::Deny => "DENY",
        }
    }

    pub fn parse(s: &str) -> Option<Effect> {
        [
            Effect::Allow,
            Effect::RequireHitl,
            Effect::RequireMsig,
            Effect::Deny,
        ]
        .into_iter()
        .find(|e| e.as_str() == s)
    }

    /// True when the intent waits for a human (or a quorum) before it may proceed.
    pub fn needs_approval(self) -> bool {
        matches!(self, Effect::RequireHitl | Effect::RequireMsig)
    }
}

impl std::fmt::Display for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's contribution: `(effect, code, detail)`. Codes are stable API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub effect: Effect,
    pub code: Cow<'static, str>,
    pub detail: Cow<'static, str>,
    /// Approvals this finding requires (MSIG findings; HITL = 1; others 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approvals: u32,
}

/// The agent's spend so far in the windows containing the intent (committed + reserved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    #[serde(with = "rust_decimal::serde::str")]
    pub daily_so_far: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub monthly_so_far: Decimal,
}

/// The kill switch as the evaluator sees it: which scope (if any) covers this intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillState {
    Off,
    /// Tripped for a scope covering the intent: `"global"`, `"entity:acme"`, `"agent:a1"`.
    On {
        scope: String,
    },
}

/// The evaluator's answer: the most severe finding's effect, the largest approval count
/// required, and every finding, most severe first (stable within one severity: check order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    pub effect: Effect,
    pub approvals_required: u32,
    pub reasons: Vec<Finding>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A loaded policy's identity, recorded with every decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PolicyIdentity {
    pub name: String,
    pub version: String,
    /// Hex SHA-256 of the policy's canonical form (formatting and key order do not matter).
    pub sha256: String,
}

/// The window the usage was read from (SPEC §3 `usage.window`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRef {
    /// Local calendar day, `YYYY-MM-DD`.
    pub day: chrono::NaiveDate,
    /// Local calendar month, `YYYY-MM`.
    pub month: String,
    /// IANA timezone of the policy.
    pub tz: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    #[serde(with = "rust_decimal::serde::str")]
    pub daily_so_far: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub monthly_so_far: Decimal,
    pub window: WindowRef,
    /// What counted toward each of the policy's limits before this intent (SPEC §12).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitUsage>,
}

/// One limit's usage before an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LimitUsage {
    pub name: String,
    /// `week of 2026-11-23`, `trailing 24h`, `all time`.
    pub window: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub amount_so_far: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_so_far: Option<u32>,
}

/// The decision message published on `spend.decisions` (SPEC §3). `ledgerSeq` is absent
/// for offline evaluation (`spendguard evaluate`); `policy` is absent only when no policy
/// is bound to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionMessage {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub effect: Effect,
    pub approvals_required: u32,
    pub reasons: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageReport>,
    pub decided_at: chrono::DateTime<chrono::Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_seq: Option<i64>,
}
