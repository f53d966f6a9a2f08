//! The ledger's state machine, live and pure (issue 9): random sequences of intents
//! (single and batched, redelivered, conflicting), votes, expiries and kill-switch
//! changes are run (a) through PostgreSQL with the `Ledger` API and (b) in memory with
//! `machine::step_*` and the fold. Both must append the same events (type and payload,
//! in the same order, with the same seqs), return the same results and hold the same
//! projections; `replay --verify` must pass on the live ledger.
//!
//! Settlements (captures, voids, refunds, cancels; redelivered, conflicting, on unknown
//! intents) and authorization expiry run the same way (issue 10).
//!
//! `SPENDGUARD_MODEL_CASES` sets the number of random sequences (default 6; each uses a
//! fresh database).

use crate::harness::{db, intent::intent, policies};
use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::Decimal;
use spendguard::decision::Effect;
use spendguard::ledger::events::LedgerEvent;
use spendguard::ledger::machine::{
    self, DecideInput, DecideStep, Existing, Projections, Recorded, Staged,
};
use spendguard::ledger::settle::SettleResult;
use spendguard::ledger::{
    DecideStatus, Ledger, LedgerError, Origin, VerifiedVote, Vote, VoteResult,
};
use spendguard::policy::PolicySet;
use sqlx::PgPool;
use std::collections::HashMap;

const AGENTS: [&str; 3] = ["agent-0", "agent-1", "agent-2"];
/// Around the standard policy's limits: daily 500, MSIG above 800, perTxn 1000.
const AMOUNTS: [&str; 5] = ["50.00", "200.00", "450.00", "850.00", "1200.00"];
const SCOPES: [&str; 3] = ["global", "agent:agent-1", "entity:acme-br"];

#[derive(Debug, Clone)]
enum Op {
    /// Intents decided in one batch: (agent, amount index, reuse an earlier intent id
    /// when Some: same payload (redelivery) or another amount (conflict)).
    Decide(Vec<(usize, usize, Option<usize>)>),
    /// A vote on the n-th intent decided so far (modulo), by approver `agent-k` or `boss-k`.
    Vote {
        target: usize,
        approver: usize,
        approve: bool,
    },
    /// The clock moves on (minutes), then the sweeper runs.
    Advance(i64),
    Kill {
        scope: usize,
        on: bool,
    },
    /// A settlement of the n-th intent decided so far (`None`: an unknown intent), of
    /// type `kind` (CAPTURE, VOID, REFUND, CANCEL), reusing an earlier settlement id
    /// when `reuse` is Some (a redelivery, or a conflict when the payload differs).
    Settle {
        target: Option<usize>,
        kind: usize,
        amount: usize,
        is_final: bool,
        reuse: Option<usize>,
    },
    /// Days pass (authorizations expire after 7), then both sweepers run.
    AdvanceDays(i64),
}

const SETTLEMENT_TYPES: [&str; 4] = ["CAPTURE", "VOID", "REFUND", "CANCEL"];
/// `""`: no amount (a VOID of the whole remainder).
const SETTLEMENT_AMOUNTS: [&str; 4] = ["10.00", "50.00", "200.00", ""];

fn op() -> impl Strategy<Value = Op> {
    let item = (
        0..AGENTS.len(),
        0..AMOUNTS.len(),
        proptest::option::weighted(0.2, 0..50usize),
    );
    prop_oneof![
        4 => proptest::collection::vec(item, 1..4).prop_map(Op::Decide),
        3 => (0..50usize, 0..6usize, proptest::bool::weighted(0.8))
            .prop_map(|(target, approver, approve)| Op::Vote { target, approver, approve }),
        1 => (10i64..90).prop_map(Op::Advance),
        1 => (0..SCOPES.len(), any::<bool>()).prop_map(|(scope, on)| Op::Kill { scope, on }),
        4 => (
            proptest::option::weighted(0.9, 0..50usize),
            0..SETTLEMENT_TYPES.len(),
            0..SETTLEMENT_AMOUNTS.len(),
            proptest::bool::weighted(0.3),
            proptest::option::weighted(0.15, 0..50usize),
        )
            .prop_map(|(target, kind, amount, is_final, reuse)| Op::Settle {
                target,
                kind,
                amount,
                is_final,
                reuse,
            }),
        1 => (1i64..5).prop_map(Op::AdvanceDays),
    ]
}

