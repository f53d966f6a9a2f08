//! spendguard: decides whether an autonomous agent may spend money, and proves why.
//!
//! The pure core (`money`, `intent`, `decision`, `window`, `policy`) does no I/O.
//! PostgreSQL, Kafka and HTTP live at the edges.

pub mod cli;
pub mod decision;
pub mod intent;
pub mod money;
pub mod settlement;
pub mod telemetry;
pub mod window;

// --- policy engine ---
pub mod policy;

// --- ledger ---
pub mod keywrap;
pub mod ledger;
pub mod privacy;

// --- service (Kafka side) ---
pub mod approvals;
pub mod audit_budget;
pub mod bus;
pub mod config;
pub mod kill_switch;
pub mod notify;
pub mod serve;
pub mod tls_client;
pub mod vote_intake;

// --- operators & auditors ---
pub mod api;
pub mod report;
