//! Transaction plumbing shared by every write path: chain locks, sequence allocation,
//! event appends and the bulk writes of events and projections (one statement per
//! table per transaction, arrays through `unnest`, so a batch of intents costs a
//! handful of round trips).

use super::chain::{self, EventRow, Hash, Heads};
use super::events::{Origin, canonical};
use super::machine::{self, Change, DIGEST_BYTES, Digest, Projections, Recorded, Staged};
use super::usage::UsageKey;
use super::{LedgerError, OutcomeMessage};
use crate::decision::DecisionMessage;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};
use std::collections::{BTreeMap, VecDeque};

pub const DECISIONS_TOPIC: &str = "spend.decisions";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DecisionRow {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub seq: i64,
    pub fingerprint: Vec<u8>,
    pub decision_hash: Vec<u8>,
    pub effect: String,
    /// The message text exactly as published and served (byte-for-byte).
    pub message: String,
}

impl DecisionRow {
    /// A digest of the columns (length-prefixed, so no two rows hash the same bytes).
    pub fn digest(&self) -> Digest {
        self.columns().digest()
    }

    pub fn columns(&self) -> DecisionColumns<'_> {
        DecisionColumns {
            intent_id: &self.intent_id,
            agent_id: &self.agent_id,
            entity_id: &self.entity_id,
            seq: self.seq,
            fingerprint: &self.fingerprint,
            decision_hash: &self.decision_hash,
            effect: &self.effect,
            message: &self.message,
        }
    }
}

/// A `decision` row's columns, borrowed (from a live row being compared, without
/// copying its message). Selected in this order by [`DECISION_COLUMNS`].
#[derive(Debug, Clone, Copy)]
pub struct DecisionColumns<'a> {
    pub intent_id: &'a str,
    pub agent_id: &'a str,
    pub entity_id: &'a str,
    pub seq: i64,
    pub fingerprint: &'a [u8],
    pub decision_hash: &'a [u8],
    pub effect: &'a str,
    pub message: &'a str,
}

pub const DECISION_COLUMNS: &str =
    "intent_id, agent_id, entity_id, seq, fingerprint, decision_hash, effect, message";

impl<'a> DecisionColumns<'a> {
    /// Reads a row selected with [`DECISION_COLUMNS`] first, by position.
    pub fn of(r: &'a sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        debug_assert_selected_first(r, DECISION_COLUMNS, "DecisionColumns::of");
        Ok(DecisionColumns {
            intent_id: r.try_get(0)?,
            agent_id: r.try_get(1)?,
            entity_id: r.try_get(2)?,
            seq: r.try_get(3)?,
            fingerprint: r.try_get(4)?,
            decision_hash: r.try_get(5)?,
            effect: r.try_get(6)?,
            message: r.try_get(7)?,
        })
    }

    pub fn digest(&self) -> Digest {
        digest_of(&[
            self.intent_id.as_bytes(),
            self.agent_id.as_bytes(),
            self.entity_id.as_bytes(),
            &self.seq.to_be_bytes(),
            self.fingerprint,
            self.decision_hash,
            self.effect.as_bytes(),
            self.message.as_bytes(),
        ])
    }

    pub fn to_row(&self) -> DecisionRow {
        DecisionRow {
            intent_id: self.intent_id.to_string(),
            agent_id: self.agent_id.to_string(),
            entity_id: self.entity_id.to_string(),
            seq: self.seq,
            fingerprint: self.fingerprint.to_vec(),
            decision_hash: self.decision_hash.to_vec(),
            effect: self.effect.to_string(),
            message: self.message.to_string(),
        }
    }
}

/// Asserts (in debug builds) that `r` starts with the columns of `list` (`"a, b, c"`),
/// in that order: what `reader`, which reads by position, relies on.
pub(crate) fn debug_assert_selected_first(r: &sqlx::postgres::PgRow, list: &str, reader: &str) {
    if cfg!(debug_assertions) {
        let names = list.split(", ");
        assert!(
            names.clone().count() <= r.columns().len()
                && names
                    .zip(r.columns())
                    .all(|(name, c)| sqlx::Column::name(c) == name),
            "{reader} reads by position and needs the columns `{list}` first, in that order"
        );
    }
}

/// Digest of a row given as its columns' bytes, length-prefixed.
pub fn digest_of(parts: &[&[u8]]) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let full = h.finalize();
    let mut d = [0u8; DIGEST_BYTES];
    d.copy_from_slice(&full[..DIGEST_BYTES]);
    d
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingRow {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub effect: String,
    pub approvals_required: i32,
    pub amount: Decimal,
    pub currency: String,
    pub tz: String,
    pub day: NaiveDate,
    pub month: NaiveDate,
    pub decided_seq: i64,
    pub expires_at: DateTime<Utc>,
    /// The policy's `authorizationTtl`: an approval opens an authorization this long.
    pub authorization_ttl_secs: i64,
    /// A foreign-currency intent (SPEC §12.3): its own amount and currency and the
    /// decision's rate (`amount` / `currency` above are converted).
    pub fx_rate: Option<Decimal>,
    pub intent_amount: Option<Decimal>,
    pub intent_currency: Option<String>,
}

