//! The ledger's state machine. Pure: no I/O, no clock, no randomness.
//!
//! - `step_*` decide which events an input produces, given a [`Projections`] snapshot
//!   (an intent, a vote, the approval windows that ended, a kill-switch change).
//! - [`delta`] is the one fold: what an event changes in the projections (usage
//!   windows, pending approvals, votes, outcomes, kill switch, policies, decisions).
//!   [`Projections::apply`] applies it in memory; `store::WriteSet` writes the same
//!   changes to the tables.
//!
//! Live deciding (`decide.rs`, `votes.rs`) loads the part of the projections a batch
//! needs under the agents' locks, calls a step, appends the events and writes their
//! delta; `replay` folds every event and re-runs `step_decide` before each decision to
//! check it reproduces; `policy impact` runs the step with a candidate policy over its
//! own fold; `evaluate` runs the step on a snapshot built from its flags. No rule about
//! what a decision does to usage exists anywhere else (TigerBeetle's prefetch / execute
//! split: the I/O loads, this module executes).

use super::authorization::{AuthorizationState, SettlementRefusal};
use super::chain::{self, Hash, INTAKE_CHAIN, agent_chain};
use super::events::{self, LedgerEvent};
use super::packed::Packed;
use super::store::{
    AgentEntityRow, AuthorizationRow, ConfigRow, DecisionRow, FxRateRow, KillRow, OutcomeRow,
    PendingRow, PolicyRow, SettlementRow, SpendRecordRow, VoteRow,
};
use super::timeline::{self, Timeline};
use super::usage::{self, UsageKey};
use super::{Outcome, OutcomeMessage, VerifiedVote, Vote};
use crate::decision::{DecisionMessage, Effect, KillState, Usage, UsageReport, WindowRef};
use crate::intent::SpendIntent;
use crate::kill_switch::Scope;
use crate::policy::{self, CompiledPolicy, EvalInput};
use crate::privacy::{self, Sealed};
use crate::settlement::{Settlement, SettlementType};
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Where an event sits once appended: what the fold needs besides the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub seq: i64,
    /// The event's hash (a decision's `decisionHash`).
    pub hash: Hash,
    pub recorded_at: DateTime<Utc>,
}

/// An event a step wants appended, with its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    pub chain_id: String,
    pub actor: String,
    pub resource: String,
    pub event: LedgerEvent,
}

/// One change to one projection row.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Added to a usage window (negative to release a reservation).
    Usage {
        key: UsageKey,
        committed: Decimal,
        reserved: Decimal,
    },
    PendingOpen(PendingRow),
    PendingClose(String),
    Vote(VoteRow),
    /// The row and the message it publishes (parsed, for the caller's result).
    Outcome {
        row: Box<OutcomeRow>,
        message: Box<OutcomeMessage>,
    },
    Kill(KillRow),
    Policy(PolicyRow),
    /// A registry or bindings version (SPEC §14, §16).
    Config(ConfigRow),
    /// The row and the message it publishes (parsed, for the caller's result).
    Decision {
        row: Box<DecisionRow>,
        message: Box<DecisionMessage>,
    },
    /// An authorization's state after the event (upserted).
    Authorization(Box<AuthorizationRow>),
    /// An applied settlementId (idempotency).
    Settlement(SettlementRow),
    /// The latest rate of a currency pair.
    FxRate(FxRateRow),
    /// An agent decided: bound to its entity unless it already is (SPEC §14).
    AgentEntity(AgentEntityRow),
    /// A new spend record (an intent that holds usage against limits).
    Record(Box<SpendRecordRow>),
    /// What an intent's record holds now.
    RecordHolds {
        intent_id: String,
        amount: Decimal,
        counts: bool,
        seq: i64,
    },
    /// A lifecycle outcome message to publish (CAPTURED, VOIDED, REFUNDED, AUTH_EXPIRED).
    Lifecycle {
        seq: i64,
        agent_id: String,
        message: Box<OutcomeMessage>,
        text: String,
    },
}

/// `USD/BRL`: units of `quote` per unit of `base`.
pub fn fx_pair(base: &str, quote: &str) -> String {
    format!("{base}/{quote}")
}

/// Default `authorizationTtl` (SPEC §11) for events recorded before it existed.
fn default_authorization_ttl() -> chrono::Duration {
    chrono::Duration::seconds(crate::policy::model::DEFAULT_AUTHORIZATION_TTL_SECS)
}

/// An event that does not fold (a payload the live path never writes).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    #[error("intent_decided seq {seq}: usage window month {month:?} is not YYYY-MM")]
    BadMonth { seq: i64, month: String },
    #[error("intent_closed seq {seq}: unknown outcome {outcome:?}")]
    BadOutcome { seq: i64, outcome: String },
    #[error("seq {seq}: {what} does not serialize: {source}")]
    Serialize {
        seq: i64,
        what: &'static str,
        source: serde_json::Error,
    },
}

/// A step that cannot produce its event (a bug, never an input problem).
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("internal: the masked intent {intent_id} does not read back: {source}")]
    MaskedIntent {
        intent_id: String,
        source: serde_json::Error,
    },
}

/// (committed, reserved) a decision adds to its windows: ALLOW commits, HITL / MSIG
/// reserve, DENY changes nothing. The one place this rule is written.
pub fn decision_usage(effect: Effect, amount: Decimal) -> (Decimal, Decimal) {
    match effect {
        Effect::Allow => (amount, Decimal::ZERO),
        Effect::RequireHitl | Effect::RequireMsig => (Decimal::ZERO, amount),
        Effect::Deny => (Decimal::ZERO, Decimal::ZERO),
    }
}

/// The decision message an `intent_decided` event stands for (`seq` absent offline).
pub fn decision_message(
    d: &events::IntentDecided<SpendIntent>,
    seq: Option<i64>,
) -> DecisionMessage {
    DecisionMessage {
        intent_id: d.intent.intent_id.clone(),
        agent_id: d.intent.agent_id.clone(),
        entity_id: d.intent.entity_id.clone(),
        effect: d.evaluation.effect,
        approvals_required: d.evaluation.approvals_required,
        reasons: d.evaluation.reasons.clone(),
        policy: d.policy.clone(),
        usage: d.usage.clone(),
        decided_at: d.accepted_at,
        ledger_seq: seq,
        approval: None,
        bindings: d.bindings.clone(),
    }
}

/// The decision message as recorded and published: with what approvers sign when the
/// intent waits for them.
fn recorded_decision_message(
    d: &events::IntentDecided<SpendIntent>,
    r: &Recorded,
) -> DecisionMessage {
    let approval = d
        .expires_at
        .filter(|_| d.approval_message && d.evaluation.effect.needs_approval())
        .map(|expires_at| crate::decision::ApprovalRequest {
            amount: d.intent.amount,
            currency: d.intent.currency.clone(),
            category: d.intent.category.clone(),
            purpose: d.intent.purpose.as_str().to_string(),
            terms: approval_terms(&r.hash, expires_at),
            approvals: Vec::new(),
        });
    DecisionMessage {
        approval,
        ..decision_message(d, Some(r.seq))
    }
}

fn config_row(kind: events::ConfigKind, a: &events::ConfigActivated, seq: i64) -> ConfigRow {
    ConfigRow {
        kind: kind.as_str().to_string(),
        version: a.version,
        sha256: a.sha256.clone(),
        canonical: a.canonical.clone(),
        actor: a.actor.clone(),
        seq,
    }
}

