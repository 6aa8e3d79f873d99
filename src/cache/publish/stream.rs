//! One store path's NAR, streamed into the cache with no whole NAR in memory and no staging
//! file:
//!
//! ```text
//!  blocking thread: dump_path ─► HashingWriter (NarHash) ─► compressor (all cores)
//!                     ─► HashingWriter (FileHash) ─► ChunkSender ──(bounded channel)──┐
//!  async task:      Upload::write (pipelined) to nar/.tmp-farmd-… ◄───────────────────┘
//!                     ─► finish (fsync) ─► check NarHash ─► rename to nar/<filehash>.nar.zst
//! ```
//!
//! The bounded channel is the back-pressure: a slow link stalls compression, not memory. A NAR
//! whose hash differs from what the local store recorded is never renamed into place.

use std::io::{self, Write};
use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Semaphore};

use crate::cache::backend::{temp_name, BackendError, CacheBackend};
use crate::cache::compress::threads_used;
use crate::cache::{compressor, dump_path, nar_url, Compression, FileHash, HashingWriter, NarHash};
use crate::nix::PathInfo;
use crate::types::StorePath;

/// Bytes per chunk handed to the upload (a little under one SFTP write request).
const CHUNK: usize = 240 * 1024;
/// Chunks queued between compressor and upload (≈ 4 MiB per path in flight).
const QUEUE: usize = 16;
/// NARs at least this big are compressed on every core; smaller ones on one (parallel paths
/// keep the cores busy, and a zstd worker pool per tiny NAR costs more than it saves).
const MULTITHREAD_FROM: u64 = 8 * 1024 * 1024;

/// The cores of this machine: threads for one large NAR's compression, and the publisher's
/// CPU permits.
pub fn cores() -> NonZeroU32 {
    std::thread::available_parallelism().map_or(NonZeroU32::MIN, |n| {
        NonZeroU32::new(n.get() as u32).unwrap_or(NonZeroU32::MIN)
    })
}

/// A NAR now in place in the cache.
#[derive(Clone, Debug)]
pub struct UploadedNar {
    /// `nar/<filehash><ext>`.
    pub url: String,
    pub file_hash: FileHash,
    pub file_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The cache could not take it: this stops the whole publish (a full disk or a lost
    /// connection affects every path alike).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The path could not be read from the local store.
    #[error("cannot read `{path}` from the local store")]
    Local {
        path: StorePath,
        #[source]
        source: io::Error,
    },
    /// The store path's contents do not hash to what the store recorded.
    #[error(
        "`{path}` is corrupt in the local store: its contents hash to {found} ({found_size} \
         bytes of NAR) but the store recorded {expected} ({expected_size} bytes); it was not \
         published; run `nix-store --verify --check-contents --repair`"
    )]
    Corrupt {
        path: StorePath,
        expected: NarHash,
        expected_size: u64,
        found: NarHash,
        found_size: u64,
    },
}

struct Hashes {
    nar_hash: NarHash,
    nar_size: u64,
    file_hash: FileHash,
    file_size: u64,
}

/// Where a NAR's compression waits for CPU: permits of a semaphore with one per core, one per
/// thread the compressor will use.
pub struct CpuSlots {
    pub cores: Arc<Semaphore>,
    /// Wait for the permits before opening the temporary file. The wait can be long (xz: a
    /// queue of NARs compressing at ~2 MB/s per core) and a temporary file older than
    /// [`STALE_AFTER`](super::plan::STALE_AFTER) may be removed by another host's publisher.
    /// Otherwise the open's round trip overlaps the (short) wait.
    pub before_open: bool,
}

/// Serialises, hashes, compresses and uploads `info.path`; see the module docs. With `cpu`,
/// the compression first takes its permits.
pub async fn upload_nar(
    backend: &Arc<dyn CacheBackend>,
    info: &PathInfo,
    compression: Compression,
    level: i32,
    cpu: Option<CpuSlots>,
) -> Result<UploadedNar, NarError> {
    let tmp = temp_name(&format!(
        "nar/{}{}",
        info.path.hash_part(),
        compression.nar_extension()
    ))?;
    let threads = if info.nar_size >= MULTITHREAD_FROM {
        cores()
    } else {
        NonZeroU32::MIN
    };
    let take = |cpu: CpuSlots| async move {
        // `threads` is at most the cores, which is how many permits there are.
        let n = threads_used(compression, level, threads, info.nar_size);
        cpu.cores.acquire_many_owned(n).await.expect("never closed")
    };
    let (early, late) = match cpu {
        Some(cpu) if cpu.before_open => (Some(take(cpu).await), None),
        cpu => (None, cpu),
    };
    let mut upload = backend.create(&tmp).await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let permit = match (early, late) {
        (Some(permit), _) => Some(permit),
        (None, Some(cpu)) => Some(take(cpu).await),
        (None, None) => None,
    };
    let (path, nar_size) = (info.path.clone(), info.nar_size);
    let producer = tokio::task::spawn_blocking(move || -> io::Result<Hashes> {
        let _permit = permit; // released when compression ends
        let sender = ChunkSender {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
        };
        let file = HashingWriter::new(sender);
        let mut nar = HashingWriter::new(compressor(compression, level, threads, nar_size, file)?);
        dump_path(path.as_str().as_ref(), &mut nar)?;
        let (compressed, nar_hash, nar_size) = nar.finish();
        let file = compressed.finish()?; // flushes the last chunk into the channel
        let (_, file_hash, file_size) = file.finish();
        Ok(Hashes {
            nar_hash,
            nar_size,
            file_hash,
            file_size,
        })
    });

    while let Some(chunk) = rx.recv().await {
        if let Err(e) = upload.write(chunk).await {
            drop(rx); // unblocks the producer, whose next send fails
            let _ = producer.await;
            return Err(e.into());
        }
    }
    let hashes = match producer.await.expect("NAR producer panicked") {
        Ok(h) => h,
        Err(source) => {
            upload.abort().await;
            return Err(NarError::Local {
                path: info.path.clone(),
                source,
            });
        }
    };
    if hashes.nar_hash != info.nar_hash || hashes.nar_size != info.nar_size {
        upload.abort().await;
        return Err(NarError::Corrupt {
            path: info.path.clone(),
            expected: info.nar_hash,
            expected_size: info.nar_size,
            found: hashes.nar_hash,
            found_size: hashes.nar_size,
        });
    }
    upload.finish().await?;
    let url = nar_url(&hashes.file_hash, compression);
    if let Err(e) = backend.rename(&tmp, &url).await {
        let _ = backend.remove(&tmp).await;
        return Err(e.into());
    }
    Ok(UploadedNar {
        url,
        file_hash: hashes.file_hash,
        file_size: hashes.file_size,
    })
}

/// The producer's end of the channel: cuts the compressed stream into [`CHUNK`]-sized
/// `Bytes` without copying them again.
struct ChunkSender {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx.blocking_send(chunk).map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped taking data")
        })
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