/// `fx_rate`: the latest rate of each currency pair (SPEC §12.3).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct FxRateRow {
    /// `USD/BRL`.
    pub pair: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    pub set_at: DateTime<Utc>,
    pub seq: i64,
}

/// `agent_entity`: the entity an agent was first decided under (SPEC §14).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct AgentEntityRow {
    pub agent_id: String,
    pub entity_id: String,
    pub seq: i64,
}

/// `authorization_state`: one row per authorized intent (SPEC §11).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuthorizationRow {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    #[sqlx(flatten)]
    pub state: AuthorizationColumns,
    /// The last event that changed it.
    pub seq: i64,
}

impl AuthorizationRow {
    /// Reads a row selected with `AUTHORIZATION_COLUMNS`, by position (replay compares
    /// every live row; sqlx's `FromRow` looks each of the 19 columns up by name).
    pub fn by_position(r: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        debug_assert_selected_first(
            r,
            super::settle::AUTHORIZATION_COLUMNS,
            "AuthorizationRow::by_position",
        );
        Ok(AuthorizationRow {
            intent_id: r.try_get(0)?,
            agent_id: r.try_get(1)?,
            entity_id: r.try_get(2)?,
            state: AuthorizationColumns {
                authorized: r.try_get(3)?,
                captured: r.try_get(4)?,
                voided: r.try_get(5)?,
                refunded: r.try_get(6)?,
                restored: r.try_get(7)?,
                expired_amount: r.try_get(8)?,
                is_final: r.try_get(9)?,
                expired: r.try_get(10)?,
                expires_at: r.try_get(11)?,
                currency: r.try_get(12)?,
                tz: r.try_get(13)?,
                day: r.try_get(14)?,
                month: r.try_get(15)?,
                fx_rate: r.try_get(17)?,
                usage_currency: r.try_get(18)?,
            },
            seq: r.try_get(16)?,
        })
    }
}

/// `AuthorizationState` as columns (sqlx maps by these names).
pub type AuthorizationColumns = super::authorization::AuthorizationState;

/// `spend_record`: what one intent holds against its policy's limits (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SpendRecordRow {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    pub accepted_at: DateTime<Utc>,
    pub category: String,
    pub beneficiary_id: String,
    pub country: Option<String>,
    pub purpose: String,
    pub currency: String,
    /// Reserved while waiting; outstanding + captured − restored once authorized.
    pub amount: Decimal,
    /// Count limits count it.
    pub counts: bool,
    /// The last event that changed it.
    pub seq: i64,
}

impl SpendRecordRow {
    /// A digest of the columns no lifecycle event changes (all but `amount`, `counts`
    /// and `seq`), length-prefixed; `accepted_at` to the nanosecond.
    pub fn fixed_digest(&self) -> Digest {
        let at = (
            self.accepted_at.timestamp(),
            self.accepted_at.timestamp_subsec_nanos(),
        );
        let country: (&[u8], &[u8]) = match &self.country {
            Some(c) => (b"1", c.as_bytes()),
            None => (b"0", b""),
        };
        digest_of(&[
            self.intent_id.as_bytes(),
            self.agent_id.as_bytes(),
            self.entity_id.as_bytes(),
            &at.0.to_be_bytes(),
            &at.1.to_be_bytes(),
            self.category.as_bytes(),
            self.beneficiary_id.as_bytes(),
            country.0,
            country.1,
            self.purpose.as_bytes(),
            self.currency.as_bytes(),
        ])
    }
}

/// `settlement`: one row per applied settlementId (idempotency), with the outcome
/// message it published.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SettlementRow {
    pub settlement_id: String,
    pub intent_id: String,
    pub agent_id: String,
    pub fingerprint: Vec<u8>,
    pub seq: i64,
    pub message: String,
}

