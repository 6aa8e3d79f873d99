//! A cache directory on this machine (`file:///…`): the same operations as over SFTP, with
//! `std::fs` semantics (rename(2) replaces atomically, ENOSPC is reported as such).

use std::io::{self, ErrorKind, Read};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::error::LOCAL;
use super::{check_path, BackendError, CacheBackend, Entry, Upload};

/// Bytes per chunk of [`CacheBackend::read_to`].
const READ_CHUNK: usize = 256 * 1024;

#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    /// A backend rooted at `root` (created by [`super::open`] or [`CacheBackend::mkdir_all`]).
    pub fn new(root: PathBuf) -> Self {
        LocalBackend { root }
    }

    fn full(&self, path: &str, root_ok: bool) -> Result<PathBuf, BackendError> {
        check_path(path, root_ok)?;
        Ok(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        })
    }
}

/// Maps an I/O error on `path` to the variant a caller can act on.
fn io_error(op: &'static str, path: &Path, err: io::Error) -> BackendError {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let shown = path.display().to_string();
    match err.kind() {
        ErrorKind::PermissionDenied => BackendError::PermissionDenied {
            op,
            path: shown,
            user: local_user(),
            host: LOCAL.into(),
        },
        ErrorKind::NotFound => BackendError::NotFound {
            op,
            path: shown,
            host: LOCAL.into(),
        },
        _ if matches!(err.raw_os_error(), Some(ENOSPC | EDQUOT)) => BackendError::DiskFull {
            op,
            path: shown,
            host: LOCAL.into(),
            free_bytes: None,
        },
        _ => BackendError::Io {
            op,
            path: path.to_owned(),
            source: err,
        },
    }
}

fn local_user() -> String {
    let uid = rustix::process::geteuid().as_raw();
    match std::env::var("USER") {
        Ok(name) if !name.is_empty() => format!("{name} (uid {uid})"),
        _ => format!("uid {uid}"),
    }
}

#[async_trait]
impl CacheBackend for LocalBackend {
    async fn read_to(&self, path: &str, tx: mpsc::Sender<Bytes>) -> Result<bool, BackendError> {
        let full = self.full(path, false)?;
        tokio::task::spawn_blocking(move || {
            let mut file = match std::fs::File::open(&full) {
                Ok(file) => file,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_error("read", &full, e)),
            };
            loop {
                let mut chunk = BytesMut::zeroed(READ_CHUNK);
                let n = match file.read(&mut chunk) {
                    Ok(0) => return Ok(true),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_error("read", &full, e)),
                };
                chunk.truncate(n);
                if tx.blocking_send(chunk.freeze()).is_err() {
                    return Ok(true); // the reader stopped
                }
            }
        })
        .await
        .expect("reading panicked")
    }

    async fn list(&self, dir: &str) -> Result<Vec<Entry>, BackendError> {
        let full = self.full(dir, true)?;
        tokio::task::spawn_blocking(move || {
            let mut entries = Vec::new();
            let read_dir = std::fs::read_dir(&full).map_err(|e| io_error("list", &full, e))?;
            for entry in read_dir {
                let entry = entry.map_err(|e| io_error("list", &full, e))?;
                let Ok(name) = entry.file_name().into_string() else {
                    continue; // never ours: every name we write is UTF-8
                };
                // One lstat per entry is the local equivalent of readdir's attributes.
                let meta = match entry.metadata() {
                    Ok(meta) => meta,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue, // raced a remove
                    Err(e) => return Err(io_error("list", &entry.path(), e)),
                };
                entries.push(Entry {
                    name,
                    size: meta.len(),
                    mtime: meta.modified().ok(),
                    is_dir: meta.is_dir(),
                });
            }
            Ok(entries)
        })
        .await
        .expect("listing task panicked")
    }

    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let full = self.full(path, false)?;
        match tokio::fs::read(&full).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("read", &full, e)),
        }
    }

    async fn create(&self, path: &str) -> Result<Box<dyn Upload>, BackendError> {
        let full = self.full(path, false)?;
        let file = tokio::fs::File::create(&full)
            .await
            .map_err(|e| io_error("create", &full, e))?;
        Ok(Box::new(LocalUpload {
            file: Some(file),
            path: full,
            written: 0,
        }))
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), BackendError> {
        let (from, to) = (self.full(from, false)?, self.full(to, false)?);
        tokio::fs::rename(&from, &to)
            .await
            .map_err(|e| io_error("rename into place", &to, e))
    }

    async fn remove(&self, path: &str) -> Result<(), BackendError> {
        let full = self.full(path, false)?;
        match tokio::fs::remove_file(&full).await {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(io_error("remove", &full, e)),
            _ => Ok(()),
        }
    }

    async fn mkdir_all(&self, dir: &str) -> Result<(), BackendError> {
        let full = self.full(dir, true)?;
        tokio::fs::create_dir_all(&full)
            .await
            .map_err(|e| io_error("create directory", &full, e))
    }
}

struct LocalUpload {
    /// `None` once finished, aborted or failed.
    file: Option<tokio::fs::File>,
    path: PathBuf,
    written: u64,
}

impl LocalUpload {
    /// Drops the file and removes it: called on every error, so nothing partial stays.
    async fn fail(&mut self, op: &'static str, err: io::Error) -> BackendError {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.path).await;
        io_error(op, &self.path, err)
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BackendError> {
        let Some(file) = self.file.as_mut() else {
            return Err(io_error("write", &self.path, ErrorKind::BrokenPipe.into()));
        };
        match file.write_all(&chunk).await {
            Ok(()) => {
                self.written += chunk.len() as u64;
                Ok(())
            }
            Err(e) => Err(self.fail("write", e).await),
        }
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, BackendError> {
        let Some(mut file) = self.file.take() else {
            return Err(io_error("finish", &self.path, ErrorKind::BrokenPipe.into()));
        };
        let flushed = async {
            file.flush().await?;
            file.sync_all().await
        }
        .await;
        drop(file);
        match flushed {
            Ok(()) => Ok(self.written),
            Err(e) => Err(self.fail("write", e).await),
        }
    }

    async fn abort(mut self: Box<Self>) {
        self.file = None;
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Abandoned mid-way: don't leave a partial temporary file behind.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}
