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

use super::chain::{self, EventRow, Verifier};
use super::decide::kill_scope_for;
use super::events::{self, kind};
use super::usage::{self, UsageKey};
use super::votes::usage_change;
use crate::decision::{DecisionMessage, Effect, Usage};
use crate::intent::SpendIntent;
use crate::policy::{self, CompiledPolicy, EvalInput};
use crate::privacy;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgPool, Row};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Most differences listed in a report (the count is always exact).
pub const MAX_LISTED: usize = 50;
/// Events handed to the chain-verifying thread at a time, and batches in flight.
const VERIFY_BATCH_EVENTS: usize = 256;
const VERIFY_QUEUE_BATCHES: usize = 4;

fn row_to_event(r: &sqlx::postgres::PgRow) -> anyhow::Result<EventRow> {
    let hash = |name: &str| -> anyhow::Result<chain::Hash> {
        let v: Vec<u8> = r.try_get(name)?;
        let mut h = chain::GENESIS;
        if v.len() == h.len() {
            h.copy_from_slice(&v);
        } else {
            // A wrong-length hash cannot match anything; keep it visibly wrong.
            h = [0xff; chain::HASH_BYTES];
        }
        Ok(h)
    };
    Ok(EventRow {
        seq: r.try_get("seq")?,
        chain_id: r.try_get("chain_id")?,
        chain_pos: r.try_get("chain_pos")?,
        event_type: r.try_get("event_type")?,
        recorded_at: r.try_get("recorded_at")?,
        actor: r.try_get("actor")?,
        resource: r.try_get("resource")?,
        origin: r.try_get("origin")?,
        payload: r.try_get("payload")?,
        prev_hash: hash("prev_hash")?,
        hash: hash("hash")?,
    })
}

const EVENT_COLUMNS: &str = "seq, chain_id, chain_pos, event_type, recorded_at, actor, resource, origin, payload, prev_hash, hash";

async fn load_heads(
    conn: &mut sqlx::PgConnection,
) -> anyhow::Result<Vec<(String, i64, chain::Hash, i64)>> {
    let mut heads = Vec::new();
    for r in sqlx::query("SELECT chain_id, chain_pos, hash, seq FROM chain_head")
        .fetch_all(conn)
        .await?
    {
        let v: Vec<u8> = r.try_get("hash")?;
        let mut h = chain::GENESIS;
        if v.len() == h.len() {
            h.copy_from_slice(&v);
        }
        heads.push((
            r.try_get("chain_id")?,
            r.try_get("chain_pos")?,
            h,
            r.try_get("seq")?,
        ));
    }
    Ok(heads)
}

/// Recomputes every chain in one snapshot.
pub async fn verify_chains(pool: &PgPool) -> anyhow::Result<Verifier> {
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
            v.check(&row_to_event(&r)?);
        }
    }
    let heads = load_heads(&mut tx).await?;
    v.finish(&heads);
    tx.commit().await?;
    Ok(v)
}

