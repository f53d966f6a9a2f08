//! Policy tests (`spendguard policy test`, SPEC §16): test files beside the policies
//! state intents, what came before them and the expected decision; each case is decided
//! by the ledger's own pure step (`ledger::machine::verdict`), with its prior intents
//! decided and folded into the same `Projections` the live ledger keeps, so caps,
//! calendar and trailing windows, limits and reservations behave exactly as live.
//!
//! The file format is documented in docs/policy-language.md ("Testing policies").

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;

use super::{CompiledPolicy, PolicySet};
use crate::decision::{Effect, Evaluation};
use crate::intent::SpendIntent;
use crate::ledger::Outcome;
use crate::ledger::events::LedgerEvent;
use crate::ledger::machine::{self, Projections, Recorded};
use crate::ledger::usage;

/// Sub-directory of a policy directory holding its test files.
pub const TESTS_DIR: &str = "tests";
/// Largest test file read (they are written by people).
pub const MAX_TEST_FILE_BYTES: u64 = 1024 * 1024;
/// Agent and entity of an intent that names neither (nor do the file's `defaults`).
pub const DEFAULT_AGENT: &str = "test-agent";
pub const DEFAULT_ENTITY: &str = "test-entity";

/// A test file that cannot be used (unreadable, not the format, an invalid intent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct TestFileError {
    pub origin: String,
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TestFile {
    /// The policy every intent is decided under; without it each intent is resolved
    /// through the directory's bindings, as live.
    #[serde(default)]
    policy: Option<String>,
    /// Intent fields every intent of the file starts from.
    #[serde(default)]
    defaults: serde_json::Map<String, serde_json::Value>,
    cases: Vec<TestCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TestCase {
    name: String,
    /// The moment the ledger accepts the intent (windows and Rego see it).
    at: DateTime<Utc>,
    #[serde(default)]
    usage: Option<UsageSoFar>,
    /// A tripped kill switch: `global`, `entity:ID` or `agent:ID`.
    #[serde(default)]
    kill_switch: Option<String>,
    #[serde(default)]
    prior: Vec<serde_json::Map<String, serde_json::Value>>,
    intent: serde_json::Map<String, serde_json::Value>,
    expect: Expect,
}

/// Spend already counted in the intent's calendar day / month (on top of `prior`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UsageSoFar {
    #[serde(default)]
    daily_so_far: Option<serde_json::Value>,
    #[serde(default)]
    monthly_so_far: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    effect: Effect,
    /// Every finding's code, in the decision's order (most severe first).
    #[serde(default)]
    codes: Option<Vec<String>>,
    /// Codes that must be among the findings (others may be too).
    #[serde(default)]
    codes_include: Option<Vec<String>>,
    #[serde(default)]
    approvals_required: Option<u32>,
}

/// What became of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseStatus {
    Passed,
    /// The decision differs from the expectation: readable lines, one per difference,
    /// then the decision's findings.
    Failed(Vec<String>),
    /// The case could not be run (an invalid intent, priors out of order, ...).
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub name: String,
    pub status: CaseStatus,
}

/// The cases of one test file, or why the file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileResult {
    pub file: String,
    pub cases: Vec<CaseResult>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TestRun {
    pub files: Vec<FileResult>,
}

impl TestRun {
    pub fn total(&self) -> usize {
        self.files.iter().map(|f| f.cases.len()).sum()
    }

    fn count(&self, pred: impl Fn(&CaseStatus) -> bool) -> usize {
        self.files
            .iter()
            .flat_map(|f| &f.cases)
            .filter(|c| pred(&c.status))
            .count()
    }

    pub fn passed(&self) -> usize {
        self.count(|s| matches!(s, CaseStatus::Passed))
    }

    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, CaseStatus::Failed(_)))
    }

    /// Cases that could not run plus files that could not be read.
    pub fn errors(&self) -> usize {
        self.count(|s| matches!(s, CaseStatus::Error(_)))
            + self.files.iter().filter(|f| f.error.is_some()).count()
    }

    pub fn ok(&self) -> bool {
        self.failed() == 0 && self.errors() == 0
    }
}

