//! The spending-policy language and its evaluator (SPEC §2).
//!
//! - [`model`]: the language as written (serde + JSON Schema types);
//! - [`compile`]: parse, normalize, canonical form + SHA-256, compiled matchers;
//! - [`eval`]: the pure deny-overrides evaluator;
//! - [`bindings`]: which policy governs which agent;
//! - [`rego`]: the optional Rego module (regorus);
//! - [`lint`]: conflicts and mistakes `spendguard policy check` reports.

pub mod bindings;
pub mod compile;
pub mod error;
pub mod eval;
pub mod limits;
pub mod lint;
pub mod model;
pub mod rego;
pub mod revisions;
pub mod testing;

pub use bindings::{Bindings, BindingsFile};
pub use compile::CompiledPolicy;
pub use error::PolicyError;
pub use eval::{EvalInput, codes, evaluate, evaluate_limited, no_policy_bound};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name of the bindings inside a policy directory.
pub const BINDINGS_FILE: &str = "bindings.yaml";
/// Largest number of policy files loaded from one directory.
pub const MAX_POLICY_FILES: usize = 1_000;

/// Policies by name plus the bindings that choose among them.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: BTreeMap<String, Arc<CompiledPolicy>>,
    bindings: Bindings,
}

/// Whether a path is a policy document by its extension (`.json`, `.yaml`, `.yml`).
pub fn is_policy_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("json" | "yaml" | "yml")
    )
}

pub fn is_bindings_file(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("bindings.yaml" | "bindings.yml" | "bindings.json")
    )
}

/// The approver registry (SPEC §4) lives next to the policies but is not a policy: the
/// service reads it (`crate::approvals::Registry`), the policy loader skips it.
pub fn is_approvers_file(path: &Path) -> bool {
    matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("approvers.yaml" | "approvers.yml" | "approvers.json")
    )
}

/// Policy and bindings files of a directory, sorted (non-recursive). The approver
/// registry is not among them.
pub fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let origin = dir.display().to_string();
    let rd = std::fs::read_dir(dir).map_err(|e| io_error(&origin, &e))?;
    let mut files = Vec::new();
    for entry in rd {
        let path = entry.map_err(|e| io_error(&origin, &e))?.path();
        if path.is_file() && is_policy_file(&path) && !is_approvers_file(&path) {
            files.push(path);
        }
    }
    files.sort();
    if files.len() > MAX_POLICY_FILES {
        return Err(PolicyError::at(
            &origin,
            1,
            1,
            "too_many_files",
            format!(
                "{} policy files; the limit is {MAX_POLICY_FILES}",
                files.len()
            ),
            "split the directory",
        ));
    }
    Ok(files)
}

pub fn io_error(origin: &str, e: &std::io::Error) -> PolicyError {
    PolicyError::at(
        origin,
        1,
        1,
        "io_error",
        format!("cannot read: {e}"),
        "check the path and its permissions",
    )
}

