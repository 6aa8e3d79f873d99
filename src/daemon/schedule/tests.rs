use chrono::{Datelike, Local, Timelike, Weekday};

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

fn sched(expr: &str, zone: &str) -> Schedule {
    Schedule::parse(expr, Some(zone)).unwrap_or_else(|e| panic!("{expr}: {e}"))
}

/// Every fire in `[from, until)`, as RFC 3339 UTC.
fn fires(s: &Schedule, from: &str, until: &str) -> Vec<String> {
    let until = utc(until);
    let mut at = utc(from) - TimeDelta::seconds(1);
    let mut out = Vec::new();
    while let Some(next) = s.next_after(at).filter(|n| *n < until) {
        out.push(next.to_rfc3339());
        at = next;
    }
    out
}

fn error(expr: &str) -> String {
    Schedule::parse(expr, Some("UTC")).unwrap_err().to_string()
}

#[test]
fn crontab_day_of_week_1_fires_on_monday() {
    let s = sched("0 3 * * 1", "UTC");
    // 2024-05-01 is a Wednesday.
    let next = s.next_after(utc("2024-05-01T12:00:00Z")).unwrap();
    assert_eq!(next, utc("2024-05-06T03:00:00Z"));
    assert_eq!(next.weekday(), Weekday::Mon);
    assert_eq!(s.to_string(), "0 0 3 * * Mon (UTC)");
}

#[test]
fn crontab_sunday_is_0_and_7() {
    for expr in ["0 3 * * 0", "0 3 * * 7", "0 3 * * sun"] {
        let next = sched(expr, "UTC").next_after(utc("2024-05-01T12:00:00Z"));
        assert_eq!(next, Some(utc("2024-05-05T03:00:00Z")), "{expr}");
    }
}

#[test]
fn crontab_ranges_steps_and_names_translate() {
    let s = sched("*/15 * * * 1-5", "UTC");
    assert_eq!(s.to_string(), "0 */15 * * * Mon-Fri (UTC)");
    // Friday 23:45 is the last of the week; Monday 00:00 the next.
    let next = s.next_after(utc("2024-05-03T23:45:00Z"));
    assert_eq!(next, Some(utc("2024-05-06T00:00:00Z")));

    assert_eq!(
        sched("0 3 * * mon-fri", "UTC").to_string(),
        "0 0 3 * * Mon-Fri (UTC)"
    );
    assert_eq!(
        sched("0 3 * * 6,0", "UTC").to_string(),
        "0 0 3 * * Sun,Sat (UTC)"
    );
    let jan = sched("0 3 1 jan *", "UTC");
    assert_eq!(
        jan.next_after(utc("2024-05-01T00:00:00Z")),
        Some(utc("2025-01-01T03:00:00Z"))
    );
}

#[test]
fn crontab_fires_on_either_restricted_day_field() {
    // crontab(5): "the 13th, and every Friday", not "Friday the 13th".
    let s = sched("0 3 13 * fri", "UTC");
    assert_eq!(s.to_string(), "0 0 3 13 * * or 0 0 3 * * Fri (UTC)");
    assert_eq!(
        fires(&s, "2024-05-01T00:00:00Z", "2024-05-18T00:00:00Z"),
        [
            "2024-05-03T03:00:00+00:00",
            "2024-05-10T03:00:00+00:00",
            "2024-05-13T03:00:00+00:00",
            "2024-05-17T03:00:00+00:00",
        ]
    );
}

#[test]
fn six_and_seven_fields_are_the_crate_form() {
    let s = sched("0 30 3 * * *", "UTC");
    assert_eq!(s.to_string(), "0 30 3 * * * (UTC)");
    // Here day-of-week 2 is Monday: the crate's numbering, passed through.
    let monday = sched("0 0 3 * * 2", "UTC").next_after(utc("2024-05-01T12:00:00Z"));
    assert_eq!(monday, Some(utc("2024-05-06T03:00:00Z")));
    let once = sched("0 0 3 1 1 * 2030", "UTC");
    assert_eq!(
        once.next_after(utc("2024-05-01T00:00:00Z")),
        Some(utc("2030-01-01T03:00:00Z"))
    );
    assert_eq!(once.next_after(utc("2030-01-01T03:00:00Z")), None);
}