/// What approvers sign against: built here only, for the decision message and for the
/// outcome that closes the intent (through `Projections::waiting_hashes`).
fn approval_terms(
    decision_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> crate::decision::ApprovalTerms {
    crate::decision::ApprovalTerms {
        decision_hash: hex::encode(decision_hash),
        expires_at,
    }
}

impl Projections {
    /// The highest version of a registry or bindings `kind` folded so far.
    pub fn config_in_force(&self, kind: &str) -> Option<events::ConfigVersion> {
        self.configs
            .range((kind.to_string(), i64::MIN)..=(kind.to_string(), i64::MAX))
            .next_back()
            .map(|(_, c)| events::ConfigVersion {
                version: c.version,
                sha256: c.sha256.clone(),
            })
    }
}

/// The fold: the projection changes of one event, passed to `out` in order.
pub fn delta(
    r: &Recorded,
    event: &LedgerEvent,
    out: &mut impl FnMut(Change),
) -> Result<(), FoldError> {
    match event {
        LedgerEvent::IntentDecided(d) => decided_delta(r, d, out)?,
        LedgerEvent::IntentClosed(c) => {
            let outcome = Outcome::parse(&c.outcome).ok_or_else(|| FoldError::BadOutcome {
                seq: r.seq,
                outcome: c.outcome.clone(),
            })?;
            for (key, committed, reserved) in close_usage(c, outcome) {
                out(Change::Usage {
                    key,
                    committed,
                    reserved,
                });
            }
            out(Change::PendingClose(c.intent_id.clone()));
            let message = OutcomeMessage {
                intent_id: c.intent_id.clone(),
                agent_id: c.agent_id.clone(),
                entity_id: c.entity_id.clone(),
                outcome,
                approvers: c.approvers.clone(),
                decided_at: c.closed_at,
                closed_at: c.closed_at,
                ledger_seq: r.seq,
                settlement_id: c.settlement.as_ref().map(|s| s.settlement_id.clone()),
                amount: None,
                authorization: None,
                flags: Vec::new(),
                approvals_required: c.approvals_required,
                terms: c.terms.clone(),
                approvals: c.votes.clone(),
            };
            let text = message_text(r, "outcome message", &message)?;
            if outcome != Outcome::Approved {
                out(Change::RecordHolds {
                    intent_id: c.intent_id.clone(),
                    amount: Decimal::ZERO,
                    counts: false,
                    seq: r.seq,
                });
            }
            if outcome == Outcome::Approved {
                let expires_at = c
                    .authorization_expires_at
                    .unwrap_or_else(|| chain::to_micros(c.closed_at + default_authorization_ttl()));
                out(Change::Authorization(Box::new(AuthorizationRow {
                    intent_id: c.intent_id.clone(),
                    agent_id: c.agent_id.clone(),
                    entity_id: c.entity_id.clone(),
                    state: AuthorizationState::open(
                        c.amount,
                        &c.currency,
                        &c.tz,
                        c.day,
                        c.month,
                        expires_at,
                    ),
                    seq: r.seq,
                })));
            }
            if let Some(st) = &c.settlement {
                out(Change::Settlement(SettlementRow {
                    settlement_id: st.settlement_id.clone(),
                    intent_id: c.intent_id.clone(),
                    agent_id: c.agent_id.clone(),
                    fingerprint: fingerprint_bytes(&st.fingerprint),
                    seq: r.seq,
                    message: text.clone(),
                }));
            }
            out(Change::Outcome {
                row: Box::new(OutcomeRow {
                    intent_id: c.intent_id.clone(),
                    agent_id: c.agent_id.clone(),
                    outcome: c.outcome.clone(),
                    closed_at: c.closed_at,
                    seq: r.seq,
                    message: text,
                }),
                message: Box::new(message),
            });
        }
        LedgerEvent::VoteAccepted(v) => out(Change::Vote(VoteRow {
            intent_id: v.intent_id.clone(),
            approver_id: v.approver_id.clone(),
            vote: v.vote.clone(),
            signed_at: v.signed_at,
            seq: r.seq,
        })),
        LedgerEvent::KillSwitchSet(k) => out(Change::Kill(KillRow {
            scope: k.scope.clone(),
            active: k.active,
            actor: k.actor.clone(),
            reason: k.reason.clone(),
            changed_at: r.recorded_at,
            seq: r.seq,
        })),
        // A re-activation's content is already in `policy_version` (the first one's row).
        LedgerEvent::PolicyActivated(a) if a.reactivates.is_some() => {}
        LedgerEvent::PolicyActivated(a) => out(Change::Policy(PolicyRow {
            sha256: a.policy.sha256.clone(),
            name: a.policy.name.clone(),
            version: a.policy.version.clone(),
            canonical: a.canonical.clone(),
            seq: r.seq,
        })),
        LedgerEvent::RegistryActivated(a) => out(Change::Config(config_row(
            events::ConfigKind::Registry,
            a,
            r.seq,
        ))),
        LedgerEvent::BindingsActivated(a) => out(Change::Config(config_row(
            events::ConfigKind::Bindings,
            a,
            r.seq,
        ))),
        LedgerEvent::SettlementApplied(a) => settlement_delta(r, a, out)?,
        LedgerEvent::FxRateSet(f) => out(Change::FxRate(FxRateRow {
            pair: fx_pair(&f.base, &f.quote),
            rate: f.rate,
            set_at: r.recorded_at,
            seq: r.seq,
        })),
        LedgerEvent::AuthorizationExpired(x) => {
            let row = AuthorizationRow {
                intent_id: x.intent_id.clone(),
                agent_id: x.agent_id.clone(),
                entity_id: x.entity_id.clone(),
                state: x.authorization.clone(),
                seq: r.seq,
            };
            usage_adjustment(&row, x.usage_delta, out);
            out(record_holds(&row, r.seq));
            let message = lifecycle_message(&row, Outcome::AuthExpired, r, None, x.released, false);
            out(Change::Authorization(Box::new(row)));
            let text = outcome_text(r, &message)?;
            out(lifecycle_change(r, &x.agent_id, message, text));
        }
        // Audit-only events: they change no projection.
        LedgerEvent::IntentInvalid(_)
        | LedgerEvent::IdempotencyConflict(_)
        | LedgerEvent::VoteRefused(_)
        | LedgerEvent::SubjectErased(_)
        | LedgerEvent::SubjectKeysRewrapped(_)
        | LedgerEvent::PolicySetRefused(_)
        | LedgerEvent::MessageSetAside(_)
        | LedgerEvent::RefusalsSummarized(_)
        | LedgerEvent::SettlementRefused(_)
        | LedgerEvent::PolicyPromoted(_) => {}
    }
    Ok(())
}

/// A fingerprint recorded as hex; one that is not hex is kept visibly wrong (it cannot
/// match the live bytes).
fn fingerprint_bytes(hex_text: &str) -> Vec<u8> {
    hex::decode(hex_text).unwrap_or_else(|_| hex_text.as_bytes().to_vec())
}

fn settlement_delta(
    r: &Recorded,
    a: &events::SettlementApplied,
    out: &mut impl FnMut(Change),
) -> Result<(), FoldError> {
    let row = AuthorizationRow {
        intent_id: a.intent_id.clone(),
        agent_id: a.agent_id.clone(),
        entity_id: a.entity_id.clone(),
        state: a.authorization.clone(),
        seq: r.seq,
    };
    usage_adjustment(&row, a.usage_delta, out);
    out(record_holds(&row, r.seq));
    let outcome = match a.kind {
        SettlementType::Capture => Outcome::Captured,
        SettlementType::Void => Outcome::Voided,
        SettlementType::Refund => Outcome::Refunded,
        SettlementType::Cancel => Outcome::Cancelled,
    };
    let message = lifecycle_message(
        &row,
        outcome,
        r,
        Some(a.settlement.settlement_id.clone()),
        a.amount,
        a.forced,
    );
    let text = outcome_text(r, &message)?;
    out(Change::Settlement(SettlementRow {
        settlement_id: a.settlement.settlement_id.clone(),
        intent_id: a.intent_id.clone(),
        agent_id: a.agent_id.clone(),
        fingerprint: fingerprint_bytes(&a.settlement.fingerprint),
        seq: r.seq,
        message: text.clone(),
    }));
    out(Change::Authorization(Box::new(row)));
    out(lifecycle_change(r, &a.agent_id, message, text));
    Ok(())
}

/// What an authorization's record holds after a lifecycle event.
fn record_holds(row: &AuthorizationRow, seq: i64) -> Change {
    Change::RecordHolds {
        intent_id: row.intent_id.clone(),
        amount: row.state.usage_in_windows(),
        counts: row.state.counts(),
        seq,
    }
}

/// A lifecycle adjustment lands in the day and month windows of the original
/// acceptance (SPEC §11).
fn usage_adjustment(row: &AuthorizationRow, delta: Decimal, out: &mut impl FnMut(Change)) {
    if delta.is_zero() {
        return;
    }
    let st = &row.state;
    for (kind, start) in [(usage::DAY, st.day), (usage::MONTH, st.month)] {
        out(Change::Usage {
            key: usage::key(&row.agent_id, kind, &st.tz, st.window_currency(), start),
            committed: delta,
            reserved: Decimal::ZERO,
        });
    }
}

fn lifecycle_message(
    row: &AuthorizationRow,
    outcome: Outcome,
    r: &Recorded,
    settlement_id: Option<String>,
    amount: Decimal,
    forced: bool,
) -> OutcomeMessage {
    OutcomeMessage {
        intent_id: row.intent_id.clone(),
        agent_id: row.agent_id.clone(),
        entity_id: row.entity_id.clone(),
        outcome,
        approvers: Vec::new(),
        decided_at: r.recorded_at,
        closed_at: r.recorded_at,
        ledger_seq: r.seq,
        settlement_id,
        amount: Some(amount),
        authorization: Some(Box::new(row.state.totals())),
        flags: if forced {
            vec![CAPTURE_AFTER_EXPIRY.to_string()]
        } else {
            Vec::new()
        },
        approvals_required: None,
        terms: None,
        approvals: Vec::new(),
    }
}

/// Flag of a capture recorded after its authorization expired (SPEC §11), stable.
pub const CAPTURE_AFTER_EXPIRY: &str = "capture_after_expiry";

/// Room for a message's text before serialising it: decision messages are about 700
/// bytes, and growing a buffer from serde_json's 128 bytes reallocated it three times
/// per message (replay serialises one per decision and lifecycle event).
const MESSAGE_TEXT_CAPACITY_BYTES: usize = 1024;

/// The text a decision or outcome message is published and recorded as.
fn message_text(
    r: &Recorded,
    what: &'static str,
    message: &impl serde::Serialize,
) -> Result<String, FoldError> {
    let mut text = Vec::with_capacity(MESSAGE_TEXT_CAPACITY_BYTES);
    serde_json::to_writer(&mut text, message).map_err(|source| FoldError::Serialize {
        seq: r.seq,
        what,
        source,
    })?;
    Ok(String::from_utf8(text).expect("serde_json writes UTF-8"))
}

/// The text a lifecycle outcome message is published and recorded as.
fn outcome_text(r: &Recorded, message: &OutcomeMessage) -> Result<String, FoldError> {
    message_text(r, "lifecycle outcome message", message)
}

fn lifecycle_change(r: &Recorded, agent_id: &str, message: OutcomeMessage, text: String) -> Change {
    Change::Lifecycle {
        seq: r.seq,
        agent_id: agent_id.to_string(),
        message: Box::new(message),
        text,
    }
}

fn decided_delta(
    r: &Recorded,
    d: &events::IntentDecided<SpendIntent>,
    out: &mut impl FnMut(Change),
) -> Result<(), FoldError> {
    let intent = &d.intent;
    let message = recorded_decision_message(d, r);
    let text = message_text(r, "decision message", &message)?;
    out(Change::Decision {
        row: Box::new(DecisionRow {
            intent_id: intent.intent_id.clone(),
            agent_id: intent.agent_id.clone(),
            entity_id: intent.entity_id.clone(),
            seq: r.seq,
            // A fingerprint that is not hex cannot match the live bytes: kept visibly wrong.
            fingerprint: fingerprint_bytes(&d.fingerprint),
            decision_hash: r.hash.to_vec(),
            effect: d.evaluation.effect.as_str().to_string(),
            message: text,
        }),
        message: Box::new(message),
    });
    out(Change::AgentEntity(AgentEntityRow {
        agent_id: intent.agent_id.clone(),
        entity_id: intent.entity_id.clone(),
        seq: r.seq,
    }));
    // No policy, no windows (the intent was denied as unbound).
    let Some(u) = &d.usage else {
        return Ok(());
    };
    let month = parse_month(&u.window.month).ok_or_else(|| FoldError::BadMonth {
        seq: r.seq,
        month: u.window.month.clone(),
    })?;
    // Windows are in the policy's currency: the intent's amount, or its conversion at
    // the recorded rate (SPEC §12.3; any other currency is denied and moves nothing).
    let (amount, currency) = match &d.fx {
        Some(fx) => (fx.amount, fx.currency.as_str()),
        None => (intent.amount, intent.currency.as_str()),
    };
    let (committed, reserved) = decision_usage(d.evaluation.effect, amount);
    if !committed.is_zero() || !reserved.is_zero() {
        for (kind, start) in [(usage::DAY, u.window.day), (usage::MONTH, month)] {
            out(Change::Usage {
                key: usage::key(&intent.agent_id, kind, &u.window.tz, currency, start),
                committed,
                reserved,
            });
        }
    }
    if let Some(expires_at) = d.expires_at {
        out(Change::PendingOpen(PendingRow {
            intent_id: intent.intent_id.clone(),
            agent_id: intent.agent_id.clone(),
            entity_id: intent.entity_id.clone(),
            effect: d.evaluation.effect.as_str().to_string(),
            approvals_required: i32::try_from(d.evaluation.approvals_required.max(1))
                .unwrap_or(i32::MAX),
            amount,
            currency: currency.to_string(),
            tz: u.window.tz.clone(),
            day: u.window.day,
            month,
            decided_seq: r.seq,
            expires_at,
            authorization_ttl_secs: d
                .authorization_ttl_secs
                .unwrap_or(crate::policy::model::DEFAULT_AUTHORIZATION_TTL_SECS),
            fx_rate: d.fx.as_ref().map(|f| f.rate),
            intent_amount: d.fx.as_ref().map(|_| intent.amount),
            intent_currency: d.fx.as_ref().map(|_| intent.currency.clone()),
        }));
    }
    if d.evaluation.effect != Effect::Deny {
        out(Change::Record(Box::new(SpendRecordRow {
            intent_id: intent.intent_id.clone(),
            agent_id: intent.agent_id.clone(),
            entity_id: intent.entity_id.clone(),
            accepted_at: d.accepted_at,
            category: intent.category.clone(),
            beneficiary_id: intent.beneficiary.id.clone(),
            country: intent.beneficiary.country.clone(),
            purpose: intent.purpose.as_str().to_string(),
            currency: currency.to_string(),
            amount,
            counts: true,
            seq: r.seq,
        })));
    }
    if d.evaluation.effect == Effect::Allow {
        let ttl = d
            .authorization_ttl_secs
            .map_or_else(default_authorization_ttl, chrono::Duration::seconds);
        let mut state = AuthorizationState::open(
            amount,
            currency,
            &u.window.tz,
            u.window.day,
            month,
            chain::to_micros(d.accepted_at + ttl),
        );
        if let Some(fx) = &d.fx {
            state = state.in_foreign_currency(intent.amount, &intent.currency, fx.rate);
        }
        out(Change::Authorization(Box::new(AuthorizationRow {
            intent_id: intent.intent_id.clone(),
            agent_id: intent.agent_id.clone(),
            entity_id: intent.entity_id.clone(),
            state,
            seq: r.seq,
        })));
    }
    Ok(())
}

/// Usage change of an outcome: APPROVED moves the reservation to committed (in the
/// windows of the request), anything else releases it.
fn close_usage(c: &events::IntentClosed, outcome: Outcome) -> [(UsageKey, Decimal, Decimal); 2] {
    let committed = if outcome == Outcome::Approved {
        c.amount
    } else {
        Decimal::ZERO
    };
    [(usage::DAY, c.day), (usage::MONTH, c.month)].map(|(kind, start)| {
        (
            usage::key(&c.agent_id, kind, &c.tz, &c.currency, start),
            committed,
            -c.amount,
        )
    })
}

fn parse_month(yyyy_mm: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(&format!("{yyyy_mm}-01"), "%Y-%m-%d").ok()
}

// ---------------------------------------------------------------------------------
// Projections
// ---------------------------------------------------------------------------------

/// Strings that repeat across many window keys (agent ids, time zones, currencies),
/// stored once; window keys then hold small numbers (replay holds every window of a
/// ledger: SPEC §10's memory target).
///
/// The names sit one after the other in one `String`, found by a 64-bit hash of their
/// text (an `Arc<str>` per name plus a map keyed by it were 8.6 MB of replay's peak at
/// 100,000 agents). Two names with the same hash are told apart by their text.
#[derive(Debug, Default, Clone)]
struct Interner {
    text: String,
    /// Where name `i` ends in `text` (it starts where name `i - 1` ends).
    ends: Vec<u32>,
    /// Hash of a name → its id: the first name with that hash.
    ids: HashMap<u64, u32, std::hash::BuildHasherDefault<PassHasher>>,
    /// Later names with a hash an earlier name has (never seen in practice).
    collided: HashMap<u64, Vec<u32>>,
    /// Seeded per interner: names are agent ids, chosen by whoever sends intents, and
    /// `ids` buckets by the hash itself, so it must not be predictable (it was SipHash
    /// with a fixed key, also three times slower on replay's hot path).
    seed: foldhash::fast::RandomState,
}

/// The projections' large maps. Their keys are digests (an intent id's SHA-256) or small
/// interned numbers, so SipHash's cost buys nothing here; foldhash is seeded per
/// process, so keys chosen to collide still cannot be aimed at its buckets.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// For keys that are already hashes.
#[derive(Debug, Default, Clone, Copy)]
struct PassHasher(u64);

impl std::hash::Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl Interner {
    fn hash(&self, s: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.seed, s)
    }

    fn lookup(&self, h: u64, s: &str) -> Option<u32> {
        let first = *self.ids.get(&h)?;
        if self.name(first) == s {
            return Some(first);
        }
        self.collided
            .get(&h)?
            .iter()
            .copied()
            .find(|&id| self.name(id) == s)
    }

    fn intern(&mut self, s: &str) -> u32 {
        self.intern_hashed(self.hash(s), s)
    }

    fn intern_hashed(&mut self, h: u64, s: &str) -> u32 {
        if let Some(id) = self.lookup(h, s) {
            return id;
        }
        let id = u32::try_from(self.ends.len()).expect("fewer than 2^32 distinct names");
        self.text.push_str(s);
        self.ends
            .push(u32::try_from(self.text.len()).expect("names under 4 GiB"));
        match self.ids.entry(h) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(id);
            }
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.entry(h).or_default().push(id);
            }
        }
        id
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.lookup(self.hash(s), s)
    }

    fn name(&self, id: u32) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.text[start..self.ends[i] as usize]
    }
}

