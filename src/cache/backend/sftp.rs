//! The cache directory on a remote host, over SFTP (openssh-sftp-client on the stdin/stdout of
//! the system's `ssh`, see [`super::ssh`]).
//!
//! Uploads are pipelined: each chunk batch (up to OpenSSH's 255 KiB write limit) is one
//! zero-copy write request at its own offset on a clone of the file handle, and up to
//! `writes_in_flight` of them wait for their answer at once, so throughput is not one round
//! trip per request. The fsync goes out right behind the last write, without waiting for the
//! writes' answers: the server handles one session's requests in order, so a file costs three
//! round trips (open; the last write's and the fsync's answers; the caller's rename) however
//! long the link. OpenSSH's sftp-server answers a full disk with a generic "Failure"; such
//! failures on writes are checked against `statvfs` to say "disk full" when it is.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use openssh_sftp_client::error::SftpErrorKind;
use openssh_sftp_client::file::File;
use openssh_sftp_client::fs::{DirEntry, ReadDir};
use openssh_sftp_client::{Error as SftpError, Sftp, SftpOptions};
use tokio::io::AsyncSeek;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;

use super::ssh::{classify_connect_failure, resolve, ssh_args, Peer, SshProcess};
use super::{check_path, BackendError, CacheBackend, Entry, SftpTarget, SshOptions, Upload};

/// Bytes per write request: OpenSSH's sftp-server accepts up to 256 KiB messages and
/// announces 255 KiB of data per write (limits@openssh.com).
const WRITE_LEN: usize = 255 * 1024;

/// READDIR requests [`CacheBackend::list_fast`] keeps outstanding: 800 names a round trip.
const READDIRS_IN_FLIGHT: usize = 8;

/// A failed write leaves less than this free: call it a full disk.
const NEARLY_FULL: u64 = 1024 * 1024;

/// How long the SSH + SFTP handshake may take (beyond ssh's own ConnectTimeout).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

pub struct SftpBackend {
    shared: Arc<Shared>,
}

struct Shared {
    sftp: Sftp,
    root: PathBuf,
    peer: Peer,
    ssh: SshProcess,
    writes_in_flight: usize,
}

impl std::fmt::Debug for SftpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpBackend")
            .field("peer", &self.shared.peer)
            .field("root", &self.shared.root)
            .finish_non_exhaustive()
    }
}

impl SftpBackend {
    /// Starts `ssh … -s HOST sftp` and the SFTP session. Fails with a classified error (host
    /// key, authentication, network, …) if ssh does not get that far.
    pub async fn connect(target: &SftpTarget, opts: &SshOptions) -> Result<Self, BackendError> {
        let args = ssh_args(target, opts);
        let peer = resolve(target, opts, &args).await;
        let (ssh, stdin, stdout) =
            SshProcess::spawn(&args, &target.host).map_err(|e| BackendError::SshFailed {
                host: target.host.clone(),
                reason: format!("cannot run `ssh` ({e}); install the OpenSSH client"),
                stderr: Default::default(),
            })?;
        let started = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            Sftp::new(stdin, stdout, SftpOptions::new()),
        )
        .await;
        let sftp = match started {
            Ok(Ok(sftp)) => sftp,
            failed => {
                let detail = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {HANDSHAKE_TIMEOUT:?}"),
                };
                let (stderr, status) = ssh.last_words(Duration::from_secs(5)).await;
                return Err(classify_connect_failure(&peer, stderr, status, detail));
            }
        };
        if !sftp.support_posix_rename() {
            return Err(BackendError::Unsupported {
                host: peer.host.clone(),
                what: "posix-rename@openssh.com (atomic replace)",
            });
        }
        tracing::debug!(host = %peer.host, root = %target.root.display(), "sftp session started");
        Ok(SftpBackend {
            shared: Arc::new(Shared {
                sftp,
                root: target.root.clone(),
                peer,
                ssh,
                writes_in_flight: opts.writes_in_flight.get(),
            }),
        })
    }
}

