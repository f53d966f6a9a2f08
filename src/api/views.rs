//! The JSON shapes the API returns. Amounts are decimal strings in the policy's currency
//! (never floats); instants are RFC 3339 UTC.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::{Effect, PolicyIdentity};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<ReadinessCheck>,
}

/// One dependency's state (`postgres`, `broker`, `partitions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReadinessCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReasonView {
    pub effect: Effect,
    pub code: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionUsageView {
    pub daily_so_far: String,
    pub monthly_so_far: String,
    /// Local day of the window, `YYYY-MM-DD`.
    pub day: String,
    pub tz: String,
}

/// An approval vote as recorded, accepted or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoteView {
    pub approver_id: String,
    /// `APPROVE` or `REJECT`.
    pub vote: String,
    pub accepted: bool,
    /// Why a refused vote was refused (stable code), absent when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_reason: Option<String>,
    #[schemars(with = "String")]
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeView {
    /// `APPROVED`, `REJECTED`, `EXPIRED`, `KILLED` or `CANCELLED` (by the payment
    /// service while waiting).
    pub outcome: String,
    pub approvers: Vec<String>,
    #[schemars(with = "String")]
    pub recorded_at: DateTime<Utc>,
}

/// A recorded decision with everything that happened to it since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub amount: String,
    pub currency: String,
    pub category: String,
    pub purpose: String,
    pub effect: Effect,
    pub approvals_required: u32,
    /// Every finding, most severe first.
    pub reasons: Vec<ReasonView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<DecisionUsageView>,
    #[schemars(with = "String")]
    pub decided_at: DateTime<Utc>,
    pub ledger_seq: i64,
    pub votes: Vec<VoteView>,
    /// Absent while the intent waits for approval, and for decisions that never waited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<OutcomeView>,
    /// What became of the money (SPEC §11): present once the intent is authorized (ALLOW,
    /// or APPROVED after a wait); absent for denied, waiting and closed-unapproved intents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<AuthorizationView>,
}

/// An authorization's running totals (SPEC §11), amounts in the intent's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationView {
    /// What the decision (or the approval) authorized.
    pub authorized: String,
    /// Sum of the CAPTUREs (forced captures after expiry included).
    pub captured: String,
    /// Released by VOIDs and by the uncaptured remainder of a final capture.
    pub voided: String,
    pub refunded: String,
    /// Authorized − captured − voided, while neither final nor expired; this is what the
    /// usage windows still hold for the uncaptured part.
    pub outstanding: String,
    /// No capture or void may follow (a final capture, or nothing left).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// `authorizationTtl` passed before it was final: the ledger released the remainder
    /// (AUTH_EXPIRED). A later capture is still recorded, flagged `capture_after_expiry`.
    pub expired: bool,
    #[schemars(with = "String")]
    pub expires_at: DateTime<Utc>,
}

/// One usage window of an agent, in the policy's currency and timezone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowUsageView {
    /// `day` or `month`.
    pub window: String,
    /// `YYYY-MM-DD` for a day, `YYYY-MM` for a month (local to `timezone`).
    pub period: String,
    /// Committed spend of the intents accepted in this window (SPEC §11): what their
    /// authorizations still hold (authorized − captured − voided, not expired) plus what
    /// was captured, minus refunds under `refunds: restore`. A VOID, the remainder of a
    /// final capture or an expiry lowers it; a forced capture raises it again.
    pub spent: String,
    /// Held by intents still waiting for approval.
    pub reserved: String,
    /// Cap minus spent minus reserved (never below zero); absent when the policy has no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining: Option<String>,
    #[schemars(with = "String")]
    pub resets_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentUsageView {
    pub agent_id: String,
    pub entity_id: String,
    pub policy: PolicyIdentity,
    pub currency: String,
    pub timezone: String,
    #[schemars(with = "String")]
    pub as_of: DateTime<Utc>,
    pub windows: Vec<WindowUsageView>,
    /// Every limit of the policy (SPEC §12), agent- and entity-scoped, read at the
    /// ledger's clock (`limitsAsOf`); empty when the policy has none.
    #[serde(default)]
    pub limits: Vec<LimitUsageView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub limits_as_of: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingApprovalView {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub amount: String,
    pub currency: String,
    pub effect: Effect,
    pub approvals_required: u32,
    pub approvals_received: u32,
    #[schemars(with = "String")]
    pub decided_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyIdentity>,
    /// Every finding of the decision, most severe first.
    #[serde(default)]
    pub reasons: Vec<ReasonView>,
    /// The agent's usage the decision was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<DecisionUsageView>,
    /// What a vote's signature covers with the intentId (SPEC §13.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_hash: Option<String>,
    /// Votes accepted so far, in ledger order.
    #[serde(default)]
    pub approvals: Vec<ApprovalSoFarView>,
    /// The decision message as published on `spend.decisions`, with the approvals so
    /// far: save it to a file for `spendguard approve --decision FILE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub decision: Option<crate::decision::DecisionMessage>,
}

/// An accepted vote on a waiting intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSoFarView {
    pub approver_id: String,
    /// `APPROVE` (a REJECT closes the intent).
    pub vote: String,
    #[schemars(with = "String")]
    pub signed_at: DateTime<Utc>,
    pub ledger_seq: i64,
}