/// A usage window key with its strings interned (16 bytes instead of four `String`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WindowKey {
    agent: u32,
    tz: u32,
    currency: u32,
    day_window: bool,
    start: NaiveDate,
}

/// Usage windows: (committed, reserved) per window.
#[derive(Debug, Default, Clone)]
pub struct Windows {
    names: Interner,
    /// Both amounts packed into 8 bytes each (exactly: see [`Packed`]); 200,000
    /// windows with two `Decimal`s were 13.9 MB of replay's peak.
    amounts: FastMap<WindowKey, [Packed; 2]>,
    /// Windows whose amounts do not pack (a mantissa beyond 2^58: never in practice).
    wide: FastMap<WindowKey, (Decimal, Decimal)>,
}

impl Windows {
    fn key(&mut self, k: &UsageKey) -> WindowKey {
        WindowKey {
            agent: self.names.intern(&k.agent_id),
            tz: self.names.intern(&k.tz),
            currency: self.names.intern(&k.currency),
            day_window: k.kind == usage::DAY,
            start: k.start,
        }
    }

    fn existing_key(&self, k: &UsageKey) -> Option<WindowKey> {
        self.existing_key_of(&k.agent_id, &k.kind, &k.tz, &k.currency, k.start)
    }

    fn existing_key_of(
        &self,
        agent_id: &str,
        kind: &str,
        tz: &str,
        currency: &str,
        start: NaiveDate,
    ) -> Option<WindowKey> {
        Some(WindowKey {
            agent: self.names.get(agent_id)?,
            tz: self.names.get(tz)?,
            currency: self.names.get(currency)?,
            day_window: kind == usage::DAY,
            start,
        })
    }

    fn usage_key(&self, k: &WindowKey) -> UsageKey {
        usage::key(
            self.names.name(k.agent),
            if k.day_window {
                usage::DAY
            } else {
                usage::MONTH
            },
            self.names.name(k.tz),
            self.names.name(k.currency),
            k.start,
        )
    }

    fn amounts_at(&self, key: &WindowKey) -> Option<(Decimal, Decimal)> {
        match self.amounts.get(key) {
            Some([c, r]) => Some((c.get(), r.get())),
            None => self.wide.get(key).copied(),
        }
    }

    pub fn add(&mut self, k: &UsageKey, committed: Decimal, reserved: Decimal) {
        let key = self.key(k);
        if let Some(v) = self.wide.get_mut(&key) {
            v.0 += committed;
            v.1 += reserved;
            return;
        }
        let entry = self.amounts.entry(key);
        let (c, r) = match &entry {
            std::collections::hash_map::Entry::Occupied(e) => {
                let [c, r] = e.get();
                (c.get() + committed, r.get() + reserved)
            }
            std::collections::hash_map::Entry::Vacant(_) => {
                (Decimal::ZERO + committed, Decimal::ZERO + reserved)
            }
        };
        match (Packed::of(c), Packed::of(r)) {
            (Some(pc), Some(pr)) => {
                entry.insert_entry([pc, pr]);
            }
            _ => {
                if let std::collections::hash_map::Entry::Occupied(e) = entry {
                    e.remove();
                }
                self.wide.insert(key, (c, r));
            }
        }
    }

    /// (committed, reserved) of a window, if it was ever touched.
    pub fn get(&self, k: &UsageKey) -> Option<(Decimal, Decimal)> {
        self.existing_key(k).and_then(|key| self.amounts_at(&key))
    }

    /// committed + reserved of a window (zero when never touched).
    pub fn total(&self, k: &UsageKey) -> Decimal {
        self.get(k).map(|(c, r)| c + r).unwrap_or_default()
    }

    /// Removes and returns a window (replay compares live rows one by one).
    pub fn take(&mut self, k: &UsageKey) -> Option<(Decimal, Decimal)> {
        self.take_of(&k.agent_id, &k.kind, &k.tz, &k.currency, k.start)
    }

    /// [`Windows::take`] of a key given as borrowed columns (replay compares every live
    /// window without building a key for it).
    pub fn take_of(
        &mut self,
        agent_id: &str,
        kind: &str,
        tz: &str,
        currency: &str,
        start: NaiveDate,
    ) -> Option<(Decimal, Decimal)> {
        let key = self.existing_key_of(agent_id, kind, tz, currency, start)?;
        match self.amounts.remove(&key) {
            Some([c, r]) => Some((c.get(), r.get())),
            None => self.wide.remove(&key),
        }
    }

    /// Frees the amounts, keeping the names (replay, once the windows are compared).
    pub fn drop_amounts(&mut self) {
        self.amounts = FastMap::default();
        self.wide = FastMap::default();
    }

    /// Every window, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (UsageKey, (Decimal, Decimal))> + '_ {
        self.amounts
            .iter()
            .map(|(k, [c, r])| (self.usage_key(k), (c.get(), r.get())))
            .chain(self.wide.iter().map(|(k, v)| (self.usage_key(k), *v)))
    }
}

/// Bytes of a SHA-256 kept per decision: replay holds one digest per decision instead of
/// the row, which keeps it within SPEC §10's memory target. 128 bits make an accidental
/// match impossible in practice; deliberate tampering is the hash chain's job.
pub const DIGEST_BYTES: usize = 16;
pub type Digest = [u8; DIGEST_BYTES];

/// A decision's key in [`Projections::decisions`]: the first 128 bits of the SHA-256 of
/// the intent id (no accidental collision among any number of intents a ledger holds;
/// a chosen one would need a SHA-256 collision).
pub type IntentKey = [u8; 16];

pub fn intent_key(intent_id: &str) -> IntentKey {
    use sha2::Digest as _;
    let full = sha2::Sha256::digest(intent_id.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&full[..16]);
    k
}

/// Where an intent id sits in an [`IdArena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IdRef {
    start: u32,
    len: u32,
}

/// Intent ids of the authorizations, one after the other in one allocation (a `String`
/// per authorization was 24 bytes plus a heap block of 48).
#[derive(Debug, Default, Clone)]
struct IdArena {
    text: String,
}

impl IdArena {
    fn push(&mut self, id: &str) -> IdRef {
        let start = u32::try_from(self.text.len()).expect("intent ids under 4 GiB");
        self.text.push_str(id);
        IdRef {
            start,
            len: u32::try_from(id.len()).expect("short intent id"),
        }
    }

    fn get(&self, r: IdRef) -> &str {
        &self.text[r.start as usize..(r.start + r.len) as usize]
    }
}

/// An authorization as the projections keep it: its texts (agent, entity, currencies,
/// zone) by interned name, its amounts packed into 8 bytes each (exactly: see
/// [`Packed`]). As rows, with their five heap strings, 90,000 authorizations were
/// ~40 MB of replay's peak; with six `Decimal`s and a `String` key, 30.8 MB.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Authorization {
    /// Its intent id, in [`Projections::intent_ids`] (the map is keyed by a hash).
    id: IdRef,
    agent: u32,
    entity: u32,
    currency: u32,
    tz: u32,
    usage_currency: Option<u32>,
    seq: i64,
    /// authorized, captured, voided, refunded, restored, expired_amount, fx_rate
    /// ([`Packed::NONE`]: no rate); unused when `wide` holds them.
    amounts: [Packed; 7],
    /// The amounts when one of them does not pack (never in practice: a mantissa
    /// beyond 2^58).
    wide: Option<Box<WideAmounts>>,
    expires_at: DateTime<Utc>,
    day: NaiveDate,
    month: NaiveDate,
    is_final: bool,
    expired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct WideAmounts {
    amounts: [Decimal; 6],
    fx_rate: Option<Decimal>,
}

impl Authorization {
    fn of(names: &mut Interner, id: IdRef, row: AuthorizationRow) -> Authorization {
        let st = row.state;
        let amounts = [
            st.authorized,
            st.captured,
            st.voided,
            st.refunded,
            st.restored,
            st.expired_amount,
        ];
        let mut packed = [Packed::NONE; 7];
        let mut fits = true;
        for (p, d) in packed.iter_mut().zip(amounts) {
            match Packed::of(d) {
                Some(v) => *p = v,
                None => fits = false,
            }
        }
        match Packed::of_option(st.fx_rate) {
            Some(v) => packed[6] = v,
            None => fits = false,
        }
        let wide = (!fits).then(|| {
            Box::new(WideAmounts {
                amounts,
                fx_rate: st.fx_rate,
            })
        });
        Authorization {
            id,
            agent: names.intern(&row.agent_id),
            entity: names.intern(&row.entity_id),
            currency: names.intern(&st.currency),
            tz: names.intern(&st.tz),
            usage_currency: st.usage_currency.as_deref().map(|c| names.intern(c)),
            seq: row.seq,
            amounts: if fits { packed } else { [Packed::NONE; 7] },
            wide,
            expires_at: st.expires_at,
            day: st.day,
            month: st.month,
            is_final: st.is_final,
            expired: st.expired,
        }
    }

    /// The six amounts and the rate, as they were given.
    fn amounts(&self) -> ([Decimal; 6], Option<Decimal>) {
        match &self.wide {
            Some(w) => (w.amounts, w.fx_rate),
            None => (
                std::array::from_fn(|i| self.amounts[i].get()),
                self.amounts[6].get_option(),
            ),
        }
    }

    fn state(&self, names: &Interner) -> AuthorizationState {
        let (
            [
                authorized,
                captured,
                voided,
                refunded,
                restored,
                expired_amount,
            ],
            fx_rate,
        ) = self.amounts();
        AuthorizationState {
            authorized,
            captured,
            voided,
            refunded,
            restored,
            expired_amount,
            is_final: self.is_final,
            expired: self.expired,
            expires_at: self.expires_at,
            currency: names.name(self.currency).to_string(),
            tz: names.name(self.tz).to_string(),
            day: self.day,
            month: self.month,
            fx_rate,
            usage_currency: self.usage_currency.map(|c| names.name(c).to_string()),
        }
    }
}

