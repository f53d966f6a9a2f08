//! The event catalogue: every fact the ledger records, with its payload. Payloads are
//! serialized from these typed structs into one fixed form (keys in field order: a
//! dependency turns on `serde_json`'s `preserve_order`, so keys are not sorted; maps are
//! `BTreeMap`s) and stored as the exact text that was hashed. docs/ledger.md lists them
//! for auditors.

use crate::decision::{Evaluation, KillState, PolicyIdentity, UsageReport};
use crate::intent::SpendIntent;
use crate::privacy::Sealed;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Event types as stored (stable: auditors' tooling keys on them). Code matches on
/// [`EventKind`] / [`LedgerEvent`] variants; these strings are the stored names only.
pub mod kind {
    pub const POLICY_ACTIVATED: &str = "policy_activated";
    pub const INTENT_DECIDED: &str = "intent_decided";
    pub const INTENT_INVALID: &str = "intent_invalid";
    pub const IDEMPOTENCY_CONFLICT: &str = "idempotency_conflict";
    pub const VOTE_ACCEPTED: &str = "vote_accepted";
    pub const VOTE_REFUSED: &str = "vote_refused";
    pub const INTENT_CLOSED: &str = "intent_closed";
    pub const KILL_SWITCH_SET: &str = "kill_switch_set";
    pub const SUBJECT_ERASED: &str = "subject_erased";
    pub const MESSAGE_SET_ASIDE: &str = "message_set_aside";
    pub const SETTLEMENT_APPLIED: &str = "settlement_applied";
    pub const SETTLEMENT_REFUSED: &str = "settlement_refused";
    pub const AUTHORIZATION_EXPIRED: &str = "authorization_expired";
    pub const FX_RATE_SET: &str = "fx_rate_set";
    pub const POLICY_SET_REFUSED: &str = "policy_set_refused";
    pub const SUBJECT_KEYS_REWRAPPED: &str = "subject_keys_rewrapped";
    pub const REGISTRY_ACTIVATED: &str = "registry_activated";
    pub const BINDINGS_ACTIVATED: &str = "bindings_activated";
    pub const POLICY_PROMOTED: &str = "policy_promoted";
    pub const REFUSALS_SUMMARIZED: &str = "refusals_summarized";

    pub const ALL: [&str; 20] = [
        POLICY_ACTIVATED,
        INTENT_DECIDED,
        INTENT_INVALID,
        IDEMPOTENCY_CONFLICT,
        VOTE_ACCEPTED,
        VOTE_REFUSED,
        INTENT_CLOSED,
        KILL_SWITCH_SET,
        SUBJECT_ERASED,
        MESSAGE_SET_ASIDE,
        SETTLEMENT_APPLIED,
        SETTLEMENT_REFUSED,
        AUTHORIZATION_EXPIRED,
        FX_RATE_SET,
        POLICY_SET_REFUSED,
        SUBJECT_KEYS_REWRAPPED,
        REGISTRY_ACTIVATED,
        BINDINGS_ACTIVATED,
        POLICY_PROMOTED,
        REFUSALS_SUMMARIZED,
    ];
}

/// The type of an event (one per [`LedgerEvent`] variant).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    PolicyActivated,
    IntentDecided,
    IntentInvalid,
    IdempotencyConflict,
    VoteAccepted,
    VoteRefused,
    IntentClosed,
    KillSwitchSet,
    SubjectErased,
    MessageSetAside,
    SettlementApplied,
    SettlementRefused,
    AuthorizationExpired,
    FxRateSet,
    PolicySetRefused,
    SubjectKeysRewrapped,
    RegistryActivated,
    BindingsActivated,
    PolicyPromoted,
    RefusalsSummarized,
}

