//! Lints: conflicts and mistakes in a policy that parses fine (SPEC §2.4). Each lint has a
//! stable code and a severity; errors make `spendguard policy check` fail.

use super::compile::{Matcher, rule_key};
use super::limits::CompiledLimit;
use super::model::{
    CalendarWindow, Conditions, LimitScope, LimitSpec, Pattern, PolicySpec, WindowKind,
};
use crate::decision::Effect;
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lint {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    pub hint: &'static str,
    /// Keys leading to the offending node, for [`super::error::locate`].
    #[serde(skip)]
    pub keys: Vec<String>,
}

/// Every lint code with its severity, for documentation and tests.
pub const LINT_CODES: [(&str, Severity); 16] = [
    ("rule_shadowed", Severity::Warning),
    ("rule_unreachable", Severity::Warning),
    ("rule_order_can_lower_severity", Severity::Warning),
    ("daily_below_per_txn", Severity::Warning),
    ("monthly_below_daily", Severity::Warning),
    ("pattern_allowed_and_blocked", Severity::Error),
    ("msig_threshold_above_per_txn", Severity::Warning),
    ("allow_rule_relaxes_nothing", Severity::Warning),
    ("unknown_category", Severity::Warning),
    ("unknown_country", Severity::Error),
    ("missing_version", Severity::Warning),
    ("duplicate_limit_name", Severity::Error),
    ("count_limit_zero", Severity::Error),
    ("limit_filter_matches_nothing", Severity::Error),
    ("limit_unreachable", Severity::Warning),
    ("limit_redundant_with_caps", Severity::Warning),
];

fn severity_of(code: &str) -> Severity {
    LINT_CODES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(Severity::Error, |(_, s)| *s)
}

/// Categories spendguard knows; others are allowed but probably typos.
pub const KNOWN_CATEGORIES: &[&str] = &[
    "adult_content",
    "advertising",
    "cloud",
    "consulting",
    "crypto",
    "donation",
    "education",
    "entertainment",
    "fees",
    "food",
    "fuel",
    "gambling",
    "groceries",
    "healthcare",
    "insurance",
    "investment",
    "legal",
    "loan",
    "marketing",
    "office_supplies",
    "payroll",
    "refund",
    "rent",
    "retail",
    "savings",
    "software",
    "subscription",
    "supplier",
    "tax",
    "telecom",
    "transfer",
    "transport",
    "travel",
    "utility",
    "weapons",
];

/// ISO 3166-1 alpha-2 codes (officially assigned).
const ISO_COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

pub fn is_known_country(code: &str) -> bool {
    code.len() == 2 && ISO_COUNTRIES.split(' ').any(|c| c == code)
}

struct Out(Vec<Lint>);

impl Out {
    fn push(&mut self, code: &'static str, message: String, hint: &'static str, keys: &[&str]) {
        self.0.push(Lint {
            code,
            severity: severity_of(code),
            message,
            hint,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        });
    }
}