/// An applied settlementId as the projections keep it: what idempotency needs
/// (`step_settle`) and a digest of its `settlement` row, which replay compares with the
/// live one. The row's outcome message is not kept (it was 33 MB of replay's peak at
/// 50,000 settlements); live settling answers a redelivery from the row it loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedSettlement {
    /// The event that applied it.
    pub seq: i64,
    /// `None`: the recorded fingerprint is not 32 bytes (it matches no payload).
    pub fingerprint: Option<[u8; 32]>,
    /// [`SettlementRow::digest`] of the row the fold built.
    pub digest: Digest,
}

impl AppliedSettlement {
    pub fn of(row: &SettlementRow) -> AppliedSettlement {
        AppliedSettlement {
            seq: row.seq,
            fingerprint: row.fingerprint.as_slice().try_into().ok(),
            digest: row.digest(),
        }
    }
}

/// The intents waiting for approval (`pending_approval` rows), kept compact: texts
/// interned, the intent id in an arena, keyed by [`intent_key`] (11,000 full rows in a
/// `BTreeMap` were 10 MB of replay's peak). Rows go in and come out whole.
#[derive(Debug, Default, Clone)]
pub struct Pendings {
    names: Interner,
    ids: IdArena,
    rows: FastMap<IntentKey, Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pending {
    id: IdRef,
    agent: u32,
    entity: u32,
    effect: u32,
    currency: u32,
    tz: u32,
    intent_currency: Option<u32>,
    approvals_required: i32,
    amount: Decimal,
    day: NaiveDate,
    month: NaiveDate,
    decided_seq: i64,
    expires_at: DateTime<Utc>,
    authorization_ttl_secs: i64,
    fx_rate: Option<Decimal>,
    intent_amount: Option<Decimal>,
}

impl Pendings {
    /// Opens (or replaces) an intent's row.
    pub fn insert(&mut self, p: PendingRow) {
        use std::collections::hash_map::Entry;
        let n = &mut self.names;
        let entry = self.rows.entry(intent_key(&p.intent_id));
        let id = match &entry {
            Entry::Occupied(e) => e.get().id,
            Entry::Vacant(_) => self.ids.push(&p.intent_id),
        };
        let row = Pending {
            id,
            agent: n.intern(&p.agent_id),
            entity: n.intern(&p.entity_id),
            effect: n.intern(&p.effect),
            currency: n.intern(&p.currency),
            tz: n.intern(&p.tz),
            intent_currency: p.intent_currency.as_deref().map(|c| n.intern(c)),
            approvals_required: p.approvals_required,
            amount: p.amount,
            day: p.day,
            month: p.month,
            decided_seq: p.decided_seq,
            expires_at: p.expires_at,
            authorization_ttl_secs: p.authorization_ttl_secs,
            fx_rate: p.fx_rate,
            intent_amount: p.intent_amount,
        };
        entry.insert_entry(row);
    }

    fn row(&self, p: &Pending) -> PendingRow {
        let n = &self.names;
        PendingRow {
            intent_id: self.ids.get(p.id).to_string(),
            agent_id: n.name(p.agent).to_string(),
            entity_id: n.name(p.entity).to_string(),
            effect: n.name(p.effect).to_string(),
            approvals_required: p.approvals_required,
            amount: p.amount,
            currency: n.name(p.currency).to_string(),
            tz: n.name(p.tz).to_string(),
            day: p.day,
            month: p.month,
            decided_seq: p.decided_seq,
            expires_at: p.expires_at,
            authorization_ttl_secs: p.authorization_ttl_secs,
            fx_rate: p.fx_rate,
            intent_amount: p.intent_amount,
            intent_currency: p.intent_currency.map(|c| n.name(c).to_string()),
        }
    }

    /// An intent's row, if it is waiting.
    pub fn get(&self, intent_id: &str) -> Option<PendingRow> {
        self.rows.get(&intent_key(intent_id)).map(|p| self.row(p))
    }

    pub fn contains_key(&self, intent_id: &str) -> bool {
        self.rows.contains_key(&intent_key(intent_id))
    }

    /// Closes an intent's row, returning it.
    pub fn remove(&mut self, intent_id: &str) -> Option<PendingRow> {
        let p = self.rows.remove(&intent_key(intent_id))?;
        Some(self.row(&p))
    }

    /// Every row, in intent order.
    pub fn values(&self) -> impl Iterator<Item = PendingRow> + use<> {
        let mut rows: Vec<PendingRow> = self.rows.values().map(|p| self.row(p)).collect();
        rows.sort_by(|a, b| a.intent_id.cmp(&b.intent_id));
        rows.into_iter()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A spend record as the projections keep it: its agent and entity by interned name
/// (to find its timelines), when it was accepted, a digest of the columns that never
/// change, and the columns that do (the full rows were ~45 MB of replay's peak at
/// 100,000 records).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    agent: u32,
    entity: u32,
    at: DateTime<Utc>,
    /// [`SpendRecordRow::fixed_digest`].
    fixed: Digest,
    amount: Decimal,
    counts: bool,
    seq: i64,
    /// What a limit's filter reads (shared), so that a scope's timelines can be built
    /// from the records when a limit first asks for them ([`Projections::defer_timelines`]).
    attributes: Arc<timeline::RecordAttributes>,
    purpose: Option<crate::intent::Purpose>,
}

impl Record {
    fn entry(&self, intent: IntentKey) -> timeline::Entry {
        timeline::Entry {
            at: self.at,
            intent,
            amount: self.amount,
            counts: self.counts,
            attributes: self.attributes.clone(),
            purpose: self.purpose,
        }
    }
}

/// What replay compares of a `spend_record` row: the digest of its fixed columns and
/// the columns a lifecycle event changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordDigest {
    pub fixed: Digest,
    pub amount: Decimal,
    pub counts: bool,
    pub seq: i64,
}

impl RecordDigest {
    pub fn of(row: &SpendRecordRow) -> RecordDigest {
        RecordDigest {
            fixed: row.fixed_digest(),
            amount: row.amount.normalize(),
            counts: row.counts,
            seq: row.seq,
        }
    }
}

/// The state the events build. Live deciding holds the part a batch loaded; replay and
/// impact analysis hold all of it. What grows with traffic and agents (decisions,
/// windows, authorizations, settlements, spend records, bindings) is kept compact: ids
/// interned, rows replay only compares kept as digests.
#[derive(Debug, Default, Clone)]
pub struct Projections {
    pub windows: Windows,
    /// intent → (seq of its decision event, digest of its `decision` row)
    /// (keyed by [`intent_key`]: 16 bytes instead of a heap string per decision)
    pub decisions: FastMap<IntentKey, (i64, Digest)>,
    pub pending: Pendings,
    /// intent waiting for approval → its `decisionHash` (the outcome closing it repeats
    /// it); kept apart from `pending`, whose rows mirror the `pending_approval` table.
    pub waiting_hashes: HashMap<String, Vec<u8>>,
    /// (intent, approver) → vote
    pub votes: BTreeMap<(String, String), VoteRow>,
    pub outcomes: BTreeMap<String, OutcomeRow>,
    pub kills: BTreeMap<String, KillRow>,
    /// sha256 → version
    pub policies: BTreeMap<String, PolicyRow>,
    /// (kind, version) → registry / bindings version
    pub configs: BTreeMap<(String, i64), ConfigRow>,
    /// intent → its authorization (SPEC §11), by [`intent_key`]
    authorizations: FastMap<IntentKey, Authorization>,
    /// The intent ids of `authorizations` (none kept after
    /// [`Projections::forget_authorization_ids`]).
    intent_ids: IdArena,
    forget_ids: bool,
    /// settlementId → the settlement applied under it, keyed by [`intent_key`] of the
    /// settlementId (16 bytes instead of a heap string: 50,000 keys of ~73 bytes in a
    /// `BTreeMap` were 12 MB of replay's peak)
    pub settlements: FastMap<IntentKey, AppliedSettlement>,
    /// `USD/BRL` → the latest rate (SPEC §12.3)
    pub fx_rates: BTreeMap<String, FxRateRow>,
    /// agent → (the entity it was first decided under, seq of that decision) (SPEC §14),
    /// by interned name
    agent_entities: FastMap<u32, (u32, i64)>,
    /// intent → what it holds against limits (SPEC §12)
    records: FastMap<IntentKey, Record>,
    /// agent → its records in time order with running totals (a window's sum is two
    /// prefix sums, not a scan of the agent's history)
    agent_records: FastMap<u32, Timeline>,
    /// entity → the same, over every agent of the entity
    entity_records: FastMap<u32, Timeline>,
    /// Category, beneficiary, country and currency of the records, shared by their
    /// timeline entries (a few distinct combinations across many records).
    /// (By a hash of the texts: a record finds its attributes without allocating.)
    attributes: HashMap<u64, Vec<Arc<timeline::RecordAttributes>>>,
    /// Which scopes' timelines are not built yet (replay: see
    /// [`Projections::defer_timelines`]). Both are kept by default.
    deferred: DeferredTimelines,
}

/// How many rows of each kind a ledger holds (replay reads them from the live tables of
/// its snapshot: only a hint, the fold decides what is there).
#[derive(Debug, Default, Clone, Copy)]
pub struct Capacities {
    pub decisions: usize,
    pub authorizations: usize,
    pub records: usize,
    pub windows: usize,
    pub settlements: usize,
    pub agents: usize,
}

/// Scopes whose timelines are built only when a limit of that scope is first read.
#[derive(Debug, Default, Clone, Copy)]
struct DeferredTimelines {
    agent: bool,
    entity: bool,
}

impl DeferredTimelines {
    fn of(&mut self, scope: crate::policy::model::LimitScope) -> &mut bool {
        match scope {
            crate::policy::model::LimitScope::Agent => &mut self.agent,
            crate::policy::model::LimitScope::Entity => &mut self.entity,
        }
    }
}

/// A change that contradicts the state it is applied to (replay reports these).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Inconsistency {
    #[error("intent {intent_id} decided a second time (first at seq {first_seq})")]
    DecidedTwice { intent_id: String, first_seq: i64 },
    #[error("intent {0} closed but it was not waiting for approval")]
    ClosedNotPending(String),
    #[error("settlement {settlement_id} applied a second time (first at seq {first_seq})")]
    SettledTwice {
        settlement_id: String,
        first_seq: i64,
    },
    #[error("authorization of intent {intent_id}: {problem}")]
    BadAuthorization { intent_id: String, problem: String },
}

impl Projections {
    /// Folds one event in. Inconsistencies are returned after the whole event is
    /// applied (the state still follows the events, as the live tables would).
    pub fn apply(
        &mut self,
        r: &Recorded,
        event: &LedgerEvent,
    ) -> Result<Vec<Inconsistency>, FoldError> {
        let mut problems = Vec::new();
        delta(r, event, &mut |c| {
            if let Some(p) = self.apply_owned(c) {
                problems.push(p);
            }
        })?;
        Ok(problems)
    }

    /// [`Projections::apply_change`] of a change nobody else needs: the rows it carries
    /// are moved in, not copied (replay folds every event of the ledger).
    fn apply_owned(&mut self, change: Change) -> Option<Inconsistency> {
        match change {
            Change::PendingOpen(p) => {
                self.pending.insert(p);
            }
            Change::Authorization(a) => {
                if let Err(problem) = a.state.check() {
                    return Some(Inconsistency::BadAuthorization {
                        intent_id: a.intent_id,
                        problem,
                    });
                }
                self.insert_authorization(*a);
            }
            other => return self.apply_change(&other),
        }
        None
    }

