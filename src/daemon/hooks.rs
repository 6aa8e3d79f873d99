//! The user's `[hooks]`: after a run, `on_success` or `on_failure` runs with `/bin/sh -c`, the
//! run record as one line of JSON on stdin (`serde_json` of [`RunRecord`], then a newline) and
//! `FARM_RUN` (the run id) and `FARM_STATUS` (`succeeded`, `failed`, `error`, `interrupted`)
//! in its environment. E-mail, ntfy or Matrix is the user's choice; farmd only runs it.
//!
//! A hook runs in its own process group within `[hooks] timeout`; at the limit the whole group
//! is killed. Its output is logged (shortened), and its failure is a warning: a broken
//! notifier must never fail, stop or delay the farm beyond its timeout. This module does not
//! decide when a run has ended; the service loop calls [`run_hooks`] once per finished run.
//!
//! A cancelled run calls no hook: someone cancelled it (`farmctl cancel`, or stopping farmd),
//! so it tells them nothing new, and `farmctl status` still shows how long machines have been
//! failing. A run the daemon died in is `interrupted` and does call `on_failure` (at the next
//! start), since nobody chose that.

use std::time::Duration;

use tokio::process::Command;
use tracing::{debug, info, warn};

use crate::config::HookSettings;
use crate::process::{self, Limits, Outcome};
use crate::record::{RunRecord, RunStatus};

/// Characters of a hook's stdout and stderr that are logged.
const OUTPUT_LOGGED: usize = 2000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    OnSuccess,
    OnFailure,
}

impl Hook {
    /// The hook a finished run with `status` calls for, if any.
    pub fn for_status(status: RunStatus) -> Option<Hook> {
        match status {
            RunStatus::Succeeded => Some(Hook::OnSuccess),
            RunStatus::Failed | RunStatus::Error | RunStatus::Interrupted => Some(Hook::OnFailure),
            RunStatus::Cancelled | RunStatus::Running => None,
        }
    }

    /// Its key in `[hooks]`.
    pub fn key(self) -> &'static str {
        match self {
            Hook::OnSuccess => "on_success",
            Hook::OnFailure => "on_failure",
        }
    }

    fn command(self, settings: &HookSettings) -> Option<&str> {
        match self {
            Hook::OnSuccess => settings.on_success.as_deref(),
            Hook::OnFailure => settings.on_failure.as_deref(),
        }
    }
}

/// What became of a hook command (for tests and callers that want to show it; [`run_hooks`]
/// has already logged it).
#[derive(Debug)]
pub enum HookOutcome {
    /// No hook for this status, or none configured.
    NotRun,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero or was killed by a signal.
    Failed,
    /// Ran past the timeout; its process group was killed.
    TimedOut,
    /// Could not be started at all (no /bin/sh, out of processes).
    NotStarted,
}

/// Runs the hook `record`'s status calls for, if one is configured, and logs what happened.
/// Never fails and never takes longer than `settings.timeout` (plus a kill grace period).
pub async fn run_hooks(settings: &HookSettings, record: &RunRecord) -> HookOutcome {
    let Some(hook) = Hook::for_status(record.status) else {
        debug!(
            run = record.id,
            status = status_name(record.status),
            "no hook for this status"
        );
        return HookOutcome::NotRun;
    };
    let Some(command) = hook.command(settings) else {
        return HookOutcome::NotRun;
    };
    run_hook(hook, command, settings.timeout, record).await
}

async fn run_hook(hook: Hook, command: &str, timeout: Duration, record: &RunRecord) -> HookOutcome {
    let hook = hook.key();
    let mut input = match serde_json::to_vec(record) {
        Ok(json) => json,
        // Plain data with string keys cannot fail to serialise; if it ever does, say so.
        Err(e) => {
            warn!(hook, command, error = %e, "hook not run: the run record is not JSON");
            return HookOutcome::NotStarted;
        }
    };
    input.push(b'\n');
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .env("FARM_RUN", record.id.to_string())
        .env("FARM_STATUS", status_name(record.status));
    let limits = Limits {
        timeout: Some(timeout),
        ..Limits::none()
    };
    debug!(hook, command, run = record.id, "running hook");
    match process::run_with_stdin(cmd, input, limits).await {
        Err(e) => {
            warn!(hook, command, error = %e, "hook could not be started");
            HookOutcome::NotStarted
        }
        Ok(Outcome::Finished(f)) => {
            let stdout = shortened(&String::from_utf8_lossy(&f.stdout));
            let stderr = shortened(&f.stderr_tail);
            if f.status.success() {
                info!(hook, command, %stdout, %stderr, "hook succeeded");
                HookOutcome::Succeeded
            } else {
                warn!(hook, command, status = %f.status, %stdout, %stderr, "hook failed");
                HookOutcome::Failed
            }
        }
        Ok(Outcome::TimedOut { stderr_tail }) => {
            let stderr = shortened(&stderr_tail);
            let timeout = humantime::format_duration(timeout).to_string();
            warn!(hook, command, %timeout, %stderr,
                "hook ran past [hooks] timeout and was killed with its process group");
            HookOutcome::TimedOut
        }
        // No cancellation token is passed; should one be, this is still only a hook.
        Ok(Outcome::Cancelled { .. }) => HookOutcome::Failed,
    }
}

/// How a status is spelled in JSON and in `FARM_STATUS`.
fn status_name(status: RunStatus) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Output for a log line: trimmed, at most [`OUTPUT_LOGGED`] characters.
fn shortened(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(OUTPUT_LOGGED) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

#[cfg(test)]
mod tests;
