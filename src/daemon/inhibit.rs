//! The logind inhibitor lock that keeps the host from suspending or shutting down in the middle
//! of a run (an upload cut short wastes the night's work). logind hands out a file descriptor
//! (org.freedesktop.login1.Manager.Inhibit); the lock lasts as long as the descriptor is open,
//! so [`InhibitorLock`] is that descriptor and dropping it releases the lock.
//!
//! It owns talking to logind over the system bus (zbus; `DBUS_SYSTEM_BUS_ADDRESS` is honoured)
//! and the failure policy: no bus, no logind, a refusal or a bus that does not answer within
//! [`TIMEOUT`] is one debug line and no lock, never an error. It does not decide when to take
//! the lock (the service loop does, per run), nor react to `PrepareForShutdown`: a `delay` lock
//! only holds the shutdown for logind's `InhibitDelayMaxSec`, and SIGTERM from the shutdown
//! cancels the run cleanly anyway.

use std::os::fd::AsRawFd;
use std::time::Duration;

use zbus::{proxy, Connection, OwnedFd};

/// How long taking the lock may take in all (connecting, authenticating, logind's answer).
pub const TIMEOUT: Duration = Duration::from_secs(2);

#[proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait LoginManager {
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<OwnedFd>;
}

/// What to ask logind for. [`Inhibitor::default`] is farmd's own request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inhibitor {
    /// Colon-separated operations to inhibit (default: `sleep:shutdown`).
    pub what: String,
    /// Who holds the lock, as `systemd-inhibit --list` shows it (default: `farmd`).
    pub who: String,
    /// Why, as `systemd-inhibit --list` shows it (default: `building and publishing the fleet`).
    pub why: String,
    /// `delay` (hold the operation off for a bounded time) or `block` (default: `delay`).
    pub mode: String,
}

impl Default for Inhibitor {
    fn default() -> Self {
        Self::new(
            "sleep:shutdown",
            "farmd",
            "building and publishing the fleet",
            "delay",
        )
    }
}

impl Inhibitor {
    pub fn new(what: &str, who: &str, why: &str, mode: &str) -> Self {
        Self {
            what: what.to_owned(),
            who: who.to_owned(),
            why: why.to_owned(),
            mode: mode.to_owned(),
        }
    }

    /// Takes the lock on the system bus. `None` (after one debug line) when there is no bus,
    /// no logind, logind refuses, or it all takes longer than [`TIMEOUT`].
    pub async fn take(&self) -> Option<InhibitorLock> {
        match tokio::time::timeout(TIMEOUT, self.call()).await {
            Ok(Ok(fds)) => {
                tracing::debug!(what = %self.what, mode = %self.mode, "logind inhibitor lock taken");
                Some(InhibitorLock { fds })
            }
            Ok(Err(e)) => {
                tracing::debug!("no logind inhibitor lock ({e}); carrying on without it");
                None
            }
            Err(_) => {
                tracing::debug!(
                    "no logind inhibitor lock (no answer within {TIMEOUT:?}); carrying on without it"
                );
                None
            }
        }
    }

    async fn call(&self) -> zbus::Result<Vec<OwnedFd>> {
        // A fresh connection per run: a run is rare, and the system bus may have restarted
        // since the last one. The lock outlives the connection; only the fd matters to logind.
        let connection = Connection::system().await?;
        let manager = LoginManagerProxy::new(&connection).await?;
        match manager
            .inhibit(&self.what, &self.who, &self.why, &self.mode)
            .await
        {
            Ok(fd) => Ok(vec![fd]),
            // logind asks polkit about a request for several operations (`sleep:shutdown`)
            // with the lid-switch action, which by default only active sessions get, while
            // each operation alone has a delay action any caller gets. So an unprivileged
            // farmd (the packaged units' user) is refused the pair and granted each one.
            Err(zbus::Error::FDO(e))
                if matches!(*e, zbus::fdo::Error::AccessDenied(_)) && self.what.contains(':') =>
            {
                let mut fds = Vec::new();
                for what in self.what.split(':') {
                    fds.push(
                        manager
                            .inhibit(what, &self.who, &self.why, &self.mode)
                            .await?,
                    );
                }
                Ok(fds)
            }
            Err(e) => Err(e),
        }
    }
}

/// A held inhibitor lock: logind's file descriptor (one per operation when logind granted
/// them one by one). Dropping it closes the descriptors, which releases the lock.
#[derive(Debug)]
pub struct InhibitorLock {
    fds: Vec<OwnedFd>,
}

impl InhibitorLock {
    /// The (first) descriptor's number (for diagnostics).
    pub fn raw_fd(&self) -> i32 {
        self.fds[0].as_raw_fd()
    }
}
