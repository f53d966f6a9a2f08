//! Replay and verification: rebuild every projection from the events, compare with the
//! live tables, re-evaluate every recorded decision with the policy version recorded
//! for it, and recompute the hash chains.
//!
//! Gap safety. Replay reads all events and all live projections inside one
//! REPEATABLE READ snapshot: a transaction is either entirely visible (its events and
//! the projection changes it made) or not at all, so replay never sees a "hole" left by
//! a transaction that has not committed yet. Within one chain, seq order is chain order
//! (seqs are allocated while holding the chain's lock), and a kill-switch change and a
//! decision are ordered by the kill-switch lock, so seq order is a valid apply order.
//! Followers that tail the ledger incrementally use [`events_after`], which only
//! returns events of transactions older than every running one.

use super::LedgerError;
use super::chain::{self, EventRow, Verifier};
use super::events::{self, EventError, LedgerEvent, kind};
use super::machine::{self, Projections, Recorded};
use super::settle::{AUTHORIZATION_COLUMNS, SETTLEMENT_COLUMNS, SPEND_RECORD_COLUMNS};
use super::store::{
    AgentEntityRow, AuthorizationRow, ConfigRow, DECISION_COLUMNS, DecisionColumns, DecisionRow,
    FxRateRow, KillRow, OutcomeRow, PendingRow, PolicyRow, SettlementRow, SpendRecordRow, VoteRow,
};
use super::usage::{self, UsageKey};
use super::votes::{OUTCOME_COLUMNS, PENDING_COLUMNS, VOTE_COLUMNS};
use crate::intent::SpendIntent;
use crate::policy::CompiledPolicy;
use crate::privacy;

use futures::{StreamExt, TryStreamExt};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgPool, Row};
use std::collections::{BTreeMap, HashMap};

/// Most differences listed in a report (the count is always exact).
pub const MAX_LISTED: usize = 50;
/// Events handed to the chain-verifying thread at a time, and batches in flight.
const VERIFY_BATCH_EVENTS: usize = 256;
const VERIFY_QUEUE_BATCHES: usize = 4;

/// Reads an event from a row whose first columns are [`EVENT_COLUMNS`], in that order.
/// By position: replay decodes every event of the ledger, and looking each column up
/// by name was a measurable share of it (docs/benchmarks.md, "Replay, issue 15 round 5").
pub(crate) fn row_to_event(r: &sqlx::postgres::PgRow) -> Result<EventRow, LedgerError> {
    super::store::debug_assert_selected_first(r, EVENT_COLUMNS, "row_to_event");
    let hash = |at: usize| -> Result<chain::Hash, LedgerError> {
        let v: &[u8] = r.try_get(at)?;
        // A wrong-length hash cannot match anything; keep it visibly wrong.
        Ok(chain::Hash::try_from(v).unwrap_or([0xff; chain::HASH_BYTES]))
    };
    Ok(EventRow {
        seq: r.try_get(0)?,
        chain_id: r.try_get(1)?,
        chain_pos: r.try_get(2)?,
        event_type: r.try_get(3)?,
        recorded_at: r.try_get(4)?,
        actor: r.try_get(5)?,
        resource: r.try_get(6)?,
        origin: r.try_get(7)?,
        payload: r.try_get(8)?,
        prev_hash: hash(9)?,
        hash: hash(10)?,
    })
}

pub(crate) const EVENT_COLUMNS: &str = "seq, chain_id, chain_pos, event_type, recorded_at, actor, resource, origin, payload, prev_hash, hash";

/// Checks every recorded chain head against the verifier's last event of its chain,
/// streaming `chain_head` (one row per agent: holding them all was ~30 MB at 100,000
/// agents, at replay's peak).
async fn check_heads(conn: &mut sqlx::PgConnection, v: &mut Verifier) -> Result<(), LedgerError> {
    let mut rows =
        sqlx::query("SELECT chain_id, chain_pos, hash, seq FROM chain_head").fetch(&mut *conn);
    while let Some(r) = rows.try_next().await? {
        let stored: &[u8] = r.try_get("hash")?;
        let mut h = chain::GENESIS;
        if stored.len() == h.len() {
            h.copy_from_slice(stored);
        }
        v.check_head(
            r.try_get::<&str, _>("chain_id")?,
            r.try_get("chain_pos")?,
            &h,
            r.try_get("seq")?,
        );
    }
    drop(rows);
    v.finish_heads();
    // Chains without a head are named by their last event.
    let unnamed = v.unnamed_seqs();
    if !unnamed.is_empty() {
        let chain_of: HashMap<i64, String> = sqlx::query_as::<_, (i64, String)>(
            "SELECT seq, chain_id FROM ledger_event WHERE seq = ANY($1)",
        )
        .bind(&unnamed)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect();
        v.name_chains(&chain_of);
    }
    Ok(())
}

/// Recomputes every chain in one snapshot.
pub(crate) async fn verify_chains(
    pool: &PgPool,
    mut expected: Option<&mut super::checkpoint::Expectations>,
) -> Result<Verifier, LedgerError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    read_whole_ledger(&mut tx).await?;
    let mut v = Verifier::default();
    {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM ledger_event ORDER BY seq");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        while let Some(r) = rows.try_next().await? {
            let row = row_to_event(&r)?;
            v.check(&row);
            if let Some(problem) = expected.as_deref_mut().and_then(|e| e.check(&row)) {
                v.problems.push(problem);
            }
        }
    }
    check_heads(&mut tx, &mut v).await?;
    if let Some(e) = expected {
        v.problems.extend(e.unseen());
    }
    tx.commit().await?;
    Ok(v)
}

