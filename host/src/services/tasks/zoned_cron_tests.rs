//! The rules of a cron expression read in a time zone, on the days its clocks change.
//! Europe/Berlin in 2026: spring forward on Sunday 29 March (02:00 CET becomes 03:00 CEST,
//! so 02:00 to 02:59 do not exist), fall back on Sunday 25 October (03:00 CEST becomes
//! 02:00 CET, so 02:00 to 02:59 happen twice).

use chrono::DateTime;

use super::super::schedule::{parse_timezone, Schedule};

/// Milliseconds since the epoch of an RFC 3339 instant.
fn at(text: &str) -> u64 {
    let t = DateTime::parse_from_rfc3339(text).expect("test instant");
    u64::try_from(t.timestamp_millis()).expect("after the epoch")
}

fn berlin(expr: &str) -> Schedule {
    Schedule::parse(None, Some(expr), Some("Europe/Berlin")).expect("valid schedule")
}

/// Every firing in `(from, to]`, following `next_after` as the timetable does.
fn firings(schedule: &Schedule, from: &str, to: &str) -> Vec<u64> {
    let (mut now, end) = (at(from), at(to));
    let mut fired = Vec::new();
    while let Some(next) = schedule.next_after(now).filter(|&n| n <= end) {
        assert!(next > now, "next_after({now}) went back to {next}");
        fired.push(next);
        now = next;
    }
    fired
}

#[test]
fn a_fixed_time_in_the_spring_forward_gap_runs_once_that_day() {
    // 02:30 does not exist on 29 March: it runs once, at 03:00 CEST, the first instant
    // after the gap, and on the days around at 02:30 local time.
    let daily = berlin("30 2 * * *");
    assert_eq!(
        firings(&daily, "2026-03-27T12:00:00Z", "2026-03-30T12:00:00Z"),
        vec![
            at("2026-03-28T02:30:00+01:00"),
            at("2026-03-29T03:00:00+02:00"),
            at("2026-03-30T02:30:00+02:00"),
        ]
    );
    // Asked from just before the gap, and from just after its firing.
    assert_eq!(
        daily.next_after(at("2026-03-29T01:59:59+01:00")),
        Some(at("2026-03-29T03:00:00+02:00"))
    );
    assert_eq!(
        daily.next_after(at("2026-03-29T03:00:00+02:00")),
        Some(at("2026-03-30T02:30:00+02:00"))
    );
}

#[test]
fn a_fixed_time_in_the_fall_back_overlap_runs_once_that_day() {
    // 02:30 happens twice on 25 October: it runs at the first, 02:30 CEST, only.
    let daily = berlin("30 2 * * *");
    assert_eq!(
        firings(&daily, "2026-10-23T12:00:00Z", "2026-10-26T12:00:00Z"),
        vec![
            at("2026-10-24T02:30:00+02:00"),
            at("2026-10-25T02:30:00+02:00"),
            at("2026-10-26T02:30:00+01:00"),
        ]
    );
    // A host (re)started during the second pass of the hour, after the first run, does not
    // run it again at 02:30 CET (its last firing is before `now`).
    for now in ["2026-10-25T02:10:00+01:00", "2026-10-25T02:45:00+01:00"] {
        assert_eq!(
            daily.next_after(at(now)),
            Some(at("2026-10-26T02:30:00+01:00")),
            "asked at {now}"
        );
    }
    // Nor when asked during the first pass, after the run.
    assert_eq!(
        daily.next_after(at("2026-10-25T02:45:00+02:00")),
        Some(at("2026-10-26T02:30:00+01:00"))
    );
}

#[test]
fn other_expressions_fire_at_every_instant_whose_wall_time_matches() {
    // Every 30 minutes: 46 firings on the 23-hour day, 50 on the 25-hour day.
    let half_hourly = berlin("*/30 * * * *");
    let day = |from: &str, to: &str| firings(&half_hourly, from, to).len();
    assert_eq!(
        day("2026-03-28T23:59:59+01:00", "2026-03-29T23:59:59+02:00"),
        46
    );
    assert_eq!(
        day("2026-10-24T23:59:59+02:00", "2026-10-25T23:59:59+01:00"),
        50
    );
    // Both passes of the repeated hour, in order, from inside the first pass too.
    assert_eq!(
        half_hourly.next_after(at("2026-10-25T02:45:00+02:00")),
        Some(at("2026-10-25T02:00:00+01:00"))
    );
    assert_eq!(
        half_hourly.next_after(at("2026-10-25T02:10:00+01:00")),
        Some(at("2026-10-25T02:30:00+01:00"))
    );
    // None in the gap.
    assert_eq!(
        half_hourly.next_after(at("2026-03-29T01:45:00+01:00")),
        Some(at("2026-03-29T03:00:00+02:00"))
    );
}

#[test]
fn a_time_zone_moves_the_wall_clock_times() {
    // 03:00 in New York is 08:00 UTC in winter and 07:00 UTC in summer.
    let s = Schedule::parse(None, Some("0 3 * * *"), Some("America/New_York")).unwrap();
    assert_eq!(
        s.next_after(at("2026-01-10T12:00:00Z")),
        Some(at("2026-01-11T08:00:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-07-10T12:00:00Z")),
        Some(at("2026-07-11T07:00:00Z"))
    );
    assert_eq!(s.describe(), "cron 0 3 * * * (America/New_York)");
    // UTC by default, and named UTC.
    let utc = Schedule::parse(None, Some("0 3 * * *"), Some("UTC")).unwrap();
    assert_eq!(
        utc.next_after(at("2026-07-10T12:00:00Z")),
        Some(at("2026-07-11T03:00:00Z"))
    );
    assert_eq!(utc.describe(), "cron 0 3 * * *");
}

#[test]
fn an_unknown_time_zone_is_one_line_naming_it() {
    let e = parse_timezone("Europe/Berln").expect_err("no such zone");
    assert!(e.0.contains("\"Europe/Berln\""), "{e}");
    assert!(e.0.contains("IANA"), "{e}");
    assert!(!e.0.contains('\n'), "{e}");
    let e = Schedule::parse(None, Some("0 3 * * *"), Some("CEST+2")).expect_err("bad zone");
    assert!(e.0.contains("unknown time zone"), "{e}");
    // A period is the same in every time zone: refused with `every`.
    let e = Schedule::parse(Some("5m"), None, Some("Europe/Berlin")).expect_err("every");
    assert!(e.0.contains("timezone applies to cron"), "{e}");
}
