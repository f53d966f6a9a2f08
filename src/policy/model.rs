//! The policy language as written by people (SPEC §2): serde types for the bare form and
//! the versioned envelope, with the JSON Schema derived from the same types.
//!
//! Field-level validation lives in the `Deserialize` impls of the small value types
//! (`Amount`, `Pattern`, `CurrencyCode`, ...) so a bad value is reported by the parser
//! itself, with the line and column of the offending token.

use crate::decision::Effect;
use crate::intent::Purpose;
use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use std::borrow::Cow;
use std::fmt;

/// Longest pattern / list entry / reason accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 128;
/// Largest number of entries in one list (allow/block lists, `categoryIn`, ...).
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// Largest number of rules in one policy.
pub const MAX_RULES: usize = 1_000;
/// Largest number of approvals a policy may require (quorum size).
pub const MAX_APPROVALS: u32 = 32;
/// Longest approval TTL accepted (30 days), in seconds.
pub const MAX_APPROVAL_TTL_SECS: i64 = 30 * 24 * 3600;
/// Default approval TTL (SPEC §2: 24h), in seconds.
pub const DEFAULT_APPROVAL_TTL_SECS: i64 = 24 * 3600;
/// How long an authorization may stay open before the ledger releases what was not
/// captured (SPEC §11: `authorizationTtl`, default 7 days).
pub const DEFAULT_AUTHORIZATION_TTL_SECS: i64 = 7 * 86_400;
/// Largest inline Rego module, in bytes.
pub const MAX_REGO_MODULE_BYTES: usize = 64 * 1024;

pub const API_VERSION: &str = "policy.spendguard.v1";
/// The origin document's apiVersion, accepted as an alias.
pub const API_VERSION_ALIAS: &str = "policy.orchestra.v1";
pub const KIND: &str = "SpendPolicy";

/// A non-negative money amount in the policy's currency. Written as a JSON/YAML number or a
/// decimal string; never kept as a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub Decimal);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative decimal amount such as 500 or \"500.00\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                check_amount(Decimal::from(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                check_amount(Decimal::from(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
                // The parser already turned the literal into an f64; Display prints the
                // shortest text that round-trips, which is the literal for any amount a
                // person writes (`0.1` -> "0.1"), so no binary-float error leaks in.
                self.visit_str(&format!("{v}"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                let d = crate::money::parse_decimal(v).map_err(|e| E::custom(e.to_string()))?;
                check_amount(d)
            }
        }
        d.deserialize_any(V)
    }
}

fn check_amount<E: de::Error>(d: Decimal) -> Result<Amount, E> {
    if d.is_sign_negative() && !d.is_zero() {
        return Err(E::custom(format!("amount must not be negative, got {d}")));
    }
    if d > Decimal::from(crate::money::MAX_AMOUNT_MAJOR) {
        return Err(E::custom(format!("amount {d} exceeds the maximum of 1e12")));
    }
    Ok(Amount(d.normalize()))
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.normalize())
    }
}

impl JsonSchema for Amount {
    fn schema_name() -> Cow<'static, str> {
        "Amount".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Non-negative amount in the policy currency: a number or a decimal string (\"500.00\").",
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}
            ]
        })
    }
}

/// A list entry: a literal, or a glob where `*` matches any run of characters and `?`
/// exactly one (`sanctioned:*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Pattern(pub String);

impl Pattern {
    pub fn is_glob(&self) -> bool {
        self.0.contains(['*', '?'])
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a string", |s: &str| {
            if s.is_empty() || s.len() > MAX_PATTERN_LEN || s.chars().any(char::is_control) {
                return Err(format!(
                    "pattern {:?} must be 1..={MAX_PATTERN_LEN} characters without control characters",
                    short(s)
                ));
            }
            Ok(Pattern(s.to_string()))
        })
    }
}

