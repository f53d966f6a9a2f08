//! Policy impact analysis: replay the recorded intents, in their original order, under a
//! candidate policy, with usage windows rebuilt as they would have been under the
//! candidate, and report how decisions change.
//!
//! Pure: the evaluator is passed in, so this module knows nothing of how a policy is
//! compiled; `run_impact` in `src/cli/ops.rs` wires the real evaluator.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

use super::compliance::Period;
use super::events::*;
use crate::decision::{Effect, Evaluation, KillState, PolicyIdentity, Usage};
use crate::intent::SpendIntent;
use crate::window::Windows;

/// Examples kept per transition.
pub const EXAMPLES_PER_TRANSITION: usize = 5;
/// Exit status when the candidate allows an intent the recorded policy denied.
pub const EXIT_LOOSENS: i32 = 3;

/// The candidate's evaluator: intent, usage seen, kill state recorded, acceptance time.
pub type Evaluator<'a> = dyn Fn(&SpendIntent, Usage, &KillState, DateTime<Utc>) -> Evaluation + 'a;

pub struct Candidate<'a> {
    pub identity: PolicyIdentity,
    pub tz: Tz,
    pub evaluate: &'a Evaluator<'a>,
}

/// Which recorded intents the candidate is replayed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Intents decided under a policy with this name (the candidate is its next version).
    PolicyName(String),
    /// Every recorded intent.
    All,
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

#[derive(Default)]
struct SimWindows {
    day: HashMap<(String, NaiveDate), Decimal>,
    month: HashMap<(String, NaiveDate), Decimal>,
}

impl SimWindows {
    fn usage(&self, agent: &str, w: Windows) -> Usage {
        Usage {
            daily_so_far: self
                .day
                .get(&(agent.to_string(), w.day))
                .copied()
                .unwrap_or_default(),
            monthly_so_far: self
                .month
                .get(&(agent.to_string(), w.month))
                .copied()
                .unwrap_or_default(),
        }
    }
    fn add(&mut self, agent: &str, w: Windows, amount: Decimal) {
        *self.day.entry((agent.to_string(), w.day)).or_default() += amount;
        *self.month.entry((agent.to_string(), w.month)).or_default() += amount;
    }
}

fn kill_state(v: &Option<serde_json::Value>) -> KillState {
    v.as_ref()
        .and_then(|k| serde_json::from_value::<KillState>(k.clone()).ok())
        .unwrap_or(KillState::Off)
}

