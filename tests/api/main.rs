//! The operators' surface: the HTTP API over a real ledger and broker, and the deploy
//! files (Compose, Dockerfile, Prometheus rules, Grafana dashboard). One test binary
//! (issue 9); `tests/harness/` holds the set-up.

#[path = "../harness/mod.rs"]
mod harness;

mod console;
mod deploy_files;
mod endpoints;
mod fx;
mod lifecycle;
mod limits;
mod policy_history;
