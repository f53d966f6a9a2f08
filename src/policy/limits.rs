//! Limits (SPEC §12): amount and count limits over calendar or trailing windows, per
//! agent or per entity, optionally filtered. Pure: the ledger gathers what counted
//! before an intent ([`SoFar`], one per limit) and the evaluator turns it into findings.
//!
//! Exactness: calendar windows are computed in the policy's IANA zone from the
//! acceptance instant (ISO weeks from Monday; DST-safe through `start_of_local_day`);
//! a trailing window of length d at t holds exactly the intents accepted in (t − d, t]
//! — there are no buckets.

use super::compile::{CountrySet, Matcher, purpose_bit};
use super::model::{CalendarWindow, LimitScope, LimitSpec, WindowKind};
use crate::decision::{Effect, Finding};
use crate::intent::{Purpose, SpendIntent};
use crate::money::format_amount;
use crate::window::start_of_local_day;
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use rust_decimal::Decimal;
use std::borrow::Cow;

pub const WOULD_EXCEED_AMOUNT_LIMIT: &str = "would_exceed_amount_limit";
pub const WOULD_EXCEED_COUNT_LIMIT: &str = "would_exceed_count_limit";

/// A limit ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledLimit {
    pub name: String,
    pub window: WindowKind,
    pub amount: Option<Decimal>,
    pub count: Option<u32>,
    pub scope: LimitScope,
    pub filter: Filter,
    pub effect: Effect,
    pub approvals: u32,
}

/// A limit's filter, compiled (`None` = any).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    categories: Option<Matcher>,
    beneficiaries: Option<Matcher>,
    countries: Option<CountrySet>,
    /// Bits of `Purpose::ALL`.
    purposes: Option<u8>,
}

/// The attributes of an intent a filter looks at.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    pub category: &'a str,
    pub beneficiary: &'a str,
    pub country: Option<&'a str>,
    pub purpose: Purpose,
}

impl<'a> Attributes<'a> {
    pub fn of(intent: &'a SpendIntent) -> Attributes<'a> {
        Attributes {
            category: &intent.category,
            beneficiary: &intent.beneficiary.id,
            country: intent.beneficiary.country.as_deref(),
            purpose: intent.purpose,
        }
    }
}

impl Filter {
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        self.categories
            .as_ref()
            .is_none_or(|m| m.matches(a.category))
            && self
                .beneficiaries
                .as_ref()
                .is_none_or(|m| m.matches(a.beneficiary))
            && self
                .countries
                .as_ref()
                .is_none_or(|c| a.country.is_some_and(|x| c.contains(x)))
            && self
                .purposes
                .is_none_or(|bits| bits & purpose_bit(a.purpose) != 0)
    }

    /// A filter no intent can pass (an empty list).
    pub fn matches_nothing(&self) -> bool {
        self.categories.as_ref().is_some_and(Matcher::is_empty)
            || self.beneficiaries.as_ref().is_some_and(Matcher::is_empty)
            || self.countries.as_ref().is_some_and(CountrySet::is_empty)
            || self.purposes == Some(0)
    }

    pub fn is_any(&self) -> bool {
        self.categories.is_none()
            && self.beneficiaries.is_none()
            && self.countries.is_none()
            && self.purposes.is_none()
    }
}

impl CompiledLimit {
    pub fn compile(spec: &LimitSpec) -> CompiledLimit {
        let f = spec.filter.clone().unwrap_or_default();
        let effect = spec.effect.unwrap_or(Effect::RequireHitl);
        CompiledLimit {
            name: spec.name.clone(),
            // `validate_limits` refused a window without exactly one kind.
            window: spec
                .window
                .kind()
                .unwrap_or(WindowKind::Calendar(CalendarWindow::AllTime)),
            amount: spec.amount.as_ref().map(|a| a.0),
            count: spec.count,
            scope: spec.scope.unwrap_or(LimitScope::Agent),
            filter: Filter {
                categories: f.category_in.as_deref().map(Matcher::new),
                beneficiaries: f.beneficiary_in.as_deref().map(Matcher::new),
                countries: f.country_in.as_deref().map(CountrySet::new),
                purposes: f
                    .purpose_in
                    .as_ref()
                    .map(|ps| ps.iter().fold(0u8, |bits, p| bits | purpose_bit(*p))),
            },
            effect,
            approvals: match effect {
                Effect::RequireMsig => spec.approvals.unwrap_or(2),
                Effect::RequireHitl => 1,
                _ => 0,
            },
        }
    }

