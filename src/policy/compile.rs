//! From text to a [`CompiledPolicy`]: parse (JSON or YAML, bare or envelope), normalize,
//! compute the canonical form and its SHA-256, and compile lists into matchers once so
//! evaluation does no parsing.

use super::error::PolicyError;
use super::model::{self, Envelope, Pattern, PolicySpec};
use super::rego::RegoProgram;
use crate::decision::{Effect, PolicyIdentity};
use crate::intent::Purpose;
use crate::money::{self, Currency};
use rust_decimal::Decimal;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Largest policy file accepted, in bytes.
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;
/// Version reported when a policy does not declare one.
pub const UNVERSIONED: &str = "unversioned";

/// A list of literals and globs, compiled once. Literals are a sorted array (binary
/// search, no hashing); globs are matched without allocation.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    exact: Vec<Box<str>>,
    globs: Vec<Glob>,
}

#[derive(Debug, Clone)]
struct Glob {
    pattern: Box<str>,
    /// `abc*` is by far the most common glob (`sanctioned:*`): a prefix test.
    prefix_only: Option<Box<str>>,
}

impl Matcher {
    pub fn new(patterns: &[Pattern]) -> Matcher {
        let mut exact: Vec<Box<str>> = Vec::new();
        let mut globs = Vec::new();
        for p in patterns {
            if p.is_glob() {
                let s = p.0.as_str();
                let prefix_only = s
                    .strip_suffix('*')
                    .filter(|head| !head.contains(['*', '?']))
                    .map(Box::from);
                globs.push(Glob {
                    pattern: s.into(),
                    prefix_only,
                });
            } else {
                exact.push(p.0.as_str().into());
            }
        }
        exact.sort();
        exact.dedup();
        Matcher { exact, globs }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.globs.is_empty()
    }

    /// The first pattern matching `s` (the literal itself for an exact match).
    pub fn find(&self, s: &str) -> Option<&str> {
        if let Ok(i) = self.exact.binary_search_by(|e| (**e).cmp(s)) {
            return Some(&self.exact[i]);
        }
        self.globs
            .iter()
            .find(|g| g.matches(s))
            .map(|g| &*g.pattern)
    }

    pub fn matches(&self, s: &str) -> bool {
        self.find(s).is_some()
    }
}

impl Glob {
    fn matches(&self, s: &str) -> bool {
        match &self.prefix_only {
            Some(prefix) => s.starts_with(&**prefix),
            None => glob_match(self.pattern.as_bytes(), s.as_bytes()),
        }
    }
}

