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
        match self.window {
            WindowKind::Trailing(secs) => Span {
                // (now − d, now]: an intent accepted exactly d ago has fallen out.
                from: Some(now - Duration::seconds(secs)),
                from_inclusive: false,
                until: None,
                label: Cow::Owned(format!("trailing {}", describe_secs(secs))),
            },
            WindowKind::Calendar(c) => calendar_span(c, now, tz),
        }
    }
}

/// Where a window starts and ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub from: Option<DateTime<Utc>>,
    /// Calendar windows include their first instant; trailing ones exclude it.
    pub from_inclusive: bool,
    /// When a calendar window resets (trailing windows free up as intents age out).
    pub until: Option<DateTime<Utc>>,
    /// `week of 2026-11-23`, `trailing 24h`, `all time`.
    pub label: Cow<'static, str>,
}

impl Span {
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        let after_start = match self.from {
            None => true,
            Some(f) if self.from_inclusive => at >= f,
            Some(f) => at > f,
        };
        after_start && self.until.is_none_or(|u| at < u)
    }
}

fn calendar_span(c: CalendarWindow, now: DateTime<Utc>, tz: Tz) -> Span {
    let local = now.with_timezone(&tz).date_naive();
    let (first, next, label): (NaiveDate, Option<NaiveDate>, String) = match c {
        CalendarWindow::Day => (local, local.succ_opt(), format!("day {local}")),
        CalendarWindow::Week => {
            let monday = local - Duration::days(i64::from(local.weekday().num_days_from_monday()));
            (
                monday,
                monday.checked_add_signed(Duration::days(7)),
                format!("week of {monday}"),
            )
        }
        CalendarWindow::Month => {
            let first = local.with_day(1).unwrap_or(local);
            let next = if first.month() == 12 {
                NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
            } else {
                NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
            };
            (first, next, format!("month {}", first.format("%Y-%m")))
        }
        CalendarWindow::Year => {
            let first = NaiveDate::from_ymd_opt(local.year(), 1, 1).unwrap_or(local);
            (
                first,
                NaiveDate::from_ymd_opt(local.year() + 1, 1, 1),
                format!("year {}", local.year()),
            )
        }
        CalendarWindow::AllTime => {
            return Span {
                from: None,
                from_inclusive: true,
                until: None,
                label: Cow::Borrowed("all time"),
            };
        }
    };
    Span {
        from: Some(start_of_local_day(first, tz)),
        from_inclusive: true,
        until: next.map(|n| start_of_local_day(n, tz)),
        label: Cow::Owned(label),
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
        assert_eq!(sunday.label, "week of 2026-11-23");
        let monday = l.span(utc("2026-11-30T03:00:00Z"), tz);
        assert_eq!(monday.label, "week of 2026-11-30");
        assert_eq!(monday.from, Some(utc("2026-11-30T03:00:00Z")));
        assert!(monday.contains(utc("2026-11-30T03:00:00Z")));
        assert!(!monday.contains(utc("2026-11-30T02:59:59Z")));
        assert_eq!(sunday.until, monday.from);
    }

    #[test]
    fn year_and_all_time() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let y = limit(WindowKind::Calendar(CalendarWindow::Year));
        let s = y.span(utc("2027-01-01T02:59:59Z"), tz);
        assert_eq!(s.label, "year 2026");
        assert_eq!(s.until, Some(utc("2027-01-01T03:00:00Z")));
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
        assert_eq!(s.label, "trailing 1d");
    }

    #[test]
    fn dst_change_in_new_york_keeps_the_day_exact() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let d = limit(WindowKind::Calendar(CalendarWindow::Day));
        // 2026-11-01 is 25 hours long in New York (DST ends).
        let s = d.span(utc("2026-11-01T12:00:00Z"), tz);
        assert_eq!(s.from, Some(utc("2026-11-01T04:00:00Z")));
        assert_eq!(s.until, Some(utc("2026-11-02T05:00:00Z")));
    }
}