/// Lints a normalized policy (as produced by `parse_spec`; lists sorted, defaults set).
pub fn lint(spec: &PolicySpec) -> Vec<Lint> {
    let mut out = Out(Vec::new());
    let per_txn = spec.caps.per_txn.0;
    let daily = spec.caps.daily.0;
    let monthly = spec.caps.monthly.0;
    let cur = spec.currency.0.as_str();
    if spec.version.is_none() {
        out.push(
            "missing_version",
            "the policy has no version; decisions will record \"unversioned\"".into(),
            "add `version: \"1.0.0\"` (or metadata.version) so decisions name the policy release",
            &["name"],
        );
    }
    if daily < per_txn {
        out.push("daily_below_per_txn", format!("caps.daily {daily} < caps.perTxn {per_txn} {cur}: a payment the per-transaction cap allows can exceed the daily cap alone"), "raise caps.daily to at least caps.perTxn, or lower caps.perTxn", &["caps", "daily"]);
    }
    if monthly < daily {
        out.push("monthly_below_daily", format!("caps.monthly {monthly} < caps.daily {daily} {cur}: the daily cap can never be reached"), "raise caps.monthly to at least caps.daily", &["caps", "monthly"]);
    }
    if let Some(m) = &spec.msig
        && m.threshold.higher_than.0 >= per_txn
    {
        out.push("msig_threshold_above_per_txn", format!("msig.threshold.higherThan {} >= caps.perTxn {per_txn} {cur}: every amount above it is denied, so multi-signature never applies", m.threshold.higher_than.0), "lower msig.threshold.higherThan below caps.perTxn, or remove msig", &["msig", "higherThan"]);
    }
    let allow_b: &[Pattern] = spec
        .allow_lists
        .as_ref()
        .and_then(|a| a.beneficiaries.as_deref())
        .unwrap_or(&[]);
    let block_b: &[Pattern] = spec.block_lists.as_ref().map_or(&[], |b| &b.beneficiaries);
    let block_c: &[Pattern] = spec.block_lists.as_ref().map_or(&[], |b| &b.categories);
    for p in allow_b {
        if block_b.contains(p) || (!p.is_glob() && Matcher::new(block_b).matches(&p.0)) {
            out.push("pattern_allowed_and_blocked", format!("beneficiary {:?} is in allowLists.beneficiaries and matched by blockLists.beneficiaries", p.0), "remove it from one of the lists: the block list always wins", &["allowLists", "beneficiaries", &p.0]);
        }
    }
    for c in block_c {
        check_category(&mut out, c, &["blockLists", "categories", &c.0]);
    }
    let allow_countries = spec
        .allow_lists
        .as_ref()
        .and_then(|a| a.countries.as_deref());
    for c in allow_countries.unwrap_or(&[]) {
        check_country(&mut out, &c.0, &["allowLists", "countries", &c.0]);
    }
    let blocked_cats = Matcher::new(block_c);
    for (i, rule) in spec.rules.iter().enumerate() {
        let n = i + 1;
        let key = rule_key(i);
        let keys = ["rules", key.as_str()];
        let w = &rule.when;
        for c in w.category_in.iter().flatten() {
            check_category(&mut out, c, &keys);
        }
        for c in w.country_in.iter().chain(w.country_not_in.iter()).flatten() {
            check_country(&mut out, &c.0, &keys);
        }
        // Unreachable: conditions no payment that survives the built-in DENY checks meets.
        if let Some(a) = w.amount_gt
            && a.0 >= per_txn
        {
            out.push("rule_unreachable", format!("rule {n}: amountGt {} >= caps.perTxn {per_txn} {cur}; such payments are already denied", a.0), "lower the threshold below caps.perTxn or remove the rule", &keys);
        } else if let Some(a) = w.amount_gte
            && a.0 > per_txn
        {
            out.push("rule_unreachable", format!("rule {n}: amountGte {} > caps.perTxn {per_txn} {cur}; such payments are already denied", a.0), "lower the threshold to at most caps.perTxn or remove the rule", &keys);
        } else if w.beneficiary_not_in_allow == Some(true)
            && spec
                .allow_lists
                .as_ref()
                .and_then(|a| a.beneficiaries.as_ref())
                .is_none()
        {
            out.push(
                "rule_unreachable",
                format!(
                    "rule {n}: beneficiaryNotInAllow but the policy has no allowLists.beneficiaries"
                ),
                "add allowLists.beneficiaries or remove the condition",
                &keys,
            );
        } else if let (Some(ci), Some(allowed)) = (&w.country_in, allow_countries)
            && ci.iter().all(|c| !allowed.contains(c))
        {
            out.push("rule_unreachable", format!("rule {n}: countryIn lists only countries outside allowLists.countries; such payments are already denied"), "fix the countries or remove the rule", &keys);
        }
        // Shadowed: an earlier rule matches whenever this one does.
        if let Some(j) = spec.rules[..i]
            .iter()
            .position(|earlier| implies(w, &earlier.when))
        {
            out.push("rule_shadowed", format!("rule {n} can never be the first match: rule {} matches every payment it matches", j + 1), "reorder the rules (most specific first) or remove the shadowed one", &keys);
        }
        if rule.then.effect == Effect::Allow {
            let later = &spec.rules[i + 1..];
            let covered = later.iter().all(|r| covered_by_builtins(r, spec));
            let only_blocked = w.category_in.as_ref().is_some_and(|cs| {
                !cs.is_empty()
                    && cs
                        .iter()
                        .all(|c| !c.is_glob() && blocked_cats.matches(&c.0))
            });
            if covered || only_blocked {
                out.push("allow_rule_relaxes_nothing", format!("rule {n} is ALLOW but cannot relax anything: an ALLOW rule only skips later rules, and {}", if only_blocked { "its categories are blocked anyway" } else { "no later rule decides anything the caps, lists and msig threshold do not already decide" }), "remove it, or place it before the rules it should skip; caps, lists and msig always apply", &keys);
            }
        }
        if (w.amount_gt.is_some() || w.amount_gte.is_some())
            && let Some(k) = spec.rules[i + 1..]
                .iter()
                .position(|r| r.then.effect > rule.then.effect)
        {
            out.push("rule_order_can_lower_severity", format!("rule {n} ({} on an amount condition) comes before the stricter rule {} ({}): raising the amount can make rule {n} match first and lower the decision", rule.then.effect, n + 1 + k, spec.rules[i + 1 + k].then.effect), "order rules from most to least severe", &keys);
        }
    }
    lint_limits(&mut out, spec);
    out.0
}