    /// The window containing `now`: `[from, until)`, `from = None` for all time.
    pub fn span(&self, now: DateTime<Utc>, tz: Tz) -> Span {
        Spans::new(now, tz).of(self)
    }
}

/// A window's name in reasons and usage reports (`week of 2026-11-23`, `trailing 24h`,
/// `all time`). Kept as data and formatted only when shown: a decision carries one per
/// limit, and formatting them all is most of what deciding with limits would cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowLabel {
    Day(NaiveDate),
    /// The week's Monday.
    Week(NaiveDate),
    /// The month's first day.
    Month(NaiveDate),
    Year(i32),
    AllTime,
    /// Length in seconds.
    Trailing(i64),
}

impl std::fmt::Display for WindowLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowLabel::Day(d) => write!(f, "day {d}"),
            WindowLabel::Week(monday) => write!(f, "week of {monday}"),
            WindowLabel::Month(first) => write!(f, "month {}", first.format("%Y-%m")),
            WindowLabel::Year(y) => write!(f, "year {y}"),
            WindowLabel::AllTime => f.write_str("all time"),
            WindowLabel::Trailing(secs) => write!(f, "trailing {}", describe_secs(*secs)),
        }
    }
}

impl std::str::FromStr for WindowLabel {
    type Err = String;

    /// The inverse of `Display` (recorded decisions are read back by replay).
    fn from_str(s: &str) -> Result<WindowLabel, String> {
        let bad = || format!("not a window label: {s:?}");
        let date = |d: &str| NaiveDate::parse_from_str(d, "%Y-%m-%d").map_err(|_| bad());
        if s == "all time" {
            return Ok(WindowLabel::AllTime);
        }
        if let Some(d) = s.strip_prefix("week of ") {
            return date(d).map(WindowLabel::Week);
        }
        if let Some(d) = s.strip_prefix("day ") {
            return date(d).map(WindowLabel::Day);
        }
        if let Some(m) = s.strip_prefix("month ") {
            return date(&format!("{m}-01")).map(WindowLabel::Month);
        }
        if let Some(y) = s.strip_prefix("year ") {
            return y.parse().map(WindowLabel::Year).map_err(|_| bad());
        }
        if let Some(t) = s.strip_prefix("trailing ") {
            let (n, unit) = t.split_at(t.len().saturating_sub(1));
            let n: i64 = n.parse().map_err(|_| bad())?;
            let per = match unit {
                "d" => 86_400,
                "h" => 3_600,
                "m" => 60,
                "s" => 1,
                _ => return Err(bad()),
            };
            return Ok(WindowLabel::Trailing(n * per));
        }
        Err(bad())
    }
}

impl serde::Serialize for WindowLabel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for WindowLabel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<WindowLabel, D::Error> {
        let text = <Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a window starts and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub from: Option<DateTime<Utc>>,
    /// Calendar windows include their first instant; trailing ones exclude it.
    pub from_inclusive: bool,
    pub label: WindowLabel,
    /// The instant the window was taken at (it contains it).
    pub at: DateTime<Utc>,
    tz: Tz,
}

impl Span {
    /// When a calendar window resets (trailing windows free up as intents age out).
    /// Computed on demand: deciding needs it only for a record accepted after `at`.
    pub fn until(&self) -> Option<DateTime<Utc>> {
        let next = match self.label {
            WindowLabel::Day(d) => d.succ_opt(),
            WindowLabel::Week(monday) => monday.checked_add_signed(Duration::days(7)),
            WindowLabel::Month(first) => {
                if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
            }
            WindowLabel::Year(y) => NaiveDate::from_ymd_opt(y + 1, 1, 1),
            WindowLabel::AllTime | WindowLabel::Trailing(_) => None,
        }?;
        Some(start_of_local_day(next, self.tz))
    }

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.after_start(at) && self.until().is_none_or(|u| at < u)
    }

    pub fn after_start(&self, at: DateTime<Utc>) -> bool {
        match self.from {
            None => true,
            Some(f) if self.from_inclusive => at >= f,
            Some(f) => at > f,
        }
    }
}