#[test]
fn every_macro_fires_when_crontab_says() {
    let now = utc("2024-05-01T12:00:00Z");
    for (expr, expected) in [
        ("@yearly", "2025-01-01T00:00:00Z"),
        ("@annually", "2025-01-01T00:00:00Z"),
        ("@monthly", "2024-06-01T00:00:00Z"),
        ("@weekly", "2024-05-05T00:00:00Z"),
        ("@daily", "2024-05-02T00:00:00Z"),
        ("@midnight", "2024-05-02T00:00:00Z"),
        ("@hourly", "2024-05-01T13:00:00Z"),
        ("@DAILY", "2024-05-02T00:00:00Z"),
    ] {
        assert_eq!(
            sched(expr, "UTC").next_after(now),
            Some(utc(expected)),
            "{expr}"
        );
    }
}

#[test]
fn invalid_expressions_name_the_field_and_show_an_example() {
    assert_eq!(
        error("daily"),
        "cron expression `daily`: it has 1 field; write a crontab line of 5 fields like \
         \"0 3 * * *\" (03:00 every day), 6-7 fields with seconds first, or a macro like \
         \"@daily\""
    );
    assert_eq!(
        error("0 3 * * 8"),
        "cron expression `0 3 * * 8`: its day-of-week field `8` is not valid (day-of-week \
         takes 0-7 (0 and 7 = Sunday, 1 = Monday) or sun-sat, as lists, ranges and steps); \
         write it like \"0 3 * * 1-5\" or \"0 3 * * mon-fri\" (03:00 Monday to Friday)"
    );
    for (expr, field) in [
        ("60 3 * * *", "its minute field `60`"),
        ("0 24 * * *", "its hour field `24`"),
        ("0 3 32 * *", "its day-of-month field `32`"),
        ("0 3 * 13 *", "its month field `13`"),
        ("0 3 * foo *", "its month field `foo`"),
        ("0 3 * * mon-funday", "its day-of-week field `mon-funday`"),
        ("61 0 3 * * *", "its second field `61`"),
        ("0 0 3 * * 8", "its day-of-week field `8`"),
        ("0 0 3 * * * 1800", "its year field `1800`"),
    ] {
        let e = error(expr);
        assert!(e.contains(field), "{expr}: {e}");
        assert!(e.contains("write it like \""), "{expr}: {e}");
    }
    assert!(error("").contains("it is empty"));
    assert!(error("@reboot").contains("`@reboot`: it is not a macro farmd knows; use one of"));
    assert!(error("0 3 30 2 *").contains("no date matches it from now on"));
    let zone = Schedule::parse("0 3 * * *", Some("Europe/Berln"))
        .unwrap_err()
        .to_string();
    assert_eq!(
        zone,
        "time zone `Europe/Berln`: it is not an IANA time zone name; did you mean \
         \"Europe/Berlin\"? use a name like \"Europe/Berlin\" or \"UTC\", or remove it for \
         the system's local time"
    );
}

#[test]
fn berlin_autumn_repeat_fires_once() {
    // 2024-10-27: 03:00 CEST (01:00 UTC) becomes 02:00 CET; 02:30 happens twice.
    let s = sched("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2024-10-26T00:00:00Z", "2024-10-29T00:00:00Z"),
        [
            "2024-10-26T00:30:00+00:00", // 02:30 CEST
            "2024-10-27T00:30:00+00:00", // 02:30 CEST, the first of the two
            "2024-10-28T01:30:00+00:00", // 02:30 CET
        ]
    );
    // Started during the second 02:xx (02:10 CET): today's 02:30 has already fired.
    assert_eq!(
        s.next_after(utc("2024-10-27T01:10:00Z")),
        Some(utc("2024-10-28T01:30:00Z"))
    );
}

