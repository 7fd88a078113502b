//! When periodic tasks fire, and the times and durations people write.
//!
//! A [`Schedule`] is what host.toml says about a periodic task: either `every = "5m"`, a
//! fixed period, or `cron = "0 3 * * *"`, a standard five-field cron expression (minute
//! hour day-of-month month day-of-week) read in UTC or in the IANA time zone given with
//! `timezone = "Europe/Berlin"` (see `tasks/zoned_cron.rs` for its rules across daylight
//! saving time changes).
//!
//! A period's firings are the multiples of the period since the Unix epoch, moved by an
//! offset of their own: [`Schedule::spread`] derives it from the schedule's name with a
//! fixed hash, so it is the same at every start (a restart does not shift the firings),
//! and schedules of one period do not all fire at the same instant.
//!
//! The parsers here also read the durations and instants people type elsewhere:
//! [`parse_duration`] (`30s`, `5m`, `1h 30m`) and [`parse_time`] for the CLI's `--at` and
//! `--since` (`2026-12-01T03:00:00Z`, `+5m`, `2h ago`, `now`, Unix seconds).
//! [`format_duration_ms`] writes durations back in a short form for tables and logs.
//!
//! Every instant is a `u64` of milliseconds since the Unix epoch, UTC.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;

use super::zoned_cron;

/// The fields of a cron expression, for error messages.
const CRON_FIELDS: &str = "minute hour day-of-month month day-of-week";

/// The `@` nicknames croner expands (all in UTC).
const CRON_NICKNAMES: [&str; 6] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@hourly",
];

/// The forms [`parse_time`] accepts, for its error messages.
const TIME_FORMS: &str = "expected RFC 3339 (2026-12-01T03:00:00Z), +DURATION (from now), \
                          -DURATION or DURATION ago (before now), now, or Unix seconds";

/// The examples [`parse_duration`] shows in its error messages.
const DURATION_FORMS: &str = "write e.g. 30s, 5m, 1h 30m, 500ms or 2d";

/// Why a schedule, duration or time could not be read: one line, naming what was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScheduleError(pub String);

/// When a periodic task fires: every fixed period (the multiples of the period since the
/// Unix epoch, moved by the schedule's own offset) or at the minutes a cron expression
/// matches (in UTC or a given time zone).
#[derive(Clone, PartialEq)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone, PartialEq)]
enum Kind {
    /// A period of at least 1 s, in whole milliseconds, and the offset of its firings from
    /// the multiples of the period, below the period.
    Every { period: Duration, offset_ms: u64 },
    /// A parsed five-field expression (or `@` nickname), its text as given (trimmed), and
    /// the time zone it is read in. Boxed: a parsed expression is many times the size of a
    /// period.
    Cron(Box<Cron>, String, Tz),
}

impl Schedule {
    /// Fires every `d`, at the multiples of `d` since the Unix epoch ([`Schedule::spread`]
    /// moves them by an offset of the schedule's own).
    ///
    /// # Errors
    ///
    /// If `d` is shorter than 1 s, is not a whole number of milliseconds, or does not fit
    /// in a `u64` of milliseconds.
    pub fn every(d: Duration) -> Result<Schedule, ScheduleError> {
        let shown = humantime::format_duration(d);
        if d < Duration::from_secs(1) {
            return Err(ScheduleError(format!(
                "every {shown}: the period must be at least 1s"
            )));
        }
        if d.subsec_nanos() % 1_000_000 != 0 {
            return Err(ScheduleError(format!(
                "every {shown}: the period must be a whole number of milliseconds"
            )));
        }
        if u64::try_from(d.as_millis()).is_err() {
            return Err(ScheduleError(format!(
                "every {shown}: the period is too long"
            )));
        }
        Ok(Schedule {
            kind: Kind::Every {
                period: d,
                offset_ms: 0,
            },
        })
    }

