//! Parallel uploads, narinfos in dependency order: the heart of "closure-complete at every
//! instant".
//!
//! Up to `jobs` large NARs stream at once, and up to [`SMALL_FACTOR`] × `jobs` NARs in all:
//! a small NAR costs round trips (open; writes + fsync; rename; its
//! narinfo's open, write + fsync, rename) rather than CPU or memory, so over a 20 ms link a few
//! at a time leave the link idle. Small NARs (with xz: all) compress at most one per core at
//! once (a semaphore), however many wait on the network. They start in dependency order so that
//! narinfos can follow early (with xz: biggest first, see below).
//!
//! A path's narinfo (signed with every key) is *staged* — written and fsynced under a
//! temporary name — as soon as its NAR is in place, and *committed* — renamed to
//! `<hash>.narinfo` — only once the narinfos of all its references exist (already cached, or
//! committed earlier in this run). So a chain of dependencies costs one rename per level, not
//! a whole upload. A path that fails (corrupt, unreadable) is reported and its referrers are
//! held back, forever lacking a narinfo (their staged ones are removed), while independent
//! paths go on. A failure of the cache itself (full disk, lost connection, permission) stops
//! everything: it would fail every path.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::stream::{cores, upload_nar, CpuSlots, NarError, UploadedNar};
use super::summary::{HeldBack, PathFailure, Published};
use super::{Progress, ProgressFn, Settings};
use crate::cache::backend::{BackendError, CacheBackend, Staged};
use crate::cache::{narinfo_file_name, Compression, NarInfo};
use crate::nix::PathInfo;
use crate::types::StorePath;

/// NARs smaller than this are "small": compressed on one thread, and never more than this
/// much of one is queued between compressor and upload, so many in flight cost little memory.
pub const SMALL_NAR: u64 = 1024 * 1024;
/// Small NARs in flight per `jobs` (the number of large ones).
pub const SMALL_FACTOR: usize = 16;

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
    let in_flight_max = settings.jobs * SMALL_FACTOR;
    let mut large_max = settings.jobs;
    // An xz encoder is slow and big (~11× its dictionary: up to 94 MiB per thread at level 6)
    // and outruns no link: with xz every NAR compresses under permits, one per thread it uses
    // (the cores bound it, not `jobs`), taken before its temporary file is opened, and the
    // publish is a packing of compressions onto cores. Biggest first (the semaphore grants
    // permits in the order the uploads ask), or the last big NAR compresses alone on one core
    // while the others idle: a 20 MB NAR takes ~10 s at level 6.
    let every_nar_takes_a_permit = settings.compression == Compression::Xz;
    if every_nar_takes_a_permit {
        large.extend(small.drain(..));
        large
            .make_contiguous()
            .sort_by_key(|(_, p)| std::cmp::Reverse(infos[p].nar_size));
        large_max = in_flight_max;
    }
    let mut nars: JoinSet<(StorePath, Result<UploadedNar, NarError>)> = JoinSet::new();
    let mut staging: JoinSet<(StorePath, Result<Staged, BackendError>)> = JoinSet::new();
    let mut commits: JoinSet<(StorePath, Result<(), BackendError>)> = JoinSet::new();
    // NARs in place whose narinfo is not committed yet; staged narinfos waiting for references.
    let mut nar_ready: BTreeMap<StorePath, UploadedNar> = BTreeMap::new();
    let mut staged = StagedNarinfos::new(backend);
    let mut failed_or_held: BTreeSet<StorePath> = BTreeSet::new();
    let cpu = Arc::new(Semaphore::new(cores().get() as usize));
    let mut out = Outcome::default();
    let mut shown = Progress {
        paths_total: infos.len(),
        nar_bytes_total: infos.values().map(|i| i.nar_size).sum(),
        ..Progress::default()
    };
    progress(&shown);

    loop {
        while nars.len() < in_flight_max {
            // The first path in the queues' order, unless it is large and `large_max` large
            // ones are running: then the first small one.
            let large_first = match (small.front(), large.front()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some((s, _)), Some((l, _))) => l < s,
            };
            let next = if large_first && large_in_flight < large_max {
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
            // Large NARs are bounded by `jobs`; small ones share one compression slot per core.
            let large_nar = info.nar_size >= SMALL_NAR;
            if large_nar {
                large_in_flight += 1;
            }
            let cpu = (!large_nar || every_nar_takes_a_permit).then(|| CpuSlots {
                cores: Arc::clone(&cpu),
                before_open: every_nar_takes_a_permit,
            });
            let backend = Arc::clone(backend);
            let (compression, level) = (settings.compression, settings.level);
            nars.spawn(async move {
                let r = upload_nar(&backend, &info, compression, level, cpu).await;
                (info.path.clone(), r)
            });
        }
        if nars.is_empty() && staging.is_empty() && commits.is_empty() {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                // Dropping the sets aborts the tasks; their uploads remove their temporaries,
                // and `staged` its narinfos.
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
                        spawn_stage(&mut staging, backend, settings, &infos[&path], &nar);
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
            Some(done) = staging.join_next() => {
                let (path, result) = done.expect("narinfo task panicked");
                let narinfo = result?;
                if waiting[&path] == 0 {
                    spawn_commit(&mut commits, backend, path, narinfo);
                } else {
                    staged.insert(path, narinfo);
                }
            }
            Some(done) = commits.join_next() => {
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
                        if let Some(narinfo) = staged.take(referrer) {
                            spawn_commit(&mut commits, backend, referrer.clone(), narinfo);
                        }
                    }
                }
            }
        }
    }
    // Narinfos staged but never committed: a reference of theirs failed after they started.
    staged.remove_all().await?;
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