impl JsonSchema for Pattern {
    fn schema_name() -> Cow<'static, str> {
        "Pattern".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A literal or a glob: `*` matches any run of characters, `?` exactly one (e.g. \"sanctioned:*\").",
            "type": "string", "minLength": 1, "maxLength": MAX_PATTERN_LEN
        })
    }
}

/// An ISO 3166-1 alpha-2 country code (`BR`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct CountryCode(pub String);

impl<'de> Deserialize<'de> for CountryCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a string", |s: &str| {
            if !(s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())) {
                return Err(format!(
                    "country {:?} must be an ISO 3166-1 alpha-2 code in upper case, like \"BR\"",
                    short(s)
                ));
            }
            Ok(CountryCode(s.to_string()))
        })
    }
}

impl JsonSchema for CountryCode {
    fn schema_name() -> Cow<'static, str> {
        "CountryCode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"description": "ISO 3166-1 alpha-2 country code", "type": "string", "pattern": "^[A-Z]{2}$"})
    }
}

/// An ISO 4217 currency code known to spendguard (`BRL`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CurrencyCode(pub String);

impl<'de> Deserialize<'de> for CurrencyCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a string", |s: &str| {
            if !crate::money::is_known_currency(s) {
                return Err(format!(
                    "currency {:?} is not a supported ISO 4217 code (write it in upper case, e.g. \"BRL\")",
                    short(s)
                ));
            }
            Ok(CurrencyCode(s.to_string()))
        })
    }
}

impl JsonSchema for CurrencyCode {
    fn schema_name() -> Cow<'static, str> {
        "CurrencyCode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"description": "ISO 4217 currency code; caps are money in this currency", "type": "string", "pattern": "^[A-Z]{3}$"})
    }
}

/// An IANA timezone name (`America/Sao_Paulo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct TimeZoneName(pub String);

impl<'de> Deserialize<'de> for TimeZoneName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a string", |s: &str| {
            if s.parse::<chrono_tz::Tz>().is_err() {
                return Err(format!(
                    "timezone {:?} is not an IANA timezone name (e.g. \"America/Sao_Paulo\", \"UTC\")",
                    short(s)
                ));
            }
            Ok(TimeZoneName(s.to_string()))
        })
    }
}

impl JsonSchema for TimeZoneName {
    fn schema_name() -> Cow<'static, str> {
        "TimeZoneName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"description": "IANA timezone name; usage windows are calendar days/months of this zone", "type": "string", "default": "UTC"})
    }
}

/// A duration written as `24h`, `30m`, `90s`, `2d` or a sum like `1h30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtlSpec {
    pub seconds: i64,
}

/// Parses `1d2h30m15s`-style durations into seconds (at most 30 days: TTLs).
pub fn parse_duration_secs(s: &str) -> Result<i64, String> {
    let total = parse_duration_unbounded(s)?;
    if total > MAX_APPROVAL_TTL_SECS {
        return Err(format!(
            "duration {:?} exceeds the maximum of 30d",
            short(s)
        ));
    }
    Ok(total)
}

/// Parses `1d2h30m15s`-style durations into seconds, any positive length.
pub fn parse_duration_unbounded(s: &str) -> Result<i64, String> {
    let hint = "write a duration like \"24h\", \"30m\", \"90s\", \"2d\" or \"1h30m\"";
    if s.is_empty() {
        return Err(format!("empty duration; {hint}"));
    }
    let mut total: i64 = 0;
    let mut num: Option<i64> = None;
    for ch in s.chars() {
        if let Some(digit) = ch.to_digit(10) {
            let n = num.unwrap_or(0);
            num = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(i64::from(digit)))
                    .ok_or_else(|| format!("duration {s:?} is too large"))?,
            );
            continue;
        }
        let unit = match ch {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "duration {:?} has unknown unit {ch:?}; {hint}",
                    short(s)
                ));
            }
        };
        let n = num.take().ok_or_else(|| {
            format!(
                "duration {:?} has a unit without a number; {hint}",
                short(s)
            )
        })?;
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| format!("duration {s:?} is too large"))?;
    }
    if num.is_some() {
        return Err(format!(
            "duration {:?} ends without a unit; {hint}",
            short(s)
        ));
    }
    if total <= 0 {
        return Err(format!("duration {:?} must be positive", short(s)));
    }
    Ok(total)
}