impl EventKind {
    pub const ALL: [EventKind; 20] = [
        EventKind::PolicyActivated,
        EventKind::IntentDecided,
        EventKind::IntentInvalid,
        EventKind::IdempotencyConflict,
        EventKind::VoteAccepted,
        EventKind::VoteRefused,
        EventKind::IntentClosed,
        EventKind::KillSwitchSet,
        EventKind::SubjectErased,
        EventKind::MessageSetAside,
        EventKind::SettlementApplied,
        EventKind::SettlementRefused,
        EventKind::AuthorizationExpired,
        EventKind::FxRateSet,
        EventKind::PolicySetRefused,
        EventKind::SubjectKeysRewrapped,
        EventKind::RegistryActivated,
        EventKind::BindingsActivated,
        EventKind::PolicyPromoted,
        EventKind::RefusalsSummarized,
    ];

    /// The stored name (`ledger_event.event_type`).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::PolicyActivated => kind::POLICY_ACTIVATED,
            EventKind::IntentDecided => kind::INTENT_DECIDED,
            EventKind::IntentInvalid => kind::INTENT_INVALID,
            EventKind::IdempotencyConflict => kind::IDEMPOTENCY_CONFLICT,
            EventKind::VoteAccepted => kind::VOTE_ACCEPTED,
            EventKind::VoteRefused => kind::VOTE_REFUSED,
            EventKind::IntentClosed => kind::INTENT_CLOSED,
            EventKind::KillSwitchSet => kind::KILL_SWITCH_SET,
            EventKind::SubjectErased => kind::SUBJECT_ERASED,
            EventKind::MessageSetAside => kind::MESSAGE_SET_ASIDE,
            EventKind::SettlementApplied => kind::SETTLEMENT_APPLIED,
            EventKind::SettlementRefused => kind::SETTLEMENT_REFUSED,
            EventKind::AuthorizationExpired => kind::AUTHORIZATION_EXPIRED,
            EventKind::FxRateSet => kind::FX_RATE_SET,
            EventKind::PolicySetRefused => kind::POLICY_SET_REFUSED,
            EventKind::SubjectKeysRewrapped => kind::SUBJECT_KEYS_REWRAPPED,
            EventKind::RegistryActivated => kind::REGISTRY_ACTIVATED,
            EventKind::BindingsActivated => kind::BINDINGS_ACTIVATED,
            EventKind::PolicyPromoted => kind::POLICY_PROMOTED,
            EventKind::RefusalsSummarized => kind::REFUSALS_SUMMARIZED,
        }
    }

    pub fn parse(stored: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == stored)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every fact the ledger records: what is appended, hashed, folded into projections,
/// replayed and reported. The stored form is `(kind().as_str(), payload_json())`; the
/// type and the payload cannot be paired wrongly because one value carries both.
#[derive(Debug, Clone, PartialEq)]
pub enum LedgerEvent {
    PolicyActivated(PolicyActivated),
    /// Boxed: by far the largest payload.
    IntentDecided(Box<IntentDecided<SpendIntent>>),
    IntentInvalid(InvalidInput),
    IdempotencyConflict(IdempotencyConflict),
    VoteAccepted(VoteAccepted),
    VoteRefused(VoteRefused),
    /// Boxed: the reservation, settlement and approval terms make it the largest.
    IntentClosed(Box<IntentClosed>),
    KillSwitchSet(KillSwitchSet),
    SubjectErased(SubjectErased),
    MessageSetAside(MessageSetAside),
    /// Boxed: carries the authorization's state.
    SettlementApplied(Box<SettlementApplied>),
    SettlementRefused(SettlementRefused),
    AuthorizationExpired(Box<AuthorizationExpired>),
    FxRateSet(FxRateSet),
    PolicySetRefused(PolicySetRefused),
    SubjectKeysRewrapped(SubjectKeysRewrapped),
    RegistryActivated(ConfigActivated),
    BindingsActivated(ConfigActivated),
    PolicyPromoted(Box<PolicyPromoted>),
    RefusalsSummarized(RefusalsSummarized),
}

/// A stored event that cannot be read back as a [`LedgerEvent`].
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{kind} payload does not parse: {source}")]
    Payload {
        kind: EventKind,
        source: serde_json::Error,
    },
}