impl Shared {
    /// Lists `dir` with `in_flight` READDIR requests outstanding on its handle at once.
    ///
    /// With more than one, every stream reads through a clone of the same handle: OpenSSH's
    /// sftp-server answers one session's requests in order, each READDIR with the next (at most
    /// 100) names, and EOF once they are all out, so the streams share the names between
    /// them. Names seen twice are kept once.
    async fn list(&self, dir: &str, in_flight: usize) -> Result<Vec<Entry>, BackendError> {
        let full = self.full(dir, true)?;
        let handle = match self.sftp.fs().open_dir(&full).await {
            Ok(handle) => handle,
            Err(e) => return Err(self.error("list", &full, &e, false).await),
        };
        let mut streams: Vec<Pin<Box<ReadDir>>> = (1..in_flight.max(1))
            .map(|_| Box::pin(handle.clone().read_dir()))
            .collect();
        streams.push(Box::pin(handle.read_dir()));
        let mut entries = Vec::new();
        let mut seen = HashSet::new();
        // The first EOF ends the listing: the answers to every READDIR sent before it have
        // arrived (in order), so one more pass over the streams collects all names, and the
        // READDIRs still out can only get EOF. Dropped streams wait for those in the background.
        let mut exhausted = false;
        let listed = std::future::poll_fn(|cx| {
            let mut i = 0;
            while i < streams.len() {
                match streams[i].as_mut().poll_next(cx) {
                    Poll::Ready(Some(Ok(entry))) => {
                        if let Some(entry) = to_entry(&entry) {
                            if in_flight == 1 || seen.insert(entry.name.clone()) {
                                entries.push(entry);
                            }
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(None) => {
                        streams.swap_remove(i);
                        if !exhausted {
                            exhausted = true;
                            i = 0;
                        }
                    }
                    Poll::Pending => i += 1,
                }
            }
            if exhausted {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await;
        match listed {
            Ok(()) => Ok(entries),
            Err(e) => Err(self.error("list", &full, &e, false).await),
        }
    }

    fn full(&self, path: &str, root_ok: bool) -> Result<PathBuf, BackendError> {
        check_path(path, root_ok)?;
        Ok(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        })
    }

    /// Maps an SFTP error on `path` to what a user can act on. `writing`: the operation may
    /// have needed disk space, so a generic failure is checked against a full disk.
    async fn error(
        &self,
        op: &'static str,
        path: &Path,
        err: &SftpError,
        writing: bool,
    ) -> BackendError {
        let shown = path.display().to_string();
        let host = self.peer.label();
        match err {
            SftpError::SftpError(kind, msg) => match kind {
                SftpErrorKind::PermDenied => BackendError::PermissionDenied {
                    op,
                    path: shown,
                    user: self.peer.user.clone(),
                    host: self.peer.host_label(),
                },
                SftpErrorKind::NoSuchFile => BackendError::NotFound {
                    op,
                    path: shown,
                    host,
                },
                SftpErrorKind::Failure if writing => match self.free_bytes(path).await {
                    Some(free) if free < NEARLY_FULL => BackendError::DiskFull {
                        op,
                        path: shown,
                        host,
                        free_bytes: Some(free),
                    },
                    _ => BackendError::Remote {
                        op,
                        path: shown,
                        host,
                        message: format!(
                            "{} (OpenSSH reports a full disk or an exceeded quota this way: \
                                 remote disk full?)",
                            msg.get().0
                        ),
                    },
                },
                _ => BackendError::Remote {
                    op,
                    path: shown,
                    host,
                    message: msg.get().0.to_owned(),
                },
            },
            SftpError::UnsupportedExtension(what) => BackendError::Unsupported {
                host: self.peer.host.clone(),
                what,
            },
            // Everything else means the session is gone (ssh exited, pipe closed, …).
            other => {
                let (stderr, _) = self.ssh.last_words(Duration::from_secs(2)).await;
                BackendError::ConnectionLost {
                    host: self.peer.host.clone(),
                    op,
                    path: shown,
                    reason: other.to_string(),
                    stderr,
                }
            }
        }
    }

    /// Free bytes (for this user) on the file system holding `path`'s directory.
    async fn free_bytes(&self, path: &Path) -> Option<u64> {
        if !self.sftp.support_statvfs() {
            return None;
        }
        let dir = path.parent().unwrap_or(&self.root);
        let st = self.sftp.fs().statvfs(dir).await.ok()?;
        if st.favail == 0 && st.files > 0 {
            return Some(0); // out of inodes is as full as it gets
        }
        Some(st.bavail.saturating_mul(st.frsize.max(1)))
    }
}

#[async_trait]
impl CacheBackend for SftpBackend {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, BackendError> {
        self.shared.list(dir, 1).await
    }

    async fn list_fast(&self, dir: &str) -> Result<Vec<Entry>, BackendError> {
        self.shared.list(dir, READDIRS_IN_FLIGHT).await
    }

    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let s = &*self.shared;
        let full = s.full(path, false)?;
        let file = match s.sftp.options().read(true).open(&full).await {
            Ok(file) => file,
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => return Ok(None),
            Err(e) => return Err(s.error("read", &full, &e, false).await),
        };
        // Dropping `file` sends its close without waiting for the answer.
        match read_whole(&file).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) => Err(s.error("read", &full, &e, false).await),
        }
    }

    async fn read_to(&self, path: &str, tx: mpsc::Sender<Bytes>) -> Result<bool, BackendError> {
        let s = &*self.shared;
        let full = s.full(path, false)?;
        let file = match s.sftp.options().read(true).open(&full).await {
            Ok(file) => file,
            Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => return Ok(false),
            Err(e) => return Err(s.error("read", &full, &e, false).await),
        };
        // Dropping `file` sends its close without waiting for the answer.
        match read_ahead(&file, &tx).await {
            Ok(()) => Ok(true),
            Err(e) => Err(s.error("read", &full, &e, false).await),
        }
    }

    async fn create(&self, path: &str) -> Result<Box<dyn Upload>, BackendError> {
        let s = &self.shared;
        let full = s.full(path, false)?;
        let file = s
            .sftp
            .options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&full)
            .await;
        match file {
            Ok(file) => Ok(Box::new(SftpUpload {
                shared: Arc::clone(s),
                split: Arc::new(AtomicBool::new(false)),
                file: Some(file),
                path: full,
                pending: VecDeque::new(),
                pending_len: 0,
                offset: 0,
                in_flight: JoinSet::new(),
            })),
            Err(e) => Err(s.error("create", &full, &e, true).await),
        }
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), BackendError> {
        let s = &*self.shared;
        let (from, to) = (s.full(from, false)?, s.full(to, false)?);
        // posix-rename@openssh.com (checked at connect): rename(2), atomic replace.
        match s.sftp.fs().rename(&from, &to).await {
            Ok(()) => Ok(()),
            Err(e) => Err(s.error("rename into place", &to, &e, true).await),
        }
    }