    /// The same schedule, its firings moved by an offset derived from `name` (a period's
    /// only; a cron expression keeps its times): XXH3 of the name, modulo the period. The
    /// hash is fixed, so the offset is the same at every start and on every machine, and
    /// schedules of one period but different names fire at different instants instead of
    /// all at once.
    #[must_use]
    pub fn spread(self, name: &str) -> Schedule {
        match self.kind {
            Kind::Every { period, .. } => {
                let period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
                let offset_ms = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % period_ms.max(1);
                Schedule {
                    kind: Kind::Every { period, offset_ms },
                }
            }
            kind @ Kind::Cron(..) => Schedule { kind },
        }
    }

    /// The offset of a period's firings from the multiples of the period (see
    /// [`Schedule::spread`]); `None` for a cron expression.
    pub fn offset_ms(&self) -> Option<u64> {
        match &self.kind {
            Kind::Every { offset_ms, .. } => Some(*offset_ms),
            Kind::Cron(..) => None,
        }
    }

    /// Fires at the minutes the standard five-field cron expression `expr` matches
    /// (minute hour day-of-month month day-of-week), in UTC (`Schedule::cron_in` for
    /// another time zone). Also accepts `@hourly`,
    /// `@daily`, `@weekly`, `@monthly` and `@yearly` (or `@annually`).
    ///
    /// The fields take what croner takes: numbers, `*`, ranges `1-5`, lists `1,3`, steps
    /// `*/15`, names (`MON`, `JAN`), and `L`, `W`, `#`. When both day-of-month and
    /// day-of-week are restricted, a day matching either fires (as in Vixie cron).
    ///
    /// # Errors
    ///
    /// One line, `cron expression "0 3 * *": ...`, if the expression is not five fields
    /// (six-field expressions with seconds are refused), does not parse, or never fires
    /// (such as `0 0 30 2 *`).
    pub fn cron(expr: &str) -> Result<Schedule, ScheduleError> {
        Schedule::cron_in(expr, Tz::UTC)
    }