/// Key of the i-th limit for [`super::error::locate`]: its `name` (every limit has one),
/// counted from the `limits` key.
fn limit_keys(i: usize) -> [String; 2] {
    ["limits".to_string(), format!("name#{i}")]
}

/// Lints of SPEC §12's limits: duplicates, count 0, filters matching nothing, limits that
/// can never change a decision (another limit or a cap always fires with them).
fn lint_limits(out: &mut Out, spec: &PolicySpec) {
    let compiled: Vec<CompiledLimit> = spec.limits.iter().map(CompiledLimit::compile).collect();
    let cur = spec.currency.0.as_str();
    for (i, (l, c)) in spec.limits.iter().zip(&compiled).enumerate() {
        let keys = limit_keys(i);
        let keys: [&str; 2] = [&keys[0], &keys[1]];
        let name = &l.name;
        if let Some(j) = spec.limits[..i].iter().position(|e| e.name == *name) {
            out.push("duplicate_limit_name", format!("limit {name:?} is defined twice (limits {} and {}); reasons name limits, so names must be unique", j + 1, i + 1), "rename one of them", &keys);
        }
        if l.count == Some(0) {
            out.push(
                "count_limit_zero",
                format!(
                    "limit {name:?}: count 0 means no intent it covers can ever pass (0 + 1 > 0)"
                ),
                "use a count of at least 1, or block the payments with blockLists or a DENY rule",
                &keys,
            );
        }
        if c.filter.matches_nothing() {
            out.push("limit_filter_matches_nothing", format!("limit {name:?}: its filter has an empty list, so no intent ever counts toward it or is checked by it"), "fill the list or remove that filter condition", &keys);
            continue;
        }
        if let Some(why) = filter_always_denied(l, spec) {
            out.push(
                "limit_unreachable",
                format!("limit {name:?}: {why}; such payments are denied before any limit matters"),
                "fix the filter or remove the limit",
                &keys,
            );
            continue;
        }
        // Another limit that always fires with this one, at least as severely.
        let covering = (0..compiled.len()).find(|&j| {
            j != i
                && covers(&spec.limits[j], &compiled[j], l, c)
                && !(j > i && covers(l, c, &spec.limits[j], &compiled[j]))
        });
        if let Some(j) = covering {
            let other = &spec.limits[j];
            out.push("limit_unreachable", format!("limit {name:?} ({}, {}) can never change a decision: whenever it is exceeded, limit {:?} ({}, {}; same scope and filter, a window containing this one) is exceeded too, with an effect at least as severe", window_name(c.window), describe(l, cur), other.name, window_name(compiled[j].window), describe(other, cur)), "lower this limit below the wider one, or remove it", &keys);
            continue;
        }
        // A cap that always fires with it: caps.daily / caps.monthly are REQUIRE_HITL on the
        // agent's spend in the calendar day / month (every intent, so any filter is narrower).
        if let (
            Some(amount),
            LimitScope::Agent,
            crate::decision::Effect::RequireHitl,
            WindowKind::Calendar(w),
        ) = (c.amount, c.scope, c.effect, c.window)
        {
            let cap = match w {
                CalendarWindow::Day => {
                    Some(("caps.daily", spec.caps.daily.0.min(spec.caps.monthly.0)))
                }
                CalendarWindow::Month => Some(("caps.monthly", spec.caps.monthly.0)),
                _ => None,
            };
            if let Some((cap_name, cap)) = cap
                && amount >= cap
            {
                let cap_name =
                    if w == CalendarWindow::Day && spec.caps.monthly.0 < spec.caps.daily.0 {
                        "caps.monthly"
                    } else {
                        cap_name
                    };
                out.push("limit_redundant_with_caps", format!("limit {name:?}: amount {amount} >= {cap_name} {cap} {cur} over the agent's calendar {}: whenever the amount is exceeded, {cap_name} is too (REQUIRE_HITL, like this limit)", window_name(c.window)), "lower the amount below the cap, use a stricter effect, or drop the amount", &keys);
            }
        }
    }
}

