//! The transport seam under the publisher: a [`CacheBackend`] is the cache directory, wherever
//! it is. [`SftpBackend`] reaches it through the system's OpenSSH (`ssh -s HOST sftp`),
//! [`LocalBackend`] is a directory on this machine (`file://`, and the tests' yardstick).
//!
//! It owns moving bytes and names: listing a directory in one readdir sequence, streaming
//! uploads with writes pipelined, atomic renames, and errors a user can act on. It does not
//! know what a narinfo or a NAR is, nor in which order files must appear: the publisher
//! decides that and relies on two promises made here:
//!
//! - a file written with [`CacheBackend::create`] + [`Upload::finish`] is complete (and
//!   fsynced where the server supports it) before `finish` returns;
//! - [`CacheBackend::rename`] replaces the target atomically, so a reader sees the old file
//!   or the new one, never a partial one. Uploads therefore go to a [`temp_name`] in the same
//!   directory and are renamed into place; [`is_temp_name`] finds leftovers for cleanup.
//!
//! Paths are `/`-separated and relative to the cache root (`""` is the root itself, `nar`,
//! `nar/<filehash>.nar.zst`, `<hash>.narinfo`), like object-store keys; each call checks them.

mod error;
mod local;
mod sftp;
mod ssh;
mod url;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

pub use error::{BackendError, StderrTail};
pub use local::LocalBackend;
pub use sftp::SftpBackend;
pub use ssh::ssh_args;
pub use url::{CacheUrl, CacheUrlError, SftpTarget};

use crate::config::CacheSettings;

/// One directory entry, as one `readdir` returns it (no per-file `stat`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// Bytes (0 when the server does not say).
    pub size: u64,
    /// Last modification, to the second (None when the server does not say).
    pub mtime: Option<SystemTime>,
    pub is_dir: bool,
}

/// The cache directory, local or remote. Shared by concurrent uploads (`Arc<dyn …>`).
#[async_trait]
pub trait CacheBackend: Send + Sync + std::fmt::Debug {
    /// The entries of one directory (`""`, `nar`, `log`), without `.` and `..`, in the
    /// server's order. One readdir sequence, never a request per file.
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, BackendError>;

    /// Like [`list`](Self::list), but it may ask for several batches of names at once: over
    /// SFTP a directory of N entries costs ~N/800 round trips instead of ~N/100. A server that
    /// mishandles concurrent reads of one directory could make it leave names out (never add
    /// any), so it is only for decisions where a missing name costs work, not data: what to
    /// upload, which temporaries to clean. Never for what to delete or to report.
    async fn list_fast(&self, dir: &str) -> Result<Vec<Entry>, BackendError> {
        self.list(dir).await
    }

    /// The contents of a small file (`nix-cache-info`, a narinfo), or `None` if it does not
    /// exist.
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, BackendError>;

    /// Streams the contents of `path` into `tx`, in order, in chunks, so that a big NAR is
    /// never whole in memory (over SFTP, several reads are in flight). `Ok(false)`: no such
    /// file. Returns early, `Ok(true)`, when the receiver is dropped. This default sends what
    /// [`read`](Self::read) returns in one chunk; the real backends override it.
    async fn read_to(&self, path: &str, tx: mpsc::Sender<Bytes>) -> Result<bool, BackendError> {
        let Some(contents) = self.read(path).await? else {
            return Ok(false);
        };
        let _ = tx.send(Bytes::from(contents)).await;
        Ok(true)
    }

    /// Create (or truncate) `path` for a streaming upload. Give it a [`temp_name`] and
    /// [`rename`](Self::rename) it into place after [`Upload::finish`].
    async fn create(&self, path: &str) -> Result<Box<dyn Upload>, BackendError>;

    /// Rename `from` to `to`, atomically replacing `to` if it exists.
    async fn rename(&self, from: &str, to: &str) -> Result<(), BackendError>;

    /// Remove a file. Removing a file that does not exist succeeds (GC and cleanup may race
    /// with each other or with a previous, interrupted run).
    async fn remove(&self, path: &str) -> Result<(), BackendError>;

    /// Create a directory and its missing parents; an existing directory is fine.
    async fn mkdir_all(&self, dir: &str) -> Result<(), BackendError>;

    /// Write a small file atomically: upload to a temporary name, then rename over `path`.
    /// Returns the bytes written. On failure, the temporary file is removed (best effort) and
    /// `path` is untouched.
    async fn write_atomic(&self, path: &str, contents: Bytes) -> Result<u64, BackendError> {
        let staged = self.stage(path, contents).await?;
        let size = staged.size;
        self.commit(staged).await?;
        Ok(size)
    }