    /// Like [`Schedule::cron`], with the expression read in the time zone `tz`:
    /// `30 2 * * *` in `Europe/Berlin` fires at 02:30 Berlin time, winter and summer.
    /// Across a daylight saving time change it follows the rules in `tasks/zoned_cron.rs`:
    /// a time of day that a change skips or repeats still fires once that day.
    ///
    /// # Errors
    ///
    /// As [`Schedule::cron`].
    pub(crate) fn cron_in(expr: &str, tz: Tz) -> Result<Schedule, ScheduleError> {
        let text = expr.trim();
        let fail = |why: &str| ScheduleError(format!("cron expression {text:?}: {why}"));
        if text.is_empty() {
            return Err(fail(&format!("is empty; give 5 fields: {CRON_FIELDS}")));
        }
        if text.starts_with('@') {
            let known = CRON_NICKNAMES
                .iter()
                .any(|name| name.eq_ignore_ascii_case(text));
            if !known {
                return Err(fail(&format!(
                    "unknown nickname; use @hourly, @daily, @weekly, @monthly or @yearly, \
                     or 5 fields: {CRON_FIELDS}"
                )));
            }
        } else {
            match text.split_whitespace().count() {
                5 => {}
                6 => {
                    return Err(fail(&format!(
                        "6 fields, but a first field of seconds is not supported; \
                         give 5 fields: {CRON_FIELDS}"
                    )))
                }
                n => return Err(fail(&format!("{n} fields; give 5 fields: {CRON_FIELDS}"))),
            }
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        let cron = parser.parse(text).map_err(|e| fail(&e.to_string()))?;
        // Years are always `*`, so an expression that fires once fires again (the Gregorian
        // calendar repeats every 400 years): one search from the epoch tells whether it
        // ever fires.
        if cron
            .find_next_occurrence(&DateTime::<Utc>::UNIX_EPOCH, true)
            .is_err()
        {
            return Err(fail("never fires"));
        }
        Ok(Schedule {
            kind: Kind::Cron(Box::new(cron), text.to_string(), tz),
        })
    }

    /// Reads host.toml's `every = "5m"` or `cron = "0 3 * * *"` (exactly one of them), and
    /// `timezone = "Europe/Berlin"` for a cron expression.
    ///
    /// # Errors
    ///
    /// If both or neither of `every` and `cron` is given, the one given does not parse (see
    /// [`parse_duration`], [`Schedule::every`] and [`Schedule::cron`]), the time zone is
    /// not an IANA name, or a time zone is given with `every`.
    pub fn parse(
        every: Option<&str>,
        cron: Option<&str>,
        timezone: Option<&str>,
    ) -> Result<Schedule, ScheduleError> {
        let tz = timezone.map(parse_timezone).transpose()?;
        match (every, cron) {
            (Some(_), Some(_)) => Err(ScheduleError(
                "give one of every and cron, not both".to_string(),
            )),
            (None, None) => Err(ScheduleError(
                "give every = \"5m\" or cron = \"0 3 * * *\"".to_string(),
            )),
            (Some(_), None) if tz.is_some() => Err(ScheduleError(
                "timezone applies to cron, not to every (a period is the same in every \
                 time zone); for a time of day write cron = \"0 3 * * *\""
                    .to_string(),
            )),
            (Some(every), None) => Schedule::every(parse_duration(every)?),
            (None, Some(cron)) => Schedule::cron_in(cron, tz.unwrap_or(Tz::UTC)),
        }
    }

    /// The first firing strictly after `after_unix_ms` (milliseconds since the Unix
    /// epoch): for `every`, the next multiple of the period plus the schedule's offset; for
    /// `cron`, the start of the next matching minute in its time zone. `None` if there is
    /// none that a `u64` can hold.
    pub fn next_after(&self, after_unix_ms: u64) -> Option<u64> {
        match &self.kind {
            Kind::Every { period, offset_ms } => {
                let period = u64::try_from(period.as_millis()).ok()?;
                // The firings are offset + k * period, k >= 0.
                match after_unix_ms.checked_sub(*offset_ms) {
                    None => Some(*offset_ms),
                    Some(since) => (since / period)
                        .checked_add(1)?
                        .checked_mul(period)?
                        .checked_add(*offset_ms),
                }
            }
            Kind::Cron(cron, _, tz) => zoned_cron::next_after(cron, *tz, after_unix_ms),
        }
    }

    /// Whether a firing fell in `(last_fired_unix_ms, now_unix_ms]`: a run was missed
    /// (say, while the host was down).
    pub fn missed(&self, last_fired_unix_ms: u64, now_unix_ms: u64) -> bool {
        self.next_after(last_fired_unix_ms)
            .is_some_and(|next| next <= now_unix_ms)
    }

    /// How people wrote it: `every 5m`, `every 1h 30m`, `cron 0 3 * * *`, `cron @daily`,
    /// `cron 30 2 * * * (Europe/Berlin)`.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Every { period, .. } => {
                let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
                format!("every {}", join_parts(&duration_parts(ms)))
            }
            Kind::Cron(_, expr, tz) if *tz == Tz::UTC => format!("cron {expr}"),
            Kind::Cron(_, expr, tz) => format!("cron {expr} ({})", tz.name()),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.describe()).finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Reads an IANA time zone name: `Europe/Berlin`, `America/New_York`, `UTC`.
///
/// # Errors
///
/// One line naming `text`, if it is not the name of a time zone in the IANA database.
pub(crate) fn parse_timezone(text: &str) -> Result<Tz, ScheduleError> {
    text.trim().parse::<Tz>().map_err(|_| {
        ScheduleError(format!(
            "unknown time zone {text:?}: give an IANA name such as \"Europe/Berlin\", \
             \"America/New_York\" or \"UTC\""
        ))
    })
}

/// Reads a duration in humantime's syntax: `30s`, `5m`, `1h 30m`, `500ms`, `2d`.
///
/// # Errors
///
/// One line naming `text`, if it is not such a duration.
pub fn parse_duration(text: &str) -> Result<Duration, ScheduleError> {
    humantime::parse_duration(text.trim())
        .map_err(|e| ScheduleError(format!("invalid duration {text:?}: {e}; {DURATION_FORMS}")))
}