/// Lifts the session's statement and idle-in-transaction limits for this read-only
/// transaction: reading the whole ledger legitimately takes longer than one statement
/// may, and the client computes (hashes, folds) between reads. A read-only snapshot
/// holds no lock anyone waits for, so it cannot freeze the ledger.
async fn read_whole_ledger(tx: &mut sqlx::PgConnection) -> Result<(), LedgerError> {
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// A position in the ledger for followers: `(xid, seq)` of the last event read.
pub type Cursor = (i64, i64);

/// Events after `cursor` of transactions that finished before every transaction still
/// running (`xid < pg_snapshot_xmin`), in `(xid, seq)` order. No event can later appear
/// before the returned ones, so a follower never skips an event.
pub async fn events_after(
    pool: &PgPool,
    cursor: Cursor,
    limit: i64,
) -> Result<Vec<(Cursor, EventRow)>, LedgerError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}, xid::text::bigint AS xid_n FROM ledger_event
         WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
           AND (xid::text::bigint, seq) > ($1, $2)
         ORDER BY xid, seq LIMIT $3"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(cursor.0)
        .bind(cursor.1)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| Ok(((r.try_get("xid_n")?, r.try_get("seq")?), row_to_event(r)?)))
        .collect()
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    pub events: u64,
    pub decisions: u64,
    pub decisions_reevaluated: u64,
    /// Settlements re-applied with the lifecycle rule (with `--verify`).
    pub settlements_reapplied: u64,
    /// Decisions that did not reproduce (with `--verify`).
    pub decision_mismatches: Vec<String>,
    pub decision_mismatch_count: u64,
    /// Rebuilt projection rows that differ from the live tables.
    pub projection_differences: Vec<String>,
    pub projection_difference_count: u64,
    /// Hash-chain problems found on the way.
    pub chain_problems: Vec<chain::ChainProblem>,
    /// Decisions whose personal data was erased (re-evaluated with the masked account).
    pub erased_personal_data: u64,
    /// Decisions whose personal data was not opened because no KEK was configured
    /// (re-evaluated with the masked account, like erased ones).
    pub personal_data_not_opened: u64,
}

impl ReplayReport {
    pub fn ok(&self) -> bool {
        self.decision_mismatch_count == 0
            && self.projection_difference_count == 0
            && self.chain_problems.is_empty()
    }

    fn mismatch(&mut self, s: String) {
        self.decision_mismatch_count += 1;
        if self.decision_mismatches.len() < MAX_LISTED {
            self.decision_mismatches.push(s);
        }
    }

    fn difference(&mut self, s: String) {
        self.projection_difference_count += 1;
        if self.projection_differences.len() < MAX_LISTED {
            self.projection_differences.push(s);
        }
    }
}

/// What differs between a rebuilt and a live row of the same intent, field by field.
fn differences(rebuilt: &DecisionRow, live: &DecisionRow) -> String {
    fn cut(s: &str) -> &str {
        let mut end = s.len().min(300);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        &s[..end]
    }
    let mut out = Vec::new();
    let mut field = |name: &str, rebuilt: String, live: String| {
        if rebuilt != live {
            out.push(format!("{name}: rebuilt {rebuilt}, live {live}"));
        }
    };
    field("agent_id", rebuilt.agent_id.clone(), live.agent_id.clone());
    field(
        "entity_id",
        rebuilt.entity_id.clone(),
        live.entity_id.clone(),
    );
    field("seq", rebuilt.seq.to_string(), live.seq.to_string());
    field(
        "fingerprint",
        hex::encode(&rebuilt.fingerprint),
        hex::encode(&live.fingerprint),
    );
    field(
        "decision_hash",
        hex::encode(&rebuilt.decision_hash),
        hex::encode(&live.decision_hash),
    );
    field("effect", rebuilt.effect.clone(), live.effect.clone());
    field(
        "message",
        cut(&rebuilt.message).to_string(),
        cut(&live.message).to_string(),
    );
    out.join("; ")
}

/// `spendguard replay [--verify]`.
pub(crate) async fn replay(
    pool: &PgPool,
    key_wrap: Option<&dyn crate::keywrap::KeyWrap>,
    verify: bool,
) -> Result<ReplayReport, LedgerError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    read_whole_ledger(&mut tx).await?;
    // Only with --verify are keys needed (to re-evaluate with the clear account).
    let keys = if verify {
        super::subject_keys::all(&mut tx, key_wrap).await?
    } else {
        HashMap::new()
    };

    let mut report = ReplayReport::default();
    let mut p = Projections::default();
    // Timelines only serve limits: built when a recorded policy with limits is first
    // re-run (never without --verify; the records are compared all the same).
    p.defer_timelines();
    p.forget_authorization_ids();
    let (capacities, chains) = table_sizes(&mut tx).await?;
    p.reserve(&capacities);
    let mut compiled: HashMap<String, CompiledPolicy> = HashMap::new();
    let mut bindings = RecordedBindings::new();
    // The hash chains are recomputed on another core while this one rebuilds the
    // projections; events go over in bounded batches (memory stays flat).
    let (to_verifier, from_replay) =
        std::sync::mpsc::sync_channel::<Vec<EventRow>>(VERIFY_QUEUE_BATCHES);
    let verifier = std::thread::spawn(move || {
        let mut v = Verifier::with_chains(chains);
        for batch in from_replay {
            for e in &batch {
                v.check(e);
            }
        }
        v
    });
    let started = std::time::Instant::now();
    let applied: Result<(), LedgerError> = async {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM ledger_event ORDER BY seq");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        let mut batch = Vec::with_capacity(VERIFY_BATCH_EVENTS);
        while let Some(r) = rows.try_next().await? {
            let e = row_to_event(&r)?;
            report.events += 1;
            apply(
                &e,
                &mut p,
                &mut report,
                (&mut compiled, &mut bindings),
                &keys,
                verify,
            )?;
            batch.push(e);
            if batch.len() == VERIFY_BATCH_EVENTS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(VERIFY_BATCH_EVENTS));
                to_verifier
                    .send(full)
                    .map_err(|_| LedgerError::Bug("chain verifier stopped".into()))?;
            }
        }
        if !batch.is_empty() {
            to_verifier
                .send(batch)
                .map_err(|_| LedgerError::Bug("chain verifier stopped".into()))?;
        }
        Ok(())
    }
    .await;
    drop(to_verifier);
    let mut verifier = verifier
        .join()
        .map_err(|_| LedgerError::Bug("chain verifier panicked".into()))?;
    applied?;
    tracing::debug!(
        events = report.events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replay: events applied and chains checked"
    );
    check_heads(&mut tx, &mut verifier).await?;
    report.chain_problems = verifier.problems;

    let started = std::time::Instant::now();
    compare_live(&mut tx, p, &mut report).await?;
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replay: live tables compared"
    );
    tx.commit().await?;
    Ok(report)
}