    /// Applies one change. By reference: what the snapshot keeps of a decision is its
    /// seq and digest, so the row itself is never copied (live deciding writes it).
    pub fn apply_change(&mut self, change: &Change) -> Option<Inconsistency> {
        match change {
            Change::Usage {
                key,
                committed,
                reserved,
            } => self.windows.add(key, *committed, *reserved),
            Change::PendingOpen(p) => {
                self.pending.insert(p.clone());
            }
            Change::PendingClose(id) => {
                self.waiting_hashes.remove(id);
                if self.pending.remove(id).is_none() {
                    return Some(Inconsistency::ClosedNotPending(id.clone()));
                }
            }
            Change::Vote(v) => {
                self.votes
                    .insert((v.intent_id.clone(), v.approver_id.clone()), v.clone());
            }
            Change::Outcome { row: o, .. } => {
                self.outcomes.insert(o.intent_id.clone(), (**o).clone());
            }
            Change::Kill(k) => {
                self.kills.insert(k.scope.clone(), k.clone());
            }
            Change::Policy(p) => {
                self.policies.insert(p.sha256.clone(), p.clone());
            }
            Change::Config(c) => {
                self.configs.insert((c.kind.clone(), c.version), c.clone());
            }
            Change::Authorization(a) => {
                if let Err(problem) = a.state.check() {
                    return Some(Inconsistency::BadAuthorization {
                        intent_id: a.intent_id.clone(),
                        problem,
                    });
                }
                self.insert_authorization(AuthorizationRow::clone(a));
            }
            Change::Settlement(st) => {
                if let Some(first) = self
                    .settlements
                    .insert(intent_key(&st.settlement_id), AppliedSettlement::of(st))
                {
                    return Some(Inconsistency::SettledTwice {
                        settlement_id: st.settlement_id.clone(),
                        first_seq: first.seq,
                    });
                }
            }
            Change::Lifecycle { .. } => {}
            Change::FxRate(f) => {
                self.fx_rates.insert(f.pair.clone(), f.clone());
            }
            Change::AgentEntity(a) => {
                let agent = self.windows.names.intern(&a.agent_id);
                if !self.agent_entities.contains_key(&agent) {
                    let entity = self.windows.names.intern(&a.entity_id);
                    self.agent_entities.insert(agent, (entity, a.seq));
                }
            }
            Change::Record(rec) => self.insert_record(rec),
            Change::RecordHolds {
                intent_id,
                amount,
                counts,
                seq,
            } => self.update_record(intent_id, *amount, *counts, *seq),
            Change::Decision { row: d, .. } => {
                if Effect::parse(&d.effect).is_some_and(Effect::needs_approval) {
                    self.waiting_hashes
                        .insert(d.intent_id.clone(), d.decision_hash.clone());
                }
                let id = intent_key(&d.intent_id);
                if let Some((first_seq, _)) = self.decisions.insert(id, (d.seq, d.digest())) {
                    return Some(Inconsistency::DecidedTwice {
                        intent_id: d.intent_id.clone(),
                        first_seq,
                    });
                }
            }
        }
        None
    }

    /// Sets an agent's binding as loaded (live deciding reads it under the agent's lock).
    pub fn load_agent_entity(&mut self, a: &AgentEntityRow) {
        let agent = self.windows.names.intern(&a.agent_id);
        let entity = self.windows.names.intern(&a.entity_id);
        self.agent_entities.insert(agent, (entity, a.seq));
    }

    /// The entity an agent is bound to and the seq of the decision that bound it.
    pub fn agent_entity(&self, agent_id: &str) -> Option<(&str, i64)> {
        let agent = self.windows.names.get(agent_id)?;
        let (entity, seq) = self.agent_entities.get(&agent)?;
        Some((self.windows.names.name(*entity), *seq))
    }

    /// Takes an agent's binding out: (entity id, seq), borrowed from the interned names
    /// (replay compares one live row per agent without copying either side).
    pub fn take_agent_entity(&mut self, agent_id: &str) -> Option<(&str, i64)> {
        let agent = self.windows.names.get(agent_id)?;
        let (entity, seq) = self.agent_entities.remove(&agent)?;
        Some((self.windows.names.name(entity), seq))
    }

    /// Every binding row not taken yet, in agent order.
    pub fn agent_entity_rows(&self) -> Vec<AgentEntityRow> {
        let mut rows: Vec<AgentEntityRow> = self
            .agent_entities
            .iter()
            .map(|(agent, (entity, seq))| AgentEntityRow {
                agent_id: self.windows.names.name(*agent).to_string(),
                entity_id: self.windows.names.name(*entity).to_string(),
                seq: *seq,
            })
            .collect();
        rows.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        rows
    }

    /// Upserts an authorization (the fold, or a live snapshot loading one).
    pub fn insert_authorization(&mut self, row: AuthorizationRow) {
        use std::collections::hash_map::Entry;
        match self.authorizations.entry(intent_key(&row.intent_id)) {
            Entry::Occupied(mut e) => {
                let id = e.get().id;
                debug_assert!(self.forget_ids || self.intent_ids.get(id) == row.intent_id);
                *e.get_mut() = Authorization::of(&mut self.windows.names, id, row);
            }
            Entry::Vacant(e) => {
                let id = if self.forget_ids {
                    IdRef { start: 0, len: 0 }
                } else {
                    self.intent_ids.push(&row.intent_id)
                };
                e.insert(Authorization::of(&mut self.windows.names, id, row));
            }
        }
    }

    /// The money of an intent's authorization, if it has one.
    pub fn authorization_state(&self, intent_id: &str) -> Option<AuthorizationState> {
        self.authorizations
            .get(&intent_key(intent_id))
            .map(|a| a.state(&self.windows.names))
    }

    fn authorization_row(&self, a: &Authorization) -> AuthorizationRow {
        AuthorizationRow {
            intent_id: self.intent_ids.get(a.id).to_string(),
            agent_id: self.windows.names.name(a.agent).to_string(),
            entity_id: self.windows.names.name(a.entity).to_string(),
            state: a.state(&self.windows.names),
            seq: a.seq,
        }
    }

    /// An intent's `authorization_state` row, if it has one.
    pub fn authorization(&self, intent_id: &str) -> Option<AuthorizationRow> {
        let a = self.authorizations.get(&intent_key(intent_id))?;
        let mut row = self.authorization_row(a);
        row.intent_id = intent_id.to_string();
        Some(row)
    }

    /// Keeps no intent id per authorization (replay: it compares a live row by the live
    /// row's id and names a rebuilt row missing in the table by its event; 90,000 ids
    /// were 4.7 MB of its peak). Rows then come out of
    /// [`Projections::authorization_rows`] with an empty `intent_id`, and
    /// [`step_expire_authorizations`] refuses these projections. Only on empty ones.
    pub fn forget_authorization_ids(&mut self) {
        assert!(
            self.authorizations.is_empty(),
            "ids are forgotten before any authorization"
        );
        self.forget_ids = true;
    }

    /// Every authorization row not taken yet, in intent order (after
    /// [`Projections::forget_authorization_ids`]: with empty ids, by seq).
    pub fn authorization_rows(&self) -> impl Iterator<Item = AuthorizationRow> + use<> {
        let mut rows: Vec<AuthorizationRow> = self
            .authorizations
            .values()
            .map(|a| self.authorization_row(a))
            .collect();
        rows.sort_by(|a, b| (&a.intent_id, a.seq).cmp(&(&b.intent_id, b.seq)));
        rows.into_iter()
    }

    /// Removes and returns an intent's authorization row (replay compares live rows one
    /// by one).
    pub fn take_authorization(&mut self, intent_id: &str) -> Option<AuthorizationRow> {
        let a = self.authorizations.remove(&intent_key(intent_id))?;
        let mut row = self.authorization_row(&a);
        row.intent_id = intent_id.to_string();
        Some(row)
    }

    /// Adds a spend record (the fold, or a live snapshot loading what limits need).
    pub fn insert_record(&mut self, rec: &SpendRecordRow) {
        let attributes = self.attributes_of(rec);
        let key = intent_key(&rec.intent_id);
        let agent = self.windows.names.intern(&rec.agent_id);
        let entity = self.windows.names.intern(&rec.entity_id);
        let record = Record {
            agent,
            entity,
            at: rec.accepted_at,
            fixed: rec.fixed_digest(),
            amount: rec.amount,
            counts: rec.counts,
            seq: rec.seq,
            attributes,
            purpose: crate::intent::Purpose::parse(&rec.purpose),
        };
        if !self.deferred.entity {
            self.entity_records
                .entry(entity)
                .or_default()
                .insert(record.entry(key));
        }
        if !self.deferred.agent {
            self.agent_records
                .entry(agent)
                .or_default()
                .insert(record.entry(key));
        }
        self.records.insert(key, record);
    }

    /// Reserves room for what a ledger of this size will hold. A map that grows holds
    /// its old and its new table at once while it moves: replay's peak heap was reached
    /// as the authorizations' table doubled (9.5 + 19 MB at 90,000 of them). Sized up
    /// front, no table moves.
    pub fn reserve(&mut self, c: &Capacities) {
        self.decisions.reserve(c.decisions);
        self.authorizations.reserve(c.authorizations);
        self.records.reserve(c.records);
        self.windows.amounts.reserve(c.windows);
        self.settlements.reserve(c.settlements);
        self.agent_entities.reserve(c.agents);
    }

    /// Builds no timeline until a limit asks for one ([`Projections::need_timelines`]):
    /// replay folds ledgers whose policies may have no limits at all, and the
    /// timelines were ~22 MB of its peak at 100,000 records. Only on empty projections.
    pub fn defer_timelines(&mut self) {
        assert!(
            self.records.is_empty(),
            "timelines are deferred before any record"
        );
        self.deferred = DeferredTimelines {
            agent: true,
            entity: true,
        };
    }

    /// Builds the timelines of every scope `limits` read that were deferred, from the
    /// records (in acceptance order; the sums do not depend on the order of records
    /// accepted at the same instant), and keeps them from then on.
    pub fn need_timelines(&mut self, limits: &[policy::limits::CompiledLimit]) {
        for l in limits {
            let deferred = self.deferred.of(l.scope);
            if !*deferred {
                continue;
            }
            *deferred = false;
            let mut all: Vec<(&IntentKey, &Record)> = self.records.iter().collect();
            all.sort_unstable_by(|a, b| (a.1.at, a.0).cmp(&(b.1.at, b.0)));
            let timelines = match l.scope {
                crate::policy::model::LimitScope::Agent => &mut self.agent_records,
                crate::policy::model::LimitScope::Entity => &mut self.entity_records,
            };
            let by_agent = l.scope == crate::policy::model::LimitScope::Agent;
            let scope_of = |r: &Record| if by_agent { r.agent } else { r.entity };
            for (key, r) in all {
                timelines
                    .entry(scope_of(r))
                    .or_default()
                    .insert(r.entry(*key));
            }
        }
    }

