//! Where log lines go. Under systemd, to journald through its native protocol
//! (tracing-journald), with every tracing field as a journal field of its own: `run`,
//! `machine`, `phase`, `status`, `toplevel`, `duration_ms`, `error` arrive as `FARM_RUN`,
//! `FARM_MACHINE`, … so that `journalctl -u farmd FARM_MACHINE=pi3` shows one machine's story.
//! Fields of enclosing spans (the `run` span's `run = 42`) are attached to every event inside
//! them. Elsewhere, human-readable lines on stderr. The filter comes from `FARMD_LOG`
//! (tracing's `EnvFilter` syntax) in both cases.
//!
//! This module owns the choice of destination and the subscriber set-up, not what is logged:
//! the field names are the run's business. Nothing here logs the environment, the config or
//! anything read from secret files; the only values it prints are its own errors.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The environment variable holding the log filter (default: `info`).
pub const FILTER_ENV: &str = "FARMD_LOG";
/// The prefix of our journal fields: `machine` becomes `FARM_MACHINE`.
pub const FIELD_PREFIX: &str = "FARM";
/// `SYSLOG_IDENTIFIER=` of every journal entry (`journalctl -t farmd`).
pub const SYSLOG_IDENTIFIER: &str = "farmd";
/// Where journald listens for native-protocol datagrams (fixed in tracing-journald).
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Which destination the caller asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The journal when stderr is connected to it (systemd sets `JOURNAL_STREAM` to stderr's
    /// `st_dev:st_ino`, see systemd.exec(5)), stderr otherwise.
    Auto,
    /// The journal in any case (e.g. a `--log-journal` flag), falling back to stderr when
    /// journald cannot be reached.
    Journal,
    /// Human-readable stderr in any case.
    Stderr,
}

/// Where logs actually go after [`init`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Destination {
    Journal,
    Stderr,
}

/// Sets up logging for farmd, with `info` as the default filter. See [`init_with_filter`].
pub fn init(mode: Mode) -> Destination {
    init_with_filter(mode, "info")
}

/// Sets up the global tracing subscriber for `mode`, with `default_filter` unless `FARMD_LOG`
/// is set. Never fails: an unreachable journal falls back to stderr with one warning, an
/// invalid `FARMD_LOG` falls back to the default with one warning, and a subscriber already
/// installed (a second call) is left in place.
pub fn init_with_filter(mode: Mode, default_filter: &str) -> Destination {
    let (filter, bad_filter) = filter_from_env(default_filter);
    let stderr_is_journal = stderr_is_journal_stream();
    let want_journal = match mode {
        Mode::Auto => stderr_is_journal,
        Mode::Journal => true,
        Mode::Stderr => false,
    };
    let mut journal_error = None;
    let destination = if want_journal {
        match journal_layer() {
            Ok(layer) => {
                let _ = tracing_subscriber::registry()
                    .with(layer.with_filter(filter))
                    .try_init();
                Destination::Journal
            }
            Err(e) => {
                journal_error = Some(e);
                init_stderr(filter, stderr_is_journal);
                Destination::Stderr
            }
        }
    } else {
        init_stderr(filter, stderr_is_journal);
        Destination::Stderr
    };
    if let Some(e) = journal_error {
        tracing::warn!("cannot reach journald at {JOURNAL_SOCKET} ({e}); logging to stderr");
    }
    if let Some(e) = bad_filter {
        tracing::warn!("ignoring {FILTER_ENV}: {e}; using `{default_filter}`");
    }
    destination
}

/// True when systemd connected stderr to the journal: `JOURNAL_STREAM` names stderr's
/// device and inode. Comparing them (rather than trusting the variable's presence) matters
/// because the variable is inherited by children whose stderr was redirected elsewhere.
pub fn stderr_is_journal_stream() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    match rustix::fs::fstat(std::io::stderr().as_fd()) {
        // `st_dev`/`st_ino` are u64 here but narrower on some targets.
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => st.st_dev as u64 == dev && st.st_ino as u64 == ino,
        Err(_) => false,
    }
}

fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The filter from `FARMD_LOG`, or `default` (and the reason) when it is unset or invalid.
fn filter_from_env(default: &str) -> (EnvFilter, Option<String>) {
    let fallback = || EnvFilter::try_new(default).unwrap_or_else(|_| EnvFilter::new("info"));
    match std::env::var(FILTER_ENV) {
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(filter) => (filter, None),
            Err(e) => (fallback(), Some(e.to_string())),
        },
        Err(std::env::VarError::NotPresent) => (fallback(), None),
        Err(std::env::VarError::NotUnicode(_)) => {
            (fallback(), Some("the value is not UTF-8".to_owned()))
        }
    }
}

fn journal_layer() -> std::io::Result<tracing_journald::Layer> {
    // tracing-journald's default mapping puts `info` at NOTICE (5). We use syslog's usual
    // meaning instead, as other daemons do: routine progress is INFO (6), so
    // `journalctl -p notice` shows only what needs a look.
    let priorities = PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    };
    Ok(tracing_journald::layer()?
        .with_field_prefix(Some(FIELD_PREFIX.to_owned()))
        .with_syslog_identifier(SYSLOG_IDENTIFIER.to_owned())
        .with_priority_mappings(priorities))
}

/// Human-readable lines on stderr. When stderr is the journal anyway (journald unreachable
/// through its socket but the stream works) journald adds timestamps and colour codes would
/// end up as garbage in it, so both are left out.
fn init_stderr(filter: EnvFilter, stderr_is_journal: bool) {
    let colour = !stderr_is_journal
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .with_target(false);
    let layer = if stderr_is_journal {
        layer.without_time().boxed()
    } else {
        layer.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init();
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Destination::Journal => "journald",
            Destination::Stderr => "stderr",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream("8"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }
}