impl<'de> Deserialize<'de> for TtlSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = TtlSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"24h\" or \"30m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TtlSpec, E> {
                parse_duration_secs(s)
                    .map(|seconds| TtlSpec { seconds })
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TtlSpec, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit; write \"{v}h\", \"{v}m\" or \"{v}s\""
                )))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TtlSpec, E> {
                Err(E::custom(format!(
                    "duration {v} has no unit; write \"{v}h\", \"{v}m\" or \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for TtlSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}s", self.seconds))
    }
}

impl JsonSchema for TtlSpec {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How long a HITL/MSIG decision may wait for approval: \"24h\", \"30m\", \"90s\", \"2d\", \"1h30m\" (max 30d).",
            "type": "string", "pattern": "^([0-9]+[dhms])+$", "default": "24h"
        })
    }
}

/// A reason code chosen by the policy author: `lower_snake_case`, stable API like ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ReasonCode(pub String);

impl<'de> Deserialize<'de> for ReasonCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a string", |s: &str| {
            if !is_reason_code(s) {
                return Err(format!(
                    "reason {:?} must be a lower_snake_case code of 1..=64 characters (e.g. \"high_value_requires_dual_approval\")",
                    short(s)
                ));
            }
            Ok(ReasonCode(s.to_string()))
        })
    }
}

pub fn is_reason_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl JsonSchema for ReasonCode {
    fn schema_name() -> Cow<'static, str> {
        "ReasonCode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"description": "lower_snake_case reason code reported in the decision", "type": "string", "pattern": "^[a-z][a-z0-9_]{0,63}$"})
    }
}

/// Per-transaction, daily and monthly caps, in the policy currency. Equality passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Caps {
    /// Largest single payment; above it the intent is denied.
    pub per_txn: Amount,
    /// Spend per calendar day of the policy timezone; above it a human must approve.
    pub daily: Amount,
    /// Spend per calendar month of the policy timezone; above it a human must approve.
    pub monthly: Amount,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MsigThreshold {
    /// Payments strictly above this amount need several approvals.
    pub higher_than: Amount,
    /// Distinct approvals required (1..=32).
    pub approvals: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Msig {
    pub threshold: MsigThreshold,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowLists {
    /// When set, a beneficiary matching none of these needs human approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beneficiaries: Option<Vec<Pattern>>,
    /// When set, a beneficiary country outside this list (or missing) is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<Vec<CountryCode>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlockLists {
    /// Categories (or patterns) that are always denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<Pattern>,
    /// Beneficiary ids (or patterns such as "sanctioned:*") that are always denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub beneficiaries: Vec<Pattern>,
}

/// Conditions of one rule; all present conditions must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conditions {
    /// Intent category matches one of these patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_in: Option<Vec<Pattern>>,
    /// Amount strictly greater than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_gt: Option<Amount>,
    /// Amount greater than or equal to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_gte: Option<Amount>,
    /// `true`: the policy has `allowLists.beneficiaries` and the beneficiary matches none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beneficiary_not_in_allow: Option<bool>,
    /// Beneficiary id matches one of these patterns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beneficiary_in: Option<Vec<Pattern>>,
    /// Beneficiary country is one of these (a missing country does not match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_in: Option<Vec<CountryCode>>,
    /// Beneficiary country is none of these (a missing country matches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_not_in: Option<Vec<CountryCode>>,
    /// Payment purpose is one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_in: Option<Vec<Purpose>>,
}

impl Conditions {
    pub fn is_empty(&self) -> bool {
        *self == Conditions::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Then {
    pub effect: Effect,
    /// Reported as the finding's code.
    pub reason: ReasonCode,
    /// Approvals required; only (and always) for REQUIRE_MSIG.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approvals: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(rename = "if")]
    pub when: Conditions,
    pub then: Then,
}

/// Optional Rego module (evaluated by regorus). The query yields `{effect, reason,
/// approvals?, detail?}` or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegoSpec {
    /// Rego source text of the module.
    pub module: String,
    /// Query whose value is the finding, e.g. `data.spendguard.extra.finding`.
    pub query: String,
}

/// The bare form: the origin document's fields plus `currency`, `timezone`, `approvalTtl`,
/// `rego`, and identity fields (`version`, `tags`) so the canonical form is self-contained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Policy name; in the envelope form it may come from `metadata.name` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub currency: CurrencyCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZoneName>,
    pub caps: Caps,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msig: Option<Msig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_lists: Option<AllowLists>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_lists: Option<BlockLists>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_ttl: Option<TtlSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego: Option<RegoSpec>,
    /// How long an ALLOWed (or approved) authorization stays open for captures before
    /// its uncaptured remainder is released (SPEC §11). Not filled in when absent, so
    /// policies written before it keep their identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "AuthorizationTtlSchema")]
    pub authorization_ttl: Option<TtlSpec>,
    /// Whether a refund gives budget back (`restore`) or not (`ignore`, the default: a
    /// refund loop cannot launder a limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refunds: Option<RefundMode>,
    /// Amount and count limits over calendar or trailing windows, per agent or entity,
    /// optionally filtered (SPEC §12). `caps` stays as shorthand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<LimitSpec>,
    /// Foreign currencies accepted (SPEC §12.3), converted at the latest rate the
    /// ledger recorded before acceptance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fx: Option<FxSpec>,
}

/// SPEC §12.3 `fx`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FxSpec {
    /// ISO 4217 codes accepted besides the policy currency.
    pub accept: Vec<CurrencyCode>,
}

