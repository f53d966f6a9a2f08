//! The read side of the ledger: every query the HTTP API and the reports run on the
//! ledger's tables. Nothing outside `ledger/` writes SQL against them; callers get typed
//! rows ([`sqlx::FromRow`]) and [`LedgerError`]s.
//!
//! ```text
//! ledger.reader()                          // a LedgerReader over the ledger's pool
//! LedgerReader::connect(url, max)          // reports: no migration, nothing written
//! reader.ping()                            // readiness probe (`SELECT 1`)
//! reader.events_before(until, map)         // ledger_event rows, in seq order
//! reader.event_payload(seq) / refused_votes(intent_id)
//! reader.latest_entity_of(agent_id) / usage_totals(agent, windows, tz, currency)
//! reader.pending_approvals(limit) / pending_approvals_for(approver, entities, limit)
//! reader.fx_rates()                        // latest rate of each pair (SPEC §12.3)
//! reader.verify_chains() / replay(verify)  // in one read-only snapshot
//! ```

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::{Ledger, LedgerError, chain, replay};
use crate::window::Windows;

/// Rows fetched per round trip when streaming the events table.
pub const EVENT_PAGE_ROWS: i64 = 5_000;

/// Read-only access to the ledger's tables. Cheap to clone (it shares the pool).
#[derive(Debug, Clone)]
pub struct LedgerReader {
    pub(super) pool: PgPool,
}

/// One row of `ledger_event`, without its chain columns; `origin` and `payload` are the
/// stored JSON text.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    pub actor: String,
    pub resource: String,
    pub origin: String,
    pub payload: String,
}

/// A `vote_refused` event of one intent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefusedVoteRow {
    /// The event's JSON payload.
    pub payload: String,
    pub recorded_at: DateTime<Utc>,
}

/// One row of `usage_window`: `kind` is `D` (day) or `M` (month).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageWindowRow {
    pub kind: String,
    pub committed: Decimal,
    pub reserved: Decimal,
}

/// An agent's committed and reserved amounts in the day and month windows of an instant
/// (zero where the window has no row yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub daily_committed: Decimal,
    pub daily_reserved: Decimal,
    pub monthly_committed: Decimal,
    pub monthly_reserved: Decimal,
}

/// A pending approval with its decision message and the approvals received so far.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PendingApprovalRow {
    pub intent_id: String,
    pub agent_id: String,
    pub entity_id: String,
    /// The decision's effect as stored (`REQUIRE_HITL`, ...).
    pub effect: String,
    pub approvals_required: i32,
    pub amount: Decimal,
    pub currency: String,
    pub expires_at: DateTime<Utc>,
    /// The decision message (JSON text).
    pub message: String,
    /// `APPROVE` votes recorded.
    pub received: i64,
    /// The accepted votes so far, a JSON array of
    /// `{approverId, vote, signedAt, ledgerSeq}` in ledger order.
    pub votes: String,
}

/// The columns of [`PendingApprovalRow`], read from `pending_approval p JOIN decision d`.
const PENDING_APPROVAL_SELECT: &str =
    "SELECT p.intent_id, p.agent_id, p.entity_id, p.effect, p.approvals_required,
            p.amount, p.currency, p.expires_at, d.message,
            (SELECT count(*) FROM approval_vote v
              WHERE v.intent_id = p.intent_id AND v.vote = 'APPROVE') AS received,
            (SELECT coalesce(json_agg(json_build_object('approverId', v.approver_id,
                        'vote', v.vote, 'signedAt', v.signed_at, 'ledgerSeq', v.seq)
                        ORDER BY v.seq), '[]'::json)::text
               FROM approval_vote v WHERE v.intent_id = p.intent_id) AS votes
       FROM pending_approval p JOIN decision d ON d.intent_id = p.intent_id";

impl Ledger {
    /// The read side of this ledger (shares its pool and session limits).
    pub fn reader(&self) -> LedgerReader {
        LedgerReader {
            pool: self.pool.clone(),
        }
    }

    /// `spendguard replay [--verify]`: rebuilds the projections from the events and
    /// compares them with the live tables (and re-evaluates every decision with
    /// `verify`). See [`replay`].
    pub async fn replay(&self, verify: bool) -> Result<replay::ReplayReport, LedgerError> {
        replay::replay(&self.pool, self.key_wrap(), verify).await
    }