/// The sizes of the live tables in the snapshot: room replay reserves for their
/// rebuilt twins (and the chain verifier, for the chains), so that no map doubles
/// while the events are folded.
async fn table_sizes(
    conn: &mut sqlx::PgConnection,
) -> Result<(machine::Capacities, usize), LedgerError> {
    let n: (i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM decision), (SELECT count(*) FROM authorization_state),
                (SELECT count(*) FROM spend_record), (SELECT count(*) FROM usage_window),
                (SELECT count(*) FROM settlement), (SELECT count(*) FROM agent_entity),
                (SELECT count(*) FROM chain_head)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let size = |v: i64| usize::try_from(v).unwrap_or(0);
    Ok((
        machine::Capacities {
            decisions: size(n.0),
            authorizations: size(n.1),
            records: size(n.2),
            windows: size(n.3),
            settlements: size(n.4),
            agents: size(n.5),
        },
        size(n.6),
    ))
}

/// Rebuilds the `decision` row of one event again (to explain a difference).
fn decision_row_of(e: &EventRow) -> Result<Option<DecisionRow>, LedgerError> {
    let event = LedgerEvent::parse(&e.event_type, &e.payload)?;
    let mut row = None;
    machine::delta(&recorded(e), &event, &mut |c| {
        if let machine::Change::Decision { row: d, .. } = c {
            row = Some(*d);
        }
    })?;
    Ok(row)
}

fn recorded(e: &EventRow) -> Recorded {
    Recorded {
        seq: e.seq,
        hash: e.hash,
        recorded_at: e.recorded_at,
    }
}

/// Folds one event into the projections; with `verify`, first checks a decision
/// against the same rule live deciding ran (`machine::verdict`) on the projections as
/// they were just before it.
fn apply(
    e: &EventRow,
    p: &mut Projections,
    report: &mut ReplayReport,
    (compiled, bindings): (&mut HashMap<String, CompiledPolicy>, &mut RecordedBindings),
    keys: &HashMap<uuid::Uuid, Option<privacy::SubjectKey>>,
    verify: bool,
) -> Result<(), LedgerError> {
    let at = |what: &str| format!("seq {} ({}): {what}", e.seq, e.event_type);
    let event = match LedgerEvent::parse(&e.event_type, &e.payload) {
        Ok(event) => event,
        Err(EventError::UnknownType(t)) => {
            report.mismatch(at(&format!("unknown event type {t:?}")));
            return Ok(());
        }
        Err(err) => return Err(LedgerError::Corrupt(format!("seq {}: {err}", e.seq))),
    };
    match &event {
        LedgerEvent::PolicyActivated(a) if verify => {
            match CompiledPolicy::parse(&a.canonical, &format!("ledger seq {}", e.seq)) {
                Ok(c) => {
                    if c.identity != a.policy {
                        report.mismatch(at(&format!(
                            "recorded policy {}@{} ({}) parses to a different identity {:?}",
                            a.policy.name, a.policy.version, a.policy.sha256, c.identity
                        )));
                    }
                    compiled.insert(a.policy.sha256.clone(), c);
                }
                Err(err) => report.mismatch(at(&format!("recorded policy does not parse: {err}"))),
            }
        }
        LedgerEvent::BindingsActivated(a) if verify => {
            let compiled = crate::policy::Bindings::from_canonical(&a.canonical)
                .map_err(|err| format!("recorded bindings do not parse: {err}"))
                .and_then(|b| {
                    if b.sha256() == a.sha256 {
                        Ok((b, a.sha256.clone()))
                    } else {
                        Err(format!(
                            "recorded bindings hash to {}, not the recorded {}",
                            b.sha256(),
                            a.sha256
                        ))
                    }
                });
            if let Err(problem) = &compiled {
                report.mismatch(at(&format!("bindings version {}: {problem}", a.version)));
            }
            bindings.insert(a.version, compiled);
        }
        LedgerEvent::IntentDecided(d) => {
            report.decisions += 1;
            if verify {
                report.decisions_reevaluated += 1;
                if let Some(c) = d.policy.as_ref().and_then(|pi| compiled.get(&pi.sha256)) {
                    p.need_timelines(c.limits());
                }
                reverify_bindings(d, bindings, report, &at);
                reverify(d, p, report, compiled, keys, &at);
            }
        }
        LedgerEvent::SettlementApplied(a) if verify => {
            report.settlements_reapplied += 1;
            reverify_settlement(a, e.recorded_at, p, report, &at);
        }
        LedgerEvent::AuthorizationExpired(x) if verify => {
            let again = p
                .authorization_state(&x.intent_id)
                .and_then(|a| a.expire(e.recorded_at));
            if again.as_ref() != Some(&(x.authorization.clone(), x.usage_delta)) {
                report.mismatch(at(&format!(
                    "intent {}: recorded expiry {:?} (usage {}) but the events before it give {:?}",
                    x.intent_id, x.authorization, x.usage_delta, again
                )));
            }
        }
        _ => {}
    }
    for problem in p.apply(&recorded(e), &event)? {
        report.mismatch(at(&problem.to_string()));
    }
    Ok(())
}

