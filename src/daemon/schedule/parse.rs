//! From what a user writes (a crontab line, a 6/7-field expression, an `@daily` macro, a zone
//! name) to what the cron crate evaluates, with errors that name the field and show an example.
//!
//! Crontab and the crate disagree in three places, all handled here: the crate wants seconds
//! first, numbers days of the week from 1 = Sunday (crontab: 0 and 7 = Sunday, 1 = Monday), and
//! always ANDs day-of-month with day-of-week, where crontab runs on either when both are
//! restricted (`0 3 1 * mon` = the 1st and every Monday).

use std::collections::BTreeSet;

use chrono_tz::Tz;

/// Why a schedule was refused. Each variant names the input as written; [`Self::problem`] and
/// [`Self::hint`] let the config say it in its own words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not 5 (crontab), 6 or 7 (seconds first) fields, and not a macro.
    #[error("cron expression `{expr}`: {}; {}", self.problem(), self.hint())]
    FieldCount { expr: String, count: usize },
    /// One field is malformed or out of range.
    #[error("cron expression `{expr}`: {}; {}", self.problem(), self.hint())]
    Field {
        expr: String,
        /// `minute`, `hour`, `day-of-month`, `month`, `day-of-week`, `second` or `year`.
        field: &'static str,
        value: String,
        /// The values the field takes in the form it was written in.
        allowed: &'static str,
    },
    /// `@something` that is not one of the macros.
    #[error("cron expression `{expr}`: {}; {}", self.problem(), self.hint())]
    UnknownMacro { expr: String },
    /// Well-formed, but no date matches from now on (`0 3 30 2 *`).
    #[error("cron expression `{expr}`: {}; {}", self.problem(), self.hint())]
    Never { expr: String },
    /// Not an IANA time zone name.
    #[error("time zone `{zone}`: {}; {}", self.problem(), self.hint())]
    UnknownZone {
        zone: String,
        /// The zone name that was probably meant.
        suggestion: Option<String>,
    },
}

impl ScheduleError {
    /// What was refused, as written (the expression, or the zone name).
    pub fn input(&self) -> &str {
        match self {
            ScheduleError::FieldCount { expr, .. }
            | ScheduleError::Field { expr, .. }
            | ScheduleError::UnknownMacro { expr }
            | ScheduleError::Never { expr } => expr,
            ScheduleError::UnknownZone { zone, .. } => zone,
        }
    }

    /// What is wrong with [`Self::input`], as a clause.
    pub fn problem(&self) -> String {
        match self {
            ScheduleError::FieldCount { count: 0, .. } => "it is empty".to_owned(),
            ScheduleError::FieldCount { count: 1, .. } => "it has 1 field".to_owned(),
            ScheduleError::FieldCount { count, .. } => format!("it has {count} fields"),
            ScheduleError::Field {
                field,
                value,
                allowed,
                ..
            } => format!("its {field} field `{value}` is not valid ({field} takes {allowed})"),
            ScheduleError::UnknownMacro { .. } => "it is not a macro farmd knows".to_owned(),
            ScheduleError::Never { .. } => "no date matches it from now on".to_owned(),
            ScheduleError::UnknownZone { .. } => "it is not an IANA time zone name".to_owned(),
        }
    }

    /// What to write instead, with a valid example.
    pub fn hint(&self) -> String {
        match self {
            ScheduleError::FieldCount { .. } => {
                "write a crontab line of 5 fields like \"0 3 * * *\" (03:00 every day), 6-7 \
                 fields with seconds first, or a macro like \"@daily\""
                    .to_owned()
            }
            ScheduleError::Field { field, .. } => {
                format!("write it like {}", example(field))
            }
            ScheduleError::UnknownMacro { .. } => format!("use one of {}", MACRO_NAMES),
            ScheduleError::Never { .. } => {
                "check the day against the month (30 February and 31 April never come), e.g. \
                 \"0 3 28 2 *\" = 03:00 on 28 February"
                    .to_owned()
            }
            ScheduleError::UnknownZone { suggestion, .. } => {
                let mut hint = String::new();
                if let Some(s) = suggestion {
                    hint += &format!("did you mean \"{s}\"? ");
                }
                hint += "use a name like \"Europe/Berlin\" or \"UTC\", or remove it for the \
                         system's local time";
                hint
            }
        }
    }
}