impl LedgerEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            LedgerEvent::PolicyActivated(_) => EventKind::PolicyActivated,
            LedgerEvent::IntentDecided(_) => EventKind::IntentDecided,
            LedgerEvent::IntentInvalid(_) => EventKind::IntentInvalid,
            LedgerEvent::IdempotencyConflict(_) => EventKind::IdempotencyConflict,
            LedgerEvent::VoteAccepted(_) => EventKind::VoteAccepted,
            LedgerEvent::VoteRefused(_) => EventKind::VoteRefused,
            LedgerEvent::IntentClosed(_) => EventKind::IntentClosed,
            LedgerEvent::KillSwitchSet(_) => EventKind::KillSwitchSet,
            LedgerEvent::SubjectErased(_) => EventKind::SubjectErased,
            LedgerEvent::MessageSetAside(_) => EventKind::MessageSetAside,
            LedgerEvent::SettlementApplied(_) => EventKind::SettlementApplied,
            LedgerEvent::SettlementRefused(_) => EventKind::SettlementRefused,
            LedgerEvent::AuthorizationExpired(_) => EventKind::AuthorizationExpired,
            LedgerEvent::FxRateSet(_) => EventKind::FxRateSet,
            LedgerEvent::PolicySetRefused(_) => EventKind::PolicySetRefused,
            LedgerEvent::SubjectKeysRewrapped(_) => EventKind::SubjectKeysRewrapped,
            LedgerEvent::RegistryActivated(_) => EventKind::RegistryActivated,
            LedgerEvent::BindingsActivated(_) => EventKind::BindingsActivated,
            LedgerEvent::PolicyPromoted(_) => EventKind::PolicyPromoted,
            LedgerEvent::RefusalsSummarized(_) => EventKind::RefusalsSummarized,
        }
    }

    /// The canonical JSON text that is stored and hashed.
    pub fn payload_json(&self) -> String {
        match self {
            LedgerEvent::PolicyActivated(p) => canonical(p),
            LedgerEvent::IntentDecided(p) => canonical(p),
            LedgerEvent::IntentInvalid(p) => canonical(p),
            LedgerEvent::IdempotencyConflict(p) => canonical(p),
            LedgerEvent::VoteAccepted(p) => canonical(p),
            LedgerEvent::VoteRefused(p) => canonical(p),
            LedgerEvent::IntentClosed(p) => canonical(p),
            LedgerEvent::KillSwitchSet(p) => canonical(p),
            LedgerEvent::SubjectErased(p) => canonical(p),
            LedgerEvent::MessageSetAside(p) => canonical(p),
            LedgerEvent::SettlementApplied(p) => canonical(p),
            LedgerEvent::SettlementRefused(p) => canonical(p),
            LedgerEvent::AuthorizationExpired(p) => canonical(p),
            LedgerEvent::FxRateSet(p) => canonical(p),
            LedgerEvent::PolicySetRefused(p) => canonical(p),
            LedgerEvent::SubjectKeysRewrapped(p) => canonical(p),
            LedgerEvent::RegistryActivated(p) | LedgerEvent::BindingsActivated(p) => canonical(p),
            LedgerEvent::PolicyPromoted(p) => canonical(p),
            LedgerEvent::RefusalsSummarized(p) => canonical(p),
        }
    }

    /// Reads an event whose payload was already parsed as JSON (reports), without
    /// turning it back into text.
    pub fn parse_value(
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<LedgerEvent, EventError> {
        let kind = EventKind::parse(event_type)
            .ok_or_else(|| EventError::UnknownType(event_type.to_string()))?;
        LedgerEvent::decode(kind, payload).map_err(|source| EventError::Payload { kind, source })
    }

    /// Reads a stored event (type name and payload text).
    pub fn parse(event_type: &str, payload: &str) -> Result<LedgerEvent, EventError> {
        let kind = EventKind::parse(event_type)
            .ok_or_else(|| EventError::UnknownType(event_type.to_string()))?;
        let mut de = serde_json::Deserializer::from_str(payload);
        LedgerEvent::decode(kind, &mut de)
            .and_then(|event| de.end().map(|()| event))
            .map_err(|source| EventError::Payload { kind, source })
    }

    /// The payload of a `kind` event, from any JSON source (text or a parsed value).
    fn decode<'de, D>(kind: EventKind, de: D) -> Result<LedgerEvent, D::Error>
    where
        D: serde::Deserializer<'de>,
    {
        Ok(match kind {
            EventKind::PolicyActivated => {
                LedgerEvent::PolicyActivated(Deserialize::deserialize(de)?)
            }
            EventKind::IntentDecided => {
                LedgerEvent::IntentDecided(Box::new(Deserialize::deserialize(de)?))
            }
            EventKind::IntentInvalid => LedgerEvent::IntentInvalid(Deserialize::deserialize(de)?),
            EventKind::IdempotencyConflict => {
                LedgerEvent::IdempotencyConflict(Deserialize::deserialize(de)?)
            }
            EventKind::VoteAccepted => LedgerEvent::VoteAccepted(Deserialize::deserialize(de)?),
            EventKind::VoteRefused => LedgerEvent::VoteRefused(Deserialize::deserialize(de)?),
            EventKind::IntentClosed => {
                LedgerEvent::IntentClosed(Box::new(Deserialize::deserialize(de)?))
            }
            EventKind::KillSwitchSet => LedgerEvent::KillSwitchSet(Deserialize::deserialize(de)?),
            EventKind::SubjectErased => LedgerEvent::SubjectErased(Deserialize::deserialize(de)?),
            EventKind::MessageSetAside => {
                LedgerEvent::MessageSetAside(Deserialize::deserialize(de)?)
            }
            EventKind::SettlementApplied => {
                LedgerEvent::SettlementApplied(Box::new(Deserialize::deserialize(de)?))
            }
            EventKind::SettlementRefused => {
                LedgerEvent::SettlementRefused(Deserialize::deserialize(de)?)
            }
            EventKind::AuthorizationExpired => {
                LedgerEvent::AuthorizationExpired(Box::new(Deserialize::deserialize(de)?))
            }
            EventKind::FxRateSet => LedgerEvent::FxRateSet(Deserialize::deserialize(de)?),
            EventKind::PolicySetRefused => {
                LedgerEvent::PolicySetRefused(Deserialize::deserialize(de)?)
            }
            EventKind::SubjectKeysRewrapped => {
                LedgerEvent::SubjectKeysRewrapped(Deserialize::deserialize(de)?)
            }
            EventKind::RegistryActivated => {
                LedgerEvent::RegistryActivated(Deserialize::deserialize(de)?)
            }
            EventKind::BindingsActivated => {
                LedgerEvent::BindingsActivated(Deserialize::deserialize(de)?)
            }
            EventKind::PolicyPromoted => {
                LedgerEvent::PolicyPromoted(Box::new(Deserialize::deserialize(de)?))
            }
            EventKind::RefusalsSummarized => {
                LedgerEvent::RefusalsSummarized(Deserialize::deserialize(de)?)
            }
        })
    }
}