#[test]
fn berlin_spring_gap_fires_once_when_the_gap_ends() {
    // 2024-03-31: 02:00 CET (01:00 UTC) becomes 03:00 CEST; 02:30 does not exist.
    let s = sched("30 2 * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2024-03-30T00:00:00Z", "2024-04-02T00:00:00Z"),
        [
            "2024-03-30T01:30:00+00:00", // 02:30 CET
            "2024-03-31T01:00:00+00:00", // 03:00 CEST, the end of the gap
            "2024-04-01T00:30:00+00:00", // 02:30 CEST
        ]
    );
    // Four skipped quarter hours and 03:00 itself are one fire at 03:00 CEST.
    let quarter = sched("*/15 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&quarter, "2024-03-31T00:30:00Z", "2024-03-31T01:20:00Z"),
        [
            "2024-03-31T00:30:00+00:00",
            "2024-03-31T00:45:00+00:00",
            "2024-03-31T01:00:00+00:00",
            "2024-03-31T01:15:00+00:00",
        ]
    );
}

#[test]
fn berlin_hourly_in_the_repeat_runs_each_wall_clock_hour_once() {
    let s = sched("0 * * * *", "Europe/Berlin");
    assert_eq!(
        fires(&s, "2024-10-26T23:30:00Z", "2024-10-27T03:00:00Z"),
        [
            "2024-10-27T00:00:00+00:00", // 02:00 CEST
            "2024-10-27T02:00:00+00:00", // 03:00 CET; the second 02:00 is not repeated
        ]
    );
}

#[test]
fn new_york_autumn_repeat_fires_once() {
    // 2024-11-03: 02:00 EDT (06:00 UTC) becomes 01:00 EST; 01:30 happens twice.
    let s = sched("30 1 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2024-11-02T12:00:00Z", "2024-11-05T00:00:00Z"),
        [
            "2024-11-03T05:30:00+00:00", // 01:30 EDT
            "2024-11-04T06:30:00+00:00", // 01:30 EST
        ]
    );
}

#[test]
fn new_york_spring_gap_fires_once_when_the_gap_ends() {
    // 2024-03-10: 02:00 EST (07:00 UTC) becomes 03:00 EDT; 02:30 does not exist.
    let s = sched("30 2 * * *", "America/New_York");
    assert_eq!(
        fires(&s, "2024-03-09T12:00:00Z", "2024-03-12T00:00:00Z"),
        [
            "2024-03-10T07:00:00+00:00", // 03:00 EDT
            "2024-03-11T06:30:00+00:00", // 02:30 EDT
        ]
    );
}

#[test]
fn missed_when_a_fire_fell_into_the_downtime() {
    let s = sched("0 3 * * *", "UTC");
    let last = Some(utc("2024-05-01T03:00:00Z"));
    assert!(!s.missed(last, utc("2024-05-02T02:59:59Z")));
    assert!(s.missed(last, utc("2024-05-02T03:00:00Z")), "due at `now`");
    assert!(s.missed(last, utc("2024-05-04T12:00:00Z")), "down for days");
    // The last run was a manual one at 02:00; 03:00 came while the daemon was down.
    assert!(s.missed(
        Some(utc("2024-05-02T02:00:00Z")),
        utc("2024-05-02T09:00:00Z")
    ));
    assert!(!s.missed(None, utc("2024-05-04T12:00:00Z")), "no history");
    assert!(!s.missed(
        Some(utc("2024-05-09T00:00:00Z")),
        utc("2024-05-04T12:00:00Z")
    ));
}

#[test]
fn leap_day_and_month_end_expressions() {
    let leap = sched("0 12 29 2 *", "UTC");
    assert_eq!(
        leap.next_after(utc("2025-01-01T00:00:00Z")),
        Some(utc("2028-02-29T12:00:00Z"))
    );
    let last = sched("0 0 31 * *", "UTC");
    assert_eq!(
        fires(&last, "2024-04-01T00:00:00Z", "2024-09-01T00:00:00Z"),
        [
            "2024-05-31T00:00:00+00:00",
            "2024-07-31T00:00:00+00:00",
            "2024-08-31T00:00:00+00:00",
        ]
    );
    let feb = sched("0 0 28-29 2 *", "UTC");
    assert_eq!(
        fires(&feb, "2024-01-01T00:00:00Z", "2025-03-01T00:00:00Z"),
        [
            "2024-02-28T00:00:00+00:00",
            "2024-02-29T00:00:00+00:00",
            "2025-02-28T00:00:00+00:00",
        ]
    );
}