fn example(field: &str) -> &'static str {
    match field {
        "second" => "\"0 0 3 * * *\" (seconds first: 03:00:00 every day)",
        "minute" => "\"30 3 * * *\" (03:30 every day) or \"*/15 * * * *\"",
        "hour" => "\"0 3 * * *\" (03:00 every day) or \"0 1-5 * * *\"",
        "day-of-month" => "\"0 3 1,15 * *\" (03:00 on the 1st and 15th)",
        "month" => "\"0 3 1 jan,jul *\" (03:00 on 1 January and 1 July)",
        "day-of-week" => "\"0 3 * * 1-5\" or \"0 3 * * mon-fri\" (03:00 Monday to Friday)",
        _ => "\"0 0 3 * * * 2030\" (03:00 every day of 2030)",
    }
}

const MACRO_NAMES: &str = "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly";

/// The crate's 6/7-field expressions the input means: one, or two for crontab's
/// "day-of-month or day-of-week" (a time matches when either expression matches).
pub(super) fn translate(expr: &str) -> Result<Vec<String>, ScheduleError> {
    let trimmed = expr.trim();
    if let Some(name) = trimmed.strip_prefix('@') {
        let six = match name.to_ascii_lowercase().as_str() {
            "yearly" | "annually" => "0 0 0 1 1 *",
            "monthly" => "0 0 0 1 * *",
            "weekly" => "0 0 0 * * Sun",
            "daily" | "midnight" => "0 0 0 * * *",
            "hourly" => "0 0 * * * *",
            _ => {
                return Err(ScheduleError::UnknownMacro {
                    expr: expr.to_owned(),
                })
            }
        };
        return Ok(vec![six.to_owned()]);
    }
    let fields: Vec<&str> = trimmed.split_whitespace().collect();
    match fields.len() {
        5 => crontab(expr, &fields),
        6 | 7 => {
            for (slot, value) in fields.iter().enumerate() {
                check_field(expr, slot, value)?;
            }
            Ok(vec![fields.join(" ")])
        }
        count => Err(ScheduleError::FieldCount {
            expr: expr.to_owned(),
            count,
        }),
    }
}

/// A 5-field crontab line: `minute hour day-of-month month day-of-week`.
fn crontab(expr: &str, f: &[&str]) -> Result<Vec<String>, ScheduleError> {
    let [minute, hour, dom, month, dow] = [f[0], f[1], f[2], f[3], f[4]];
    for (slot, value) in [(1, minute), (2, hour), (3, dom), (4, month)] {
        check_field(expr, slot, value)?;
    }
    let days = crontab_weekdays(dow).ok_or_else(|| ScheduleError::Field {
        expr: expr.to_owned(),
        field: "day-of-week",
        value: dow.to_owned(),
        allowed: "0-7 (0 and 7 = Sunday, 1 = Monday) or sun-sat, as lists, ranges and steps",
    })?;
    let weekdays = weekday_names(&days);
    // crontab(5): when both day fields are restricted, either one matching is enough.
    if !dom.starts_with('*') && !dow.starts_with('*') {
        return Ok(vec![
            format!("0 {minute} {hour} {dom} {month} *"),
            format!("0 {minute} {hour} * {month} {weekdays}"),
        ]);
    }
    Ok(vec![format!("0 {minute} {hour} {dom} {month} {weekdays}")])
}

const SLOTS: [(&str, &str); 7] = [
    ("second", "0-59"),
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or jan-dec"),
    (
        "day-of-week",
        "1-7 (1 = Sunday in the 6-7 field form) or sun-sat",
    ),
    ("year", "1970-2100"),
];

/// Lets the crate judge one field alone (every other field `*`), so an error can say which.
fn check_field(expr: &str, slot: usize, value: &str) -> Result<(), ScheduleError> {
    let mut probe = ["0", "*", "*", "*", "*", "*", "*"];
    probe[slot] = value;
    match probe.join(" ").parse::<cron::Schedule>() {
        Ok(_) => Ok(()),
        Err(_) => Err(ScheduleError::Field {
            expr: expr.to_owned(),
            field: SLOTS[slot].0,
            value: value.to_owned(),
            allowed: SLOTS[slot].1,
        }),
    }
}

const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

/// The days (0 = Sunday … 6 = Saturday) a crontab day-of-week field selects: numbers 0-7
/// (7 = Sunday again), three-letter names, lists, ranges and `/` steps.
fn crontab_weekdays(field: &str) -> Option<BTreeSet<u32>> {
    let mut days = BTreeSet::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, step.parse::<u32>().ok().filter(|s| *s > 0)?),
            None => (item, 1),
        };
        let (first, last) = match range {
            "*" | "?" => (0, 7),
            _ => match range.split_once('-') {
                Some((a, b)) => (day(a, false)?, day(b, true)?),
                // `1/2` is `1-7/2`, as cronie reads it.
                None if item.contains('/') => (day(range, false)?, 7),
                None => {
                    let d = day(range, false)?;
                    (d, d)
                }
            },
        };
        if first > last {
            return None;
        }
        days.extend((first..=last).step_by(step as usize).map(|d| d % 7));
    }
    Some(days)
}