/// Why every intent passing `l`'s filter is denied by the lists anyway, if it is.
fn filter_always_denied(l: &LimitSpec, spec: &PolicySpec) -> Option<String> {
    let f = l.filter.as_ref()?;
    if let (Some(ci), Some(allowed)) = (
        &f.country_in,
        spec.allow_lists.as_ref().and_then(|a| a.countries.as_ref()),
    ) && ci.iter().all(|c| !allowed.contains(c))
    {
        return Some("filter countryIn lists only countries outside allowLists.countries".into());
    }
    let blocked = spec
        .block_lists
        .as_ref()
        .map_or(&[][..], |b| &b.categories[..]);
    if let Some(cats) = &f.category_in
        && !blocked.is_empty()
        && cats
            .iter()
            .all(|c| !c.is_glob() && Matcher::new(blocked).matches(&c.0))
    {
        return Some("filter categoryIn lists only blocked categories".into());
    }
    None
}

/// True when limit `b` is exceeded whenever limit `a` is, with a finding at least as severe:
/// same scope and filter, `a`'s window certainly inside `b`'s (records count
/// non-negatively, so `b` sums at least what `a` does), and each of `a`'s bounds at least
/// `b`'s.
fn covers(b: &LimitSpec, cb: &CompiledLimit, a: &LimitSpec, ca: &CompiledLimit) -> bool {
    let severe = cb.effect > ca.effect || (cb.effect == ca.effect && cb.approvals >= ca.approvals);
    let amount_ok = match (ca.amount, cb.amount) {
        (None, _) => true,
        (Some(x), Some(y)) => x >= y,
        (Some(_), None) => false,
    };
    let count_ok = match (ca.count, cb.count) {
        (None, _) => true,
        (Some(x), Some(y)) => x >= y,
        (Some(_), None) => false,
    };
    ca.scope == cb.scope
        && a.filter.clone().unwrap_or_default() == b.filter.clone().unwrap_or_default()
        && window_within(ca.window, cb.window)
        && severe
        && amount_ok
        && count_ok
}

/// True when window `a` is certainly inside window `b` at every instant. Calendar windows:
/// a day lies in its week, month and year, a month in its year; an ISO week can straddle
/// two months or two years, so it lies in no month or year. Trailing windows: by length.
/// A trailing window is inside no calendar window but all time (and no calendar window is
/// certainly inside a trailing one: days can last 25 hours).
fn window_within(a: WindowKind, b: WindowKind) -> bool {
    use CalendarWindow::*;
    match (a, b) {
        (_, WindowKind::Calendar(AllTime)) => true,
        (WindowKind::Trailing(x), WindowKind::Trailing(y)) => x <= y,
        (WindowKind::Calendar(x), WindowKind::Calendar(y)) => {
            x == y || matches!((x, y), (Day, Week | Month | Year) | (Month, Year))
        }
        _ => false,
    }
}

fn window_name(w: WindowKind) -> String {
    match w {
        WindowKind::Calendar(c) => match c {
            CalendarWindow::Day => "day".into(),
            CalendarWindow::Week => "week".into(),
            CalendarWindow::Month => "month".into(),
            CalendarWindow::Year => "year".into(),
            CalendarWindow::AllTime => "all_time".into(),
        },
        WindowKind::Trailing(s) => format!("trailing {s}s"),
    }
}

fn describe(l: &LimitSpec, cur: &str) -> String {
    match (&l.amount, l.count) {
        (Some(a), Some(n)) => format!("{} {cur}, {n} intents", a.0),
        (Some(a), None) => format!("{} {cur}", a.0),
        (None, Some(n)) => format!("{n} intents"),
        (None, None) => String::new(),
    }
}