/// Test files of a policy directory: `DIR/tests/*.test.{yaml,yml,json}`, sorted.
pub fn test_files(dir: &Path) -> Result<Vec<PathBuf>, TestFileError> {
    let tests = dir.join(TESTS_DIR);
    let origin = tests.display().to_string();
    let rd = std::fs::read_dir(&tests).map_err(|e| TestFileError {
        origin: origin.clone(),
        message: format!("cannot read the test directory: {e}"),
    })?;
    let mut out = Vec::new();
    for entry in rd {
        let path = entry
            .map_err(|e| TestFileError {
                origin: origin.clone(),
                message: e.to_string(),
            })?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_file()
            && [".test.yaml", ".test.yml", ".test.json"]
                .iter()
                .any(|s| name.ends_with(s))
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Runs every case of the given test files against `set`.
pub fn run_files(set: &PolicySet, files: &[PathBuf]) -> TestRun {
    let mut run = TestRun::default();
    for path in files {
        let origin = path.display().to_string();
        let result = match read(path) {
            Ok(text) => run_text(set, &text, &origin),
            Err(e) => FileResult {
                file: origin,
                cases: Vec::new(),
                error: Some(e.message),
            },
        };
        run.files.push(result);
    }
    run
}

fn read(path: &Path) -> Result<String, TestFileError> {
    let origin = path.display().to_string();
    let err = |message: String| TestFileError {
        origin: origin.clone(),
        message,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(format!("cannot read: {e}")))?
        .len();
    if len > MAX_TEST_FILE_BYTES {
        return Err(err(format!(
            "file is {len} bytes; the limit is {MAX_TEST_FILE_BYTES}: split it"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|e| err(format!("not UTF-8: {e}")))
}

/// Runs the cases of one test file's text (YAML or JSON) against `set`.
pub fn run_text(set: &PolicySet, text: &str, origin: &str) -> FileResult {
    let mut result = FileResult {
        file: origin.to_string(),
        cases: Vec::new(),
        error: None,
    };
    let file: TestFile = match serde_yaml::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            let at = e
                .location()
                .map(|l| format!("{}:{}: ", l.line(), l.column()))
                .unwrap_or_default();
            result.error = Some(format!(
                "{at}{e} (see docs/policy-language.md, \"Testing policies\")"
            ));
            return result;
        }
    };
    let fixed = match &file.policy {
        Some(name) => match set.get(name) {
            Some(p) => Some(p.clone()),
            None => {
                let known: Vec<&str> = set.policies().map(|p| p.identity.name.as_str()).collect();
                result.error = Some(format!(
                    "policy {name:?} is not in the directory (it has: {})",
                    known.join(", ")
                ));
                return result;
            }
        },
        None => None,
    };
    let mut names = HashSet::new();
    for (i, case) in file.cases.iter().enumerate() {
        let status = if !names.insert(case.name.as_str()) {
            CaseStatus::Error(format!(
                "another case is also named {:?}: give each a unique name",
                case.name
            ))
        } else {
            match run_case(set, fixed.as_ref(), &file.defaults, case, i) {
                Ok(eval) => compare(&case.expect, &eval),
                Err(e) => CaseStatus::Error(e),
            }
        };
        result.cases.push(CaseResult {
            name: case.name.clone(),
            status,
        });
    }
    result
}

/// Decides a case's prior intents (and their outcomes) then its intent, with the
/// ledger's step and fold; returns the intent's evaluation.
fn run_case(
    set: &PolicySet,
    fixed: Option<&std::sync::Arc<CompiledPolicy>>,
    defaults: &serde_json::Map<String, serde_json::Value>,
    case: &TestCase,
    index: usize,
) -> Result<Evaluation, String> {
    let mut sim = Projections::default();
    let mut seq = 0i64;
    let mut last = DateTime::<Utc>::MIN_UTC;
    for (n, prior) in case.prior.iter().enumerate() {
        let mut fields = prior.clone();
        let at = take_time(&mut fields, "at")
            .map_err(|e| format!("prior[{n}]: {e}"))?
            .ok_or_else(|| format!("prior[{n}]: missing `at` (when the ledger accepted it)"))?;
        if at < last || at > case.at {
            return Err(format!(
                "prior[{n}]: at {at} is out of order: priors come in time order, before the case's at {}",
                case.at
            ));
        }
        last = at;
        let outcome = match fields.remove("outcome") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(match Outcome::parse(&s) {
                Some(o @ (Outcome::Approved | Outcome::Rejected | Outcome::Expired)) => o,
                _ => {
                    return Err(format!(
                        "prior[{n}]: outcome {s:?}: use APPROVED, REJECTED or EXPIRED (or leave it out: still waiting)"
                    ));
                }
            }),
            Some(other) => return Err(format!("prior[{n}]: outcome {other} is not a string")),
        };
        let (intent, policy) = build_intent(set, fixed, defaults, &fields, index, n)
            .map_err(|e| format!("prior[{n}]: {e}"))?;
        let verdict = machine::verdict(&sim, &intent, policy.as_deref(), at);
        let waits = verdict.evaluation.effect.needs_approval();
        let decided = machine::decided(
            intent.clone(),
            policy.as_deref(),
            verdict,
            [0; 32],
            None,
            at,
        );
        seq += 1;
        fold(
            &mut sim,
            seq,
            at,
            &LedgerEvent::IntentDecided(Box::new(decided)),
        )
        .map_err(|e| format!("prior[{n}]: {e}"))?;
        if let Some(outcome) = outcome {
            let Some(p) = sim.pending.get(&intent.intent_id).filter(|_| waits) else {
                return Err(format!(
                    "prior[{n}]: outcome {} given, but the intent was not waiting for approval",
                    outcome.as_str()
                ));
            };
            let closed = machine::close(&p, outcome, Vec::new(), None, at, "policy-test");
            seq += 1;
            fold(&mut sim, seq, at, &closed.event).map_err(|e| format!("prior[{n}]: {e}"))?;
        }
    }
    let (intent, policy) =
        build_intent(set, fixed, defaults, &case.intent, index, case.prior.len())
            .map_err(|e| format!("intent: {e}"))?;
    if let (Some(u), Some(p)) = (&case.usage, &policy) {
        let (day, month, _) = usage::keys(&intent.agent_id, p.tz, p.currency.code, case.at);
        let daily = so_far(&u.daily_so_far, "usage.dailySoFar")?;
        let monthly = so_far(&u.monthly_so_far, "usage.monthlySoFar")?;
        sim.windows.add(&day, daily, Decimal::ZERO);
        sim.windows.add(&month, monthly, Decimal::ZERO);
    }
    if let Some(scope) = &case.kill_switch {
        crate::kill_switch::Scope::parse(scope).map_err(|e| format!("killSwitch: {e}"))?;
        sim.kills = machine::kills_from_scopes(&HashSet::from([scope.clone()]));
    }
    Ok(machine::verdict(&sim, &intent, policy.as_deref(), case.at).evaluation)
}

fn fold(sim: &mut Projections, seq: i64, at: DateTime<Utc>, e: &LedgerEvent) -> Result<(), String> {
    let r = Recorded {
        seq,
        hash: [0; 32],
        recorded_at: at,
    };
    sim.apply(&r, e).map(|_| ()).map_err(|e| e.to_string())
}

fn so_far(v: &Option<serde_json::Value>, what: &str) -> Result<Decimal, String> {
    let text = match v {
        None => return Ok(Decimal::ZERO),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(other) => return Err(format!("{what}: {other} is not an amount")),
    };
    let d = crate::money::parse_decimal(&text).map_err(|e| format!("{what}: {e}"))?;
    if d.is_sign_negative() {
        return Err(format!("{what}: {d} is negative"));
    }
    Ok(d)
}

fn take_time(
    fields: &mut serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Result<Option<DateTime<Utc>>, String> {
    match fields.remove(key) {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| {
                format!("`{key}` {s:?} is not an RFC 3339 time like 2026-11-25T15:00:00Z: {e}")
            }),
        Some(other) => Err(format!("`{key}` {other} is not an RFC 3339 time")),
    }
}

/// The intent of a case: the file's defaults, then the given fields; `intentId`,
/// `agentId`, `entityId` and `currency` (the policy's) are filled in when absent. It is
/// parsed by the same parser as live intents.
fn build_intent(
    set: &PolicySet,
    fixed: Option<&std::sync::Arc<CompiledPolicy>>,
    defaults: &serde_json::Map<String, serde_json::Value>,
    fields: &serde_json::Map<String, serde_json::Value>,
    case: usize,
    n: usize,
) -> Result<(SpendIntent, Option<std::sync::Arc<CompiledPolicy>>), String> {
    let mut obj = defaults.clone();
    for (k, v) in fields {
        obj.insert(k.clone(), v.clone());
    }
    let str_of = |obj: &serde_json::Map<String, serde_json::Value>, k: &str, d: &str| {
        obj.get(k).and_then(|v| v.as_str()).unwrap_or(d).to_string()
    };
    let agent = str_of(&obj, "agentId", DEFAULT_AGENT);
    let entity = str_of(&obj, "entityId", DEFAULT_ENTITY);
    let policy = match fixed {
        Some(p) => Some(p.clone()),
        None => set.resolve(&agent, &entity),
    };
    let defaults = [
        ("intentId", format!("case{}-{}", case + 1, n + 1)),
        ("agentId", agent),
        ("entityId", entity),
    ];
    for (k, v) in defaults {
        obj.entry(k).or_insert(serde_json::Value::String(v));
    }
    if let Some(p) = &policy {
        obj.entry("currency")
            .or_insert(serde_json::Value::String(p.currency.code.to_string()));
    }
    let bytes = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
    let intent = crate::intent::parse_intent(&bytes).map_err(|e| e.to_string())?;
    Ok((intent, policy))
}

/// Compares a decision with the expectation; every difference is a line.
fn compare(expect: &Expect, got: &Evaluation) -> CaseStatus {
    let mut diff = Vec::new();
    let codes: Vec<&str> = got.reasons.iter().map(|f| f.code.as_ref()).collect();
    if expect.effect != got.effect {
        diff.push(format!(
            "effect: expected {}, got {}",
            expect.effect.as_str(),
            got.effect.as_str()
        ));
    }
    if let Some(want) = &expect.codes
        && want.iter().map(String::as_str).ne(codes.iter().copied())
    {
        diff.push(format!(
            "codes: expected [{}], got [{}]",
            want.join(", "),
            codes.join(", ")
        ));
        for w in want.iter().filter(|w| !codes.contains(&w.as_str())) {
            diff.push(format!("  - {w} (expected, missing)"));
        }
        for c in codes.iter().filter(|c| !want.iter().any(|w| w == *c)) {
            diff.push(format!("  + {c} (not expected)"));
        }
    }
    if let Some(want) = &expect.codes_include {
        for w in want.iter().filter(|w| !codes.contains(&w.as_str())) {
            diff.push(format!("codesInclude: {w} is not among the findings"));
        }
    }
    if let Some(want) = expect.approvals_required
        && want != got.approvals_required
    {
        diff.push(format!(
            "approvalsRequired: expected {want}, got {}",
            got.approvals_required
        ));
    }
    if diff.is_empty() {
        return CaseStatus::Passed;
    }
    diff.push("decision:".to_string());
    for f in &got.reasons {
        diff.push(format!("  {} {}: {}", f.effect.as_str(), f.code, f.detail));
    }
    CaseStatus::Failed(diff)
}

/// The human summary: one line per failing or erroring case with its differences, then
/// the totals.
pub fn render_text(run: &TestRun, verbose: bool) -> String {
    let mut out = String::new();
    for f in &run.files {
        if let Some(e) = &f.error {
            out.push_str(&format!("ERROR {}: {e}\n", f.file));
        }
        for c in &f.cases {
            match &c.status {
                CaseStatus::Passed if verbose => {
                    out.push_str(&format!("ok    {}: {}\n", f.file, c.name));
                }
                CaseStatus::Passed => {}
                CaseStatus::Failed(lines) => {
                    out.push_str(&format!("FAIL  {}: {}\n", f.file, c.name));
                    for l in lines {
                        out.push_str(&format!("      {l}\n"));
                    }
                }
                CaseStatus::Error(e) => {
                    out.push_str(&format!("ERROR {}: {}\n      {e}\n", f.file, c.name));
                }
            }
        }
    }
    out.push_str(&format!(
        "{} test(s) in {} file(s): {} passed, {} failed, {} error(s)\n",
        run.total(),
        run.files.len(),
        run.passed(),
        run.failed(),
        run.errors()
    ));
    out
}

/// JUnit XML (the de-facto format CI systems read): one `testsuite` per file, one
/// `testcase` per case; a failing case has a `failure` with the differences, a case or
/// file that could not run an `error`.
pub fn junit_xml(run: &TestRun) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    x.push_str(&format!(
        "<testsuites name=\"spendguard policy test\" tests=\"{}\" failures=\"{}\" errors=\"{}\">\n",
        run.total(),
        run.failed(),
        run.errors()
    ));
    for f in &run.files {
        let failures = f
            .cases
            .iter()
            .filter(|c| matches!(c.status, CaseStatus::Failed(_)))
            .count();
        let errors = f
            .cases
            .iter()
            .filter(|c| matches!(c.status, CaseStatus::Error(_)))
            .count()
            + usize::from(f.error.is_some());
        x.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"{errors}\">\n",
            xml_escape(&f.file),
            f.cases.len()
        ));
        if let Some(e) = &f.error {
            x.push_str(&format!(
                "    <error message=\"test file could not be read\">{}</error>\n",
                xml_escape(e)
            ));
        }
        for c in &f.cases {
            let open = format!(
                "    <testcase classname=\"{}\" name=\"{}\"",
                xml_escape(&f.file),
                xml_escape(&c.name)
            );
            match &c.status {
                CaseStatus::Passed => x.push_str(&format!("{open}/>\n")),
                CaseStatus::Failed(lines) => x.push_str(&format!(
                    "{open}>\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                    xml_escape(lines.first().map_or("", String::as_str)),
                    xml_escape(&lines.join("\n"))
                )),
                CaseStatus::Error(e) => x.push_str(&format!(
                    "{open}>\n      <error message=\"{}\"/>\n    </testcase>\n",
                    xml_escape(e)
                )),
            }
        }
        x.push_str("  </testsuite>\n");
    }
    x.push_str("</testsuites>\n");
    x
}

