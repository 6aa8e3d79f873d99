//! The integration test bed: real Nix, real git remotes, a real sshd, no mocks.
//!
//! Every test file uses it through `mod common;`. The pieces:
//! - [`NixEnv`] (`env.rs`): an isolated environment for `nix`, `git` and our own binaries
//!   (fixed `NIX_CONFIG`, its own `HOME`, XDG dirs and `NIX_CONF_DIR`).
//! - [`Fleet`] (`fleet.rs`): a fixture fleet flake in a temp dir, with a bare `remote.git`,
//!   a stand-in for nixpkgs ("pkgs") that can be bumped, and machines that can be made to
//!   fail, fail evaluation, or sleep.
//! - [`Sshd`] (`sshd.rs`): a throwaway OpenSSH server on 127.0.0.1 for git over ssh, SFTP and
//!   Nix remote builds.
//! - [`Nginx`] (`nginx.rs`): a real nginx on 127.0.0.1 serving a cache directory over HTTP.
//! - [`CacheBed`] (`cache.rs`): a fleet + sshd + farm publishing over SFTP, and cache checks.
//! - [`Farm`] (`farm.rs`): a config for a fleet, a state dir, and the real farmd/farmctl.
//! - `synthetic.rs`: signed narinfos and NARs written straight into a cache directory.
//! - `process.rs`: running commands and panicking with their whole output on failure.
//!
//! All tests share the global /nix/store, so every fleet salts every derivation with a
//! per-fleet unique string: tests (and test binaries) can run in parallel.

#![allow(dead_code, unused_imports)] // each test binary uses a different part of the bed

mod cache;
mod daemon;
mod env;
mod farm;
mod fleet;
mod nginx;
mod process;
mod sshd;
pub mod synthetic;

pub use cache::{closure_problems, substitute, temporaries, CacheBed};
pub use daemon::RunningFarmd;
pub use env::{NixEnv, BED_GIT_IDENTITY, NIX_CONFIG};
pub use farm::{machine, phases, toml_str, Farm, FarmConfig};
pub use fleet::{lock_rev_of_pkgs, Fleet, DEFAULT_MACHINES};
pub use nginx::{GitHttps, Nginx};
pub use process::{run, run_unchecked, stderr_of, stdout_of};
pub use sshd::Sshd;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A string unique to this process, this call and this moment, safe in Nix strings, file
/// names and derivation names (`[a-z0-9-]`). It starts with the current test's name when
/// the test harness named the thread, to make store paths and temp dirs traceable.
pub fn unique_salt() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    let test: String = std::thread::current()
        .name()
        .unwrap_or("main")
        .rsplit("::")
        .next()
        .unwrap_or("main")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!(
        "{test}-{:x}-{n:x}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}