/// Where an event came from (PCI DSS 10.2.2 "origination of event").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Service instance (host/pod name) that wrote the event.
    pub instance: String,
    /// `kafka`, `cli` or `api`.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
}

impl Origin {
    pub fn cli(instance: &str) -> Origin {
        Origin {
            instance: instance.to_string(),
            source: "cli".into(),
            partition: None,
            offset: None,
        }
    }

    pub fn kafka(instance: &str, partition: i32, offset: i64) -> Origin {
        Origin {
            instance: instance.to_string(),
            source: "kafka".into(),
            partition: Some(partition),
            offset: Some(offset),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyActivated {
    pub policy: PolicyIdentity,
    /// The full canonical policy, so replay can re-evaluate with exactly this version.
    pub canonical: String,
    /// Set when this content was activated before (a rollback, or the files returning
    /// to an earlier content): the seq of its first activation, whose row in
    /// `policy_version` already holds it. Absent in first activations (and in events
    /// written before SPEC §16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactivates: Option<i64>,
    /// Set by `policy rollback`: the revision (1, 2, ... per policy name in activation
    /// order, as `policy history` numbers them) whose content this restores, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<PolicyRollback>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRollback {
    pub to_revision: i64,
    pub reason: String,
}

/// Which configuration a [`ConfigActivated`] event versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigKind {
    /// The approver registry (`approvers.yaml`): who may vote, with which key.
    Registry,
    /// The policy bindings (`bindings.yaml`): which policy governs which agent.
    Bindings,
}

impl ConfigKind {
    /// As stored in `config_version.kind`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConfigKind::Registry => "registry",
            ConfigKind::Bindings => "bindings",
        }
    }
}

