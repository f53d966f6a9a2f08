//! Usage windows (SPEC §2.2): per agent, policy timezone and currency, the local calendar
//! day and month, each with committed spend (ALLOW, approved) and reservations
//! (waiting HITL / MSIG). The evaluator sees committed + reserved.

use crate::window::Windows;
use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
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
