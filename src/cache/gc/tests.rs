//! GC against a real directory ([`LocalBackend`]): what is kept and deleted, dry runs, and a
//! GC cut off after every possible number of removals.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::cache::backend::{BackendError, CacheBackend, Entry, LocalBackend, Upload};
use crate::cache::generations::{write_generation, write_pin, Generation, Pin};
use crate::cache::{NarHash, NarInfo, SigningKey};
use crate::config::RetentionSettings;
use crate::types::StorePath;

const HOUR: u64 = 3600;

struct Bed {
    dir: tempfile::TempDir,
    backend: Arc<dyn CacheBackend>,
    key: SigningKey,
    n: usize,
}

fn retention(keep: usize) -> RetentionSettings {
    RetentionSettings {
        keep_generations: NonZeroUsize::new(keep).unwrap(),
        keep_days: 0,
        grace: Duration::from_secs(HOUR),
        gc_after_publish: true,
    }
}

fn set_age(path: &Path, age: u64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age))
        .unwrap();
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("nar")).unwrap();
        let (secret, _) = crate::cache::generate_keypair("gc-test-1").unwrap();
        Bed {
            backend: Arc::new(LocalBackend::new(dir.path().to_owned())),
            dir,
            key: secret.parse().unwrap(),
            n: 0,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// A path with a NAR and a signed narinfo, both written `age` seconds ago.
    fn add(&mut self, name: &str, refs: &[&StorePath], age: u64) -> StorePath {
        self.n += 1;
        let hash: String = format!("{:0>32}", self.n)
            .chars()
            .map(|c| if c == '0' { 'a' } else { c })
            .collect();
        let path: StorePath = format!("/nix/store/{hash}-{name}").parse().unwrap();
        let nar = format!("nar/{hash}.nar");
        let contents = format!("nar of {name}").repeat(10);
        std::fs::write(self.root().join(&nar), &contents).unwrap();
        let mut info = NarInfo {
            store_path: path.clone(),
            url: nar.clone(),
            compression: "none".into(),
            file_hash: None,
            file_size: Some(contents.len() as u64),
            nar_hash: NarHash::digest(contents.as_bytes()),
            nar_size: contents.len() as u64,
            references: refs.iter().map(|r| (*r).clone()).collect(),
            deriver: None,
            sigs: vec![],
            ca: None,
        };
        info.references.sort();
        info.sign(&self.key);
        let file = self.root().join(format!("{hash}.narinfo"));
        std::fs::write(&file, info.to_string()).unwrap();
        set_age(&file, age);
        set_age(&self.root().join(&nar), age);
        path
    }

    async fn generation(&self, machine: &str, toplevel: &StorePath, days_ago: i64, run: i64) {
        let now = chrono::Utc::now().timestamp();
        let g = Generation {
            farm: "testfarm".into(),
            machine: machine.parse().unwrap(),
            toplevel: toplevel.clone(),
            rev: None,
            time: now - days_ago * 86_400,
            run,
            sigs: vec![],
        };
        write_generation(&self.backend, g, std::slice::from_ref(&self.key))
            .await
            .unwrap();
    }

    fn has(&self, p: &StorePath) -> bool {
        self.root()
            .join(format!("{}.narinfo", p.hash_part()))
            .exists()
    }

    /// Every narinfo's NAR and references are there.
    fn closure_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for e in std::fs::read_dir(self.root()).unwrap().flatten() {
            let name = e.file_name().into_string().unwrap();
            if !name.ends_with(".narinfo") {
                continue;
            }
            let info: NarInfo = std::fs::read_to_string(e.path()).unwrap().parse().unwrap();
            if !self.root().join(&info.url).exists() {
                problems.push(format!("{name}: NAR gone"));
            }
            for r in &info.references {
                if !self.has(r) {
                    problems.push(format!("{name}: reference {r} gone"));
                }
            }
        }
        problems
    }

    fn files(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack = vec![self.root()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(self.root()).unwrap().to_owned();
                    out.insert(rel.display().to_string());
                }
            }
        }
        out
    }
}

