//! Compliance reports and policy impact analysis, both computed by replaying the
//! ledger's events.

pub mod compliance;
pub mod events;
pub mod impact;
pub mod render;
pub mod svg;

#[cfg(test)]
mod tests;