    async fn remove(&self, path: &str) -> Result<(), BackendError> {
        let s = &*self.shared;
        let full = s.full(path, false)?;
        match s.sftp.fs().remove_file(&full).await {
            Ok(()) | Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => Ok(()),
            Err(e) => Err(s.error("remove", &full, &e, false).await),
        }
    }

    async fn mkdir_all(&self, dir: &str) -> Result<(), BackendError> {
        let s = &*self.shared;
        let full = s.full(dir, true)?;
        // Walk up to the deepest existing ancestor (usually `full` itself: one stat), then
        // create downwards.
        let mut missing = Vec::new();
        let mut at = full.as_path();
        loop {
            match s.sftp.fs().metadata(at).await {
                Ok(meta) if meta.file_type().is_some_and(|t| t.is_dir()) => break,
                Ok(_) => {
                    return Err(BackendError::Remote {
                        op: "create directory",
                        path: at.display().to_string(),
                        host: s.peer.label(),
                        message: "exists and is not a directory".into(),
                    })
                }
                Err(SftpError::SftpError(SftpErrorKind::NoSuchFile, _)) => {
                    missing.push(at.to_owned());
                    match at.parent() {
                        Some(parent) => at = parent,
                        None => break,
                    }
                }
                Err(e) => return Err(s.error("create directory", at, &e, false).await),
            }
        }
        for dir in missing.iter().rev() {
            if let Err(e) = s.sftp.fs().create_dir(dir).await {
                // Lost a race with another creator? Then it exists now.
                let exists = s.sftp.fs().metadata(dir).await;
                if !exists.is_ok_and(|m| m.file_type().is_some_and(|t| t.is_dir())) {
                    return Err(s.error("create directory", dir, &e, true).await);
                }
            }
        }
        Ok(())
    }
}

