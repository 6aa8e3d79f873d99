//! Parallel uploads, narinfos in dependency order: the heart of "closure-complete at every
//! instant".
//!
//! Up to `jobs` large NARs stream at once, and up to [`SMALL_FACTOR`] × `jobs` NARs in all
//! (with xz: `jobs` in all): a small NAR costs a handful of round trips (open, fsync, close,
//! rename, its narinfo) rather than CPU or memory, so over a 20 ms link 4 at a time left the
//! link idle most of the time. They start in dependency order so that narinfos can follow
//! early. A path's narinfo is written (temp + rename, signed with every key) only once its NAR
//! is in place AND the narinfos of all its references exist — already cached, or committed
//! earlier in this run. A path that fails (corrupt, unreadable) is reported and its referrers
//! are held back, forever lacking a narinfo, while independent paths go on. A failure of the
//! cache itself (full disk, lost connection, permission) stops everything: it would fail every
//! path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::stream::{upload_nar, NarError, UploadedNar};
use super::summary::{HeldBack, PathFailure, Published};
use super::{Progress, ProgressFn, Settings};
use crate::cache::backend::{BackendError, CacheBackend};
use crate::cache::{narinfo_file_name, Compression, NarInfo};
use crate::nix::PathInfo;
use crate::types::StorePath;

/// NARs smaller than this are "small": compressed on one thread, and never more than this
/// much of one is queued between compressor and upload, so many in flight cost little memory.
pub const SMALL_NAR: u64 = 1024 * 1024;
/// Small NARs in flight per `jobs` (the number of large ones), with zstd or no compression.
/// An xz encoder takes ~100 MiB at the default level whatever the input size (its match
/// finder is sized by the dictionary), so with xz every NAR counts as large.
pub const SMALL_FACTOR: usize = 4;

/// What the schedule achieved (when the cache itself did not fail).
#[derive(Debug, Default)]
pub struct Outcome {
    pub published: BTreeMap<StorePath, Published>,
    pub failed: Vec<PathFailure>,
    pub held_back: Vec<HeldBack>,
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the publish was cancelled")]
    Cancelled,
}