pub fn read_text(path: &Path) -> Result<String, PolicyError> {
    let origin = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| io_error(&origin, &e))?;
    if meta.len() > compile::MAX_POLICY_BYTES as u64 {
        return Err(PolicyError::at(
            &origin,
            1,
            1,
            "policy_too_large",
            format!(
                "file is {} bytes; the limit is {}",
                meta.len(),
                compile::MAX_POLICY_BYTES
            ),
            "split the file",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(&origin, &e))?;
    String::from_utf8(bytes).map_err(|e| {
        PolicyError::at(
            &origin,
            1,
            1,
            "invalid_utf8",
            format!("file is not UTF-8: {e}"),
            "save the file as UTF-8",
        )
    })
}

impl PolicySet {
    /// Loads every policy file of `dir` plus its `bindings.yaml` (optional: without it every
    /// agent is unbound). Fails on the first invalid file, a duplicate policy name, or a
    /// binding that names a policy that does not exist.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
        let mut policies: BTreeMap<String, (Arc<CompiledPolicy>, String)> = BTreeMap::new();
        let mut bindings: Option<(Bindings, String, String)> = None;
        for path in dir_files(dir)? {
            let origin = path.display().to_string();
            let text = read_text(&path)?;
            if is_bindings_file(&path) {
                let (b, _) = Bindings::parse(&text, &origin)?;
                bindings = Some((b, text, origin));
                continue;
            }
            let p = CompiledPolicy::parse(&text, &origin)?;
            let name = p.identity.name.clone();
            if let Some((_, first)) = policies.get(&name) {
                let (line, col) = error::locate(&text, &["name"]);
                return Err(PolicyError::at(
                    &origin,
                    line,
                    col,
                    "duplicate_policy",
                    format!("policy {name:?} is also defined in {first}"),
                    "give each policy a unique name",
                ));
            }
            policies.insert(name, (Arc::new(p), origin));
        }
        let policies: BTreeMap<String, Arc<CompiledPolicy>> =
            policies.into_iter().map(|(k, (p, _))| (k, p)).collect();
        let bindings = match bindings {
            Some((b, text, origin)) => {
                check_references(&b, &text, &origin, |n| policies.contains_key(n))?;
                b
            }
            None => Bindings::default(),
        };
        Ok(PolicySet { policies, bindings })
    }

    /// Builds a set from policies and bindings already in memory.
    pub fn new(
        policies: Vec<CompiledPolicy>,
        bindings: Bindings,
    ) -> Result<PolicySet, PolicyError> {
        let mut map = BTreeMap::new();
        for p in policies {
            let name = p.identity.name.clone();
            if map.insert(name.clone(), Arc::new(p)).is_some() {
                return Err(PolicyError::at(
                    "<memory>",
                    1,
                    1,
                    "duplicate_policy",
                    format!("policy {name:?} given twice"),
                    "give each policy a unique name",
                ));
            }
        }
        check_references(&bindings, "", "<memory>", |n| map.contains_key(n))?;
        Ok(PolicySet {
            policies: map,
            bindings,
        })
    }

    /// The policy governing this agent, or `None` (the caller decides `no_policy_bound`).
    pub fn resolve(&self, agent_id: &str, entity_id: &str) -> Option<Arc<CompiledPolicy>> {
        self.bindings
            .resolve(agent_id, entity_id)
            .and_then(|n| self.policies.get(n))
            .cloned()
    }

    /// The policies bound to an entity (usage of its entity-scoped limits): the one its
    /// own binding gives (the most specific entity pattern, else `default`; agent patterns
    /// are not consulted), then the one each of `agents` resolves to under it, in that
    /// order, each once.
    pub fn entity_policies(&self, entity_id: &str, agents: &[String]) -> Vec<Arc<CompiledPolicy>> {
        let mut out: Vec<Arc<CompiledPolicy>> = Vec::new();
        let names = self.bindings.resolve_entity(entity_id).into_iter().chain(
            agents
                .iter()
                .filter_map(|a| self.bindings.resolve(a, entity_id)),
        );
        for name in names {
            if let Some(p) = self.policies.get(name)
                && !out.iter().any(|q| Arc::ptr_eq(q, p))
            {
                out.push(p.clone());
            }
        }
        out
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<CompiledPolicy>> {
        self.policies.values()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CompiledPolicy>> {
        self.policies.get(name)
    }

    pub fn bindings(&self) -> &Bindings {
        &self.bindings
    }
}

/// Every policy a binding names must exist, or agents would silently be unbound.
pub fn check_references(
    b: &Bindings,
    text: &str,
    origin: &str,
    exists: impl Fn(&str) -> bool,
) -> Result<(), PolicyError> {
    for (at, name) in b.references() {
        if !exists(name) {
            let (line, col) = text
                .find(name)
                .map_or((1, 1), |at| error::line_col(text, at));
            return Err(PolicyError::at(
                origin,
                line,
                col,
                "unknown_policy_in_binding",
                format!("{at} names policy {name:?}, which is not defined"),
                "define the policy in this directory or fix the name",
            ));
        }
    }
    Ok(())
}

/// A lint of one policy of a set: the lints `spendguard policy check` reports
/// ([`lint::lint`]), named by policy instead of file position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetLint {
    pub policy: String,
    pub lint: lint::Lint,
}

impl std::fmt::Display for SetLint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.lint.severity {
            lint::Severity::Error => "error",
            lint::Severity::Warning => "warning",
        };
        write!(
            f,
            "policy {}: {sev}[{}]: {}",
            self.policy, self.lint.code, self.lint.message
        )
    }
}

/// Why a policies directory is not activated (hot reload, `serve` start-up).
#[derive(Debug, thiserror::Error)]
pub enum SetRefusal {
    #[error("{0}")]
    Invalid(Box<PolicyError>),
    /// It loads, but `policy check` would fail on it: lint errors.
    #[error("lint errors (run `spendguard policy check` on the directory for file positions):\n  {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Lint(Vec<SetLint>),
}

impl PolicySet {
    /// Every lint of every policy of the set, errors first.
    pub fn lints(&self) -> Vec<SetLint> {
        let mut out: Vec<SetLint> = self
            .policies()
            .flat_map(|p| {
                lint::lint(p.spec()).into_iter().map(|l| SetLint {
                    policy: p.identity.name.clone(),
                    lint: l,
                })
            })
            .collect();
        out.sort_by_key(|l| std::cmp::Reverse(l.lint.severity));
        out
    }

    /// [`PolicySet::load_dir`], refusing a set with lint errors as `policy check` does;
    /// returns the set and its warnings (not a reason to refuse).
    pub fn load_dir_checked(dir: &Path) -> Result<(PolicySet, Vec<SetLint>), SetRefusal> {
        let set = PolicySet::load_dir(dir).map_err(|e| SetRefusal::Invalid(Box::new(e)))?;
        let (errors, warnings): (Vec<SetLint>, Vec<SetLint>) = set
            .lints()
            .into_iter()
            .partition(|l| l.lint.severity == lint::Severity::Error);
        if errors.is_empty() {
            Ok((set, warnings))
        } else {
            Err(SetRefusal::Lint(errors))
        }
    }
}

// Policies are shared across decision tasks; keep that a compile-time fact.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledPolicy>();
    assert_send_sync::<PolicySet>();
};