/// Bytes per read request (OpenSSH's sftp-server answers up to 255 KiB).
const READ_LEN: u32 = 255 * 1024;
/// Read requests in flight (≈ 4 MiB: ~200 MiB/s at 20 ms round trip).
const READS_IN_FLIGHT: usize = 16;

/// Sends `file` into `tx` in order, with [`READS_IN_FLIGHT`] reads of [`READ_LEN`] at their
/// own offsets in flight. A read answered short (end of file, or a server with a smaller
/// limit) is completed with further reads before the next span, so nothing is skipped.
async fn read_ahead(file: &File, tx: &mpsc::Sender<Bytes>) -> Result<(), SftpError> {
    // Spawned in offset order; each is queued on the session when it first runs, and the
    // offsets are explicit, so the order requests leave in does not matter.
    let mut reads: VecDeque<(u64, AbortOnDropHandle<ReadResult>)> = VecDeque::new();
    let mut next = 0u64;
    loop {
        while reads.len() < READS_IN_FLIGHT {
            let task = tokio::spawn(read_at(file.clone(), next, READ_LEN));
            reads.push_back((next, AbortOnDropHandle::new(task)));
            next += u64::from(READ_LEN);
        }
        let (offset, mut task) = reads.pop_front().expect("just filled");
        let chunk = match (&mut task).await {
            Ok(read) => read?,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => return Err(SftpError::IOError(std::io::Error::other("read cancelled"))),
        };
        // End of file (an empty answer counts as one: it would never advance).
        let Some(chunk) = chunk.filter(|c| !c.is_empty()) else {
            return Ok(()); // the reads after it are past it too
        };
        let mut at = offset + chunk.len() as u64;
        if tx.send(chunk).await.is_err() {
            return Ok(()); // the reader stopped
        }
        let end = offset + u64::from(READ_LEN);
        while at < end {
            let rest = read_at(file.clone(), at, (end - at) as u32).await?;
            let Some(rest) = rest.filter(|r| !r.is_empty()) else {
                return Ok(());
            };
            at += rest.len() as u64;
            if tx.send(rest).await.is_err() {
                return Ok(());
            }
        }
    }
}

type ReadResult = Result<Option<Bytes>, SftpError>;

/// Reads up to `len` bytes at `offset`; `None` at end of file.
async fn read_at(mut file: File, offset: u64, len: u32) -> ReadResult {
    Pin::new(&mut file).start_seek(SeekFrom::Start(offset))?;
    let buf = BytesMut::with_capacity(len as usize);
    Ok(file.read(len, buf).await?.map(BytesMut::freeze))
}

/// A whole small file, one round trip after the open: its size and its first [`READ_LEN`]
/// bytes are asked for at once (the crate's `Fs::read` waits for each in turn, and for an
/// empty read at the end). Further reads only for a bigger file or a short answer.
async fn read_whole(file: &File) -> Result<Vec<u8>, SftpError> {
    let mut stat = file.clone();
    let (meta, first) = tokio::join!(stat.metadata(), read_at(file.clone(), 0, READ_LEN));
    let size = meta?.len();
    let mut data = Vec::new();
    let mut next = first?;
    while let Some(chunk) = next.filter(|c| !c.is_empty()) {
        data.extend_from_slice(&chunk);
        if size.is_some_and(|size| data.len() as u64 >= size) {
            break;
        }
        next = read_at(file.clone(), data.len() as u64, READ_LEN).await?;
    }
    Ok(data)
}