/// Re-applies a recorded settlement with the same rule (`machine::step_settle`) on the
/// projections before it: the recorded event must come out again, field for field.
fn reverify_settlement(
    a: &events::SettlementApplied,
    recorded_at: chrono::DateTime<chrono::Utc>,
    p: &Projections,
    report: &mut ReplayReport,
    at: &dyn Fn(&str) -> String,
) {
    let settlement = a.settlement();
    let mut fingerprint = [0u8; 32];
    if hex::decode_to_slice(&a.settlement.fingerprint, &mut fingerprint).is_err() {
        report.mismatch(at(&format!(
            "settlement {}: fingerprint is not 32 bytes of hex",
            a.settlement.settlement_id
        )));
        return;
    }
    let again = machine::step_settle(
        p,
        Some(machine::SettledIntent {
            agent_id: &a.agent_id,
            entity_id: &a.entity_id,
            effect: crate::decision::Effect::Allow,
        }),
        machine::SettleInput {
            settlement: &settlement,
            fingerprint,
            now: recorded_at,
            restore_refunds: a.restores,
        },
    );
    match again {
        machine::SettleStep::Applied(machine::Staged {
            event: LedgerEvent::SettlementApplied(b),
            ..
        }) if *b == *a => {}
        machine::SettleStep::Applied(machine::Staged {
            event: LedgerEvent::SettlementApplied(b),
            ..
        }) => report.mismatch(at(&format!(
            "settlement {}: recorded {} {} (usage {}, state {:?}) but the events before it give {} (usage {}, state {:?})",
            a.settlement.settlement_id,
            a.kind.as_str(),
            a.amount,
            a.usage_delta,
            a.authorization,
            b.amount,
            b.usage_delta,
            b.authorization
        ))),
        other => report.mismatch(at(&format!(
            "settlement {}: recorded as applied but the events before it give {other:?}",
            a.settlement.settlement_id
        ))),
    }
}

/// Bindings versions recorded so far (`bindings_activated`), compiled.
type RecordedBindings = HashMap<i64, Result<(crate::policy::Bindings, String), String>>;

/// The bindings version a decision names must have been activated before it (a rolling
/// change may leave an older version in use for a while: the recorded one is the one
/// replayed) and must choose the policy it recorded for its agent and entity.
fn reverify_bindings(
    d: &events::IntentDecided<SpendIntent>,
    bindings: &RecordedBindings,
    report: &mut ReplayReport,
    at: &dyn Fn(&str) -> String,
) {
    let Some(bv) = &d.bindings else {
        return;
    };
    let id = &d.intent.intent_id;
    let (b, sha) = match bindings.get(&bv.version) {
        None => {
            return report.mismatch(at(&format!(
                "intent {id}: bindings version {} was never activated before it",
                bv.version
            )));
        }
        // Reported at its activation.
        Some(Err(_)) => return,
        Some(Ok((b, sha))) => (b, sha),
    };
    if *sha != bv.sha256 {
        return report.mismatch(at(&format!(
            "intent {id}: recorded bindings version {} ({}) but that version is {sha}",
            bv.version, bv.sha256
        )));
    }
    let chosen = b.resolve(&d.intent.agent_id, &d.intent.entity_id);
    let recorded = d.policy.as_ref().map(|p| p.name.as_str());
    if chosen != recorded {
        report.mismatch(at(&format!(
            "intent {id}: bindings version {} choose policy {:?} but {:?} was recorded",
            bv.version, chosen, recorded
        )));
    }
}

