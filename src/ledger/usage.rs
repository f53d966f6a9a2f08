//! Usage windows (SPEC §2.2): per agent, policy timezone and currency, the local calendar
//! day and month, each with committed spend (ALLOW, approved) and reservations
//! (waiting HITL / MSIG). The evaluator sees committed + reserved. The amounts live in
//! `machine::Windows` (in memory) and `usage_window` (in the database).

use crate::window::Windows;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
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
