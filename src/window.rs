//! Usage-window arithmetic (SPEC §2.2): which calendar day and month of the policy's
//! IANA timezone contain the moment the ledger accepted an intent, and when they reset.
//! Pure: no clock is read here; callers pass the ledger's acceptance time.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// The windows an instant falls in, in one timezone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Windows {
    /// Local calendar day.
    pub day: NaiveDate,
    /// First day of the local calendar month (identifies the month window).
    pub month: NaiveDate,
}

impl Windows {
    pub fn containing(at: DateTime<Utc>, tz: Tz) -> Windows {
        let local = at.with_timezone(&tz).date_naive();
        Windows {
            day: local,
            month: first_of_month(local),
        }
    }

    /// The instant the day window ends (next local midnight, or the first instant of the
    /// next local day where midnight does not exist because of a DST jump).
    pub fn day_resets_at(&self, tz: Tz) -> DateTime<Utc> {
        start_of_local_day(self.day.succ_opt().unwrap_or(self.day), tz)
    }

    /// The instant the month window ends.
    pub fn month_resets_at(&self, tz: Tz) -> DateTime<Utc> {
        let next = if self.month.month() == 12 {
            NaiveDate::from_ymd_opt(self.month.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(self.month.year(), self.month.month() + 1, 1)
        };
        start_of_local_day(next.unwrap_or(self.month), tz)
    }
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).unwrap_or(d)
}

/// First instant of a local date. Some zones skip midnight on DST day (e.g. historic
/// America/Sao_Paulo): then the day starts at the first local time that exists.
pub fn start_of_local_day(date: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).expect("midnight is a valid time");
    for _ in 0..4 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(x) => return x.with_timezone(&Utc),
            LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
            LocalResult::None => t += chrono::Duration::minutes(30),
        }
    }
    Utc.from_utc_datetime(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn sao_paulo_midnight_is_three_hours_after_utc_midnight() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let before = Windows::containing(utc("2026-11-26T02:59:59Z"), tz);
        let after = Windows::containing(utc("2026-11-26T03:00:00Z"), tz);
        assert_eq!(before.day.to_string(), "2026-11-25");
        assert_eq!(after.day.to_string(), "2026-11-26");
        assert_eq!(before.day_resets_at(tz), utc("2026-11-26T03:00:00Z"));
    }

    #[test]
    fn month_end_in_local_time() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let w = Windows::containing(utc("2026-12-01T02:00:00Z"), tz);
        assert_eq!(w.month.to_string(), "2026-11-01");
        assert_eq!(w.month_resets_at(tz), utc("2026-12-01T03:00:00Z"));
        let dec = Windows::containing(utc("2026-12-31T23:00:00Z"), tz);
        assert_eq!(dec.month_resets_at(tz), utc("2027-01-01T03:00:00Z"));
    }

    #[test]
    fn new_york_dst_day_is_23_hours() {
        let tz: Tz = "America/New_York".parse().unwrap();
        let w = Windows::containing(utc("2026-03-08T12:00:00Z"), tz);
        let start = start_of_local_day(w.day, tz);
        assert_eq!((w.day_resets_at(tz) - start).num_hours(), 23);
    }
}
