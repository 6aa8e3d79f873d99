//! How farmctl's text looks: colour only when asked (the binary asks when stdout is a
//! terminal), times in one zone, durations in one compact form. Shared by every verb so that
//! `history`, `show` and `status` agree.

use chrono::{DateTime, Local, Utc};

use crate::record::{MachineStatus, RunStatus};

/// Which clock times are shown in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// The host's time zone, as a person at the terminal expects.
    Local,
    /// For tests and for output compared across machines.
    Utc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Emit ANSI colour codes. The binary passes "stdout is a terminal and `NO_COLOR` is unset".
    pub color: bool,
    pub zone: Zone,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    Good,
    Bad,
    Warn,
    Dim,
    Bold,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Good => "32",
            Paint::Bad => "31",
            Paint::Warn => "33",
            Paint::Dim => "2",
            Paint::Bold => "1",
        }
    }

    pub fn of_run(status: RunStatus) -> Paint {
        match status {
            RunStatus::Succeeded => Paint::Good,
            RunStatus::Failed | RunStatus::Error => Paint::Bad,
            RunStatus::Running => Paint::Bold,
            RunStatus::Cancelled | RunStatus::Interrupted => Paint::Warn,
        }
    }

    pub fn of_machine(status: MachineStatus) -> Paint {
        match status {
            MachineStatus::Built => Paint::Good,
            MachineStatus::EvalFailed | MachineStatus::BuildFailed | MachineStatus::TimedOut => {
                Paint::Bad
            }
            MachineStatus::Cancelled => Paint::Warn,
            MachineStatus::Pending => Paint::Dim,
            MachineStatus::Building => Paint::Warn,
        }
    }
}

impl Style {
    /// What farmctl uses at a terminal: local time, colour as given.
    pub fn terminal(color: bool) -> Style {
        Style {
            color,
            zone: Zone::Local,
        }
    }

    /// No colour, UTC: the same text on every machine.
    pub fn plain_utc() -> Style {
        Style {
            color: false,
            zone: Zone::Utc,
        }
    }

    /// `text` in `paint`, or unchanged without colour. Pad before painting: the escape codes
    /// have no width on screen but count in `format!`'s.
    pub fn paint(&self, paint: Paint, text: &str) -> String {
        if self.color {
            format!("\x1b[{}m{text}\x1b[0m", paint.code())
        } else {
            text.to_owned()
        }
    }

    /// `2024-05-01 03:00`, for lists.
    pub fn minute(&self, unix: i64) -> String {
        self.time(unix, "%Y-%m-%d %H:%M")
    }

    /// `2024-05-01 03:00:00 +02:00`, for a single run's report.
    pub fn second(&self, unix: i64) -> String {
        self.time(unix, "%Y-%m-%d %H:%M:%S %:z")
    }

    fn time(&self, unix: i64, format: &str) -> String {
        let Some(utc) = DateTime::<Utc>::from_timestamp(unix, 0) else {
            return format!("@{unix}");
        };
        match self.zone {
            Zone::Utc => utc.format(format).to_string(),
            Zone::Local => utc.with_timezone(&Local).format(format).to_string(),
        }
    }
}

/// `850ms`, `4.2s`, `42s`, `3m12s`, `1h02m`, `2d03h`: at most two units, as wide as the value
/// needs.
pub fn duration_ms(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..=9 => format!("{}.{}s", secs, (ms % 1000) / 100),
        10..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..=86_399 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A run's wall-clock time, when it has ended. A clock that went backwards gives `0ms`, not
/// a panic.
pub fn run_duration(started_at: i64, finished_at: Option<i64>) -> Option<String> {
    let secs = finished_at?.saturating_sub(started_at).max(0);
    Some(duration_ms((secs as u64).saturating_mul(1000)))
}

/// The first 8 characters of a git revision.
pub fn short_rev(rev: &str) -> &str {
    rev.get(..8).unwrap_or(rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_at_most_two_units() {
        let cases = [
            (0, "0ms"),
            (850, "850ms"),
            (4_250, "4.2s"),
            (42_000, "42s"),
            (192_000, "3m12s"),
            (3_723_000, "1h02m"),
            (183_600_000, "2d03h"),
        ];
        for (ms, text) in cases {
            assert_eq!(duration_ms(ms), text, "{ms}");
        }
    }

    #[test]
    fn a_run_that_has_not_ended_has_no_duration() {
        assert_eq!(run_duration(100, None), None);
        assert_eq!(run_duration(100, Some(90)).as_deref(), Some("0ms"));
        assert_eq!(run_duration(100, Some(160)).as_deref(), Some("1m00s"));
    }

    #[test]
    fn colour_codes_appear_only_when_asked_for() {
        let plain = Style::plain_utc();
        let color = Style {
            color: true,
            ..plain
        };
        assert_eq!(plain.paint(Paint::Bad, "failed"), "failed");
        assert_eq!(color.paint(Paint::Bad, "failed"), "\x1b[31mfailed\x1b[0m");
    }

    #[test]
    fn times_are_shown_in_the_chosen_zone() {
        let utc = Style::plain_utc();
        assert_eq!(utc.minute(1_714_532_400), "2024-05-01 03:00");
        assert_eq!(utc.second(1_714_532_400), "2024-05-01 03:00:00 +00:00");
    }

    #[test]
    fn short_revs_tolerate_short_input() {
        assert_eq!(short_rev("1a2b3c4d5e6f"), "1a2b3c4d");
        assert_eq!(short_rev("abc"), "abc");
    }
}
