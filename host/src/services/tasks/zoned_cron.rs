//! A cron expression read in a time zone: its next firing, correct across daylight saving
//! time changes.
//!
//! croner searches wall-clock (local) times and follows these rules on the days the
//! clocks change, which are the ones kept here:
//!
//! - an expression at one fixed time of day (`30 2 * * *`) fires once that day: in a
//!   spring-forward gap, where 02:30 does not exist, at the first instant after the gap
//!   (03:00 summer time); in a fall-back overlap, where 02:30 happens twice, at the first
//!   of the two only;
//! - any other expression (`*/15 * * * *`, `0 * * * *`) fires at every instant whose wall
//!   time matches: none in a gap, in both passes of an overlap.
//!
//! A stateless "next firing strictly after t" has to add two things to croner's search.
//! Asked from the second pass of an overlap, croner maps the next matching wall time to
//! its first instant, which can lie before t: such an answer is passed over (for a fixed
//! time of day it already fired; for the others the second instant of that wall time is
//! next). And asked from inside the first pass, croner moves on in wall time past the end
//! of the overlap and skips the second pass: for the second rule the search is made again
//! from the instant the second pass begins, and the earlier answer taken.

use chrono::{DateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::{Cron, Direction, JobType};

/// How many of croner's answers are looked at for one strictly after the instant asked:
/// at most one at or before it (the first instant of an ambiguous wall time) comes first.
const ANSWERS: usize = 4;

/// The first firing of `cron`, read in `tz`, strictly after `after_unix_ms`.
pub(super) fn next_after(cron: &Cron, tz: Tz, after_unix_ms: u64) -> Option<u64> {
    // Firings fall on whole seconds, so searching from the second that holds
    // `after_unix_ms` and keeping what is strictly after it loses none.
    let secs = i64::try_from(after_unix_ms / 1000).ok()?;
    let after = DateTime::<Utc>::from_timestamp(secs, 0)?.with_timezone(&tz);
    let next = first_after(cron.iter_after(after), after_unix_ms);
    if cron.determine_job_type() == JobType::FixedTime {
        return next;
    }
    let Some(second_pass) = second_pass_start(tz, after) else {
        return next;
    };
    let other = first_after(
        cron.iter_from(second_pass, Direction::Forward),
        after_unix_ms,
    );
    match (next, other) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The first of croner's answers strictly after `after_unix_ms`, in milliseconds.
fn first_after(answers: impl Iterator<Item = DateTime<Tz>>, after_unix_ms: u64) -> Option<u64> {
    answers
        .take(ANSWERS)
        .filter_map(|at| u64::try_from(at.timestamp_millis()).ok())
        .find(|&at| at > after_unix_ms)
}

/// When `at` is in the first pass of a fall-back overlap (its wall time happens again
/// later), the instant the second pass begins: the first one after `at` whose offset from
/// UTC differs from `at`'s, found by bisection (the second pass begins before the second
/// instant of `at`'s own wall time).
fn second_pass_start(tz: Tz, at: DateTime<Tz>) -> Option<DateTime<Tz>> {
    let later = tz.from_local_datetime(&at.naive_local()).latest()?;
    if later <= at {
        return None;
    }
    let offset = |t: i64| {
        let utc = DateTime::<Utc>::from_timestamp(t, 0)?;
        Some(tz.offset_from_utc_datetime(&utc.naive_utc()).fix())
    };
    let first = at.offset().fix();
    // The offset is `first` at `lo` and another at `hi`.
    let (mut lo, mut hi) = (at.timestamp(), later.timestamp());
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if offset(mid)? == first {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(DateTime::<Utc>::from_timestamp(hi, 0)?.with_timezone(&tz))
}

#[cfg(test)]
#[path = "zoned_cron_tests.rs"]
mod tests;
