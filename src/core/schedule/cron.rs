//! Cloud Scheduler's unix-cron: five fields (minute, hour, day of month, month, day of week) of
//! `*`, numbers, names (`JAN`–`DEC`, `SUN`–`SAT`), ranges, lists and steps; and the times an
//! expression fires in an IANA time zone.
//!
//! As in cron, when both day fields are restricted (neither is exactly `*`), a day matches when
//! either does: `0 0 1 * MON` fires on the 1st and on Mondays.
//!
//! Daylight saving time: an expression names local wall-clock times. A local time that a
//! spring-forward skips fires once, at the first instant after the gap (`30 2 * * *` in New York
//! fires at 03:00 EDT that day); a local time that a fall-back repeats fires once, at its first
//! occurrence (`30 1 * * *` fires at 01:30 EDT, not again at 01:30 EST).

use std::fmt;

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, TimeDelta};
use chrono::{TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::core::config::decode::hint;

/// A parsed expression: each field as the set of values it names (bit `v` set for value `v`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Sunday is 0.
    weekdays: u64,
    /// Both day fields are restricted: a day matches when either does.
    either_day: bool,
}

/// Why an expression was refused, and where in it (a byte offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the five fields are, for messages.
pub const FORMAT: &str = "five fields: minute (0-59), hour (0-23), day of month (1-31), month \
    (1-12 or JAN-DEC) and day of week (0-6 or SUN-SAT, 0 is Sunday); \
    e.g. \"0 3 * * MON\" is every Monday at 03:00";

struct Field {
    name: &'static str,
    min: u32,
    /// The largest value written; day of week accepts 7 for Sunday.
    max: u32,
    /// The largest value `*` stands for.
    star_max: u32,
    /// Names of the values from `min` on.
    names: &'static [&'static str],
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        star_max: 59,
        names: &[],
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        star_max: 23,
        names: &[],
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        star_max: 31,
        names: &[],
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        star_max: 12,
        names: &[
            "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
        ],
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        star_max: 6,
        names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    },
];