/// Re-decides a recorded intent on the projections before it and reports every field
/// of the recorded decision that does not reproduce.
fn reverify(
    d: &events::IntentDecided<SpendIntent>,
    p: &Projections,
    report: &mut ReplayReport,
    compiled: &HashMap<String, CompiledPolicy>,
    keys: &HashMap<uuid::Uuid, Option<privacy::SubjectKey>>,
    at: &dyn Fn(&str) -> String,
) {
    // Copied only to restore the personal data, when its key still exists (a Rego
    // module may read it); after erasure the masked account is used.
    let mut intent = std::borrow::Cow::Borrowed(&d.intent);
    if let Some(sealed) = &d.personal {
        match keys.get(&sealed.key_id).map(|k| {
            k.as_ref()
                .map(|k| privacy::open(k, sealed, &intent.intent_id))
        }) {
            Some(Some(Ok(clear))) => {
                if let Some(a) = serde_json::from_slice::<serde_json::Value>(&clear)
                    .ok()
                    .and_then(|v| {
                        v.get("account")
                            .and_then(|a| a.as_str())
                            .map(str::to_string)
                    })
                {
                    intent.to_mut().beneficiary.account = Some(a);
                }
            }
            Some(Some(Err(err))) => {
                report.mismatch(at(&format!("personal data does not decrypt: {err}")))
            }
            Some(None) => report.personal_data_not_opened += 1,
            None => report.erased_personal_data += 1,
        }
    }
    let policy = match &d.policy {
        None => None,
        Some(pi) => match compiled.get(&pi.sha256) {
            Some(c) => Some(c),
            None => {
                report.mismatch(at(&format!(
                    "intent {}: policy {} ({}) was never activated in the ledger",
                    intent.intent_id, pi.name, pi.sha256
                )));
                return;
            }
        },
    };
    let again = machine::verdict(p, &intent, policy, d.accepted_at);
    let id = &intent.intent_id;
    if again.usage != d.usage {
        let show = |u: &Option<crate::decision::UsageReport>| match u {
            Some(u) => format!("{}/{}", u.daily_so_far, u.monthly_so_far),
            None => "none".to_string(),
        };
        report.mismatch(at(&format!(
            "intent {id}: recorded usage {} but the events before it give {}",
            show(&d.usage),
            show(&again.usage)
        )));
    }
    if again.kill != d.kill {
        report.mismatch(at(&format!(
            "intent {id}: recorded kill switch {:?} but the events before it give {:?}",
            d.kill, again.kill
        )));
    }
    if again.evaluation != d.evaluation {
        let codes = |e: &crate::decision::Evaluation| {
            e.reasons
                .iter()
                .map(|r| r.code.to_string())
                .collect::<Vec<_>>()
        };
        report.mismatch(at(&format!(
            "intent {id}: recorded {} {:?} but re-evaluation gives {} {:?}",
            d.evaluation.effect,
            codes(&d.evaluation),
            again.evaluation.effect,
            codes(&again.evaluation)
        )));
    }
    // Events written before SPEC §11 carry no TTL: theirs was the default.
    let ttl = |t: Option<i64>| t.unwrap_or(crate::policy::model::DEFAULT_AUTHORIZATION_TTL_SECS);
    if d.evaluation.effect != crate::decision::Effect::Deny
        && ttl(again.authorization_ttl_secs) != ttl(d.authorization_ttl_secs)
    {
        report.mismatch(at(&format!(
            "intent {id}: recorded authorizationTtl {:?}s but the policy gives {:?}s",
            d.authorization_ttl_secs, again.authorization_ttl_secs
        )));
    }
    if again.fx != d.fx {
        report.mismatch(at(&format!(
            "intent {id}: recorded conversion {:?} but the rates before it give {:?}",
            d.fx, again.fx
        )));
    }
    if again.expires_at != d.expires_at {
        report.mismatch(at(&format!(
            "intent {id}: recorded approval expiry {:?} but the policy gives {:?}",
            d.expires_at, again.expires_at
        )));
    }
}

