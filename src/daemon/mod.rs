//! The long-running daemon's pieces. This module holds the leaves that talk to the host's
//! service manager: [`notify`] (sd_notify: readiness, `STATUS=`, watchdog), [`logging`]
//! (journald with `FARM_*` fields, or human-readable stderr) and [`inhibit`] (the logind
//! inhibitor lock held while a run is active). Every one of them is best effort: none can fail
//! a run. The service loop that drives them (schedule, control socket, signals) lives beside
//! them and owns the decisions of when to call what.

pub mod inhibit;
pub mod logging;
pub mod notify;
