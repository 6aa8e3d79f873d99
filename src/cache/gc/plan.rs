//! The decision, with no I/O: which generation records the retention policy keeps, the live
//! set marked from the roots through the narinfos' `References`, and everything else that may
//! go. A dry run and a real run compute the same [`Plan`]; only the sweep differs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use super::read::Listing;
use super::report::MachineGc;
use crate::cache::backend::{is_temp_name, Entry};
use crate::cache::generations::{Generation, Roots, LATEST};
use crate::config::RetentionSettings;
use crate::types::{MachineName, StorePath};

#[derive(Debug, Default)]
pub struct Plan {
    /// Generation record files to delete (dropped by the policy).
    pub dropped_records: Vec<String>,
    pub kept_records: usize,
    pub pins: usize,
    /// Hash parts of the narinfos that stay.
    pub live: BTreeSet<String>,
    /// Hash parts of the narinfos to delete.
    pub garbage: BTreeSet<String>,
    /// NAR files to delete (`nar/…`) and their sizes: those of garbage narinfos and those no
    /// narinfo points to.
    pub nars: Vec<(String, u64)>,
    /// Of `nars`, how many no narinfo pointed to even before this GC.
    pub orphan_nars: usize,
    /// Build logs (`log/<drv>`) whose derivation no surviving narinfo names as `Deriver:`.
    pub logs: Vec<(String, u64)>,
    /// Bytes of the NAR files and logs that stay.
    pub kept_bytes: u64,
    /// Stale temporary files to delete.
    pub temporaries: Vec<String>,
    /// Roots whose narinfo is not in the cache (their closure was never complete, or was
    /// damaged by something else).
    pub missing_roots: Vec<StorePath>,
    pub machines: Vec<MachineGc>,
}

/// A machine of a farm.
type Key<'a> = (&'a str, &'a MachineName);

/// Whether a file written at `mtime` is still inside the grace period (unknown: yes).
fn fresh(mtime: Option<SystemTime>, now: SystemTime, grace: Duration) -> bool {
    match mtime {
        Some(t) => now.duration_since(t).map_or(true, |age| age < grace),
        None => true,
    }
}

