//! Tests of schedules (periods and their spread, cron expressions, missed firings) and of
//! the durations and instants people write.

use super::*;

/// Milliseconds since the epoch of an RFC 3339 instant.
fn at(text: &str) -> u64 {
    let t = DateTime::parse_from_rfc3339(text).expect("test instant");
    u64::try_from(t.timestamp_millis()).expect("after the epoch")
}

fn cron(expr: &str) -> Schedule {
    Schedule::cron(expr).expect("valid cron expression")
}

fn every(text: &str) -> Schedule {
    Schedule::every(parse_duration(text).expect("valid duration")).expect("valid period")
}

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

#[test]
fn every_is_aligned_to_the_epoch_and_strictly_after() {
    let s = every("5m");
    assert_eq!(s.next_after(0), Some(5 * MIN));
    assert_eq!(s.next_after(5 * MIN - 1), Some(5 * MIN));
    assert_eq!(s.next_after(5 * MIN), Some(10 * MIN));
    assert_eq!(
        s.next_after(at("2026-03-10T10:07:30.250Z")),
        Some(at("2026-03-10T10:10:00Z"))
    );
    // A period that does not divide an hour still counts from the epoch.
    let s = every("7s");
    assert_eq!(s.next_after(10_000), Some(14_000));
    assert_eq!(s.next_after(14_000), Some(21_000));
    // Daily periods fire at midnight UTC.
    assert_eq!(
        every("1d").next_after(at("2026-03-10T12:00:00Z")),
        Some(at("2026-03-11T00:00:00Z"))
    );
    // No overflow panic near the end of u64.
    assert_eq!(every("1s").next_after(u64::MAX - 1), None);
}

#[test]
fn periods_are_spread_by_a_stable_offset_of_each_schedule() {
    let from = at("2026-03-10T10:07:30.250Z");
    // Two schedules of one period, different names: different instants.
    let a = every("5m").spread("backup");
    let b = every("5m").spread("sysinfo.execute");
    assert_ne!(a.next_after(from), b.next_after(from));
    // Over many names the offsets differ (20 names, a 1 h period).
    let offsets: std::collections::BTreeSet<u64> = (0..20)
        .map(|i| every("1h").spread(&format!("s{i}")).offset_ms().unwrap())
        .collect();
    assert!(offsets.len() >= 18, "{offsets:?}");
    // The offset is a fixed function of the name and the period, the same at every
    // start of the host: pinned here, so a hash seeded per process would fail.
    assert_eq!(a.offset_ms(), Some(234_854));
    assert_eq!(every("5m").spread("backup"), a);
    assert_eq!(every("1h").spread("backup").offset_ms(), Some(534_854));
    // Still one firing per period, each at offset + k * period, strictly after.
    let first = a.next_after(from).unwrap();
    assert_eq!(first % (5 * MIN), 234_854);
    assert!(first > from && first - from <= 5 * MIN, "{first}");
    assert_eq!(a.next_after(first), Some(first + 5 * MIN));
    assert_eq!(a.next_after(first - 1), Some(first));
    // Before the first offset: the offset itself.
    assert_eq!(a.next_after(0), Some(234_854));
    // A missed run is judged with the offset too.
    assert!(a.missed(first - 1, first));
    assert!(!a.missed(first, first + 5 * MIN - 1));
    // Cron expressions keep their times.
    let c = cron("0 3 * * *");
    assert_eq!(c.clone().spread("backup"), c);
    assert_eq!(c.offset_ms(), None);
}

#[test]
fn every_under_one_second_is_refused() {
    for d in [
        Duration::ZERO,
        Duration::from_millis(999),
        Duration::from_millis(500),
    ] {
        let e = Schedule::every(d).expect_err("too short");
        assert!(e.0.contains("at least 1s"), "{e}");
    }
    assert!(Schedule::every(Duration::from_secs(1)).is_ok());
    let e = Schedule::every(Duration::from_micros(1_500_500)).expect_err("sub-ms");
    assert!(e.0.contains("whole number of milliseconds"), "{e}");
}

#[test]
fn cron_daily_at_three() {
    let s = cron("0 3 * * *");
    assert_eq!(
        s.next_after(at("2026-03-10T12:00:00Z")),
        Some(at("2026-03-11T03:00:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-03-10T02:59:59.999Z")),
        Some(at("2026-03-10T03:00:00Z"))
    );
    // Strictly after: a firing at the instant itself, or just before it, is not next.
    assert_eq!(
        s.next_after(at("2026-03-10T03:00:00Z")),
        Some(at("2026-03-11T03:00:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-03-10T03:00:00.500Z")),
        Some(at("2026-03-11T03:00:00Z"))
    );
    // Across a month and a year end.
    assert_eq!(
        s.next_after(at("2026-12-31T04:00:00Z")),
        Some(at("2027-01-01T03:00:00Z"))
    );
}

