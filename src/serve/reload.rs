//! Hot reload of the policies directory and the approver registry. A valid change is
//! swapped in atomically (a request sees the old set or the new one, never a mix) and
//! recorded in the ledger; an invalid one is refused and the last good set stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{ServeError, Shared};
use crate::approvals::Registry;
use crate::ledger::events::{PolicyRefusalReason, PolicySetRefused};
use crate::policy::{PolicySet, SetRefusal};

/// Files looked at per directory scan (bounds the work of one poll).
const MAX_WATCHED_FILES: usize = 10_000;

/// What a scan saw: (path, length, modification time) of every file, sorted.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>)>;

pub fn load_approvers(path: &Path) -> Result<Registry, ServeError> {
    if !path.exists() {
        tracing::warn!(path = %path.display(), "no approver registry: every vote will be refused as unknown_approver");
        return Ok(Registry::default());
    }
    Registry::load(path).map_err(ServeError::Approvers)
}

fn fingerprint(dir: &Path, extra: &Path) -> Fingerprint {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            if out.len() >= MAX_WATCHED_FILES {
                break;
            }
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    if let Ok(meta) = std::fs::metadata(extra) {
        out.push((extra.to_path_buf(), meta.len(), meta.modified().ok()));
    }
    out.sort();
    out
}

pub async fn watch(shared: Arc<Shared>) {
    let dir = shared.settings.policies_dir.clone();
    let approvers = shared.settings.approvers_file.clone();
    let mut seen = fingerprint(&dir, &approvers);
    // Also in the metrics; kept here so the log line carries it (operators without a
    // metrics endpoint, tests).
    let mut refused_total = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(
        shared.settings.policy_poll_interval_ms,
    ));
    loop {
        tick.tick().await;
        let now = fingerprint(&dir, &approvers);
        if now == seen {
            continue;
        }
        seen = now;
        reload_policies(&shared, &mut refused_total).await;
        reload_approvers(&shared).await;
    }
}

async fn reload_policies(shared: &Shared, refused_total: &mut u64) {
    let dir = &shared.settings.policies_dir;
    match PolicySet::load_dir_checked(dir) {
        Ok((set, warnings)) => {
            log_warnings(&warnings);
            if let Err(e) = shared
                .ledger
                .activate_policies(&set, &shared.settings.instance)
                .await
            {
                // Not recorded = not active: every decision must name a recorded policy.
                tracing::error!(error = %e, "policy change valid but not recorded in the ledger; keeping the previous set");
                crate::telemetry::record_policy_reload("ledger_error");
                return;
            }
            let names: Vec<String> = set
                .policies()
                .map(|p| format!("{}@{}", p.identity.name, p.identity.version))
                .collect();
            let previous = shared.policies.swap(Arc::new(set));
            let current = shared.policies.load();
            crate::telemetry::switch_active_policies(
                previous.policies().map(|p| &p.identity),
                current.policies().map(|p| &p.identity),
            );
            crate::telemetry::record_policy_reload("activated");
            tracing::warn!(?names, "policies reloaded");
            eprintln!("policy-reload activated: {}", names.join(", "));
        }
        Err(e) => {
            crate::telemetry::record_policy_reload("refused");
            tracing::error!(error = %e, dir = %dir.display(), "policy change refused; keeping the last good set");
            *refused_total += 1;
            eprintln!("policy-reload refused (refused_total={refused_total}): {e}");
            audit_refusal(shared, &e, "reload").await;
        }
    }
}

/// Lint warnings do not stop a set; operators see them in the log.
pub fn log_warnings(warnings: &[crate::policy::SetLint]) {
    for w in warnings {
        tracing::warn!(policy = %w.policy, code = w.lint.code, "policy lint warning: {}", w.lint.message);
    }
}

/// Records a refused set in the ledger (`policy_set_refused`). A failure to record is
/// logged: the refusal itself stands either way (nothing changed).
pub async fn audit_refusal(shared: &Shared, refusal: &SetRefusal, stage: &str) {
    let event = refusal_event(&shared.settings.policies_dir, refusal, stage);
    let origin = crate::ledger::Origin::cli(&shared.settings.instance);
    if let Err(e) = shared
        .ledger
        .record_policy_set_refused(event, &origin)
        .await
    {
        tracing::error!(error = %e, "policy set refused but the refusal could not be recorded in the ledger");
    }
}

/// The `policy_set_refused` payload of a refusal.
pub fn refusal_event(dir: &Path, refusal: &SetRefusal, stage: &str) -> PolicySetRefused {
    let errors = match refusal {
        SetRefusal::Invalid(e) => vec![PolicyRefusalReason {
            code: e.code.to_string(),
            message: e.message.clone(),
            location: format!("{}:{}:{}", e.origin, e.line, e.column),
        }],
        SetRefusal::Lint(lints) => lints
            .iter()
            .map(|l| PolicyRefusalReason {
                code: l.lint.code.to_string(),
                message: l.lint.message.clone(),
                location: format!("policy {}", l.policy),
            })
            .collect(),
    };
    PolicySetRefused {
        dir: dir.display().to_string(),
        stage: stage.to_string(),
        errors,
    }
}

async fn reload_approvers(shared: &Shared) {
    let path = &shared.settings.approvers_file;
    if !path.exists() {
        return;
    }
    match Registry::load(path) {
        Ok(r) if !shared.settings.demo && !super::demo::demo_credentials(&r, None).is_empty() => {
            metrics::counter!("spendguard_approver_reloads_total", "result" => "refused")
                .increment(1);
            tracing::error!(
                "approver registry change refused: it holds a demo key whose secret is public (examples/keys/); keeping the last good registry (serve --demo accepts it)"
            );
        }
        // Not recorded = not active: every accepted vote names a recorded registry.
        Ok(r) => match shared
            .ledger
            .activate_registry(r, &shared.settings.instance)
            .await
        {
            Ok(r) => shared.approvers.store(Arc::new(r)),
            Err(e) => {
                metrics::counter!("spendguard_approver_reloads_total", "result" => "ledger_error")
                    .increment(1);
                tracing::error!(error = %e, "approver registry change valid but not recorded in the ledger; keeping the last good registry");
            }
        },
        Err(e) => {
            metrics::counter!("spendguard_approver_reloads_total", "result" => "refused")
                .increment(1);
            tracing::error!(error = %e, "approver registry change refused; keeping the last good registry");
        }
    }
}
