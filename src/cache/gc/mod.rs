//! Garbage collection of the binary cache: keep the closures of the roots the retention
//! policy keeps, delete the rest, closure-complete at every instant.
//!
//! One GC, top to bottom ([`collect`]):
//!
//! ```text
//!  list "", "nar", "log" once ─► read every narinfo, 128 in flight  read::Listing
//!  read farmd/machines/*/*.json and farmd/pins/*.json               generations::Roots
//!  list "" again: narinfos that appeared meanwhile are roots too
//!  plan: retention keeps records ─► mark from roots + fresh paths   plan::Plan
//!  sweep: records, narinfos (referrers first), NARs and logs,
//!         temporaries                                               (not on a dry run)
//!                                                                   ─► GcReport
//! ```
//!
//! The roots are the generation records on the cache ([`crate::cache::generations`]), never
//! local state. Anything written within the grace period is a root as well, because another
//! farm's publish may be about to write a narinfo that refers to what it found cached. This
//! farm's own publishes are kept apart by [`CacheLock`].
//!
//! It owns the policy and the order of deletion; the transport is [`crate::cache::backend`]'s.

mod lock;
mod plan;
pub mod read;
mod report;
mod sweep;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

pub use lock::CacheLock;
pub use report::{summary_line, GcReport, MachineGc};

use super::backend::CacheBackend;
use super::generations::{self, Generation};
use crate::config::{CacheSettings, RetentionSettings};

/// Collects garbage on an open backend (dry: only says what it would delete). The caller holds
/// the [`CacheLock`].
pub async fn collect(
    backend: &Arc<dyn CacheBackend>,
    url: &str,
    retention: &RetentionSettings,
    dry_run: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<GcReport> {
    let started = Instant::now();
    let in_cache = |what: &str| format!("cannot {what} the binary cache `{url}`");
    let (listing, nar, log) = tokio::join!(
        read::list_and_read(backend),
        backend.list("nar"),
        generations::list_if_exists(backend, "log")
    );
    let mut listing = listing.with_context(|| in_cache("read"))?;
    let nar = nar.with_context(|| in_cache("list"))?;
    let log = log.with_context(|| in_cache("list"))?;
    if cancel.is_cancelled() {
        return Err(crate::run::Cancelled.into());
    }
    let roots = generations::read_roots(backend, read::READS_IN_FLIGHT).await?;
    if roots.generations.is_empty() && roots.pins.is_empty() && !listing.paths.is_empty() {
        // A cache filled by `nix copy`, `farmctl publish` or a farmd before generation
        // records: collecting would empty it.
        anyhow::bail!(
            "the binary cache `{url}` has no GC roots (no generation records under `{}/` and no \
             pins under `{}/`), so GC would delete all {} paths in it; let a farmd run publish \
             first, or keep paths with `farmctl cache pin STORE_PATH --name NAME`",
            generations::MACHINES_DIR,
            generations::PINS_DIR,
            listing.paths.len()
        );
    }

    // Narinfos written since the first listing (by a publish elsewhere): read them, so they
    // and what they refer to count as live (they are inside the grace period).
    let again = backend.list("").await.with_context(|| in_cache("list"))?;
    let new: Vec<_> = read::narinfo_names(&again)
        .into_iter()
        .filter(|(h, _)| !listing.paths.contains_key(h))
        .filter(|(h, _)| !listing.unreadable.contains(&format!("{h}.narinfo")))
        .collect();
    if !new.is_empty() {
        tracing::info!(
            count = new.len(),
            "narinfos appeared during GC; kept as fresh"
        );
        let mut added = read::Listing::default();
        read::read_narinfos(backend, new, &mut added)
            .await
            .with_context(|| in_cache("read"))?;
        for (hash, mut cached) in added.paths {
            cached.mtime = None; // fresh whatever its clock says
            listing.paths.insert(hash, cached);
        }
    }

    let plan = plan::plan(&listing, &nar, &log, &roots, retention, SystemTime::now());
    let mark_ms = started.elapsed().as_millis() as u64;
    let mut report = GcReport {
        cache: url.to_owned(),
        dry_run,
        narinfos: listing.paths.len() + listing.unreadable.len(),
        generations_kept: plan.kept_records,
        pins: plan.pins,
        records_deleted: plan.dropped_records.clone(),
        deleted: plan
            .garbage
            .iter()
            .map(|h| listing.paths[h].info.store_path.clone())
            .collect(),
        deleted_paths: plan.garbage.len(),
        deleted_nars: plan.nars.len(),
        orphan_nars: plan.orphan_nars,
        deleted_logs: plan.logs.len(),
        freed_bytes: plan
            .nars
            .iter()
            .chain(&plan.logs)
            .map(|(_, size)| size)
            .sum(),
        kept_paths: plan.live.len() + listing.unreadable.len(),
        kept_bytes: plan.kept_bytes,
        temporaries_removed: plan.temporaries.len(),
        missing_roots: plan.missing_roots.clone(),
        unreadable: listing.unreadable.clone(),
        machines: plan.machines.clone(),
        mark_ms,
        sweep_ms: 0,
    };
    report.deleted.sort();
    tracing::info!(
        cache = %url,
        narinfos = report.narinfos,
        garbage = report.deleted_paths,
        nars = report.deleted_nars,
        records = report.records_deleted.len(),
        mark_ms,
        dry_run,
        "marked"
    );
    if !dry_run {
        let swept = Instant::now();
        match sweep::sweep(backend, &plan, &listing, cancel).await {
            Ok(()) => {}
            Err(sweep::SweepError::Cancelled) => return Err(crate::run::Cancelled.into()),
            Err(sweep::SweepError::Backend(e)) => {
                return Err(anyhow::Error::from(e).context(in_cache("delete garbage from")))
            }
        }
        report.sweep_ms = swept.elapsed().as_millis() as u64;
    }
    tracing::info!("{}", summary_line(&report));
    Ok(report)
}

/// `farmctl cache gc` and the run's GC phase: connect, lock, collect.
pub async fn gc(
    cache: &CacheSettings,
    state_dir: &std::path::Path,
    dry_run: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<GcReport> {
    let settings = super::publish::Settings::load(cache)?;
    let _lock = CacheLock::acquire(state_dir).await?;
    let backend = super::backend::connect(&settings.url, &settings.ssh)
        .await
        .with_context(|| format!("cannot open the binary cache `{}`", settings.url))?;
    collect(
        &backend,
        &settings.url.to_string(),
        &cache.retention,
        dry_run,
        cancel,
    )
    .await
}

/// Writes a signed generation record for each of `generations` (machines whose closure is
/// complete in the cache). Called by the run's publish phase under the [`CacheLock`].
pub async fn record_generations(
    cache: &CacheSettings,
    generations: Vec<Generation>,
) -> anyhow::Result<Vec<Generation>> {
    if generations.is_empty() {
        return Ok(Vec::new());
    }
    let settings = super::publish::Settings::load(cache)?;
    let backend = super::backend::connect(&settings.url, &settings.ssh)
        .await
        .with_context(|| format!("cannot open the binary cache `{}`", settings.url))?;
    let mut written = Vec::new();
    for g in generations {
        let machine = g.machine.clone();
        let g = generations::write_generation(&backend, g, &settings.keys)
            .await
            .with_context(|| {
                format!(
                    "cannot write the generation record of `{machine}` to `{}`",
                    settings.url
                )
            })?;
        written.push(g);
    }
    Ok(written)
}

#[cfg(test)]
mod tests;