/// `POST /v1/approvals/{intentId}/votes`: the message of `spend.approvals` (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoteBody {
    pub intent_id: String,
    pub approver_id: String,
    /// `APPROVE` or `REJECT`.
    pub vote: String,
    /// Base64 Ed25519 signature over the v2 signing message (docs/api.md).
    pub signature: String,
    /// RFC 3339; signed exactly as sent.
    pub signed_at: String,
}

/// `POST /v1/approvals/{intentId}/votes` accepted the vote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoteAcceptedView {
    /// Always `accepted` (a refused vote is a 422 error with the refusal's code).
    pub result: String,
    /// The `vote_accepted` event.
    pub ledger_seq: i64,
    /// `APPROVED`, `REJECTED` or `KILLED` when this vote closed the intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PendingApprovals {
    pub approvals: Vec<PendingApprovalView>,
}

/// One tripped kill-switch scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KillSwitchScopeView {
    /// `global`, `entity:ID` or `agent:ID`.
    pub scope: String,
    pub on: bool,
    pub actor: String,
    pub reason: String,
    #[schemars(with = "String")]
    pub since: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KillSwitchStatus {
    /// Scopes currently tripped; empty when nothing is.
    pub active: Vec<KillSwitchScopeView>,
}

/// `POST /v1/kill-switch`. The actor is the token's configured name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillSwitchRequest {
    /// `global`, `entity:ID` or `agent:ID`.
    #[schemars(with = "String")]
    pub scope: crate::kill_switch::Scope,
    /// `true` trips the switch, `false` clears it.
    pub on: bool,
    /// Why (recorded in the audit trail), 1..=1024 characters.
    pub reason: String,
}

/// `POST /v1/fx-rates` (SPEC §12.3). The actor is the token's configured name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FxRateRequest {
    /// `BASE/QUOTE` ISO 4217 codes, e.g. `USD/BRL`: the rate is QUOTE per one BASE.
    pub pair: String,
    /// Positive decimal as a JSON string, e.g. `"5.4321"`: at most 12 significant
    /// digits, no sign or exponent. A JSON number is refused (never read through a float).
    #[serde(deserialize_with = "decimal_string")]
    #[schemars(with = "String")]
    pub rate: String,
    /// Why (recorded in the audit trail), 1..=1024 bytes without control characters.
    pub reason: String,
}

/// Only a JSON string: `5.4321` as a number is refused with a message saying so.
fn decimal_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("the rate as a decimal string like \"5.4321\" (JSON numbers are refused: they may pass through a float)")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_str(V)
}

/// The answer to `POST /v1/fx-rates`: the rate as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FxRateSetView {
    /// `USD/BRL`.
    pub pair: String,
    /// Decimal string, e.g. `5.4321`.
    pub rate: String,
    /// The `fx_rate_set` event's ledger sequence (decisions converted at this rate name
    /// it in their `currency_converted` reason).
    pub seq: i64,
}

/// One pair's latest rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FxRateView {
    /// `USD/BRL`: QUOTE per one BASE.
    pub pair: String,
    /// Decimal string, e.g. `5.4321`.
    pub rate: String,
    #[schemars(with = "String")]
    pub set_at: DateTime<Utc>,
    /// The `fx_rate_set` event that recorded it.
    pub ledger_seq: i64,
}

/// `GET /v1/fx-rates`: the latest rate of every pair, by pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FxRates {
    pub rates: Vec<FxRateView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyView {
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub currency: String,
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActivePolicies {
    pub policies: Vec<PolicyView>,
}

/// One limit of a policy (SPEC §12) as it stands at the ledger's clock: the numbers the
/// next decision starts from. Amount fields are present iff the limit has an `amount`,
/// count fields iff it has a `count`; amounts are in the policy's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitUsageView {
    pub name: String,
    /// `agent` or `entity` (summed over every agent of the entity).
    pub scope: String,
    /// The current window: `week of 2026-11-23`, `trailing 24h`, `all time`, ...
    pub window: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_used: Option<String>,
    /// `amount − amountUsed`, never below zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_remaining: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_used: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_remaining: Option<u32>,
    /// Calendar windows (not `all time`): when the window ends and usage starts over.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub resets_at: Option<DateTime<Utc>>,
    /// Trailing windows with something in them: when the earliest intent counted ages
    /// out (its acceptance + the window's length).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub frees_next_at: Option<DateTime<Utc>>,
}

/// The entity-scoped limits of one policy bound to an entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityPolicyUsageView {
    pub policy: PolicyIdentity,
    pub currency: String,
    pub timezone: String,
    /// The ledger's clock when the limits were read.
    #[schemars(with = "String")]
    pub as_of: DateTime<Utc>,
    pub limits: Vec<LimitUsageView>,
}

/// `GET /v1/entities/{entityId}/usage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityUsageView {
    pub entity_id: String,
    /// Policies bound to the entity (its entity binding or `default`, then those of the
    /// agents the ledger has seen under it), each with its entity-scoped limits; policies
    /// without entity-scoped limits are left out.
    pub policies: Vec<EntityPolicyUsageView>,
}
