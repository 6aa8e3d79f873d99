//! What the cache already holds, learned without a round trip per path: one listing of the
//! cache root (every `<hash>.narinfo`) and one of `nar/` (for stale temporaries), then the
//! [`UploadPlan`]: the missing paths in dependency order (references first).
//!
//! Also the housekeeping that rides on those listings: `nix-cache-info` is (re)written when
//! missing or different, and temporaries of interrupted runs are removed — at once when their
//! writer was a process of this host that is gone, otherwise only after [`STALE_AFTER`],
//! because another farm (or farmctl) may be uploading to the same cache right now.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::cache::backend::{
    host_tag, is_temp_name, temp_owner, BackendError, CacheBackend, Entry,
};
use crate::cache::{nix_cache_info, NIX_CACHE_INFO};
use crate::nix::PathInfo;
use crate::types::StorePath;

/// A temporary file not provably abandoned is left alone this long.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);

/// The paths to upload and the ones the cache already has.
#[derive(Debug)]
pub struct UploadPlan {
    /// Missing paths, each after all of its (missing) references.
    pub missing: Vec<PathInfo>,
    pub already_cached: BTreeSet<StorePath>,
    pub stale_removed: usize,
}

/// Lists the cache, cleans stale temporaries, writes `nix-cache-info` if needed, and splits
/// `closure` into what is missing and what is cached.
pub async fn plan(
    backend: &Arc<dyn CacheBackend>,
    closure: &BTreeMap<StorePath, PathInfo>,
    priority: u32,
) -> Result<UploadPlan, BackendError> {
    // Three at once: over a slow link each costs a few round trips. A name a fast listing
    // misses only means an upload that was not needed, or a temporary cleaned next time.
    let (root, nar, current) = tokio::join!(
        backend.list_fast(""),
        backend.list_fast("nar"),
        backend.read(NIX_CACHE_INFO)
    );
    let (root, nar, current) = (root?, nar?, current?);

    let want_info = nix_cache_info(priority);
    if current.as_deref() != Some(want_info.as_bytes()) {
        backend
            .write_atomic(NIX_CACHE_INFO, Bytes::from(want_info))
            .await?;
    }

    let stale_removed =
        remove_stale(backend, "", &root).await? + remove_stale(backend, "nar", &nar).await?;

    let present: BTreeSet<&str> = root
        .iter()
        .filter_map(|e| e.name.strip_suffix(".narinfo"))
        .filter(|h| !is_temp_name(h))
        .collect();
    let (cached, missing): (Vec<_>, Vec<_>) = closure
        .values()
        .partition(|i| present.contains(i.path.hash_part()));
    Ok(UploadPlan {
        missing: dependency_order(missing),
        already_cached: cached.into_iter().map(|i| i.path.clone()).collect(),
        stale_removed,
    })
}

/// Orders paths so that every path comes after its references among them (Kahn's algorithm;
/// a path's reference to itself does not count, and store references have no other cycles).
pub fn dependency_order(paths: Vec<&PathInfo>) -> Vec<PathInfo> {
    let set: BTreeSet<&StorePath> = paths.iter().map(|i| &i.path).collect();
    let mut waiting: BTreeMap<&StorePath, usize> = BTreeMap::new();
    let mut referrers: BTreeMap<&StorePath, Vec<&PathInfo>> = BTreeMap::new();
    let mut ready = Vec::new();
    for info in &paths {
        let refs: Vec<_> = info
            .references
            .iter()
            .filter(|r| **r != info.path && set.contains(r))
            .collect();
        if refs.is_empty() {
            ready.push(*info);
        }
        waiting.insert(&info.path, refs.len());
        for r in refs {
            referrers.entry(r).or_default().push(info);
        }
    }
    let mut out = Vec::with_capacity(paths.len());
    let mut next = 0;
    while next < ready.len() {
        let info = ready[next];
        next += 1;
        out.push(info.clone());
        for referrer in referrers.get(&info.path).into_iter().flatten() {
            let n = waiting.get_mut(&referrer.path).expect("counted above");
            *n -= 1;
            if *n == 0 {
                ready.push(referrer);
            }
        }
    }
    assert_eq!(out.len(), paths.len(), "store references form a cycle");
    out
}

/// Removes the temporaries in `entries` (of directory `dir`) that no live writer owns.
async fn remove_stale(
    backend: &Arc<dyn CacheBackend>,
    dir: &str,
    entries: &[Entry],
) -> Result<usize, BackendError> {
    let now = SystemTime::now();
    let mut removed = 0;
    for e in entries
        .iter()
        .filter(|e| !e.is_dir && is_temp_name(&e.name))
    {
        let abandoned_here = temp_owner(&e.name).is_some_and(|o| {
            o.host == host_tag() && o.pid != std::process::id() && !process_alive(o.pid)
        });
        let old = e
            .mtime
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > STALE_AFTER);
        if abandoned_here || old {
            let path = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            tracing::info!(file = %path, "removing a stale temporary file of an interrupted upload");
            backend.remove(&path).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether a process with this pid exists here (a permission error means it does).
fn process_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::NarHash;

    fn info(hash_char: char, name: &str, refs: &[&PathInfo]) -> PathInfo {
        let path: StorePath = format!("/nix/store/{}-{name}", hash_char.to_string().repeat(32))
            .parse()
            .unwrap();
        let mut references: Vec<StorePath> = refs.iter().map(|r| r.path.clone()).collect();
        references.push(path.clone()); // self-references are common and must not deadlock
        PathInfo {
            path,
            nar_hash: NarHash::digest(name.as_bytes()),
            nar_size: 1,
            references,
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn references_come_before_referrers() {
        let glibc = info('g', "glibc", &[]);
        let bash = info('b', "bash", &[&glibc]);
        let coreutils = info('c', "coreutils", &[&glibc]);
        let sw = info('a', "sw", &[&bash, &coreutils]);
        let order = dependency_order(vec![&sw, &coreutils, &bash, &glibc]);
        let pos = |p: &PathInfo| order.iter().position(|i| i.path == p.path).unwrap();
        assert!(pos(&glibc) < pos(&bash) && pos(&glibc) < pos(&coreutils));
        assert!(pos(&bash) < pos(&sw) && pos(&coreutils) < pos(&sw));
    }

    #[test]
    fn our_own_process_is_alive_and_a_reaped_child_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