/// Publishes `missing` (in dependency order, see [`super::plan::dependency_order`]).
pub async fn run(
    backend: &Arc<dyn CacheBackend>,
    settings: &Settings,
    missing: Vec<PathInfo>,
    cancel: &CancellationToken,
    progress: &ProgressFn<'_>,
) -> Result<Outcome, ScheduleError> {
    let infos: BTreeMap<StorePath, Arc<PathInfo>> = missing
        .iter()
        .map(|i| (i.path.clone(), Arc::new(i.clone())))
        .collect();
    // For each missing path: how many of its missing references lack a narinfo.
    let mut waiting: BTreeMap<StorePath, usize> = BTreeMap::new();
    let mut referrers: BTreeMap<StorePath, Vec<StorePath>> = BTreeMap::new();
    for info in infos.values() {
        let refs: Vec<&StorePath> = info
            .references
            .iter()
            .filter(|r| **r != info.path && infos.contains_key(*r))
            .collect();
        waiting.insert(info.path.clone(), refs.len());
        for r in refs {
            referrers
                .entry(r.clone())
                .or_default()
                .push(info.path.clone());
        }
    }

    // Two queues, each in dependency order; `order` says which path came first overall.
    let (mut small, mut large): (VecDeque<_>, VecDeque<_>) = missing
        .into_iter()
        .enumerate()
        .map(|(order, i)| (order, i.path))
        .partition(|(_, p)| infos[p].nar_size < SMALL_NAR);
    let mut large_in_flight = 0;
    let in_flight_max = match settings.compression {
        Compression::Xz => settings.jobs,
        Compression::Zstd | Compression::None => settings.jobs * SMALL_FACTOR,
    };
    let mut nars: JoinSet<(StorePath, Result<UploadedNar, NarError>)> = JoinSet::new();
    let mut narinfos: JoinSet<(StorePath, Result<u64, BackendError>)> = JoinSet::new();
    let mut nar_ready: BTreeMap<StorePath, UploadedNar> = BTreeMap::new();
    let mut failed_or_held: BTreeSet<StorePath> = BTreeSet::new();
    let mut out = Outcome::default();
    let mut shown = Progress {
        paths_total: infos.len(),
        nar_bytes_total: infos.values().map(|i| i.nar_size).sum(),
        ..Progress::default()
    };
    progress(&shown);

    loop {
        while nars.len() < in_flight_max {
            // The first path in dependency order, unless it is large and `jobs` large ones
            // are running: then the first small one.
            let large_first = match (small.front(), large.front()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some((s, _)), Some((l, _))) => l < s,
            };
            let next = if large_first && large_in_flight < settings.jobs {
                large.pop_front()
            } else {
                small.pop_front()
            };
            let Some((_, path)) = next else { break };
            let info = Arc::clone(&infos[&path]);
            if let Some(bad) = info.references.iter().find(|r| failed_or_held.contains(*r)) {
                out.held_back.push(HeldBack {
                    path: path.clone(),
                    missing_reference: bad.clone(),
                });
                failed_or_held.insert(path);
                continue;
            }
            if info.nar_size >= SMALL_NAR {
                large_in_flight += 1;
            }
            let backend = Arc::clone(backend);
            let (compression, level) = (settings.compression, settings.level);
            nars.spawn(async move {
                let r = upload_nar(&backend, &info, compression, level).await;
                (info.path.clone(), r)
            });
        }
        if nars.is_empty() && narinfos.is_empty() {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                // Dropping the sets aborts the tasks; their uploads remove their temporaries.
                return Err(ScheduleError::Cancelled);
            }
            Some(done) = nars.join_next() => {
                let (path, result) = done.expect("NAR upload task panicked");
                if infos[&path].nar_size >= SMALL_NAR {
                    large_in_flight -= 1;
                }
                match result {
                    Ok(nar) => {
                        tracing::debug!(path = %path, url = %nar.url, size = nar.file_size, "NAR in place");
                        shown.nar_bytes_done += infos[&path].nar_size;
                        shown.file_bytes_done += nar.file_size;
                        progress(&shown);
                        if waiting[&path] == 0 {
                            spawn_narinfo(&mut narinfos, backend, settings, &infos[&path], &nar);
                        }
                        nar_ready.insert(path, nar);
                    }
                    Err(NarError::Backend(e)) => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(path = %path, error = %e, "path not published");
                        out.failed.push(PathFailure { path: path.clone(), error: e.to_string() });
                        failed_or_held.insert(path);
                    }
                }
            }
            Some(done) = narinfos.join_next() => {
                let (path, result) = done.expect("narinfo task panicked");
                result?;
                let nar = nar_ready.remove(&path).expect("narinfo follows its NAR");
                out.published.insert(path.clone(), Published {
                    nar_size: infos[&path].nar_size,
                    file_size: nar.file_size,
                });
                shown.paths_done += 1;
                progress(&shown);
                for referrer in referrers.get(&path).into_iter().flatten() {
                    let n = waiting.get_mut(referrer).expect("counted");
                    *n -= 1;
                    if *n == 0 {
                        if let Some(nar) = nar_ready.get(referrer) {
                            spawn_narinfo(&mut narinfos, backend, settings, &infos[referrer], nar);
                        }
                    }
                }
            }
        }
    }
    // Uploaded NARs still waiting: a reference of theirs failed after they started.
    for path in nar_ready.into_keys() {
        let info = &infos[&path];
        let unpublished = |r: &&StorePath| {
            **r != path && infos.contains_key(*r) && !out.published.contains_key(*r)
        };
        let bad = info
            .references
            .iter()
            .find(|r| failed_or_held.contains(*r))
            .or_else(|| info.references.iter().find(unpublished))
            .cloned()
            .expect("a NAR waits only for a reference that was not published");
        out.held_back.push(HeldBack {
            path,
            missing_reference: bad,
        });
    }
    Ok(out)
}

/// Starts writing `info`'s narinfo, signed with every key, via a temporary name.
fn spawn_narinfo(
    set: &mut JoinSet<(StorePath, Result<u64, BackendError>)>,
    backend: &Arc<dyn CacheBackend>,
    settings: &Settings,
    info: &PathInfo,
    nar: &UploadedNar,
) {
    let mut narinfo = NarInfo {
        store_path: info.path.clone(),
        url: nar.url.clone(),
        compression: settings.compression.narinfo_name().to_owned(),
        file_hash: Some(nar.file_hash),
        file_size: Some(nar.file_size),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        // As `nix copy` does: the signatures the path already has, plus ours (Nix keeps
        // them in a sorted set, so the lines come out sorted).
        sigs: info.signatures.clone(),
        ca: info.ca.clone(),
    };
    for key in settings.keys.iter() {
        narinfo.sign(key);
    }
    narinfo.sigs.sort();
    narinfo.sigs.dedup();
    let backend = Arc::clone(backend);
    let path = info.path.clone();
    set.spawn(async move {
        let r = backend
            .write_atomic(&narinfo_file_name(&path), Bytes::from(narinfo.to_string()))
            .await;
        (path, r)
    });
}