/// Compares the rebuilt projections with the live tables (same snapshot), streaming the
/// two large tables so neither is held in memory next to its rebuilt copy.
async fn compare_live(
    conn: &mut sqlx::PgConnection,
    rebuilt: Projections,
    report: &mut ReplayReport,
) -> Result<(), LedgerError> {
    let mut rebuilt = rebuilt;
    // The limits' timelines are not compared (they follow the records): freed first.
    rebuilt.drop_timelines();
    // Spend records first: one that differs is explained from its decision event,
    // found through `decisions`.
    compare_records(conn, &mut rebuilt, report).await?;
    let mut decisions = std::mem::take(&mut rebuilt.decisions);
    let mut pending = std::mem::take(&mut rebuilt.pending);
    let votes = std::mem::take(&mut rebuilt.votes);
    let outcomes = std::mem::take(&mut rebuilt.outcomes);
    let kills = std::mem::take(&mut rebuilt.kills);
    let policies = std::mem::take(&mut rebuilt.policies);
    let configs = std::mem::take(&mut rebuilt.configs);
    let settlements = std::mem::take(&mut rebuilt.settlements);
    let fx_rates = std::mem::take(&mut rebuilt.fx_rates);

    // Rows that differ from their event, explained field by field once the scan is done.
    let mut changed: Vec<DecisionRow> = Vec::new();
    {
        // Borrowed from the row: only a row that differs is copied.
        let sql = format!("SELECT {DECISION_COLUMNS} FROM decision");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            let live = DecisionColumns::of(&r)?;
            match decisions.remove(&machine::intent_key(live.intent_id)) {
                None => report.difference(format!(
                    "decision {:?}: live row (seq {}, {}) has no events behind it",
                    live.intent_id, live.seq, live.effect
                )),
                Some((_, digest)) if digest != live.digest() => {
                    if changed.len() < MAX_LISTED {
                        changed.push(live.to_row());
                    } else {
                        report.difference(format!(
                            "decision {:?}: live row differs from its event",
                            live.intent_id
                        ));
                    }
                }
                Some(_) => {}
            }
        }
    }
    // Decisions rebuilt but absent from the table, named by their events' intent ids.
    let mut missing: Vec<i64> = decisions.into_values().map(|(seq, _)| seq).collect();
    missing.sort_unstable();
    let named: HashMap<i64, String> = if missing.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT seq, resource FROM ledger_event WHERE seq = ANY($1)",
        )
        .bind(&missing[..missing.len().min(MAX_LISTED)])
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect()
    };
    for seq in missing {
        let intent = named.get(&seq).map_or("?", String::as_str);
        report.difference(format!(
            "decision {intent:?}: rebuilt from seq {seq}, missing in the live table"
        ));
    }
    if !changed.is_empty() {
        let seqs: Vec<i64> = changed.iter().map(|l| l.seq).collect();
        let sql = format!("SELECT {EVENT_COLUMNS} FROM ledger_event WHERE seq = ANY($1)");
        let mut events: HashMap<i64, EventRow> = HashMap::new();
        for r in sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&seqs)
            .fetch_all(&mut *conn)
            .await?
        {
            let e = row_to_event(&r)?;
            events.insert(e.seq, e);
        }
        for live in changed {
            // The live row's seq may itself be what changed: find the event by intent.
            let rebuilt = match events.get(&live.seq).map(decision_row_of) {
                Some(Ok(Some(row))) if row.intent_id == live.intent_id => Some(row),
                _ => rebuilt_by_intent(conn, &live.intent_id).await?,
            };
            report.difference(match rebuilt {
                Some(row) => format!(
                    "decision {:?}: {}",
                    live.intent_id,
                    differences(&row, &live)
                ),
                None => format!(
                    "decision {:?}: live row differs from its event",
                    live.intent_id
                ),
            });
        }
    }

    // Window rows that went back to zero are equivalent to absent ones.
    {
        let mut rows = sqlx::query(
            "SELECT agent_id, kind, tz, currency, window_start, committed, reserved FROM usage_window",
        )
        .fetch(&mut *conn);
        // By position, in the order selected (the largest table: two rows per agent).
        while let Some(r) = rows.try_next().await? {
            let (agent, kind, tz, currency) = (
                r.try_get::<&str, _>(0)?,
                r.try_get::<&str, _>(1)?,
                r.try_get::<&str, _>(2)?,
                r.try_get::<&str, _>(3)?,
            );
            let start = r.try_get(4)?;
            let live: (Decimal, Decimal) = (r.try_get(5)?, r.try_get(6)?);
            let taken = rebuilt
                .windows
                .take_of(agent, kind, tz, currency, start)
                .unwrap_or_default();
            let (live, rebuilt) = (
                (live.0.normalize(), live.1.normalize()),
                (taken.0.normalize(), taken.1.normalize()),
            );
            if live != rebuilt {
                let k = usage::key(agent, kind, tz, currency, start);
                if rebuilt == (Decimal::ZERO, Decimal::ZERO) {
                    report.difference(format!(
                        "usage_window {k:?}: live {live:?} has no events behind it"
                    ));
                } else {
                    report.difference(format!(
                        "usage_window {k:?}: rebuilt {rebuilt:?}, live {live:?}"
                    ));
                }
            }
        }
    }
    let mut missing: Vec<(UsageKey, (Decimal, Decimal))> = rebuilt
        .windows
        .iter()
        .filter(|(_, (c, r))| !c.is_zero() || !r.is_zero())
        .map(|(k, (c, r))| (k, (c.normalize(), r.normalize())))
        .collect();
    missing.sort();
    for (k, v) in missing {
        report.difference(format!(
            "usage_window {k:?}: rebuilt {v:?}, missing in the live table"
        ));
    }

    let sql = format!("SELECT {PENDING_COLUMNS} FROM pending_approval");
    let rows = sqlx::query_as::<_, PendingRow>(sqlx::AssertSqlSafe(sql)).fetch(&mut *conn);
    diff_stream(
        "pending_approval",
        rows,
        |p| p.intent_id.clone(),
        |k| pending.remove(k),
        report,
    )
    .await?;
    for p in pending.values() {
        report.difference(format!(
            "pending_approval {:?}: rebuilt {p:?}, missing in the live table",
            p.intent_id
        ));
    }

    let sql = format!("SELECT {VOTE_COLUMNS} FROM approval_vote");
    let live_votes: BTreeMap<(String, String), VoteRow> =
        sqlx::query_as::<_, VoteRow>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|v| ((v.intent_id.clone(), v.approver_id.clone()), v))
            .collect();
    diff_maps("approval_vote", &votes, &live_votes, report);

    let sql = format!("SELECT {OUTCOME_COLUMNS} FROM intent_outcome");
    let live_outcomes: BTreeMap<String, OutcomeRow> =
        sqlx::query_as::<_, OutcomeRow>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|o| (o.intent_id.clone(), o))
            .collect();
    diff_maps("intent_outcome", &outcomes, &live_outcomes, report);
    let mut live_kills = BTreeMap::new();
    for k in sqlx::query_as::<_, KillRow>(
        "SELECT scope, active, actor, reason, changed_at, seq FROM kill_switch",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        live_kills.insert(k.scope.clone(), k);
    }
    diff_maps("kill_switch", &kills, &live_kills, report);

    let live_policies: BTreeMap<String, PolicyRow> = sqlx::query_as::<_, PolicyRow>(
        "SELECT sha256, name, version, canonical, seq FROM policy_version",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|p| (p.sha256.clone(), p))
    .collect();
    diff_maps("policy_version", &policies, &live_policies, report);

    let live_configs: BTreeMap<(String, i64), ConfigRow> = sqlx::query_as::<_, ConfigRow>(
        "SELECT kind, version, sha256, canonical, actor, seq FROM config_version",
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|c| ((c.kind.clone(), c.version), c))
    .collect();
    diff_maps("config_version", &configs, &live_configs, report);

    // The tables that grow with traffic are streamed against their rebuilt copy (each
    // live row consumes its rebuilt twin), so neither is held twice.
    // The names stay: authorizations and bindings are kept by interned name.
    rebuilt.windows.drop_amounts();
    let sql = format!("SELECT {AUTHORIZATION_COLUMNS} FROM authorization_state");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch(&mut *conn)
        .map(|r| r.and_then(|r| AuthorizationRow::by_position(&r)));
    diff_stream(
        "authorization_state",
        rows,
        |a| a.intent_id.clone(),
        |k| rebuilt.take_authorization(k),
        report,
    )
    .await?;
    // Kept without their ids: named by the event that last changed them.
    let left: Vec<AuthorizationRow> = rebuilt.authorization_rows().collect();
    let seqs: Vec<i64> = left.iter().map(|a| a.seq).collect();
    let named = resources_of(conn, &seqs).await?;
    for mut a in left {
        a.intent_id = named.get(&a.seq).cloned().unwrap_or_else(|| "?".into());
        report.difference(format!(
            "authorization_state {:?}: rebuilt {a:?}, missing in the live table",
            a.intent_id
        ));
    }
    compare_settlements(conn, settlements, report).await?;
    let live_fx: BTreeMap<String, FxRateRow> =
        sqlx::query_as::<_, FxRateRow>("SELECT pair, rate, set_at, seq FROM fx_rate")
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(|f| (f.pair.clone(), f))
            .collect();
    diff_maps("fx_rate", &fx_rates, &live_fx, report);
    compare_agent_entities(conn, &mut rebuilt, report).await?;
    for a in rebuilt.agent_entity_rows() {
        report.difference(format!(
            "agent_entity {:?}: rebuilt {a:?}, missing in the live table",
            a.agent_id
        ));
    }
    Ok(())
}