/// `*` = any run of characters (including none), `?` = exactly one character. Greedy
/// with a single backtrack point: linear in practice, never exponential.
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < pattern.len() && pattern[pi] == b'?' {
            si = (si + utf8_len(s[si])).min(s.len());
            pi += 1;
        } else if pi < pattern.len() && pattern[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < pattern.len() && pattern[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((star_pi, star_si)) = star {
            let next = (star_si + utf8_len(s[star_si])).min(s.len());
            star = Some((star_pi, next));
            pi = star_pi + 1;
            si = next;
        } else {
            return false;
        }
    }
    while pi < pattern.len() && pattern[pi] == b'*' {
        pi += 1;
    }
    pi == pattern.len()
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// ISO country codes compiled to two bytes each; lists are short, so a scan wins.
#[derive(Debug, Clone, Default)]
pub struct CountrySet(Vec<[u8; 2]>);

impl CountrySet {
    pub(crate) fn new(codes: &[model::CountryCode]) -> CountrySet {
        let mut v: Vec<[u8; 2]> = codes
            .iter()
            .filter_map(|c| <[u8; 2]>::try_from(c.0.as_bytes()).ok())
            .collect();
        v.sort();
        v.dedup();
        CountrySet(v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, country: &str) -> bool {
        let b = country.as_bytes();
        b.len() == 2 && self.0.iter().any(|c| c[0] == b[0] && c[1] == b[1])
    }

    pub fn describe(&self) -> String {
        let v: Vec<&str> = self
            .0
            .iter()
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        v.join(", ")
    }
}

#[derive(Debug, Clone)]
pub enum Cond {
    CategoryIn(Matcher),
    AmountGt(Decimal),
    AmountGte(Decimal),
    BeneficiaryNotInAllow,
    BeneficiaryIn(Matcher),
    CountryIn(CountrySet),
    CountryNotIn(CountrySet),
    /// Bit `1 << index in Purpose::ALL`.
    PurposeIn(u8),
}

#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// 1-based position in the policy's `rules`, for explanations.
    pub number: usize,
    pub conds: Vec<Cond>,
    pub effect: Effect,
    pub reason: String,
    pub approvals: u32,
}

pub fn purpose_bit(p: Purpose) -> u8 {
    let i = Purpose::ALL.iter().position(|x| *x == p).unwrap_or(0);
    1u8 << i
}

/// A policy ready to evaluate. Built by [`CompiledPolicy::parse`]; immutable afterwards.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub identity: PolicyIdentity,
    pub currency: Currency,
    pub tz: chrono_tz::Tz,
    pub approval_ttl: chrono::Duration,
    /// SPEC §11 `authorizationTtl` (default 7 days).
    pub authorization_ttl: chrono::Duration,
    /// SPEC §11 `refunds: restore` (default `ignore`).
    pub refunds_restore: bool,
    pub(crate) spec: PolicySpec,
    canonical: String,
    pub(crate) per_txn: Decimal,
    pub(crate) daily: Decimal,
    pub(crate) monthly: Decimal,
    /// `(higherThan, approvals)`.
    pub(crate) msig: Option<(Decimal, u32)>,
    pub(crate) allow_beneficiaries: Option<Matcher>,
    pub(crate) allow_countries: Option<CountrySet>,
    pub(crate) block_categories: Matcher,
    pub(crate) block_beneficiaries: Matcher,
    pub(crate) rules: Vec<CompiledRule>,
    pub(crate) rego: Option<RegoProgram>,
    pub(crate) limits: Vec<super::limits::CompiledLimit>,
    /// Foreign currencies accepted (SPEC §12.3).
    pub(crate) fx_accept: Vec<String>,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "apiVersion")]
    api_version: Option<serde::de::IgnoredAny>,
    kind: Option<serde::de::IgnoredAny>,
    spec: Option<serde::de::IgnoredAny>,
}

/// Text format of a policy document, detected from its first non-blank character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
}

pub fn detect_format(text: &str) -> Format {
    if text.trim_start().starts_with('{') {
        Format::Json
    } else {
        Format::Yaml
    }
}

/// Deserializes `T` from JSON or YAML text, turning errors into located [`PolicyError`]s.
pub fn from_text<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &str,
) -> Result<T, PolicyError> {
    match detect_format(text) {
        Format::Json => serde_json::from_str(text).map_err(|e| PolicyError::from_json(origin, &e)),
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| PolicyError::from_yaml(origin, &e)),
    }
}

/// Parses a policy document (JSON or YAML, bare or envelope) into its normalized bare form:
/// name/version/tags merged from the envelope, defaults filled in, set-like lists sorted.
pub fn parse_spec(text: &str, origin: &str) -> Result<PolicySpec, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::at(
            origin,
            1,
            1,
            "policy_too_large",
            format!(
                "policy is {} bytes; the limit is {MAX_POLICY_BYTES}",
                text.len()
            ),
            "split the policy or move long lists into patterns",
        ));
    }
    let probe: Probe = from_text(text, origin).map_err(|mut e| {
        if e.code == "invalid_field" {
            e.message = format!(
                "a policy must be a JSON object or YAML mapping: {}",
                e.message
            );
        }
        e
    })?;
    let mut spec = if probe.api_version.is_some() || probe.kind.is_some() || probe.spec.is_some() {
        let env: Envelope = from_text(text, origin)?;
        let mut spec = env.spec;
        if let Some(n) = &spec.name
            && *n != env.metadata.name
        {
            let (line, col) = super::error::locate(text, &["spec", "name"]);
            return Err(PolicyError::at(
                origin,
                line,
                col,
                "name_conflict",
                format!(
                    "spec.name {n:?} differs from metadata.name {:?}",
                    env.metadata.name
                ),
                "remove spec.name; in the envelope form the name lives in metadata.name",
            ));
        }
        if let (Some(a), Some(b)) = (&spec.version, &env.metadata.version)
            && a != b
        {
            let (line, col) = super::error::locate(text, &["spec", "version"]);
            return Err(PolicyError::at(
                origin,
                line,
                col,
                "name_conflict",
                format!("spec.version {a:?} differs from metadata.version {b:?}"),
                "remove spec.version; in the envelope form the version lives in metadata.version",
            ));
        }
        spec.name = Some(env.metadata.name);
        spec.version = spec.version.or(env.metadata.version);
        spec.tags.extend(env.metadata.tags);
        spec
    } else {
        from_text::<PolicySpec>(text, origin)?
    };
    validate_spec(&spec, text, origin)?;
    normalize(&mut spec);
    Ok(spec)
}

