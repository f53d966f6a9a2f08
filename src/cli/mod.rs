//! The `spendguard` command line. Each area keeps its subcommands in its own file
//! (`cli/policy.rs`, `cli/ledger.rs`, `cli/service.rs`, ...); this file only routes.

use clap::{Parser, Subcommand};

// --- operators & auditors ---
pub mod ops;

// --- ledger ---
pub mod ledger;

#[derive(Debug, Parser)]
#[command(
    name = "spendguard",
    version,
    about = "Decides whether an autonomous agent may spend money, and proves afterwards why.",
    propagate_version = true
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `spendguard=debug`.
    #[arg(long, global = true, env = "SPENDGUARD_LOG", default_value = "warn")]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    // Each area adds its variants below its own heading, and handles them in `run`.
    // --- policy engine ---
    // --- ledger ---
    /// Database schema (migrations).
    #[command(subcommand)]
    Db(ledger::DbCommand),
    /// The ledger's direct door: decide intents without Kafka; benchmark `decide`.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// Verify the tamper-evident audit trail.
    #[command(subcommand)]
    Audit(ledger::AuditCommand),
    /// Rebuild every projection from the events and compare; `--verify` re-evaluates decisions.
    Replay(ledger::ReplayArgs),
    /// Personal data (LGPD): erase a data subject.
    #[command(subcommand)]
    Privacy(ledger::PrivacyCommand),
    // --- service ---
    // --- operators & auditors ---
    /// Compliance report of a period, computed by replaying the ledger (json, md or html).
    Report(ops::ReportArgs),
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        // --- operators & auditors ---
        Command::Report(a) => ops::run_report(a),
        // --- ledger ---
        Command::Db(c) => ledger::run_db(c),
        Command::Ledger(c) => ledger::run_ledger(c),
        Command::Audit(c) => ledger::run_audit(c),
        Command::Replay(a) => ledger::run_replay(a),
        Command::Privacy(c) => ledger::run_privacy(c),
    }
}
