//! Deleting a [`Plan`] in an order that keeps the cache closure-complete at every instant, so
//! a GC killed at any point leaves a cache every client can use and the next GC finishes:
//!
//! 1. dropped generation records (a root disappears before anything it protected);
//! 2. garbage narinfos in waves, referrers before references: a narinfo is deleted only once
//!    every garbage narinfo referring to it is gone (no live one refers to it, or it would be
//!    live), so every narinfo left names references that are still there;
//! 3. NAR files, once no narinfo points at them any more, and the build logs of derivations
//!    no narinfo names as its deriver any more;
//! 4. stale temporaries.
//!
//! Within a step the removals are independent and pipelined, many in flight.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::plan::Plan;
use super::read::{map_in_flight, Listing};
use crate::cache::backend::{BackendError, CacheBackend};
use crate::types::StorePath;

/// Removals in flight.
const REMOVES_IN_FLIGHT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("cancelled")]
    Cancelled,
}

/// Removes `files`, many at once; the first error wins (after the others finished).
async fn remove_all(
    backend: &Arc<dyn CacheBackend>,
    files: Vec<String>,
) -> Result<(), BackendError> {
    let results = map_in_flight(files, REMOVES_IN_FLIGHT, |file| {
        let backend = Arc::clone(backend);
        async move { backend.remove(&file).await }
    })
    .await;
    results.into_iter().collect()
}

/// The garbage narinfos (hash parts) in deletion waves: each wave only after the previous
/// one, and no narinfo before a garbage narinfo that refers to it.
pub fn waves(plan: &Plan, listing: &Listing) -> Vec<Vec<String>> {
    let refs_of = |h: &String| -> Vec<&str> {
        listing.paths[h]
            .info
            .references
            .iter()
            .map(StorePath::hash_part)
            .filter(|r| *r != h && plan.garbage.contains(*r))
            .collect()
    };
    // How many garbage narinfos still refer to each.
    let mut referrers: BTreeMap<&str, usize> =
        plan.garbage.iter().map(|h| (h.as_str(), 0)).collect();
    for h in &plan.garbage {
        for r in refs_of(h) {
            *referrers.get_mut(r).expect("garbage") += 1;
        }
    }
    let mut waves = Vec::new();
    let mut ready: Vec<String> = referrers
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(h, _)| (*h).to_owned())
        .collect();
    let mut left = plan.garbage.len();
    while left > 0 {
        if ready.is_empty() {
            // Only a reference cycle (which Nix never makes) gets here: nothing in it is live,
            // so its order cannot break a live closure.
            ready = referrers
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(h, _)| (*h).to_owned())
                .collect();
            for h in &ready {
                referrers.insert(plan.garbage.get(h).expect("garbage").as_str(), 0);
            }
        }
        let mut next = Vec::new();
        for h in &ready {
            for r in refs_of(h) {
                let n = referrers.get_mut(r).expect("garbage");
                if *n > 0 {
                    *n -= 1;
                    if *n == 0 {
                        next.push(r.to_owned());
                    }
                }
            }
        }
        left -= ready.len();
        waves.push(std::mem::replace(&mut ready, next));
    }
    waves
}

/// Deletes what `plan` says, in the order above. Checks `cancel` between waves: stopping
/// there leaves a consistent cache.
pub async fn sweep(
    backend: &Arc<dyn CacheBackend>,
    plan: &Plan,
    listing: &Listing,
    cancel: &CancellationToken,
) -> Result<(), SweepError> {
    let check = || {
        if cancel.is_cancelled() {
            Err(SweepError::Cancelled)
        } else {
            Ok(())
        }
    };
    check()?;
    remove_all(backend, plan.dropped_records.clone()).await?;
    for wave in waves(plan, listing) {
        check()?;
        let files = wave.into_iter().map(|h| format!("{h}.narinfo")).collect();
        remove_all(backend, files).await?;
    }
    check()?;
    let files = plan.nars.iter().chain(&plan.logs);
    remove_all(backend, files.map(|(n, _)| n.clone()).collect()).await?;
    remove_all(backend, plan.temporaries.clone()).await?;
    Ok(())
}
