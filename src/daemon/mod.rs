//! The long-running daemon. [`entry`] is what the binary calls; [`service`] is the loop: one run at a time, a coalescing queue,
//! the scheduler, and the state `farmctl status` and `STATUS=` are made from. Around it stand
//! leaves that each own one thing and never fail a run: [`schedule`] says when scheduled runs
//! are due (cron in a time zone, DST handled once, missed runs noticed), [`hooks`] runs the
//! user's commands after a run, [`notify`] speaks sd_notify (readiness, `STATUS=`, watchdog),
//! [`logging`] sends structured `FARM_*` fields to journald (or readable lines to stderr), and
//! [`inhibit`] holds logind's inhibitor lock while a run is active.

pub mod entry;
pub mod hooks;
pub mod inhibit;
pub mod logging;
pub mod notify;
pub mod schedule;
pub mod service;