/// The in-memory ledger: projections, the events appended, the next seq.
struct Model {
    s: Projections,
    events: Vec<(String, String)>,
    next_seq: i64,
    /// intent → what idempotency needs
    decided: HashMap<String, Existing>,
    /// intent → agent
    agents: HashMap<String, String>,
    /// settlement seq → its `settlement` row as the fold built it (the projections
    /// keep a digest; the row answers a redelivery and checks the live table)
    settlement_rows: HashMap<i64, spendguard::ledger::store::SettlementRow>,
}

impl Model {
    fn append(&mut self, staged: &Staged, at: DateTime<Utc>) -> i64 {
        self.append_hashed(staged, at, [0; 32])
    }

    /// Appends with the hash the live ledger gave the same event: the model keeps no
    /// chains, but a decision's hash is what its outcome message carries.
    fn append_hashed(&mut self, staged: &Staged, at: DateTime<Utc>, hash: [u8; 32]) -> i64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = Recorded {
            seq,
            hash,
            recorded_at: at,
        };
        let problems = self
            .s
            .apply(&r, &staged.event)
            .expect("a staged event folds");
        machine::delta(&r, &staged.event, &mut |c| {
            if let machine::Change::Settlement(row) = c {
                self.settlement_rows.insert(seq, row);
            }
        })
        .expect("a staged event folds");
        assert!(problems.is_empty(), "pure model inconsistent: {problems:?}");
        self.events.push((
            staged.event.kind().as_str().to_string(),
            staged.event.payload_json(),
        ));
        seq
    }
}

/// Live and model results of one intent: effect or refusal.
#[derive(Debug, PartialEq)]
enum Decision {
    New(Effect),
    Redelivered(Effect),
    Conflict,
}

fn run_case(ops: Vec<Op>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let Some(test_db) = db::fresh_db("model").await else {
            return;
        };
        let ledger = test_db.ledger().await;
        let (_dir, set) = policies::standard_set();
        ledger
            .activate_policies(&set, "test")
            .await
            .expect("activate");
        let tables = test_db.pool().await;
        run_ops(&ledger, &tables, &set, &ops).await;
    });
}

