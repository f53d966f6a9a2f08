//! Reading the ledger's events for reports: the rows of `ledger_event`, in sequence
//! order, with their payloads parsed into the few fields reports use.
//!
//! Payload fields are read by their JSON names (the canonical, hashed form documented in
//! `docs/ledger.md`), not through the ledger's Rust types, so a report keeps reading old
//! events after the ledger adds fields.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::decision::{Effect, PolicyIdentity};
use crate::ledger::LedgerError;
use crate::ledger::query::LedgerReader;

/// One row of `ledger_event`.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub resource: String,
    pub origin: serde_json::Value,
    pub payload: serde_json::Value,
}

/// Every event recorded before `until`, in sequence order.
pub async fn load_events(
    ledger: &LedgerReader,
    until: DateTime<Utc>,
) -> Result<Vec<EventRecord>, LoadError> {
    ledger
        .events_before(until, |r| EventRecord {
            seq: r.seq,
            event_type: r.event_type,
            recorded_at: r.recorded_at,
            actor: r.actor,
            resource: r.resource,
            origin: serde_json::from_str(&r.origin).unwrap_or(serde_json::Value::String(r.origin)),
            payload: serde_json::from_str(&r.payload)
                .unwrap_or(serde_json::Value::String(r.payload)),
        })
        .await
        .map_err(|e| {
            // The database's own words, as before (not "database error: ...").
            let e: &dyn std::fmt::Display = match &e {
                LedgerError::Database(e) => e,
                e => e,
            };
            LoadError(e.to_string())
        })
}

/// The events could not be read (the database's own words).
#[derive(Debug, thiserror::Error)]
#[error("cannot read ledger_event (is DATABASE_URL the ledger, migrated?): {0}")]
pub struct LoadError(String);

// ---- payload views (only what reports need) ----

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecidedView {
    pub intent: serde_json::Value,
    pub accepted_at: DateTime<Utc>,
    #[serde(default)]
    pub policy: Option<PolicyIdentity>,
    #[serde(default)]
    pub usage: Option<UsageSeen>,
    pub evaluation: EvaluationView,
    #[serde(default)]
    pub kill: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageSeen {
    #[serde(default)]
    pub window: Option<WindowSeen>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WindowSeen {
    pub day: NaiveDate,
    pub tz: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationView {
    pub effect: Effect,
    #[serde(default)]
    pub approvals_required: u32,
    #[serde(default)]
    pub reasons: Vec<ReasonSeen>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReasonSeen {
    pub effect: Effect,
    pub code: String,
    #[serde(default)]
    pub detail: String,
}

/// The fields of the (masked) intent inside an `intent_decided` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntentFacts {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub category: String,
    pub purpose: String,
    pub beneficiary_id: String,
    /// The account as stored (masked), if any.
    pub account: Option<String>,
}

impl DecidedView {
    pub fn facts(&self) -> Option<IntentFacts> {
        let i = &self.intent;
        let s = |k: &str| i.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let amount = match i.get("amount")? {
            serde_json::Value::String(t) => crate::money::parse_decimal(t).ok()?,
            serde_json::Value::Number(n) => crate::money::parse_decimal(&n.to_string()).ok()?,
            _ => return None,
        };
        let b = i.get("beneficiary");
        Some(IntentFacts {
            intent_id: s("intentId")?,
            agent_id: s("agentId")?,
            entity_id: s("entityId")?,
            amount,
            currency: s("currency")?,
            category: s("category").unwrap_or_default(),
            purpose: s("purpose").unwrap_or_default(),
            beneficiary_id: b
                .and_then(|b| b.get("id"))
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            account: b
                .and_then(|b| b.get("account"))
                .and_then(|v| v.as_str())
                .map(str::to_string),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosedView {
    pub intent_id: String,
    #[serde(default)]
    pub entity_id: Option<String>,
    pub outcome: String,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub closed_at: DateTime<Utc>,
    /// What the outcome moved (APPROVED: the amount it authorized); absent in old events.
    #[serde(default)]
    pub amount: Option<Decimal>,
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteAcceptedView {
    pub intent_id: String,
    pub approver_id: String,
    pub vote: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteRefusedView {
    #[serde(default)]
    pub intent_id: Option<String>,
    #[serde(default)]
    pub approver_id: Option<String>,
    pub reason: String,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KillSwitchView {
    pub scope: String,
    pub active: bool,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyActivatedView {
    pub policy: PolicyIdentity,
    #[serde(default)]
    pub canonical: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidView {
    pub code: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectErasedView {
    pub subject: String,
    #[serde(default)]
    pub actor: String,
}

/// `caps.daily` / `caps.monthly` of a policy's canonical JSON (bare or envelope form).
pub fn caps_of(canonical: &str) -> (Option<Decimal>, Option<Decimal>) {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(canonical) else {
        return (None, None);
    };
    let caps = v
        .get("caps")
        .or_else(|| v.get("spec").and_then(|s| s.get("caps")));
    let read = |k: &str| {
        caps.and_then(|c| c.get(k)).and_then(|x| match x {
            serde_json::Value::String(t) => crate::money::parse_decimal(t).ok(),
            serde_json::Value::Number(n) => crate::money::parse_decimal(&n.to_string()).ok(),
            _ => None,
        })
    };
    (read("daily"), read("monthly"))
}

// ---- lifecycle (SPEC §11) ----

/// The currency of the authorization a lifecycle event carries.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationSeen {
    pub currency: String,
}

/// A `settlement_applied` event: a CAPTURE, VOID or REFUND.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementAppliedView {
    pub settlement: SettlementRefView,
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub amount: Decimal,
    /// The remainder a final capture released.
    #[serde(default)]
    pub released: Decimal,
    /// A capture after the authorization expired (`capture_after_expiry`).
    #[serde(default)]
    pub forced: bool,
    pub authorization: AuthorizationSeen,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementRefView {
    pub settlement_id: String,
}

/// An `authorization_expired` event.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationExpiredView {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub released: Decimal,
    pub authorization: AuthorizationSeen,
}

/// A `settlement_refused` event (by the ledger or malformed).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementRefusedView {
    #[serde(default)]
    pub intent_id: Option<String>,
    pub code: String,
}