impl SettlementRow {
    /// A digest of the columns (length-prefixed), as [`DecisionRow::digest`].
    pub fn digest(&self) -> Digest {
        digest_of(&[
            self.settlement_id.as_bytes(),
            self.intent_id.as_bytes(),
            self.agent_id.as_bytes(),
            &self.fingerprint,
            &self.seq.to_be_bytes(),
            self.message.as_bytes(),
        ])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct VoteRow {
    pub intent_id: String,
    pub approver_id: String,
    pub vote: String,
    pub signed_at: DateTime<Utc>,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutcomeRow {
    pub intent_id: String,
    pub agent_id: String,
    pub outcome: String,
    pub closed_at: DateTime<Utc>,
    pub seq: i64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Deserialize)]
pub struct KillRow {
    pub scope: String,
    pub active: bool,
    pub actor: String,
    pub reason: String,
    pub changed_at: DateTime<Utc>,
    pub seq: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyRow {
    pub sha256: String,
    pub name: String,
    pub version: String,
    pub canonical: String,
    pub seq: i64,
}

/// `config_version`: every registry and bindings version ever activated (SPEC §14, §16).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConfigRow {
    /// [`ConfigKind::as_str`](super::events::ConfigKind::as_str).
    pub kind: String,
    pub version: i64,
    pub sha256: String,
    pub canonical: String,
    pub actor: String,
    pub seq: i64,
}

/// What appending one event produced (for the caller's result).
#[derive(Debug, Clone)]
pub struct Appended {
    pub recorded: Recorded,
    /// The decision message, when the event was a decision, and its text as published.
    pub decision: Option<(DecisionMessage, String)>,
    /// The outcome message, when the event closed an intent.
    pub outcome: Option<OutcomeMessage>,
}

/// Everything one transaction appends and changes, written by [`WriteSet::flush`].
#[derive(Default)]
pub struct WriteSet {
    pub heads: Heads,
    touched_chains: Vec<String>,
    seqs: VecDeque<i64>,
    pub events: Vec<EventRow>,
    pub decisions: Vec<DecisionRow>,
    /// (committed delta, reserved delta, seq of the last event changing it) per window row.
    pub usage: BTreeMap<UsageKey, (Decimal, Decimal, i64)>,
    pub pending_insert: Vec<PendingRow>,
    /// (intent, seq of the event closing it)
    pub pending_delete: Vec<(String, i64)>,
    pub votes: Vec<VoteRow>,
    pub outcomes: Vec<OutcomeRow>,
    pub kills: Vec<KillRow>,
    pub policies: Vec<PolicyRow>,
    pub configs: Vec<ConfigRow>,
    /// Last state per intent (upserted).
    pub authorizations: BTreeMap<String, AuthorizationRow>,
    pub settlements: Vec<SettlementRow>,
    pub fx_rates: Vec<FxRateRow>,
    pub agent_entities: Vec<AgentEntityRow>,
    pub records: Vec<SpendRecordRow>,
    /// intent → (amount, counts, seq), last wins.
    pub record_holds: BTreeMap<String, (Decimal, bool, i64)>,
    /// (seq, topic, key, payload)
    pub outbox: Vec<(i64, String, String, String)>,
}

/// Takes the advisory locks of `chains` (sorted by key, so never in opposite orders),
/// after the kill-switch lock in shared mode when `share_kill`. Returns the
/// transaction's time (`now()`), the acceptance time of everything it records.
pub async fn lock_chains(
    conn: &mut PgConnection,
    chains: &[String],
    extra_exclusive: Option<i64>,
    share_kill: bool,
) -> sqlx::Result<DateTime<Utc>> {
    let mut keys: Vec<i64> = chains.iter().map(|c| chain::lock_key(c)).collect();
    keys.sort_unstable();
    keys.dedup();
    if let Some(k) = extra_exclusive {
        // The kill-switch key always comes first: every transaction takes it before any
        // chain lock (shared or exclusive), so lock order is global.
        keys.insert(0, k);
    }
    let shared = share_kill.then(chain::kill_switch_lock_key);
    sqlx::query_scalar("SELECT now() FROM (SELECT ledger_lock($1, $2)) l")
        .bind(&keys)
        .bind(shared)
        .fetch_one(conn)
        .await
}

/// Where a Kafka message came from, for the idempotency of what is recorded about it
/// (`intake_record`): `None` for CLI / API / sweeper origins.
pub struct IntakeKey<'a> {
    pub source_topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub kind: &'a str,
}

impl<'a> IntakeKey<'a> {
    pub fn of(origin: &Origin, source_topic: &'a str, kind: &'a str) -> Option<IntakeKey<'a>> {
        match (origin.source.as_str(), origin.partition, origin.offset) {
            ("kafka", Some(partition), Some(offset)) => Some(IntakeKey {
                source_topic,
                partition,
                offset,
                kind,
            }),
            _ => None,
        }
    }

    /// Whether two keys name the same Kafka message and kind.
    pub fn same_message(&self, other: &IntakeKey<'_>) -> bool {
        (self.source_topic, self.partition, self.offset, self.kind)
            == (
                other.source_topic,
                other.partition,
                other.offset,
                other.kind,
            )
    }

    /// The seq recorded for this message before, if any (call under the chain lock).
    pub async fn recorded(&self, conn: &mut PgConnection) -> sqlx::Result<Option<i64>> {
        sqlx::query_scalar(
            "SELECT seq FROM intake_record WHERE source_topic = $1 AND source_partition = $2
               AND source_offset = $3 AND event_type = $4",
        )
        .bind(self.source_topic)
        .bind(self.partition)
        .bind(self.offset)
        .bind(self.kind)
        .fetch_optional(conn)
        .await
    }

    pub async fn record(&self, conn: &mut PgConnection, seq: i64) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO intake_record (source_topic, source_partition, source_offset, event_type, seq)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(self.source_topic)
        .bind(self.partition)
        .bind(self.offset)
        .bind(self.kind)
        .bind(seq)
        .execute(conn)
        .await?;
        Ok(())
    }
}

impl WriteSet {
    /// Loads the heads of chains the caller has locked.
    pub async fn load_heads(
        &mut self,
        conn: &mut PgConnection,
        chains: &[String],
    ) -> sqlx::Result<()> {
        let rows = sqlx::query(
            "SELECT chain_id, chain_pos, hash FROM chain_head WHERE chain_id = ANY($1)",
        )
        .bind(chains)
        .fetch_all(conn)
        .await?;
        for r in rows {
            let hash: Vec<u8> = r.try_get("hash")?;
            let mut h: Hash = chain::GENESIS;
            if hash.len() == h.len() {
                h.copy_from_slice(&hash);
            }
            self.heads
                .insert(r.try_get("chain_id")?, r.try_get("chain_pos")?, h);
        }
        Ok(())
    }

