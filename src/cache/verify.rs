//! `farmctl cache verify`: checks a binary cache the way a client would rely on it. Every
//! narinfo parses, is signed by one of the given keys, names references whose narinfos exist
//! (closure completeness), and points at a NAR that exists with its `FileSize`. `deep` also
//! downloads each NAR and re-hashes it (`FileHash`, and after decompressing `NarHash` and
//! `NarSize`).
//!
//! It reads, it never repairs: problems are listed for a human (or the next publish) to act on.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::backend::{is_temp_name, BackendError, CacheBackend};
use super::{Compression, FileHash, HashingWriter, NarInfo, PublicKey, NIX_CACHE_INFO};

/// Narinfos read at once (each is a round trip over SFTP).
const READS_IN_FLIGHT: usize = 16;

/// One thing wrong with the cache, and the file it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.what)
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub narinfos: usize,
    /// NARs downloaded and re-hashed (`deep`).
    pub nars_hashed: usize,
    pub problems: Vec<Problem>,
}

/// Verifies the whole cache; `Err` only when it cannot be read at all.
pub async fn verify(
    backend: &Arc<dyn CacheBackend>,
    keys: &[PublicKey],
    deep: bool,
) -> Result<Report, BackendError> {
    let (root, nar) = tokio::join!(backend.list(""), backend.list("nar"));
    let (root, nar) = (root?, nar?);
    let mut report = Report::default();
    let problem = |file: &str, what: String| Problem {
        file: file.to_owned(),
        what,
    };
    if !root.iter().any(|e| e.name == NIX_CACHE_INFO) {
        report
            .problems
            .push(problem(NIX_CACHE_INFO, "missing".into()));
    }
    let nar_sizes: BTreeMap<String, u64> = nar
        .into_iter()
        .filter(|e| !e.is_dir && !is_temp_name(&e.name))
        .map(|e| (format!("nar/{}", e.name), e.size))
        .collect();
    let names: Vec<String> = root
        .into_iter()
        .filter(|e| !e.is_dir && e.name.ends_with(".narinfo") && !is_temp_name(&e.name))
        .map(|e| e.name)
        .collect();
    let present: BTreeSet<&str> = names
        .iter()
        .map(|n| n.trim_end_matches(".narinfo"))
        .collect();
    report.narinfos = names.len();

    let mut reads = JoinSet::new();
    let mut pending = names.iter();
    loop {
        while reads.len() < READS_IN_FLIGHT {
            let Some(name) = pending.next() else { break };
            let (backend, name) = (Arc::clone(backend), name.clone());
            reads.spawn(async move {
                let text = backend.read(&name).await;
                (name, text)
            });
        }
        let Some(done) = reads.join_next().await else {
            break;
        };
        let (name, text) = done.expect("narinfo read panicked");
        let Some(text) = text? else {
            continue; // removed since the listing (a concurrent GC): not a problem
        };
        let info: NarInfo = match String::from_utf8_lossy(&text).parse() {
            Ok(info) => info,
            Err(e) => {
                report.problems.push(problem(&name, e.to_string()));
                continue;
            }
        };
        let mut found = check_narinfo(&name, &info, keys, &present, &nar_sizes);
        if deep && found.is_empty() {
            report.nars_hashed += 1;
            if let Err(what) = rehash(backend, &info).await? {
                found.push(what);
            }
        }
        report
            .problems
            .extend(found.into_iter().map(|what| problem(&name, what)));
    }
    report.problems.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(report)
}