/// How far ahead (or back) a fire time is looked for: February 29th can be 8 years away (2096 to
/// 2104); any expression that parses fires within that.
const SEARCH_DAYS: u64 = 366 * 9;
/// The longest gap a time zone has skipped (Samoa skipped 30 December 2011), in minutes.
const MAX_GAP_MINUTES: u32 = 24 * 60;

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let trimmed = text.trim_start();
        let start = text.len() - trimmed.len();
        if let Some(name) = trimmed.trim_end().strip_prefix('@') {
            let equivalent = match name {
                "yearly" | "annually" => "; write \"0 0 1 1 *\"",
                "monthly" => "; write \"0 0 1 * *\"",
                "weekly" => "; write \"0 0 * * 0\"",
                "daily" | "midnight" => "; write \"0 0 * * *\"",
                "hourly" => "; write \"0 * * * *\"",
                _ => "",
            };
            return Err(CronError {
                offset: start,
                message: format!("@{name} is not unix-cron{equivalent}"),
            });
        }
        let fields: Vec<(usize, &str)> = text
            .split_ascii_whitespace()
            .map(|field| (field.as_ptr() as usize - text.as_ptr() as usize, field))
            .collect();
        if fields.len() != 5 {
            let extra = if fields.len() > 5 {
                "; unix-cron has no seconds or year field"
            } else {
                ""
            };
            return Err(CronError {
                offset: start,
                message: format!("expected {FORMAT}; found {} fields{extra}", fields.len()),
            });
        }
        let mut sets = [0u64; 5];
        for ((set, field), &(offset, written)) in sets.iter_mut().zip(&FIELDS).zip(&fields) {
            *set = parse_field(field, written, offset)?;
        }
        let [minutes, hours, days, months, weekdays] = sets;
        // 7 is another Sunday.
        let weekdays = (weekdays | weekdays >> 7) & 0x7f;
        let cron = Cron {
            text: fields.iter().map(|(_, f)| *f).collect::<Vec<_>>().join(" "),
            minutes,
            hours,
            days,
            months,
            weekdays,
            either_day: fields[2].1 != "*" && fields[4].1 != "*",
        };
        if !cron.has_a_day() {
            return Err(CronError {
                offset: fields[2].0,
                message: "day of month: no month chosen has such a day, so this never fires".into(),
            });
        }
        Ok(cron)
    }

    /// Whether some day matches: days of month alone can name days no chosen month has (April
    /// 31st). February counts 29 days, so a leap day fires in leap years.
    fn has_a_day(&self) -> bool {
        if self.either_day || self.days == all(&FIELDS[2]) {
            return true;
        }
        (1..=12u32).filter(|m| self.months >> m & 1 == 1).any(|m| {
            let longest = match m {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            self.days & ((1u64 << (longest + 1)) - 1) != 0
        })
    }

    fn day_matches(&self, day: NaiveDate) -> bool {
        let of_month = self.days >> day.day() & 1 == 1;
        let of_week = self.weekdays >> day.weekday().num_days_from_sunday() & 1 == 1;
        let days = if self.either_day {
            of_month || of_week
        } else {
            of_month && of_week
        };
        self.months >> day.month() & 1 == 1 && days
    }

    /// The local times the expression names, from `from` on (or back, going backwards),
    /// `from` included, in order.
    fn local_times(
        &self,
        from: NaiveDateTime,
        forward: bool,
    ) -> impl Iterator<Item = NaiveDateTime> + '_ {
        let first_day = from.date();
        let (hour, minute) = (from.hour(), from.minute());
        let on_the_way = move |value: u32, limit: u32| {
            if forward {
                value >= limit
            } else {
                value <= limit
            }
        };
        (0..SEARCH_DAYS)
            .filter_map(move |i| {
                if forward {
                    first_day.checked_add_days(Days::new(i))
                } else {
                    first_day.checked_sub_days(Days::new(i))
                }
            })
            .filter(|day| self.day_matches(*day))
            .flat_map(move |day| {
                let first = day == first_day;
                values(self.hours, forward)
                    .filter(move |&h| !first || on_the_way(h, hour))
                    .flat_map(move |h| {
                        let first = first && h == hour;
                        values(self.minutes, forward)
                            .filter(move |&m| !first || on_the_way(m, minute))
                            .filter_map(move |m| day.and_hms_opt(h, m, 0))
                    })
            })
    }

    /// The first fire time after `after`. Only `None` past the last year chrono knows.
    pub fn next_after(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = minute_of(after.with_timezone(&zone).naive_local()) + TimeDelta::minutes(1);
        // Local times map to instants in order, so the first one past `after` is the next.
        self.local_times(local, true)
            .map(|time| instant(zone, time))
            .find(|at| *at > after)
    }

    /// The last fire time at or before `at`.
    pub fn latest_at_or_before(&self, zone: Tz, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = minute_of(at.with_timezone(&zone).naive_local());
        self.local_times(local, false)
            .map(|time| instant(zone, time))
            .find(|time| *time <= at)
    }

    /// The fire times after `after`, in order.
    pub fn upcoming(
        &self,
        zone: Tz,
        after: DateTime<Utc>,
    ) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        std::iter::successors(self.next_after(zone, after), move |at| {
            self.next_after(zone, *at)
        })
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Every value of `field` that `*` stands for.
fn all(field: &Field) -> u64 {
    (field.min..=field.star_max).fold(0u64, |set, v| set | 1 << v)
}

fn values(set: u64, forward: bool) -> impl Iterator<Item = u32> {
    let mut values: Vec<u32> = (0..64).filter(|v| set >> v & 1 == 1).collect();
    if !forward {
        values.reverse();
    }
    values.into_iter()
}

fn minute_of(time: NaiveDateTime) -> NaiveDateTime {
    time.with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(time)
}

/// The instant a local time fires at (see the module's note on daylight saving time).
fn instant(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    for _ in 0..=MAX_GAP_MINUTES {
        match zone.from_local_datetime(&probe) {
            LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => {
                return at.with_timezone(&Utc);
            }
            LocalResult::None => probe += TimeDelta::minutes(1),
        }
    }
    // No zone has skipped more than a day; read such a time as UTC rather than never firing.
    Utc.from_utc_datetime(&local)
}

fn parse_field(field: &Field, written: &str, offset: usize) -> Result<u64, CronError> {
    let mut set = 0;
    let mut at = offset;
    for item in written.split(',') {
        set |= parse_item(field, item, at)?;
        at += item.len() + 1;
    }
    Ok(set)
}