    /// The first half of [`write_atomic`](Self::write_atomic): writes `contents` (fsynced) to
    /// a temporary name next to `path`, not yet visible under `path`. [`commit`](Self::commit)
    /// renames it into place; a staged file never committed must be removed
    /// ([`remove`](Self::remove) its `tmp`). On failure, nothing is left behind (best effort).
    async fn stage(&self, path: &str, contents: Bytes) -> Result<Staged, BackendError> {
        let tmp = temp_name(path)?;
        let result = async {
            let mut upload = self.create(&tmp).await?;
            upload.write(contents.clone()).await?;
            upload.finish().await
        }
        .await;
        match result {
            Ok(size) => Ok(Staged {
                tmp,
                path: path.to_owned(),
                size,
                contents,
            }),
            Err(e) => {
                let _ = self.remove(&tmp).await;
                Err(e)
            }
        }
    }

    /// Renames a [`stage`](Self::stage)d file into place (atomically replacing what was
    /// there). On failure the temporary file is removed (best effort).
    async fn commit(&self, staged: Staged) -> Result<(), BackendError> {
        let result = self.rename(&staged.tmp, &staged.path).await;
        if result.is_err() {
            let _ = self.remove(&staged.tmp).await;
        }
        result
    }
}

/// A file written under a temporary name by [`CacheBackend::stage`], waiting to be renamed into
/// place by [`CacheBackend::commit`].
#[derive(Clone, Debug)]
pub struct Staged {
    /// The temporary name it is written under.
    pub tmp: String,
    /// Where it goes.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// What was written (small files only go this way), to write it again if need be.
    pub contents: Bytes,
}

/// A file being written, chunk by chunk, without holding it in memory.
///
/// Dropping an `Upload` without [`finish`](Upload::finish) abandons it: the temporary file is
/// removed in the background where possible, otherwise left for [`is_temp_name`] cleanup.
/// After an error from [`write`](Upload::write) or `finish`, the implementation has already
/// removed its file (best effort), so a full disk is not kept full by our own leftovers.
#[async_trait]
pub trait Upload: Send {
    /// Append a chunk. Returns once it is queued; several writes are in flight at once, so an
    /// error may surface on a later `write` or on `finish`.
    async fn write(&mut self, chunk: Bytes) -> Result<(), BackendError>;

    /// Wait until every byte is written, fsync where supported, close; returns the size.
    async fn finish(self: Box<Self>) -> Result<u64, BackendError>;

    /// Give up: stop writing and remove the file (best effort).
    async fn abort(self: Box<Self>);
}

/// The prefix of every temporary name we create.
pub const TEMP_PREFIX: &str = ".tmp-farmd-";

/// A temporary name for `path` in the same directory (so renaming it into place is atomic):
/// `dir/.tmp-farmd-<host>-<pid>-<random>-<name>`. The host tag and pid tell the next run's
/// cleanup whose it was (a dead process on this same host: remove it at once); the random
/// part keeps concurrent uploads of the same file apart.
pub fn temp_name(path: &str) -> Result<String, BackendError> {
    check_path(path, false)?;
    let (dir, name) = match path.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, path),
    };
    let random = getrandom::u64().unwrap_or_else(|_| {
        // Only uniqueness matters here, not secrecy.
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let tmp = format!(
        "{TEMP_PREFIX}{}-{}-{random:016x}-{name}",
        host_tag(),
        std::process::id()
    );
    Ok(match dir {
        Some(dir) => format!("{dir}/{tmp}"),
        None => tmp,
    })
}

/// Whether a directory entry's name is one of our temporary files.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Who wrote a temporary file, read back from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TempOwner {
    /// [`host_tag`] of the writer's machine.
    pub host: String,
    pub pid: u32,
}

/// The writer of a temporary file named by [`temp_name`]; `None` for another shape (an
/// older farmd's, or not ours).
pub fn temp_owner(name: &str) -> Option<TempOwner> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.splitn(4, '-');
    let host = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    let random = parts.next()?;
    parts.next()?;
    if host.len() != 12 || !host.bytes().all(|b| b.is_ascii_hexdigit()) || random.len() != 16 {
        return None;
    }
    Some(TempOwner {
        host: host.to_owned(),
        pid,
    })
}