/// Three generations of one machine over a shared glibc, a pin, fresh and old leftovers.
async fn fleet(bed: &mut Bed) -> Vec<StorePath> {
    let glibc = bed.add("glibc", &[], 5 * HOUR);
    let bash1 = bed.add("bash-1", &[&glibc], 5 * HOUR);
    let sys1 = bed.add("system-1", &[&bash1, &glibc], 5 * HOUR);
    let bash2 = bed.add("bash-2", &[&glibc], 4 * HOUR);
    let sys2 = bed.add("system-2", &[&bash2], 4 * HOUR);
    let sys3 = bed.add("system-3", &[&bash2], 3 * HOUR);
    let pinned_dep = bed.add("pinned-dep", &[], 5 * HOUR);
    let pinned = bed.add("pinned", &[&pinned_dep], 5 * HOUR);
    let stray = bed.add("stray", &[&glibc], 5 * HOUR);
    let fresh = bed.add("fresh", &[&bash1], 0);
    bed.generation("alpha", &sys1, 3, 1).await;
    bed.generation("alpha", &sys2, 2, 2).await;
    bed.generation("alpha", &sys3, 1, 3).await;
    let pin = Pin {
        name: "keep".parse().unwrap(),
        path: pinned.clone(),
        time: 0,
        sigs: vec![],
    };
    write_pin(&bed.backend, pin, std::slice::from_ref(&bed.key))
        .await
        .unwrap();
    // An orphan NAR, and temporaries old and new.
    std::fs::write(bed.root().join("nar/orphan.nar"), "x").unwrap();
    set_age(&bed.root().join("nar/orphan.nar"), 5 * HOUR);
    let old_tmp = bed.root().join("nar/.tmp-farmd-old");
    std::fs::write(&old_tmp, "x").unwrap();
    set_age(&old_tmp, 5 * HOUR);
    std::fs::write(bed.root().join(".tmp-farmd-new"), "x").unwrap();
    vec![
        glibc, bash1, sys1, bash2, sys2, sys3, pinned_dep, pinned, stray, fresh,
    ]
}

#[tokio::test]
async fn gc_keeps_the_closures_of_kept_generations_pins_and_fresh_paths() {
    let mut bed = Bed::new();
    let p = fleet(&mut bed).await;
    let [glibc, bash1, sys1, bash2, sys2, sys3, pinned_dep, pinned, stray, fresh] =
        <[StorePath; 10]>::try_from(p).unwrap();
    let cancel = CancellationToken::new();
    let report = collect(&bed.backend, "test", &retention(2), false, &cancel)
        .await
        .unwrap();
    for kept in [&glibc, &bash2, &sys2, &sys3, &pinned_dep, &pinned, &fresh] {
        assert!(bed.has(kept), "{kept} was deleted");
    }
    // bash-1 is only alive through the fresh path.
    assert!(bed.has(&bash1));
    for gone in [&sys1, &stray] {
        assert!(!bed.has(gone), "{gone} was kept");
    }
    assert_eq!(report.deleted, vec![sys1.clone(), stray.clone()]);
    assert_eq!(report.deleted_nars, 3, "{report:#?}");
    assert_eq!(report.orphan_nars, 1);
    assert_eq!(report.records_deleted.len(), 1);
    assert!(report.records_deleted[0].starts_with("farmd/machines/alpha/"));
    assert_eq!(report.temporaries_removed, 1);
    assert_eq!((report.generations_kept, report.pins), (2, 1));
    let alpha = &report.machines[0];
    assert_eq!((alpha.generations_kept, alpha.generations_dropped), (2, 1));
    assert_eq!(alpha.freed_paths, 1, "system-1 (bash-1 is kept by `fresh`)");
    assert_eq!(alpha.kept_paths, 4, "system-2, system-3, bash-2, glibc");
    let files = bed.files();
    assert!(!files.contains("nar/orphan.nar"));
    assert!(!files.contains("nar/.tmp-farmd-old"));
    assert!(files.contains(".tmp-farmd-new"));
    assert_eq!(bed.closure_problems(), Vec::<String>::new());

    // Nothing left to do.
    let again = collect(&bed.backend, "test", &retention(2), false, &cancel)
        .await
        .unwrap();
    assert_eq!(again.deleted_paths + again.deleted_nars, 0, "{again:#?}");
}

#[tokio::test]
async fn a_dry_run_deletes_nothing_and_reports_what_a_real_run_deletes() {
    let mut bed = Bed::new();
    fleet(&mut bed).await;
    let before = bed.files();
    let cancel = CancellationToken::new();
    let dry = collect(&bed.backend, "test", &retention(1), true, &cancel)
        .await
        .unwrap();
    assert_eq!(bed.files(), before);
    assert!(dry.dry_run && dry.deleted_paths > 0);
    let real = collect(&bed.backend, "test", &retention(1), false, &cancel)
        .await
        .unwrap();
    assert_eq!(dry.deleted, real.deleted);
    assert_eq!(dry.records_deleted, real.records_deleted);
    assert_eq!(
        (dry.deleted_nars, dry.freed_bytes),
        (real.deleted_nars, real.freed_bytes)
    );
    let deleted: BTreeSet<String> = before.difference(&bed.files()).cloned().collect();
    for p in &real.deleted {
        assert!(deleted.contains(&format!("{}.narinfo", p.hash_part())));
    }
}

#[tokio::test]
async fn keep_days_keeps_young_generations_beyond_keep_generations() {
    let mut bed = Bed::new();
    let a = bed.add("system-a", &[], 5 * HOUR);
    let b = bed.add("system-b", &[], 5 * HOUR);
    bed.generation("beta", &a, 20, 1).await;
    bed.generation("beta", &b, 2, 2).await;
    let mut r = retention(1);
    r.keep_days = 14;
    let cancel = CancellationToken::new();
    collect(&bed.backend, "test", &r, false, &cancel)
        .await
        .unwrap();
    assert!(!bed.has(&a) && bed.has(&b));
    // Within keep_days both stay.
    let c = bed.add("system-c", &[], 5 * HOUR);
    bed.generation("beta", &c, 1, 3).await;
    collect(&bed.backend, "test", &r, false, &cancel)
        .await
        .unwrap();
    assert!(bed.has(&b) && bed.has(&c));
}