    /// The shared attributes of a record, found without allocating when they are known.
    fn attributes_of(&mut self, rec: &SpendRecordRow) -> Arc<timeline::RecordAttributes> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            &rec.currency,
            &rec.category,
            &rec.beneficiary_id,
            &rec.country,
        )
            .hash(&mut h);
        let same = |a: &timeline::RecordAttributes| {
            *a.currency == *rec.currency
                && *a.category == *rec.category
                && *a.beneficiary == *rec.beneficiary_id
                && a.country.as_deref() == rec.country.as_deref()
        };
        let bucket = self.attributes.entry(h.finish()).or_default();
        if let Some(shared) = bucket.iter().find(|a| same(a)) {
            return shared.clone();
        }
        let shared = Arc::new(timeline::RecordAttributes {
            currency: rec.currency.as_str().into(),
            category: rec.category.as_str().into(),
            beneficiary: rec.beneficiary_id.as_str().into(),
            country: rec.country.as_deref().map(Into::into),
        });
        bucket.push(shared.clone());
        shared
    }

    /// A record's holds changed: the record and both of its timelines follow.
    fn update_record(&mut self, intent_id: &str, amount: Decimal, counts: bool, seq: i64) {
        let key = intent_key(intent_id);
        // Only live snapshots lack records (they load the ones limits need).
        let Some(rec) = self.records.get_mut(&key) else {
            return;
        };
        rec.amount = amount;
        rec.counts = counts;
        rec.seq = seq;
        for t in [
            self.agent_records.get_mut(&rec.agent),
            self.entity_records.get_mut(&rec.entity),
        ]
        .into_iter()
        .flatten()
        {
            t.update(&key, rec.at, amount, counts);
        }
    }

    /// Removes and returns what replay compares of an intent's spend record.
    pub fn take_record(&mut self, intent_id: &str) -> Option<RecordDigest> {
        let r = self.records.remove(&intent_key(intent_id))?;
        Some(RecordDigest {
            fixed: r.fixed,
            amount: r.amount.normalize(),
            counts: r.counts,
            seq: r.seq,
        })
    }

    /// Frees the limits' timelines (replay compares the records, not them).
    pub fn drop_timelines(&mut self) {
        self.agent_records = FastMap::default();
        self.entity_records = FastMap::default();
        self.attributes = HashMap::new();
    }

    /// Frees the spend records (replay, once compared).
    pub fn drop_records(&mut self) {
        self.records = FastMap::default();
    }

    /// The seq of the last event of every spend record not taken yet (replay names
    /// them by their events), ascending.
    pub fn record_seqs(&self) -> Vec<i64> {
        let mut seqs: Vec<i64> = self.records.values().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs
    }

    /// What counted toward `limit` before an intent of `agent_id` / `entity_id` accepted
    /// at `span.at`: records of its scope in its window, in the policy currency, passing
    /// its filter.
    pub fn limit_so_far(
        &self,
        limit: &policy::limits::CompiledLimit,
        span: &policy::limits::Span,
        agent_id: &str,
        entity_id: &str,
        currency: &str,
    ) -> policy::limits::SoFar {
        // One scope's timeline only (each lookup hashes the id twice: interner, map).
        self.timeline(limit, agent_id, entity_id)
            .map_or_else(Default::default, |t| t.sum(limit, span, currency))
    }

    /// When the earliest record counting toward `limit` in `span` was accepted, by the
    /// same rule as [`Projections::limit_so_far`].
    pub fn limit_earliest(
        &self,
        limit: &policy::limits::CompiledLimit,
        span: &policy::limits::Span,
        agent_id: &str,
        entity_id: &str,
        currency: &str,
    ) -> Option<DateTime<Utc>> {
        self.timeline(limit, agent_id, entity_id)?
            .earliest(limit, span, currency)
    }

    fn agent_timeline(&self, agent_id: &str) -> Option<&Timeline> {
        assert!(
            !self.deferred.agent,
            "agent timelines read before need_timelines"
        );
        self.agent_records.get(&self.windows.names.get(agent_id)?)
    }

    fn entity_timeline(&self, entity_id: &str) -> Option<&Timeline> {
        assert!(
            !self.deferred.entity,
            "entity timelines read before need_timelines"
        );
        self.entity_records.get(&self.windows.names.get(entity_id)?)
    }

    fn timeline(
        &self,
        limit: &policy::limits::CompiledLimit,
        agent_id: &str,
        entity_id: &str,
    ) -> Option<&Timeline> {
        match limit.scope {
            crate::policy::model::LimitScope::Agent => self.agent_timeline(agent_id),
            crate::policy::model::LimitScope::Entity => self.entity_timeline(entity_id),
        }
    }

    /// [`Projections::limit_so_far`] of every limit of a policy (`spans[i]` is the
    /// window of `limits[i]`), finding the agent's and the entity's records once.
    pub fn limit_sums(
        &self,
        limits: &[policy::limits::CompiledLimit],
        spans: &[policy::limits::Span],
        agent_id: &str,
        entity_id: &str,
        currency: &str,
    ) -> Vec<policy::limits::SoFar> {
        assert_eq!(limits.len(), spans.len(), "one span per limit");
        // Only the scopes some limit has (each lookup hashes the id twice).
        let has = |scope| limits.iter().any(|l| l.scope == scope);
        let agent = has(crate::policy::model::LimitScope::Agent)
            .then(|| self.agent_timeline(agent_id))
            .flatten();
        let entity = has(crate::policy::model::LimitScope::Entity)
            .then(|| self.entity_timeline(entity_id))
            .flatten();
        limits
            .iter()
            .zip(spans)
            .map(|(limit, span)| {
                let timeline = match limit.scope {
                    crate::policy::model::LimitScope::Agent => agent,
                    crate::policy::model::LimitScope::Entity => entity,
                };
                timeline.map_or_else(Default::default, |t| t.sum(limit, span, currency))
            })
            .collect()
    }

    /// The kill-switch scope covering an intent, if any (global first, then entity, agent:
    /// [`Scope::covering`]). `kills` is keyed by the stored scope text.
    pub fn kill_state(&self, agent_id: &str, entity_id: &str) -> KillState {
        Scope::covering(agent_id, entity_id)
            .iter()
            .map(Scope::to_string)
            .find(|scope| self.kills.get(scope).is_some_and(|k| k.active))
            .map_or(KillState::Off, |scope| KillState::On { scope })
    }

    /// Approvers who voted APPROVE on an intent, in the order their votes were recorded.
    pub fn approvers(&self, intent_id: &str) -> Vec<String> {
        let mut votes: Vec<&VoteRow> = self
            .votes
            .range((intent_id.to_string(), String::new())..)
            .take_while(|((i, _), _)| i == intent_id)
            .map(|(_, v)| v)
            .filter(|v| v.vote == Vote::Approve.as_str())
            .collect();
        votes.sort_by_key(|v| v.seq);
        votes.into_iter().map(|v| v.approver_id.clone()).collect()
    }

    fn has_voted(&self, intent_id: &str, approver_id: &str) -> bool {
        self.votes
            .contains_key(&(intent_id.to_string(), approver_id.to_string()))
    }
}