/// A version of the approver registry or of the bindings, as the ledger numbered it
/// (SPEC §14, §16): recorded with the decisions and votes that used it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigVersion {
    /// 1, 2, ... per kind, in activation order.
    pub version: i64,
    /// Hex SHA-256 of the canonical content.
    pub sha256: String,
}

/// `registry_activated` / `bindings_activated`: a content different from the last one
/// activated came into force. Content seen before gets a new version number (like a
/// policy rollback: the ledger shows it came back), the same as the last one none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigActivated {
    pub version: i64,
    pub sha256: String,
    /// The full canonical content (the registry with every public key), so replay and
    /// `audit verify-votes` need nothing but the ledger.
    pub canonical: String,
    /// Who activated it (the serve instance, `ledger-submit`, an operator).
    pub actor: String,
}

impl ConfigActivated {
    pub fn version(&self) -> ConfigVersion {
        ConfigVersion {
            version: self.version,
            sha256: self.sha256.clone(),
        }
    }
}

/// `I` is how the recorded intent is read: a JSON value by default; replay reads it
/// straight into a `SpendIntent` (it was written from one), saving a tree per event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntentDecided<I = serde_json::Value> {
    /// The intent with `beneficiary.account` masked and every PAN-looking string masked.
    pub intent: I,
    /// `{"account": ...}` sealed for the beneficiary (data subject); erasable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personal: Option<Sealed>,
    /// Hex HMAC of the intent's canonical form (idempotency).
    pub fingerprint: String,
    pub accepted_at: DateTime<Utc>,
    /// The kill switch as seen inside the deciding transaction.
    pub kill: KillState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyIdentity>,
    /// Usage seen before this intent (committed + reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageReport>,
    pub evaluation: Evaluation,
    /// For HITL / MSIG: when the approval window closes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// The policy's `authorizationTtl` in seconds (absent in events written before
    /// SPEC §11: those authorizations use the default of 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_ttl_secs: Option<i64>,
    /// An intent in an accepted foreign currency: the rate used and the converted
    /// amount every cap, limit and window saw (SPEC §12.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fx: Option<FxConversion>,
    /// HITL / MSIG: the decision message carries what approvers sign (SPEC §13.1:
    /// `decisionHash`, `expiresAt`, the intent's amount, ...). False in events written
    /// before that, so replay rebuilds their messages as they were published.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval_message: bool,
    /// The bindings version that chose `policy` (absent in events written before
    /// bindings were versioned, and when the caller decided without a recorded set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bindings: Option<ConfigVersion>,
    /// What the shadow candidate bound to this agent would have decided on the same
    /// state (SPEC §16 "Shadow mode"): recorded, never enforced, never published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowDecision>,
}

