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
    pub window: crate::policy::limits::WindowLabel,
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
    /// REQUIRE_HITL / REQUIRE_MSIG (SPEC §13.1): what an approver signs and needs to
    /// know, so that signing needs this message and a key, never the database.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRequest>,
    /// The bindings version that chose `policy` (SPEC §16; absent in decisions recorded
    /// before bindings were versioned, and offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<crate::ledger::events::ConfigVersion>,
}

/// The approval part of a waiting decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequest {
    /// What is to be paid, as the intent stated it: an approver decides on it.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub currency: String,
    pub category: String,
    pub purpose: String,
    #[serde(flatten)]
    pub terms: ApprovalTerms,
    /// Votes accepted so far, in ledger order: empty in the message published at
    /// decision time, current in the API's answers.
    pub approvals: Vec<ApprovalSoFar>,
}

/// What approvers sign against and until when (SPEC §13.1): in a waiting decision's
/// message and, the same values, in the outcome message that closes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalTerms {
    /// Hex SHA-256 of the recorded `intent_decided` event: a vote's signature covers it.
    pub decision_hash: String,
    /// When the intent closes as EXPIRED without its approvals.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// One accepted vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSoFar {
    pub approver_id: String,
    pub vote: crate::ledger::Vote,
    pub signed_at: chrono::DateTime<chrono::Utc>,
    pub ledger_seq: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(extra: &str) -> String {
        format!(
            r#"{{"intentId":"i","agentId":"a","entityId":"e","effect":"REQUIRE_MSIG","approvalsRequired":2,"reasons":[],"decidedAt":"2026-11-30T12:00:00Z","ledgerSeq":7{extra}}}"#
        )
    }

    #[test]
    fn the_approval_part_is_present_only_when_recorded() {
        let plain: DecisionMessage = serde_json::from_str(&message("")).unwrap();
        assert_eq!(plain.approval, None);
        assert!(
            !serde_json::to_string(&plain)
                .unwrap()
                .contains("decisionHash")
        );
        let text = message(
            r#","amount":"2500.00","currency":"BRL","category":"x","purpose":"PIX","decisionHash":"ab","expiresAt":"2026-11-30T13:00:00Z","approvals":[{"approverId":"alice","vote":"APPROVE","signedAt":"2026-11-30T12:01:00Z","ledgerSeq":9}]"#,
        );
        let waiting: DecisionMessage = serde_json::from_str(&text).unwrap();
        let approval = waiting.approval.as_ref().unwrap();
        assert_eq!(approval.terms.decision_hash, "ab");
        assert_eq!(approval.approvals[0].approver_id, "alice");
        let again: DecisionMessage =
            serde_json::from_str(&serde_json::to_string(&waiting).unwrap()).unwrap();
        assert_eq!(again, waiting);
    }
}