/// The active kill-switch scopes of a set, as projections (offline evaluation, tests).
pub fn kills_from_scopes(scopes: &HashSet<String>) -> BTreeMap<String, KillRow> {
    scopes
        .iter()
        .map(|s| {
            (
                s.clone(),
                KillRow {
                    scope: s.clone(),
                    active: true,
                    actor: String::new(),
                    reason: String::new(),
                    changed_at: DateTime::<Utc>::UNIX_EPOCH,
                    seq: 0,
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// Steps
// ---------------------------------------------------------------------------------

/// An intent to decide, with everything the step cannot compute itself.
pub struct DecideInput<'a> {
    pub intent: &'a SpendIntent,
    /// The policy bound to the agent (resolved from the policy set by the caller).
    pub policy: Option<&'a CompiledPolicy>,
    /// Keyed fingerprint of the intent's canonical form (idempotency).
    pub fingerprint: [u8; 32],
    /// The ledger's acceptance time (the transaction's clock), microseconds.
    pub accepted_at: DateTime<Utc>,
    /// `{"account": ...}` sealed for the beneficiary (sealing draws a random nonce).
    pub personal: Option<Sealed>,
    /// The bindings version `policy` was resolved with (recorded with the decision).
    pub bindings: Option<&'a events::ConfigVersion>,
}

/// An earlier decision of the same intentId.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub seq: i64,
    pub fingerprint: Vec<u8>,
    pub decision_hash: Vec<u8>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DecideStep {
    /// Decided before with the same payload: nothing to append.
    Redelivered,
    /// Decided before with another payload: an `idempotency_conflict` event.
    Conflict(Staged),
    /// A new `intent_decided` event.
    Decided(Staged),
}

/// Decides one intent against a snapshot (SPEC §2): idempotency, kill switch, usage
/// windows in the policy's zone, evaluation, approval expiry.
pub fn step_decide(
    s: &Projections,
    existing: Option<&Existing>,
    input: DecideInput<'_>,
) -> Result<DecideStep, StepError> {
    let intent = input.intent;
    let chain_id = agent_chain(&intent.agent_id);
    if let Some(e) = existing {
        if e.fingerprint == input.fingerprint {
            return Ok(DecideStep::Redelivered);
        }
        return Ok(DecideStep::Conflict(Staged {
            chain_id,
            actor: intent.agent_id.clone(),
            resource: intent.intent_id.clone(),
            event: LedgerEvent::IdempotencyConflict(events::IdempotencyConflict {
                intent_id: intent.intent_id.clone(),
                fingerprint: hex::encode(input.fingerprint),
                existing_fingerprint: hex::encode(&e.fingerprint),
                existing_seq: e.seq,
            }),
        }));
    }
    let verdict = verdict(s, intent, input.policy, input.accepted_at);
    let masked = masked_intent(intent).map_err(|source| StepError::MaskedIntent {
        intent_id: intent.intent_id.clone(),
        source,
    })?;
    Ok(DecideStep::Decided(Staged {
        chain_id,
        actor: intent.agent_id.clone(),
        resource: intent.intent_id.clone(),
        event: LedgerEvent::IntentDecided(Box::new(events::IntentDecided {
            bindings: input.bindings.cloned(),
            ..decided(
                masked,
                input.policy,
                verdict,
                input.fingerprint,
                input.personal,
                input.accepted_at,
            )
        })),
    }))
}

/// What a decision found: the part of `intent_decided` the step computes.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub kill: KillState,
    pub usage: Option<UsageReport>,
    pub evaluation: crate::decision::Evaluation,
    pub expires_at: Option<DateTime<Utc>>,
    /// The policy's `authorizationTtl` for an effect that can authorize spend.
    pub authorization_ttl_secs: Option<i64>,
    /// The conversion of a foreign-currency intent.
    pub fx: Option<events::FxConversion>,
}

/// The decision rule: kill switch and usage windows from the snapshot (windows of the
/// policy's zone and currency containing `now`), the evaluator, the approval expiry.
/// Replay checks recorded decisions against this same function.
pub fn verdict(
    s: &Projections,
    intent: &SpendIntent,
    policy: Option<&CompiledPolicy>,
    now: DateTime<Utc>,
) -> Verdict {
    // An accepted foreign currency is converted at the latest recorded rate; every
    // check then sees the intent in the policy's currency (SPEC §12.3).
    let fx = policy.and_then(|p| conversion(s, intent, p));
    let converted;
    let intent = match &fx {
        Some(f) => {
            converted = SpendIntent {
                amount: f.amount,
                currency: f.currency.clone(),
                ..intent.clone()
            };
            &converted
        }
        None => intent,
    };
    let kill = s.kill_state(&intent.agent_id, &intent.entity_id);
    if let Some(mismatch) = entity_mismatch(s, intent) {
        return Verdict {
            kill,
            usage: None,
            evaluation: mismatch,
            expires_at: None,
            authorization_ttl_secs: None,
            fx: None,
        };
    }
    let (usage_seen, report) = match policy {
        Some(p) => {
            let (d, m, w) = usage::keys(&intent.agent_id, p.tz, p.currency.code, now);
            // Sums in the currency's minor units: the text recorded and shown must not
            // depend on how a window's amounts were stored (PostgreSQL returns a window
            // that went back to zero as `0`, memory keeps `0.00`).
            let in_minor_units = |mut amount: Decimal| {
                amount.rescale(p.currency.minor_units);
                amount
            };
            let u = Usage {
                daily_so_far: in_minor_units(s.windows.total(&d)),
                monthly_so_far: in_minor_units(s.windows.total(&m)),
            };
            let report = UsageReport {
                daily_so_far: u.daily_so_far,
                monthly_so_far: u.monthly_so_far,
                window: WindowRef {
                    day: w.day,
                    month: w.month.format("%Y-%m").to_string(),
                    tz: p.tz.name().to_string(),
                },
                limits: Vec::new(),
            };
            (u, Some(report))
        }
        None => (Usage::default(), None),
    };
    let mut report = report;
    let spans: Vec<policy::limits::Span> = match policy {
        Some(p) => {
            let mut spans = policy::limits::Spans::new(now, p.tz);
            p.limits().iter().map(|l| spans.of(l)).collect()
        }
        None => Vec::new(),
    };
    let so_far: Vec<policy::limits::SoFar> = match policy {
        Some(p) => s.limit_sums(
            p.limits(),
            &spans,
            &intent.agent_id,
            &intent.entity_id,
            p.currency.code,
        ),
        None => Vec::new(),
    };
    if let (Some(p), Some(r)) = (policy, report.as_mut()) {
        r.limits = p
            .limits()
            .iter()
            .zip(&so_far)
            .zip(&spans)
            .map(|((l, used), span)| {
                let mut amount = used.amount;
                amount.rescale(p.currency.minor_units);
                crate::decision::LimitUsage {
                    name: l.name.clone(),
                    window: span.label,
                    amount_so_far: l.amount.map(|_| amount),
                    count_so_far: l.count.map(|_| used.count),
                }
            })
            .collect();
    }
    let mut evaluation = match policy {
        Some(p) => policy::evaluate_limited(
            p,
            &EvalInput {
                intent,
                usage: usage_seen,
                kill: &kill,
                accepted_at: now,
            },
            &so_far,
        ),
        None => policy::no_policy_bound(intent),
    };
    if let (Some(f), Some(p)) = (&fx, policy) {
        let minor = p.currency.minor_units;
        let base = f.pair.split('/').next().unwrap_or_default();
        // Informational (ALLOW never raises the decision); listed last, after the
        // findings that decided.
        evaluation.reasons.push(crate::decision::Finding {
            effect: Effect::Allow,
            code: std::borrow::Cow::Borrowed(CURRENCY_CONVERTED),
            detail: std::borrow::Cow::Owned(format!(
                "{} {base} × {} ({}, ledgerSeq {}) = {} {}",
                f.intent_amount,
                f.rate,
                f.pair,
                f.rate_seq,
                crate::money::format_amount(f.amount, minor),
                f.currency
            )),
            approvals: 0,
        });
    }
    let expires_at = match policy {
        Some(p) if evaluation.effect.needs_approval() => {
            Some(chain::to_micros(now + p.approval_ttl))
        }
        _ => None,
    };
    let authorization_ttl_secs = match policy {
        Some(p) if evaluation.effect != Effect::Deny => Some(p.authorization_ttl.num_seconds()),
        _ => None,
    };
    Verdict {
        kill,
        usage: report,
        evaluation,
        expires_at,
        authorization_ttl_secs,
        fx,
    }
}

/// An intent claiming another entity than the one its agent is bound to is denied
/// alone (like the kill switch): nothing else about it can be trusted, and an entity's
/// kill switch, limits and approvers must not be escaped by a look-alike entity id.
fn entity_mismatch(s: &Projections, intent: &SpendIntent) -> Option<crate::decision::Evaluation> {
    let (bound_entity, bound_seq) = s.agent_entity(&intent.agent_id)?;
    if bound_entity == intent.entity_id {
        return None;
    }
    Some(crate::decision::Evaluation {
        effect: Effect::Deny,
        approvals_required: 0,
        reasons: vec![crate::decision::Finding {
            effect: Effect::Deny,
            code: std::borrow::Cow::Borrowed(policy::codes::ENTITY_MISMATCH),
            detail: std::borrow::Cow::Owned(format!(
                "agent {} is bound to entity {} (ledgerSeq {}); the intent claims entity {}",
                intent.agent_id, bound_entity, bound_seq, intent.entity_id
            )),
            approvals: 0,
        }],
    })
}

/// Reason code of the informational finding a converted intent carries (stable).
pub const CURRENCY_CONVERTED: &str = "currency_converted";

/// The conversion of an intent in a currency the policy accepts, at the latest rate
/// in `s`; `None` when it is in the policy's currency, not accepted, or has no rate
/// (then the evaluator denies it as `currency_not_supported`).
fn conversion(
    s: &Projections,
    intent: &SpendIntent,
    p: &CompiledPolicy,
) -> Option<events::FxConversion> {
    if intent.currency == p.currency.code || !p.accepts_fx(&intent.currency) {
        return None;
    }
    let pair = fx_pair(&intent.currency, p.currency.code);
    let rate = s.fx_rates.get(&pair)?;
    let amount = crate::money::convert(intent.amount, rate.rate, p.currency.minor_units)?;
    Some(events::FxConversion {
        pair,
        rate: rate.rate,
        rate_seq: rate.seq,
        amount,
        currency: p.currency.code.to_string(),
        intent_amount: intent.amount,
    })
}

/// The `intent_decided` payload of a verdict (`intent` as it is stored: masked).
pub fn decided(
    intent: SpendIntent,
    policy: Option<&CompiledPolicy>,
    v: Verdict,
    fingerprint: [u8; 32],
    personal: Option<Sealed>,
    accepted_at: DateTime<Utc>,
) -> events::IntentDecided<SpendIntent> {
    events::IntentDecided {
        intent,
        personal,
        fingerprint: hex::encode(fingerprint),
        accepted_at,
        kill: v.kill,
        policy: policy.map(|p| p.identity.clone()),
        usage: v.usage,
        approval_message: v.evaluation.effect.needs_approval(),
        evaluation: v.evaluation,
        expires_at: v.expires_at,
        authorization_ttl_secs: v.authorization_ttl_secs,
        fx: v.fx,
        bindings: None,
        shadow: None,
    }
}

/// A shadow candidate's would-be decision on `s`, the projections the enforced decision
/// of the same intent sees: the same rule, only recorded.
pub fn shadow_decision(
    s: &Projections,
    intent: &SpendIntent,
    candidate: &CompiledPolicy,
    now: DateTime<Utc>,
) -> events::ShadowDecision {
    let v = verdict(s, intent, Some(candidate), now);
    events::ShadowDecision {
        policy: candidate.identity.clone(),
        effect: v.evaluation.effect,
        approvals_required: v.evaluation.approvals_required,
        codes: v
            .evaluation
            .reasons
            .into_iter()
            .map(|f| f.code.into_owned())
            .collect(),
    }
}

/// The intent as stored in events: account masked, every PAN-looking string masked.
pub fn masked_intent(intent: &SpendIntent) -> Result<SpendIntent, serde_json::Error> {
    // The intent as given (amount keeps its scale: replay must see exactly the same
    // input); the canonical form is only used for the fingerprint.
    let mut v = serde_json::to_value(intent)?;
    if let Some(account) = &intent.beneficiary.account
        && let Some(b) = v.get_mut("beneficiary").and_then(|b| b.as_object_mut())
    {
        b.insert(
            "account".into(),
            serde_json::Value::String(privacy::mask_account(account)),
        );
    }
    privacy::mask_pans_in_json(&mut v);
    serde_json::from_value(v)
}

/// The `intent_closed` event of a waiting intent.
pub fn close(
    p: &PendingRow,
    outcome: Outcome,
    approvers: Vec<String>,
    kill_scope: Option<String>,
    now: DateTime<Utc>,
    actor: &str,
) -> Staged {
    Staged {
        chain_id: agent_chain(&p.agent_id),
        actor: actor.to_string(),
        resource: p.intent_id.clone(),
        event: LedgerEvent::IntentClosed(Box::new(events::IntentClosed {
            intent_id: p.intent_id.clone(),
            agent_id: p.agent_id.clone(),
            entity_id: p.entity_id.clone(),
            outcome: outcome.as_str().to_string(),
            approvers,
            closed_at: now,
            amount: p.amount,
            currency: p.currency.clone(),
            tz: p.tz.clone(),
            day: p.day,
            month: p.month,
            kill_scope,
            authorization_expires_at: (outcome == Outcome::Approved).then(|| {
                chain::to_micros(now + chrono::Duration::seconds(p.authorization_ttl_secs))
            }),
            settlement: None,
            fx: match (p.fx_rate, p.intent_amount, &p.intent_currency) {
                (Some(rate), Some(intent_amount), Some(intent_currency))
                    if outcome == Outcome::Approved =>
                {
                    Some(events::ClosedFx {
                        intent_amount,
                        intent_currency: intent_currency.clone(),
                        rate,
                    })
                }
                _ => None,
            },
            votes: Vec::new(),
            approvals_required: None,
            terms: None,
        })),
    }
}

/// `close` reporting the intent's accepted votes, `current` (the vote closing it, not in
/// the snapshot yet) last.
fn close_voted(
    s: &Projections,
    closing: Staged,
    intent_id: &str,
    current: Option<&VerifiedVote>,
) -> Staged {
    let mut staged = closing;
    if let LedgerEvent::IntentClosed(c) = &mut staged.event {
        let mut prior: Vec<&VoteRow> = s
            .votes
            .range((intent_id.to_string(), String::new())..)
            .take_while(|((i, _), _)| i == intent_id)
            .map(|(_, v)| v)
            .collect();
        prior.sort_by_key(|v| v.seq);
        c.votes = prior
            .into_iter()
            .map(|v| events::ClosingVote {
                approver_id: v.approver_id.clone(),
                vote: v.vote.clone(),
                signed_at: v.signed_at,
            })
            .chain(current.map(|v| events::ClosingVote {
                approver_id: v.approver_id.clone(),
                vote: v.vote.as_str().to_string(),
                signed_at: chain::to_micros(v.signed_at),
            }))
            .collect();
        if let Some(p) = s.pending.get(intent_id) {
            c.approvals_required = u32::try_from(p.approvals_required).ok();
            c.terms = s
                .waiting_hashes
                .get(intent_id)
                .map(|hash| approval_terms(hash, p.expires_at));
        }
    }
    staged
}

/// Refusal codes of votes (SPEC §4), stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteRefusal {
    UnknownIntent,
    NotAwaitingApproval,
    AlreadyClosed,
    Expired,
    SelfApproval,
    DuplicateApprover,
}

impl VoteRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteRefusal::UnknownIntent => "unknown_intent",
            VoteRefusal::NotAwaitingApproval => "not_awaiting_approval",
            VoteRefusal::AlreadyClosed => "already_closed",
            VoteRefusal::Expired => "expired",
            VoteRefusal::SelfApproval => "self_approval",
            VoteRefusal::DuplicateApprover => "duplicate_approver",
        }
    }
}

/// Applies a verified vote (SPEC §4). `agent` is the agent the intent was decided for
/// (`None`: no decision recorded); `s` holds the intent's pending row, outcome, votes
/// and the kill switch. Returns the events in append order; the last vote event
/// (`vote_accepted` / `vote_refused`) is the vote's result.
pub fn step_vote(
    s: &Projections,
    agent: Option<&str>,
    vote: &VerifiedVote,
    now: DateTime<Utc>,
) -> Vec<Staged> {
    let id = &vote.intent_id;
    let chain_id = agent.map_or_else(|| INTAKE_CHAIN.to_string(), agent_chain);
    let refuse = |reason: VoteRefusal, detail: String| Staged {
        chain_id: chain_id.clone(),
        actor: vote.approver_id.clone(),
        resource: id.clone(),
        event: LedgerEvent::VoteRefused(events::VoteRefused {
            intent_id: Some(id.clone()),
            approver_id: Some(vote.approver_id.clone()),
            vote: Some(vote.vote.as_str().to_string()),
            reason: reason.as_str().to_string(),
            detail,
            raw: None,
        }),
    };
    let Some(agent) = agent else {
        return vec![refuse(
            VoteRefusal::UnknownIntent,
            format!("no decision is recorded for intent {id}"),
        )];
    };
    let Some(p) = s.pending.get(id) else {
        return vec![match s.outcomes.get(id) {
            Some(o) => refuse(
                VoteRefusal::AlreadyClosed,
                format!("intent {id} is already closed as {}", o.outcome),
            ),
            None => refuse(
                VoteRefusal::NotAwaitingApproval,
                format!("intent {id} was not decided REQUIRE_HITL or REQUIRE_MSIG"),
            ),
        }];
    };
    let p = &p;
    if now >= p.expires_at {
        let expired = close(
            p,
            Outcome::Expired,
            s.approvers(id),
            None,
            now,
            "spendguard",
        );
        return vec![
            close_voted(s, expired, id, None),
            refuse(
                VoteRefusal::Expired,
                format!(
                    "the approval window of intent {id} closed at {}",
                    chain::format_time(&p.expires_at)
                ),
            ),
        ];
    }
    if vote.approver_id == agent {
        return vec![refuse(
            VoteRefusal::SelfApproval,
            format!("approver {} is the requesting agent", vote.approver_id),
        )];
    }
    if s.has_voted(id, &vote.approver_id) {
        return vec![refuse(
            VoteRefusal::DuplicateApprover,
            format!("approver {} already voted on intent {id}", vote.approver_id),
        )];
    }
    let mut out = vec![Staged {
        chain_id,
        actor: vote.approver_id.clone(),
        resource: id.clone(),
        event: LedgerEvent::VoteAccepted(events::VoteAccepted {
            intent_id: id.clone(),
            approver_id: vote.approver_id.clone(),
            vote: vote.vote.as_str().to_string(),
            signed_at: chain::to_micros(vote.signed_at),
            proof: vote.proof.clone(),
        }),
    }];
    let approver = vote.approver_id.as_str();
    match vote.vote {
        Vote::Reject => {
            let rejected = close(
                p,
                Outcome::Rejected,
                vec![vote.approver_id.clone()],
                None,
                now,
                approver,
            );
            out.push(close_voted(s, rejected, id, Some(vote)));
        }
        Vote::Approve => {
            let mut approvers = s.approvers(id);
            // An approver removed from the registry since voting no longer counts.
            if let Some(registered) = &vote.registered {
                approvers.retain(|a| registered.contains(a));
            }
            approvers.push(vote.approver_id.clone());
            let required = usize::try_from(p.approvals_required.max(1)).unwrap_or(1);
            if approvers.len() >= required {
                // A quorum reached while a kill switch covers the intent does not spend.
                let closed = match s.kill_state(&p.agent_id, &p.entity_id) {
                    KillState::On { scope } => {
                        close(p, Outcome::Killed, approvers, Some(scope), now, approver)
                    }
                    KillState::Off => close(p, Outcome::Approved, approvers, None, now, approver),
                };
                out.push(close_voted(s, closed, id, Some(vote)));
            }
        }
    }
    out
}