/// Compares `agent_entity` (one row per agent) with the rebuilt bindings, reading the
/// live rows by position and borrowing both sides; rows are built only to show a
/// difference.
async fn compare_agent_entities(
    conn: &mut sqlx::PgConnection,
    rebuilt: &mut Projections,
    report: &mut ReplayReport,
) -> Result<(), LedgerError> {
    let row = |agent: &str, entity: &str, seq| AgentEntityRow {
        agent_id: agent.to_string(),
        entity_id: entity.to_string(),
        seq,
    };
    let mut rows =
        sqlx::query("SELECT agent_id, entity_id, seq FROM agent_entity").fetch(&mut *conn);
    while let Some(r) = rows.try_next().await? {
        let (agent, entity, seq): (&str, &str, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        match rebuilt.take_agent_entity(agent) {
            None => report.difference(format!(
                "agent_entity {agent:?}: live {:?} has no events behind it",
                row(agent, entity, seq)
            )),
            Some(again) if again != (entity, seq) => report.difference(format!(
                "agent_entity {agent:?}: rebuilt {:?}, live {:?}",
                row(agent, again.0, again.1),
                row(agent, entity, seq)
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Compares `spend_record` with the rebuilt records, which are kept as digests: a row
/// that differs is rebuilt from its decision event (and the holds the events left it)
/// to name what differs; one missing in the table is named by its last event.
async fn compare_records(
    conn: &mut sqlx::PgConnection,
    rebuilt: &mut Projections,
    report: &mut ReplayReport,
) -> Result<(), LedgerError> {
    let mut differing: Vec<(SpendRecordRow, machine::RecordDigest)> = Vec::new();
    {
        let sql = format!("SELECT {SPEND_RECORD_COLUMNS} FROM spend_record");
        let mut rows =
            sqlx::query_as::<_, SpendRecordRow>(sqlx::AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(l) = rows.try_next().await? {
            match rebuilt.take_record(&l.intent_id) {
                None => report.difference(format!(
                    "spend_record {:?}: live {l:?} has no events behind it",
                    l.intent_id
                )),
                Some(r) if r != machine::RecordDigest::of(&l) => {
                    if differing.len() < MAX_LISTED {
                        differing.push((l, r));
                    } else {
                        report.difference(format!(
                            "spend_record {:?}: live row differs from its events",
                            l.intent_id
                        ));
                    }
                }
                Some(_) => {}
            }
        }
    }
    for (l, r) in differing {
        let decided = rebuilt.decisions.get(&machine::intent_key(&l.intent_id));
        let row = match decided {
            Some((seq, _)) => record_row_at(conn, *seq, &l.intent_id).await?,
            None => None,
        };
        report.difference(match row {
            Some(mut v) => {
                v.amount = r.amount;
                v.counts = r.counts;
                v.seq = r.seq;
                format!("spend_record {:?}: rebuilt {v:?}, live {l:?}", l.intent_id)
            }
            None => format!(
                "spend_record {:?}: rebuilt (holds {} counts {} seq {}), live {l:?}",
                l.intent_id, r.amount, r.counts, r.seq
            ),
        });
    }
    let missing = rebuilt.record_seqs();
    rebuilt.drop_records();
    let named = resources_of(conn, &missing).await?;
    for seq in missing {
        let intent = named.get(&seq).map_or("?", String::as_str);
        report.difference(format!(
            "spend_record {intent:?}: rebuilt, last changed at seq {seq}, missing in the live table"
        ));
    }
    Ok(())
}

/// The `resource` (an intent's events: its intent id) of the first [`MAX_LISTED`] of
/// `seqs`, to name rebuilt rows kept only as digests.
async fn resources_of(
    conn: &mut sqlx::PgConnection,
    seqs: &[i64],
) -> Result<HashMap<i64, String>, LedgerError> {
    if seqs.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(sqlx::query_as::<_, (i64, String)>(
        "SELECT seq, resource FROM ledger_event WHERE seq = ANY($1)",
    )
    .bind(&seqs[..seqs.len().min(MAX_LISTED)])
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect())
}

/// Re-reads the event at `seq` and folds it alone, passing its changes to `found`.
async fn refold(
    conn: &mut sqlx::PgConnection,
    seq: i64,
    found: &mut impl FnMut(machine::Change),
) -> Result<(), LedgerError> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM ledger_event WHERE seq = $1");
    let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(seq)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(());
    };
    let e = row_to_event(&r)?;
    // An event that does not parse or fold was reported while replaying.
    if let Ok(event) = LedgerEvent::parse(&e.event_type, &e.payload) {
        let _ = machine::delta(&recorded(&e), &event, found);
    }
    Ok(())
}

/// The spend record the decision event at `seq` created for `intent_id`.
async fn record_row_at(
    conn: &mut sqlx::PgConnection,
    seq: i64,
    intent_id: &str,
) -> Result<Option<SpendRecordRow>, LedgerError> {
    let mut row = None;
    refold(conn, seq, &mut |c| {
        if let machine::Change::Record(r) = c
            && r.intent_id == intent_id
        {
            row = Some(*r);
        }
    })
    .await?;
    Ok(row)
}

/// Compares `settlement` with the rebuilt settlements, which are kept as digests: a row
/// that differs is rebuilt from its event to name what differs.
async fn compare_settlements(
    conn: &mut sqlx::PgConnection,
    mut rebuilt: machine::FastMap<machine::IntentKey, machine::AppliedSettlement>,
    report: &mut ReplayReport,
) -> Result<(), LedgerError> {
    let mut differing: Vec<(SettlementRow, i64)> = Vec::new();
    {
        let sql = format!("SELECT {SETTLEMENT_COLUMNS} FROM settlement");
        let mut rows =
            sqlx::query_as::<_, SettlementRow>(sqlx::AssertSqlSafe(sql)).fetch(&mut *conn);
        while let Some(l) = rows.try_next().await? {
            match rebuilt.remove(&machine::intent_key(&l.settlement_id)) {
                None => report.difference(format!(
                    "settlement {:?}: live {l:?} has no events behind it",
                    l.settlement_id
                )),
                Some(a) if a.digest != l.digest() => {
                    if differing.len() < MAX_LISTED {
                        differing.push((l, a.seq));
                    } else {
                        report.difference(format!(
                            "settlement {:?}: live row differs from its event (seq {})",
                            l.settlement_id, a.seq
                        ));
                    }
                }
                Some(_) => {}
            }
        }
    }
    for (l, seq) in differing {
        let mut rebuilt_row = None;
        refold(conn, seq, &mut |c| {
            if let machine::Change::Settlement(st) = c
                && st.settlement_id == l.settlement_id
            {
                rebuilt_row = Some(st);
            }
        })
        .await?;
        report.difference(match rebuilt_row {
            Some(v) => format!(
                "settlement {:?}: rebuilt {v:?}, live {l:?}",
                l.settlement_id
            ),
            None => format!(
                "settlement {:?}: live row differs from its event (seq {seq})",
                l.settlement_id
            ),
        });
    }
    // Named by their events (the projections keep a hash of the settlementId).
    let mut missing: Vec<i64> = rebuilt.into_values().map(|a| a.seq).collect();
    missing.sort_unstable();
    for (listed, seq) in missing.into_iter().enumerate() {
        let mut id = None;
        if listed < MAX_LISTED {
            refold(conn, seq, &mut |c| {
                if let machine::Change::Settlement(st) = c {
                    id = Some(st.settlement_id);
                }
            })
            .await?;
        }
        let id = id.unwrap_or_else(|| "?".to_string());
        report.difference(format!(
            "settlement {id:?}: rebuilt from seq {seq}, missing in the live table"
        ));
    }
    Ok(())
}

/// The rebuilt row of an intent's (first) decision event, found by its intent id.
async fn rebuilt_by_intent(
    conn: &mut sqlx::PgConnection,
    intent_id: &str,
) -> Result<Option<DecisionRow>, LedgerError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM ledger_event
         WHERE event_type = $1 AND payload::jsonb -> 'intent' ->> 'intentId' = $2
         ORDER BY seq LIMIT 1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(kind::INTENT_DECIDED)
        .bind(intent_id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(r) => Ok(decision_row_of(&row_to_event(&r)?).ok().flatten()),
        None => Ok(None),
    }
}

/// [`diff_maps`] with the live rows streamed, each taking its rebuilt twin out of the
/// projections (`take`): same findings, same wording; the caller reports the rebuilt
/// rows left (missing in the live table).
async fn diff_stream<K, V, S>(
    table: &str,
    mut live: S,
    key: impl Fn(&V) -> K,
    mut take: impl FnMut(&K) -> Option<V>,
    report: &mut ReplayReport,
) -> Result<(), LedgerError>
where
    K: std::fmt::Debug,
    V: PartialEq + std::fmt::Debug,
    S: futures::Stream<Item = Result<V, sqlx::Error>> + Unpin,
{
    while let Some(l) = live.try_next().await? {
        let k = key(&l);
        match take(&k) {
            None => report.difference(format!("{table} {k:?}: live {l:?} has no events behind it")),
            Some(v) if v != l => {
                report.difference(format!("{table} {k:?}: rebuilt {v:?}, live {l:?}"))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn diff_maps<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    table: &str,
    rebuilt: &BTreeMap<K, V>,
    live: &BTreeMap<K, V>,
    report: &mut ReplayReport,
) {
    for (k, v) in rebuilt {
        match live.get(k) {
            None => report.difference(format!(
                "{table} {k:?}: rebuilt {v:?}, missing in the live table"
            )),
            Some(l) if l != v => {
                report.difference(format!("{table} {k:?}: rebuilt {v:?}, live {l:?}"))
            }
            Some(_) => {}
        }
    }
    for (k, l) in live {
        if !rebuilt.contains_key(k) {
            report.difference(format!("{table} {k:?}: live {l:?} has no events behind it"));
        }
    }
}
