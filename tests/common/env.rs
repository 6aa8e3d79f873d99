//! An isolated environment for the programs a test runs: `nix`, `git`, `farmd`, `farmctl`.
//!
//! Owns a temp dir holding `HOME`, the XDG dirs (Nix 2.8 keeps its flake eval cache and
//! fetcher cache in `$XDG_CACHE_HOME/nix`) and an `NIX_CONF_DIR` whose `nix.conf` points the
//! flake registry at an empty local file and sets `fsync-metadata = false` (the store DB's
//! fsyncs were about half of a fresh fleet's first build), so neither `/etc/nix` nor `/root`
//! nor the network takes part. It does not give git an identity: the code under test must bring its
//! own commit author (the bed's own commits use [`BED_GIT_IDENTITY`]).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use super::process::run;

/// What every Nix invocation in the tests runs with: root, single user, no sandbox, no
/// substituters (the network is 127.0.0.1 only).
pub const NIX_CONFIG: &str = "experimental-features = nix-command flakes\n\
                              sandbox = false\n\
                              substituters =\n\
                              build-users-group =";

/// The author and committer of the bed's own commits (fixture repos, not the code under test).
pub const BED_GIT_IDENTITY: [(&str, &str); 4] = [
    ("GIT_AUTHOR_NAME", "nixfarm testbed"),
    ("GIT_AUTHOR_EMAIL", "testbed@nixfarm.invalid"),
    ("GIT_COMMITTER_NAME", "nixfarm testbed"),
    ("GIT_COMMITTER_EMAIL", "testbed@nixfarm.invalid"),
];

/// Variables from the caller's environment that would change what Nix, git or ssh do.
const SCRUBBED: &[&str] = &[
    "NIX_PATH",
    "NIX_REMOTE",
    "NIX_SSHOPTS",
    "NIX_USER_CONF_FILES",
    "NIX_STORE_DIR",
    "NIX_STATE_DIR",
    "NIX_LOG_DIR",
    "NIX_BUILD_HOOK",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL",
    "EMAIL",
    "SSH_AUTH_SOCK",
];

/// A private HOME/XDG/NIX_CONF_DIR for one test; see the module docs.
pub struct NixEnv {
    dir: TempDir,
}

impl NixEnv {
    /// Creates the directories and the empty flake registry.
    pub fn new() -> NixEnv {
        let dir = tempfile::Builder::new()
            .prefix("nixfarm-env-")
            .tempdir()
            .expect("create temp dir for NixEnv");
        let env = NixEnv { dir };
        for d in ["home", "cache", "config", "data", "state", "nix-conf"] {
            std::fs::create_dir_all(env.dir.path().join(d)).expect("create env dir");
        }
        let registry = env.dir.path().join("nix-conf/registry-empty.json");
        std::fs::write(&registry, r#"{"flakes":[],"version":2}"#).expect("write registry");
        std::fs::write(
            env.dir.path().join("nix-conf/nix.conf"),
            format!(
                "flake-registry = {}\nfsync-metadata = false\n",
                registry.display()
            ),
        )
        .expect("write nix.conf");
        env
    }

    /// `$HOME` of every command made here (e.g. for `.ssh/known_hosts`, which libgit2 reads).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `$XDG_CACHE_HOME`: Nix 2.8 puts `nix/eval-cache-v2` and `nix/fetcher-cache-v1.sqlite` here.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// The environment variables this env sets (NIX_CONFIG, HOME, XDG_*, NIX_CONF_DIR).
    pub fn vars(&self) -> Vec<(&'static str, PathBuf)> {
        let p = |s: &str| self.dir.path().join(s);
        vec![
            ("NIX_CONFIG", PathBuf::from(NIX_CONFIG)),
            ("HOME", p("home")),
            ("XDG_CACHE_HOME", p("cache")),
            ("XDG_CONFIG_HOME", p("config")),
            ("XDG_DATA_HOME", p("data")),
            ("XDG_STATE_HOME", p("state")),
            ("NIX_CONF_DIR", p("nix-conf")),
        ]
    }

    /// Applies this environment to `cmd` (also scrubbing NIX_*, GIT_* and ssh-agent variables
    /// inherited from the caller) and returns it for chaining.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        for v in SCRUBBED {
            cmd.env_remove(v);
        }
        cmd.env("GIT_CONFIG_NOSYSTEM", "1");
        for (k, v) in self.vars() {
            cmd.env(k, v);
        }
        cmd
    }

    /// A new `Command` for `program` with this environment applied.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.apply(&mut cmd);
        cmd
    }

    /// Runs `nix ARGS` and returns its output; panics with stdout/stderr on failure.
    #[track_caller]
    pub fn nix<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self.command("nix").args(args))
    }

    /// Runs `git ARGS` in `dir` as the bed (with [`BED_GIT_IDENTITY`]); panics on failure.
    #[track_caller]
    pub fn git<I, S>(&self, dir: &Path, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(self
            .command("git")
            .current_dir(dir)
            .envs(BED_GIT_IDENTITY)
            .args(args))
    }
}

impl Default for NixEnv {
    fn default() -> Self {
        NixEnv::new()
    }
}