    /// Whether a reserved sequence number is left for the next event.
    pub fn has_reserved_seq(&self) -> bool {
        !self.seqs.is_empty()
    }

    /// Allocates `n` ledger sequence numbers (ascending).
    pub async fn reserve_seqs(&mut self, conn: &mut PgConnection, n: usize) -> sqlx::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let seqs: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval('ledger_event_seq_seq') FROM generate_series(1, $1)",
        )
        .bind(i64::try_from(n).unwrap_or(i64::MAX))
        .fetch_all(conn)
        .await?;
        self.add_reserved_seqs(seqs);
        Ok(())
    }

    /// Takes sequence numbers the caller allocated (`nextval` under its locks).
    pub fn add_reserved_seqs(&mut self, mut seqs: Vec<i64>) {
        seqs.sort_unstable();
        self.seqs.extend(seqs);
    }

    /// How many reserved sequence numbers are left.
    pub fn reserved_seqs(&self) -> usize {
        self.seqs.len()
    }

    /// Appends one staged event (its chain locked by the caller), writes its delta
    /// here and folds it into `snapshot` too, so what follows in the same transaction
    /// sees it.
    pub fn record(
        &mut self,
        snapshot: &mut Projections,
        staged: &Staged,
        recorded_at: DateTime<Utc>,
        origin: &Origin,
    ) -> Result<Appended, LedgerError> {
        let seq = self
            .seqs
            .pop_front()
            .ok_or_else(|| LedgerError::Bug("no ledger sequence reserved for this event".into()))?;
        let chain_id = staged.chain_id.as_str();
        let (pos, prev) = self.heads.next(chain_id);
        let mut row = EventRow {
            seq,
            chain_id: chain_id.to_string(),
            chain_pos: pos,
            event_type: staged.event.kind().as_str().to_string(),
            recorded_at: chain::to_micros(recorded_at),
            actor: staged.actor.clone(),
            resource: staged.resource.clone(),
            origin: canonical(origin),
            payload: staged.event.payload_json(),
            prev_hash: prev,
            hash: chain::GENESIS,
        };
        // The one door into the append-only table (SPEC §14): whatever an event was built
        // from, no card number is hashed into the chain in clear, where it could never be
        // removed. Inputs were masked by their parsers already; this catches the rest
        // (operators' reasons, files, callers of the library).
        for text in [&mut row.actor, &mut row.resource] {
            crate::privacy::mask_in_place(text);
            // PostgreSQL text cannot hold NUL; ids are refused with it at parse time.
            if text.contains('\0') {
                *text = text.replace('\0', "\u{FFFD}");
            }
        }
        crate::privacy::mask_json_in_place(&mut row.origin);
        crate::privacy::mask_json_in_place(&mut row.payload);
        row.hash = row.compute_hash();
        self.heads.advance(&row);
        if !self.touched_chains.iter().any(|c| c == chain_id) {
            self.touched_chains.push(chain_id.to_string());
        }
        let recorded = Recorded {
            seq,
            hash: row.hash,
            recorded_at: row.recorded_at,
        };
        self.events.push(row);
        let mut appended = Appended {
            recorded,
            decision: None,
            outcome: None,
        };
        let mut inconsistent = None;
        machine::delta(&recorded, &staged.event, &mut |c| {
            if let Some(p) = snapshot.apply_change(&c) {
                inconsistent.get_or_insert(p);
            }
            self.apply(c, seq, &mut appended);
        })
        .map_err(|e| LedgerError::Bug(e.to_string()))?;
        // The steps only stage events consistent with the snapshot they were given.
        if let Some(p) = inconsistent {
            return Err(LedgerError::Bug(format!(
                "a step staged an inconsistent event: {p}"
            )));
        }
        Ok(appended)
    }

    /// Queues one projection change (and the message it publishes) for `flush`; a
    /// decision's or outcome's message goes to the caller through `appended`. `seq` is
    /// the event the change folds from: the database refuses a projection change whose
    /// event this transaction did not append (migration `projection_functions`).
    fn apply(&mut self, mut change: Change, seq: i64, appended: &mut Appended) {
        // Messages published and stored as projections: masked like the events.
        match &mut change {
            Change::Outcome { row, .. } => crate::privacy::mask_json_in_place(&mut row.message),
            Change::Lifecycle { text, .. } => crate::privacy::mask_json_in_place(text),
            Change::Decision { row, .. } => crate::privacy::mask_json_in_place(&mut row.message),
            Change::Settlement(row) => crate::privacy::mask_json_in_place(&mut row.message),
            Change::Kill(row) => {
                crate::privacy::mask_in_place(&mut row.actor);
                crate::privacy::mask_in_place(&mut row.reason);
            }
            _ => {}
        }
        match change {
            Change::Usage {
                key,
                committed,
                reserved,
            } => {
                let e = self
                    .usage
                    .entry(key)
                    .or_insert((Decimal::ZERO, Decimal::ZERO, seq));
                e.0 += committed;
                e.1 += reserved;
                e.2 = seq;
            }
            Change::PendingOpen(p) => self.pending_insert.push(p),
            Change::PendingClose(id) => self.pending_delete.push((id, seq)),
            Change::Vote(v) => self.votes.push(v),
            Change::Outcome { row: o, message } => {
                appended.outcome = Some(*message);
                self.outbox.push((
                    o.seq,
                    DECISIONS_TOPIC.to_string(),
                    o.agent_id.clone(),
                    o.message.clone(),
                ));
                self.outcomes.push(*o);
            }
            Change::Kill(k) => self.kills.push(k),
            Change::Policy(p) => self.policies.push(p),
            Change::Config(c) => self.configs.push(c),
            Change::Authorization(a) => {
                self.authorizations.insert(a.intent_id.clone(), *a);
            }
            Change::Settlement(row) => self.settlements.push(row),
            Change::FxRate(row) => self.fx_rates.push(row),
            Change::AgentEntity(row) => self.agent_entities.push(row),
            Change::Record(r) => self.records.push(*r),
            Change::RecordHolds {
                intent_id,
                amount,
                counts,
                seq,
            } => {
                // A record made in this same transaction is written with its holdings.
                if let Some(r) = self.records.iter_mut().find(|r| r.intent_id == intent_id) {
                    r.amount = amount;
                    r.counts = counts;
                    r.seq = seq;
                } else {
                    self.record_holds.insert(intent_id, (amount, counts, seq));
                }
            }
            Change::Lifecycle {
                seq,
                agent_id,
                message,
                text,
            } => {
                appended.outcome = Some(*message);
                self.outbox
                    .push((seq, DECISIONS_TOPIC.to_string(), agent_id, text));
            }
            Change::Decision { row: d, message } => {
                appended.decision = Some((*message, d.message.clone()));
                self.outbox.push((
                    d.seq,
                    DECISIONS_TOPIC.to_string(),
                    d.agent_id.clone(),
                    d.message.clone(),
                ));
                self.decisions.push(*d);
            }
        }
    }

    /// Writes everything (the caller commits).
    pub async fn flush(self, conn: &mut PgConnection) -> sqlx::Result<()> {
        self.flush_leasing(conn, None).await.map(|_| ())
    }

    /// Writes everything; outbox rows whose key has no row left in the outbox are leased
    /// to `direct` (the direct publisher, `ledger::outbox`) and returned, to be handed
    /// over once the caller has committed.
    pub async fn flush_leasing(
        self,
        conn: &mut PgConnection,
        direct: Option<&str>,
    ) -> sqlx::Result<Vec<super::OutboxRow>> {
        // One statement for the events, the projections and (unless rows are leased to
        // the direct publisher, which needs them back) the outbox.
        let mut calls = self.event_calls();
        self.projection_calls(&mut calls);
        if direct.is_none() {
            self.outbox_call(&mut calls);
            calls.execute(conn).await?;
            return Ok(Vec::new());
        }
        calls.execute(&mut *conn).await?;
        self.write_outbox(conn, direct).await
    }

    /// The events' append (`ledger_append_events`): the first call of the write, so
    /// that every projection function after it finds the events it folds from.
    fn event_calls(&self) -> Calls {
        let mut c = Calls::default();
        let e = &self.events;
        if e.is_empty() {
            return c;
        }
        c.call("ledger_append_events")
            .column(e.iter().map(|r| r.seq), "bigint[]")
            .column(e.iter().map(|r| r.chain_id.as_str()), "text[]")
            .column(e.iter().map(|r| r.chain_pos), "bigint[]")
            .column(e.iter().map(|r| r.event_type.as_str()), "text[]")
            .column(e.iter().map(|r| r.recorded_at), "timestamptz[]")
            .column(e.iter().map(|r| r.actor.as_str()), "text[]")
            .column(e.iter().map(|r| r.resource.as_str()), "text[]")
            .column(e.iter().map(|r| r.origin.as_str()), "text[]")
            .column(e.iter().map(|r| r.payload.as_str()), "text[]")
            .column(e.iter().map(|r| r.prev_hash.to_vec()), "bytea[]")
            .column(e.iter().map(|r| r.hash.to_vec()), "bytea[]");
        c
    }

    /// The outbox rows for the claim round (`ledger_write_outbox`), the last call.
    fn outbox_call(&self, c: &mut Calls) {
        let o = &self.outbox;
        if o.is_empty() {
            return;
        }
        c.call("ledger_write_outbox")
            .column(o.iter().map(|r| r.0), "bigint[]")
            .column(o.iter().map(|r| r.1.as_str()), "text[]")
            .column(o.iter().map(|r| r.2.as_str()), "text[]")
            .column(o.iter().map(|r| r.3.as_str()), "text[]");
    }

    /// Every projection write of the set, in the order they must apply.
    fn projection_calls(&self, c: &mut Calls) {
        if !self.events.is_empty() {
            let mut ids = Vec::new();
            let mut pos = Vec::new();
            let mut hashes = Vec::new();
            let mut seqs = Vec::new();
            for chain in &self.touched_chains {
                if let Some(last) = self.events.iter().rev().find(|r| &r.chain_id == chain) {
                    ids.push(chain.as_str());
                    pos.push(last.chain_pos);
                    hashes.push(last.hash.to_vec());
                    seqs.push(last.seq);
                }
            }
            c.call("ledger_write_chain_heads")
                .arg(ids, "text[]")
                .arg(pos, "bigint[]")
                .arg(hashes, "bytea[]")
                .arg(seqs, "bigint[]");
        }
        if !self.decisions.is_empty() {
            let d = &self.decisions;
            c.call("ledger_write_decisions")
                .column(d.iter().map(|r| r.intent_id.as_str()), "text[]")
                .column(d.iter().map(|r| r.agent_id.as_str()), "text[]")
                .column(d.iter().map(|r| r.entity_id.as_str()), "text[]")
                .column(d.iter().map(|r| r.seq), "bigint[]")
                .column(d.iter().map(|r| r.fingerprint.clone()), "bytea[]")
                .column(d.iter().map(|r| r.decision_hash.clone()), "bytea[]")
                .column(d.iter().map(|r| r.effect.as_str()), "text[]")
                .column(d.iter().map(|r| r.message.as_str()), "text[]");
        }
        // Increases are upserts; decreases (outcomes) touch rows that exist, and go
        // through UPDATE because an INSERT's CHECK constraints see the negative delta.
        let (grow, shrink): (Vec<_>, Vec<_>) = self
            .usage
            .iter()
            .filter(|(_, (c, r, _))| !c.is_zero() || !r.is_zero())
            .partition(|(_, (c, r, _))| !c.is_sign_negative() && !r.is_sign_negative());
        for (rows, function) in [(grow, "ledger_grow_usage"), (shrink, "ledger_shrink_usage")] {
            if rows.is_empty() {
                continue;
            }
            c.call(function)
                .column(rows.iter().map(|(k, _)| k.agent_id.as_str()), "text[]")
                .column(rows.iter().map(|(k, _)| k.kind.as_str()), "text[]")
                .column(rows.iter().map(|(k, _)| k.tz.as_str()), "text[]")
                .column(rows.iter().map(|(k, _)| k.currency.as_str()), "text[]")
                .column(rows.iter().map(|(k, _)| k.start), "date[]")
                .column(rows.iter().map(|(_, v)| v.0), "numeric[]")
                .column(rows.iter().map(|(_, v)| v.1), "numeric[]")
                .column(rows.iter().map(|(_, v)| v.2), "bigint[]");
        }
        if !self.pending_insert.is_empty() {
            let p = &self.pending_insert;
            c.call("ledger_open_pending")
                .column(p.iter().map(|r| r.intent_id.as_str()), "text[]")
                .column(p.iter().map(|r| r.agent_id.as_str()), "text[]")
                .column(p.iter().map(|r| r.entity_id.as_str()), "text[]")
                .column(p.iter().map(|r| r.effect.as_str()), "text[]")
                .column(p.iter().map(|r| r.approvals_required), "int[]")
                .column(p.iter().map(|r| r.amount), "numeric[]")
                .column(p.iter().map(|r| r.currency.as_str()), "text[]")
                .column(p.iter().map(|r| r.tz.as_str()), "text[]")
                .column(p.iter().map(|r| r.day), "date[]")
                .column(p.iter().map(|r| r.month), "date[]")
                .column(p.iter().map(|r| r.decided_seq), "bigint[]")
                .column(p.iter().map(|r| r.expires_at), "timestamptz[]")
                .column(p.iter().map(|r| r.authorization_ttl_secs), "bigint[]")
                .column(p.iter().map(|r| r.fx_rate), "numeric[]")
                .column(p.iter().map(|r| r.intent_amount), "numeric[]")
                .column(p.iter().map(|r| r.intent_currency.as_deref()), "text[]");
        }
        if !self.pending_delete.is_empty() {
            let d = &self.pending_delete;
            c.call("ledger_close_pending")
                .column(d.iter().map(|(id, _)| id.as_str()), "text[]")
                .column(d.iter().map(|(_, seq)| *seq), "bigint[]");
        }
        if !self.votes.is_empty() {
            let v = &self.votes;
            c.call("ledger_write_votes")
                .column(v.iter().map(|r| r.intent_id.as_str()), "text[]")
                .column(v.iter().map(|r| r.approver_id.as_str()), "text[]")
                .column(v.iter().map(|r| r.vote.as_str()), "text[]")
                .column(v.iter().map(|r| r.signed_at), "timestamptz[]")
                .column(v.iter().map(|r| r.seq), "bigint[]");
        }
        if !self.outcomes.is_empty() {
            let o = &self.outcomes;
            c.call("ledger_write_outcomes")
                .column(o.iter().map(|r| r.intent_id.as_str()), "text[]")
                .column(o.iter().map(|r| r.agent_id.as_str()), "text[]")
                .column(o.iter().map(|r| r.outcome.as_str()), "text[]")
                .column(o.iter().map(|r| r.closed_at), "timestamptz[]")
                .column(o.iter().map(|r| r.seq), "bigint[]")
                .column(o.iter().map(|r| r.message.as_str()), "text[]");
        }
        for k in &self.kills {
            c.call("ledger_set_kill_switch")
                .arg(&k.scope, "text")
                .arg(k.active, "bool")
                .arg(&k.actor, "text")
                .arg(&k.reason, "text")
                .arg(k.changed_at, "timestamptz")
                .arg(k.seq, "bigint");
        }
        for p in &self.policies {
            c.call("ledger_write_policy_version")
                .arg(&p.sha256, "text")
                .arg(&p.name, "text")
                .arg(&p.version, "text")
                .arg(&p.canonical, "text")
                .arg(p.seq, "bigint");
        }
        for v in &self.configs {
            c.call("ledger_write_config_version")
                .arg(&v.kind, "text")
                .arg(v.version, "bigint")
                .arg(&v.sha256, "text")
                .arg(&v.canonical, "text")
                .arg(&v.actor, "text")
                .arg(v.seq, "bigint");
        }
        if !self.authorizations.is_empty() {
            let a: Vec<&AuthorizationRow> = self.authorizations.values().collect();
            c.call("ledger_write_authorizations")
                .column(a.iter().map(|r| r.intent_id.as_str()), "text[]")
                .column(a.iter().map(|r| r.agent_id.as_str()), "text[]")
                .column(a.iter().map(|r| r.entity_id.as_str()), "text[]")
                .column(a.iter().map(|r| r.state.authorized), "numeric[]")
                .column(a.iter().map(|r| r.state.captured), "numeric[]")
                .column(a.iter().map(|r| r.state.voided), "numeric[]")
                .column(a.iter().map(|r| r.state.refunded), "numeric[]")
                .column(a.iter().map(|r| r.state.restored), "numeric[]")
                .column(a.iter().map(|r| r.state.expired_amount), "numeric[]")
                .column(a.iter().map(|r| r.state.is_final), "bool[]")
                .column(a.iter().map(|r| r.state.expired), "bool[]")
                .column(a.iter().map(|r| r.state.expires_at), "timestamptz[]")
                .column(a.iter().map(|r| r.state.currency.as_str()), "text[]")
                .column(a.iter().map(|r| r.state.tz.as_str()), "text[]")
                .column(a.iter().map(|r| r.state.day), "date[]")
                .column(a.iter().map(|r| r.state.month), "date[]")
                .column(a.iter().map(|r| r.seq), "bigint[]")
                .column(a.iter().map(|r| r.state.fx_rate), "numeric[]")
                .column(
                    a.iter().map(|r| r.state.usage_currency.as_deref()),
                    "text[]",
                );
        }
        if !self.settlements.is_empty() {
            let st = &self.settlements;
            c.call("ledger_write_settlements")
                .column(st.iter().map(|r| r.settlement_id.as_str()), "text[]")
                .column(st.iter().map(|r| r.intent_id.as_str()), "text[]")
                .column(st.iter().map(|r| r.agent_id.as_str()), "text[]")
                .column(st.iter().map(|r| r.fingerprint.clone()), "bytea[]")
                .column(st.iter().map(|r| r.seq), "bigint[]")
                .column(st.iter().map(|r| r.message.as_str()), "text[]");
        }
        if !self.agent_entities.is_empty() {
            let a = &self.agent_entities;
            // The first binding wins, in the batch as in the table (the fold's rule).
            c.call("ledger_bind_agents")
                .column(a.iter().map(|r| r.agent_id.as_str()), "text[]")
                .column(a.iter().map(|r| r.entity_id.as_str()), "text[]")
                .column(a.iter().map(|r| r.seq), "bigint[]");
        }
        for f in &self.fx_rates {
            c.call("ledger_set_fx_rate")
                .arg(&f.pair, "text")
                .arg(f.rate, "numeric")
                .arg(f.set_at, "timestamptz")
                .arg(f.seq, "bigint");
        }
        if !self.records.is_empty() {
            let r = &self.records;
            c.call("ledger_write_spend_records")
                .column(r.iter().map(|x| x.intent_id.as_str()), "text[]")
                .column(r.iter().map(|x| x.agent_id.as_str()), "text[]")
                .column(r.iter().map(|x| x.entity_id.as_str()), "text[]")
                .column(r.iter().map(|x| x.accepted_at), "timestamptz[]")
                .column(r.iter().map(|x| x.category.as_str()), "text[]")
                .column(r.iter().map(|x| x.beneficiary_id.as_str()), "text[]")
                .column(r.iter().map(|x| x.country.as_deref()), "text[]")
                .column(r.iter().map(|x| x.purpose.as_str()), "text[]")
                .column(r.iter().map(|x| x.currency.as_str()), "text[]")
                .column(r.iter().map(|x| x.amount), "numeric[]")
                .column(r.iter().map(|x| x.counts), "bool[]")
                .column(r.iter().map(|x| x.seq), "bigint[]");
        }
        if !self.record_holds.is_empty() {
            let h = &self.record_holds;
            c.call("ledger_hold_spend_records")
                .column(h.keys().map(String::as_str), "text[]")
                .column(h.values().map(|v| v.0), "numeric[]")
                .column(h.values().map(|v| v.1), "bool[]")
                .column(h.values().map(|v| v.2), "bigint[]");
        }
    }

    /// Inserts the outbox rows; returns those leased to `direct`.
    async fn write_outbox(
        &self,
        conn: &mut PgConnection,
        direct: Option<&str>,
    ) -> sqlx::Result<Vec<super::OutboxRow>> {
        if self.outbox.is_empty() {
            return Ok(Vec::new());
        }
        let o = &self.outbox;
        // The lease is taken only for a key with no row left in the outbox (an older row
        // of this agent still unpublished goes first, through the claim round); rows of
        // this same statement do not see each other, so one agent's rows of one
        // transaction are leased together and handed over together, in seq order.
        // Planned per call: a generic plan made on an empty outbox would scan it.
        let written: Vec<WrittenOutboxRow> = sqlx::query_as(
            "INSERT INTO outbox (seq, topic, msg_key, payload, claimed_by, claimed_until)
             SELECT n.seq, n.topic, n.msg_key, n.payload, d.claimer, d.until
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
                  AS n(seq, topic, msg_key, payload)
             LEFT JOIN LATERAL (
                 SELECT $5::text AS claimer, now() + make_interval(secs => $6) AS until
                 WHERE $5::text IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.msg_key = n.msg_key)
             ) d ON true
             RETURNING claimed_by IS NOT NULL AS leased, id, seq, topic, msg_key AS key, payload, created_at",
        )
        .bind(o.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.1.as_str()).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
        .bind(o.iter().map(|r| r.3.as_str()).collect::<Vec<_>>())
        .bind(direct)
        .bind(super::OUTBOX_LEASE_SECONDS as f64)
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?;
        Ok(written
            .into_iter()
            .filter_map(|w| w.leased.then_some(w.row))
            .collect())
    }
}