fn check_category(out: &mut Out, c: &Pattern, keys: &[&str]) {
    if !c.is_glob() && !KNOWN_CATEGORIES.contains(&c.0.as_str()) {
        out.push(
            "unknown_category",
            format!("category {:?} is not a known category", c.0),
            "check the spelling; known categories are listed in docs/policy-language.md",
            keys,
        );
    }
}

fn check_country(out: &mut Out, c: &str, keys: &[&str]) {
    if !is_known_country(c) {
        out.push(
            "unknown_country",
            format!("country {c:?} is not an ISO 3166-1 alpha-2 code"),
            "use an assigned ISO 3166-1 alpha-2 code such as BR or US",
            keys,
        );
    }
}

/// True when every payment matching `b` also matches `a` (so `a`, if earlier, shadows `b`).
pub fn implies(b: &Conditions, a: &Conditions) -> bool {
    let pats_covered = |pa: &Option<Vec<Pattern>>, pb: &Option<Vec<Pattern>>| match (pa, pb) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(pa), Some(pb)) => {
            let m = Matcher::new(pa);
            pb.iter()
                .all(|p| pa.contains(p) || (!p.is_glob() && m.matches(&p.0)))
        }
    };
    let amount_gt_ok = match a.amount_gt {
        None => true,
        Some(x) => {
            b.amount_gt.is_some_and(|y| y.0 >= x.0) || b.amount_gte.is_some_and(|y| y.0 > x.0)
        }
    };
    let amount_gte_ok = match a.amount_gte {
        None => true,
        Some(x) => {
            b.amount_gte.is_some_and(|y| y.0 >= x.0) || b.amount_gt.is_some_and(|y| y.0 >= x.0)
        }
    };
    let nia_ok =
        a.beneficiary_not_in_allow != Some(true) || b.beneficiary_not_in_allow == Some(true);
    let country_in_ok = match (&a.country_in, &b.country_in) {
        (None, _) => true,
        (Some(ca), Some(cb)) => cb.iter().all(|c| ca.contains(c)),
        (Some(_), None) => false,
    };
    let country_not_in_ok = match &a.country_not_in {
        None => true,
        Some(ca) => {
            b.country_not_in
                .as_ref()
                .is_some_and(|cb| ca.iter().all(|c| cb.contains(c)))
                || b.country_in
                    .as_ref()
                    .is_some_and(|cb| cb.iter().all(|c| !ca.contains(c)))
        }
    };
    let purpose_ok = match (&a.purpose_in, &b.purpose_in) {
        (None, _) => true,
        (Some(pa), Some(pb)) => pb.iter().all(|p| pa.contains(p)),
        (Some(_), None) => false,
    };
    pats_covered(&a.category_in, &b.category_in)
        && pats_covered(&a.beneficiary_in, &b.beneficiary_in)
        && amount_gt_ok
        && amount_gte_ok
        && nia_ok
        && country_in_ok
        && country_not_in_ok
        && purpose_ok
}

/// A rule whose finding the built-in checks always produce anyway (or something stricter):
/// an amount-only rule at or above the msig threshold asking for no more approvals, or at
/// or above the per-transaction cap.
fn covered_by_builtins(r: &super::model::Rule, spec: &PolicySpec) -> bool {
    let w = &r.when;
    let amount_only = Conditions {
        amount_gt: w.amount_gt,
        amount_gte: w.amount_gte,
        ..Conditions::default()
    } == *w;
    let threshold: Option<Decimal> = w.amount_gt.map(|a| a.0).or(w.amount_gte.map(|a| a.0));
    let (Some(t), true) = (threshold, amount_only) else {
        return false;
    };
    let strict = w.amount_gt.is_some();
    if (strict && t >= spec.caps.per_txn.0) || (!strict && t > spec.caps.per_txn.0) {
        return true;
    }
    match (&spec.msig, r.then.effect) {
        (Some(m), Effect::RequireMsig | Effect::RequireHitl | Effect::Allow) => {
            let wanted = r.then.approvals.unwrap_or(1);
            let above = if strict {
                t >= m.threshold.higher_than.0
            } else {
                t > m.threshold.higher_than.0
            };
            above && wanted <= m.threshold.approvals
        }
        _ => false,
    }
}