/// Decides what goes. `nar` and `log` are the listings of `nar/` and `log/`.
pub fn plan(
    listing: &Listing,
    nar: &[Entry],
    log: &[Entry],
    roots: &Roots,
    retention: &RetentionSettings,
    now: SystemTime,
) -> Plan {
    let mut plan = Plan::default();
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let young_since = now_secs - i64::from(retention.keep_days) * 86_400;

    // Retention: per machine of each farm, the newest `keep_generations` and all younger than
    // keep_days. Per farm, because another farm's machine of the same name is another machine:
    // this farm's new generations must not push that one's out. `latest.json` repeats the
    // newest record a farm wrote: always a root, never counted.
    let mut by_machine: BTreeMap<Key, Vec<(&String, &Generation)>> = BTreeMap::new();
    let mut kept: BTreeMap<Key, Vec<&Generation>> = BTreeMap::new();
    let mut dropped: BTreeMap<Key, Vec<&Generation>> = BTreeMap::new();
    let mut kept_count: BTreeMap<Key, usize> = BTreeMap::new();
    for (file, g) in &roots.generations {
        let key = (g.farm.as_str(), &g.machine);
        if file.ends_with(&format!("/{LATEST}")) {
            kept.entry(key).or_default().push(g);
        } else {
            by_machine.entry(key).or_default().push((file, g));
        }
    }
    for (machine, mut records) in by_machine {
        records.sort_by(|a, b| (b.1.time, b.0).cmp(&(a.1.time, a.0)));
        for (i, (file, g)) in records.into_iter().enumerate() {
            if i < retention.keep_generations.get() || g.time >= young_since {
                plan.kept_records += 1;
                kept.entry(machine).or_default().push(g);
                *kept_count.entry(machine).or_default() += 1;
            } else {
                plan.dropped_records.push(file.clone());
                dropped.entry(machine).or_default().push(g);
            }
        }
    }
    // A machine whose only record is its latest.json still has that one generation.
    for machine in kept.keys() {
        kept_count.entry(*machine).or_insert(1);
    }
    plan.pins = roots.pins.len();

    // Mark from every root: kept generations, pins, and every narinfo still inside the grace
    // period (a publish in flight may be about to reference anything it found cached).
    let mut root_hashes: Vec<&str> = Vec::new();
    for g in kept.values().flatten() {
        root_hashes.push(g.toplevel.hash_part());
    }
    for (_, p) in &roots.pins {
        root_hashes.push(p.path.hash_part());
    }
    let mut missing: BTreeSet<StorePath> = BTreeSet::new();
    for g in kept.values().flatten() {
        if !listing.paths.contains_key(g.toplevel.hash_part()) {
            missing.insert(g.toplevel.clone());
        }
    }
    for (_, p) in &roots.pins {
        if !listing.paths.contains_key(p.path.hash_part()) {
            missing.insert(p.path.clone());
        }
    }
    plan.missing_roots = missing.into_iter().collect();
    for (hash, c) in &listing.paths {
        if fresh(c.mtime, now, retention.grace) {
            root_hashes.push(hash);
        }
    }
    plan.live = closure(listing, root_hashes);
    plan.garbage = listing
        .paths
        .keys()
        .filter(|h| !plan.live.contains(*h))
        .cloned()
        .collect();

    // NAR files: a NAR stays while any surviving narinfo points at it (two paths with the same
    // contents share one), or while it is fresh (its narinfo may be on its way).
    let live_urls: BTreeSet<&str> = plan
        .live
        .iter()
        .map(|h| listing.paths[h].info.url.as_str())
        .chain(listing.unreadable_urls.iter().map(String::as_str))
        .collect();
    let garbage_urls: BTreeSet<&str> = plan
        .garbage
        .iter()
        .map(|h| listing.paths[h].info.url.as_str())
        .collect();
    for e in nar.iter().filter(|e| !e.is_dir && !is_temp_name(&e.name)) {
        let url = format!("nar/{}", e.name);
        if live_urls.contains(url.as_str()) || fresh(e.mtime, now, retention.grace) {
            plan.kept_bytes += e.size;
            continue;
        }
        let of_garbage = garbage_urls.contains(url.as_str());
        // A narinfo we could not parse might point here: delete orphans only when every
        // narinfo told us its URL.
        if of_garbage || !listing.unreadable_without_url {
            plan.orphan_nars += usize::from(!of_garbage);
            plan.nars.push((url, e.size));
        } else {
            plan.kept_bytes += e.size;
        }
    }

    // Build logs: `nix log` on a fleet machine asks for the log of a path's deriver, so a
    // log stays while a surviving narinfo names its derivation. Without any unreadable
    // narinfo (it might name one), like orphan NARs.
    let derivers: BTreeSet<&str> = plan
        .live
        .iter()
        .filter_map(|h| listing.paths[h].info.deriver.as_ref())
        .map(StorePath::base_name)
        .collect();
    for e in log.iter().filter(|e| !e.is_dir && !is_temp_name(&e.name)) {
        if derivers.contains(e.name.as_str())
            || fresh(e.mtime, now, retention.grace)
            || !listing.unreadable.is_empty()
        {
            plan.kept_bytes += e.size;
        } else {
            plan.logs.push((format!("log/{}", e.name), e.size));
        }
    }

    // Temporaries of interrupted uploads, in the root, nar/ and the record directories.
    let temps = listing
        .root
        .iter()
        .map(|e| (e.name.clone(), e))
        .chain(nar.iter().map(|e| (format!("nar/{}", e.name), e)))
        .chain(log.iter().map(|e| (format!("log/{}", e.name), e)))
        .chain(roots.temporaries.iter().map(|(p, e)| (p.clone(), e)));
    for (path, e) in temps {
        if !e.is_dir && is_temp_name(&e.name) && !fresh(e.mtime, now, retention.grace) {
            plan.temporaries.push(path);
        }
    }

    // Per machine: what its kept generations hold, what its dropped ones free.
    let machines: BTreeSet<Key> = kept.keys().chain(dropped.keys()).copied().collect();
    for machine in machines {
        let kept_set = closure(
            listing,
            kept.get(&machine)
                .into_iter()
                .flatten()
                .map(|g| g.toplevel.hash_part()),
        );
        let dropped_set = closure(
            listing,
            dropped
                .get(&machine)
                .into_iter()
                .flatten()
                .map(|g| g.toplevel.hash_part()),
        );
        let bytes = |hashes: &mut dyn Iterator<Item = &String>| -> u64 {
            hashes
                .map(|h| listing.paths[h].info.file_size.unwrap_or(0))
                .sum()
        };
        let freed: Vec<&String> = dropped_set
            .iter()
            .filter(|h| plan.garbage.contains(*h))
            .collect();
        plan.machines.push(MachineGc {
            farm: machine.0.to_owned(),
            machine: machine.1.clone(),
            generations_kept: kept_count.get(&machine).copied().unwrap_or(0),
            generations_dropped: dropped.get(&machine).map_or(0, Vec::len),
            kept_paths: kept_set.len(),
            kept_bytes: bytes(&mut kept_set.iter()),
            freed_paths: freed.len(),
            freed_bytes: bytes(&mut freed.into_iter()),
        });
    }
    plan
}

/// The hash parts reachable from `from` through the narinfos' references (only those with a
/// narinfo in the cache).
pub fn closure<'a>(listing: &Listing, from: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = from.into_iter().collect();
    while let Some(hash) = stack.pop() {
        let Some((key, cached)) = listing.paths.get_key_value(hash) else {
            continue;
        };
        if seen.insert(key.clone()) {
            stack.extend(cached.info.references.iter().map(StorePath::hash_part));
        }
    }
    seen
}