fn validate_spec(spec: &PolicySpec, text: &str, origin: &str) -> Result<(), PolicyError> {
    let err = |keys: &[&str], code: &'static str, message: String, hint: &str| {
        let (line, col) = super::error::locate(text, keys);
        Err(PolicyError::at(origin, line, col, code, message, hint))
    };
    match &spec.name {
        None => {
            return err(
                &[],
                "missing_name",
                "the policy has no name".into(),
                "add `name: my-policy` (bare form) or `metadata.name` (envelope)",
            );
        }
        Some(n)
            if n.is_empty()
                || n.len() > model::MAX_PATTERN_LEN
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
        {
            return err(
                &["name"],
                "invalid_name",
                format!(
                    "policy name {n:?} must be 1..=128 characters of letters, digits, '-', '_' or '.'"
                ),
                "use a name like conservative-brazilian-agent",
            );
        }
        _ => {}
    }
    if let Some(v) = &spec.version
        && (v.is_empty() || v.len() > 64 || v.chars().any(char::is_control))
    {
        return err(
            &["version"],
            "invalid_field",
            format!("version {v:?} must be 1..=64 characters"),
            "use a version like \"1.2.0\"",
        );
    }
    let cur = money::currency(&spec.currency.0)
        .map(|c| c.minor_units)
        .unwrap_or(2);
    let too_precise = |a: &model::Amount| a.0.normalize().scale() > cur;
    for (key, a) in [
        ("perTxn", &spec.caps.per_txn),
        ("daily", &spec.caps.daily),
        ("monthly", &spec.caps.monthly),
    ] {
        if too_precise(a) {
            return err(
                &["caps", key],
                "invalid_amount",
                format!(
                    "caps.{key} {} has more decimal places than {} allows ({cur})",
                    a.0, spec.currency.0
                ),
                "round the amount to the currency's minor unit",
            );
        }
    }
    if let Some(m) = &spec.msig
        && (m.threshold.approvals == 0 || m.threshold.approvals > model::MAX_APPROVALS)
    {
        return err(
            &["msig", "approvals"],
            "invalid_approvals",
            format!(
                "msig.threshold.approvals must be 1..={}, got {}",
                model::MAX_APPROVALS,
                m.threshold.approvals
            ),
            "require at least one approval",
        );
    }
    let lists: [(&[&str], usize); 4] = [
        (
            &["allowLists", "beneficiaries"],
            spec.allow_lists
                .as_ref()
                .and_then(|a| a.beneficiaries.as_ref())
                .map_or(0, Vec::len),
        ),
        (
            &["allowLists", "countries"],
            spec.allow_lists
                .as_ref()
                .and_then(|a| a.countries.as_ref())
                .map_or(0, Vec::len),
        ),
        (
            &["blockLists", "categories"],
            spec.block_lists.as_ref().map_or(0, |b| b.categories.len()),
        ),
        (
            &["blockLists", "beneficiaries"],
            spec.block_lists
                .as_ref()
                .map_or(0, |b| b.beneficiaries.len()),
        ),
    ];
    for (keys, n) in lists {
        if n > model::MAX_LIST_ENTRIES {
            return err(
                keys,
                "list_too_long",
                format!(
                    "{} has {n} entries; the limit is {}",
                    keys.join("."),
                    model::MAX_LIST_ENTRIES
                ),
                "use glob patterns to shorten the list",
            );
        }
    }
    validate_limits(spec, text, origin, cur)?;
    if let Some(fx) = &spec.fx {
        for c in &fx.accept {
            if !money::is_known_currency(&c.0) || c.0 == spec.currency.0 {
                return err(
                    &["fx", "accept"],
                    "invalid_field",
                    format!(
                        "fx.accept lists {:?}: not an ISO 4217 code other than the policy currency {}",
                        c.0, spec.currency.0
                    ),
                    "list foreign currencies like [USD, EUR]",
                );
            }
        }
    }
    if spec.rules.len() > model::MAX_RULES {
        return err(
            &["rules"],
            "too_many_rules",
            format!(
                "{} rules; the limit is {}",
                spec.rules.len(),
                model::MAX_RULES
            ),
            "merge rules with list conditions",
        );
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let keys = ["rules", &rule_key(i)];
        let n = i + 1;
        let approvals = rule.then.approvals;
        match rule.then.effect {
            Effect::RequireMsig => match approvals {
                Some(a) if (1..=model::MAX_APPROVALS).contains(&a) => {}
                _ => {
                    return err(
                        &keys,
                        "invalid_approvals",
                        format!(
                            "rule {n}: REQUIRE_MSIG needs `approvals` between 1 and {}",
                            model::MAX_APPROVALS
                        ),
                        "add `approvals: 2` to the rule's `then`",
                    );
                }
            },
            Effect::RequireHitl if approvals.is_some_and(|a| a != 1) => {
                return err(
                    &keys,
                    "invalid_approvals",
                    format!("rule {n}: REQUIRE_HITL takes exactly one approval"),
                    "use REQUIRE_MSIG for more than one approval, or drop `approvals`",
                );
            }
            Effect::Allow | Effect::Deny if approvals.is_some() => {
                return err(
                    &keys,
                    "invalid_approvals",
                    format!(
                        "rule {n}: `approvals` only applies to REQUIRE_MSIG (and REQUIRE_HITL: 1)"
                    ),
                    "remove `approvals`",
                );
            }
            _ => {}
        }
        if rule.when.beneficiary_not_in_allow == Some(false) {
            return err(
                &keys,
                "invalid_condition",
                format!("rule {n}: beneficiaryNotInAllow only accepts true"),
                "remove the condition, or use beneficiaryIn for the opposite test",
            );
        }
        let a = [&rule.when.amount_gt, &rule.when.amount_gte];
        if a.iter().any(|x| x.as_ref().is_some_and(too_precise)) {
            return err(
                &keys,
                "invalid_amount",
                format!(
                    "rule {n}: amount has more decimal places than {} allows",
                    spec.currency.0
                ),
                "round the amount to the currency's minor unit",
            );
        }
    }
    if let Some(r) = &spec.rego {
        if r.module.len() > model::MAX_REGO_MODULE_BYTES {
            return err(
                &["rego", "module"],
                "rego_too_large",
                format!(
                    "rego module is {} bytes; the limit is {}",
                    r.module.len(),
                    model::MAX_REGO_MODULE_BYTES
                ),
                "keep the Rego escape hatch small; express caps and lists in the policy itself",
            );
        }
        if r.module.contains("time.now_ns") {
            return err(
                &["rego", "module"],
                "rego_uses_wall_clock",
                "rego module calls time.now_ns(): decisions would not replay".into(),
                "use input.acceptedAtNs (the ledger's acceptance time) instead",
            );
        }
        if r.query.trim().is_empty() {
            return err(
                &["rego", "query"],
                "invalid_field",
                "rego.query is empty".into(),
                "name the rule that yields the finding, e.g. data.spendguard.extra.finding",
            );
        }
    }
    Ok(())
}