/// A shadow candidate made the enforced policy of the patterns it shadowed (SPEC §16
/// "Promotion gate"), with the evidence the gate passed on: an audit record; the new
/// bindings take effect when they are loaded (and are recorded then).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPromoted {
    pub policy: PolicyIdentity,
    pub actor: String,
    /// The period the evidence covers (UTC days, inclusive).
    pub from: chrono::NaiveDate,
    pub to: chrono::NaiveDate,
    /// `agents["pattern"]` / `entities["pattern"]`: the bindings that now enforce it.
    pub patterns: Vec<String>,
    pub thresholds: PromotionThresholds,
    /// Replay of the period under the candidate with its own windows.
    pub impact: PromotionEvidence,
    /// The candidate's live shadow decisions in the period.
    pub shadow: PromotionEvidence,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionThresholds {
    pub max_deny_to_allow: u64,
    /// Most intents recorded as anything but ALLOW (a human's approval included) the
    /// candidate would auto-allow.
    #[serde(default)]
    pub max_newly_allowed: u64,
    /// Percent of the compared intents an ALLOW may turn into anything else.
    pub max_tightening_pct: rust_decimal::Decimal,
}

/// The numbers of one comparison (impact or shadow) a promotion was judged on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PromotionEvidence {
    pub intents: u64,
    pub unchanged: u64,
    pub deny_to_allow: u64,
    /// Decisions recorded as anything but ALLOW the candidate would auto-allow (DENY,
    /// REQUIRE_HITL, REQUIRE_MSIG → ALLOW).
    #[serde(default)]
    pub newly_allowed: u64,
    /// ALLOW decisions the candidate would not allow.
    pub tightened: u64,
    pub tightening_pct: rust_decimal::Decimal,
    pub transitions: std::collections::BTreeMap<String, u64>,
}

/// A shadow candidate's would-be decision, evaluated by the one decision rule
/// (`machine::verdict`) on the projections the enforced decision saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDecision {
    pub policy: PolicyIdentity,
    pub effect: crate::decision::Effect,
    #[serde(default)]
    pub approvals_required: u32,
    /// The codes of the findings that determined it, in the evaluator's order.
    #[serde(default)]
    pub codes: Vec<String>,
}

/// A conversion recorded with a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FxConversion {
    /// `USD/BRL`: one unit of the intent's currency in the policy's.
    pub pair: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: rust_decimal::Decimal,
    /// The `fx_rate_set` event the rate comes from.
    pub rate_seq: i64,
    /// The intent's amount in the policy currency (rounded half-up to its minor unit).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: rust_decimal::Decimal,
    pub currency: String,
    /// The intent's own amount (in the pair's base currency).
    #[serde(with = "rust_decimal::serde::str")]
    pub intent_amount: rust_decimal::Decimal,
}

