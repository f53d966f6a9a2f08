//! spendguard: decides whether an autonomous agent may spend money, and proves why.
//!
//! The pure core (`money`, `intent`, `decision`, `window`, `policy`) does no I/O.
//! PostgreSQL, Kafka and HTTP live at the edges.

pub mod decision;
pub mod intent;
pub mod money;
pub mod window;
// --- policy engine ---
pub mod policy;
// --- end policy engine ---
pub mod cli;
pub mod telemetry;

// --- operators & auditors ---
pub mod api;
pub mod report;

// --- ledger ---
pub mod ledger;
pub mod privacy;