/// Narinfos written under temporary names, waiting for their references' narinfos. Whatever
/// is still here when the schedule ends (held back, or the publish stopped) is removed.
struct StagedNarinfos {
    backend: Arc<dyn CacheBackend>,
    waiting: BTreeMap<StorePath, Staged>,
}

impl StagedNarinfos {
    fn new(backend: &Arc<dyn CacheBackend>) -> Self {
        StagedNarinfos {
            backend: Arc::clone(backend),
            waiting: BTreeMap::new(),
        }
    }

    fn insert(&mut self, path: StorePath, narinfo: Staged) {
        self.waiting.insert(path, narinfo);
    }

    fn take(&mut self, path: &StorePath) -> Option<Staged> {
        self.waiting.remove(path)
    }

    /// Removes every staged file before returning (the publish ended normally: the cache
    /// works, and a held-back path's narinfo must not linger under a temporary name).
    async fn remove_all(&mut self) -> Result<(), BackendError> {
        for staged in std::mem::take(&mut self.waiting).into_values() {
            self.backend.remove(&staged.tmp).await?;
        }
        Ok(())
    }
}

impl Drop for StagedNarinfos {
    /// The publish stopped (cancelled, or the cache failed): removes what is still staged in
    /// the background. Best effort: what a lost connection leaves, the next run's cleanup of
    /// stale temporaries removes.
    fn drop(&mut self) {
        let waiting = std::mem::take(&mut self.waiting);
        if waiting.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let backend = Arc::clone(&self.backend);
        tokio::spawn(async move {
            for staged in waiting.into_values() {
                let _ = backend.remove(&staged.tmp).await;
            }
        });
    }
}

/// Renames a staged narinfo into place.
fn spawn_commit(
    set: &mut JoinSet<(StorePath, Result<(), BackendError>)>,
    backend: &Arc<dyn CacheBackend>,
    path: StorePath,
    narinfo: Staged,
) {
    let backend = Arc::clone(backend);
    set.spawn(async move {
        let r = match backend.commit(narinfo.clone()).await {
            // The temporary file is gone: it waited for its references longer than
            // STALE_AFTER and another host's publisher removed it as abandoned. Write it again.
            Err(BackendError::NotFound { .. }) => backend
                .write_atomic(&narinfo.path, narinfo.contents)
                .await
                .map(drop),
            r => r,
        };
        (path, r)
    });
}

/// Starts writing `info`'s narinfo, signed with every key, to a temporary name.
fn spawn_stage(
    set: &mut JoinSet<(StorePath, Result<Staged, BackendError>)>,
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
            .stage(&narinfo_file_name(&path), Bytes::from(narinfo.to_string()))
            .await;
        (path, r)
    });
}
