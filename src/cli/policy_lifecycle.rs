//! `spendguard policy history | diff | rollback` (SPEC §16): the activations of a policy
//! as the ledger recorded them, the difference between two of them, and the activation
//! of an earlier content as a new revision.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::cli::ledger::DbArgs;
use crate::ledger::policy_history::{PolicyRevision, RevisionContent};
use crate::ledger::{Ledger, Origin};
use crate::policy::{self, CompiledPolicy, PolicySet};

/// Longest canonical policy compared line by line (a policy is at most 256 KiB).
const MAX_DIFF_LINES: usize = 20_000;

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

/// Finds a revision by number or by a version label only one content carries.
pub fn resolve(h: &[RevisionContent], name: &str, text: &str) -> anyhow::Result<i64> {
    if let Ok(n) = text.parse::<i64>() {
        anyhow::ensure!(
            n >= 1 && n <= h.len() as i64,
            "policy {name:?} has revisions 1 to {}; see `spendguard policy history {name}`",
            h.len()
        );
        return Ok(n);
    }
    let matching: Vec<&PolicyRevision> = h
        .iter()
        .map(|(r, _)| r)
        .filter(|r| r.version == text)
        .collect();
    let mut shas: Vec<&str> = matching.iter().map(|r| r.sha256.as_str()).collect();
    shas.dedup();
    match (matching.first(), shas.len()) {
        (None, _) => anyhow::bail!(
            "policy {name:?} has no revision with version {text:?}; see `spendguard policy history {name}`"
        ),
        (Some(r), 1) => Ok(r.revision),
        _ => anyhow::bail!(
            "version {text:?} of policy {name:?} names several contents (revisions {}); give a revision number",
            matching
                .iter()
                .map(|r| r.revision.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn run_diff(args: DiffArgs) -> anyhow::Result<i32> {
    runtime()?.block_on(async {
        let ledger = connect(&args.db).await?;
        let h = ledger.policy_history(&args.name).await?;
        let a = resolve(&h, &args.name, &args.from)?;
        let b = resolve(&h, &args.name, &args.to)?;
        let (ra, ca) = &h[(a - 1) as usize];
        let (rb, cb) = &h[(b - 1) as usize];
        print!("{}", render_diff(ra, ca, rb, cb)?);
        Ok(0)
    })
}

/// The canonical content as indented JSON (the canonical form's key order): one field
/// per line, so a line diff reads as a field diff; formatting and key order of the files
/// do not show.
pub fn pretty_canonical(canonical: &str) -> anyhow::Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(canonical).context("recorded canonical policy is not JSON")?;
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

pub fn render_diff(
    ra: &PolicyRevision,
    ca: &str,
    rb: &PolicyRevision,
    cb: &str,
) -> anyhow::Result<String> {
    let mut out = format!(
        "--- revision {} (version {}, sha256 {})\n+++ revision {} (version {}, sha256 {})\n",
        ra.revision, ra.version, ra.sha256, rb.revision, rb.version, rb.sha256
    );
    if ra.sha256 == rb.sha256 {
        out.push_str("(same content)\n");
        return Ok(out);
    }
    let (a, b) = (pretty_canonical(ca)?, pretty_canonical(cb)?);
    out.push_str(&line_diff(&a, &b));
    Ok(out)
}

/// A line diff (longest common subsequence) showing changed lines with two lines of
/// context; runs of unchanged lines beyond that are elided as `...`.
pub fn line_diff(a: &str, b: &str) -> String {
    let a: Vec<&str> = a.lines().take(MAX_DIFF_LINES).collect();
    let b: Vec<&str> = b.lines().take(MAX_DIFF_LINES).collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let near_change = |k: usize| {
        let lo = k.saturating_sub(2);
        let hi = (k + 2).min(ops.len() - 1);
        ops[lo..=hi].iter().any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut elided = false;
    for (k, (c, line)) in ops.iter().enumerate() {
        if *c == ' ' && !near_change(k) {
            if !elided {
                out.push_str("  ...\n");
                elided = true;
            }
            continue;
        }
        elided = false;
        out.push_str(&format!("{c} {line}\n"));
    }
    out
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

/// The file of `dir` that defines policy `name`, or `dir/NAME.json` when none does.
pub fn policy_file(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    PolicySet::load_dir(dir).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(fix the directory first: `spendguard policy check {}`)",
            dir.display()
        )
    })?;
    for path in policy::dir_files(dir)? {
        if policy::is_bindings_file(&path) {
            continue;
        }
        let text = policy::read_text(&path)?;
        if CompiledPolicy::parse(&text, &path.display().to_string())
            .is_ok_and(|p| p.identity.name == name)
        {
            return Ok(path);
        }
    }
    Ok(dir.join(format!("{name}.json")))
}

/// Replaces the file with the restored canonical content (JSON, which YAML files also
/// accept), written aside then renamed so the service never reads half a file; checks it
/// parses back to the recorded identity.
fn write_restored(path: &Path, canonical: &str, r: &PolicyRevision) -> anyhow::Result<()> {
    let text = pretty_canonical(canonical)?;
    let back = CompiledPolicy::parse(&text, &path.display().to_string())?;
    anyhow::ensure!(
        back.identity.sha256 == r.sha256,
        "the restored content parses to sha256 {}, not the recorded {}",
        back.identity.sha256,
        r.sha256
    );
    let tmp = path.with_extension("rollback.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_shows_changed_fields_with_context() {
        let a =
            "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3,\n  \"d\": 4,\n  \"e\": 5,\n  \"f\": 6\n}\n";
        let b = a.replace("\"b\": 2", "\"b\": 20");
        let d = line_diff(a, &b);
        assert_eq!(
            d,
            "  {\n    \"a\": 1,\n-   \"b\": 2,\n+   \"b\": 20,\n    \"c\": 3,\n    \"d\": 4,\n  ...\n"
        );
    }
}
