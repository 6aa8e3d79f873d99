//! [`Schedule`]: when scheduled runs are due. It owns reading `[schedule] cron` and `timezone`
//! (see [`parse`] for crontab lines, macros and zone names) and the one question the service
//! loop asks: the next fire after an instant, in real (UTC) time. It does not sleep, spawn or
//! decide whether a missed run is caught up; the daemon does, with [`Schedule::missed`].
//!
//! # Daylight saving time
//!
//! The expression is read in wall-clock time of the zone, and every wall-clock time it matches
//! fires exactly once:
//!
//! - a time the clocks pass twice (autumn: 02:30 in Europe/Berlin on the last Sunday of
//!   October) fires at its first occurrence only, so a nightly build does not run twice;
//! - a time the clocks skip (spring: 02:30 does not exist that night) fires once, at the
//!   instant the gap ends (03:00 summer time), as cronie does. Skipping it instead would
//!   silently lose a night's build, and [`Schedule::missed`] could never notice that.
//!
//! Periodic expressions follow the same rule, so `0 * * * *` runs at 02:00 (summer time) and
//! then 03:00 (winter time) on the autumn night, not twice at 02:00.

mod parse;
#[cfg(test)]
mod tests;

use std::fmt;

use chrono::{DateTime, Local, LocalResult, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

pub use parse::ScheduleError;

/// The zone a schedule's wall-clock times are read in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// The system's: `TZ` when set, else /etc/localtime (read by chrono at each use, so a
    /// changed /etc/localtime is picked up without a restart).
    Local,
    /// An IANA zone from the tz database compiled into farmd.
    Named(Tz),
}

impl Zone {
    /// `Some(name)` is an IANA name (`Europe/Berlin`, `UTC`); `None` the system's zone.
    pub fn parse(name: Option<&str>) -> Result<Zone, ScheduleError> {
        name.map(parse::zone)
            .transpose()
            .map(|tz| tz.map_or(Zone::Local, Zone::Named))
    }
}

impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Local => f.write_str("local time"),
            Zone::Named(tz) => f.write_str(tz.name()),
        }
    }
}

/// A parsed `[schedule]`: a cron expression in a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The crate's form of the expression; two when crontab's "day-of-month or day-of-week"
    /// applies (a time fires when either matches).
    crons: Vec<cron::Schedule>,
    zone: Zone,
}

