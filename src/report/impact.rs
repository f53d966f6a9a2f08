//! Policy impact analysis: replay the recorded intents, in their original order, under a
//! candidate policy, with usage windows rebuilt as they would have been under the
//! candidate, and report how decisions change.
//!
//! Pure, and built on the ledger's own state machine: each recorded intent is decided
//! with `machine::verdict` (the rule live deciding runs) on a candidate-side
//! `Projections`, and the candidate's decisions, the recorded kill-switch changes and
//! the recorded outcomes are folded into it with the ledger's one fold.

use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

use super::compliance::Period;
use super::events::*;
use crate::decision::{Effect, PolicyIdentity};
use crate::ledger::Outcome;
use crate::ledger::events::{EventKind, LedgerEvent};
use crate::ledger::machine::{self, Projections, Recorded};
use crate::policy::CompiledPolicy;

/// Examples kept per transition.
pub const EXAMPLES_PER_TRANSITION: usize = 5;
/// Exit status when the candidate allows an intent the recorded policy denied.
pub const EXIT_LOOSENS: i32 = 3;

/// Which recorded intents the candidate is replayed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Intents decided under a policy with this name (the candidate is its next version).
    PolicyName(String),
    /// Intents that had this shadow candidate beside their enforced policy: the intents
    /// the candidate would govern once promoted.
    Shadowed(String),
    /// Every recorded intent.
    All,
}