/// One day of the week: a number 0-7 or a name. `sun` closing a range is 7 (`fri-sun`).
fn day(s: &str, range_end: bool) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return (n <= 7).then_some(n);
    }
    let lower = s.to_ascii_lowercase();
    let i = DAY_NAMES
        .iter()
        .position(|name| lower.len() >= 3 && name.to_ascii_lowercase() == lower[..3])?;
    // Full names too (`monday`), but not `monkey`.
    let full = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    if lower.len() > 3 && lower != full[i] {
        return None;
    }
    Some(if i == 0 && range_end { 7 } else { i as u32 })
}

/// The crate's day-of-week field for `days`, in names so no reader has to know whose
/// numbering it is: `*`, `Mon-Fri`, `Sun,Sat`.
fn weekday_names(days: &BTreeSet<u32>) -> String {
    if days.len() == 7 {
        return "*".to_owned();
    }
    let mut parts = Vec::new();
    let mut iter = days.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end = iter.next().unwrap_or(end);
        }
        parts.push(match end - start {
            0 => DAY_NAMES[start as usize].to_owned(),
            1 => format!("{},{}", DAY_NAMES[start as usize], DAY_NAMES[end as usize]),
            _ => format!("{}-{}", DAY_NAMES[start as usize], DAY_NAMES[end as usize]),
        });
    }
    parts.join(",")
}

/// An IANA zone name, exactly as the tz database spells it (`Europe/Berlin`, `UTC`).
pub(super) fn zone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>().map_err(|_| ScheduleError::UnknownZone {
        zone: name.to_owned(),
        suggestion: closest_zone(name),
    })
}

fn closest_zone(name: &str) -> Option<String> {
    let wanted = name.trim().to_ascii_lowercase();
    chrono_tz::TZ_VARIANTS
        .iter()
        .map(|tz| tz.name())
        .map(|candidate| {
            let distance = strsim::levenshtein(&wanted, &candidate.to_ascii_lowercase());
            (distance, candidate)
        })
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, candidate)| candidate.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(field: &str) -> Option<String> {
        crontab_weekdays(field).map(|d| weekday_names(&d))
    }

    #[test]
    fn crontab_weekday_numbers_become_names() {
        assert_eq!(days("1").as_deref(), Some("Mon"));
        assert_eq!(days("0").as_deref(), Some("Sun"));
        assert_eq!(days("7").as_deref(), Some("Sun"));
        assert_eq!(days("1-5").as_deref(), Some("Mon-Fri"));
        assert_eq!(days("mon-fri").as_deref(), Some("Mon-Fri"));
        assert_eq!(days("MON,wed,Friday").as_deref(), Some("Mon,Wed,Fri"));
        assert_eq!(days("5-7").as_deref(), Some("Sun,Fri,Sat"));
        assert_eq!(days("fri-sun").as_deref(), Some("Sun,Fri,Sat"));
        assert_eq!(days("6,0").as_deref(), Some("Sun,Sat"));
        assert_eq!(days("*/2").as_deref(), Some("Sun,Tue,Thu,Sat"));
        assert_eq!(days("1-5/2").as_deref(), Some("Mon,Wed,Fri"));
        assert_eq!(days("1/3").as_deref(), Some("Sun,Mon,Thu"));
        assert_eq!(days("0-7").as_deref(), Some("*"));
        assert_eq!(days("1-2").as_deref(), Some("Mon,Tue"));
    }

    #[test]
    fn crontab_weekday_nonsense_is_refused() {
        for bad in ["8", "5-1", "mo", "monkey", "*/0", "1-", "", "x/2"] {
            assert_eq!(days(bad), None, "{bad}");
        }
    }

    #[test]
    fn zone_typos_get_a_suggestion() {
        let e = zone("Europe/Berln").unwrap_err();
        assert_eq!(
            e,
            ScheduleError::UnknownZone {
                zone: "Europe/Berln".into(),
                suggestion: Some("Europe/Berlin".into())
            }
        );
        assert!(zone("europe/berlin").is_err(), "names are case-sensitive");
        assert_eq!(zone("UTC").unwrap(), Tz::UTC);
    }
}
