//! Limit usage (SPEC §12): what every limit of a policy holds for an agent or an entity
//! now, computed exactly as deciding computes it — the same spend records, loaded by
//! [`load_limit_records`] (the decision path uses it too), summed by
//! [`Projections::limit_so_far`] — at the ledger's clock (`SELECT now()`).
//!
//! ```text
//! reader.limit_usage(policy, Some(agent), entity)  // every limit of the policy
//! reader.limit_usage(policy, None, entity)         // its entity-scoped limits only
//! reader.entity_agents(entity)                     // agents the ledger saw for an entity
//! ```

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use super::machine::Projections;
use super::query::LedgerReader;
use super::store;
use super::{Ledger, LedgerError};
use crate::policy::CompiledPolicy;
use crate::policy::limits::CompiledLimit;
use crate::policy::model::{LimitScope, WindowKind};

/// Whose limits a policy's limits are checked for: an agent of an entity (every limit),
/// or an entity alone (`agent_id: None`: only its entity-scoped limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitSubject<'a> {
    pub policy: &'a CompiledPolicy,
    pub agent_id: Option<&'a str>,
    pub entity_id: &'a str,
}

impl<'a> LimitSubject<'a> {
    /// The policy's limits that apply to this subject.
    fn limits(&self) -> impl Iterator<Item = &'a CompiledLimit> + use<'a> {
        let agent = self.agent_id.is_some();
        self.policy
            .limits()
            .iter()
            .filter(move |l| agent || l.scope == LimitScope::Entity)
    }
}

/// Loads into `snapshot` the spend records the subjects' limits look at: the agents' and
/// (for entity scopes) the entities' records accepted since the earliest window start.
/// Deciding and the usage read both load through here, so they see the same records.
pub(crate) async fn load_limit_records<'a>(
    conn: &mut sqlx::PgConnection,
    snapshot: &mut Projections,
    subjects: impl IntoIterator<Item = LimitSubject<'a>>,
    now: DateTime<Utc>,
) -> Result<(), LedgerError> {
    let mut agents: Vec<&str> = Vec::new();
    let mut entities: Vec<&str> = Vec::new();
    // Earliest window start over the subjects' limits; `Some(None)`: an all-time limit.
    let mut since: Option<Option<DateTime<Utc>>> = None;
    for s in subjects {
        for l in s.limits() {
            let from = l.span(now, s.policy.tz).from;
            since = Some(match (since, from) {
                (None, f) => f,
                (Some(Some(a)), Some(f)) => Some(a.min(f)),
                (Some(_), _) => None,
            });
            match (l.scope, s.agent_id) {
                (LimitScope::Agent, Some(agent)) => agents.push(agent),
                (LimitScope::Agent, None) => {}
                (LimitScope::Entity, _) => entities.push(s.entity_id),
            }
        }
    }
    let Some(since) = since else {
        return Ok(());
    };
    agents.sort_unstable();
    agents.dedup();
    entities.sort_unstable();
    entities.dedup();
    let sql = format!(
        "SELECT {} FROM spend_record
         WHERE (agent_id = ANY($1) OR entity_id = ANY($2))
           AND ($3::timestamptz IS NULL OR accepted_at >= $3)
           AND (counts OR amount <> 0)
         -- In time order, each record appends to its timeline (out of order, every
         -- insert would rebuild the running totals after it).
         ORDER BY accepted_at, seq",
        super::settle::SPEND_RECORD_COLUMNS
    );
    for rec in sqlx::query_as::<_, store::SpendRecordRow>(sqlx::AssertSqlSafe(sql))
        .bind(&agents)
        .bind(&entities)
        .bind(since)
        .fetch_all(&mut *conn)
        .await?
    {
        snapshot.insert_record(&rec);
    }
    Ok(())
}

