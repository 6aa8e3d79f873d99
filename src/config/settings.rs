//! The validated configuration: domain types only. Everything here has passed
//! [`super::load`]'s checks, so the rest of the program never re-validates.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::daemon::schedule::Schedule;
use crate::record::MachineKind;
use crate::types::MachineName;

/// The default location of the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/farmd/farmd.toml";

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The file these settings came from.
    pub source: PathBuf,
    pub repo: RepoSettings,
    pub update: UpdateSettings,
    pub build: BuildSettings,
    pub state: StateSettings,
    pub cache: Option<CacheSettings>,
    pub schedule: ScheduleSettings,
    pub control: ControlSettings,
    pub hooks: HookSettings,
}

#[derive(Clone, Debug, Serialize)]
pub struct RepoSettings {
    /// `ssh://…`, `user@host:path` (scp-like), `https://…`, `file://…` or a local path.
    pub url: String,
    /// The branch to build (default: `main`).
    pub branch: String,
    /// The branch the lock commit is pushed to (default: `branch`).
    pub push_branch: String,
    pub auth: RepoAuth,
    /// known_hosts file for SSH remotes (default: `~/.ssh/known_hosts` of the daemon's user).
    pub known_hosts: Option<PathBuf>,
    /// A shell command run in the checkout after every sync (e.g. `git-crypt unlock KEYFILE`).
    pub prepare: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "method")]
pub enum RepoAuth {
    /// No credentials configured: ssh-agent when `SSH_AUTH_SOCK` is set, else anonymous.
    Default,
    /// A private key file (`ssh_key`), optionally with a passphrase file.
    SshKey {
        key: PathBuf,
        passphrase_file: Option<PathBuf>,
    },
    /// `ssh_agent = true`: only the agent.
    SshAgent,
    /// HTTPS with a token read from a file (`token_file`), sent with `token_user`.
    Token { file: PathBuf, user: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PushPolicy {
    /// Push only when every machine built and was published (default).
    Built,
    /// Push right after the update.
    Always,
    Never,
}

#[derive(Clone, Debug, Serialize)]
pub struct UpdateSettings {
    /// Run `nix flake update --commit-lock-file` (default: true).
    pub enable: bool,
    /// Only these inputs (default: empty = all inputs).
    pub inputs: Vec<String>,
    pub author_name: String,
    pub author_email: String,
    pub push: PushPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode", content = "machines")]
pub enum MachineSelection {
    /// Discover every machine of the listed kinds (`discover`, default: nixos only).
    Auto(Vec<MachineKind>),
    /// Exactly these machines.
    List(Vec<MachineRef>),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MachineRef {
    pub kind: MachineKind,
    pub name: MachineName,
}

#[derive(Clone, Debug, Serialize)]
pub struct BuildSettings {
    pub machines: MachineSelection,
    /// Attribute templates per kind; `{name}` is replaced by the machine name.
    pub attributes: BTreeMap<MachineKind, String>,
    /// Machines built at once (default: 1).
    pub jobs: NonZeroUsize,
    /// Nix `max-jobs` (None: Nix's own setting). 0 = only remote builders.
    pub max_jobs: Option<u32>,
    /// Nix `cores` (None: Nix's own setting).
    pub cores: Option<u32>,
    /// Nix `builders` (remote builders), passed through verbatim.
    pub builders: Option<String>,
    /// Nix `extra-platforms`.
    pub extra_platforms: Vec<String>,
    /// Further `--option NAME VALUE` pairs.
    pub nix_options: BTreeMap<String, String>,
    /// Per-machine time limit for evaluation + build (default: 4h).
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

#[derive(Clone, Debug, Serialize)]
pub struct StateSettings {
    /// Checkout, logs, GC roots and history live here (default: /var/lib/farmd).
    pub dir: PathBuf,
    /// Runs whose build logs are kept under `<dir>/logs` (default: 50); older ones are removed
    /// after each run. The history keeps every run's record and log tail regardless.
    pub keep_logs: NonZeroUsize,
}

/// The static binary cache (the publish phase).
#[derive(Clone, Debug, Serialize)]
pub struct CacheSettings {
    /// `sftp://user@host[:port]/path` or `file:///path`.
    pub url: String,
    pub secret_key_files: Vec<PathBuf>,
    pub compression: Compression,
    /// Compression level (default: 3 for zstd, 6 for xz).
    pub level: i32,
    /// Paths of 1 MiB of NAR or more compressed and uploaded at once, and a quarter of the
    /// paths in flight in all (default: 4).
    pub jobs: NonZeroUsize,
    /// `Priority:` in nix-cache-info (default: 40).
    pub priority: u32,
    /// Upload build logs to `log/` (default: true).
    pub upload_logs: bool,
    /// SSH identity file for SFTP (default: ssh's own).
    pub ssh_identity: Option<PathBuf>,
    /// known_hosts for SFTP (default: ssh's own).
    pub ssh_known_hosts: Option<PathBuf>,
    /// `[cache.retention]`: what garbage collection keeps.
    pub retention: RetentionSettings,
}

/// `[cache.retention]`: GC keeps the closures of these generations (and of pins) and deletes
/// the rest of the cache.
#[derive(Clone, Debug, Serialize)]
pub struct RetentionSettings {
    /// The newest generations of every machine kept (default: 3).
    pub keep_generations: NonZeroUsize,
    /// Every generation younger than this many days is kept too (default: 14).
    pub keep_days: u32,
    /// Files written more recently than this are never deleted, so another writer's publish
    /// in flight is never broken (default: 1h).
    #[serde(with = "humantime_serde_compat")]
    pub grace: Duration,
    /// Collect garbage as a phase after every run's publish (default: true).
    pub gc_after_publish: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    Zstd,
    Xz,
    None,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScheduleSettings {
    /// A crontab line (5 fields, or 6/7 with seconds first, or `@daily`), as written.
    /// None = only triggers.
    pub cron: Option<String>,
    /// IANA time zone name, as written (default: the system's local time).
    pub timezone: Option<String>,
    /// `cron` in `timezone`, parsed: what the daemon schedules by. Set exactly when `cron` is.
    pub schedule: Option<Schedule>,
    /// Run once at start when a scheduled run was missed (default: true).
    pub catch_up: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ControlSettings {
    /// The control socket (default: /run/farmd/control.sock).
    pub socket: PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookSettings {
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// Durations print as humantime strings ("4h") in `check-config` output.
mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}