/// Lifts the session's statement and idle-in-transaction limits for this read-only
/// transaction: reading the whole ledger legitimately takes longer than one statement
/// may, and the client computes (hashes, folds) between reads. A read-only snapshot
/// holds no lock anyone waits for, so it cannot freeze the ledger.
async fn read_whole_ledger(tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
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
) -> anyhow::Result<Vec<(Cursor, EventRow)>> {
    let sql = format!(
        "SELECT xid::text::bigint AS xid_n, {EVENT_COLUMNS} FROM ledger_event
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

/// A row of the `decision` table, as rebuilt from its event or as read from the table.
#[derive(Debug, PartialEq)]
struct DecisionRow {
    intent_id: String,
    agent_id: String,
    entity_id: String,
    seq: i64,
    fingerprint: Vec<u8>,
    decision_hash: Vec<u8>,
    effect: String,
    /// The message text exactly as published and served (byte-for-byte).
    message: String,
}

/// Bytes of a SHA-256 kept per decision: replay holds one digest per decision instead of
/// the row itself, which is what keeps it within SPEC §10's memory target (≤ 100 MB at
/// 100,000 agents). 128 bits make an accidental match impossible in practice; deliberate
/// tampering is the hash chain's job, not this comparison's.
const DIGEST_BYTES: usize = 16;
type Digest = [u8; DIGEST_BYTES];

impl DecisionRow {
    fn digest(&self) -> Digest {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        // Length-prefixed fields: no two different rows hash the same input bytes.
        for part in [
            self.intent_id.as_bytes(),
            self.agent_id.as_bytes(),
            self.entity_id.as_bytes(),
            &self.seq.to_be_bytes(),
            &self.fingerprint,
            &self.decision_hash,
            self.effect.as_bytes(),
            self.message.as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        let full = h.finalize();
        let mut d = [0u8; DIGEST_BYTES];
        d.copy_from_slice(&full[..DIGEST_BYTES]);
        d
    }

    /// What differs between two rows of the same intent, field by field.
    fn differences(&self, live: &DecisionRow) -> String {
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
        field("agent_id", self.agent_id.clone(), live.agent_id.clone());
        field("entity_id", self.entity_id.clone(), live.entity_id.clone());
        field("seq", self.seq.to_string(), live.seq.to_string());
        field(
            "fingerprint",
            hex::encode(&self.fingerprint),
            hex::encode(&live.fingerprint),
        );
        field(
            "decision_hash",
            hex::encode(&self.decision_hash),
            hex::encode(&live.decision_hash),
        );
        field("effect", self.effect.clone(), live.effect.clone());
        field(
            "message",
            cut(&self.message).to_string(),
            cut(&live.message).to_string(),
        );
        out.join("; ")
    }
}

/// Strings that repeat across many window keys (agent ids, time zones, currencies),
/// stored once; window keys then hold small numbers.
#[derive(Debug, Default)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct names");
        self.ids.insert(s.into(), id);
        self.names.push(s.into());
        id
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// A usage window key with its strings interned (16 bytes instead of four `String`s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct WindowKey {
    agent: u32,
    tz: u32,
    currency: u32,
    day_window: bool,
    start: chrono::NaiveDate,
}

#[derive(Debug, Default)]
struct Windows {
    names: Interner,
    amounts: HashMap<WindowKey, (Decimal, Decimal)>,
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

    /// The key of a live row, if every part of it was ever seen in the events.
    fn existing_key(&self, k: &UsageKey) -> Option<WindowKey> {
        Some(WindowKey {
            agent: self.names.get(&k.agent_id)?,
            tz: self.names.get(&k.tz)?,
            currency: self.names.get(&k.currency)?,
            day_window: k.kind == usage::DAY,
            start: k.start,
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

    fn add(&mut self, k: &UsageKey, committed: Decimal, reserved: Decimal) {
        let key = self.key(k);
        let v = self
            .amounts
            .entry(key)
            .or_insert((Decimal::ZERO, Decimal::ZERO));
        v.0 += committed;
        v.1 += reserved;
    }

    /// committed + reserved of a window (zero when never touched).
    fn total(&self, k: &UsageKey) -> Decimal {
        self.existing_key(k)
            .and_then(|key| self.amounts.get(&key))
            .map(|(c, r)| c + r)
            .unwrap_or_default()
    }
}

/// The projections, rebuilt in memory. Decisions and windows, the two that grow with
/// traffic and agents, are kept compact; the rest grows only with approvals, kill-switch
/// changes and policy versions.
#[derive(Debug, Default)]
struct Projections {
    /// intent -> (seq of its decision event, digest of the rebuilt `decision` row)
    decisions: HashMap<String, (i64, Digest)>,
    windows: Windows,
    /// intent -> (agent, entity, effect, approvals, amount, currency, tz, day, month, decided seq, expires)
    pending: BTreeMap<String, String>,
    votes: BTreeMap<(String, String), (String, DateTime<Utc>, i64)>,
    outcomes: BTreeMap<String, (String, String, DateTime<Utc>, i64)>,
    kills: BTreeMap<String, (bool, String, String, DateTime<Utc>, i64)>,
    policies: BTreeMap<String, (String, String, String, i64)>,
}

#[allow(clippy::too_many_arguments)]
fn pending_text(
    agent: &str,
    entity: &str,
    effect: &str,
    approvals: i32,
    amount: Decimal,
    currency: &str,
    tz: &str,
    day: chrono::NaiveDate,
    month: chrono::NaiveDate,
    seq: i64,
    expires: DateTime<Utc>,
) -> String {
    format!(
        "{agent} {entity} {effect} {approvals} {} {currency} {tz} {day} {month} {seq} {}",
        amount.normalize(),
        chain::format_time(&expires)
    )
}

/// `spendguard replay [--verify]`.
pub async fn replay(pool: &PgPool, verify: bool) -> anyhow::Result<ReplayReport> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    read_whole_ledger(&mut tx).await?;
    let keys: HashMap<uuid::Uuid, privacy::SubjectKey> =
        sqlx::query("SELECT key_id, key FROM subject_key")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .filter_map(|r| {
                let id: uuid::Uuid = r.try_get("key_id").ok()?;
                let k: Vec<u8> = r.try_get("key").ok()?;
                privacy::SubjectKey::from_bytes(id, &k).map(|k| (id, k))
            })
            .collect();

    let mut report = ReplayReport::default();
    let mut p = Projections::default();
    let mut compiled: HashMap<String, CompiledPolicy> = HashMap::new();
    // The hash chains are recomputed on another core while this one rebuilds the
    // projections; events go over in bounded batches (memory stays flat).
    let (to_verifier, from_replay) =
        std::sync::mpsc::sync_channel::<Vec<EventRow>>(VERIFY_QUEUE_BATCHES);
    let verifier = std::thread::spawn(move || {
        let mut v = Verifier::default();
        for batch in from_replay {
            for e in &batch {
                v.check(e);
            }
        }
        v
    });
    let started = std::time::Instant::now();
    let applied: anyhow::Result<()> = async {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM ledger_event ORDER BY seq");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut *tx);
        let mut batch = Vec::with_capacity(VERIFY_BATCH_EVENTS);
        while let Some(r) = rows.try_next().await? {
            let e = row_to_event(&r)?;
            report.events += 1;
            apply(&e, &mut p, &mut report, &mut compiled, &keys, verify)?;
            batch.push(e);
            if batch.len() == VERIFY_BATCH_EVENTS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(VERIFY_BATCH_EVENTS));
                to_verifier
                    .send(full)
                    .map_err(|_| anyhow::anyhow!("internal: chain verifier stopped"))?;
            }
        }
        if !batch.is_empty() {
            to_verifier
                .send(batch)
                .map_err(|_| anyhow::anyhow!("internal: chain verifier stopped"))?;
        }
        Ok(())
    }
    .await;
    drop(to_verifier);
    let mut verifier = verifier
        .join()
        .map_err(|_| anyhow::anyhow!("internal: chain verifier panicked"))?;
    applied?;
    tracing::debug!(
        events = report.events,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "replay: events applied and chains checked"
    );
    let heads = load_heads(&mut tx).await?;
    verifier.finish(&heads);
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

/// The `decision` row an `intent_decided` event stands for (`intent` is the event's
/// recorded, masked intent).
fn decision_row(
    e: &EventRow,
    d: &events::IntentDecided<SpendIntent>,
) -> anyhow::Result<DecisionRow> {
    let intent = &d.intent;
    let message = DecisionMessage {
        intent_id: intent.intent_id.clone(),
        agent_id: intent.agent_id.clone(),
        entity_id: intent.entity_id.clone(),
        effect: d.evaluation.effect,
        approvals_required: d.evaluation.approvals_required,
        reasons: d.evaluation.reasons.clone(),
        policy: d.policy.clone(),
        usage: d.usage.clone(),
        decided_at: d.accepted_at,
        ledger_seq: Some(e.seq),
    };
    Ok(DecisionRow {
        intent_id: intent.intent_id.clone(),
        agent_id: intent.agent_id.clone(),
        entity_id: intent.entity_id.clone(),
        seq: e.seq,
        // A fingerprint that is not hex cannot match the live bytes: kept visibly wrong.
        fingerprint: hex::decode(&d.fingerprint)
            .unwrap_or_else(|_| d.fingerprint.clone().into_bytes()),
        decision_hash: e.hash.to_vec(),
        effect: d.evaluation.effect.as_str().to_string(),
        message: serde_json::to_string(&message)?,
    })
}

/// Rebuilds the `decision` row of one event again (to explain a difference).
fn decision_row_of(e: &EventRow) -> anyhow::Result<DecisionRow> {
    let d: events::IntentDecided<SpendIntent> = serde_json::from_str(&e.payload)?;
    decision_row(e, &d)
}

fn apply(
    e: &EventRow,
    p: &mut Projections,
    report: &mut ReplayReport,
    compiled: &mut HashMap<String, CompiledPolicy>,
    keys: &HashMap<uuid::Uuid, privacy::SubjectKey>,
    verify: bool,
) -> anyhow::Result<()> {
    let at = |what: &str| format!("seq {} ({}): {what}", e.seq, e.event_type);
    match e.event_type.as_str() {
        kind::POLICY_ACTIVATED => {
            let a: events::PolicyActivated = serde_json::from_str(&e.payload)?;
            p.policies.insert(
                a.policy.sha256.clone(),
                (
                    a.policy.name.clone(),
                    a.policy.version.clone(),
                    a.canonical.clone(),
                    e.seq,
                ),
            );
            if verify {
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
                    Err(err) => {
                        report.mismatch(at(&format!("recorded policy does not parse: {err}")))
                    }
                }
            }
        }
        kind::INTENT_DECIDED => {
            report.decisions += 1;
            let d: events::IntentDecided<SpendIntent> = serde_json::from_str(&e.payload)?;
            let row = decision_row(e, &d)?;
            let mut intent = d.intent.clone();
            if let Some((earlier, _)) = p
                .decisions
                .insert(row.intent_id.clone(), (e.seq, row.digest()))
            {
                report.mismatch(at(&format!(
                    "intent {} decided a second time (first at seq {earlier})",
                    row.intent_id
                )));
            }
            let policy_tz_currency = d
                .usage
                .as_ref()
                .map(|u| (u.window.tz.clone(), intent.currency.clone()));
            let windows = match (&d.usage, &policy_tz_currency) {
                (Some(u), Some((tz, _))) => {
                    let month = chrono::NaiveDate::parse_from_str(
                        &format!("{}-01", u.window.month),
                        "%Y-%m-%d",
                    )?;
                    // Usage is kept in the policy's currency; a DENY for another currency
                    // changes nothing, so the intent's currency only matters when it matches.
                    let cur = d
                        .policy
                        .as_ref()
                        .and_then(|pi| {
                            compiled
                                .get(&pi.sha256)
                                .map(|c| c.currency.code.to_string())
                        })
                        .unwrap_or_else(|| intent.currency.clone());
                    Some((
                        usage::key(&intent.agent_id, usage::DAY, tz, &cur, u.window.day),
                        usage::key(&intent.agent_id, usage::MONTH, tz, &cur, month),
                        u.window.day,
                        month,
                        cur,
                    ))
                }
                _ => None,
            };
            if verify {
                report.decisions_reevaluated += 1;
                if let (Some(u), Some((dk, mk, ..))) = (&d.usage, &windows) {
                    let daily = p.windows.total(dk);
                    let monthly = p.windows.total(mk);
                    if daily != u.daily_so_far || monthly != u.monthly_so_far {
                        report.mismatch(at(&format!(
                            "intent {}: recorded usage {}/{} but the events before it give {daily}/{monthly}",
                            intent.intent_id, u.daily_so_far, u.monthly_so_far
                        )));
                    }
                }
                let active: HashSet<String> = p
                    .kills
                    .iter()
                    .filter(|(_, v)| v.0)
                    .map(|(k, _)| k.clone())
                    .collect();
                let kill = kill_scope_for(&active, &intent.agent_id, &intent.entity_id);
                if kill != d.kill {
                    report.mismatch(at(&format!(
                        "intent {}: recorded kill switch {:?} but the events before it give {kill:?}",
                        intent.intent_id, d.kill
                    )));
                }
                // Restore the personal data when its key still exists (a Rego module may
                // read it); after erasure the masked account is used.
                if let Some(sealed) = &d.personal {
                    match keys
                        .get(&sealed.key_id)
                        .map(|k| privacy::open(k, sealed, &intent.intent_id))
                    {
                        Some(Ok(clear)) => {
                            if let Some(a) = serde_json::from_slice::<serde_json::Value>(&clear)
                                .ok()
                                .and_then(|v| {
                                    v.get("account")
                                        .and_then(|a| a.as_str())
                                        .map(str::to_string)
                                })
                            {
                                intent.beneficiary.account = Some(a);
                            }
                        }
                        Some(Err(err)) => {
                            report.mismatch(at(&format!("personal data does not decrypt: {err}")))
                        }
                        None => report.erased_personal_data += 1,
                    }
                }
                let usage_in = d
                    .usage
                    .as_ref()
                    .map(|u| Usage {
                        daily_so_far: u.daily_so_far,
                        monthly_so_far: u.monthly_so_far,
                    })
                    .unwrap_or_default();
                let again = match &d.policy {
                    None => Some(policy::no_policy_bound(&intent)),
                    Some(pi) => match compiled.get(&pi.sha256) {
                        Some(c) => Some(policy::evaluate(
                            c,
                            &EvalInput {
                                intent: &intent,
                                usage: usage_in,
                                kill: &d.kill,
                                accepted_at: d.accepted_at,
                            },
                        )),
                        None => {
                            report.mismatch(at(&format!(
                                "intent {}: policy {} ({}) was never activated in the ledger",
                                intent.intent_id, pi.name, pi.sha256
                            )));
                            None
                        }
                    },
                };
                if let Some(again) = again
                    && again != d.evaluation
                {
                    report.mismatch(at(&format!(
                        "intent {}: recorded {} {:?} but re-evaluation gives {} {:?}",
                        intent.intent_id,
                        d.evaluation.effect,
                        d.evaluation
                            .reasons
                            .iter()
                            .map(|r| r.code.as_ref())
                            .collect::<Vec<_>>(),
                        again.effect,
                        again
                            .reasons
                            .iter()
                            .map(|r| r.code.as_ref())
                            .collect::<Vec<_>>()
                    )));
                }
            }
            if let Some((dk, mk, day, month, cur)) = windows {
                let (committed, reserved) = match d.evaluation.effect {
                    Effect::Allow => (intent.amount, Decimal::ZERO),
                    Effect::RequireHitl | Effect::RequireMsig => (Decimal::ZERO, intent.amount),
                    Effect::Deny => (Decimal::ZERO, Decimal::ZERO),
                };
                if !committed.is_zero() || !reserved.is_zero() {
                    for k in [dk, mk] {
                        p.windows.add(&k, committed, reserved);
                    }
                }
                if let (Some(expires), Some((tz, _))) = (d.expires_at, &policy_tz_currency) {
                    p.pending.insert(
                        intent.intent_id.clone(),
                        pending_text(
                            &intent.agent_id,
                            &intent.entity_id,
                            d.evaluation.effect.as_str(),
                            i32::try_from(d.evaluation.approvals_required.max(1))
                                .unwrap_or(i32::MAX),
                            intent.amount,
                            &cur,
                            tz,
                            day,
                            month,
                            e.seq,
                            expires,
                        ),
                    );
                }
            }
        }
        kind::VOTE_ACCEPTED => {
            let v: events::VoteAccepted = serde_json::from_str(&e.payload)?;
            p.votes
                .insert((v.intent_id, v.approver_id), (v.vote, v.signed_at, e.seq));
        }
        kind::INTENT_CLOSED => {
            let c: events::IntentClosed = serde_json::from_str(&e.payload)?;
            for (k, committed, reserved) in usage_change(&c) {
                p.windows.add(&k, committed, reserved);
            }
            if p.pending.remove(&c.intent_id).is_none() {
                report.mismatch(at(&format!(
                    "intent {} closed but it was not waiting for approval",
                    c.intent_id
                )));
            }
            p.outcomes.insert(
                c.intent_id.clone(),
                (c.agent_id.clone(), c.outcome.clone(), c.closed_at, e.seq),
            );
        }
        kind::KILL_SWITCH_SET => {
            let k: events::KillSwitchSet = serde_json::from_str(&e.payload)?;
            p.kills
                .insert(k.scope, (k.active, k.actor, k.reason, e.recorded_at, e.seq));
        }
        kind::INTENT_INVALID
        | kind::IDEMPOTENCY_CONFLICT
        | kind::VOTE_REFUSED
        | kind::SUBJECT_ERASED
        | kind::MESSAGE_SET_ASIDE => {}
        other => report.mismatch(at(&format!("unknown event type {other:?}"))),
    }
    Ok(())
}

/// Compares the rebuilt projections with the live tables (same snapshot), streaming the
/// two large tables so neither is held in memory next to its rebuilt copy.
async fn compare_live(
    conn: &mut sqlx::PgConnection,
    rebuilt: Projections,
    report: &mut ReplayReport,
) -> anyhow::Result<()> {
    let Projections {
        mut decisions,
        mut windows,
        pending,
        votes,
        outcomes,
        kills,
        policies,
    } = rebuilt;

    // Rows that differ from their event, explained field by field once the scan is done.
    let mut changed: Vec<DecisionRow> = Vec::new();
    {
        let mut rows = sqlx::query(
            "SELECT intent_id, agent_id, entity_id, seq, fingerprint, decision_hash, effect, message FROM decision",
        )
        .fetch(&mut *conn);
        while let Some(r) = rows.try_next().await? {
            let live = DecisionRow {
                intent_id: r.try_get("intent_id")?,
                agent_id: r.try_get("agent_id")?,
                entity_id: r.try_get("entity_id")?,
                seq: r.try_get("seq")?,
                fingerprint: r.try_get("fingerprint")?,
                decision_hash: r.try_get("decision_hash")?,
                effect: r.try_get("effect")?,
                message: r.try_get("message")?,
            };
            match decisions.remove(&live.intent_id) {
                None => report.difference(format!(
                    "decision {:?}: live row (seq {}, {}) has no events behind it",
                    live.intent_id, live.seq, live.effect
                )),
                Some((_, digest)) if digest != live.digest() => {
                    if changed.len() < MAX_LISTED {
                        changed.push(live);
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
    let mut missing: Vec<(String, i64)> = decisions
        .into_iter()
        .map(|(intent, (seq, _))| (intent, seq))
        .collect();
    missing.sort_by_key(|(_, seq)| *seq);
    for (intent, seq) in missing {
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
                Some(Ok(row)) if row.intent_id == live.intent_id => Some(row),
                _ => rebuilt_by_intent(conn, &live.intent_id).await?,
            };
            report.difference(match rebuilt {
                Some(row) => format!("decision {:?}: {}", live.intent_id, row.differences(&live)),
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
        while let Some(r) = rows.try_next().await? {
            let k = usage::key(
                r.try_get::<&str, _>("agent_id")?,
                r.try_get::<&str, _>("kind")?,
                r.try_get::<&str, _>("tz")?,
                r.try_get::<&str, _>("currency")?,
                r.try_get("window_start")?,
            );
            let live: (Decimal, Decimal) = (r.try_get("committed")?, r.try_get("reserved")?);
            let rebuilt = windows
                .existing_key(&k)
                .and_then(|key| windows.amounts.remove(&key))
                .unwrap_or_default();
            let (live, rebuilt) = (
                (live.0.normalize(), live.1.normalize()),
                (rebuilt.0.normalize(), rebuilt.1.normalize()),
            );
            if live != rebuilt {
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
    let mut missing: Vec<(UsageKey, (Decimal, Decimal))> = windows
        .amounts
        .iter()
        .filter(|(_, (c, r))| !c.is_zero() || !r.is_zero())
        .map(|(k, (c, r))| (windows.usage_key(k), (c.normalize(), r.normalize())))
        .collect();
    missing.sort();
    for (k, v) in missing {
        report.difference(format!(
            "usage_window {k:?}: rebuilt {v:?}, missing in the live table"
        ));
    }

    let mut live_pending = BTreeMap::new();
    for r in sqlx::query(
        "SELECT intent_id, agent_id, entity_id, effect, approvals_required, amount, currency, tz, day, month, decided_seq, expires_at FROM pending_approval",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        live_pending.insert(
            r.try_get("intent_id")?,
            pending_text(
                r.try_get::<&str, _>("agent_id")?,
                r.try_get::<&str, _>("entity_id")?,
                r.try_get::<&str, _>("effect")?,
                r.try_get("approvals_required")?,
                r.try_get("amount")?,
                r.try_get::<&str, _>("currency")?,
                r.try_get::<&str, _>("tz")?,
                r.try_get("day")?,
                r.try_get("month")?,
                r.try_get("decided_seq")?,
                r.try_get("expires_at")?,
            ),
        );
    }
    diff_maps("pending_approval", &pending, &live_pending, report);

    let mut live_votes = BTreeMap::new();
    for r in sqlx::query("SELECT intent_id, approver_id, vote, signed_at, seq FROM approval_vote")
        .fetch_all(&mut *conn)
        .await?
    {
        live_votes.insert(
            (r.try_get("intent_id")?, r.try_get("approver_id")?),
            (
                r.try_get("vote")?,
                r.try_get("signed_at")?,
                r.try_get("seq")?,
            ),
        );
    }
    diff_maps("approval_vote", &votes, &live_votes, report);

    let mut live_outcomes = BTreeMap::new();
    for r in sqlx::query("SELECT intent_id, agent_id, outcome, closed_at, seq FROM intent_outcome")
        .fetch_all(&mut *conn)
        .await?
    {
        live_outcomes.insert(
            r.try_get("intent_id")?,
            (
                r.try_get("agent_id")?,
                r.try_get("outcome")?,
                r.try_get("closed_at")?,
                r.try_get("seq")?,
            ),
        );
    }
    diff_maps("intent_outcome", &outcomes, &live_outcomes, report);

    let mut live_kills = BTreeMap::new();
    for r in sqlx::query("SELECT scope, active, actor, reason, changed_at, seq FROM kill_switch")
        .fetch_all(&mut *conn)
        .await?
    {
        live_kills.insert(
            r.try_get("scope")?,
            (
                r.try_get("active")?,
                r.try_get("actor")?,
                r.try_get("reason")?,
                r.try_get("changed_at")?,
                r.try_get("seq")?,
            ),
        );
    }
    diff_maps("kill_switch", &kills, &live_kills, report);

    let mut live_policies = BTreeMap::new();
    for r in sqlx::query("SELECT sha256, name, version, canonical, seq FROM policy_version")
        .fetch_all(&mut *conn)
        .await?
    {
        live_policies.insert(
            r.try_get("sha256")?,
            (
                r.try_get("name")?,
                r.try_get("version")?,
                r.try_get("canonical")?,
                r.try_get("seq")?,
            ),
        );
    }
    diff_maps("policy_version", &policies, &live_policies, report);
    Ok(())
}

/// The rebuilt row of an intent's (first) decision event, found by its intent id.
async fn rebuilt_by_intent(
    conn: &mut sqlx::PgConnection,
    intent_id: &str,
) -> anyhow::Result<Option<DecisionRow>> {
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
        Some(r) => Ok(decision_row_of(&row_to_event(&r)?).ok()),
        None => Ok(None),
    }
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
