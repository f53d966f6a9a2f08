//! `spendguard serve` over the real broker (tansu) and PostgreSQL: the pipeline,
//! approvals, expiry, hot reload, the kill switch, the HTTP API inside serve, crashes and
//! the chaos run, loadgen, the demo script; and the bus and fault-proxy smoke tests.
//! One test binary (issue 9); `tests/harness/` holds the set-up.
//!
//! Every test here that runs the service takes its turn with
//! `harness::serial::service_test()` (the smoke tests run side by side with `shared()`):
//! see `tests/harness/serial.rs` for why.

#[path = "../harness/mod.rs"]
mod harness;

mod approvals;
mod bus_smoke;
mod checkpoints;
mod crash;
mod demo_script;
mod expiry;
mod hostile;
mod http;
mod intake;
mod junk;
mod kill_switch;
mod loadgen;
mod pipeline;
mod reload;
mod settlements;
mod shadow;
mod systemic;
mod tls;
mod webhooks;
