//! The `spendguard` command line. Each area keeps its subcommands in its own file
//! (`cli/policy.rs`, `cli/ledger.rs`, `cli/service.rs`, ...); this file only routes.

use clap::{Parser, Subcommand};

// --- policy engine ---
pub mod policy;
pub mod policy_lifecycle;
// --- operators & auditors ---
pub mod ops;
pub mod promote;
// --- ledger ---
pub mod approve;
pub mod bench;
pub mod ledger;
pub mod service;

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
    /// Check policies and print the language's JSON Schema.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Decide intents offline (one JSON per line) against a policy or a policy directory.
    Evaluate(policy::EvaluateArgs),
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
    /// Exchange rates for policies that accept foreign currencies (audited).
    #[command(subcommand)]
    Fx(ledger::FxCommand),
    // --- service ---
    /// Consume intents and votes, decide through the ledger, publish decisions.
    Serve(service::ServeArgs),
    /// Sign a vote on a waiting intent and publish it (or POST it to the API), given the
    /// decision and your key: no database access needed.
    Approve(approve::ApproveArgs),
    /// Trip, clear or show the kill switch.
    KillSwitch(service::KillSwitchArgs),
    /// Approver key management.
    Approvers {
        #[command(subcommand)]
        command: service::ApproversCommand,
    },
    /// Publish spend intents to Kafka.
    Intents {
        #[command(subcommand)]
        command: service::IntentsCommand,
    },
    /// Publish settlement messages (what became of the money) to Kafka.
    Settlements {
        #[command(subcommand)]
        command: service::SettlementsCommand,
    },
    /// Read decisions and outcomes from Kafka.
    Decisions {
        #[command(subcommand)]
        command: service::DecisionsCommand,
    },
    /// Offer load and measure throughput and latency against a bare-broker baseline.
    Loadgen(crate::cli::bench::loadgen::LoadgenArgs),
    // --- operators & auditors ---
    /// Compliance report of a period, computed by replaying the ledger (json, md or html).
    Report(ops::ReportArgs),
    /// Every limit of an agent's policy: used, remaining, when it resets or frees up.
    Usage(ops::UsageArgs),
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        // --- policy engine ---
        Command::Policy(cmd) => policy::run_policy(cmd),
        Command::Evaluate(args) => policy::run_evaluate(args),
        // --- operators & auditors ---
        Command::Report(a) => ops::run_report(a),
        Command::Usage(a) => ops::run_usage(a),
        // --- ledger ---
        Command::Db(c) => ledger::run_db(c),
        Command::Ledger(c) => ledger::run_ledger(c),
        Command::Audit(c) => ledger::run_audit(c),
        Command::Replay(a) => ledger::run_replay(a),
        Command::Privacy(c) => ledger::run_privacy(c),
        Command::Fx(c) => ledger::run_fx(c),
        // --- service ---
        Command::Serve(args) => service::serve(args),
        Command::Approve(args) => approve::run(args),
        Command::KillSwitch(args) => service::kill_switch(args),
        Command::Approvers { command } => service::approvers(command),
        Command::Intents { command } => service::intents(command),
        Command::Settlements { command } => service::settlements(command),
        Command::Decisions { command } => service::decisions(command),
        Command::Loadgen(args) => service::run_loadgen(args),
    }
}