/// The windows of many limits at one instant: the policy zone's local date is found
/// once, and each calendar window's start once however many limits share it.
pub struct Spans {
    now: DateTime<Utc>,
    tz: Tz,
    local: NaiveDate,
    /// Start of the day / week / month / year containing `now`, once computed.
    starts: [Option<DateTime<Utc>>; 4],
}

impl Spans {
    pub fn new(now: DateTime<Utc>, tz: Tz) -> Spans {
        Spans {
            now,
            tz,
            local: now.with_timezone(&tz).date_naive(),
            starts: [None; 4],
        }
    }

    pub fn of(&mut self, limit: &CompiledLimit) -> Span {
        let (from, from_inclusive, label) = match limit.window {
            // (now − d, now]: an intent accepted exactly d ago has fallen out.
            WindowKind::Trailing(secs) => (
                Some(self.now - Duration::seconds(secs)),
                false,
                WindowLabel::Trailing(secs),
            ),
            WindowKind::Calendar(CalendarWindow::AllTime) => (None, true, WindowLabel::AllTime),
            WindowKind::Calendar(c) => {
                let (slot, label) = self.calendar(c);
                let first = match label {
                    WindowLabel::Day(d) | WindowLabel::Week(d) | WindowLabel::Month(d) => d,
                    WindowLabel::Year(y) => NaiveDate::from_ymd_opt(y, 1, 1).unwrap_or(self.local),
                    WindowLabel::AllTime | WindowLabel::Trailing(_) => self.local,
                };
                let tz = self.tz;
                let start = *self.starts[slot].get_or_insert_with(|| start_of_local_day(first, tz));
                (Some(start), true, label)
            }
        };
        Span {
            from,
            from_inclusive,
            label,
            at: self.now,
            tz: self.tz,
        }
    }

    fn calendar(&self, c: CalendarWindow) -> (usize, WindowLabel) {
        let local = self.local;
        match c {
            CalendarWindow::Day => (0, WindowLabel::Day(local)),
            CalendarWindow::Week => (
                1,
                WindowLabel::Week(
                    local - Duration::days(i64::from(local.weekday().num_days_from_monday())),
                ),
            ),
            CalendarWindow::Month => (2, WindowLabel::Month(local.with_day(1).unwrap_or(local))),
            CalendarWindow::Year | CalendarWindow::AllTime => (3, WindowLabel::Year(local.year())),
        }
    }
}

