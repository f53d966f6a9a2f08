//! Revisions of a policy as the ledger recorded them (SPEC §16), shared by `spendguard
//! policy history | diff | rollback` and their API routes: naming a revision, the
//! readable diff of two canonical contents, and writing a restored content into the
//! policies directory the service reads.

use std::path::{Path, PathBuf};

use super::{CompiledPolicy, PolicySet};
use crate::ledger::policy_history::{PolicyRevision, RevisionContent};

/// Longest canonical policy compared line by line (a policy is at most 256 KiB).
const MAX_DIFF_LINES: usize = 20_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevisionError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Ambiguous(String),
    #[error("{0}")]
    Directory(String),
    #[error("{0}")]
    Write(String),
}

/// Finds a revision by number (`3`) or by a version label only one content carries.
pub fn resolve(h: &[RevisionContent], name: &str, text: &str) -> Result<i64, RevisionError> {
    if let Ok(n) = text.parse::<i64>() {
        if n < 1 || n > h.len() as i64 {
            return Err(RevisionError::NotFound(format!(
                "policy {name:?} has revisions 1 to {}; see `spendguard policy history {name}`",
                h.len()
            )));
        }
        return Ok(n);
    }
    let matching: Vec<&PolicyRevision> = h
        .iter()
        .map(|(r, _)| r)
        .filter(|r| r.version == text)
        .collect();
    let mut shas: Vec<&str> = matching.iter().map(|r| r.sha256.as_str()).collect();
    shas.sort_unstable();
    shas.dedup();
    match (matching.last(), shas.len()) {
        (None, _) => Err(RevisionError::NotFound(format!(
            "policy {name:?} has no revision with version {text:?}; see `spendguard policy history {name}`"
        ))),
        // The latest revision carrying that content.
        (Some(r), 1) => Ok(r.revision),
        _ => Err(RevisionError::Ambiguous(format!(
            "version {text:?} of policy {name:?} names several contents (revisions {}); give a revision number",
            matching
                .iter()
                .map(|r| r.revision.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The canonical content as indented JSON (the canonical form's key order): one field
/// per line, so a line diff reads as a field diff; formatting and key order of the files
/// do not show. A recorded content that is not JSON is shown as recorded.
pub fn pretty_canonical(canonical: &str) -> String {
    serde_json::from_str::<serde_json::Value>(canonical)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| canonical.to_string())
        + "\n"
}

/// `--- / +++` headers naming both revisions, then the line diff of their contents.
pub fn render_diff(ra: &PolicyRevision, ca: &str, rb: &PolicyRevision, cb: &str) -> String {
    let mut out = format!(
        "--- revision {} (version {}, sha256 {})\n+++ revision {} (version {}, sha256 {})\n",
        ra.revision, ra.version, ra.sha256, rb.revision, rb.version, rb.sha256
    );
    if ra.sha256 == rb.sha256 {
        out.push_str("(same content)\n");
        return out;
    }
    out.push_str(&line_diff(&pretty_canonical(ca), &pretty_canonical(cb)));
    out
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

/// The file of `dir` that defines policy `name`, or `dir/NAME.json` when none does. The
/// directory must load: the restored file has to land somewhere the service reads.
pub fn policy_file(dir: &Path, name: &str) -> Result<PathBuf, RevisionError> {
    PolicySet::load_dir(dir).map_err(|e| {
        RevisionError::Directory(format!(
            "{e} (fix the directory first: `spendguard policy check {}`)",
            dir.display()
        ))
    })?;
    let files = super::dir_files(dir).map_err(|e| RevisionError::Directory(e.to_string()))?;
    for path in files {
        if super::is_bindings_file(&path) {
            continue;
        }
        let Ok(text) = super::read_text(&path) else {
            continue;
        };
        if CompiledPolicy::parse(&text, &path.display().to_string())
            .is_ok_and(|p| p.identity.name == name)
        {
            return Ok(path);
        }
    }
    Ok(dir.join(format!("{name}.json")))
}

/// Replaces the file with a restored canonical content (JSON, which YAML files also
/// accept), written aside then renamed so the service never reads half a file; checks
/// first that it parses back to the recorded identity.
pub fn write_restored(
    path: &Path,
    canonical: &str,
    r: &PolicyRevision,
) -> Result<(), RevisionError> {
    let text = pretty_canonical(canonical);
    let back = CompiledPolicy::parse(&text, &path.display().to_string())
        .map_err(|e| RevisionError::Write(format!("the restored content does not parse: {e}")))?;
    if back.identity.sha256 != r.sha256 {
        return Err(RevisionError::Write(format!(
            "the restored content parses to sha256 {}, not the recorded {}",
            back.identity.sha256, r.sha256
        )));
    }
    let tmp = path.with_extension("rollback.tmp");
    let io = |e: std::io::Error| RevisionError::Write(format!("{}: {e}", path.display()));
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_shows_changed_fields_with_context() {
        let a =
            "{\n  \"a\": 1,\n  \"b\": 2,\n  \"c\": 3,\n  \"d\": 4,\n  \"e\": 5,\n  \"f\": 6\n}\n";
        let b = a.replace("\"b\": 2", "\"b\": 20");
        assert_eq!(
            line_diff(a, &b),
            "  {\n    \"a\": 1,\n-   \"b\": 2,\n+   \"b\": 20,\n    \"c\": 3,\n    \"d\": 4,\n  ...\n"
        );
    }
}
