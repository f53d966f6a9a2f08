//! Usage windows (SPEC §2.2): per agent, policy timezone and currency, the local calendar
//! day and month, each with committed spend (ALLOW, approved) and reservations
//! (waiting HITL / MSIG). The evaluator sees committed + reserved.

use crate::window::Windows;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageKey {
    pub agent_id: String,
    /// `D` (local day) or `M` (local month).
    pub kind: String,
    pub tz: String,
    pub currency: String,
    pub start: NaiveDate,
}

pub const DAY: &str = "D";
pub const MONTH: &str = "M";

/// The day and month window keys of an agent at an instant.
pub fn keys(
    agent_id: &str,
    tz: Tz,
    currency: &str,
    at: DateTime<Utc>,
) -> (UsageKey, UsageKey, Windows) {
    let w = Windows::containing(at, tz);
    (
        key(agent_id, DAY, tz.name(), currency, w.day),
        key(agent_id, MONTH, tz.name(), currency, w.month),
        w,
    )
}

pub fn key(agent_id: &str, kind: &str, tz: &str, currency: &str, start: NaiveDate) -> UsageKey {
    UsageKey {
        agent_id: agent_id.to_string(),
        kind: kind.to_string(),
        tz: tz.to_string(),
        currency: currency.to_string(),
        start,
    }
}

/// (committed, reserved) of window rows.
pub type UsageState = HashMap<UsageKey, (Decimal, Decimal)>;

/// Reads the given window rows (the caller holds the agents' locks).
pub async fn load(conn: &mut PgConnection, wanted: &[UsageKey]) -> sqlx::Result<UsageState> {
    let mut state = UsageState::new();
    if wanted.is_empty() {
        return Ok(state);
    }
    let rows = sqlx::query(
        "SELECT u.agent_id, u.kind, u.tz, u.currency, u.window_start, u.committed, u.reserved
         FROM usage_window u
         JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::date[]) AS w(agent_id, kind, tz, currency, window_start)
           USING (agent_id, kind, tz, currency, window_start)",
    )
    .bind(wanted.iter().map(|k| k.agent_id.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.tz.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.currency.as_str()).collect::<Vec<_>>())
    .bind(wanted.iter().map(|k| k.start).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    for r in rows {
        let k = UsageKey {
            agent_id: r.try_get("agent_id")?,
            kind: r.try_get("kind")?,
            tz: r.try_get("tz")?,
            currency: r.try_get("currency")?,
            start: r.try_get("window_start")?,
        };
        state.insert(k, (r.try_get("committed")?, r.try_get("reserved")?));
    }
    Ok(state)
}

/// committed + reserved of one window.
pub fn total(state: &UsageState, key: &UsageKey) -> Decimal {
    state.get(key).map(|(c, r)| c + r).unwrap_or(Decimal::ZERO)
}

pub fn add(state: &mut UsageState, key: &UsageKey, committed: Decimal, reserved: Decimal) {
    let e = state
        .entry(key.clone())
        .or_insert((Decimal::ZERO, Decimal::ZERO));
    e.0 += committed;
    e.1 += reserved;
}