/// `tables` reads the live tables directly (a pool of the test's own).
async fn run_ops(ledger: &Ledger, tables: &PgPool, set: &PolicySet, ops: &[Op]) {
    let origin = Origin::cli("test");
    let mut model = Model {
        s: Projections::default(),
        events: Vec::new(),
        next_seq: 1,
        decided: HashMap::new(),
        agents: HashMap::new(),
        settlement_rows: HashMap::new(),
    };
    // The policy activations recorded at start-up are the model's starting state.
    for (kind, payload) in live_events(tables).await {
        let event = LedgerEvent::parse(&kind, &payload).expect("live event parses");
        let st = Staged {
            chain_id: String::new(),
            actor: String::new(),
            resource: String::new(),
            event,
        };
        model.append(&st, Utc::now());
    }
    let mut now = Utc.with_ymd_and_hms(2026, 11, 27, 13, 0, 0).unwrap();
    let mut ids: Vec<(String, usize, usize)> = Vec::new(); // (intent id, agent, amount)
    let mut settlement_ids: Vec<String> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Decide(items) => {
                let batch: Vec<_> = items
                    .iter()
                    .enumerate()
                    .map(|(k, (agent, amount, reuse))| {
                        match reuse
                            .filter(|_| !ids.is_empty())
                            .map(|r| ids[r % ids.len()].clone())
                        {
                            Some((id, a, _)) => intent(&id, AGENTS[a], AMOUNTS[*amount]),
                            None => {
                                intent(&format!("i-{step}-{k}"), AGENTS[*agent], AMOUNTS[*amount])
                            }
                        }
                    })
                    .collect();
                let live = ledger
                    .decide_batch_at(
                        set,
                        &batch
                            .iter()
                            .map(|i| (i.clone(), origin.clone()))
                            .collect::<Vec<_>>(),
                        Some(now),
                    )
                    .await
                    .expect("batch transaction");
                for (i, live) in batch.iter().zip(live) {
                    let live_hash = match &live {
                        Ok(d) => hex::decode(&d.decision_hash)
                            .ok()
                            .and_then(|h| <[u8; 32]>::try_from(h).ok())
                            .unwrap_or([0; 32]),
                        Err(_) => [0; 32],
                    };
                    let pure = model_decide(&mut model, ledger, set, i, now, live_hash);
                    let live = match live {
                        Ok(d) if d.status == DecideStatus::New => Decision::New(d.message.effect),
                        Ok(d) => Decision::Redelivered(d.message.effect),
                        Err(LedgerError::IdempotencyConflict { .. }) => Decision::Conflict,
                        Err(e) => panic!("decide {}: {e}", i.intent_id),
                    };
                    assert_eq!(live, pure, "intent {} at step {step}", i.intent_id);
                    if let Decision::New(_) = live {
                        let a = AGENTS.iter().position(|a| *a == i.agent_id).unwrap();
                        ids.push((i.intent_id.clone(), a, 0));
                    }
                }
            }
            Op::Vote {
                target,
                approver,
                approve,
            } => {
                if ids.is_empty() {
                    continue;
                }
                let id = ids[target % ids.len()].0.clone();
                // Approvers 0-2 are the agents themselves (self-approval is refused).
                let approver_id = if *approver < 3 {
                    AGENTS[*approver].to_string()
                } else {
                    format!("boss-{approver}")
                };
                let vote = VerifiedVote {
                    intent_id: id,
                    approver_id,
                    vote: if *approve {
                        Vote::Approve
                    } else {
                        Vote::Reject
                    },
                    signed_at: now,
                    proof: None,
                    registered: None,
                };
                let live = ledger
                    .apply_vote_at(&vote, &origin, Some(now))
                    .await
                    .expect("vote");
                let staged = machine::step_vote(
                    &model.s,
                    model.agents.get(&vote.intent_id).map(String::as_str),
                    &vote,
                    now,
                );
                let mut pure = None;
                for st in &staged {
                    let seq = model.append(st, now);
                    match &st.event {
                        LedgerEvent::VoteAccepted(_) => pure = Some(format!("accepted {seq}")),
                        LedgerEvent::VoteRefused(r) => {
                            pure = Some(format!("refused {seq} {}", r.reason))
                        }
                        LedgerEvent::IntentClosed(c)
                            if pure.as_deref().is_some_and(|p| p.starts_with("accepted")) =>
                        {
                            pure = Some(format!("{} -> {}", pure.unwrap(), c.outcome));
                        }
                        _ => {}
                    }
                }
                let live = match live {
                    VoteResult::Accepted { seq, outcome: None } => format!("accepted {seq}"),
                    VoteResult::Accepted {
                        seq,
                        outcome: Some(o),
                    } => {
                        format!("accepted {seq} -> {}", o.outcome.as_str())
                    }
                    VoteResult::Refused { seq, reason, .. } => format!("refused {seq} {reason}"),
                };
                assert_eq!(Some(live), pure, "vote at step {step}");
            }
            Op::Advance(minutes) => {
                now += Duration::minutes(*minutes);
                let live = ledger.expire_due(now).await.expect("expire");
                let staged = machine::step_expire(&model.s, now);
                for st in &staged {
                    model.append(st, now);
                }
                assert_eq!(live.len(), staged.len(), "expired at step {step}");
            }
            Op::AdvanceDays(days) => {
                now += Duration::days(*days);
                let live = ledger.expire_due(now).await.expect("expire");
                let staged = machine::step_expire(&model.s, now);
                for st in &staged {
                    model.append(st, now);
                }
                assert_eq!(live.len(), staged.len(), "expired at step {step}");
                let live = ledger
                    .expire_authorizations(now)
                    .await
                    .expect("expire authorizations");
                let staged = machine::step_expire_authorizations(&model.s, now);
                for st in &staged {
                    model.append(st, now);
                }
                assert_eq!(
                    live.len(),
                    staged.len(),
                    "authorizations expired at step {step}"
                );
            }
            Op::Settle {
                target,
                kind,
                amount,
                is_final,
                reuse,
            } => {
                let intent_id = match target {
                    Some(t) if !ids.is_empty() => ids[t % ids.len()].0.clone(),
                    _ => "ghost".to_string(),
                };
                let settlement_id = match reuse.filter(|_| !settlement_ids.is_empty()) {
                    Some(r) => settlement_ids[r % settlement_ids.len()].clone(),
                    None => format!("s-{step}"),
                };
                let kind = SETTLEMENT_TYPES[*kind];
                let money = match (kind, SETTLEMENT_AMOUNTS[*amount]) {
                    ("CANCEL", _) | ("VOID", "") => String::new(),
                    (_, "") => r#","amount":"25.00","currency":"BRL""#.to_string(),
                    (_, a) => format!(r#","amount":"{a}","currency":"BRL""#),
                };
                let fin = if kind == "CAPTURE" && *is_final {
                    r#","final":true"#
                } else {
                    ""
                };
                let text = format!(
                    r#"{{"settlementId":"{settlement_id}","intentId":"{intent_id}","type":"{kind}"{money}{fin}}}"#
                );
                let settlement =
                    spendguard::settlement::parse_settlement(text.as_bytes()).expect("valid");
                let live = ledger
                    .settle_at(set, &settlement, &origin, Some(now))
                    .await
                    .expect("settle");
                let pure = model_settle(&mut model, ledger, &settlement, now);
                let live = match live {
                    SettleResult::Applied { seq, outcome } => {
                        settlement_ids.push(settlement_id.clone());
                        format!("applied {seq} {}", outcome.outcome.as_str())
                    }
                    SettleResult::Redelivered { outcome } => {
                        format!("redelivered {}", outcome.outcome.as_str())
                    }
                    SettleResult::Refused { seq, code, .. } => format!("refused {seq} {code}"),
                };
                assert_eq!(live, pure, "settlement {text} at step {step}");
            }
            Op::Kill { scope, on } => {
                let scope = spendguard::kill_switch::Scope::parse(SCOPES[*scope]).unwrap();
                ledger
                    .set_kill_switch(&scope, *on, "test", "model", &origin)
                    .await
                    .expect("kill switch");
                if let Some(st) = machine::step_kill_switch(&model.s, &scope, *on, "test", "model")
                {
                    model.append(&st, now);
                }
            }
        }
    }
    // (a) the same projections;
    compare_projections(tables, &model.s).await;
    // (b) the same events, in the same order;
    let live = live_events(tables).await;
    assert_eq!(live.len(), model.events.len(), "number of events");
    for (seq, (l, m)) in live.iter().zip(&model.events).enumerate() {
        if l != m {
            for (k, e) in live.iter().take(seq).enumerate() {
                eprintln!("{} {} {}", k + 1, e.0, &e.1[..e.1.len().min(160)]);
            }
        }
        assert_eq!(l, m, "event seq {}", seq + 1);
    }
    // (c) and the live tables are what their events fold into.
    let report = ledger.replay(true).await.expect("replay");
    assert!(report.ok(), "{report:#?}");
}

