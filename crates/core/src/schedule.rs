//! Cron schedules: standard 5-field cron expressions (and `@daily`-style nicknames) evaluated
//! in a named time zone or local time, correct across DST changes (croner walks wall-clock time
//! in the zone; a fixed UTC offset would drift by an hour after a change).
//!
//! Pure: every function takes `now`; only the daemon reads a clock.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Local, SubsecRound, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(Debug, Clone)]
pub enum Zone {
    Local,
    Named(Tz),
}

#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: Cron,
    zone: Zone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "invalid cron expression {expr:?}: {reason} (expected 5 fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\")"
    )]
    Cron { expr: String, reason: String },
    #[error("unknown time zone {0:?} (use an IANA name such as Europe/Paris)")]
    Zone(String),
    #[error(
        "cron expression {0:?} never fires (no date matches it, e.g. 31 February); check the day-of-month and month fields"
    )]
    Never(String),
}

/// A schedule must fire within this many years of [`REFERENCE`]: every 5-field schedule that
/// fires at all does (29 February can be 8 years away, over a century's skipped leap day).
const HORIZON_YEARS: i32 = 8;
/// A fixed point to look for the first fire time from, so the verdict never depends on the
/// clock.
const REFERENCE: &str = "2024-01-01T00:00:00Z";

impl Schedule {
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Self, ScheduleError> {
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && fields != 5 {
            return Err(ScheduleError::Cron {
                expr: expr.to_owned(),
                reason: format!("{fields} fields"),
            });
        }
        let cron = Cron::from_str(expr).map_err(|e| ScheduleError::Cron {
            expr: expr.to_owned(),
            reason: e.to_string(),
        })?;
        let zone = match timezone {
            None => Zone::Local,
            Some(name) => Zone::Named(
                name.parse::<Tz>()
                    .map_err(|_| ScheduleError::Zone(name.to_owned()))?,
            ),
        };
        let schedule = Schedule {
            expr: expr.to_owned(),
            cron,
            zone,
        };
        if !schedule.fires() {
            return Err(ScheduleError::Never(expr.to_owned()));
        }
        Ok(schedule)
    }

    /// Whether the schedule has a fire time within [`HORIZON_YEARS`] of [`REFERENCE`].
    fn fires(&self) -> bool {
        let Ok(start) = DateTime::parse_from_rfc3339(REFERENCE) else {
            return true;
        };
        let start = start.with_timezone(&Utc);
        let end = start
            .with_year(start.year() + HORIZON_YEARS)
            .unwrap_or(start);
        self.next_after(start).is_some_and(|t| t < end)
    }

    /// The IANA zone the schedule was given, or `None` for the machine's local time.
    pub fn zone_name(&self) -> Option<&'static str> {
        match &self.zone {
            Zone::Local => None,
            Zone::Named(tz) => Some(tz.name()),
        }
    }

    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.trunc_subsecs(0);
        match &self.zone {
            Zone::Local => self
                .cron
                .find_next_occurrence(&after.with_timezone(&Local), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
            Zone::Named(tz) => self
                .cron
                .find_next_occurrence(&after.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    /// The latest fire time in `(since, now]`, if any: the slot a catch-up run stands for.
    pub fn missed_between(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let mut t = self.next_after(since)?;
        if t > now {
            return None;
        }
        // Walk forward to the latest slot not after `now`; bounded so that a schedule of
        // every minute after a year offline does not loop for long.
        for _ in 0..100_000 {
            match self.next_after(t) {
                Some(n) if n <= now => t = n,
                _ => break,
            }
        }
        Some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_fields_required() {
        assert!(Schedule::parse("0 3 * * *", None).is_ok());
        assert!(Schedule::parse("@daily", None).is_ok());
        let e = Schedule::parse("0 0 3 * * *", None).unwrap_err();
        assert!(e.to_string().contains("6 fields"), "{e}");
        assert!(Schedule::parse("61 3 * * *", None).is_err());
        assert!(matches!(
            Schedule::parse("0 3 * * *", Some("Mars/Olympus")),
            Err(ScheduleError::Zone(_))
        ));
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused() {
        for expr in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *"] {
            let e = Schedule::parse(expr, Some("UTC")).unwrap_err();
            assert_eq!(e, ScheduleError::Never(expr.to_owned()));
            assert!(e.to_string().contains("never fires"), "{e}");
        }
        // Rare but real: 29 February, and the 31st of the months that have one.
        for expr in ["0 0 29 2 *", "0 0 31 1-12 *", "@yearly"] {
            assert!(Schedule::parse(expr, Some("UTC")).is_ok(), "{expr}");
        }
        // Day of month and day of week are alternatives (as in cron): this fires on Mondays.
        assert!(Schedule::parse("0 0 31 2 1", None).is_ok());
    }

    #[test]
    fn daily_at_three_in_paris_across_spring_forward() {
        let s = Schedule::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        // 2026-03-29 is the spring-forward day in Europe (02:00 -> 03:00 CEST).
        let t1 = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(t1, utc("2026-03-29T01:00:00Z")); // 03:00 CEST = 01:00 UTC
        let t0 = s.next_after(utc("2026-03-27T12:00:00Z")).unwrap();
        assert_eq!(t0, utc("2026-03-28T02:00:00Z")); // 03:00 CET = 02:00 UTC
        let t2 = s.next_after(t1).unwrap();
        assert_eq!(t2, utc("2026-03-30T01:00:00Z"));
    }

    #[test]
    fn daily_at_three_in_paris_across_fall_back() {
        let s = Schedule::parse("0 3 * * *", Some("Europe/Paris")).unwrap();
        // 2026-10-25: 03:00 CEST -> 02:00 CET.
        let t = s.next_after(utc("2026-10-24T12:00:00Z")).unwrap();
        assert_eq!(t, utc("2026-10-25T02:00:00Z")); // 03:00 CET
        let t = s.next_after(t).unwrap();
        assert_eq!(t, utc("2026-10-26T02:00:00Z"));
    }

    #[test]
    fn skipped_wall_clock_hour_fires_once() {
        // 02:30 does not exist on 2026-03-29 in Paris. Whatever croner picks, it must be one
        // fire on that day or the next, never an hour-long loop or a panic.
        let s = Schedule::parse("30 2 * * *", Some("Europe/Paris")).unwrap();
        let t = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert!(t > utc("2026-03-28T12:00:00Z") && t < utc("2026-03-30T12:00:00Z"));
    }

    #[test]
    fn missed_slot_is_the_latest_before_now() {
        let s = Schedule::parse("0 3 * * *", Some("UTC")).unwrap();
        let since = utc("2026-11-20T03:00:00Z");
        let now = utc("2026-11-23T10:00:00Z");
        assert_eq!(
            s.missed_between(since, now),
            Some(utc("2026-11-23T03:00:00Z"))
        );
        assert_eq!(s.missed_between(now, now), None);
        let zone = chrono_tz::UTC;
        let _ = zone.with_ymd_and_hms(2026, 1, 1, 0, 0, 0);
    }
}