/// Reads an instant for the CLI's `--at` and `--since`, in milliseconds since the Unix
/// epoch. Accepts:
///
/// - RFC 3339: `2026-12-01T03:00:00Z`, `2026-12-01T04:00:00+01:00`, or without the `Z`
///   (`2026-12-01 03:00:00`, read as UTC);
/// - `+DURATION`: that long after `now_unix_ms` (`+5m`);
/// - `-DURATION` or `DURATION ago`: that long before `now_unix_ms` (`-1h`, `2h ago`);
/// - `now`;
/// - a plain integer: Unix seconds (`1796094000`).
///
/// # Errors
///
/// One line naming `text` and listing the accepted forms, if it is none of them, or if
/// the instant is before the Unix epoch or too far off for a `u64` of milliseconds.
pub fn parse_time(text: &str, now_unix_ms: u64) -> Result<u64, ScheduleError> {
    let t = text.trim();
    let fail = |why: &str| ScheduleError(format!("invalid time {text:?}: {why}{TIME_FORMS}"));
    let duration_ms = |d: &str| -> Result<u64, ScheduleError> {
        let d = humantime::parse_duration(d.trim()).map_err(|e| fail(&format!("{e}; ")))?;
        u64::try_from(d.as_millis()).map_err(|_| fail("the duration is too long; "))
    };
    let before_now = |d: &str| -> Result<u64, ScheduleError> {
        now_unix_ms
            .checked_sub(duration_ms(d)?)
            .ok_or_else(|| fail("that is before the Unix epoch; "))
    };

    if t.eq_ignore_ascii_case("now") {
        return Ok(now_unix_ms);
    }
    if let Some(rest) = t.strip_prefix('+') {
        return now_unix_ms
            .checked_add(duration_ms(rest)?)
            .ok_or_else(|| fail("that is too far in the future; "));
    }
    if let Some(rest) = t.strip_prefix('-') {
        return before_now(rest);
    }
    if let Some(rest) = strip_ago(t) {
        return before_now(rest);
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<u64>()
            .ok()
            .and_then(|secs| secs.checked_mul(1000))
            .ok_or_else(|| fail("too many Unix seconds; "));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(t) {
        // humantime refuses years before 1970, so this cannot fail in practice.
        return at
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_millis()).ok())
            .ok_or_else(|| fail("that is before the Unix epoch; "));
    }
    // Offsets other than UTC (`+01:00`), which humantime does not read.
    if let Ok(at) = DateTime::parse_from_rfc3339(t) {
        return u64::try_from(at.timestamp_millis())
            .map_err(|_| fail("that is before the Unix epoch; "));
    }
    Err(fail(""))
}

/// `text` without a trailing ` ago` (any case, after whitespace), if it has one.
fn strip_ago(text: &str) -> Option<&str> {
    let cut = text.len().checked_sub(3)?;
    let (rest, tail) = (text.get(..cut)?, text.get(cut..)?);
    (tail.eq_ignore_ascii_case("ago") && rest.ends_with(char::is_whitespace)).then_some(rest)
}

/// A duration in a short form for tables and logs: its two largest units, the rest
/// dropped (not rounded): `500ms`, `30s`, `1m 30s`, `1h`, `6h`, `1d 2h`; `0s` for zero.
pub fn format_duration_ms(ms: u64) -> String {
    let parts = duration_parts(ms);
    join_parts(&parts[..parts.len().min(2)])
}

/// The non-zero days, hours, minutes, seconds and milliseconds of `ms`, largest first.
fn duration_parts(ms: u64) -> Vec<(u64, &'static str)> {
    const UNITS: [(u64, &str); 5] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
        (1, "ms"),
    ];
    let mut left = ms;
    let mut parts = Vec::new();
    for (size, unit) in UNITS {
        let n = left / size;
        left %= size;
        if n > 0 {
            parts.push((n, unit));
        }
    }
    parts
}

/// `1d 2h` from its parts; `0s` from none.
fn join_parts(parts: &[(u64, &str)]) -> String {
    if parts.is_empty() {
        return "0s".to_string();
    }
    parts
        .iter()
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests;