/// An exchange rate set by an operator (SPEC §12.3): `rate` units of `quote` per unit
/// of `base`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FxRateSet {
    pub base: String,
    pub quote: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: rust_decimal::Decimal,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidInput {
    /// The input as text, PANs masked, cut at `MAX_RAW_STORED_BYTES` (the original bytes
    /// go to the dead-letter topic).
    pub raw: String,
    pub raw_bytes: usize,
    pub truncated: bool,
    /// Keyed fingerprint of the original bytes (ties this event to the DLQ message).
    pub raw_fingerprint: String,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyConflict {
    pub intent_id: String,
    pub fingerprint: String,
    pub existing_fingerprint: String,
    pub existing_seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteAccepted {
    pub intent_id: String,
    pub approver_id: String,
    pub vote: String,
    pub signed_at: DateTime<Utc>,
    /// The signature as verified, so an auditor can check it again later with the
    /// registry of the time (absent in events recorded before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<VoteProof>,
}

/// What a vote's signature covered that the event does not already hold, and the
/// signature itself (SPEC §14).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteProof {
    /// Base64 Ed25519 signature.
    pub signature: String,
    /// `signedAt` exactly as signed (the signed bytes hold the text, not the instant).
    pub signed_at: String,
    /// Hex decision hash the signature covers.
    pub decision_hash: String,
    /// The registry version the signature was verified under (absent before registry
    /// versions were recorded, and for a registry never activated in the ledger).
    /// Boxed: keeps `vote_accepted` small among the events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<Box<ConfigVersion>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VoteRefused {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote: Option<String>,
    pub reason: String,
    pub detail: String,
    /// For refusals before the ledger: the message as received (PANs masked, cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IntentClosed {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub outcome: String,
    pub approvers: Vec<String>,
    pub closed_at: DateTime<Utc>,
    /// The reservation this outcome moves (APPROVED) or releases (others).
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: rust_decimal::Decimal,
    pub currency: String,
    pub tz: String,
    pub day: chrono::NaiveDate,
    pub month: chrono::NaiveDate,
    /// Kill-switch scope that stopped an approval (KILLED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_scope: Option<String>,
    /// APPROVED: when the authorization it opens expires (absent in events written
    /// before SPEC §11: 7 days after `closedAt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_expires_at: Option<DateTime<Utc>>,
    /// CANCELLED: the settlement message that cancelled it (idempotency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement: Option<SettlementRef>,
    /// APPROVED in a foreign currency: the authorization is kept in the intent's
    /// currency and amount, its usage converted at `rate` (SPEC §12.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fx: Option<ClosedFx>,
    /// The accepted votes up to and including the closing one (SPEC §13.1: outcome
    /// messages carry the approvals too). Absent in events written before that, and in
    /// CANCELLED.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub votes: Vec<ClosingVote>,
    /// APPROVED / REJECTED / KILLED / EXPIRED: what the decision required and what its
    /// approvers signed against, for the outcome message (SPEC §13.1). Absent in events
    /// written before that, and in CANCELLED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals_required: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terms: Option<crate::decision::ApprovalTerms>,
}

/// An accepted vote as an outcome reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosingVote {
    pub approver_id: String,
    /// `APPROVE` or `REJECT`.
    pub vote: String,
    pub signed_at: DateTime<Utc>,
}

/// The intent's own amount and currency, and the rate of its decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClosedFx {
    #[serde(with = "rust_decimal::serde::str")]
    pub intent_amount: rust_decimal::Decimal,
    pub intent_currency: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: rust_decimal::Decimal,
}

/// A settlement message as the ledger identifies it: its id and keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementRef {
    pub settlement_id: String,
    pub fingerprint: String,
}

/// A CAPTURE, VOID or REFUND applied to an authorization (SPEC §11), with the state it
/// left: the fold copies `authorization`; replay re-runs the step to check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementApplied {
    pub settlement: SettlementRef,
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    #[serde(rename = "type")]
    pub kind: crate::settlement::SettlementType,
    /// As sent (`None`: a VOID of the whole remainder).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    pub requested: Option<rust_decimal::Decimal>,
    #[serde(rename = "final")]
    pub is_final: bool,
    /// What it applied, and what a final capture released.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: rust_decimal::Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub released: rust_decimal::Decimal,
    /// A capture after the authorization expired (`capture_after_expiry`).
    pub forced: bool,
    /// A refund under `refunds: restore` (the policy's, when it was applied).
    pub restores: bool,
    /// Added to the original acceptance's usage windows.
    #[serde(with = "rust_decimal::serde::str")]
    pub usage_delta: rust_decimal::Decimal,
    pub authorization: crate::ledger::authorization::AuthorizationState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// The message's metadata, PANs masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

impl SettlementApplied {
    /// The settlement message this event applied (metadata as stored: masked), for
    /// re-running the step (replay, impact analysis).
    pub fn settlement(&self) -> crate::settlement::Settlement {
        crate::settlement::Settlement {
            settlement_id: self.settlement.settlement_id.clone(),
            intent_id: self.intent_id.clone(),
            kind: self.kind,
            amount: self.requested,
            // Only a settlement in the authorization's currency is ever applied.
            currency: self.requested.map(|_| self.authorization.currency.clone()),
            is_final: self.is_final,
            occurred_at: self.occurred_at,
            metadata: self.metadata.clone(),
        }
    }
}

