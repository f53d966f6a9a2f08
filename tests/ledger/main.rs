//! The ledger on the real PostgreSQL (a fresh database per test): events, windows,
//! concurrency, tamper evidence, privacy, and the compliance report and policy impact
//! over recorded scenarios. One test binary (issue 9); `tests/harness/` holds the set-up.

#[path = "../harness/mod.rs"]
mod harness;

mod concurrency;
mod config_versions;
mod events;
mod fx;
mod identity;
mod impact_history;
mod kek;
mod lifecycle;
mod limits;
mod machine_model;
mod policy_history;
mod privacy;
mod report_scenario;
mod shadow;
mod tamper;
mod tls;
mod windows;