#[test]
fn cron_every_fifteen_minutes() {
    let s = cron("*/15 * * * *");
    assert_eq!(
        s.next_after(at("2026-03-10T10:07:00Z")),
        Some(at("2026-03-10T10:15:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-03-10T10:15:00Z")),
        Some(at("2026-03-10T10:30:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-03-10T23:59:30Z")),
        Some(at("2026-03-11T00:00:00Z"))
    );
}

#[test]
fn cron_day_of_week() {
    // 2026-03-10 is a Tuesday; the next Monday is the 16th.
    let from = at("2026-03-10T12:00:00Z");
    let monday = Some(at("2026-03-16T09:30:00Z"));
    assert_eq!(cron("30 9 * * 1").next_after(from), monday);
    assert_eq!(cron("30 9 * * MON").next_after(from), monday);
    // Sunday is 0 and 7.
    assert_eq!(
        cron("0 0 * * 7").next_after(from),
        Some(at("2026-03-15T00:00:00Z"))
    );
    // Day-of-month and day-of-week both restricted: either fires (Vixie cron), so the
    // next Monday comes before the 1st of April.
    assert_eq!(
        cron("0 0 1 * 1").next_after(from),
        Some(at("2026-03-16T00:00:00Z"))
    );
}

#[test]
fn cron_nicknames() {
    let from = at("2026-03-10T10:07:00Z");
    let next = |expr: &str| cron(expr).next_after(from);
    assert_eq!(next("@daily"), Some(at("2026-03-11T00:00:00Z")));
    assert_eq!(next("@DAILY"), Some(at("2026-03-11T00:00:00Z")));
    assert_eq!(next("@hourly"), Some(at("2026-03-10T11:00:00Z")));
    assert_eq!(next("@weekly"), Some(at("2026-03-15T00:00:00Z")));
    assert_eq!(next("@monthly"), Some(at("2026-04-01T00:00:00Z")));
    assert_eq!(next("@yearly"), Some(at("2027-01-01T00:00:00Z")));
    assert_eq!(next("@annually"), Some(at("2027-01-01T00:00:00Z")));
}

#[test]
fn cron_with_seconds_is_refused() {
    let e = Schedule::cron("0 0 3 * * *").expect_err("6 fields");
    assert!(
        e.0.starts_with("cron expression \"0 0 3 * * *\": 6 fields"),
        "{e}"
    );
    assert!(e.0.contains("seconds"), "{e}");
    assert!(Schedule::cron("0 0 3 * * * 2026").is_err());
}

#[test]
fn bad_cron_expressions_are_refused_in_one_line() {
    for (expr, why) in [
        ("0 3 * *", "4 fields"),
        ("", "is empty"),
        ("61 * * * *", "cron expression \"61 * * * *\": "),
        ("0 3 * * FOO", "cron expression \"0 3 * * FOO\": "),
        ("@reboot", "unknown nickname"),
        ("0 0 30 2 *", "never fires"),
    ] {
        let e = Schedule::cron(expr).expect_err(expr);
        assert!(e.0.starts_with("cron expression \""), "{e}");
        assert!(e.0.contains(why), "{expr}: {e}");
        assert!(!e.0.contains('\n'), "{e}");
    }
    assert_eq!(
        Schedule::cron("0 3 * *").expect_err("4 fields").0,
        "cron expression \"0 3 * *\": 4 fields; give 5 fields: \
         minute hour day-of-month month day-of-week"
    );
}

#[test]
fn parse_takes_exactly_one_of_every_and_cron() {
    assert_eq!(
        Schedule::parse(Some("5m"), Some("0 3 * * *"), None).expect_err("both"),
        ScheduleError("give one of every and cron, not both".to_string())
    );
    assert_eq!(
        Schedule::parse(None, None, None).expect_err("neither"),
        ScheduleError("give every = \"5m\" or cron = \"0 3 * * *\"".to_string())
    );
    assert_eq!(
        Schedule::parse(Some("5m"), None, None).map(|s| s.describe()),
        Ok("every 5m".to_string())
    );
    assert_eq!(
        Schedule::parse(None, Some(" 0 3 * * * "), None).map(|s| s.describe()),
        Ok("cron 0 3 * * *".to_string())
    );
    let e = Schedule::parse(Some("5x"), None, None).expect_err("bad duration");
    assert!(e.0.contains("\"5x\""), "{e}");
    assert!(Schedule::parse(Some("500ms"), None, None).is_err());
}

#[test]
fn describe_says_it_as_written() {
    assert_eq!(every("5m").describe(), "every 5m");
    assert_eq!(every("1h 30m").describe(), "every 1h 30m");
    assert_eq!(every("2d").describe(), "every 2d");
    assert_eq!(every("1m 30s 250ms").describe(), "every 1m 30s 250ms");
    assert_eq!(cron("0 3 * * *").describe(), "cron 0 3 * * *");
    assert_eq!(cron("@daily").to_string(), "cron @daily");
    assert_eq!(format!("{:?}", every("5m")), "Schedule(\"every 5m\")");
}