/// `*`, `V`, `A-B`, each with an optional `/STEP` (`V/STEP` runs from V to the field's end).
fn parse_item(field: &Field, item: &str, offset: usize) -> Result<u64, CronError> {
    let error = |offset: usize, message: String| CronError {
        offset,
        message: format!("{}: {message}", field.name),
    };
    let (range, step) = match item.split_once('/') {
        Some((range, step)) => (range, Some(step)),
        None => (item, None),
    };
    let step = match step {
        None => 1,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|step| (1..=field.max).contains(step))
            .ok_or_else(|| {
                error(
                    offset + range.len() + 1,
                    format!("step {text:?} is not a number from 1 to {}", field.max),
                )
            })?,
    };
    let (low, high) = match range.split_once('-') {
        _ if range == "*" => (field.min, field.star_max),
        Some((low, high)) => (
            value(field, low).map_err(|m| error(offset, m))?,
            value(field, high).map_err(|m| error(offset + low.len() + 1, m))?,
        ),
        None => {
            let value = value(field, range).map_err(|m| error(offset, m))?;
            (value, if step > 1 { field.max } else { value })
        }
    };
    if low > high {
        return Err(error(
            offset,
            format!("the range {range} runs backwards; write it as two ranges joined by a comma"),
        ));
    }
    Ok((low..=high)
        .step_by(step as usize)
        .fold(0u64, |set, v| set | 1 << v))
}