/// An authorization released by the ledger after `authorizationTtl` (AUTH_EXPIRED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationExpired {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub released: rust_decimal::Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub usage_delta: rust_decimal::Decimal,
    pub authorization: crate::ledger::authorization::AuthorizationState,
}

/// A settlement message refused (SPEC §11): by the ledger (`exceeds_remainder`, ...)
/// or before it (malformed: the intents' parse codes, with the masked input).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettlementRefused {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settlement_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent_id: Option<String>,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub code: String,
    pub detail: String,
    /// Keyed fingerprint of the settlement (parsed) or of the raw bytes (malformed).
    pub fingerprint: String,
    /// Malformed input as received: PANs masked, cut at `MAX_RAW_STORED_BYTES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KillSwitchSet {
    pub scope: String,
    pub active: bool,
    pub actor: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectErased {
    pub subject: String,
    pub key_ids: Vec<uuid::Uuid>,
    pub actor: String,
}

/// `subject_keys_rewrapped`: subject keys wrapped anew under `to_kek_id`, by a KEK
/// rotation or by the first start with a KEK (keys then stored in clear). One event per
/// batch, in the same transaction as the rows it changed; the key material is never in
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectKeysRewrapped {
    /// The KEKs that wrapped these keys before, sorted; `clear` for keys that were
    /// stored unwrapped.
    pub from_kek_ids: Vec<String>,
    pub to_kek_id: String,
    pub key_ids: Vec<uuid::Uuid>,
    pub actor: String,
}

/// `policy_set_refused`: a policies directory the service would not activate (at start-up
/// or on a hot reload) because it does not load or has lint errors (SPEC §16); the last
/// good set kept deciding (or, at start-up, the service did not start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySetRefused {
    /// The policies directory as the instance sees it.
    pub dir: String,
    /// `startup` or `reload`.
    pub stage: String,
    /// Every reason: each lint error, or the error that stopped loading.
    pub errors: Vec<PolicyRefusalReason>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRefusalReason {
    /// The lint or parse error code (`pattern_allowed_and_blocked`, `syntax_error`, ...).
    pub code: String,
    pub message: String,
    /// `policy NAME` for a lint, `file:line:column` for a load error.
    pub location: String,
}

/// The one JSON text of a payload: fields in declaration order, maps sorted (BTreeMap),
/// no insignificant whitespace.
pub fn canonical<T: Serialize>(payload: &T) -> String {
    // Serializing our own plain structs to a Value cannot fail (no non-string map keys).
    serde_json::to_value(payload)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "null".to_string())
}

/// Refused input of one source beyond the full-audit bound of a window
/// ([`crate::audit_budget`]): counted by code instead of one event each. Every Kafka
/// message counted here was dead-lettered with its bytes; an HTTP one was answered 400.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusalsSummarized {
    /// Logical topic (`spend.intents`, `spend.approvals`, `spend.settlements`); for the
    /// HTTP API the topic its body stands for.
    pub source_topic: String,
    /// `kafka` or `api`.
    pub source: String,
    /// The Kafka partition and the offsets of the first and last message counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_offset: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_offset: Option<i64>,
    /// The window (the instance's clock): refusals in it were audited one by one up to
    /// `audited`, the rest counted here.
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub audited: u32,
    /// Counted refusals by stable code, and their sum.
    pub counts: std::collections::BTreeMap<String, u64>,
    pub total: u64,
}

/// A message the service could neither handle nor dead-letter after bounded retries
/// (SPEC §15): its partition moved on past it; this is what remains of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSetAside {
    /// Logical topic (`spend.intents`, `spend.approvals`).
    pub source_topic: String,
    pub raw_bytes: usize,
    /// Keyed fingerprint, as in `intent_invalid` events (never a plain hash: a short
    /// message holding only a card number could be brute-forced from one).
    pub raw_fingerprint: String,
    /// Why it was set aside (the last stable code: e.g. `dead_letter_refused`).
    pub code: String,
    pub detail: String,
}