fn describe_secs(s: i64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s % n == 0 {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// What counted toward one limit before an intent, in its window and scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SoFar {
    pub amount: Decimal,
    pub count: u32,
}

/// The findings of every limit that applies to `intent` (its filter matches), given
/// what counted before it (`so_far[i]` for `limits[i]`; missing = zero). Equality passes.
#[allow(clippy::too_many_arguments)]
pub fn check(
    limits: &[CompiledLimit],
    so_far: &[SoFar],
    intent: &SpendIntent,
    now: DateTime<Utc>,
    tz: Tz,
    minor_units: u32,
    currency: &str,
    out: &mut Vec<Finding>,
) {
    let attrs = Attributes::of(intent);
    for (i, limit) in limits.iter().enumerate() {
        if !limit.filter.matches(&attrs) {
            continue;
        }
        let used = so_far.get(i).copied().unwrap_or_default();
        let label = || limit.span(now, tz).label;
        let amt = |d: Decimal| format_amount(d, minor_units);
        if let Some(max) = limit.amount
            && used.amount + intent.amount > max
        {
            out.push(Finding {
                effect: limit.effect,
                code: Cow::Borrowed(WOULD_EXCEED_AMOUNT_LIMIT),
                detail: Cow::Owned(format!(
                    "{}: {} + {} > {} {currency} ({}, {})",
                    limit.name,
                    amt(used.amount),
                    amt(intent.amount),
                    amt(max),
                    label(),
                    tz.name()
                )),
                approvals: limit.approvals,
            });
        }
        if let Some(max) = limit.count
            && used.count.saturating_add(1) > max
        {
            out.push(Finding {
                effect: limit.effect,
                code: Cow::Borrowed(WOULD_EXCEED_COUNT_LIMIT),
                detail: Cow::Owned(format!(
                    "{}: {} + 1 > {max} intents ({}, {})",
                    limit.name,
                    used.count,
                    label(),
                    tz.name()
                )),
                approvals: limit.approvals,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn limit(window: WindowKind) -> CompiledLimit {
        CompiledLimit {
            name: "l".into(),
            window,
            amount: None,
            count: None,
            scope: LimitScope::Agent,
            filter: Filter::default(),
            effect: Effect::RequireHitl,
            approvals: 1,
        }
    }

    #[test]
    fn iso_week_starts_monday_midnight_in_the_policy_zone() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let l = limit(WindowKind::Calendar(CalendarWindow::Week));
        // Sunday 2026-11-29 23:59:59 local = 02:59:59Z Monday.
        let sunday = l.span(utc("2026-11-30T02:59:59Z"), tz);
        assert_eq!(sunday.label.to_string(), "week of 2026-11-23");
        let monday = l.span(utc("2026-11-30T03:00:00Z"), tz);
        assert_eq!(monday.label.to_string(), "week of 2026-11-30");
        assert_eq!(monday.from, Some(utc("2026-11-30T03:00:00Z")));
        assert!(monday.contains(utc("2026-11-30T03:00:00Z")));
        assert!(!monday.contains(utc("2026-11-30T02:59:59Z")));
        assert_eq!(sunday.until(), monday.from);
    }

    #[test]
    fn year_and_all_time() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let y = limit(WindowKind::Calendar(CalendarWindow::Year));
        let s = y.span(utc("2027-01-01T02:59:59Z"), tz);
        assert_eq!(s.label.to_string(), "year 2026");
        assert_eq!(s.until(), Some(utc("2027-01-01T03:00:00Z")));
        let all = limit(WindowKind::Calendar(CalendarWindow::AllTime));
        assert!(
            all.span(utc("2027-01-01T00:00:00Z"), tz)
                .contains(utc("1990-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn trailing_window_drops_an_intent_exactly_at_its_length() {
        let tz: Tz = "UTC".parse().unwrap();
        let l = limit(WindowKind::Trailing(86_400));
        let now = utc("2026-11-30T12:00:00Z");
        let s = l.span(now, tz);
        assert!(s.contains(utc("2026-11-29T12:00:00.000001Z")));
        assert!(!s.contains(utc("2026-11-29T12:00:00Z")), "(t − d, t]");
        assert!(s.contains(now));
        assert_eq!(s.label.to_string(), "trailing 1d");
    }

    #[test]
    fn window_labels_read_back_as_written() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        for l in [
            WindowLabel::Day(d),
            WindowLabel::Week(d),
            WindowLabel::Month(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()),
            WindowLabel::Year(2026),
            WindowLabel::AllTime,
            WindowLabel::Trailing(86_400),
            WindowLabel::Trailing(7_200),
            WindowLabel::Trailing(600),
            WindowLabel::Trailing(90),
        ] {
            assert_eq!(l.to_string().parse::<WindowLabel>(), Ok(l), "{l}");
        }
        assert!("fortnight 3".parse::<WindowLabel>().is_err());
        assert!("trailing 5x".parse::<WindowLabel>().is_err());
    }

    #[test]
    fn spans_share_a_calendar_start_and_match_one_by_one() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let now = utc("2026-12-31T10:00:00Z");
        let mut spans = Spans::new(now, tz);
        for w in [
            WindowKind::Calendar(CalendarWindow::Day),
            WindowKind::Calendar(CalendarWindow::Week),
            WindowKind::Calendar(CalendarWindow::Month),
            WindowKind::Calendar(CalendarWindow::Year),
            WindowKind::Calendar(CalendarWindow::AllTime),
            WindowKind::Trailing(3_600),
            WindowKind::Calendar(CalendarWindow::Day),
        ] {
            let l = limit(w);
            let alone = Spans::new(now, tz).of(&l);
            assert_eq!(spans.of(&l), alone);
            assert!(alone.contains(now));
        }
    }

    #[test]
    fn dst_change_in_new_york_keeps_the_day_exact() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let d = limit(WindowKind::Calendar(CalendarWindow::Day));
        // 2026-11-01 is 25 hours long in New York (DST ends).
        let s = d.span(utc("2026-11-01T12:00:00Z"), tz);
        assert_eq!(s.from, Some(utc("2026-11-01T04:00:00Z")));
        assert_eq!(s.until(), Some(utc("2026-11-02T05:00:00Z")));
    }
}