    /// Closes the ledger's connections (waits for those in use to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl LedgerReader {
    /// A reader on the ledger at `database_url`, for reports: no migration is run and
    /// nothing is written, so a role that may only read the ledger is enough.
    pub async fn connect(
        database_url: &str,
        max_connections: u32,
    ) -> Result<LedgerReader, LedgerError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(super::tls::connect_options(database_url)?)
            .await
            .map_err(super::tls::connect_error)?;
        Ok(LedgerReader { pool })
    }

    /// The database answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), LedgerError> {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Every event recorded before `until`, in sequence order, each passed through `map`
    /// as it is read ([`EVENT_PAGE_ROWS`] rows at a time, so only one page of raw rows is
    /// held).
    pub async fn events_before<T>(
        &self,
        until: DateTime<Utc>,
        mut map: impl FnMut(EventRow) -> T,
    ) -> Result<Vec<T>, LedgerError> {
        let mut out: Vec<T> = Vec::new();
        let mut after: i64 = i64::MIN;
        loop {
            let page: Vec<EventRow> = sqlx::query_as(
                "SELECT seq, event_type, recorded_at, actor, resource, origin, payload
                   FROM ledger_event
                  WHERE seq > $1 AND recorded_at < $2
                  ORDER BY seq
                  LIMIT $3",
            )
            .bind(after)
            .bind(until)
            .bind(EVENT_PAGE_ROWS)
            .fetch_all(&self.pool)
            .await?;
            let n = page.len();
            if let Some(last) = page.last() {
                after = last.seq;
            }
            out.extend(page.into_iter().map(&mut map));
            if n < EVENT_PAGE_ROWS as usize {
                return Ok(out);
            }
        }
    }

    /// The JSON payload of the event at `seq`.
    pub async fn event_payload(&self, seq: i64) -> Result<Option<String>, LedgerError> {
        Ok(
            sqlx::query_scalar("SELECT payload FROM ledger_event WHERE seq = $1")
                .bind(seq)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The `vote_refused` events of an intent, in sequence order.
    pub async fn refused_votes(&self, intent_id: &str) -> Result<Vec<RefusedVoteRow>, LedgerError> {
        Ok(sqlx::query_as(
            "SELECT payload, recorded_at FROM ledger_event
              WHERE resource = $1 AND event_type = $2 ORDER BY seq",
        )
        .bind(intent_id)
        .bind(super::events::EventKind::VoteRefused.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    /// The entity of the agent's most recent decision.
    pub async fn latest_entity_of(&self, agent_id: &str) -> Result<Option<String>, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT entity_id FROM decision WHERE agent_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(agent_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The agent's day and month usage windows in `tz` and `currency`.
    pub async fn usage_windows(
        &self,
        agent_id: &str,
        windows: Windows,
        tz: Tz,
        currency: &str,
    ) -> Result<Vec<UsageWindowRow>, LedgerError> {
        Ok(sqlx::query_as(
            "SELECT kind, committed, reserved FROM usage_window
              WHERE agent_id = $1 AND tz = $2 AND currency = $3
                AND ((kind = 'D' AND window_start = $4) OR (kind = 'M' AND window_start = $5))",
        )
        .bind(agent_id)
        .bind(tz.name())
        .bind(currency)
        .bind(windows.day)
        .bind(windows.month)
        .fetch_all(&self.pool)
        .await?)
    }

    /// [`usage_windows`](Self::usage_windows), summed into day and month totals.
    pub async fn usage_totals(
        &self,
        agent_id: &str,
        windows: Windows,
        tz: Tz,
        currency: &str,
    ) -> Result<UsageTotals, LedgerError> {
        let mut t = UsageTotals::default();
        for r in self.usage_windows(agent_id, windows, tz, currency).await? {
            if r.kind == "D" {
                t.daily_committed = r.committed;
                t.daily_reserved = r.reserved;
            } else {
                t.monthly_committed = r.committed;
                t.monthly_reserved = r.reserved;
            }
        }
        Ok(t)
    }

    /// The latest exchange rate of each currency pair (`fx_rate`), by pair.
    pub async fn fx_rates(&self) -> Result<Vec<super::store::FxRateRow>, LedgerError> {
        Ok(
            sqlx::query_as("SELECT pair, rate, set_at, seq FROM fx_rate ORDER BY pair")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Up to `limit` pending approvals, oldest decision first.
    pub async fn pending_approvals(
        &self,
        limit: usize,
    ) -> Result<Vec<PendingApprovalRow>, LedgerError> {
        let sql = format!("{PENDING_APPROVAL_SELECT} ORDER BY p.decided_seq LIMIT $1");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?)
    }

    /// Up to `limit` pending approvals an approver may still vote on, oldest first: of
    /// an entity matching one of `entity_likes` (SQL `LIKE` patterns, `\` escapes), not
    /// of the agent named like the approver (SPEC §4: no self-approval), not voted on by
    /// it already.
    pub async fn pending_approvals_for(
        &self,
        approver_id: &str,
        entity_likes: &[String],
        limit: usize,
    ) -> Result<Vec<PendingApprovalRow>, LedgerError> {
        let sql = format!(
            "{PENDING_APPROVAL_SELECT}
              WHERE p.entity_id LIKE ANY($2) AND p.agent_id <> $3
                AND NOT EXISTS (SELECT 1 FROM approval_vote v
                                 WHERE v.intent_id = p.intent_id AND v.approver_id = $3)
              ORDER BY p.decided_seq LIMIT $1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(entity_likes)
            .bind(approver_id)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The intent ids of the `limit` most recently recorded decisions, newest first
    /// (the console's list; each is then read like `GET /v1/decisions/{intentId}`).
    pub async fn recent_decision_ids(&self, limit: usize) -> Result<Vec<String>, LedgerError> {
        Ok(
            sqlx::query_scalar("SELECT intent_id FROM decision ORDER BY seq DESC LIMIT $1")
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Recomputes every hash chain in one read-only snapshot.
    pub async fn verify_chains(&self) -> Result<chain::Verifier, LedgerError> {
        replay::verify_chains(&self.pool, None).await
    }

    /// [`Ledger::replay`] through a reader.
    /// Without a KEK: personal data is not opened (counted, re-evaluated masked).
    pub async fn replay(&self, verify: bool) -> Result<replay::ReplayReport, LedgerError> {
        replay::replay(&self.pool, None, verify).await
    }
}
