//! `spendguard policy check`, `spendguard policy schema` and `spendguard evaluate`.

use crate::decision::{DecisionMessage, KillState, Usage};
use crate::ledger::machine::{self, Projections};
use crate::ledger::usage;
use crate::policy::lint::{self, Severity};
use crate::policy::{self, Bindings, CompiledPolicy, PolicyError, PolicySet};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

/// Longest input line `evaluate` reads; longer lines are reported, not buffered forever.
const MAX_LINE_BYTES: usize = crate::intent::MAX_INTENT_BYTES + 1;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files and directories (bindings included) and lint them for conflicts.
    Check(CheckArgs),
    /// Print the JSON Schema of the policy language (for editors).
    Schema,
    /// Replay recorded intents under a candidate policy and report how decisions change
    /// (exit 3 when the candidate allows anything the current policy denied).
    Impact(crate::cli::ops::ImpactArgs),
    /// Run the policy tests of a directory (DIR/tests/*.test.yaml) with the service's own
    /// decision step; exit 1 when a case fails or cannot run.
    Test(TestArgs),
    /// List every activation of a policy recorded in the ledger (revision, version,
    /// sha256, when, who, rollbacks).
    History(crate::cli::policy_lifecycle::HistoryArgs),
    /// Show how two recorded revisions of a policy differ (canonical content, one field
    /// per line).
    Diff(crate::cli::policy_lifecycle::DiffArgs),
    /// Activate an earlier revision's content again as a new, audited revision, and write
    /// it into the policies directory the service reads.
    Rollback(crate::cli::policy_lifecycle::RollbackArgs),
    /// Compare a shadow candidate's recorded would-be decisions with the enforced ones
    /// over a period (transitions, spend newly allowed / blocked, examples).
    ShadowReport(crate::cli::promote::ShadowReportArgs),
    /// Enforce a shadow candidate if a replay of the period and its shadow decisions stay
    /// within the thresholds (exit 3 when refused); records the evidence in the ledger.
    Promote(crate::cli::promote::PromoteArgs),
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Policy directory; its test files are DIR/tests/*.test.yaml (.yml, .json).
    #[arg(default_value = "policies")]
    pub dir: PathBuf,
    /// Also write a JUnit XML report to FILE (for CI systems).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// List passing cases too.
    #[arg(long, short)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy files or directories (a directory's bindings.yaml is checked against its policies).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// One policy file applied to every intent.
    #[arg(
        long,
        conflicts_with = "policies",
        required_unless_present = "policies"
    )]
    pub policy: Option<PathBuf>,
    /// A policy directory; each intent's policy is resolved through its bindings.yaml.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Intents, one JSON object per line (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Agent's spend so far today (policy currency), before each intent.
    #[arg(long, default_value = "0")]
    pub daily_so_far: String,
    /// Agent's spend so far this month (policy currency), before each intent.
    #[arg(long, default_value = "0")]
    pub monthly_so_far: String,
    /// Simulate a tripped global kill switch.
    #[arg(long)]
    pub kill_switch: bool,
    /// Acceptance time (RFC 3339) used for windows, Rego and `decidedAt`; default: now.
    #[arg(long)]
    pub at: Option<String>,
}

pub fn run_policy(cmd: PolicyCommand) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Check(args) => check(&args),
        PolicyCommand::Schema => {
            let schema = schemars::schema_for!(crate::policy::model::PolicyDocument);
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(0)
        }
        PolicyCommand::Impact(args) => crate::cli::ops::run_impact(args),
        PolicyCommand::Test(args) => run_tests(&args),
        PolicyCommand::History(args) => crate::cli::policy_lifecycle::run_history(args),
        PolicyCommand::Diff(args) => crate::cli::policy_lifecycle::run_diff(args),
        PolicyCommand::Rollback(args) => crate::cli::policy_lifecycle::run_rollback(args),
        PolicyCommand::ShadowReport(args) => crate::cli::promote::run_shadow_report(args),
        PolicyCommand::Promote(args) => crate::cli::promote::run_promote(args),
    }
}

fn run_tests(args: &TestArgs) -> anyhow::Result<i32> {
    use crate::policy::testing;
    let set = PolicySet::load_dir(&args.dir).map_err(|e| {
        anyhow::anyhow!("{e}\n(the policies must load before they can be tested: run `spendguard policy check {}`)", args.dir.display())
    })?;
    let files = testing::test_files(&args.dir).map_err(|e| {
        anyhow::anyhow!("{e}\n(put test files in {}/tests/NAME.test.yaml; see docs/policy-language.md, \"Testing policies\")", args.dir.display())
    })?;
    anyhow::ensure!(
        !files.is_empty(),
        "no test files in {}/tests (names end in .test.yaml, .test.yml or .test.json)",
        args.dir.display()
    );
    let run = testing::run_files(&set, &files);
    print!("{}", testing::render_text(&run, args.verbose));
    if let Some(path) = &args.junit {
        std::fs::write(path, testing::junit_xml(&run))
            .with_context(|| format!("cannot write the JUnit report to {}", path.display()))?;
    }
    Ok(if run.ok() { 0 } else { 1 })
}

#[derive(Debug, Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub hint: String,
}

impl Diagnostic {
    fn from_error(e: PolicyError) -> Diagnostic {
        Diagnostic {
            file: e.origin,
            line: e.line,
            column: e.column,
            severity: Severity::Error,
            code: e.code.to_string(),
            message: e.message,
            hint: e.hint,
        }
    }
}

#[derive(Debug, Serialize)]
struct CheckReport {
    files: usize,
    errors: usize,
    warnings: usize,
    diagnostics: Vec<Diagnostic>,
}

/// Checks the given paths; pure except for reading the files. Public for tests.
pub fn check_paths(paths: &[PathBuf]) -> (usize, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut files = 0usize;
    for path in paths {
        if path.is_dir() {
            match policy::dir_files(path) {
                Ok(list) => {
                    files += list.len();
                    check_group(&list, true, &mut diags);
                }
                Err(e) => diags.push(Diagnostic::from_error(e)),
            }
        } else {
            files += 1;
            check_group(std::slice::from_ref(path), false, &mut diags);
        }
    }
    (files, diags)
}

/// Checks files that belong together (one directory): policies, then its bindings against
/// the policy names found.
fn check_group(paths: &[PathBuf], is_dir: bool, diags: &mut Vec<Diagnostic>) {
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut unnamed_failures = false;
    let mut bindings: Vec<(Bindings, String, String)> = Vec::new();
    for path in paths {
        let origin = path.display().to_string();
        let text = match policy::read_text(path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::from_error(e));
                continue;
            }
        };
        if policy::is_bindings_file(path) {
            match Bindings::parse(&text, &origin) {
                Ok((b, _)) => bindings.push((b, text, origin)),
                Err(e) => diags.push(Diagnostic::from_error(e)),
            }
            continue;
        }
        match CompiledPolicy::parse(&text, &origin) {
            Ok(p) => {
                for l in lint::lint(p.spec()) {
                    let keys: Vec<&str> = l.keys.iter().map(String::as_str).collect();
                    let (line, column) = policy::error::locate(&text, &keys);
                    diags.push(Diagnostic {
                        file: origin.clone(),
                        line,
                        column,
                        severity: l.severity,
                        code: l.code.to_string(),
                        message: format!("policy {}: {}", p.identity.name, l.message),
                        hint: l.hint.to_string(),
                    });
                }
                if let Some(first) = names.get(&p.identity.name) {
                    let (line, column) = policy::error::locate(&text, &["name"]);
                    diags.push(Diagnostic {
                        file: origin.clone(),
                        line,
                        column,
                        severity: Severity::Error,
                        code: "duplicate_policy".into(),
                        message: format!("policy {:?} is also defined in {first}", p.identity.name),
                        hint: "give each policy a unique name".into(),
                    });
                } else {
                    names.insert(p.identity.name.clone(), origin);
                }
            }
            Err(e) => {
                unnamed_failures = true;
                diags.push(Diagnostic::from_error(e));
            }
        }
    }
    for (b, text, origin) in bindings {
        if !is_dir && names.is_empty() {
            // A bindings file checked alone: nothing to resolve its names against.
            continue;
        }
        if let Err(mut e) = policy::check_references(&b, &text, &origin, |n| names.contains_key(n))
        {
            if unnamed_failures {
                e.hint
                    .push_str(" (some policy files in this directory failed to parse)");
            }
            diags.push(Diagnostic::from_error(e));
        }
    }
}

fn check(args: &CheckArgs) -> anyhow::Result<i32> {
    let (files, diagnostics) = check_paths(&args.paths);
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diagnostics.len() - errors;
    let mut out = std::io::stdout().lock();
    match args.format {
        OutputFormat::Json => {
            let report = CheckReport {
                files,
                errors,
                warnings,
                diagnostics,
            };
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        }
        OutputFormat::Text => {
            for d in &diagnostics {
                let sev = match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                };
                writeln!(
                    out,
                    "{}:{}:{}: {sev}[{}]: {}\n  hint: {}",
                    d.file, d.line, d.column, d.code, d.message, d.hint
                )?;
            }
            writeln!(
                out,
                "checked {files} file(s): {errors} error(s), {warnings} warning(s)"
            )?;
        }
    }
    Ok(if errors == 0 { 0 } else { 1 })
}

enum Source {
    One(std::sync::Arc<CompiledPolicy>),
    Set(PolicySet),
}

fn amount_arg(name: &str, text: &str) -> anyhow::Result<Decimal> {
    let d = crate::money::parse_decimal(text).map_err(|e| anyhow::anyhow!("--{name}: {e}"))?;
    anyhow::ensure!(
        !d.is_sign_negative(),
        "--{name} must not be negative, got {d}"
    );
    Ok(d)
}

pub fn run_evaluate(args: EvaluateArgs) -> anyhow::Result<i32> {
    let source = match (&args.policy, &args.policies) {
        (Some(file), _) => {
            let text = policy::read_text(file).map_err(|e| anyhow::anyhow!("{e}"))?;
            let p = CompiledPolicy::parse(&text, &file.display().to_string())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Source::One(std::sync::Arc::new(p))
        }
        (None, Some(dir)) => {
            Source::Set(PolicySet::load_dir(dir).map_err(|e| anyhow::anyhow!("{e}"))?)
        }
        (None, None) => anyhow::bail!("give --policy FILE or --policies DIR"),
    };
    let usage = Usage {
        daily_so_far: amount_arg("daily-so-far", &args.daily_so_far)?,
        monthly_so_far: amount_arg("monthly-so-far", &args.monthly_so_far)?,
    };
    let kill = if args.kill_switch {
        KillState::On {
            scope: "global".into(),
        }
    } else {
        KillState::Off
    };
    let at: chrono::DateTime<chrono::Utc> = match &args.at {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .with_context(|| {
                format!("--at {s:?} is not an RFC 3339 time like 2026-11-25T15:00:00Z")
            })?
            .into(),
        None => chrono::Utc::now(),
    };
    let reader: Box<dyn BufRead> = match &args.input {
        Some(p) => Box::new(std::io::BufReader::new(
            std::fs::File::open(p)
                .with_context(|| format!("cannot open --input {}", p.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let invalid = evaluate_lines(reader, &mut out, &source, usage, &kill, at)?;
    out.flush()?;
    Ok(if invalid > 0 { 2 } else { 0 })
}

/// Evaluates each line; returns how many lines were invalid.
fn evaluate_lines(
    mut reader: Box<dyn BufRead>,
    out: &mut impl Write,
    source: &Source,
    usage: Usage,
    kill: &KillState,
    at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<usize> {
    let mut invalid = 0usize;
    let mut line_no = 0usize;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let too_long = buf.len() >= MAX_LINE_BYTES && buf.last() != Some(&b'\n');
        if too_long {
            // Skip the rest of this line so the next line is read from its start.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest)?;
        }
        let bytes = trim_line(&buf);
        if bytes.is_empty() && !too_long {
            continue;
        }
        let result = if too_long {
            Err((
                "message_too_large",
                format!(
                    "line is longer than {} bytes",
                    crate::intent::MAX_INTENT_BYTES
                ),
            ))
        } else {
            decide_offline(bytes, source_ref(source), usage, kill, at)
                .map_err(|e| (e.code, e.message))
        };
        match result {
            Ok(decision) => serde_json::to_writer(&mut *out, &decision)?,
            Err((code, message)) => {
                invalid += 1;
                serde_json::to_writer(
                    &mut *out,
                    &serde_json::json!({"line": line_no, "error": {"code": code, "message": message}}),
                )?;
            }
        }
        out.write_all(b"\n")?;
    }
    Ok(invalid)
}

fn source_ref(s: &Source) -> SourceRef<'_> {
    match s {
        Source::One(p) => SourceRef::One(p),
        Source::Set(s) => SourceRef::Set(s),
    }
}

pub enum SourceRef<'a> {
    One(&'a std::sync::Arc<CompiledPolicy>),
    Set(&'a PolicySet),
}

fn trim_line(b: &[u8]) -> &[u8] {
    let mut end = b.len();
    while end > 0 && matches!(b[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &b[..end]
}

/// Decides one intent offline: the SPEC §3 decision without `ledgerSeq`.
pub fn decide_offline(
    bytes: &[u8],
    source: SourceRef<'_>,
    usage: Usage,
    kill: &KillState,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<DecisionMessage, crate::intent::IntentError> {
    let intent = crate::intent::parse_intent(bytes)?;
    let policy = match source {
        SourceRef::One(p) => Some(p.clone()),
        SourceRef::Set(s) => s.resolve(&intent.agent_id, &intent.entity_id),
    };
    // The ledger's own step, on a snapshot holding the usage and kill switch given.
    let mut snapshot = Projections::default();
    if let Some(p) = &policy {
        let (day, month, _) = usage::keys(&intent.agent_id, p.tz, p.currency.code, at);
        snapshot
            .windows
            .add(&day, usage.daily_so_far, Decimal::ZERO);
        snapshot
            .windows
            .add(&month, usage.monthly_so_far, Decimal::ZERO);
    }
    if let KillState::On { scope } = kill {
        snapshot.kills = machine::kills_from_scopes(&HashSet::from([scope.clone()]));
    }
    let verdict = machine::verdict(&snapshot, &intent, policy.as_deref(), at);
    let decided = machine::decided(intent, policy.as_deref(), verdict, [0; 32], None, at);
    Ok(machine::decision_message(&decided, None))
}