/// A backend whose removals start failing after `left` of them: a GC killed at that moment.
#[derive(Debug)]
struct Cut {
    inner: LocalBackend,
    left: AtomicUsize,
}

#[async_trait]
impl CacheBackend for Cut {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, BackendError> {
        self.inner.list(dir).await
    }
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.read(path).await
    }
    async fn create(&self, path: &str) -> Result<Box<dyn Upload>, BackendError> {
        self.inner.create(path).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), BackendError> {
        self.inner.rename(from, to).await
    }
    async fn remove(&self, path: &str) -> Result<(), BackendError> {
        let left = self.left.load(Ordering::SeqCst);
        if left == 0
            || self
                .left
                .compare_exchange(left, left - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
        {
            return Err(BackendError::Remote {
                op: "remove",
                path: path.to_owned(),
                host: "test".into(),
                message: "cut off".into(),
            });
        }
        self.inner.remove(path).await
    }
    async fn mkdir_all(&self, dir: &str) -> Result<(), BackendError> {
        self.inner.mkdir_all(dir).await
    }
    async fn write_atomic(&self, path: &str, contents: Bytes) -> Result<u64, BackendError> {
        self.inner.write_atomic(path, contents).await
    }
}

#[tokio::test]
async fn a_gc_cut_off_after_any_removal_leaves_a_complete_cache_and_the_next_one_finishes() {
    let cancel = CancellationToken::new();
    let mut reference = Bed::new();
    fleet(&mut reference).await;
    collect(&reference.backend, "test", &retention(1), false, &cancel)
        .await
        .unwrap();
    let expected: BTreeSet<String> = reference
        .files()
        .into_iter()
        .filter(|f| !f.contains("farmd/") && !f.contains(".tmp-farmd-"))
        .collect();
    let mut cut_at = 0;
    loop {
        let mut bed = Bed::new();
        fleet(&mut bed).await;
        let cut: Arc<dyn CacheBackend> = Arc::new(Cut {
            inner: LocalBackend::new(bed.root()),
            left: AtomicUsize::new(cut_at),
        });
        let finished = collect(&cut, "test", &retention(1), false, &cancel)
            .await
            .is_ok();
        assert_eq!(
            bed.closure_problems(),
            Vec::<String>::new(),
            "cut after {cut_at} removals"
        );
        collect(&bed.backend, "test", &retention(1), false, &cancel)
            .await
            .unwrap();
        let files: BTreeSet<String> = bed
            .files()
            .into_iter()
            .filter(|f| !f.contains("farmd/") && !f.contains(".tmp-farmd-"))
            .collect();
        assert_eq!(files, expected, "cut after {cut_at} removals");
        if finished {
            break;
        }
        cut_at += 1;
    }
    assert!(cut_at > 5, "the fleet needs several removals ({cut_at})");
}

#[tokio::test]
async fn an_unreadable_root_stops_gc_before_it_deletes_anything() {
    let mut bed = Bed::new();
    fleet(&mut bed).await;
    std::fs::write(bed.root().join("farmd/pins/broken.json"), "{").unwrap();
    let before = bed.files();
    let err = collect(
        &bed.backend,
        "test",
        &retention(1),
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("farmd/pins/broken.json"),
        "{err:#}"
    );
    assert_eq!(bed.files(), before);
}

#[tokio::test]
async fn another_farms_machine_of_the_same_name_is_not_pushed_out() {
    let mut bed = Bed::new();
    let theirs = bed.add("their-alpha", &[], 5 * HOUR);
    let g = Generation {
        farm: "otherfarm".into(),
        machine: "alpha".parse().unwrap(),
        toplevel: theirs.clone(),
        rev: None,
        time: chrono::Utc::now().timestamp() - 30 * 86_400,
        run: 7,
        sigs: vec![],
    };
    write_generation(&bed.backend, g, std::slice::from_ref(&bed.key))
        .await
        .unwrap();
    let mut ours = Vec::new();
    for run in 1..=3 {
        let p = bed.add(&format!("our-alpha-{run}"), &[], 5 * HOUR);
        bed.generation("alpha", &p, 10 - run, run).await;
        ours.push(p);
    }
    let report = collect(
        &bed.backend,
        "test",
        &retention(1),
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(bed.has(&theirs), "{report:#?}");
    assert!(!bed.has(&ours[0]) && !bed.has(&ours[1]) && bed.has(&ours[2]));
    assert_eq!(report.machines.len(), 2);
}

#[tokio::test]
async fn a_cache_without_any_root_is_not_emptied() {
    let mut bed = Bed::new();
    bed.add("copied-by-nix-copy", &[], 5 * HOUR);
    let before = bed.files();
    let err = collect(
        &bed.backend,
        "test",
        &retention(1),
        false,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("has no GC roots"), "{err:#}");
    assert_eq!(bed.files(), before);
}
