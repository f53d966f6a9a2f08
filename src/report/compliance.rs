//! The compliance report, computed by replaying ledger events (never from counters or
//! projections). Pure: [`build`] takes the events and the chain verification result.

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

use super::events::*;
use crate::decision::Effect;
use crate::ledger::Outcome;
use crate::ledger::events::EventKind;

/// Most rows in a "by agent" / "top reasons" table (the JSON keeps the full maps).
pub const TOP_ROWS: usize = 10;
/// Agents shown in the spend-vs-caps chart.
pub const TOP_AGENTS_CHARTED: usize = 5;

/// Which events a report covers: `[from 00:00 UTC, to + 1 day 00:00 UTC)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
}

impl Period {
    pub fn start(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.from.and_hms_opt(0, 0, 0).unwrap_or_default())
    }
    pub fn end(&self) -> DateTime<Utc> {
        Utc.from_utc_datetime(&self.to.and_hms_opt(0, 0, 0).unwrap_or_default()) + Duration::days(1)
    }
    fn contains(&self, t: DateTime<Utc>) -> bool {
        t >= self.start() && t < self.end()
    }
}

/// The outcome of recomputing the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainCheck {
    pub ok: bool,
    pub events_checked: u64,
    /// First broken event and what is wrong, when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_problem: Option<String>,
}

/// Counts per effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EffectCounts {
    #[serde(rename = "ALLOW")]
    pub allow: u64,
    #[serde(rename = "REQUIRE_HITL")]
    pub hitl: u64,
    #[serde(rename = "REQUIRE_MSIG")]
    pub msig: u64,
    #[serde(rename = "DENY")]
    pub deny: u64,
}