/// An outbox row as written, and whether it was leased to the direct publisher.
#[derive(sqlx::FromRow)]
struct WrittenOutboxRow {
    leased: bool,
    #[sqlx(flatten)]
    row: super::OutboxRow,
}

/// A write set's functions sent as one statement, `SELECT ledger_append_events(…),
/// f(…), g(…), …, ledger_write_outbox(…)`:
/// one round trip to PostgreSQL instead of one per function (on a busy 2-core host a
/// round trip alone cost 1-1.5 ms, and a deciding transaction made about eight:
/// docs/benchmarks.md, "One round trip for the projection writes"). PostgreSQL
/// evaluates a target list left to right, and every function is VOLATILE (each of its
/// statements sees what the calls before it wrote), so the calls apply in the order
/// they are added, as the separate statements did. Each function still checks that its
/// rows come from events this transaction appended (`ledger_assert_appended`).
#[derive(Default)]
struct Calls {
    sql: String,
    args: sqlx::postgres::PgArguments,
    /// Placeholders used so far (`$1` is the first).
    placeholders: usize,
    /// The argument list of the last call is still open.
    open: bool,
    encode_error: Option<sqlx::error::BoxDynError>,
}

impl Calls {
    /// Starts a call of `function` (a ledger function's name, never input).
    fn call(&mut self, function: &'static str) -> &mut Self {
        self.close();
        self.sql
            .push_str(if self.sql.is_empty() { "SELECT " } else { ", " });
        self.sql.push_str(function);
        self.sql.push('(');
        self.open = true;
        self
    }