/// The problems of one narinfo that the listings can tell.
fn check_narinfo(
    name: &str,
    info: &NarInfo,
    keys: &[PublicKey],
    present: &BTreeSet<&str>,
    nar_sizes: &BTreeMap<String, u64>,
) -> Vec<String> {
    let mut found = Vec::new();
    let path = &info.store_path;
    if name != format!("{}.narinfo", path.hash_part()) {
        found.push(format!(
            "describes `{path}`, whose narinfo has another name"
        ));
    }
    if !info.is_signed_by_any(keys) {
        let names: Vec<&str> = keys.iter().map(PublicKey::name).collect();
        found.push(format!(
            "`{path}` carries no valid signature by {} (it has {})",
            names.join(", "),
            if info.sigs.is_empty() {
                "none".to_owned()
            } else {
                info.sigs
                    .iter()
                    .map(|s| s.split(':').next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    for r in &info.references {
        if r != path && !present.contains(r.hash_part()) {
            found.push(format!(
                "`{path}` references `{r}`, whose narinfo is missing"
            ));
        }
    }
    match (nar_sizes.get(&info.url), info.file_size) {
        (None, _) => found.push(format!("its NAR `{}` is missing", info.url)),
        (Some(size), Some(want)) if *size != want => found.push(format!(
            "its NAR `{}` has {size} bytes, the narinfo says FileSize {want} (truncated upload?)",
            info.url
        )),
        _ => {}
    }
    found
}

/// Streams the NAR through FileHash, the decompressor and NarHash/NarSize, never holding it
/// whole (a NAR can be gigabytes). The outer `Result` is the cache failing; the inner one a
/// problem found.
async fn rehash(
    backend: &Arc<dyn CacheBackend>,
    info: &NarInfo,
) -> Result<Result<(), String>, BackendError> {
    let Some(compression) = Compression::from_narinfo_name(&info.compression) else {
        return Ok(Err(format!(
            "compression `{}` cannot be checked",
            info.compression
        )));
    };
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_QUEUED);
    let checker = {
        let info = info.clone();
        tokio::task::spawn_blocking(move || check_stream(compression, &info, rx))
    };
    let found = backend.read_to(&info.url, tx).await;
    let checked = checker.await.expect("re-hashing panicked");
    if !found? {
        return Ok(Err(format!("its NAR `{}` is missing", info.url)));
    }
    Ok(checked)
}

/// Compressed chunks queued between the download and the hashing (≈ 4 MiB over SFTP).
const CHUNKS_QUEUED: usize = 16;

/// The checks of [`rehash`], on the chunks arriving on `rx` (a blocking thread).
fn check_stream(
    compression: Compression,
    info: &NarInfo,
    rx: mpsc::Receiver<Bytes>,
) -> Result<(), String> {
    let mut file = HashingReader::new(ChannelReader {
        rx,
        chunk: Bytes::new(),
    });
    let mut nar = HashingWriter::new(io::sink());
    let unpacked = decompress(compression, &mut file, &mut nar);
    // Whatever the decompressor left unread still counts for FileHash and FileSize.
    let drained = io::copy(&mut file, &mut io::sink());
    let (file_hash, file_size) = file.finish();
    if let Some(want) = info.file_size {
        if file_size != want {
            return Err(format!(
                "its NAR `{}` has {file_size} bytes, the narinfo says FileSize {want}",
                info.url
            ));
        }
    }
    if let Some(want) = info.file_hash {
        if file_hash != want {
            return Err(format!(
                "its NAR `{}` hashes to {file_hash}, FileHash says {want}",
                info.url
            ));
        }
    }
    unpacked
        .and(drained)
        .map_err(|e| format!("its NAR `{}` does not decompress: {e}", info.url))?;
    let (_, hash, size) = nar.finish();
    if (hash, size) != (info.nar_hash, info.nar_size) {
        return Err(format!(
            "its NAR `{}` unpacks to {hash} ({size} bytes), NarHash says {} ({} bytes)",
            info.url, info.nar_hash, info.nar_size
        ));
    }
    Ok(())
}

fn decompress(c: Compression, file: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
    let mut reader: Box<dyn Read + '_> = match c {
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file)?),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(file)),
        Compression::None => Box::new(file),
    };
    io::copy(&mut reader, out)
}

/// The downloaded chunks as a blocking [`Read`].
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// A reader that hashes (SHA-256) and counts what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: HashingWriter<io::Sink>,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: HashingWriter::new(io::sink()),
        }
    }

    fn finish(self) -> (FileHash, u64) {
        let (_, hash, size) = self.hasher.finish();
        (hash, size)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.write_all(&buf[..n])?;
        Ok(n)
    }
}