#[test]
fn missed_when_a_firing_fell_between_last_and_now() {
    let s = every("1h");
    let last = at("2026-03-10T10:00:00Z");
    assert!(!s.missed(last, at("2026-03-10T10:59:59.999Z")));
    assert!(s.missed(last, at("2026-03-10T11:00:00Z")));
    assert!(s.missed(last, at("2026-03-10T13:30:00Z")));
    assert!(!s.missed(last, last));
    assert!(!s.missed(last, last - HOUR));

    let s = cron("0 3 * * *");
    let last = at("2026-03-10T03:00:00Z");
    assert!(!s.missed(last, at("2026-03-11T02:59:00Z")));
    assert!(s.missed(last, at("2026-03-11T03:00:00Z")));
    assert!(s.missed(last, at("2026-03-14T12:00:00Z")));
}

#[test]
fn parse_duration_reads_humantime() {
    let ok = |text: &str| parse_duration(text).expect(text);
    assert_eq!(ok("30s"), Duration::from_secs(30));
    assert_eq!(ok("5m"), Duration::from_secs(300));
    assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
    assert_eq!(ok("500ms"), Duration::from_millis(500));
    assert_eq!(ok("2d"), Duration::from_secs(2 * 86_400));
    assert_eq!(ok(" 5m "), Duration::from_secs(300));

    for bad in ["5x", "", "five", "5"] {
        let e = parse_duration(bad).expect_err(bad);
        assert!(
            e.0.starts_with(&format!("invalid duration {bad:?}: ")),
            "{e}"
        );
        assert!(!e.0.contains('\n'), "{e}");
    }
}

#[test]
fn parse_time_reads_each_form() {
    let now = at("2026-03-10T10:00:00Z");
    let ok = |text: &str| parse_time(text, now).expect(text);
    assert_eq!(ok("now"), now);
    assert_eq!(ok(" NOW "), now);
    assert_eq!(ok("+5m"), now + 5 * MIN);
    assert_eq!(ok("+1h 30m"), now + 90 * MIN);
    assert_eq!(ok("-1h"), now - HOUR);
    assert_eq!(ok("2h ago"), now - 2 * HOUR);
    assert_eq!(ok("1d AGO"), now - DAY);
    assert_eq!(ok("1796094000"), 1_796_094_000_000);
    assert_eq!(ok("0"), 0);
    assert_eq!(ok("2026-12-01T03:00:00Z"), 1_796_094_000_000);
    assert_eq!(ok("2026-12-01T03:00:00.250Z"), 1_796_094_000_250);
    assert_eq!(ok("2026-12-01 03:00:00"), 1_796_094_000_000);
    assert_eq!(ok("2026-12-01T04:00:00+01:00"), 1_796_094_000_000);
}

#[test]
fn parse_time_errors_list_the_forms() {
    let now = at("2026-03-10T10:00:00Z");
    for bad in [
        "tomorrow",
        "",
        "+",
        "+5x",
        "5m",
        "5mago",
        "2026-13-01T00:00:00Z",
    ] {
        let e = parse_time(bad, now).expect_err(bad);
        assert!(e.0.starts_with(&format!("invalid time {bad:?}: ")), "{e}");
        assert!(e.0.contains("RFC 3339"), "{e}");
        assert!(e.0.contains("+DURATION"), "{e}");
        assert!(e.0.contains("ago"), "{e}");
        assert!(e.0.contains("Unix seconds"), "{e}");
        assert!(!e.0.contains('\n'), "{e}");
    }
    // Before the epoch.
    let e = parse_time("-2h", HOUR).expect_err("before the epoch");
    assert!(e.0.contains("before the Unix epoch"), "{e}");
    assert!(parse_time("+1s", u64::MAX).is_err());
    assert!(parse_time("99999999999999999999", now).is_err());
}

#[test]
fn format_duration_ms_is_short() {
    assert_eq!(format_duration_ms(0), "0s");
    assert_eq!(format_duration_ms(500), "500ms");
    assert_eq!(format_duration_ms(1_500), "1s 500ms");
    assert_eq!(format_duration_ms(30_000), "30s");
    assert_eq!(format_duration_ms(90_000), "1m 30s");
    assert_eq!(format_duration_ms(HOUR), "1h");
    assert_eq!(format_duration_ms(6 * HOUR), "6h");
    assert_eq!(format_duration_ms(DAY + 2 * HOUR), "1d 2h");
    // Only the two largest units; the rest is dropped, not rounded.
    assert_eq!(format_duration_ms(DAY + 2 * HOUR + 59 * MIN), "1d 2h");
    assert_eq!(format_duration_ms(DAY + 5 * MIN), "1d 5m");
    assert_eq!(format_duration_ms(400 * DAY), "400d");
}