impl Scope {
    fn covers(&self, d: &crate::ledger::events::IntentDecided<crate::intent::SpendIntent>) -> bool {
        match self {
            Scope::All => true,
            Scope::PolicyName(n) => d.policy.as_ref().is_some_and(|p| &p.name == n),
            Scope::Shadowed(n) => d.shadow.as_ref().is_some_and(|s| &s.policy.name == n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Example {
    pub intent_id: String,
    pub agent_id: String,
    pub amount: String,
    pub currency: String,
    pub recorded_reasons: Vec<String>,
    /// `code: detail` of every candidate finding, most severe first.
    pub candidate_reasons: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImpactReport {
    pub candidate: PolicyIdentity,
    pub period: Period,
    /// Recorded intents in the period the candidate was replayed on.
    pub intents_replayed: u64,
    pub unchanged: u64,
    /// `"ALLOW->DENY"` → count (only changed decisions).
    pub transitions: BTreeMap<String, u64>,
    pub examples: BTreeMap<String, Vec<Example>>,
    /// Currency → amount the candidate would auto-allow that was not auto-allowed.
    pub newly_allowed_spend: BTreeMap<String, Decimal>,
    /// Currency → amount auto-allowed as recorded that the candidate would not auto-allow.
    pub newly_blocked_spend: BTreeMap<String, Decimal>,
    /// Intents recorded as DENY that the candidate would ALLOW.
    pub denied_now_allowed: u64,
    /// Recorded intents that could not be re-read (should be 0; each is listed).
    pub unreadable: Vec<i64>,
}

impl ImpactReport {
    pub fn exit_code(&self) -> i32 {
        if self.denied_now_allowed > 0 {
            EXIT_LOOSENS
        } else {
            0
        }
    }
}

pub fn transition_key(from: Effect, to: Effect) -> String {
    format!("{}->{}", from.as_str(), to.as_str())
}

/// Replays every recorded event before the period's end, in sequence order (so windows
/// straddling the period start are rebuilt too), and counts the decisions of the period
/// that change under the candidate.
///
/// The candidate's reservations are closed by the recorded outcomes of the same intents;
/// an intent the candidate made wait but the recorded policy did not has no outcome, and
/// its reservation stays (the conservative reading: impact never assumes an approver).
pub fn analyse(
    events: &[EventRecord],
    period: Period,
    scope: &Scope,
    candidate: &CompiledPolicy,
) -> ImpactReport {
    let mut report = ImpactReport {
        candidate: candidate.identity.clone(),
        period: period.clone(),
        intents_replayed: 0,
        unchanged: 0,
        transitions: BTreeMap::new(),
        examples: BTreeMap::new(),
        newly_allowed_spend: BTreeMap::new(),
        newly_blocked_spend: BTreeMap::new(),
        denied_now_allowed: 0,
        unreadable: Vec::new(),
    };
    let mut sim = Projections::default();
    for ev in events {
        let event = match LedgerEvent::parse_value(&ev.event_type, &ev.payload) {
            Ok(e) => e,
            Err(_) => {
                if EventKind::parse(&ev.event_type) == Some(EventKind::IntentDecided) {
                    report.unreadable.push(ev.seq);
                }
                continue;
            }
        };
        let at = Recorded {
            seq: ev.seq,
            hash: [0; 32],
            recorded_at: ev.recorded_at,
        };
        // The candidate's own projections never contradict themselves; a recorded
        // event that does not fold (it cannot: the ledger wrote it) is skipped.
        let fold = |sim: &mut Projections, e: &LedgerEvent| {
            let _ = sim.apply(&at, e);
        };
        match &event {
            // Operator state the candidate decides under, exactly as recorded.
            LedgerEvent::KillSwitchSet(_) | LedgerEvent::FxRateSet(_) => fold(&mut sim, &event),
            LedgerEvent::IntentClosed(c) => {
                if let (Some(p), Some(outcome)) =
                    (sim.pending.get(&c.intent_id), Outcome::parse(&c.outcome))
                {
                    let closed = machine::close(
                        &p,
                        outcome,
                        c.approvers.clone(),
                        c.kill_scope.clone(),
                        c.closed_at,
                        "impact",
                    );
                    fold(&mut sim, &closed.event);
                }
            }
            LedgerEvent::IntentDecided(d) => {
                if !scope.covers(d) {
                    continue;
                }
                let verdict = machine::verdict(&sim, &d.intent, Some(candidate), d.accepted_at);
                let eval = verdict.evaluation.clone();
                let decided = machine::decided(
                    d.intent.clone(),
                    Some(candidate),
                    verdict,
                    [0; 32],
                    None,
                    d.accepted_at,
                );
                fold(&mut sim, &LedgerEvent::IntentDecided(Box::new(decided)));
                let in_period = ev.recorded_at >= period.start() && ev.recorded_at < period.end();
                let entity_ok = period
                    .entity
                    .as_deref()
                    .is_none_or(|e| e == d.intent.entity_id);
                if in_period && entity_ok {
                    count(&mut report, d, &eval);
                }
            }
            // Lifecycle events run the same step on the candidate's state: a settlement of
            // an intent the candidate did not authorize (or authorized differently) is
            // refused or applied as the live ledger would have, and changes only the
            // candidate's windows. Expiry follows the candidate's `authorizationTtl`: an
            // authorization due at the time of a later event of its intent expires first.
            LedgerEvent::SettlementApplied(a) => {
                expire_if_due(&mut sim, &a.intent_id, ev.recorded_at, &fold);
                let settlement = a.settlement();
                let step = machine::step_settle(
                    &sim,
                    Some(machine::SettledIntent {
                        agent_id: &a.agent_id,
                        entity_id: &a.entity_id,
                        effect: crate::decision::Effect::Allow,
                    }),
                    machine::SettleInput {
                        settlement: &settlement,
                        fingerprint: [0; 32],
                        now: ev.recorded_at,
                        restore_refunds: candidate.refunds_restore,
                    },
                );
                if let machine::SettleStep::Applied(staged) = step {
                    fold(&mut sim, &staged.event);
                }
            }
            LedgerEvent::AuthorizationExpired(x) => {
                expire_if_due(&mut sim, &x.intent_id, ev.recorded_at, &fold);
            }
            _ => {}
        }
    }
    report
}

/// The shadow report (SPEC §16): the would-be decisions a shadow candidate recorded in
/// the period, compared with the enforced ones, in the impact report's shape. Nothing is
/// re-evaluated: these are the decisions taken live, on the enforced state.
pub fn shadow_report(events: &[EventRecord], period: Period, candidate: &str) -> ImpactReport {
    let mut report = empty_report(
        PolicyIdentity {
            name: candidate.to_string(),
            version: String::new(),
            sha256: String::new(),
        },
        period,
    );
    for ev in events {
        if EventKind::parse(&ev.event_type) != Some(EventKind::IntentDecided) {
            continue;
        }
        let Ok(LedgerEvent::IntentDecided(d)) =
            LedgerEvent::parse_value(&ev.event_type, &ev.payload)
        else {
            report.unreadable.push(ev.seq);
            continue;
        };
        let Some(shadow) = d.shadow.as_ref().filter(|s| s.policy.name == candidate) else {
            continue;
        };
        if !in_period(&report.period, ev, &d) {
            continue;
        }
        // The latest version seen names the candidate in the report.
        report.candidate = shadow.policy.clone();
        let eval = crate::decision::Evaluation {
            effect: shadow.effect,
            approvals_required: shadow.approvals_required,
            reasons: shadow
                .codes
                .iter()
                .map(|c| crate::decision::Finding {
                    effect: shadow.effect,
                    code: c.clone().into(),
                    detail: "".into(),
                    approvals: 0,
                })
                .collect(),
        };
        count(&mut report, &d, &eval);
    }
    report
}

/// What a shadow candidate would have decided on the recorded (enforced) state, computed
/// offline: every recorded event folds as it was, and each intent in `scope` is decided by
/// the candidate just before its recorded decision folds. This is the shadow semantics
/// replayed; a shadow report over the same events must count the same transitions.
pub fn analyse_on_recorded(
    events: &[EventRecord],
    period: Period,
    scope: &Scope,
    candidate: &CompiledPolicy,
) -> ImpactReport {
    let mut report = empty_report(candidate.identity.clone(), period);
    let mut state = Projections::default();
    for ev in events {
        let Ok(event) = LedgerEvent::parse_value(&ev.event_type, &ev.payload) else {
            if EventKind::parse(&ev.event_type) == Some(EventKind::IntentDecided) {
                report.unreadable.push(ev.seq);
            }
            continue;
        };
        if let LedgerEvent::IntentDecided(d) = &event
            && scope.covers(d)
            && in_period(&report.period, ev, d)
        {
            let v = machine::verdict(&state, &d.intent, Some(candidate), d.accepted_at);
            count(&mut report, d, &v.evaluation);
        }
        let at = Recorded {
            seq: ev.seq,
            hash: [0; 32],
            recorded_at: ev.recorded_at,
        };
        // The ledger wrote these events from this very fold: they apply.
        let _ = state.apply(&at, &event);
    }
    report
}

fn empty_report(candidate: PolicyIdentity, period: Period) -> ImpactReport {
    ImpactReport {
        candidate,
        period,
        intents_replayed: 0,
        unchanged: 0,
        transitions: BTreeMap::new(),
        examples: BTreeMap::new(),
        newly_allowed_spend: BTreeMap::new(),
        newly_blocked_spend: BTreeMap::new(),
        denied_now_allowed: 0,
        unreadable: Vec::new(),
    }
}

fn in_period(
    period: &Period,
    ev: &EventRecord,
    d: &crate::ledger::events::IntentDecided<crate::intent::SpendIntent>,
) -> bool {
    ev.recorded_at >= period.start()
        && ev.recorded_at < period.end()
        && period
            .entity
            .as_deref()
            .is_none_or(|e| e == d.intent.entity_id)
}

/// Expires the candidate's authorization of one intent if its TTL ended by `now`.
fn expire_if_due(
    sim: &mut Projections,
    intent_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    fold: &dyn Fn(&mut Projections, &LedgerEvent),
) {
    let Some(auth) = sim.authorization(intent_id) else {
        return;
    };
    let mut one = Projections::default();
    one.insert_authorization(auth);
    for staged in machine::step_expire_authorizations(&one, now) {
        fold(sim, &staged.event);
    }
}

/// Adds one replayed decision of the period to the report.
fn count(
    report: &mut ImpactReport,
    d: &crate::ledger::events::IntentDecided<crate::intent::SpendIntent>,
    eval: &crate::decision::Evaluation,
) {
    let intent = &d.intent;
    report.intents_replayed += 1;
    let before = d.evaluation.effect;
    let after = eval.effect;
    if before == after {
        report.unchanged += 1;
        return;
    }
    let key = transition_key(before, after);
    *report.transitions.entry(key.clone()).or_default() += 1;
    if before == Effect::Deny && after == Effect::Allow {
        report.denied_now_allowed += 1;
    }
    if after == Effect::Allow {
        *report
            .newly_allowed_spend
            .entry(intent.currency.clone())
            .or_default() += intent.amount;
    }
    if before == Effect::Allow {
        *report
            .newly_blocked_spend
            .entry(intent.currency.clone())
            .or_default() += intent.amount;
    }
    let examples = report.examples.entry(key).or_default();
    if examples.len() < EXAMPLES_PER_TRANSITION {
        examples.push(Example {
            intent_id: intent.intent_id.clone(),
            agent_id: intent.agent_id.clone(),
            amount: intent.amount.to_string(),
            currency: intent.currency.clone(),
            recorded_reasons: d
                .evaluation
                .reasons
                .iter()
                .map(|r| r.code.to_string())
                .collect(),
            candidate_reasons: eval
                .reasons
                .iter()
                .map(|r| {
                    // Shadow decisions record codes only.
                    if r.detail.is_empty() {
                        r.code.to_string()
                    } else {
                        format!("{}: {}", r.code, r.detail)
                    }
                })
                .collect(),
        });
    }
}

/// Human-readable summary.
pub fn render_text(r: &ImpactReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Impact of {}@{} ({}) on {} recorded intents, {} to {}{}:",
        r.candidate.name,
        r.candidate.version,
        &r.candidate.sha256[..r.candidate.sha256.len().min(12)],
        r.intents_replayed,
        r.period.from,
        r.period.to,
        r.period
            .entity
            .as_ref()
            .map(|e| format!(", entity {e}"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "  unchanged: {}", r.unchanged);
    if r.transitions.is_empty() {
        let _ = writeln!(s, "  no decision changes");
    }
    for (k, n) in &r.transitions {
        let _ = writeln!(s, "  {k}: {n}");
        for e in r.examples.get(k).into_iter().flatten() {
            let _ = writeln!(
                s,
                "    e.g. {} agent {} {} {}: was [{}], would be [{}]",
                e.intent_id,
                e.agent_id,
                e.amount,
                e.currency,
                e.recorded_reasons.join(", "),
                e.candidate_reasons.join("; ")
            );
        }
    }
    for (c, a) in &r.newly_allowed_spend {
        let _ = writeln!(s, "  spend newly auto-allowed: {a} {c}");
    }
    for (c, a) in &r.newly_blocked_spend {
        let _ = writeln!(s, "  spend no longer auto-allowed: {a} {c}");
    }
    if !r.unreadable.is_empty() {
        let _ = writeln!(
            s,
            "  WARNING: {} recorded intents could not be re-read (seq {:?})",
            r.unreadable.len(),
            r.unreadable
        );
    }
    if r.denied_now_allowed > 0 {
        let _ = writeln!(
            s,
            "LOOSENS: the candidate would ALLOW {} intents the recorded policy DENIED (exit {EXIT_LOOSENS})",
            r.denied_now_allowed
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeZone, Utc};
    use serde_json::json;

    fn decided(
        seq: i64,
        id: &str,
        amount: &str,
        category: &str,
        effect: &str,
        minute: u32,
    ) -> EventRecord {
        let at = Utc.with_ymd_and_hms(2026, 11, 10, 12, minute, 0).unwrap();
        EventRecord {
            seq,
            event_type: "intent_decided".into(),
            recorded_at: at,
            actor: "agent-1".into(),
            resource: id.into(),
            origin: json!({}),
            payload: json!({
                "intent": {"intentId": id, "agentId": "agent-1", "entityId": "acme", "amount": amount,
                           "currency": "BRL", "category": category, "beneficiary": {"id": "b"},
                           "purpose": "PIX"},
                "fingerprint": "00", "acceptedAt": at, "kill": "Off",
                "policy": {"name": "p", "version": "1", "sha256": "x"},
                "usage": {"dailySoFar": "0", "monthlySoFar": "0",
                          "window": {"day": "2026-11-10", "month": "2026-11", "tz": "UTC"}},
                "evaluation": {"effect": effect, "approvalsRequired": 0, "reasons": []},
                "expiresAt": if effect == "REQUIRE_HITL" { json!(at + chrono::Duration::hours(1)) } else { json!(null) }
            }),
        }
    }

    fn closed(seq: i64, id: &str, outcome: &str, minute: u32) -> EventRecord {
        let at = Utc.with_ymd_and_hms(2026, 11, 10, 12, minute, 0).unwrap();
        EventRecord {
            seq,
            event_type: "intent_closed".into(),
            recorded_at: at,
            actor: "x".into(),
            resource: id.into(),
            origin: json!({}),
            payload: json!({"intentId": id, "agentId": "agent-1", "entityId": "acme",
                            "outcome": outcome, "approvers": [], "closedAt": at, "amount": "200",
                            "currency": "BRL", "tz": "UTC", "day": "2026-11-10", "month": "2026-11-01"}),
        }
    }

    /// A candidate: category `blocked` denied, over `daily` waits for a human.
    fn candidate(name: &str, daily: i64) -> CompiledPolicy {
        let text = [
            "apiVersion: policy.spendguard.v1".to_string(),
            "kind: SpendPolicy".to_string(),
            format!("metadata: {{name: {name}, version: \"2\"}}"),
            "spec:".to_string(),
            "  currency: BRL".to_string(),
            "  timezone: UTC".to_string(),
            format!("  caps: {{perTxn: 10000, daily: {daily}, monthly: 1000000}}"),
            "  blockLists: {categories: [blocked]}".to_string(),
        ]
        .join("\n");
        CompiledPolicy::parse(&text, "test").expect("test policy compiles")
    }

    fn history() -> Vec<EventRecord> {
        vec![
            decided(1, "e1", "100", "utility", "ALLOW", 0),
            decided(2, "e2", "200", "utility", "REQUIRE_HITL", 1),
            closed(3, "e2", "REJECTED", 2),
            decided(4, "e3", "100", "blocked", "DENY", 3),
            decided(5, "e4", "100", "utility", "ALLOW", 4),
        ]
    }

    fn period() -> Period {
        Period {
            from: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            to: NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
            entity: None,
        }
    }

    fn run(daily: i64) -> ImpactReport {
        analyse(
            &history(),
            period(),
            &Scope::PolicyName("p".into()),
            &candidate("p", daily),
        )
    }

    #[test]
    fn a_rejected_wait_releases_its_reservation_in_the_rebuilt_window() {
        // daily 250: e2 waits (100 + 200 > 250) and is rejected, so e4 sees 100, not 300.
        let r = run(250);
        assert!(r.unreadable.is_empty(), "{r:?}");
        assert_eq!(r.intents_replayed, 4);
        assert_eq!(r.unchanged, 4, "{r:?}");
        assert!(r.transitions.is_empty());
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn tightening_counts_transitions_and_blocked_spend() {
        // daily 50: e1 and e4 now wait; e2 still waits; e3 still denied.
        let r = run(50);
        assert_eq!(r.transitions.get("ALLOW->REQUIRE_HITL"), Some(&2), "{r:?}");
        assert_eq!(r.unchanged, 2);
        assert_eq!(r.newly_blocked_spend.get("BRL"), Some(&Decimal::from(200)));
        assert_eq!(r.examples["ALLOW->REQUIRE_HITL"][0].intent_id, "e1");
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn scope_by_policy_name_skips_other_policies() {
        let c = candidate("q", 50);
        let r = analyse(&history(), period(), &Scope::PolicyName("q".into()), &c);
        assert_eq!(r.intents_replayed, 0);
        let r = analyse(&history(), period(), &Scope::All, &c);
        assert_eq!(r.intents_replayed, 4);
    }
}