/// 12 hex digits naming this machine: from `/etc/machine-id` (stable, unique per install),
/// else a hash of the host name. Not secret: it only tells "written from this host".
pub fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let id = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit()));
        match id {
            Some(id) => id[..12].to_ascii_lowercase(),
            None => {
                let host = rustix::system::uname();
                let digest = crate::cache::NarHash::digest(host.nodename().to_bytes());
                digest.as_bytes()[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            }
        }
    })
}

/// Checks a cache-relative path: no leading `/`, no empty, `.` or `..` components. `""` (the
/// root) only where a directory is meant.
pub(crate) fn check_path(path: &str, root_ok: bool) -> Result<(), BackendError> {
    let invalid = |reason| {
        Err(BackendError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return if root_ok {
            Ok(())
        } else {
            invalid("empty (the cache root is not a file)")
        };
    }
    if path.starts_with('/') {
        return invalid("must be relative to the cache root");
    }
    if path.contains('\0') {
        return invalid("contains a NUL byte");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return invalid("has an empty, `.` or `..` component");
    }
    Ok(())
}

/// How to run ssh for an `sftp://` cache (from the `[cache]` section of the config).
#[derive(Clone, Debug)]
pub struct SshOptions {
    /// `-i FILE` (default: ssh's own identities and the agent).
    pub identity: Option<PathBuf>,
    /// Checked strictly (`StrictHostKeyChecking=yes`) instead of ssh's own known_hosts.
    pub known_hosts: Option<PathBuf>,
    /// Write requests in flight per upload, each up to 255 KiB (default: 32, ≈ 8 MiB: enough
    /// for ~250 MiB/s at 30 ms round trip).
    pub writes_in_flight: NonZeroUsize,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            identity: None,
            known_hosts: None,
            writes_in_flight: NonZeroUsize::new(32).unwrap(),
        }
    }
}

impl From<&CacheSettings> for SshOptions {
    fn from(settings: &CacheSettings) -> Self {
        SshOptions {
            identity: settings.ssh_identity.clone(),
            known_hosts: settings.ssh_known_hosts.clone(),
            ..SshOptions::default()
        }
    }
}

/// Connect to the cache and make sure its directories exist: the root, `nar/` and `log/`.
pub async fn open(url: &CacheUrl, ssh: &SshOptions) -> Result<Arc<dyn CacheBackend>, BackendError> {
    let backend = connect(url, ssh).await?;
    // Each creates the root too if it is missing (racing creators are fine): one round trip
    // for a cache that exists, not three.
    let (nar, log) = tokio::join!(backend.mkdir_all("nar"), backend.mkdir_all("log"));
    nar?;
    log?;
    Ok(backend)
}

/// Connect to the cache without creating anything (for readers such as `cache verify`).
pub async fn connect(
    url: &CacheUrl,
    ssh: &SshOptions,
) -> Result<Arc<dyn CacheBackend>, BackendError> {
    Ok(match url {
        CacheUrl::File { root } => Arc::new(LocalBackend::new(root.clone())),
        CacheUrl::Sftp(target) => Arc::new(SftpBackend::connect(target, ssh).await?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_sit_next_to_the_target_and_are_recognisable() {
        let tmp = temp_name("nar/abc.nar.zst").unwrap();
        let (dir, name) = tmp.split_once('/').unwrap();
        assert_eq!(dir, "nar");
        assert!(is_temp_name(name), "{name}");
        assert!(name.ends_with("-abc.nar.zst"), "{name}");
        assert!(name.contains(&format!("-{}-", std::process::id())));
        let owner = temp_owner(name).unwrap();
        assert_eq!(
            (owner.host.as_str(), owner.pid),
            (host_tag(), std::process::id())
        );
        assert_eq!(temp_owner(".tmp-farmd-123-abc-x"), None);
        assert_ne!(tmp, temp_name("nar/abc.nar.zst").unwrap());
        assert!(is_temp_name(&temp_name("x.narinfo").unwrap()));
        assert!(!is_temp_name("x.narinfo"));
    }

    #[test]
    fn paths_must_stay_inside_the_cache() {
        for bad in ["/etc/passwd", "nar/../..", "a//b", "./x", "nar/"] {
            assert!(check_path(bad, true).is_err(), "{bad}");
        }
        assert!(check_path("", false).is_err());
        check_path("", true).unwrap();
        check_path("nar/x.nar.zst", false).unwrap();
        assert!(temp_name("").is_err());
    }
}