impl Schedule {
    /// Parses a crontab line (`0 3 * * *`, `*/15 * * * mon-fri`), a 6/7-field expression with
    /// seconds first as the cron crate takes it (day-of-week 1 = Sunday there), or a macro
    /// (`@daily`, `@midnight`, `@hourly`, `@weekly`, `@monthly`, `@yearly`, `@annually`), in
    /// the IANA zone `timezone` (None: the system's local zone).
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let zone = Zone::parse(timezone)?;
        let crons = parse::translate(expr)?
            .iter()
            .map(|six| six.parse::<cron::Schedule>())
            .collect::<Result<Vec<_>, _>>()
            // Every field was checked alone; a combination the crate still refuses is unknown
            // to us, so name the whole expression.
            .map_err(|_| ScheduleError::FieldCount {
                expr: expr.to_owned(),
                count: expr.split_whitespace().count(),
            })?;
        let schedule = Schedule { crons, zone };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Never {
                expr: expr.to_owned(),
            });
        }
        Ok(schedule)
    }

    pub fn zone(&self) -> Zone {
        self.zone
    }

    /// The next fire strictly after `t`, or None when the expression matches no later date
    /// (only possible with a year field). See the module docs for DST.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self.zone {
            Zone::Local => self.next_in(&Local, t),
            Zone::Named(tz) => self.next_in(&tz, t),
        }
    }

    /// Whether a fire was due after the last run started and at or before `now`: the daemon
    /// was down (or busy) when it came. A fire at exactly `now` counts, since
    /// [`Self::next_after`]`(now)` will not return it. Without a previous run nothing was
    /// missed; whether a first start should run at once is the caller's policy.
    pub fn missed(&self, last_run_started: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        last_run_started
            .and_then(|last| self.next_after(last))
            .is_some_and(|due| due <= now)
    }

    /// For `STATUS=` lines, in the schedule's zone: `next run 03:00` (today), `next run Tue
    /// 03:00` (within a week), `next run 2025-03-01 03:00`, or `no next run`. A named zone
    /// adds its abbreviation (`next run 03:00 CET`).
    pub fn describe_next(&self, now: DateTime<Utc>) -> String {
        let Some(next) = self.next_after(now) else {
            return "no next run".to_owned();
        };
        let (now_local, next_local, abbreviation) = match self.zone {
            Zone::Local => (
                now.with_timezone(&Local).naive_local(),
                next.with_timezone(&Local).naive_local(),
                String::new(),
            ),
            Zone::Named(tz) => {
                let at = next.with_timezone(&tz);
                (
                    now.with_timezone(&tz).naive_local(),
                    at.naive_local(),
                    format!(" {}", at.format("%Z")),
                )
            }
        };
        let time = if next_local.second() == 0 {
            next_local.format("%H:%M")
        } else {
            next_local.format("%H:%M:%S")
        };
        let days_ahead = (next_local.date() - now_local.date()).num_days();
        let day = match days_ahead {
            0 => String::new(),
            1..=6 => format!("{} ", next_local.format("%a")),
            _ => format!("{} ", next_local.format("%Y-%m-%d")),
        };
        format!("next run {day}{time}{abbreviation}")
    }

    fn next_in<Z: TimeZone>(&self, tz: &Z, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The crate walks wall-clock times (a naive clock, here written as UTC); we map each
        // to the instant it fires, which is how DST is decided once, here, not by the crate.
        let wall = t.with_timezone(tz).naive_local().and_utc();
        let mut walks: Vec<_> = self
            .crons
            .iter()
            .map(|c| c.after(&wall).peekable())
            .collect();
        loop {
            let next_wall = walks.iter_mut().filter_map(|w| w.peek().copied()).min()?;
            for w in &mut walks {
                if w.peek() == Some(&next_wall) {
                    w.next();
                }
            }
            // Wall times after `t`'s can still be before `t` in a repeated hour.
            match fire_instant(tz, next_wall.naive_utc()) {
                Some(at) if at > t => return Some(at),
                _ => {}
            }
        }
    }
}

/// When wall-clock time `wall` happens in `tz`: its first occurrence if the clocks pass it
/// twice, the end of the gap if they skip it.
fn fire_instant<Z: TimeZone>(tz: &Z, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&wall) {
        LocalResult::Single(at) => return Some(at.to_utc()),
        // Not `earliest()`: chrono's `Local` does not always put the earlier instant first.
        LocalResult::Ambiguous(a, b) => return Some(a.to_utc().min(b.to_utc())),
        LocalResult::None => {}
    }
    // Gaps end on a whole minute in the tz database; the longest (Samoa, 2011) is a day.
    let mut probe = wall.with_second(0)?.with_nanosecond(0)?;
    for _ in 0..2 * 24 * 60 {
        probe += TimeDelta::minutes(1);
        if let Some(at) = tz.from_local_datetime(&probe).earliest() {
            return Some(at.to_utc());
        }
    }
    None
}

/// The expressions in the crate's 6/7-field form and the zone:
/// `0 0 3 * * Mon-Fri (Europe/Berlin)`; crontab's either-day rule shows as `… or …`.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cron) in self.crons.iter().enumerate() {
            if i > 0 {
                f.write_str(" or ")?;
            }
            f.write_str(cron.source())?;
        }
        write!(f, " ({})", self.zone)
    }
}

/// As its [`Display`](fmt::Display) text (what `farmctl check-config --json` shows).
impl serde::Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