impl EffectCounts {
    pub fn add(&mut self, e: Effect) {
        match e {
            Effect::Allow => self.allow += 1,
            Effect::RequireHitl => self.hitl += 1,
            Effect::RequireMsig => self.msig += 1,
            Effect::Deny => self.deny += 1,
        }
    }
    pub fn total(&self) -> u64 {
        self.allow + self.hitl + self.msig + self.deny
    }
    pub fn get(&self, e: Effect) -> u64 {
        match e {
            Effect::Allow => self.allow,
            Effect::RequireHitl => self.hitl,
            Effect::RequireMsig => self.msig,
            Effect::Deny => self.deny,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decisions {
    pub total: u64,
    pub by_effect: EffectCounts,
    pub by_policy: BTreeMap<String, EffectCounts>,
    pub by_agent: BTreeMap<String, EffectCounts>,
    pub by_entity: BTreeMap<String, EffectCounts>,
    pub by_category: BTreeMap<String, EffectCounts>,
    pub by_purpose: BTreeMap<String, EffectCounts>,
    /// UTC day → counts.
    pub per_day: BTreeMap<NaiveDate, EffectCounts>,
    /// Deny reason code → number of denied intents carrying it, most frequent first.
    pub top_deny_reasons: Vec<(String, u64)>,
    pub idempotency_conflicts: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Approvals {
    /// Decisions in the period that had to wait (HITL + MSIG).
    pub requested: u64,
    pub approved: u64,
    pub rejected: u64,
    pub expired: u64,
    pub killed: u64,
    /// Cancelled by the payment service while waiting (SPEC §11 CANCEL).
    pub cancelled: u64,
    /// Requested in the period and not closed by its end.
    pub still_pending: u64,
    pub votes_accepted: u64,
    pub refused_votes: u64,
    pub refused_votes_by_reason: BTreeMap<String, u64>,
    /// Decision to APPROVED outcome, seconds (nearest rank).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_approve_p50_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_approve_p95_seconds: Option<i64>,
    /// Every approval latency, seconds, for the chart.
    pub time_to_approve_seconds: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KillSwitchEvent {
    pub at: DateTime<Utc>,
    pub scope: String,
    pub active: bool,
    pub actor: String,
    pub reason: String,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyActivation {
    pub at: DateTime<Utc>,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub actor: String,
    /// True when the activation happened before the period (the version was already in force).
    pub before_period: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpend {
    pub agent_id: String,
    pub currency: String,
    /// Committed in the period: ALLOW decisions plus approved waits (in the day of the request).
    pub spent: Decimal,
    /// The highest single local day of committed spend in the period.
    pub peak_day: Option<NaiveDate>,
    pub peak_day_spent: Decimal,
    /// Daily cap of the policy that decided the agent's last intent in the period.
    pub daily_cap: Option<Decimal>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Privacy {
    /// Intents whose beneficiary account is stored masked (BIN + last four at most).
    pub masked_accounts: u64,
    /// Subjects erased in the period (LGPD right to erasure): (subject, when, actor).
    pub erased_subjects: Vec<(String, DateTime<Utc>, String)>,
}

/// Money moved on authorizations in one UTC day and currency (SPEC §11).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleAmounts {
    /// Opened: ALLOW decisions and APPROVED outcomes.
    pub authorized: Decimal,
    /// CAPTUREs (forced captures included).
    pub captured: Decimal,
    /// Released by VOIDs and by the uncaptured remainder of final captures.
    pub voided: Decimal,
    pub refunded: Decimal,
    /// Released by the ledger when `authorizationTtl` passed (AUTH_EXPIRED).
    pub expired: Decimal,
}

impl LifecycleAmounts {
    fn add(&mut self, o: &LifecycleAmounts) {
        self.authorized += o.authorized;
        self.captured += o.captured;
        self.voided += o.voided;
        self.refunded += o.refunded;
        self.expired += o.expired;
    }
}

/// A capture recorded after its authorization expired (`capture_after_expiry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForcedCapture {
    pub intent_id: String,
    pub agent_id: String,
    pub settlement_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub at: DateTime<Utc>,
    pub seq: i64,
}

/// What became of the money the decisions authorized (SPEC §11).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// UTC day of the event → currency → amounts.
    pub per_day: BTreeMap<NaiveDate, BTreeMap<String, LifecycleAmounts>>,
    /// Currency → amounts over the period.
    pub totals: BTreeMap<String, LifecycleAmounts>,
    /// Settlement messages applied in the period (captures, voids, refunds).
    pub settlements_applied: u64,
    /// Settlement messages refused, by stable code (ledger refusals and parse codes).
    pub refused_settlements: u64,
    pub refused_settlements_by_code: BTreeMap<String, u64>,
    /// Captures after expiry, in ledger order.
    pub forced_captures: Vec<ForcedCapture>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceReport {
    pub period: Period,
    pub generated_at: DateTime<Utc>,
    pub events_in_period: u64,
    pub decisions: Decisions,
    pub approvals: Approvals,
    pub kill_switch: Vec<KillSwitchEvent>,
    pub policies: Vec<PolicyActivation>,
    pub invalid_inputs: u64,
    pub invalid_inputs_by_code: BTreeMap<String, u64>,
    pub spend_by_agent: Vec<AgentSpend>,
    pub lifecycle: Lifecycle,
    pub audit_chain: ChainCheck,
    pub privacy: Privacy,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1) as usize;
    sorted.get(rank - 1).copied()
}

struct Waiting {
    accepted_at: DateTime<Utc>,
    in_period: bool,
    agent: String,
    day: NaiveDate,
    amount: Decimal,
    currency: String,
    closed: bool,
}

/// Whether a refusal naming `intent_id` (maybe none) counts in a report of `period`: an
/// unfiltered report counts everything; an entity report counts only refusals of a known
/// intent of that entity.
fn attributed_to(
    period: &Period,
    intent_entity: &HashMap<String, String>,
    intent_id: Option<&str>,
) -> bool {
    match (&period.entity, intent_id.and_then(|i| intent_entity.get(i))) {
        (None, _) => true,
        (Some(want), Some(e)) => want == e,
        (Some(_), None) => false,
    }
}

/// Replays `events` (every event before the period's end, in sequence order).
pub fn build(
    events: &[EventRecord],
    period: Period,
    chain: ChainCheck,
    generated_at: DateTime<Utc>,
) -> ComplianceReport {
    let entity_ok = |e: &str| period.entity.as_deref().is_none_or(|want| want == e);
    let mut d = Decisions::default();
    let mut a = Approvals::default();
    let mut kill = Vec::new();
    let mut policies = Vec::new();
    let mut caps: HashMap<String, (Option<Decimal>, Option<Decimal>)> = HashMap::new();
    let mut invalid_by_code: BTreeMap<String, u64> = BTreeMap::new();
    let mut privacy = Privacy::default();
    let mut deny_reasons: HashMap<String, u64> = HashMap::new();
    let mut waiting: HashMap<String, Waiting> = HashMap::new();
    let mut intent_entity: HashMap<String, String> = HashMap::new();
    let mut agent_entity: HashMap<String, String> = HashMap::new();
    // (agent, currency) -> day -> committed; agent -> last policy sha
    let mut spend: BTreeMap<(String, String), BTreeMap<NaiveDate, Decimal>> = BTreeMap::new();
    let mut agent_policy: HashMap<String, String> = HashMap::new();
    let mut lifecycle = Lifecycle::default();
    let mut events_in_period = 0u64;

    for ev in events {
        let in_period = period.contains(ev.recorded_at);
        if in_period {
            events_in_period += 1;
        }
        // Reports read payloads through lenient views (old events keep reading after the
        // ledger adds fields) but dispatch on the ledger's event kinds.
        let Some(kind) = EventKind::parse(&ev.event_type) else {
            continue;
        };
        match kind {
            EventKind::PolicyActivated => {
                if let Ok(p) = serde_json::from_value::<PolicyActivatedView>(ev.payload.clone()) {
                    caps.insert(p.policy.sha256.clone(), caps_of(&p.canonical));
                    policies.push(PolicyActivation {
                        at: ev.recorded_at,
                        name: p.policy.name,
                        version: p.policy.version,
                        sha256: p.policy.sha256,
                        actor: ev.actor.clone(),
                        before_period: ev.recorded_at < period.start(),
                    });
                }
            }
            // The approver registry and the bindings are versioned like policies
            // (SPEC §14, §16): listed with them, as what was in force when.
            EventKind::RegistryActivated | EventKind::BindingsActivated => {
                if let Ok(c) = serde_json::from_value::<crate::ledger::events::ConfigActivated>(
                    ev.payload.clone(),
                ) {
                    policies.push(PolicyActivation {
                        at: ev.recorded_at,
                        name: if kind == EventKind::RegistryActivated {
                            "approver registry".into()
                        } else {
                            "bindings".into()
                        },
                        version: format!("v{}", c.version),
                        sha256: c.sha256,
                        actor: ev.actor.clone(),
                        before_period: ev.recorded_at < period.start(),
                    });
                }
            }
            EventKind::IntentDecided => {
                let Ok(v) = serde_json::from_value::<DecidedView>(ev.payload.clone()) else {
                    continue;
                };
                let Some(f) = v.facts() else { continue };
                intent_entity.insert(f.intent_id.clone(), f.entity_id.clone());
                if !in_period || !entity_ok(&f.entity_id) {
                    continue;
                }
                agent_entity.insert(f.agent_id.clone(), f.entity_id.clone());
                let effect = v.evaluation.effect;
                d.total += 1;
                d.by_effect.add(effect);
                let policy_key = v.policy.as_ref().map_or_else(
                    || "(no policy bound)".to_string(),
                    |p| format!("{}@{}", p.name, p.version),
                );
                d.by_policy.entry(policy_key).or_default().add(effect);
                d.by_agent
                    .entry(f.agent_id.clone())
                    .or_default()
                    .add(effect);
                d.by_entity
                    .entry(f.entity_id.clone())
                    .or_default()
                    .add(effect);
                d.by_category
                    .entry(f.category.clone())
                    .or_default()
                    .add(effect);
                d.by_purpose
                    .entry(f.purpose.clone())
                    .or_default()
                    .add(effect);
                d.per_day
                    .entry(ev.recorded_at.date_naive())
                    .or_default()
                    .add(effect);
                if effect == Effect::Deny {
                    let mut codes: Vec<&str> = v
                        .evaluation
                        .reasons
                        .iter()
                        .filter(|r| r.effect == Effect::Deny)
                        .map(|r| r.code.as_str())
                        .collect();
                    codes.sort_unstable();
                    codes.dedup();
                    for c in codes {
                        *deny_reasons.entry(c.to_string()).or_default() += 1;
                    }
                }
                if f.account.as_deref().is_some_and(is_masked) {
                    privacy.masked_accounts += 1;
                }
                if let Some(p) = &v.policy {
                    agent_policy.insert(f.agent_id.clone(), p.sha256.clone());
                }
                let day = v
                    .usage
                    .as_ref()
                    .and_then(|u| u.window.as_ref())
                    .map_or(v.accepted_at.date_naive(), |w| w.day);
                if effect == Effect::Allow {
                    lifecycle_day(&mut lifecycle, ev, &f.currency).authorized += f.amount;
                    *spend
                        .entry((f.agent_id.clone(), f.currency.clone()))
                        .or_default()
                        .entry(day)
                        .or_default() += f.amount;
                }
                if effect.needs_approval() {
                    a.requested += 1;
                    waiting.insert(
                        f.intent_id.clone(),
                        Waiting {
                            accepted_at: v.accepted_at,
                            in_period: true,
                            agent: f.agent_id,
                            day,
                            amount: f.amount,
                            currency: f.currency,
                            closed: false,
                        },
                    );
                }
            }
            EventKind::IntentClosed => {
                let Ok(c) = serde_json::from_value::<ClosedView>(ev.payload.clone()) else {
                    continue;
                };
                let entity = c
                    .entity_id
                    .clone()
                    .or_else(|| intent_entity.get(&c.intent_id).cloned());
                if !in_period || !entity.as_deref().is_some_and(&entity_ok) {
                    if let Some(w) = waiting.get_mut(&c.intent_id) {
                        w.closed = true;
                    }
                    continue;
                }
                let outcome = Outcome::parse(&c.outcome);
                match outcome {
                    Some(Outcome::Approved) => a.approved += 1,
                    Some(Outcome::Rejected) => a.rejected += 1,
                    Some(Outcome::Expired) => a.expired += 1,
                    Some(Outcome::Killed) => a.killed += 1,
                    Some(Outcome::Cancelled) => a.cancelled += 1,
                    // Lifecycle outcomes are settlement events, never `intent_closed`.
                    Some(
                        Outcome::Captured
                        | Outcome::Voided
                        | Outcome::Refunded
                        | Outcome::AuthExpired,
                    )
                    | None => {}
                }
                if outcome == Some(Outcome::Approved) {
                    let waited = waiting.get(&c.intent_id);
                    let amount = c.amount.or(waited.map(|w| w.amount));
                    let currency = c.currency.clone().or(waited.map(|w| w.currency.clone()));
                    if let (Some(amount), Some(currency)) = (amount, currency) {
                        lifecycle_day(&mut lifecycle, ev, &currency).authorized += amount;
                    }
                }
                if let Some(w) = waiting.get_mut(&c.intent_id) {
                    w.closed = true;
                    if outcome == Some(Outcome::Approved) {
                        a.time_to_approve_seconds
                            .push((c.closed_at - w.accepted_at).num_seconds().max(0));
                        if w.in_period {
                            *spend
                                .entry((w.agent.clone(), w.currency.clone()))
                                .or_default()
                                .entry(w.day)
                                .or_default() += w.amount;
                        }
                    }
                }
            }
            EventKind::VoteAccepted => {
                if !in_period {
                    continue;
                }
                if let Ok(v) = serde_json::from_value::<VoteAcceptedView>(ev.payload.clone())
                    && intent_entity
                        .get(&v.intent_id)
                        .is_some_and(|e| entity_ok(e))
                {
                    a.votes_accepted += 1;
                }
            }
            EventKind::VoteRefused => {
                if !in_period {
                    continue;
                }
                if let Ok(v) = serde_json::from_value::<VoteRefusedView>(ev.payload.clone()) {
                    // A vote that names no known intent cannot be attributed to an entity:
                    // it is counted only in the unfiltered report.
                    if attributed_to(&period, &intent_entity, v.intent_id.as_deref()) {
                        a.refused_votes += 1;
                        *a.refused_votes_by_reason.entry(v.reason).or_default() += 1;
                    }
                }
            }
            EventKind::KillSwitchSet => {
                if let Ok(k) = serde_json::from_value::<KillSwitchView>(ev.payload.clone()) {
                    let relevant = match (&period.entity, k.scope.split_once(':')) {
                        (None, _) => true,
                        (Some(_), None) => true, // global
                        (Some(want), Some(("entity", id))) => want == id,
                        (Some(want), Some(("agent", id))) => agent_entity.get(id) == Some(want),
                        _ => false,
                    };
                    if in_period && relevant {
                        kill.push(KillSwitchEvent {
                            at: ev.recorded_at,
                            scope: k.scope,
                            active: k.active,
                            actor: k.actor,
                            reason: k.reason,
                            seq: ev.seq,
                        });
                    }
                }
            }
            // Invalid input cannot be attributed to an entity (it did not parse).
            EventKind::IntentInvalid if in_period && period.entity.is_none() => {
                let code = serde_json::from_value::<InvalidView>(ev.payload.clone())
                    .map_or_else(|_| "unknown".to_string(), |v| v.code);
                *invalid_by_code.entry(code).or_default() += 1;
            }
            EventKind::IdempotencyConflict => {
                let entity = ev
                    .payload
                    .get("intentId")
                    .and_then(|i| i.as_str())
                    .and_then(|i| intent_entity.get(i));
                if in_period && (period.entity.is_none() || entity.is_some_and(|e| entity_ok(e))) {
                    d.idempotency_conflicts += 1;
                }
            }
            EventKind::SubjectErased => {
                if in_period
                    && let Ok(s) = serde_json::from_value::<SubjectErasedView>(ev.payload.clone())
                {
                    privacy
                        .erased_subjects
                        .push((s.subject, ev.recorded_at, ev.actor.clone()));
                }
            }
            // Refusals counted beyond the audit bound (SPEC §15, `audit_budget`): added to
            // the same totals as the ones audited one by one. Like those, they name no
            // entity: unfiltered report only.
            EventKind::RefusalsSummarized if in_period && period.entity.is_none() => {
                let Ok(v) = serde_json::from_value::<crate::ledger::events::RefusalsSummarized>(
                    ev.payload.clone(),
                ) else {
                    continue;
                };
                for (code, n) in v.counts {
                    match v.source_topic.as_str() {
                        "spend.approvals" => {
                            a.refused_votes += n;
                            *a.refused_votes_by_reason.entry(code).or_default() += n;
                        }
                        "spend.settlements" => {
                            lifecycle.refused_settlements += n;
                            *lifecycle
                                .refused_settlements_by_code
                                .entry(code)
                                .or_default() += n;
                        }
                        _ => *invalid_by_code.entry(code).or_default() += n,
                    }
                }
            }
            // Not in the report (yet): invalid input outside the period or scope, and
            // messages set aside (counted by the operations metrics).
            EventKind::IntentInvalid
            | EventKind::RefusalsSummarized
            | EventKind::MessageSetAside
            | EventKind::PolicySetRefused
            | EventKind::FxRateSet
            | EventKind::SubjectKeysRewrapped
            | EventKind::PolicyPromoted => {}
            EventKind::SettlementApplied => {
                let Ok(v) = serde_json::from_value::<SettlementAppliedView>(ev.payload.clone())
                else {
                    continue;
                };
                if !in_period || !entity_ok(&v.entity_id) {
                    continue;
                }
                lifecycle.settlements_applied += 1;
                let day = lifecycle_day(&mut lifecycle, ev, &v.authorization.currency);
                match v.kind.as_str() {
                    "CAPTURE" => {
                        day.captured += v.amount;
                        day.voided += v.released;
                    }
                    "VOID" => day.voided += v.amount,
                    "REFUND" => day.refunded += v.amount,
                    _ => {}
                }
                if v.forced {
                    lifecycle.forced_captures.push(ForcedCapture {
                        intent_id: v.intent_id,
                        agent_id: v.agent_id,
                        settlement_id: v.settlement.settlement_id,
                        amount: v.amount,
                        currency: v.authorization.currency,
                        at: ev.recorded_at,
                        seq: ev.seq,
                    });
                }
            }
            EventKind::AuthorizationExpired => {
                let Ok(v) = serde_json::from_value::<AuthorizationExpiredView>(ev.payload.clone())
                else {
                    continue;
                };
                if in_period && entity_ok(&v.entity_id) {
                    lifecycle_day(&mut lifecycle, ev, &v.authorization.currency).expired +=
                        v.released;
                }
            }
            EventKind::SettlementRefused => {
                if !in_period {
                    continue;
                }
                if let Ok(v) = serde_json::from_value::<SettlementRefusedView>(ev.payload.clone()) {
                    // Like refused votes: a settlement naming no decided intent (unknown,
                    // malformed) counts only in the unfiltered report.
                    if attributed_to(&period, &intent_entity, v.intent_id.as_deref()) {
                        lifecycle.refused_settlements += 1;
                        *lifecycle
                            .refused_settlements_by_code
                            .entry(v.code)
                            .or_default() += 1;
                    }
                }
            }
        }
    }

    a.still_pending = waiting
        .values()
        .filter(|w| w.in_period && !w.closed)
        .count() as u64;
    a.time_to_approve_seconds.sort_unstable();
    a.time_to_approve_p50_seconds = percentile(&a.time_to_approve_seconds, 50);
    a.time_to_approve_p95_seconds = percentile(&a.time_to_approve_seconds, 95);

    let mut reasons: Vec<(String, u64)> = deny_reasons.into_iter().collect();
    reasons.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    d.top_deny_reasons = reasons;

    let mut spend_by_agent: Vec<AgentSpend> = spend
        .into_iter()
        .map(|((agent, currency), days)| {
            let (peak_day, peak) = days
                .iter()
                .max_by(|x, y| x.1.cmp(y.1).then_with(|| y.0.cmp(x.0)))
                .map_or((None, Decimal::ZERO), |(d, v)| (Some(*d), *v));
            // Caps in the currency's scale, like the amounts ("500.00", not "500").
            let minor = crate::money::currency(&currency).map_or(2, |c| c.minor_units);
            let daily_cap = agent_policy
                .get(&agent)
                .and_then(|sha| caps.get(sha))
                .and_then(|c| c.0)
                .map(|mut c| {
                    c.rescale(minor);
                    c
                });
            AgentSpend {
                spent: days.values().copied().sum(),
                agent_id: agent,
                currency,
                peak_day,
                peak_day_spent: peak,
                daily_cap,
            }
        })
        .collect();
    spend_by_agent.sort_by(|x, y| {
        y.spent
            .cmp(&x.spent)
            .then_with(|| x.agent_id.cmp(&y.agent_id))
    });

    for currencies in lifecycle.per_day.values() {
        for (currency, amounts) in currencies {
            lifecycle
                .totals
                .entry(currency.clone())
                .or_default()
                .add(amounts);
        }
    }

    ComplianceReport {
        period,
        generated_at,
        events_in_period,
        decisions: d,
        approvals: a,
        kill_switch: kill,
        policies,
        invalid_inputs: invalid_by_code.values().sum(),
        invalid_inputs_by_code: invalid_by_code,
        spend_by_agent,
        lifecycle,
        audit_chain: chain,
        privacy,
    }
}

/// The lifecycle amounts of `ev`'s UTC day in `currency`.
fn lifecycle_day<'a>(
    l: &'a mut Lifecycle,
    ev: &EventRecord,
    currency: &str,
) -> &'a mut LifecycleAmounts {
    l.per_day
        .entry(ev.recorded_at.date_naive())
        .or_default()
        .entry(currency.to_string())
        .or_default()
}

/// A stored account is masked when it hides digits (`411111******1111`, `****1111`).
pub fn is_masked(account: &str) -> bool {
    account.contains('*') || account.contains('•') || account.eq_ignore_ascii_case("[erased]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[7], 95), Some(7));
        let v: Vec<i64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&v, 100), Some(20));
    }

    #[test]
    fn period_is_inclusive_of_both_days_in_utc() {
        let p = Period {
            from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
            entity: None,
        };
        assert!(p.contains(Utc.with_ymd_and_hms(2026, 11, 30, 23, 59, 59).unwrap()));
        assert!(!p.contains(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()));
        assert!(!p.contains(Utc.with_ymd_and_hms(2026, 10, 31, 23, 59, 59).unwrap()));
    }
}