/// One READDIR name as an [`Entry`]; `None` for `.`, `..` and names that are not UTF-8 (never
/// ours: every name we write is).
fn to_entry(entry: &DirEntry) -> Option<Entry> {
    let name = entry.filename().to_str()?;
    if name == "." || name == ".." {
        return None;
    }
    let meta = entry.metadata();
    Some(Entry {
        name: name.to_owned(),
        size: meta.len().unwrap_or(0),
        mtime: meta.modified().map(|t| t.as_system_time()),
        is_dir: entry.file_type().is_some_and(|t| t.is_dir()),
    })
}

/// A streaming upload: chunks are batched up to [`WRITE_LEN`] and written as pipelined
/// requests, each on a clone of the handle at its own offset (SFTP writes carry the offset).
struct SftpUpload {
    shared: Arc<Shared>,
    /// Set when a batch took more than one request (a server announcing a smaller write
    /// limit than OpenSSH's): its later requests may have left after the fsync.
    split: Arc<AtomicBool>,
    /// `None` once finished, aborted or failed.
    file: Option<File>,
    path: PathBuf,
    pending: VecDeque<Bytes>,
    pending_len: usize,
    /// Bytes handed to write requests so far.
    offset: u64,
    in_flight: JoinSet<Result<(), SftpError>>,
}

impl SftpUpload {
    /// Takes up to [`WRITE_LEN`] bytes off the front of `pending`, without copying.
    fn take_batch(&mut self) -> Vec<Bytes> {
        let limit = WRITE_LEN;
        let mut batch = Vec::new();
        let mut len = 0;
        while len < limit {
            let Some(mut chunk) = self.pending.pop_front() else {
                break;
            };
            if len + chunk.len() > limit {
                let rest = chunk.split_off(limit - len);
                self.pending.push_front(rest);
            }
            len += chunk.len();
            batch.push(chunk);
        }
        self.pending_len -= len;
        batch
    }

    /// Sends one batch as a write request, first waiting for room among those in flight.
    /// The request is queued on the session before this returns (see [`queue_now`]), so
    /// requests leave in the order of the calls: what `finish` relies on.
    async fn send(&mut self, batch: Vec<Bytes>) -> Result<(), BackendError> {
        while self.in_flight.len() >= self.shared.writes_in_flight {
            self.reap_one().await?;
        }
        let Some(file) = &self.file else {
            return Err(self.gone());
        };
        let mut file = file.clone();
        let mut batch = batch;
        let len: usize = batch.iter().map(Bytes::len).sum();
        let offset = self.offset;
        self.offset += len as u64;
        let split = Arc::clone(&self.split);
        let write = async move {
            Pin::new(&mut file).start_seek(SeekFrom::Start(offset))?;
            // One request (sent on the first poll) when the server takes WRITE_LEN at once,
            // as OpenSSH's does; otherwise the rest follows in further requests.
            let written = file.write_zero_copy(&batch).await?;
            if written < len {
                split.store(true, Ordering::Relaxed);
                let mut rest = std::mem::take(&mut batch);
                let mut skip = written;
                rest.retain_mut(|b| {
                    let n = skip.min(b.len());
                    skip -= n;
                    *b = b.slice(n..);
                    !b.is_empty()
                });
                file.write_all_zero_copy(&mut rest).await?;
            }
            Ok(())
        };
        if let Some(Err(e)) = queue_now(&mut self.in_flight, write).await {
            return Err(self.fail("write", &e).await);
        }
        Ok(())
    }