/// One limit now: its window, what it allows, what is used and when it frees up.
/// Amounts are in the policy currency, at its minor unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitUsage {
    pub name: String,
    pub scope: LimitScope,
    /// The window's label (`week of 2026-11-23`, `trailing 24h`, `all time`).
    pub window: String,
    pub amount: Option<Decimal>,
    pub amount_used: Decimal,
    /// `amount − used`, never below zero; `None` without an amount limit.
    pub amount_remaining: Option<Decimal>,
    pub count: Option<u32>,
    pub count_used: u32,
    pub count_remaining: Option<u32>,
    /// Calendar windows: when the window ends (`None` for all time).
    pub resets_at: Option<DateTime<Utc>>,
    /// Trailing windows: when the earliest record counted in the window ages out
    /// (`None` when nothing counts).
    pub frees_next_at: Option<DateTime<Utc>>,
}

/// Every limit of a subject, as of the ledger's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitUsageReport {
    pub as_of: DateTime<Utc>,
    pub limits: Vec<LimitUsage>,
}

impl Ledger {
    /// [`LedgerReader::limit_usage`] over this ledger's pool.
    pub async fn limit_usage(
        &self,
        policy: &CompiledPolicy,
        agent_id: Option<&str>,
        entity_id: &str,
    ) -> Result<LimitUsageReport, LedgerError> {
        self.reader().limit_usage(policy, agent_id, entity_id).await
    }
}

impl LedgerReader {
    /// The policy's limits for an agent of an entity (`agent_id: None`: the entity's own,
    /// entity-scoped limits), at the ledger's clock, in one read-only snapshot: the
    /// numbers the next decision would start from.
    pub async fn limit_usage(
        &self,
        policy: &CompiledPolicy,
        agent_id: Option<&str>,
        entity_id: &str,
    ) -> Result<LimitUsageReport, LedgerError> {
        let subject = LimitSubject {
            policy,
            agent_id,
            entity_id,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let now = super::chain::to_micros(now);
        let mut snapshot = Projections::default();
        load_limit_records(&mut tx, &mut snapshot, [subject], now).await?;
        tx.commit().await?;
        let limits = subject
            .limits()
            .map(|l| usage_of(&snapshot, l, policy, agent_id.unwrap_or(""), entity_id, now))
            .collect();
        Ok(LimitUsageReport { as_of: now, limits })
    }

    /// Agents the ledger has spend records of under an entity (sorted).
    pub async fn entity_agents(&self, entity_id: &str) -> Result<Vec<String>, LedgerError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT agent_id FROM spend_record WHERE entity_id = $1 ORDER BY agent_id",
        )
        .bind(entity_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// One limit's usage from the loaded records (pure).
fn usage_of(
    snapshot: &Projections,
    limit: &CompiledLimit,
    policy: &CompiledPolicy,
    agent_id: &str,
    entity_id: &str,
    now: DateTime<Utc>,
) -> LimitUsage {
    let currency = policy.currency.code;
    let span = limit.span(now, policy.tz);
    let used = snapshot.limit_so_far(limit, &span, agent_id, entity_id, currency);
    let mut amount_used = used.amount;
    amount_used.rescale(policy.currency.minor_units);
    let (resets_at, frees_next_at) = match limit.window {
        WindowKind::Calendar(_) => (span.until(), None),
        WindowKind::Trailing(secs) => (
            None,
            snapshot
                .limit_earliest(limit, &span, agent_id, entity_id, currency)
                .map(|at| at + Duration::seconds(secs)),
        ),
    };
    LimitUsage {
        name: limit.name.clone(),
        scope: limit.scope,
        window: span.label.to_string(),
        amount: limit.amount,
        amount_used,
        amount_remaining: limit.amount.map(|max| {
            let mut r = (max - amount_used).max(Decimal::ZERO);
            r.rescale(policy.currency.minor_units);
            r
        }),
        count: limit.count,
        count_used: used.count,
        count_remaining: limit.count.map(|max| max.saturating_sub(used.count)),
        resets_at,
        frees_next_at,
    }
}
