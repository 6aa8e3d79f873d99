//! Running external programs in tests: a failure panics with the command line, the exit
//! status and everything the program printed, so a red test says why without a rerun.

use std::process::{Command, Output};

/// Runs `cmd` to completion and returns its output; panics (showing the command, status,
/// stdout and stderr) when it cannot be started or exits unsuccessfully.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = run_unchecked(cmd);
    if !out.status.success() {
        panic!("{}", describe(cmd, &out));
    }
    out
}

/// Runs `cmd` to completion and returns its output whatever the exit status; panics only
/// when the program cannot be started.
#[track_caller]
pub fn run_unchecked(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", display(cmd)))
}

/// The command as a shell-like line (program and arguments only).
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A failure report: command, status, stdout and stderr.
pub fn describe(cmd: &Command, out: &Output) -> String {
    format!(
        "`{}` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
        display(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stdout of `out` as a string, trailing newline removed.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// The stderr of `out` as a string.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