#[test]
fn describe_next_says_today_weekday_or_date() {
    let s = sched("0 3 * * *", "UTC");
    assert_eq!(
        s.describe_next(utc("2024-05-06T01:00:00Z")),
        "next run 03:00 UTC"
    );
    assert_eq!(
        s.describe_next(utc("2024-05-06T04:00:00Z")),
        "next run Tue 03:00 UTC"
    );
    let yearly = sched("0 3 1 1 *", "UTC");
    assert_eq!(
        yearly.describe_next(utc("2024-05-06T04:00:00Z")),
        "next run 2025-01-01 03:00 UTC"
    );
    let berlin = sched("0 3 * * *", "Europe/Berlin");
    assert_eq!(
        berlin.describe_next(utc("2024-05-06T00:30:00Z")),
        "next run 03:00 CEST"
    );
    let seconds = sched("30 0 3 * * *", "UTC");
    assert_eq!(
        seconds.describe_next(utc("2024-05-06T01:00:00Z")),
        "next run 03:00:30 UTC"
    );
    let gone = sched("0 0 3 1 1 * 2030", "UTC");
    assert_eq!(
        gone.describe_next(utc("2031-01-01T00:00:00Z")),
        "no next run"
    );
}

#[test]
fn no_zone_means_the_system_local_zone() {
    let s = Schedule::parse("0 3 * * *", None).unwrap();
    assert_eq!(s.zone(), Zone::Local);
    assert_eq!(s.to_string(), "0 0 3 * * * (local time)");
    let next = s.next_after(Utc::now()).unwrap().with_timezone(&Local);
    assert_eq!((next.hour(), next.minute()), (3, 0));
    assert!(s.describe_next(Utc::now()).starts_with("next run "));
}

#[test]
fn serializes_as_its_display_text() {
    let s = sched("0 3 * * 1-5", "Europe/Berlin");
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        "\"0 0 3 * * Mon-Fri (Europe/Berlin)\""
    );
}

/// The system zone through chrono's `Local` (TZ set for a child test process, since changing
/// the environment of this one would race with other tests) repeats and skips like the
/// named zone. `Local` hands back the two instants of a repeated time later-first.
#[test]
fn local_zone_from_tz_handles_dst_like_the_named_zone() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "daemon::schedule::tests::local_zone_dst_under_tz_berlin",
        ])
        .args(["--ignored", "--test-threads=1"])
        .env("TZ", "Europe/Berlin")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

#[test]
#[ignore = "run by local_zone_from_tz_handles_dst_like_the_named_zone with TZ set"]
fn local_zone_dst_under_tz_berlin() {
    assert_eq!(std::env::var("TZ").as_deref(), Ok("Europe/Berlin"));
    let local = Schedule::parse("30 2 * * *", None).unwrap();
    let berlin = sched("30 2 * * *", "Europe/Berlin");
    for (from, until) in [
        ("2024-03-30T00:00:00Z", "2024-04-02T00:00:00Z"),
        ("2024-10-26T00:00:00Z", "2024-10-29T00:00:00Z"),
    ] {
        assert_eq!(fires(&local, from, until), fires(&berlin, from, until));
    }
}

/// Why [`Schedule`] maps wall-clock times itself (FACTS.md): the crate alone runs 02:30 twice.
#[test]
fn the_crate_alone_fires_twice_in_the_autumn_repeat() {
    let raw: cron::Schedule = "0 30 2 * * *".parse().unwrap();
    let from = utc("2024-10-26T12:00:00Z").with_timezone(&Tz::Europe__Berlin);
    let until = utc("2024-10-28T00:00:00Z");
    let fires: Vec<_> = raw
        .after(&from)
        .take_while(|t| t.to_utc() < until)
        .collect();
    assert_eq!(fires.len(), 2, "{fires:?}");
}
