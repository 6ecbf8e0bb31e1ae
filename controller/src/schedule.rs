//! Cron schedules: parsing and tick arithmetic, in UTC.
//!
//! Schedules are standard 5-field cron expressions (`minute hour day-of-month month
//! day-of-week`, Vixie semantics: when both day fields are restricted, either may match) or the
//! usual nicknames (`@hourly`, `@daily`, …), evaluated in UTC so every replica agrees. A seconds
//! field is refused: a backup per second is never what anyone meant.
//!
//! A *tick* is an instant the schedule matches. The controller acts on the latest tick at or
//! before "now" and sleeps until the next one.

use chrono::{DateTime, Duration, Utc};
use croner::parser::{CronParser, Seconds};
use croner::Cron;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    text: String,
}

/// A schedule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {text:?}: {reason}")]
pub struct ScheduleError {
    /// The text given.
    pub text: String,
    /// Why it was refused.
    pub reason: String,
}

impl Schedule {
    /// Parses a 5-field cron expression or nickname.
    pub fn parse(text: &str) -> Result<Self, ScheduleError> {
        let err = |reason: String| ScheduleError {
            text: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(err("empty".into()));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(trimmed)
            .map_err(|e| err(e.to_string()))?;
        // A pattern that never fires (e.g. 30 February) would make every lookup fail later.
        let schedule = Schedule {
            cron,
            text: trimmed.to_string(),
        };
        let probe = DateTime::<Utc>::from_timestamp(0, 0).unwrap_or_default();
        if schedule.next_tick(probe).is_none() {
            return Err(err("it never matches".into()));
        }
        Ok(schedule)
    }

    /// The expression as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The latest tick at or before `now`.
    pub fn latest_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_previous_occurrence(&now, true).ok()
    }

    /// The first tick strictly after `now`.
    pub fn next_tick(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&now, false).ok()
    }

    /// The time between the tick after `now` and the one after it: the series' expected
    /// backup interval (for schedules with uneven gaps, the gap that starts next).
    pub fn interval_after(&self, now: DateTime<Utc>) -> Option<Duration> {
        let a = self.next_tick(now)?;
        let b = self.next_tick(a)?;
        Some(b - a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn six_hourly_ticks() {
        let s = Schedule::parse("0 */6 * * *").unwrap();
        let now = t("2025-03-10T13:27:45Z");
        assert_eq!(s.latest_tick(now), Some(t("2025-03-10T12:00:00Z")));
        assert_eq!(s.next_tick(now), Some(t("2025-03-10T18:00:00Z")));
        assert_eq!(s.interval_after(now), Some(Duration::hours(6)));
    }

    #[test]
    fn a_tick_instant_is_its_own_latest_tick() {
        let s = Schedule::parse("0 */6 * * *").unwrap();
        let tick = t("2025-03-10T18:00:00Z");
        assert_eq!(s.latest_tick(tick), Some(tick));
        assert_eq!(s.next_tick(tick), Some(t("2025-03-11T00:00:00Z")));
    }

    #[test]
    fn nicknames_and_day_fields() {
        let s = Schedule::parse("@daily").unwrap();
        assert_eq!(
            s.latest_tick(t("2025-03-10T13:00:00Z")),
            Some(t("2025-03-10T00:00:00Z"))
        );
        // Sundays at 03:30.
        let s = Schedule::parse("30 3 * * 0").unwrap();
        assert_eq!(
            s.next_tick(t("2025-03-10T00:00:00Z")),
            Some(t("2025-03-16T03:30:00Z"))
        );
        assert_eq!(
            s.interval_after(t("2025-03-10T00:00:00Z")),
            Some(Duration::weeks(1))
        );
    }

    #[test]
    fn refuses_bad_expressions() {
        for bad in [
            "",
            "  ",
            "every day",
            "0 */6 * *",
            "* * * * * *",
            "0 0 30 2 *",
            "61 * * * *",
        ] {
            let err = Schedule::parse(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid schedule"),
                "{bad}: {err}"
            );
        }
    }
}
