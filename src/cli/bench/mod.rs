//! Benchmark tools, kept out of the library's core modules: `spendguard ledger bench`
//! (the decide path straight on PostgreSQL) and `spendguard loadgen` (intents over the
//! broker, decisions tailed). Results and commands: `docs/benchmarks.md`.

pub mod http_load;
pub mod ledger;
pub mod loadgen;
pub mod webhook_sink;
