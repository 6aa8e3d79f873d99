//! The long-running service's parts that stand on their own: [`schedule`] says when scheduled
//! runs are due (cron in a time zone, DST handled once, missed runs noticed) and [`hooks`] runs
//! the user's commands after a run. Neither sleeps, listens or owns a run; the service loop
//! does, and asks them.

pub mod hooks;
pub mod schedule;