/// Most limits in one policy.
pub const MAX_LIMITS: usize = 64;
/// Shortest and longest trailing window (SPEC §12: 10 s … 366 d).
pub const MIN_TRAILING_SECS: i64 = 10;
pub const MAX_TRAILING_SECS: i64 = 366 * 86_400;

/// One limit (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSpec {
    /// Unique within the policy; named in reasons.
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    pub window: LimitWindow,
    /// Most spend in the window (policy currency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<Amount>,
    /// Most intents in the window (0 is refused by `policy check`: nothing could pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u32>,
    /// `agent` (default) or `entity`: summed over every agent of the intent's entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<LimitScope>,
    /// Which intents count toward the limit and are checked by it (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<LimitFilter>,
    /// Finding when exceeded: REQUIRE_HITL (default), REQUIRE_MSIG or DENY.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<crate::decision::Effect>,
    /// For REQUIRE_MSIG (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub approvals: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CalendarWindow {
    Day,
    /// ISO week, from Monday 00:00 local time.
    Week,
    Month,
    Year,
    AllTime,
}

/// `{calendar: week}` or `{trailing: 24h}`: exactly one of the two.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct LimitWindow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calendar: Option<CalendarWindow>,
    /// Exact: an intent counts at time t iff accepted in (t − d, t].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<TrailingSchema>")]
    pub trailing: Option<TrailingSpec>,
}

/// A limit's window, once validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Calendar(CalendarWindow),
    /// Length in seconds.
    Trailing(i64),
}

impl LimitWindow {
    pub fn calendar(c: CalendarWindow) -> LimitWindow {
        LimitWindow {
            calendar: Some(c),
            trailing: None,
        }
    }

    pub fn trailing(seconds: i64) -> LimitWindow {
        LimitWindow {
            calendar: None,
            trailing: Some(TrailingSpec { seconds }),
        }
    }

    /// The window, when exactly one of `calendar` / `trailing` is given.
    pub fn kind(&self) -> Option<WindowKind> {
        match (self.calendar, self.trailing) {
            (Some(c), None) => Some(WindowKind::Calendar(c)),
            (None, Some(t)) => Some(WindowKind::Trailing(t.seconds)),
            _ => None,
        }
    }
}

