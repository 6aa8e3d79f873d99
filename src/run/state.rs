//! Where a run keeps things under the state directory, and the lock that keeps two farmd
//! processes (a daemon and a stray `farmd --once`) from sharing one checkout.
//!
//! ```text
//! <state>/checkout/                 the persistent clone
//! <state>/gcroots/<kind>-<name>     the last successful toplevel of each machine (a GC root)
//! <state>/logs/<run>/<kind>-<name>.log
//! <state>/history.sqlite
//! <state>/farmd.lock
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::record::{MachineKind, RunId};
use crate::types::MachineName;

#[derive(Clone, Debug)]
pub struct StateLayout {
    root: PathBuf,
}

impl StateLayout {
    pub fn new(root: &Path) -> StateLayout {
        StateLayout {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn checkout(&self) -> PathBuf {
        self.root.join("checkout")
    }

    pub fn gcroot(&self, kind: MachineKind, name: &MachineName) -> PathBuf {
        self.root
            .join("gcroots")
            .join(format!("{}-{}", kind.as_str(), name))
    }

    pub fn run_logs(&self, run: RunId) -> PathBuf {
        self.root.join("logs").join(run.to_string())
    }

    pub fn machine_log(&self, run: RunId, kind: MachineKind, name: &MachineName) -> PathBuf {
        self.run_logs(run)
            .join(format!("{}-{}.log", kind.as_str(), name))
    }

    /// Removes the log directories of all but the newest `keep` runs. Best effort: a log that
    /// cannot be removed is reported and left.
    pub fn prune_logs(&self, keep: usize) {
        let Ok(entries) = std::fs::read_dir(self.root.join("logs")) else {
            return;
        };
        let mut runs: Vec<(RunId, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
            .collect();
        runs.sort_unstable_by_key(|r| std::cmp::Reverse(r.0));
        for (run, dir) in runs.into_iter().skip(keep) {
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::debug!(run, "removed old build logs"),
                Err(e) => {
                    tracing::warn!(run, dir = %dir.display(), error = %e, "cannot remove old build logs")
                }
            }
        }
    }

    /// Creates the directories a run writes into.
    pub fn prepare(&self) -> anyhow::Result<()> {
        for dir in [
            self.root.clone(),
            self.root.join("gcroots"),
            self.root.join("logs"),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "cannot create state directory `{}`; create it and make it writable by the farmd user, or set `[state] dir`",
                    dir.display()
                )
            })?;
        }
        Ok(())
    }

    /// Takes the exclusive lock on the state directory for as long as the returned guard lives.
    pub fn lock(&self) -> anyhow::Result<StateLock> {
        use rustix::fs::{flock, FlockOperation};
        let path = self.root.join("farmd.lock");
        let file = crate::lockfile::open(&path)?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "state directory `{}` is in use by another farmd ({}); stop it or use another `[state] dir`",
                self.root.display(),
                match holder.trim() {
                    "" => "pid unknown".to_owned(),
                    pid => format!("pid {pid}"),
                }
            );
        }
        let _ = file.set_len(0);
        let _ = std::io::Write::write_all(&mut &file, std::process::id().to_string().as_bytes());
        Ok(StateLock { _file: file })
    }
}

/// Released when dropped (the kernel drops the flock with the file).
pub struct StateLock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_runs_keep_their_logs() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        layout.prepare().unwrap();
        for run in [1, 2, 9, 10, 11] {
            std::fs::create_dir_all(layout.run_logs(run)).unwrap();
            std::fs::write(layout.run_logs(run).join("x.log"), "log").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("logs/not-a-run")).unwrap();
        layout.prune_logs(3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["10", "11", "9", "not-a-run"]);
    }

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = StateLayout::new(dir.path());
        layout.prepare().unwrap();
        let held = layout.lock().unwrap();
        let err = layout.lock().err().unwrap().to_string();
        assert!(err.contains("is in use by another farmd"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(held);
        layout.lock().unwrap();
    }
}
