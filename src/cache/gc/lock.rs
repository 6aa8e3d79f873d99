//! One publish or GC of this farm's cache at a time: an exclusive `flock` on
//! `<state>/cache.lock`, taken by the run's publish and GC phases, `farmctl publish` and
//! `farmctl cache gc`. A GC that ran during a publish could delete a path the publisher had
//! just found "already cached" and was about to reference; with the lock it cannot.
//!
//! Writers on other hosts are not covered (there is no lock across hosts on a static cache);
//! GC's grace period protects their publishes instead.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rustix::fs::{flock, FlockOperation};

/// The lock file's name in the state directory.
pub const FILE_NAME: &str = "cache.lock";

/// Held until dropped (the kernel releases the flock with the file).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Takes the lock, waiting (and saying so once) while another process of this farm holds
    /// it.
    pub async fn acquire(state_dir: &Path) -> anyhow::Result<CacheLock> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create state directory `{}`", state_dir.display()))?;
        let path = state_dir.join(FILE_NAME);
        let file = crate::lockfile::open(&path)?;
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok(CacheLock { _file: file });
        }
        tracing::info!(lock = %path.display(), "waiting for another publish or GC of this cache to finish");
        let shown: PathBuf = path.clone();
        tokio::task::spawn_blocking(move || {
            flock(&file, FlockOperation::LockExclusive)
                .with_context(|| format!("cannot lock `{}`", shown.display()))?;
            Ok(CacheLock { _file: file })
        })
        .await
        .context("the lock task panicked")?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_holder_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = CacheLock::acquire(dir.path()).await.unwrap();
        let path = dir.path().to_owned();
        let second = tokio::spawn(async move { CacheLock::acquire(&path).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "the second took a held lock");
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second gets the lock once it is free")
            .unwrap()
            .unwrap();
    }
}
