//! The plain structs one run produces: what the history stores, what `farmctl show` renders and
//! what hooks receive as JSON. No behaviour lives here.

use serde::{Deserialize, Serialize};

use crate::types::{MachineName, StorePath};

/// The database's identifier of a run (1, 2, 3, …).
pub type RunId = i64;

/// What started a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    /// `farmd --once` on the command line.
    Once,
    /// `farmctl trigger` over the control socket (also what the systemd timer runs).
    Manual,
    /// The cron schedule in the config.
    Schedule,
    /// A scheduled run that was missed while the daemon was down, run at start.
    CatchUp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    /// Every machine built (and, with a cache, was published).
    Succeeded,
    /// At least one machine failed; the others went on.
    Failed,
    /// The run could not do its job at all (checkout, update, cache unreachable, …).
    Error,
    Cancelled,
    /// The daemon died during the run; found and marked at the next start.
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Error => "error",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Checkout,
    Update,
    Evaluate,
    Build,
    Publish,
    Push,
    /// Garbage collection of the cache (`[cache.retention] gc_after_publish`).
    Gc,
    Record,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checkout => "checkout",
            Phase::Update => "update",
            Phase::Evaluate => "evaluate",
            Phase::Build => "build",
            Phase::Publish => "publish",
            Phase::Push => "push",
            Phase::Gc => "gc",
            Phase::Record => "record",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    pub phase: Phase,
    pub duration_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineStatus {
    Pending,
    /// Its build is under way.
    Building,
    /// Its configuration did not evaluate.
    EvalFailed,
    BuildFailed,
    TimedOut,
    Built,
    Cancelled,
}

impl MachineStatus {
    pub fn is_success(self) -> bool {
        self == MachineStatus::Built
    }

    /// Failed in this run (not pending, not cancelled).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            MachineStatus::EvalFailed | MachineStatus::BuildFailed | MachineStatus::TimedOut
        )
    }

    /// The name used in JSON, the history and journald fields.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineStatus::Pending => "pending",
            MachineStatus::Building => "building",
            MachineStatus::EvalFailed => "eval-failed",
            MachineStatus::BuildFailed => "build-failed",
            MachineStatus::TimedOut => "timed-out",
            MachineStatus::Built => "built",
            MachineStatus::Cancelled => "cancelled",
        }
    }
}

/// Which flake output set a machine comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineKind {
    Nixos,
    Darwin,
    Home,
}

impl MachineKind {
    pub const ALL: [MachineKind; 3] = [MachineKind::Nixos, MachineKind::Darwin, MachineKind::Home];

    /// The flake output attribute that holds machines of this kind.
    pub fn flake_output(self) -> &'static str {
        match self {
            MachineKind::Nixos => "nixosConfigurations",
            MachineKind::Darwin => "darwinConfigurations",
            MachineKind::Home => "homeConfigurations",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MachineKind::Nixos => "nixos",
            MachineKind::Darwin => "darwin",
            MachineKind::Home => "home",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub name: MachineName,
    pub kind: MachineKind,
    pub status: MachineStatus,
    /// The flake attribute that was built, e.g. `nixosConfigurations.pi3.config.system.build.toplevel`.
    pub attribute: String,
    pub drv_path: Option<StorePath>,
    pub toplevel: Option<StorePath>,
    /// Evaluation plus build time.
    pub duration_ms: u64,
    pub error: Option<String>,
    /// The last lines of the build log (failures only).
    pub log_tail: Option<String>,
    /// The full log under the state directory.
    pub log_path: Option<String>,
    /// What publishing its closure did: paths and bytes in the closure, uploaded, already
    /// cached (None when there is no cache or the machine did not build).
    #[serde(default)]
    pub publish: Option<crate::cache::publish::RootSummary>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum PushOutcome {
    /// The policy (or a failed run under `built`) said not to push; `reason` says which.
    Skipped {
        reason: String,
    },
    /// The remote branch already had this commit.
    UpToDate {
        rev: String,
    },
    Pushed {
        rev: String,
    },
    /// The remote refused (typically: it moved on). Never forced.
    Rejected {
        message: String,
    },
    /// The push could not be attempted or failed in transport.
    Failed {
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub trigger: Trigger,
    /// Who asked for it (e.g. `uid 1000 (alice), pid 4242`), when known.
    pub requested_by: Option<String>,
    /// Unix time in seconds.
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub status: RunStatus,
    pub rev_before: Option<String>,
    pub rev_after: Option<String>,
    pub lock_changed: bool,
    pub push: Option<PushOutcome>,
    /// Why the run as a whole failed (`status = error`), as the full error chain.
    pub error: Option<String>,
    pub phases: Vec<PhaseTiming>,
    pub machines: Vec<MachineRecord>,
    /// The publish phase's totals (per-machine figures are in `machines[].publish`).
    #[serde(default)]
    pub publish: Option<crate::cache::publish::PublishSummary>,
    /// The generation records written to the cache (one per machine published completely).
    #[serde(default)]
    pub generations: Vec<crate::cache::generations::Generation>,
    /// What the GC phase deleted and kept (its `deleted` list left out).
    #[serde(default)]
    pub gc: Option<crate::cache::gc::GcReport>,
}

impl RunRecord {
    /// Where the build log of `machine` in this run is, or why there is none (a message for
    /// the user).
    pub fn machine_log(&self, machine: &MachineName) -> Result<&str, String> {
        let m = self
            .machines
            .iter()
            .find(|m| &m.name == machine)
            .ok_or_else(|| format!("run {} has no machine `{machine}`", self.id))?;
        m.log_path
            .as_deref()
            .ok_or_else(|| format!("run {} kept no log for `{machine}`", self.id))
    }

    pub fn failed_machines(&self) -> impl Iterator<Item = &MachineRecord> {
        self.machines.iter().filter(|m| !m.status.is_success())
    }
}
