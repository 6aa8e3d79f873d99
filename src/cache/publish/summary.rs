//! What one publish did, per run and per root: the plain, serialisable [`PublishSummary`] the
//! run record carries and `farmctl publish` prints. No behaviour beyond counting.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::nix::PathInfo;
use crate::types::StorePath;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishSummary {
    /// The cache URL.
    pub cache: String,
    /// Paths in the union of the roots' closures, and their NAR bytes.
    pub closure_paths: usize,
    pub closure_nar_bytes: u64,
    /// Closure paths whose narinfo the cache already had (not uploaded again).
    pub already_cached: usize,
    /// Paths published by this run: NAR and narinfo in place.
    pub uploaded_paths: usize,
    pub uploaded_nar_bytes: u64,
    /// Bytes of compressed NAR files written.
    pub uploaded_file_bytes: u64,
    /// Build logs written to `log/`.
    pub logs_uploaded: usize,
    /// Temporary files of interrupted earlier runs that were removed.
    pub stale_temporaries_removed: usize,
    pub duration_ms: u64,
    pub roots: Vec<RootSummary>,
    /// Paths that could not be published (e.g. corrupt in the local store).
    pub failed: Vec<PathFailure>,
    /// Paths not published because a reference of theirs was not (closure completeness).
    pub held_back: Vec<HeldBack>,
}

/// One root's closure: what it holds, what was already there, what this run added.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSummary {
    pub root: StorePath,
    pub closure_paths: usize,
    pub closure_nar_bytes: u64,
    pub already_cached: usize,
    pub uploaded_paths: usize,
    pub uploaded_nar_bytes: u64,
    pub uploaded_file_bytes: u64,
    /// Every path of the closure is in the cache now (a client can substitute the root).
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathFailure {
    pub path: StorePath,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    pub path: StorePath,
    /// The reference that is not in the cache.
    pub missing_reference: StorePath,
}

/// One path this run published: its NAR sizes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Published {
    pub nar_size: u64,
    pub file_size: u64,
}

impl PublishSummary {
    /// Everything asked for is in the cache.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty() && self.held_back.is_empty()
    }

    pub fn root(&self, root: &StorePath) -> Option<&RootSummary> {
        self.roots.iter().find(|r| &r.root == root)
    }

    /// Counts the closure and each root's share of it.
    pub(crate) fn tally(
        &mut self,
        roots: &[StorePath],
        infos: &BTreeMap<StorePath, PathInfo>,
        cached: &BTreeSet<StorePath>,
        published: &BTreeMap<StorePath, Published>,
    ) {
        self.closure_paths = infos.len();
        self.closure_nar_bytes = infos.values().map(|i| i.nar_size).sum();
        self.already_cached = cached.len();
        self.uploaded_paths = published.len();
        self.uploaded_nar_bytes = published.values().map(|p| p.nar_size).sum();
        self.uploaded_file_bytes = published.values().map(|p| p.file_size).sum();
        self.roots = roots
            .iter()
            .map(|root| {
                let closure = closure_of(root, infos);
                let mut r = RootSummary {
                    root: root.clone(),
                    closure_paths: closure.len(),
                    closure_nar_bytes: 0,
                    already_cached: 0,
                    uploaded_paths: 0,
                    uploaded_nar_bytes: 0,
                    uploaded_file_bytes: 0,
                    complete: true,
                };
                for path in &closure {
                    r.closure_nar_bytes += infos[*path].nar_size;
                    if cached.contains(*path) {
                        r.already_cached += 1;
                    } else if let Some(p) = published.get(*path) {
                        r.uploaded_paths += 1;
                        r.uploaded_nar_bytes += p.nar_size;
                        r.uploaded_file_bytes += p.file_size;
                    } else {
                        r.complete = false;
                    }
                }
                r
            })
            .collect();
    }
}

/// The paths reachable from `root` through `infos`' references (those in `infos`).
fn closure_of<'a>(
    root: &'a StorePath,
    infos: &'a BTreeMap<StorePath, PathInfo>,
) -> BTreeSet<&'a StorePath> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let Some((key, info)) = infos.get_key_value(p) else {
            continue;
        };
        if seen.insert(key) {
            stack.extend(info.references.iter());
        }
    }
    seen
}

/// The plain final summary `farmctl publish` prints off a terminal.
impl fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "published to {}: {} of {} paths uploaded ({} NAR, {} compressed), {} already cached, in {:.1} s",
            self.cache,
            self.uploaded_paths,
            self.closure_paths,
            bytes(self.uploaded_nar_bytes),
            bytes(self.uploaded_file_bytes),
            self.already_cached,
            self.duration_ms as f64 / 1000.0
        )?;
        for r in &self.roots {
            writeln!(
                f,
                "  {}: {} paths ({}), {} uploaded, {} already cached{}",
                r.root,
                r.closure_paths,
                bytes(r.closure_nar_bytes),
                r.uploaded_paths,
                r.already_cached,
                if r.complete { "" } else { ", INCOMPLETE" }
            )?;
        }
        if self.logs_uploaded > 0 {
            writeln!(f, "  {} build logs uploaded", self.logs_uploaded)?;
        }
        for p in &self.failed {
            writeln!(f, "  failed: {}", p.error)?;
        }
        for h in &self.held_back {
            writeln!(
                f,
                "  not published: {} (its reference {} is not in the cache)",
                h.path, h.missing_reference
            )?;
        }
        Ok(())
    }
}

/// `12.3 MiB`-style sizes for humans.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::NarHash;

    fn info(name: &str, refs: &[&StorePath], size: u64) -> PathInfo {
        let hash = format!("{:0>32}", name.len()).replace('0', "a");
        PathInfo {
            path: format!("/nix/store/{hash}-{name}").parse().unwrap(),
            nar_hash: NarHash::digest(name.as_bytes()),
            nar_size: size,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            signatures: vec![],
            ca: None,
        }
    }

    #[test]
    fn roots_count_their_own_closure_only() {
        let leaf = info("l", &[], 10);
        let a = info("aa", &[&leaf.path], 20);
        let b = info("bbb", &[&leaf.path], 30);
        let infos: BTreeMap<_, _> = [&leaf, &a, &b]
            .iter()
            .map(|i| (i.path.clone(), (*i).clone()))
            .collect();
        let cached = BTreeSet::from([leaf.path.clone()]);
        let published = BTreeMap::from([(
            a.path.clone(),
            Published {
                nar_size: 20,
                file_size: 5,
            },
        )]);
        let mut s = PublishSummary::default();
        s.tally(
            &[a.path.clone(), b.path.clone()],
            &infos,
            &cached,
            &published,
        );
        assert_eq!(
            (s.closure_paths, s.closure_nar_bytes, s.already_cached),
            (3, 60, 1)
        );
        assert_eq!((s.uploaded_paths, s.uploaded_file_bytes), (1, 5));
        let ra = s.root(&a.path).unwrap();
        assert_eq!(
            (ra.closure_paths, ra.uploaded_paths, ra.complete),
            (2, 1, true)
        );
        let rb = s.root(&b.path).unwrap();
        assert_eq!((rb.closure_nar_bytes, rb.complete), (40, false));
        assert_eq!(bytes(1536), "1.5 KiB");
    }
}