    /// Waits for the oldest-finishing write; on error, cleans up and maps it.
    async fn reap_one(&mut self) -> Result<(), BackendError> {
        match self.in_flight.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(self.fail("write", &e).await),
            Some(Err(join)) => std::panic::resume_unwind(join.into_panic()),
        }
    }

    /// Maps `err` (while the disk is still as full as the failure left it), then stops every
    /// write and removes the file, so nothing partial stays behind.
    async fn fail(&mut self, op: &'static str, err: &SftpError) -> BackendError {
        let mapped = self.shared.error(op, &self.path, err, true).await;
        self.discard().await;
        mapped
    }

    async fn discard(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        self.pending.clear();
        self.pending_len = 0;
        if let Some(file) = self.file.take() {
            let _ = file.close().await;
            let _ = self.shared.sftp.fs().remove_file(&self.path).await;
        }
    }

    fn gone(&self) -> BackendError {
        BackendError::Remote {
            op: "write",
            path: self.path.display().to_string(),
            host: self.shared.peer.label(),
            message: "the upload already failed or was finished".into(),
        }
    }
}

#[async_trait]
impl Upload for SftpUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<(), BackendError> {
        if self.file.is_none() {
            return Err(self.gone());
        }
        self.pending_len += chunk.len();
        self.pending.push_back(chunk);
        while self.pending_len >= WRITE_LEN {
            let batch = self.take_batch();
            self.send(batch).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, BackendError> {
        if self.file.is_none() {
            return Err(self.gone());
        }
        while self.pending_len > 0 {
            let batch = self.take_batch();
            self.send(batch).await?;
        }
        if !self.shared.sftp.support_fsync() {
            // No fsync to pipeline: every write answered, then a close whose answer counts.
            while !self.in_flight.is_empty() {
                self.reap_one().await?;
            }
            let file = self.file.take().expect("checked above");
            if let Err(e) = file.close().await {
                let mapped = self.shared.error("write", &self.path, &e, true).await;
                let _ = self.shared.sftp.fs().remove_file(&self.path).await;
                return Err(mapped);
            }
            return Ok(self.offset);
        }
        // The fsync goes out behind the last write (queued in order, answered in order), so
        // the writes' answers and the fsync's arrive within one round trip. It syncs the whole
        // file, so success means every byte is on disk; any error fails the upload.
        let mut synced = self.file.clone().expect("checked above");
        let mut fsync = JoinSet::new();
        let queued = queue_now(&mut fsync, async move { synced.sync_all().await }).await;
        let fsync_result = async {
            if let Some(done) = queued {
                return done;
            }
            match fsync.join_next().await.expect("one task") {
                Ok(done) => done,
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        };
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        let mut synced = fsync_result.await;
        if synced.is_ok() && self.split.load(Ordering::Relaxed) {
            // Some writes left after that fsync: one more, now that all are answered.
            let mut file = self.file.clone().expect("checked above");
            synced = file.sync_all().await;
        }
        if let Err(e) = synced {
            return Err(self.fail("write", &e).await);
        }
        // Dropping the last handle sends the close without waiting for its answer: the data
        // is durable already, and the caller's rename does not need the handle closed.
        drop(self.file.take());
        Ok(self.offset)
    }

    async fn abort(mut self: Box<Self>) {
        self.discard().await;
    }
}

/// Polls `request` once, which puts its SFTP request on the session's send queue (the client
/// queues a request synchronously on first poll, before awaiting the answer), then lets `set`
/// wait for the answer. Spawning it directly would let the runtime send requests out of
/// order. Returns the result if it was already there.
async fn queue_now<F>(
    set: &mut JoinSet<Result<(), SftpError>>,
    request: F,
) -> Option<Result<(), SftpError>>
where
    F: Future<Output = Result<(), SftpError>> + Send + 'static,
{
    let mut request = Box::pin(request);
    let first = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(done) => Some(done),
        Poll::Pending => {
            set.spawn(request);
            None
        }
    }
}

impl Drop for SftpUpload {
    fn drop(&mut self) {
        // Abandoned mid-way (e.g. the run was cancelled): close and remove in the background.
        // The JoinSet's own drop aborts the writes still in flight.
        if let Some(file) = self.file.take() {
            let shared = Arc::clone(&self.shared);
            let path = std::mem::take(&mut self.path);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = file.close().await;
                    let _ = shared.sftp.fs().remove_file(&path).await;
                });
            }
        }
    }
}