fn model_decide(
    model: &mut Model,
    ledger: &Ledger,
    set: &PolicySet,
    i: &spendguard::intent::SpendIntent,
    now: DateTime<Utc>,
    live_hash: [u8; 32],
) -> Decision {
    let policy = set.resolve(&i.agent_id, &i.entity_id);
    let fingerprint = ledger.intent_fingerprint(i);
    let step = machine::step_decide(
        &model.s,
        model.decided.get(&i.intent_id),
        DecideInput {
            intent: i,
            policy: policy.as_deref(),
            fingerprint,
            accepted_at: now,
            personal: None,
            bindings: model.s.config_in_force("bindings").as_ref(),
        },
    )
    .expect("step");
    match step {
        DecideStep::Redelivered => {
            let e = &model.decided[&i.intent_id];
            let m: spendguard::decision::DecisionMessage =
                serde_json::from_str(&e.message).unwrap();
            Decision::Redelivered(m.effect)
        }
        DecideStep::Conflict(st) => {
            model.append(&st, now);
            Decision::Conflict
        }
        DecideStep::Decided(st) => {
            let seq = model.append_hashed(&st, now, live_hash);
            let LedgerEvent::IntentDecided(d) = &st.event else {
                unreachable!("step_decide decides with intent_decided")
            };
            let message = machine::decision_message(d, Some(seq));
            model.decided.insert(
                i.intent_id.clone(),
                Existing {
                    seq,
                    fingerprint: fingerprint.to_vec(),
                    decision_hash: Vec::new(),
                    message: serde_json::to_string(&message).unwrap(),
                },
            );
            model.agents.insert(i.intent_id.clone(), i.agent_id.clone());
            Decision::New(d.evaluation.effect)
        }
    }
}