/// Key used by [`super::error::locate`] for the i-th rule (its `if`).
pub fn rule_key(i: usize) -> String {
    format!("if#{i}")
}

/// The rules of SPEC §12 a limit must satisfy to mean anything (conflicts between
/// limits are lints: `lint.rs`).
fn validate_limits(
    spec: &PolicySpec,
    text: &str,
    origin: &str,
    minor_units: u32,
) -> Result<(), PolicyError> {
    let err = |keys: &[&str], code: &'static str, message: String, hint: &str| {
        let (line, col) = super::error::locate(text, keys);
        Err(PolicyError::at(origin, line, col, code, message, hint))
    };
    if spec.limits.len() > model::MAX_LIMITS {
        return err(
            &["limits"],
            "too_many_limits",
            format!(
                "{} limits; the limit is {}",
                spec.limits.len(),
                model::MAX_LIMITS
            ),
            "merge limits with filters",
        );
    }
    for (i, l) in spec.limits.iter().enumerate() {
        // The i-th `name` key after `limits`: every limit has one.
        let key = format!("name#{i}");
        let keys = ["limits", key.as_str()];
        let n = i + 1;
        if l.name.is_empty()
            || l.name.len() > model::MAX_PATTERN_LEN
            || l.name.chars().any(char::is_control)
        {
            return err(
                &keys,
                "invalid_name",
                format!("limit {n}: name must be 1..=128 characters"),
                "name the limit like travel-weekly",
            );
        }
        if l.window.kind().is_none() {
            return err(
                &keys,
                "invalid_limit",
                format!(
                    "limit {:?}: window needs exactly one of `calendar` and `trailing`",
                    l.name
                ),
                "write `window: { calendar: week }` or `window: { trailing: 24h }`",
            );
        }
        if l.amount.is_none() && l.count.is_none() {
            return err(
                &keys,
                "invalid_limit",
                format!("limit {:?} has neither `amount` nor `count`", l.name),
                "add `amount: \"1000.00\"` and/or `count: 10`",
            );
        }
        if let Some(a) = &l.amount
            && (a.0.normalize().scale() > minor_units || a.0.is_sign_negative())
        {
            return err(
                &keys,
                "invalid_amount",
                format!(
                    "limit {:?}: amount {} is negative or has more decimal places than {} allows",
                    l.name, a.0, spec.currency.0
                ),
                "round the amount to the currency's minor unit",
            );
        }
        let effect = l.effect.unwrap_or(Effect::RequireHitl);
        match (effect, l.approvals) {
            (Effect::Allow, _) => {
                return err(
                    &keys,
                    "invalid_effect",
                    format!("limit {:?}: effect ALLOW cannot limit anything", l.name),
                    "use REQUIRE_HITL, REQUIRE_MSIG or DENY",
                );
            }
            (Effect::RequireMsig, Some(a)) if !(1..=model::MAX_APPROVALS).contains(&a) => {
                return err(
                    &keys,
                    "invalid_approvals",
                    format!(
                        "limit {:?}: approvals must be 1..={}",
                        l.name,
                        model::MAX_APPROVALS
                    ),
                    "require at least one approval",
                );
            }
            (Effect::RequireHitl | Effect::Deny, Some(_)) => {
                return err(
                    &keys,
                    "invalid_approvals",
                    format!(
                        "limit {:?}: `approvals` applies to REQUIRE_MSIG only",
                        l.name
                    ),
                    "drop `approvals` or use effect REQUIRE_MSIG",
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// Defaults filled in and set-like lists sorted + deduplicated, so formatting and order of
/// set entries do not change the canonical form. Rule order is kept: it is semantic.
fn normalize(spec: &mut PolicySpec) {
    fn set<T: Ord>(v: &mut Vec<T>) {
        v.sort();
        v.dedup();
    }
    if spec.timezone.is_none() {
        spec.timezone = Some(model::TimeZoneName("UTC".into()));
    }
    if spec.approval_ttl.is_none() {
        spec.approval_ttl = Some(model::TtlSpec {
            seconds: model::DEFAULT_APPROVAL_TTL_SECS,
        });
    }
    set(&mut spec.tags);
    for l in &mut spec.limits {
        if let Some(f) = &mut l.filter {
            for v in [&mut f.category_in, &mut f.beneficiary_in]
                .into_iter()
                .flatten()
            {
                set(v);
            }
            if let Some(c) = &mut f.country_in {
                set(c);
            }
            if let Some(p) = &mut f.purpose_in {
                p.sort_by_key(|x| x.as_str());
                p.dedup();
            }
        }
    }
    if let Some(fx) = &mut spec.fx {
        set(&mut fx.accept);
    }
    if let Some(a) = &mut spec.allow_lists {
        if let Some(b) = &mut a.beneficiaries {
            set(b);
        }
        if let Some(c) = &mut a.countries {
            set(c);
        }
    }
    if let Some(b) = &mut spec.block_lists {
        set(&mut b.categories);
        set(&mut b.beneficiaries);
    }
    for r in &mut spec.rules {
        let w = &mut r.when;
        for l in [&mut w.category_in, &mut w.beneficiary_in]
            .into_iter()
            .flatten()
        {
            set(l);
        }
        for l in [&mut w.country_in, &mut w.country_not_in]
            .into_iter()
            .flatten()
        {
            set(l);
        }
        if let Some(p) = &mut w.purpose_in {
            p.sort_by_key(|x| x.as_str());
            p.dedup();
        }
    }
}

/// The canonical form: the normalized bare form as JSON with sorted keys and amounts as
/// normalized decimal strings.
pub fn canonical_json(spec: &PolicySpec) -> String {
    // serde_json::Value's map is a BTreeMap here (no preserve_order): keys come out sorted.
    serde_json::to_value(spec)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

impl CompiledPolicy {
    /// Parses and compiles a policy. `origin` names the source in errors (a file path).
    pub fn parse(text: &str, origin: &str) -> Result<CompiledPolicy, PolicyError> {
        let spec = parse_spec(text, origin)?;
        CompiledPolicy::compile(spec, origin).map_err(|mut e| {
            if e.code.starts_with("rego") {
                (e.line, e.column) = super::error::locate(text, &["rego", "module"]);
            }
            e
        })
    }

    /// Compiles an already normalized spec (see [`parse_spec`]).
    pub fn compile(spec: PolicySpec, origin: &str) -> Result<CompiledPolicy, PolicyError> {
        let canonical = canonical_json(&spec);
        let sha256 = hex::encode(Sha256::digest(canonical.as_bytes()));
        let currency = money::currency(&spec.currency.0).ok_or_else(|| {
            PolicyError::at(
                origin,
                1,
                1,
                "invalid_field",
                format!("unknown currency {}", spec.currency.0),
                "use an ISO 4217 code",
            )
        })?;
        let tz_name = spec.timezone.as_ref().map_or("UTC", |t| t.0.as_str());
        let tz: chrono_tz::Tz = tz_name.parse().map_err(|_| {
            PolicyError::at(
                origin,
                1,
                1,
                "invalid_field",
                format!("unknown timezone {tz_name}"),
                "use an IANA name",
            )
        })?;
        let ttl_secs = spec
            .approval_ttl
            .map_or(model::DEFAULT_APPROVAL_TTL_SECS, |t| t.seconds);
        let rego = match &spec.rego {
            Some(r) => Some(RegoProgram::compile(&r.module, &r.query, origin)?),
            None => None,
        };
        let allow = spec.allow_lists.clone().unwrap_or_default();
        let block = spec.block_lists.clone().unwrap_or_default();
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| compile_rule(i, r))
            .collect();
        Ok(CompiledPolicy {
            identity: PolicyIdentity {
                name: spec.name.clone().unwrap_or_default(),
                version: spec
                    .version
                    .clone()
                    .unwrap_or_else(|| UNVERSIONED.to_string()),
                sha256,
            },
            currency,
            tz,
            approval_ttl: chrono::Duration::seconds(ttl_secs),
            authorization_ttl: chrono::Duration::seconds(
                spec.authorization_ttl
                    .map_or(model::DEFAULT_AUTHORIZATION_TTL_SECS, |t| t.seconds),
            ),
            refunds_restore: spec.refunds == Some(model::RefundMode::Restore),
            per_txn: spec.caps.per_txn.0,
            daily: spec.caps.daily.0,
            monthly: spec.caps.monthly.0,
            msig: spec
                .msig
                .as_ref()
                .map(|m| (m.threshold.higher_than.0, m.threshold.approvals)),
            allow_beneficiaries: allow.beneficiaries.as_deref().map(Matcher::new),
            allow_countries: allow.countries.as_deref().map(CountrySet::new),
            block_categories: Matcher::new(&block.categories),
            block_beneficiaries: Matcher::new(&block.beneficiaries),
            rules,
            rego,
            limits: spec
                .limits
                .iter()
                .map(super::limits::CompiledLimit::compile)
                .collect(),
            fx_accept: spec
                .fx
                .as_ref()
                .map(|f| f.accept.iter().map(|c| c.0.clone()).collect())
                .unwrap_or_default(),
            canonical,
            spec,
        })
    }

    /// The canonical JSON recorded in the ledger; `parse(canonical)` yields the same identity.
    pub fn canonical_json(&self) -> &str {
        &self.canonical
    }

    /// Whether intents in `currency` are accepted and converted (SPEC §12.3).
    pub fn accepts_fx(&self, currency: &str) -> bool {
        self.fx_accept.iter().any(|c| c == currency)
    }

    /// The policy's limits (SPEC §12), in the order written.
    pub fn limits(&self) -> &[super::limits::CompiledLimit] {
        &self.limits
    }

    /// The normalized source form (for linting and display).
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.identity.name
    }
}

fn compile_rule(i: usize, r: &model::Rule) -> CompiledRule {
    let w = &r.when;
    let mut conds = Vec::new();
    if let Some(c) = &w.category_in {
        conds.push(Cond::CategoryIn(Matcher::new(c)));
    }
    if let Some(a) = w.amount_gt {
        conds.push(Cond::AmountGt(a.0));
    }
    if let Some(a) = w.amount_gte {
        conds.push(Cond::AmountGte(a.0));
    }
    if w.beneficiary_not_in_allow == Some(true) {
        conds.push(Cond::BeneficiaryNotInAllow);
    }
    if let Some(b) = &w.beneficiary_in {
        conds.push(Cond::BeneficiaryIn(Matcher::new(b)));
    }
    if let Some(c) = &w.country_in {
        conds.push(Cond::CountryIn(CountrySet::new(c)));
    }
    if let Some(c) = &w.country_not_in {
        conds.push(Cond::CountryNotIn(CountrySet::new(c)));
    }
    if let Some(p) = &w.purpose_in {
        conds.push(Cond::PurposeIn(
            p.iter().fold(0u8, |acc, p| acc | purpose_bit(*p)),
        ));
    }
    CompiledRule {
        number: i + 1,
        conds,
        effect: r.then.effect,
        reason: r.then.reason.0.clone(),
        approvals: match r.then.effect {
            Effect::RequireMsig => r.then.approvals.unwrap_or(1),
            Effect::RequireHitl => 1,
            _ => 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"sanctioned:*", b"sanctioned:acme"));
        assert!(glob_match(b"*:acme", b"sanctioned:acme"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match("a?c".as_bytes(), "aéc".as_bytes()));
        assert!(!glob_match(b"a?c", b"ac"));
        assert!(glob_match(b"a*b*c", b"aXXbYYbZc"));
        assert!(!glob_match(b"a*b*c", b"aXXbYYbZ"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"abc", b"abcd"));
        let m = Matcher::new(&[
            Pattern("x".into()),
            Pattern("high_risk:*".into()),
            Pattern("*-test".into()),
        ]);
        assert_eq!(m.find("x"), Some("x"));
        assert_eq!(m.find("high_risk:foo"), Some("high_risk:*"));
        assert_eq!(m.find("svc-test"), Some("*-test"));
        assert_eq!(m.find("y"), None);
    }
}
