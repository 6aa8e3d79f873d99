//! The control socket: how farmctl (and the systemd timer's `farmctl trigger --wait`) talks to
//! a running farmd. [`protocol`] is the wire format, [`server`] serves it on a Unix socket
//! (bound by farmd, or passed by systemd socket activation), [`client`] is farmctl's side.
//! Deciding what a trigger or a cancel *does* is [`crate::daemon`]'s job.

pub mod client;
pub mod protocol;
pub mod server;