fn model_settle(
    model: &mut Model,
    ledger: &Ledger,
    settlement: &spendguard::settlement::Settlement,
    now: DateTime<Utc>,
) -> String {
    let effect = model.decided.get(&settlement.intent_id).map(|e| {
        serde_json::from_str::<spendguard::decision::DecisionMessage>(&e.message)
            .unwrap()
            .effect
    });
    let agent = model.agents.get(&settlement.intent_id).cloned();
    let intent = agent
        .as_deref()
        .zip(effect)
        .map(|(agent_id, effect)| machine::SettledIntent {
            agent_id,
            entity_id: crate::harness::intent::ENTITY,
            effect,
        });
    let step = machine::step_settle(
        &model.s,
        intent,
        machine::SettleInput {
            settlement,
            fingerprint: ledger.settlement_fingerprint(settlement),
            now,
            restore_refunds: false,
        },
    );
    match step {
        machine::SettleStep::Redelivered(earlier) => {
            let row = &model.settlement_rows[&earlier.seq];
            assert_eq!(row.digest(), earlier.digest, "the kept digest is the row's");
            let o: spendguard::ledger::OutcomeMessage = serde_json::from_str(&row.message).unwrap();
            format!("redelivered {}", o.outcome.as_str())
        }
        machine::SettleStep::Refused(st, code) => {
            let seq = model.append(&st, now);
            format!("refused {seq} {}", code.as_str())
        }
        machine::SettleStep::Applied(st) => {
            let seq = model.append(&st, now);
            let outcome = match &st.event {
                LedgerEvent::SettlementApplied(a) => match a.kind {
                    spendguard::settlement::SettlementType::Capture => "CAPTURED",
                    spendguard::settlement::SettlementType::Void => "VOIDED",
                    spendguard::settlement::SettlementType::Refund => "REFUNDED",
                    spendguard::settlement::SettlementType::Cancel => "CANCELLED",
                },
                LedgerEvent::IntentClosed(c) => {
                    assert_eq!(c.outcome, "CANCELLED");
                    "CANCELLED"
                }
                other => panic!("step_settle staged {other:?}"),
            };
            format!("applied {seq} {outcome}")
        }
    }
}

async fn live_events(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT event_type, payload FROM ledger_event ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("read events")
}

