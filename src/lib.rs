//! nixfarm: a build farm for NixOS fleets.
//!
//! # Layout
//!
//! One run (a "cycle") is a straight pipeline; [`run`] holds it top to bottom:
//!
//! ```text
//!  config::Settings ──► run::run_once
//!      checkout  (git)      Checkout { dir, rev }
//!      update    (nix)      lock changed? new rev
//!      evaluate  (nix)      Vec<Machine { name, installable, drv }>
//!      build     (nix)      Vec<BuildOutcome { machine, toplevel | error }>
//!      publish   (cache)    PublishSummary { per root: closure, uploaded, already cached }
//!                           + a signed generation record per machine on the cache (GC roots)
//!      push      (git)      PushOutcome
//!      gc        (cache)    GcReport { deleted, freed, kept, per machine }
//!      record    (history)  RunRecord in SQLite
//! ```
//!
//! - [`config`]: the TOML file, parsed with serde then validated into [`config::Settings`].
//! - [`types`]: domain types parsed at the border (`MachineName`, `StorePath`).
//! - [`nix`]: the one wrapper around the `nix` CLI; nothing else spawns `nix`.
//! - [`git`]: clone/fetch/reset/push with git2, host-key checking against known_hosts.
//! - [`run`]: the pipeline and its phases (`evaluate`, `build`).
//! - [`cache`]: the static binary cache: its formats (NAR, hashes, compression, keys, narinfo),
//!   the transport seam (`backend`), the publisher (`publish`), `verify`, the generation
//!   records on the cache (`generations`) and the retention GC (`gc`).
//! - [`record`]: the plain structs a run produces (what the history stores and farmctl shows).
//! - [`history`]: the embedded SQLite database under the state directory.
//! - [`cli`]: farmctl's verbs that render records.
//! - [`control`]: the control socket's protocol, server and client.
//! - [`process`]: spawning children in their own process group with timeouts.
//! - [`daemon`]: the long-running service: the loop, the cron [`daemon::schedule`], hooks, and
//!   the systemd side (sd_notify, journald logging, the logind inhibitor).

pub mod alloc;
pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod git;
pub mod history;
pub mod lockfile;
pub mod nix;
pub mod process;
pub mod record;
pub mod run;
pub mod types;