/// Escapes text for XML content and attribute values. Characters XML 1.0 cannot carry at
/// all (control characters other than tab and newline) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
name: unit
version: "1"
currency: BRL
timezone: America/Sao_Paulo
caps: { perTxn: "500.00", daily: "1000.00", monthly: "5000.00" }
msig: { threshold: { higherThan: "300.00", approvals: 2 } }
blockLists: { categories: [gambling] }
"#;

    fn set() -> PolicySet {
        let p = CompiledPolicy::parse(POLICY, "unit.yaml").unwrap();
        PolicySet::new(vec![p], super::super::Bindings::default()).unwrap()
    }

    fn run(text: &str) -> FileResult {
        run_text(&set(), text, "t.test.yaml")
    }

    const BASE: &str = r#"
policy: unit
defaults: { category: utility, purpose: PIX, beneficiary: { id: "utility:light", country: BR } }
cases:
"#;

    #[test]
    fn passing_cases_with_prior_intents_in_the_same_day() {
        let r = run(&format!(
            "{BASE}{}",
            r#"
  - name: within caps
    at: 2026-11-25T15:00:00Z
    intent: { amount: "100.00" }
    expect: { effect: ALLOW, codes: [policy_compliant_all_checks_passed], approvalsRequired: 0 }
  - name: third intent of the day passes the daily cap
    at: 2026-11-25T15:00:00Z
    prior:
      - { at: 2026-11-25T10:00:00Z, amount: "300.00" }
      - { at: 2026-11-25T11:00:00Z, amount: "300.00" }
      - { at: 2026-11-25T12:00:00Z, amount: "300.00" }
    intent: { amount: "200.00" }
    expect: { effect: REQUIRE_HITL, codes: [would_exceed_daily_limit], approvalsRequired: 1 }
  - name: a rejected wait releases its reservation
    at: 2026-11-25T15:00:00Z
    prior:
      - { at: 2026-11-25T10:00:00Z, amount: "450.00", outcome: REJECTED }
      - { at: 2026-11-25T11:00:00Z, amount: "300.00" }
      - { at: 2026-11-25T12:00:00Z, amount: "300.00" }
    intent: { amount: "200.00" }
    expect: { effect: ALLOW }
  - name: the previous local day does not count
    at: 2026-11-25T15:00:00Z
    prior:
      - { at: 2026-11-25T02:00:00Z, amount: "300.00" }
      - { at: 2026-11-25T02:30:00Z, amount: "300.00" }
      - { at: 2026-11-25T02:59:00Z, amount: "300.00" }
    intent: { amount: "200.00" }
    expect: { effect: ALLOW }
"#
        ));
        assert_eq!(r.error, None);
        for c in &r.cases {
            assert_eq!(c.status, CaseStatus::Passed, "{}", c.name);
        }
        assert_eq!(r.cases.len(), 4);
    }

    #[test]
    fn a_wrong_expectation_fails_with_a_readable_diff() {
        let r = run(&format!(
            "{BASE}{}",
            r#"
  - name: gambling
    at: 2026-11-25T15:00:00Z
    intent: { amount: "400.00", category: gambling }
    expect: { effect: REQUIRE_MSIG, codes: [amount_requires_multiple_approvals], approvalsRequired: 2 }
"#
        ));
        let CaseStatus::Failed(lines) = &r.cases[0].status else {
            panic!("expected a failure, got {:?}", r.cases[0].status);
        };
        let text = lines.join("\n");
        assert!(
            text.contains("effect: expected REQUIRE_MSIG, got DENY"),
            "{text}"
        );
        assert!(
            text.contains("codes: expected [amount_requires_multiple_approvals], got [category_blocked, amount_requires_multiple_approvals]"),
            "{text}"
        );
        assert!(text.contains("+ category_blocked (not expected)"), "{text}");
        assert!(
            text.contains("approvalsRequired: expected 2, got 0"),
            "{text}"
        );
        assert!(text.contains("DENY category_blocked"), "{text}");
    }

    #[test]
    fn invalid_files_and_cases_are_errors_not_passes() {
        let r = run("cases: [ { name: x, at: nope } ]");
        assert!(r.error.is_some());
        let r = run(&format!(
            "{BASE}{}",
            r#"
  - name: negative amount
    at: 2026-11-25T15:00:00Z
    intent: { amount: "-1" }
    expect: { effect: DENY }
  - name: priors out of order
    at: 2026-11-25T15:00:00Z
    prior:
      - { at: 2026-11-25T16:00:00Z, amount: "1.00" }
    intent: { amount: "1.00" }
    expect: { effect: ALLOW }
  - name: outcome of an allowed intent
    at: 2026-11-25T15:00:00Z
    prior:
      - { at: 2026-11-25T10:00:00Z, amount: "1.00", outcome: APPROVED }
    intent: { amount: "1.00" }
    expect: { effect: ALLOW }
"#
        ));
        assert_eq!(r.cases.len(), 3);
        for c in &r.cases {
            assert!(matches!(c.status, CaseStatus::Error(_)), "{c:?}");
        }
        let r = run_text(&set(), "policy: nope\ncases: []", "t");
        assert!(
            r.error
                .as_deref()
                .unwrap()
                .contains("\"nope\" is not in the directory")
        );
    }

    #[test]
    fn junit_output_is_well_formed_and_escaped() {
        let run = TestRun {
            files: vec![
                FileResult {
                    file: "a&b.test.yaml".into(),
                    cases: vec![
                        CaseResult {
                            name: "ok <1>".into(),
                            status: CaseStatus::Passed,
                        },
                        CaseResult {
                            name: "bad \"quote\" 'x'".into(),
                            status: CaseStatus::Failed(vec![
                                "effect: expected ALLOW, got DENY".into(),
                                "ctl \u{1} & <tag>".into(),
                            ]),
                        },
                        CaseResult {
                            name: "err".into(),
                            status: CaseStatus::Error("missing_field: amount".into()),
                        },
                    ],
                    error: None,
                },
                FileResult {
                    file: "broken.test.yaml".into(),
                    cases: vec![],
                    error: Some("1:1: oops".into()),
                },
            ],
        };
        let xml = junit_xml(&run);
        assert!(
            xml.contains(
                r#"<testsuites name="spendguard policy test" tests="3" failures="1" errors="2">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"<testsuite name="a&amp;b.test.yaml" tests="3" failures="1" errors="1">"#
            ),
            "{xml}"
        );
        assert!(
            xml.contains(r#"name="bad &quot;quote&quot; &apos;x&apos;""#),
            "{xml}"
        );
        assert!(xml.contains("ctl \u{FFFD} &amp; &lt;tag&gt;"), "{xml}");
        assert!(!xml.contains('\u{1}'));
        well_formed(&xml);
    }

    /// A small checker: every tag closes in order, attributes are quoted, and `&` only
    /// starts a known entity (what JUnit readers' XML parsers insist on).
    fn well_formed(xml: &str) {
        let body = xml
            .strip_prefix("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n")
            .unwrap();
        let mut stack: Vec<String> = Vec::new();
        let mut rest = body;
        while let Some(lt) = rest.find('<') {
            check_text(&rest[..lt]);
            let gt = rest[lt..].find('>').expect("unclosed tag") + lt;
            let tag = &rest[lt + 1..gt];
            assert!(!tag.contains('<'), "{tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "mismatched </{name}>");
            } else {
                let self_closing = tag.ends_with('/');
                let tag = tag.trim_end_matches('/');
                let name = tag.split_whitespace().next().unwrap().to_string();
                let attrs = &tag[name.len()..];
                assert_eq!(attrs.matches('"').count() % 2, 0, "{tag}");
                check_text(attrs);
                if !self_closing {
                    stack.push(name);
                }
            }
            rest = &rest[gt + 1..];
        }
        check_text(rest);
        assert!(stack.is_empty(), "unclosed: {stack:?}");
    }

    fn check_text(t: &str) {
        for (i, _) in t.match_indices('&') {
            let ent = &t[i..t[i..].find(';').map_or(t.len(), |e| i + e + 1)];
            assert!(
                [
                    "&amp;", "&lt;", "&gt;", "&quot;", "&apos;", "&#10;", "&#9;", "&#13;"
                ]
                .contains(&ent),
                "bad entity {ent}"
            );
        }
        assert!(!t.contains('>'), "raw > in {t}");
    }
}
