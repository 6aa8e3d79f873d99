//! What one GC did (or, dry, would do): the plain, serialisable [`GcReport`] that
//! `farmctl cache gc` prints and the run record carries.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cache::publish::bytes;
use crate::types::{MachineName, StorePath};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    pub cache: String,
    /// Nothing was deleted; the report says what would have been.
    pub dry_run: bool,
    /// Narinfos in the cache before.
    pub narinfos: usize,
    pub generations_kept: usize,
    pub pins: usize,
    /// Generation record files dropped by the retention policy.
    pub records_deleted: Vec<String>,
    /// Store paths whose narinfo was deleted, sorted (empty in the run record: see
    /// `deleted_paths`).
    #[serde(default)]
    pub deleted: Vec<StorePath>,
    pub deleted_paths: usize,
    /// NAR files deleted (of garbage paths, and orphans no narinfo pointed to).
    pub deleted_nars: usize,
    pub orphan_nars: usize,
    /// Build logs deleted (their derivation's outputs are gone).
    #[serde(default)]
    pub deleted_logs: usize,
    /// Bytes of the NAR files and logs deleted.
    pub freed_bytes: u64,
    /// Narinfos, and NAR and log bytes, that stay.
    pub kept_paths: usize,
    pub kept_bytes: u64,
    pub temporaries_removed: usize,
    /// Kept roots whose narinfo the cache does not have.
    pub missing_roots: Vec<StorePath>,
    /// Narinfos that do not parse: left alone.
    pub unreadable: Vec<String>,
    pub machines: Vec<MachineGc>,
    /// Listing and reading every narinfo and root, and marking.
    pub mark_ms: u64,
    pub sweep_ms: u64,
}

/// One machine's share: what its kept generations hold, what its dropped ones freed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineGc {
    /// The farm that wrote its records.
    pub farm: String,
    pub machine: MachineName,
    pub generations_kept: usize,
    pub generations_dropped: usize,
    /// The closure of its kept generations.
    pub kept_paths: usize,
    /// Their compressed NAR bytes.
    pub kept_bytes: u64,
    /// Paths of its dropped generations that nothing else keeps.
    pub freed_paths: usize,
    pub freed_bytes: u64,
}

impl fmt::Display for GcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, nars) = if self.dry_run {
            ("would delete", "would free")
        } else {
            ("deleted", "freed")
        };
        for p in &self.deleted {
            writeln!(f, "{verb} {p}")?;
        }
        for r in &self.records_deleted {
            writeln!(f, "{verb} generation record {r}")?;
        }
        let farms: std::collections::BTreeSet<&str> =
            self.machines.iter().map(|m| m.farm.as_str()).collect();
        for m in &self.machines {
            let farm = if farms.len() > 1 {
                format!(" (farm {})", m.farm)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {}{farm}: {} generations kept ({} paths, {}), {} dropped ({} paths, {} {nars})",
                m.machine,
                m.generations_kept,
                m.kept_paths,
                bytes(m.kept_bytes),
                m.generations_dropped,
                m.freed_paths,
                bytes(m.freed_bytes),
            )?;
        }
        for r in &self.missing_roots {
            writeln!(f, "  warning: root {r} is not in the cache")?;
        }
        for u in &self.unreadable {
            writeln!(f, "  warning: {u} does not parse; left alone")?;
        }
        writeln!(f, "{}", summary_line(self))
    }
}

/// `gc of URL: 120 of 800 paths deleted, 12 NARs (3 orphans), 1.2 GiB freed, 3.4 GiB kept in
/// 680 paths; 9 generations and 1 pin kept`.
pub fn summary_line(r: &GcReport) -> String {
    format!(
        "gc{} of {}: {} of {} paths {}, {} NARs ({} orphans), {} logs, {} {}, {} kept in {} paths; \
         {} generations and {} pins kept, {} records dropped, {} temporaries removed \
         (mark {:.1} s, sweep {:.1} s)",
        if r.dry_run { " (dry run)" } else { "" },
        r.cache,
        r.deleted_paths,
        r.narinfos,
        if r.dry_run { "to delete" } else { "deleted" },
        r.deleted_nars,
        r.orphan_nars,
        r.deleted_logs,
        bytes(r.freed_bytes),
        if r.dry_run { "to free" } else { "freed" },
        bytes(r.kept_bytes),
        r.kept_paths,
        r.generations_kept,
        r.pins,
        r.records_deleted.len(),
        r.temporaries_removed,
        r.mark_ms as f64 / 1000.0,
        r.sweep_ms as f64 / 1000.0,
    )
}
