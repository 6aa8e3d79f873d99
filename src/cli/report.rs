//! How the binaries print errors and choose exit codes.

use std::io::IsTerminal;

/// Exit codes shared by farmd and farmctl.
pub mod exit {
    /// Every machine built (and was published).
    pub const OK: i32 = 0;
    /// Some machines failed; the others went on.
    pub const FAILED: i32 = 1;
    /// Infrastructure: checkout, update, cache, history, the daemon unreachable.
    pub const ERROR: i32 = 2;
    /// The run was cancelled (SIGINT/SIGTERM, `farmctl cancel`).
    pub const CANCELLED: i32 = 3;
    /// A bad config (sysexits' EX_CONFIG, so systemd's `RestartPreventExitStatus=78` can use it).
    pub const CONFIG: i32 = 78;
}

/// Prints `error: …` and then one ` -> cause` line per cause, as zincati does.
pub fn print_error(e: &anyhow::Error) {
    let mut chain = e.chain();
    if let Some(top) = chain.next() {
        eprintln!("error: {top}");
    }
    for cause in chain {
        let text = cause.to_string();
        let mut lines = text.lines();
        if let Some(first) = lines.next() {
            eprintln!(" -> {first}");
        }
        for line in lines {
            eprintln!("    {line}");
        }
    }
}

/// Colour only on a terminal, and never when NO_COLOR is set.
pub fn stdout_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Human-readable logs to stderr, filtered by `FARMD_LOG` (else `default`). farmd's journald
/// logging is [`crate::daemon::logging::init`]; this is the same set-up pinned to stderr.
pub fn init_stderr_logging(default: &str) {
    crate::daemon::logging::init_with_filter(crate::daemon::logging::Mode::Stderr, default);
}
