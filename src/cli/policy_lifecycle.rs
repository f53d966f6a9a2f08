//! `spendguard policy history | diff | rollback` (SPEC §16): the activations of a policy
//! as the ledger recorded them, the difference between two of them, and the activation
//! of an earlier content as a new revision.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::cli::ledger::DbArgs;
use crate::ledger::policy_history::PolicyRevision;
use crate::ledger::{Ledger, Origin};
use crate::policy::revisions::{policy_file, render_diff, resolve, write_restored};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Policy name (as in its `name` / `metadata.name`).
    pub name: String,
    #[command(flatten)]
    pub db: DbArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub name: String,
    /// A revision number as `policy history` lists it (`3`), or a version label
    /// (`1.2.0`) when exactly one revision's content carries it.
    pub from: String,
    pub to: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub name: String,
    /// The revision whose content comes back (`policy history` numbers them), or a
    /// version label carried by exactly one content.
    pub revision: String,
    /// The policies directory the service reads: the policy's file there is replaced by
    /// the restored content (canonical JSON), so the service enforces what the ledger
    /// says is active.
    #[arg(long)]
    pub policies: PathBuf,
    /// Why (recorded with the activation).
    #[arg(long)]
    pub reason: String,
    /// Who (recorded as the activation's actor).
    #[arg(long, env = "USER", default_value = "operator")]
    pub actor: String,
    #[command(flatten)]
    pub db: DbArgs,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(db: &DbArgs) -> anyhow::Result<Ledger> {
    Ledger::connect(&db.database_url, "policy-cli")
        .await
        .context("cannot open the ledger (check --database-url / DATABASE_URL)")
}

pub fn run_history(args: HistoryArgs) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let ledger = connect(&args.db).await?;
        let h = ledger.policy_history(&args.name).await?;
        let revisions: Vec<&PolicyRevision> = h.iter().map(|(r, _)| r).collect();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&revisions)?);
        } else {
            print!("{}", render_history(&revisions));
        }
        Ok(0)
    })
}

/// The history as a table, latest revision marked as in force.
pub fn render_history(h: &[&PolicyRevision]) -> String {
    let mut out = String::from(
        "REV  SEQ      ACTIVATED AT (UTC)    VERSION      SHA256        ACTOR (SOURCE)\n",
    );
    for (i, r) in h.iter().enumerate() {
        let note = match (&r.rollback_to, &r.reason) {
            (Some(to), Some(reason)) => format!("  rollback to revision {to}: {reason}"),
            _ => String::new(),
        };
        let current = if i + 1 == h.len() { "  <- latest" } else { "" };
        out.push_str(&format!(
            "{:<4} {:<8} {}  {:<12} {:<13} {} ({}){note}{current}\n",
            r.revision,
            r.seq,
            r.activated_at.format("%Y-%m-%d %H:%M:%S"),
            r.version,
            r.sha256.get(..12).unwrap_or(&r.sha256),
            r.actor,
            r.source
        ));
    }
    out
}

pub fn run_diff(args: DiffArgs) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let ledger = connect(&args.db).await?;
        let h = ledger.policy_history(&args.name).await?;
        let a = resolve(&h, &args.name, &args.from)?;
        let b = resolve(&h, &args.name, &args.to)?;
        let (ra, ca) = &h[(a - 1) as usize];
        let (rb, cb) = &h[(b - 1) as usize];
        print!("{}", render_diff(ra, ca, rb, cb));
        Ok(0)
    })
}

pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<i32> {
    // The directory must load before anything is recorded: the restored file has to
    // land somewhere the service will read.
    let target_file = policy_file(&args.policies, &args.name)?;
    runtime()?.block_on(async {
        let ledger = connect(&args.db).await?;
        let h = ledger.policy_history(&args.name).await?;
        let revision = resolve(&h, &args.name, &args.revision)?;
        let (new, canonical) = ledger
            .rollback_policy(
                &args.name,
                revision,
                &args.actor,
                &args.reason,
                &Origin::cli("policy-cli"),
            )
            .await?;
        write_restored(&target_file, &canonical, &new).with_context(|| {
            format!(
                "the rollback is recorded (revision {}, ledgerSeq {}) but {} could not be replaced; write the content of `spendguard policy diff {} {} {}` there, or the service keeps enforcing the files",
                new.revision, new.seq, target_file.display(), args.name, revision, new.revision
            )
        })?;
        println!(
            "policy {} rolled back to revision {revision}: recorded as revision {} (version {}, sha256 {}, ledgerSeq {}) by {}; wrote {}",
            args.name,
            new.revision,
            new.version,
            new.sha256,
            new.seq,
            new.actor,
            target_file.display()
        );
        Ok(0)
    })
}