/// Replays every `intent_decided` / `intent_closed` event (all events before the period's
/// end, in sequence order, so windows straddling the period start are rebuilt too) and
/// counts the decisions of the period that change under the candidate.
pub fn analyse(
    events: &[EventRecord],
    period: Period,
    scope: &Scope,
    candidate: &Candidate<'_>,
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
    let mut windows = SimWindows::default();
    // intent → (agent, windows, amount) of candidate reservations still open.
    let mut waiting: HashMap<String, (String, Windows, Decimal)> = HashMap::new();

    for ev in events {
        match ev.event_type.as_str() {
            "intent_decided" => {
                let Ok(view) = serde_json::from_value::<DecidedView>(ev.payload.clone()) else {
                    report.unreadable.push(ev.seq);
                    continue;
                };
                let in_scope = match scope {
                    Scope::All => true,
                    Scope::PolicyName(n) => view.policy.as_ref().is_some_and(|p| &p.name == n),
                };
                if !in_scope {
                    continue;
                }
                let Ok(intent) = serde_json::from_value::<SpendIntent>(view.intent.clone()) else {
                    report.unreadable.push(ev.seq);
                    continue;
                };
                let w = Windows::containing(view.accepted_at, candidate.tz);
                let usage = windows.usage(&intent.agent_id, w);
                let kill = kill_state(&view.kill);
                let eval = (candidate.evaluate)(&intent, usage, &kill, view.accepted_at);
                match eval.effect {
                    Effect::Allow => windows.add(&intent.agent_id, w, intent.amount),
                    e if e.needs_approval() => {
                        windows.add(&intent.agent_id, w, intent.amount);
                        waiting.insert(
                            intent.intent_id.clone(),
                            (intent.agent_id.clone(), w, intent.amount),
                        );
                    }
                    _ => {}
                }
                let in_period = ev.recorded_at >= period.start() && ev.recorded_at < period.end();
                let entity_ok = period
                    .entity
                    .as_deref()
                    .is_none_or(|e| e == intent.entity_id);
                if !in_period || !entity_ok {
                    continue;
                }
                report.intents_replayed += 1;
                let before = view.evaluation.effect;
                let after = eval.effect;
                if before == after {
                    report.unchanged += 1;
                    continue;
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
                        recorded_reasons: view
                            .evaluation
                            .reasons
                            .iter()
                            .map(|r| r.code.clone())
                            .collect(),
                        candidate_reasons: eval
                            .reasons
                            .iter()
                            .map(|r| format!("{}: {}", r.code, r.detail))
                            .collect(),
                    });
                }
            }
            "intent_closed" => {
                let Ok(c) = serde_json::from_value::<ClosedView>(ev.payload.clone()) else {
                    continue;
                };
                // The recorded outcome closes the candidate's reservation the same way.
                // An intent the candidate made wait but the recorded policy did not has no
                // outcome: its reservation stays (the conservative reading).
                if let Some((agent, w, amount)) = waiting.remove(&c.intent_id)
                    && c.outcome != "APPROVED"
                {
                    windows.add(&agent, w, -amount);
                }
            }
            _ => {}
        }
    }
    report
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
    use crate::decision::Finding;
    use chrono::TimeZone;
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
                           "currency": "BRL", "category": category, "beneficiary": {"id": "b"}, "purpose": "PIX"},
                "acceptedAt": at, "kill": "Off",
                "policy": {"name": "p", "version": "1", "sha256": "x"},
                "evaluation": {"effect": effect, "approvalsRequired": 0, "reasons": []}
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
            payload: json!({"intentId": id, "outcome": outcome, "approvers": [], "closedAt": at}),
        }
    }

    fn toy(cap: i64) -> impl Fn(&SpendIntent, Usage, &KillState, DateTime<Utc>) -> Evaluation {
        move |i, u, _, _| {
            let f = |effect, code: &'static str| Evaluation {
                effect,
                approvals_required: 0,
                reasons: vec![Finding {
                    effect,
                    code: code.into(),
                    detail: "".into(),
                    approvals: 0,
                }],
            };
            if i.category == "blocked" {
                f(Effect::Deny, "category_blocked")
            } else if u.daily_so_far + i.amount > Decimal::from(cap) {
                f(Effect::RequireHitl, "would_exceed_daily_limit")
            } else {
                f(Effect::Allow, "ok")
            }
        }
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

    fn run(cap: i64) -> ImpactReport {
        let eval = toy(cap);
        let c = Candidate {
            identity: PolicyIdentity {
                name: "p".into(),
                version: "2".into(),
                sha256: "y".into(),
            },
            tz: chrono_tz::UTC,
            evaluate: &eval,
        };
        analyse(&history(), period(), &Scope::PolicyName("p".into()), &c)
    }

    #[test]
    fn a_rejected_wait_releases_its_reservation_in_the_rebuilt_window() {
        // cap 250: e2 waits (100 + 200 > 250) and is rejected, so e4 sees 100, not 300.
        let r = run(250);
        assert_eq!(r.intents_replayed, 4);
        assert_eq!(r.unchanged, 4, "{r:?}");
        assert!(r.transitions.is_empty());
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn tightening_counts_transitions_and_blocked_spend() {
        // cap 50: e1 and e4 now wait; e2 still waits; e3 still denied.
        let r = run(50);
        assert_eq!(r.transitions.get("ALLOW->REQUIRE_HITL"), Some(&2));
        assert_eq!(r.unchanged, 2);
        assert_eq!(r.newly_blocked_spend.get("BRL"), Some(&Decimal::from(200)));
        assert_eq!(r.examples["ALLOW->REQUIRE_HITL"][0].intent_id, "e1");
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn scope_by_policy_name_skips_other_policies() {
        let eval = toy(50);
        let c = Candidate {
            identity: PolicyIdentity {
                name: "q".into(),
                version: "1".into(),
                sha256: "z".into(),
            },
            tz: chrono_tz::UTC,
            evaluate: &eval,
        };
        let r = analyse(&history(), period(), &Scope::PolicyName("q".into()), &c);
        assert_eq!(r.intents_replayed, 0);
        let r = analyse(&history(), period(), &Scope::All, &c);
        assert_eq!(r.intents_replayed, 4);
    }
}