/// A trailing window length (10s … 366d), same syntax as durations elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrailingSpec {
    pub seconds: i64,
}

impl<'de> Deserialize<'de> for TrailingSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let seconds = parse_duration_unbounded(&text).map_err(de::Error::custom)?;
        if !(MIN_TRAILING_SECS..=MAX_TRAILING_SECS).contains(&seconds) {
            return Err(de::Error::custom(format!(
                "trailing window {text:?} is out of range: 10s … 366d"
            )));
        }
        Ok(TrailingSpec { seconds })
    }
}

impl Serialize for TrailingSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}s", self.seconds))
    }
}

struct TrailingSchema;

impl JsonSchema for TrailingSchema {
    fn schema_name() -> Cow<'static, str> {
        "TrailingWindow".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Trailing window length, 10s … 366d: \"24h\", \"7d\", \"90s\".",
            "type": "string", "pattern": "^([0-9]+[dhms])+$"
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    Agent,
    Entity,
}

/// Filter of a limit: every given condition must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_in: Option<Vec<Pattern>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beneficiary_in: Option<Vec<Pattern>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country_in: Option<Vec<CountryCode>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose_in: Option<Vec<Purpose>>,
}

/// SPEC §11 `refunds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RefundMode {
    /// A refund lowers the usage of the original intent's windows.
    Restore,
    /// A refund is recorded but gives no budget back (default).
    Ignore,
}

/// Schema of `authorizationTtl` (the same duration syntax as `approvalTtl`).
struct AuthorizationTtlSchema;

impl JsonSchema for AuthorizationTtlSchema {
    fn schema_name() -> Cow<'static, str> {
        "AuthorizationTtl".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "How long an authorization stays open for captures before the ledger releases its uncaptured remainder (AUTH_EXPIRED): \"7d\", \"36h\" (max 30d).",
            "type": "string", "pattern": "^([0-9]+[dhms])+$", "default": "7d"
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnvelopeMetadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Accepted for compatibility with the origin document; not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    #[serde(rename = "policy.spendguard.v1")]
    SpendguardV1,
    /// The origin document's name, accepted as an alias.
    #[serde(rename = "policy.orchestra.v1")]
    OrchestraV1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Kind {
    SpendPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Envelope {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: EnvelopeMetadata,
    pub spec: PolicySpec,
}

/// A policy file: the versioned envelope or the bare form. Used for the JSON Schema.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
#[schemars(title = "spendguard spending policy")]
pub enum PolicyDocument {
    Envelope(Box<Envelope>),
    Bare(Box<PolicySpec>),
}

/// Deserializes a string through a visitor: serde_yaml attaches the token's line and
/// column only to errors raised inside a visitor, not after `String::deserialize`.
fn parse_str<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &'static str,
    f: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<T> {
        what: &'static str,
        f: fn(&str) -> Result<T, String>,
    }
    impl<T> de::Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, fm: &mut fmt::Formatter) -> fmt::Result {
            fm.write_str(self.what)
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.f)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V { what, f })
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("24h"), Ok(86_400));
        assert_eq!(parse_duration_secs("1h30m"), Ok(5_400));
        assert_eq!(parse_duration_secs("2d"), Ok(172_800));
        assert!(parse_duration_secs("24").is_err());
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("0s").is_err());
        assert!(parse_duration_secs("31d").is_err());
        assert!(parse_duration_secs("5w").is_err());
    }

    #[test]
    fn float_amounts_keep_their_literal() {
        let a: Amount = serde_json::from_str("0.1").unwrap();
        assert_eq!(a.0.to_string(), "0.1");
        let a: Amount = serde_yaml::from_str("300.10").unwrap();
        assert_eq!(a.0.to_string(), "300.1");
        assert!(serde_json::from_str::<Amount>("-1").is_err());
        assert!(serde_json::from_str::<Amount>("\"abc\"").is_err());
    }
}