/// Closes as EXPIRED every waiting intent of the snapshot whose window ended at `now`,
/// agent by agent (the live sweeper closes each agent's in its own transaction), oldest
/// decision first.
pub fn step_expire(s: &Projections, now: DateTime<Utc>) -> Vec<Staged> {
    let mut due: Vec<PendingRow> = s.pending.values().filter(|p| p.expires_at <= now).collect();
    due.sort_by(|a, b| (&a.agent_id, a.decided_seq).cmp(&(&b.agent_id, b.decided_seq)));
    due.into_iter()
        .map(|p| {
            let expired = close(
                &p,
                Outcome::Expired,
                s.approvers(&p.intent_id),
                None,
                now,
                "spendguard",
            );
            close_voted(s, expired, &p.intent_id, None)
        })
        .collect()
}

/// Turns a kill-switch change into its event, or nothing when the state would not
/// change (a repeated request). The event and the `kill_switch` row hold the scope's
/// text (`global`, `entity:ID`, `agent:ID`).
pub fn step_kill_switch(
    s: &Projections,
    scope: &Scope,
    on: bool,
    actor: &str,
    reason: &str,
) -> Option<Staged> {
    let scope = scope.to_string();
    let current = s.kills.get(&scope).map(|k| k.active);
    if current == Some(on) || (current.is_none() && !on) {
        return None;
    }
    Some(Staged {
        chain_id: chain::GLOBAL_CHAIN.to_string(),
        actor: actor.to_string(),
        resource: format!("kill-switch:{scope}"),
        event: LedgerEvent::KillSwitchSet(events::KillSwitchSet {
            scope,
            active: on,
            actor: actor.to_string(),
            reason: reason.to_string(),
        }),
    })
}

/// The intent a settlement names, as its decision recorded it.
#[derive(Debug, Clone, Copy)]
pub struct SettledIntent<'a> {
    pub agent_id: &'a str,
    pub entity_id: &'a str,
    pub effect: Effect,
}

/// A settlement to apply, with what the step cannot compute itself.
pub struct SettleInput<'a> {
    pub settlement: &'a Settlement,
    /// Keyed fingerprint of the settlement's canonical form (idempotency).
    pub fingerprint: [u8; 32],
    /// The ledger's time (the transaction's clock).
    pub now: DateTime<Utc>,
    /// The agent's policy says `refunds: restore`.
    pub restore_refunds: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SettleStep {
    /// Applied before with the same payload: nothing to append; the recorded row.
    Redelivered(AppliedSettlement),
    /// A `settlement_refused` event (its code is also returned).
    Refused(Staged, SettlementRefusal),
    /// A `settlement_applied` event (CAPTURE, VOID, REFUND) or an `intent_closed`
    /// CANCELLED event.
    Applied(Staged),
}

/// Applies one settlement message (SPEC §11) to a snapshot holding the intent's
/// authorization, pending approval, outcome and the settlementId's earlier row.
/// `intent` is the intent's decision (`None`: no decision recorded).
pub fn step_settle(
    s: &Projections,
    intent: Option<SettledIntent<'_>>,
    input: SettleInput<'_>,
) -> SettleStep {
    let st = input.settlement;
    let fingerprint = hex::encode(input.fingerprint);
    let chain_id = intent.map_or_else(|| INTAKE_CHAIN.to_string(), |i| agent_chain(i.agent_id));
    let actor = intent.map_or("unknown", |i| i.agent_id).to_string();
    let refuse = |code: SettlementRefusal, detail: String| {
        SettleStep::Refused(
            Staged {
                chain_id: chain_id.clone(),
                actor: actor.clone(),
                resource: st.intent_id.clone(),
                event: LedgerEvent::SettlementRefused(events::SettlementRefused {
                    settlement_id: Some(st.settlement_id.clone()),
                    intent_id: Some(st.intent_id.clone()),
                    kind: Some(st.kind.as_str().to_string()),
                    code: code.as_str().to_string(),
                    detail,
                    fingerprint: fingerprint.clone(),
                    raw: None,
                }),
            },
            code,
        )
    };
    if let Some(earlier) = s.settlements.get(&intent_key(&st.settlement_id)) {
        if earlier.fingerprint == Some(input.fingerprint) {
            return SettleStep::Redelivered(earlier.clone());
        }
        return refuse(
            SettlementRefusal::IdempotencyConflict,
            format!(
                "settlement {} was already applied (ledgerSeq {}) with a different payload; use a new settlementId",
                st.settlement_id, earlier.seq
            ),
        );
    }
    let Some(intent) = intent else {
        return refuse(
            SettlementRefusal::UnknownIntent,
            format!("no decision is recorded for intent {}", st.intent_id),
        );
    };
    let settlement = events::SettlementRef {
        settlement_id: st.settlement_id.clone(),
        fingerprint: fingerprint.clone(),
    };
    if st.kind == SettlementType::Cancel {
        let Some(p) = s.pending.get(&st.intent_id) else {
            return refuse(
                SettlementRefusal::NotAwaitingApproval,
                not_waiting(s, &st.intent_id, intent.effect),
            );
        };
        let p = &p;
        let mut staged = close(
            p,
            Outcome::Cancelled,
            s.approvers(&st.intent_id),
            None,
            input.now,
            intent.agent_id,
        );
        if let LedgerEvent::IntentClosed(c) = &mut staged.event {
            c.settlement = Some(settlement);
        }
        return SettleStep::Applied(staged);
    }
    let Some(auth) = s.authorization_state(&st.intent_id) else {
        return refuse(
            SettlementRefusal::NotAuthorized,
            not_authorized(s, &st.intent_id, intent.effect),
        );
    };
    if let Some(currency) = &st.currency
        && *currency != auth.currency
    {
        return refuse(
            SettlementRefusal::CurrencyMismatch,
            format!(
                "settlement in {currency}, but the intent was authorized in {}",
                auth.currency
            ),
        );
    }
    let settled = match auth.settle(
        st.kind,
        st.amount,
        st.is_final,
        st.kind == SettlementType::Refund && input.restore_refunds,
    ) {
        Ok(settled) => settled,
        Err((code, detail)) => return refuse(code, detail),
    };
    let mut metadata = st.metadata.clone().map(serde_json::Value::Object);
    if let Some(m) = &mut metadata {
        privacy::mask_pans_in_json(m);
    }
    SettleStep::Applied(Staged {
        chain_id,
        actor,
        resource: st.intent_id.clone(),
        event: LedgerEvent::SettlementApplied(Box::new(events::SettlementApplied {
            settlement,
            intent_id: st.intent_id.clone(),
            agent_id: intent.agent_id.to_string(),
            entity_id: intent.entity_id.to_string(),
            kind: st.kind,
            requested: st.amount,
            is_final: st.is_final,
            amount: settled.amount,
            released: settled.released,
            forced: settled.forced,
            restores: st.kind == SettlementType::Refund && input.restore_refunds,
            usage_delta: settled.usage_delta,
            authorization: settled.after,
            occurred_at: st.occurred_at,
            metadata: metadata.and_then(|m| match m {
                serde_json::Value::Object(o) => Some(o),
                _ => None,
            }),
        })),
    })
}

/// Why an intent without an authorization cannot be settled.
fn not_authorized(s: &Projections, intent_id: &str, effect: Effect) -> String {
    if s.pending.contains_key(intent_id) {
        return format!(
            "intent {intent_id} is waiting for approval ({effect}); nothing is authorized yet"
        );
    }
    match s.outcomes.get(intent_id) {
        Some(o) => format!(
            "intent {intent_id} was closed as {} without an authorization",
            o.outcome
        ),
        None => format!("intent {intent_id} was decided {effect}; nothing is authorized"),
    }
}

/// Why an intent cannot be cancelled.
fn not_waiting(s: &Projections, intent_id: &str, effect: Effect) -> String {
    if s.authorizations.contains_key(&intent_key(intent_id)) {
        return format!(
            "intent {intent_id} is authorized, not waiting for approval: send a VOID to release it"
        );
    }
    match s.outcomes.get(intent_id) {
        Some(o) => format!("intent {intent_id} is already closed as {}", o.outcome),
        None => {
            format!("intent {intent_id} was decided {effect}, not REQUIRE_HITL or REQUIRE_MSIG")
        }
    }
}

/// Releases every authorization of the snapshot whose `authorizationTtl` ended at
/// `now` (AUTH_EXPIRED), agent by agent, oldest expiry first.
pub fn step_expire_authorizations(s: &Projections, now: DateTime<Utc>) -> Vec<Staged> {
    assert!(
        !s.forget_ids,
        "expiring authorizations needs their intent ids"
    );
    let mut due: Vec<(AuthorizationRow, AuthorizationState, Decimal)> = s
        .authorizations
        .values()
        .filter_map(|a| {
            let (after, delta) = a.state(&s.windows.names).expire(now)?;
            Some((s.authorization_row(a), after, delta))
        })
        .collect();
    due.sort_by(|x, y| {
        (&x.0.agent_id, x.0.state.expires_at, &x.0.intent_id).cmp(&(
            &y.0.agent_id,
            y.0.state.expires_at,
            &y.0.intent_id,
        ))
    });
    due.into_iter()
        .map(|(a, after, delta)| Staged {
            chain_id: agent_chain(&a.agent_id),
            actor: "spendguard".to_string(),
            resource: a.intent_id.clone(),
            event: LedgerEvent::AuthorizationExpired(Box::new(events::AuthorizationExpired {
                intent_id: a.intent_id.clone(),
                agent_id: a.agent_id.clone(),
                entity_id: a.entity_id.clone(),
                released: after.expired_amount,
                usage_delta: delta,
                authorization: after,
            })),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interner_tells_apart_names_with_the_same_hash() {
        let mut n = Interner::default();
        let a = n.intern_hashed(7, "agent-a");
        let b = n.intern_hashed(7, "agent-b");
        assert_ne!(a, b);
        assert_eq!(n.intern_hashed(7, "agent-b"), b);
        assert_eq!(n.intern_hashed(7, "agent-a"), a);
        assert_eq!(n.lookup(7, "agent-c"), None);
        assert_eq!((n.name(a), n.name(b)), ("agent-a", "agent-b"));
        let z = n.intern("America/Sao_Paulo");
        assert_eq!(n.intern("America/Sao_Paulo"), z);
        assert_eq!(n.get("America/Sao_Paulo"), Some(z));
        assert_eq!(n.get("UTC"), None);
        assert_eq!(n.name(z), "America/Sao_Paulo");
        assert_eq!(n.intern(""), 3);
        assert_eq!(n.name(3), "");
    }

    #[test]
    fn windows_keep_amounts_that_do_not_pack() {
        let mut w = Windows::default();
        let k = usage::key(
            "ag",
            usage::DAY,
            "UTC",
            "BRL",
            NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        );
        let big = Decimal::from_i128_with_scale(1 << 60, 2);
        w.add(&k, Decimal::new(1050, 2), Decimal::ZERO);
        assert_eq!(w.get(&k), Some((Decimal::new(1050, 2), Decimal::ZERO)));
        w.add(&k, big, Decimal::new(1, 0));
        assert_eq!(
            w.get(&k),
            Some((Decimal::new(1050, 2) + big, Decimal::new(1, 0)))
        );
        w.add(&k, -big, Decimal::ZERO);
        assert_eq!(w.total(&k), Decimal::new(1150, 2));
        assert_eq!(w.iter().count(), 1);
        assert_eq!(
            w.take(&k),
            Some((Decimal::new(1050, 2), Decimal::new(1, 0)))
        );
        assert_eq!(w.get(&k), None);
    }
}