    /// Adds an argument to the open call, cast to `sql_type` as the function declares it.
    fn arg<'q, T>(&mut self, value: T, sql_type: &'static str) -> &mut Self
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        use sqlx::Arguments as _;
        assert!(self.open, "an argument outside a call");
        if !self.sql.ends_with('(') {
            self.sql.push_str(", ");
        }
        self.placeholders += 1;
        // Writing into a String cannot fail.
        let _ = std::fmt::Write::write_fmt(
            &mut self.sql,
            format_args!("${}::{sql_type}", self.placeholders),
        );
        if let Err(e) = self.args.add(value) {
            self.encode_error.get_or_insert(e);
        }
        self
    }

    /// Adds one column of a batch as an array argument (`unnest`ed by the function).
    fn column<'q, T>(
        &mut self,
        values: impl Iterator<Item = T>,
        sql_type: &'static str,
    ) -> &mut Self
    where
        Vec<T>: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
    {
        self.arg(values.collect::<Vec<T>>(), sql_type)
    }

    fn close(&mut self) {
        if self.open {
            self.sql.push(')');
            self.open = false;
        }
    }

    async fn execute(mut self, conn: &mut PgConnection) -> sqlx::Result<()> {
        self.close();
        if let Some(e) = self.encode_error {
            return Err(sqlx::Error::Encode(e));
        }
        if self.sql.is_empty() {
            return Ok(());
        }
        // Only `call`'s static function names, placeholders and casts: no input.
        sqlx::query_with(sqlx::AssertSqlSafe(self.sql), self.args)
            .execute(conn)
            .await
            .map(|_| ())
    }
}
