//! Reading many small files without a round trip per file: requests are issued from separate
//! tasks, up to a limit in flight, so over SFTP they are pipelined on the one session instead of
//! waiting for each answer in turn. What the cache holds is learned from one listing of its
//! root; the narinfos' `References` come from here.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::task::JoinSet;

use crate::cache::backend::{is_temp_name, BackendError, CacheBackend, Entry};
use crate::cache::NarInfo;

/// Narinfos read at once. Each read is several SFTP requests (open, fstat, read, close), and
/// OpenSSH's sftp-server answers them in order, so more in flight only helps until its one
/// process is busy; 128 keeps it busy at 30 ms round trip.
pub const READS_IN_FLIGHT: usize = 128;

/// Runs `f` on every item, up to `in_flight` at once, each as its own task; results in the
/// order they finish.
pub async fn map_in_flight<I, T, F, Fut>(items: Vec<I>, in_flight: usize, f: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let mut out = Vec::with_capacity(items.len());
    let mut tasks = JoinSet::new();
    let mut items = items.into_iter();
    loop {
        while tasks.len() < in_flight.max(1) {
            let Some(item) = items.next() else { break };
            tasks.spawn(f(item));
        }
        match tasks.join_next().await {
            Some(Ok(t)) => out.push(t),
            Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
            None => break,
        }
    }
    out
}

/// One narinfo in the cache, as much of it as GC needs.
#[derive(Clone, Debug)]
pub struct Cached {
    pub info: NarInfo,
    /// When the narinfo was written (from the listing).
    pub mtime: Option<SystemTime>,
}

/// What one listing of the root plus reading every narinfo found.
#[derive(Debug, Default)]
pub struct Listing {
    /// By hash part.
    pub paths: BTreeMap<String, Cached>,
    /// Narinfo files that do not parse (left alone; `cache verify` reports them).
    pub unreadable: Vec<String>,
    /// The `URL:` lines found in those, so their NARs are not taken for orphans.
    pub unreadable_urls: BTreeSet<String>,
    /// One of them has no readable `URL:`: no NAR may be taken for an orphan.
    pub unreadable_without_url: bool,
    /// The root's entries as listed (temporaries and all).
    pub root: Vec<Entry>,
}

/// The hash parts of the `<hash>.narinfo` entries of a root listing.
pub fn narinfo_names(root: &[Entry]) -> Vec<(String, Option<SystemTime>)> {
    root.iter()
        .filter(|e| !e.is_dir && !is_temp_name(&e.name))
        .filter_map(|e| Some((e.name.strip_suffix(".narinfo")?.to_owned(), e.mtime)))
        .collect()
}

/// Reads the narinfos of `names` (hash part, mtime), `READS_IN_FLIGHT` at a time, into
/// `listing`. A narinfo removed since the listing is skipped.
pub async fn read_narinfos(
    backend: &Arc<dyn CacheBackend>,
    names: Vec<(String, Option<SystemTime>)>,
    listing: &mut Listing,
) -> Result<(), BackendError> {
    let read = map_in_flight(names, READS_IN_FLIGHT, |(hash, mtime)| {
        let backend = Arc::clone(backend);
        async move {
            let bytes = backend.read(&format!("{hash}.narinfo")).await;
            (hash, mtime, bytes)
        }
    })
    .await;
    for (hash, mtime, bytes) in read {
        let Some(bytes) = bytes? else { continue };
        let text = String::from_utf8_lossy(&bytes);
        match text.parse::<NarInfo>() {
            Ok(info) if info.store_path.hash_part() == hash => {
                listing.paths.insert(hash, Cached { info, mtime });
            }
            _ => {
                tracing::warn!(file = %format!("{hash}.narinfo"), "GC leaves alone a narinfo it cannot read");
                listing.unreadable.push(format!("{hash}.narinfo"));
                let url = text
                    .lines()
                    .find_map(|l| l.strip_prefix("URL:"))
                    .map(|u| u.trim().to_owned());
                match url {
                    Some(url) => {
                        listing.unreadable_urls.insert(url);
                    }
                    None => listing.unreadable_without_url = true,
                }
            }
        }
    }
    Ok(())
}

/// Lists the cache root once and reads every narinfo in it.
pub async fn list_and_read(backend: &Arc<dyn CacheBackend>) -> Result<Listing, BackendError> {
    let root = backend.list("").await?;
    let mut listing = Listing::default();
    read_narinfos(backend, narinfo_names(&root), &mut listing).await?;
    listing.root = root;
    listing.unreadable.sort();
    Ok(listing)
}
