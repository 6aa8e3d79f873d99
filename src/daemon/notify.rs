//! Telling systemd what the daemon is doing, over sd_notify: `READY=1`, the `STATUS=` line
//! `systemctl status farmd` shows, `RELOADING=1` around a config reload, `STOPPING=1`, and
//! watchdog pings. It owns the protocol and its failure policy (never fatal: one debug line,
//! then silence), not the wording of the status line nor when to ping: the service loop decides
//! those. Without `NOTIFY_SOCKET` (not started by systemd) every call is a silent no-op.
//!
//! The environment is left as it is: the daemon notifies all its life, and the children it
//! spawns (nix) do not look at `NOTIFY_SOCKET`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

/// A handle on the service manager's notification socket. Cheap to clone; clones share the
/// "already logged a failure" flag so a broken socket costs one log line, not one per ping.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    failure_logged: Arc<AtomicBool>,
}

impl Notifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// `READY=1`: start-up is complete (the control socket is served). Also ends a reload.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// `STATUS=…`, the one line `systemctl status` shows. Newlines would end the field early
    /// (the protocol is one assignment per line), so they become spaces.
    pub fn status(&self, text: &str) {
        let line = text.replace(['\n', '\r'], " ");
        self.send(&[NotifyState::Status(&line)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=`: systemd ≥ 253 wants the timestamp for
    /// `Type=notify-reload` (to tell this reload from an earlier one); older versions and
    /// `Type=notify` ignore the extra field. Follow with [`Notifier::ready`] when done.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(_) => self.send(&[NotifyState::Reloading]),
        }
    }

    /// `STOPPING=1`: shutting down (after SIGTERM).
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// How often to call [`Notifier::watchdog`]: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// recommends, when systemd enabled the watchdog for this process (`WATCHDOG_PID` absent or
    /// ours); `None` otherwise.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2)
    }

    /// `WATCHDOG=1`: the main loop is alive.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            if !self.failure_logged.swap(true, Ordering::Relaxed) {
                tracing::debug!(
                    error = %error,
                    "cannot notify the service manager (NOTIFY_SOCKET); carrying on without it"
                );
            }
        }
    }
}
