//! The flock files that keep two processes of one farm apart: the state directory's
//! (`farmd.lock`, refused while held: [`crate::run::state`]) and the cache's (`cache.lock`,
//! waited for: [`crate::cache::gc::CacheLock`]). The kernel drops a flock with its file.

use std::fs::File;
use std::path::Path;

use anyhow::Context;

/// Opens `path` for locking, creating it; never truncates it, so the pid a holder wrote into
/// it stays readable to whoever finds the lock taken.
pub fn open(path: &Path) -> anyhow::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open lock file `{}`", path.display()))
}