async fn compare_projections(pool: &PgPool, s: &Projections) {
    let live: Vec<(
        String,
        String,
        String,
        String,
        chrono::NaiveDate,
        Decimal,
        Decimal,
    )> = sqlx::query_as(
        "SELECT agent_id, kind, tz, currency, window_start, committed, reserved FROM usage_window",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut model_windows: Vec<_> = s
        .windows
        .iter()
        .filter(|(_, (c, r))| !c.is_zero() || !r.is_zero())
        .map(|(k, (c, r))| (k, c.normalize(), r.normalize()))
        .collect();
    model_windows.sort();
    let mut live_windows: Vec<_> = live
        .into_iter()
        .filter(|w| !w.5.is_zero() || !w.6.is_zero())
        .map(|(a, k, tz, cur, start, c, r)| {
            (
                spendguard::ledger::usage::key(&a, &k, &tz, &cur, start),
                c.normalize(),
                r.normalize(),
            )
        })
        .collect();
    live_windows.sort();
    assert_eq!(live_windows, model_windows, "usage windows");

    let live_pending: Vec<(String, i64)> =
        sqlx::query_as("SELECT intent_id, decided_seq FROM pending_approval ORDER BY intent_id")
            .fetch_all(pool)
            .await
            .unwrap();
    let model_pending: Vec<(String, i64)> = s
        .pending
        .values()
        .map(|p| (p.intent_id, p.decided_seq))
        .collect();
    assert_eq!(live_pending, model_pending, "pending approvals");

    let live_outcomes: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT intent_id, outcome, seq, message FROM intent_outcome ORDER BY intent_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let model_outcomes: Vec<_> = s
        .outcomes
        .values()
        .map(|o| {
            (
                o.intent_id.clone(),
                o.outcome.clone(),
                o.seq,
                o.message.clone(),
            )
        })
        .collect();
    assert_eq!(live_outcomes, model_outcomes, "outcomes");

    let live_votes: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT intent_id, approver_id, vote, seq FROM approval_vote ORDER BY intent_id, approver_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let model_votes: Vec<_> = s
        .votes
        .values()
        .map(|v| {
            (
                v.intent_id.clone(),
                v.approver_id.clone(),
                v.vote.clone(),
                v.seq,
            )
        })
        .collect();
    assert_eq!(live_votes, model_votes, "votes");

    let live_kills: Vec<(String, bool, i64)> =
        sqlx::query_as("SELECT scope, active, seq FROM kill_switch ORDER BY scope")
            .fetch_all(pool)
            .await
            .unwrap();
    let model_kills: Vec<_> = s
        .kills
        .values()
        .map(|k| (k.scope.clone(), k.active, k.seq))
        .collect();
    assert_eq!(live_kills, model_kills, "kill switch");

    let live_auth: Vec<(String, Decimal, Decimal, Decimal, bool, bool, i64)> = sqlx::query_as(
        "SELECT intent_id, captured, voided, refunded, is_final, expired, seq FROM authorization_state ORDER BY intent_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let live_auth: Vec<_> = live_auth
        .into_iter()
        .map(|(i, c, v, r, f, e, q)| (i, c.normalize(), v.normalize(), r.normalize(), f, e, q))
        .collect();
    let model_auth: Vec<_> = s
        .authorization_rows()
        .map(|a| {
            let st = &a.state;
            (
                a.intent_id.clone(),
                st.captured.normalize(),
                st.voided.normalize(),
                st.refunded.normalize(),
                st.is_final,
                st.expired,
                a.seq,
            )
        })
        .collect();
    assert_eq!(live_auth, model_auth, "authorizations");
    // The model keeps a digest of each row: equal digests, equal rows (every column).
    let live_settlements: Vec<_> = sqlx::query_as::<_, spendguard::ledger::store::SettlementRow>(
        "SELECT settlement_id, intent_id, agent_id, fingerprint, seq, message FROM settlement ORDER BY settlement_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|st| {
        (
            spendguard::ledger::machine::intent_key(&st.settlement_id),
            st.seq,
            st.digest(),
        )
    })
    .collect();
    let mut live_settlements = live_settlements;
    live_settlements.sort();
    // The model keys them by a hash of the settlementId.
    let mut model_settlements: Vec<_> = s
        .settlements
        .iter()
        .map(|(id, st)| (*id, st.seq, st.digest))
        .collect();
    model_settlements.sort();
    assert_eq!(live_settlements, model_settlements, "settlements");

    let decided = s.decisions.len() as i64;
    let live_decided: i64 = sqlx::query_scalar("SELECT count(*) FROM decision")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(live_decided, decided, "decisions");
}

fn cases() -> u32 {
    std::env::var("SPENDGUARD_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 64, ..ProptestConfig::default() })]

    #[test]
    fn live_ledger_and_pure_state_machine_agree(ops in proptest::collection::vec(op(), 5..40)) {
        run_case(ops);
    }
}