fn value(field: &Field, text: &str) -> Result<u32, String> {
    if let Ok(number) = text.parse::<u32>() {
        return if (field.min..=field.max).contains(&number) {
            Ok(number)
        } else {
            Err(format!(
                "{number} is out of range {}-{}",
                field.min, field.max
            ))
        };
    }
    let upper = text.to_ascii_uppercase();
    if let Some(index) = field.names.iter().position(|name| *name == upper) {
        return Ok(field.min + index as u32);
    }
    if text.is_empty() {
        return Err("a value is missing".into());
    }
    if text.contains(['L', 'W', '#', '?']) {
        return Err(format!(
            "{text:?}: `L`, `W`, `#` and `?` are not part of unix-cron"
        ));
    }
    let expected = match field.names {
        [] => String::new(),
        names => format!(" or {}-{}", names[0], names[names.len() - 1]),
    };
    Err(format!(
        "{text:?} is not a value: expected {}-{}{expected}{}",
        field.min,
        field.max,
        hint(&upper, field.names)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn zone(name: &str) -> Tz {
        name.parse().unwrap()
    }

    /// The next `count` fire times after `from`, as RFC 3339 in UTC.
    fn next(expression: &str, zone_name: &str, from: &str, count: usize) -> Vec<String> {
        let cron = Cron::parse(expression).unwrap();
        cron.upcoming(zone(zone_name), utc(from))
            .take(count)
            .map(|at| at.format("%Y-%m-%dT%H:%MZ").to_string())
            .collect()
    }

    fn refused(expression: &str) -> CronError {
        Cron::parse(expression).expect_err(expression)
    }

    #[test]
    fn fields_take_ranges_lists_steps_and_names() {
        assert_eq!(
            next("*/20 9-10 * * *", "UTC", "2024-05-01T09:30:00Z", 4),
            [
                "2024-05-01T09:40Z",
                "2024-05-01T10:00Z",
                "2024-05-01T10:20Z",
                "2024-05-01T10:40Z"
            ]
        );
        // 2024-05-06 is a Monday.
        assert_eq!(
            next("0 3 * * mon,FRI", "UTC", "2024-05-06T03:00:00Z", 3),
            [
                "2024-05-10T03:00Z",
                "2024-05-13T03:00Z",
                "2024-05-17T03:00Z"
            ]
        );
        assert_eq!(
            next("15 12 1 JAN-MAR/2 *", "UTC", "2024-01-01T00:00:00Z", 3),
            [
                "2024-01-01T12:15Z",
                "2024-03-01T12:15Z",
                "2025-01-01T12:15Z"
            ]
        );
        assert_eq!(
            next("5/30 0 * * 7", "UTC", "2024-05-01T00:00:00Z", 2),
            ["2024-05-05T00:05Z", "2024-05-05T00:35Z"],
            "7 is Sunday; 5/30 runs from 5 to the end"
        );
        assert_eq!(
            next("0 0 29 2 *", "UTC", "2024-03-01T00:00:00Z", 1),
            ["2028-02-29T00:00Z"]
        );
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        // The 1st and every Monday of June 2024 (Mondays: 3, 10, 17, 24).
        assert_eq!(
            next("0 0 1 * MON", "UTC", "2024-05-31T12:00:00Z", 3),
            [
                "2024-06-01T00:00Z",
                "2024-06-03T00:00Z",
                "2024-06-10T00:00Z"
            ]
        );
        // With one of them `*`, the other alone decides.
        assert_eq!(
            next("0 0 * * MON", "UTC", "2024-05-31T12:00:00Z", 1),
            ["2024-06-03T00:00Z"]
        );
    }

    #[test]
    fn spring_forward_fires_a_skipped_time_once_after_the_gap() {
        // 2024-03-10 02:00 EST became 03:00 EDT in New York (07:00 UTC).
        assert_eq!(
            next("30 2 * * *", "America/New_York", "2024-03-09T00:00:00Z", 3),
            [
                "2024-03-09T07:30Z",
                "2024-03-10T07:00Z",
                "2024-03-11T06:30Z"
            ]
        );
        // Every quarter hour: the four skipped ones and 03:00 itself fire once, at 03:00 EDT.
        assert_eq!(
            next(
                "*/15 * * * *",
                "America/New_York",
                "2024-03-10T06:40:00Z",
                4
            ),
            [
                "2024-03-10T06:45Z",
                "2024-03-10T07:00Z",
                "2024-03-10T07:15Z",
                "2024-03-10T07:30Z"
            ]
        );
    }

    #[test]
    fn fall_back_fires_a_repeated_time_once_at_its_first_occurrence() {
        // 2024-10-27 03:00 CEST became 02:00 CET in Berlin: 02:30 happened at 00:30 and 01:30 UTC.
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", "2024-10-26T12:00:00Z", 2),
            ["2024-10-27T00:30Z", "2024-10-28T01:30Z"]
        );
        // Hourly: 02:00 CEST fires, the repeated 02:00 CET does not; 03:00 CET follows.
        assert_eq!(
            next("0 * * * *", "Europe/Berlin", "2024-10-26T23:30:00Z", 3),
            [
                "2024-10-27T00:00Z",
                "2024-10-27T02:00Z",
                "2024-10-27T03:00Z"
            ]
        );
        // From inside the repeated hour, the next run is after it.
        assert_eq!(
            next("30 * * * *", "Europe/Berlin", "2024-10-27T01:10:00Z", 1),
            ["2024-10-27T02:30Z"]
        );
    }

    #[test]
    fn the_latest_fire_time_looks_back_across_daylight_saving_too() {
        let cron = Cron::parse("30 2 * * *").unwrap();
        let new_york = zone("America/New_York");
        let latest = |at: &str| cron.latest_at_or_before(new_york, utc(at)).unwrap();
        assert_eq!(latest("2024-03-10T12:00:00Z"), utc("2024-03-10T07:00:00Z"));
        assert_eq!(latest("2024-03-10T07:00:00Z"), utc("2024-03-10T07:00:00Z"));
        assert_eq!(latest("2024-03-10T06:59:59Z"), utc("2024-03-09T07:30:00Z"));
        let berlin = zone("Europe/Berlin");
        let hourly = Cron::parse("0 * * * *").unwrap();
        // At 01:30 UTC, inside the repeated hour (02:30 CET), the latest run was 02:00 CEST.
        assert_eq!(
            hourly.latest_at_or_before(berlin, utc("2024-10-27T01:30:00Z")),
            Some(utc("2024-10-27T00:00:00Z"))
        );
    }

    #[test]
    fn bad_expressions_say_which_field_and_where() {
        let error = refused("0 25 * * *");
        assert_eq!(
            (error.offset, error.message.as_str()),
            (2, "hour: 25 is out of range 0-23")
        );
        let error = refused("0 3 * * MOM");
        assert_eq!(error.offset, 8);
        assert_eq!(
            error.message,
            "day of week: \"MOM\" is not a value: expected 0-7 or SUN-SAT; did you mean \"MON\"?"
        );
        assert!(
            refused("0 0 3 * * *")
                .message
                .contains("no seconds or year")
        );
        assert!(refused("0 3 * *").message.contains("found 4 fields"));
        assert!(refused("@daily").message.contains("\"0 0 * * *\""));
        assert!(
            refused("0 0 L * *")
                .message
                .contains("not part of unix-cron")
        );
        assert_eq!(
            refused("*/0 * * * *").message,
            "minute: step \"0\" is not a number from 1 to 59"
        );
        assert_eq!(refused("0 0 * * 1,,2").offset, 10);
        assert_eq!(refused("0 0 * * FRI-MON").offset, 8);
        assert!(
            refused("0 0 * * FRI-MON")
                .message
                .contains("runs backwards")
        );
        assert_eq!(
            refused("0 0 31 APR,JUN *").message,
            "day of month: no month chosen has such a day, so this never fires"
        );
        assert_eq!(
            Cron::parse("  0  3 * *   *  ").unwrap().to_string(),
            "0 3 * * *"
        );
    }
}
