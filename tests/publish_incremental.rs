//! The publisher driven in-process (through `publish_closure`) on a real fleet's closures, with
//! the local-directory backend wrapped to count every operation: what is cached costs no
//! round trip per path, a bump uploads only what changed, a corrupt path is refused while
//! independent paths publish, and build logs reach `nix log` through nginx.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use common::{closure_problems, CacheBed, Nginx};
use nixfarm::cache::backend::{BackendError, CacheBackend, CacheUrl, Entry, LocalBackend, Upload};
use nixfarm::cache::publish::{self, PublishSummary, Settings};
use nixfarm::cache::NarHash;
use nixfarm::config::Compression;
use nixfarm::nix::NixOptions;
use nixfarm::types::StorePath;
use tokio_util::sync::CancellationToken;

/// A [`LocalBackend`] that counts the requests made to it (each would be a round trip).
#[derive(Debug)]
struct Counting {
    inner: LocalBackend,
    lists: AtomicUsize,
    reads: AtomicUsize,
    creates: AtomicUsize,
    others: AtomicUsize,
    /// When set, the first rename of each narinfo finds its temporary file gone, as if another
    /// host's publisher had removed it as stale.
    steal_staged_narinfos: AtomicBool,
    stolen: Mutex<BTreeSet<String>>,
}

impl Counting {
    fn total(&self) -> usize {
        [&self.lists, &self.reads, &self.creates, &self.others]
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .sum()
    }
}

#[async_trait]
impl CacheBackend for Counting {
    async fn list(&self, dir: &str) -> Result<Vec<Entry>, BackendError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(dir).await
    }
    async fn read(&self, path: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read(path).await
    }
    async fn create(&self, path: &str) -> Result<Box<dyn Upload>, BackendError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.create(path).await
    }
    async fn rename(&self, from: &str, to: &str) -> Result<(), BackendError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        if self.steal_staged_narinfos.load(Ordering::SeqCst)
            && to.ends_with(".narinfo")
            && self.stolen.lock().unwrap().insert(to.to_owned())
        {
            self.inner.remove(from).await.unwrap();
        }
        self.inner.rename(from, to).await
    }
    async fn remove(&self, path: &str) -> Result<(), BackendError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.remove(path).await
    }
    async fn mkdir_all(&self, dir: &str) -> Result<(), BackendError> {
        self.others.fetch_add(1, Ordering::SeqCst);
        self.inner.mkdir_all(dir).await
    }
    async fn write_atomic(&self, path: &str, contents: Bytes) -> Result<u64, BackendError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.write_atomic(path, contents).await
    }
}

struct Local {
    bed: CacheBed,
    counting: Arc<Counting>,
    backend: Arc<dyn CacheBackend>,
    settings: Settings,
    nix: NixOptions,
}

impl Local {
    async fn new() -> Local {
        let bed = CacheBed::new();
        std::fs::create_dir_all(bed.cache.join("nar")).unwrap();
        std::fs::create_dir_all(bed.cache.join("log")).unwrap();
        let counting = Arc::new(Counting {
            inner: LocalBackend::new(bed.cache.clone()),
            lists: AtomicUsize::new(0),
            reads: AtomicUsize::new(0),
            creates: AtomicUsize::new(0),
            others: AtomicUsize::new(0),
            steal_staged_narinfos: AtomicBool::new(false),
            stolen: Mutex::new(BTreeSet::new()),
        });
        let settings = Settings {
            url: CacheUrl::File {
                root: bed.cache.clone(),
            },
            ssh: Default::default(),
            keys: Arc::new(publish::load_keys(std::slice::from_ref(&bed.secret_key)).unwrap()),
            compression: Compression::Zstd,
            level: 3,
            jobs: 4,
            priority: 40,
            upload_logs: true,
        };
        let nix = NixOptions {
            options: Vec::new(),
            env: bed
                .fleet
                .env()
                .vars()
                .into_iter()
                .map(|(k, v)| (k.into(), v.into_os_string()))
                .collect(),
        };
        let backend: Arc<dyn CacheBackend> = counting.clone();
        Local {
            bed,
            counting,
            backend,
            settings,
            nix,
        }
    }

    async fn publish(&self, roots: &[String], logs: &[(StorePath, PathBuf)]) -> PublishSummary {
        let roots: Vec<StorePath> = roots.iter().map(|r| r.parse().unwrap()).collect();
        let cancel = CancellationToken::new();
        let closure = publish::query_closure(&self.nix, &roots, &cancel)
            .await
            .unwrap();
        self.publish_closure(&roots, closure, logs).await
    }

    async fn publish_closure(
        &self,
        roots: &[StorePath],
        closure: std::collections::BTreeMap<StorePath, nixfarm::nix::PathInfo>,
        logs: &[(StorePath, PathBuf)],
    ) -> PublishSummary {
        let cancel = CancellationToken::new();
        publish::publish_closure(
            &self.backend,
            &self.settings,
            &self.nix,
            roots,
            closure,
            logs,
            &cancel,
            &|_| {},
        )
        .await
        .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_skips_paths_already_cached_without_a_request_per_path() {
    let local = Local::new().await;
    let toplevels = local.bed.toplevels();
    let first = local.publish(&toplevels, &[]).await;
    assert_eq!(first.uploaded_paths, first.closure_paths);
    assert!(first.closure_paths >= 10, "{first:?}");

    let before = local.counting.total();
    let second = local.publish(&toplevels, &[]).await;
    assert_eq!(
        (second.uploaded_paths, second.already_cached),
        (0, first.closure_paths)
    );
    assert!(second
        .roots
        .iter()
        .all(|r| r.complete && r.uploaded_paths == 0));
    // One listing of the root, one of nar/ (stale temporaries), one read of nix-cache-info.
    assert_eq!(local.counting.total() - before, 3, "{:?}", local.counting);

    // After a bump only the changed paths upload: glibc and what depends on it.
    let old = local.bed.closure(&toplevels);
    local.bed.fleet.bump();
    let checkout = local.bed.fleet.checkout();
    local
        .bed
        .fleet
        .env()
        .nix(["flake", "update", checkout.to_str().unwrap()]);
    let bumped: Vec<String> = local
        .bed
        .fleet
        .machine_names()
        .iter()
        .map(|m| local.bed.fleet.build(&checkout, m).unwrap())
        .collect();
    let new = local.bed.closure(&bumped);
    let changed = new.difference(&old).count();
    assert!(changed > 0 && changed < new.len());
    let third = local.publish(&bumped, &[]).await;
    assert_eq!(third.uploaded_paths, changed, "{third:?}");
    assert_eq!(third.already_cached, new.len() - changed);
    assert_eq!(closure_problems(&local.bed.cache), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_path_is_refused_and_holds_back_only_its_referrers() {
    let local = Local::new().await;
    let toplevels = local.bed.toplevels();
    let roots: Vec<StorePath> = toplevels.iter().map(|r| r.parse().unwrap()).collect();
    let cancel = CancellationToken::new();
    let mut closure = publish::query_closure(&local.nix, &roots, &cancel)
        .await
        .unwrap();
    // The store "recorded" another hash for the firmware than its contents have: as if the
    // file had been changed on disk after registration.
    let firmware = closure
        .keys()
        .find(|p| p.name().starts_with("linux-firmware"))
        .unwrap()
        .clone();
    closure.get_mut(&firmware).unwrap().nar_hash = NarHash::digest(b"something else");
    let summary = local.publish_closure(&roots, closure.clone(), &[]).await;

    assert_eq!(summary.failed.len(), 1);
    let err = &summary.failed[0].error;
    assert!(err.contains(firmware.as_str()), "{err}");
    assert!(
        err.contains("nix-store --verify --check-contents --repair"),
        "{err}"
    );
    assert!(!local
        .bed
        .cache
        .join(format!("{}.narinfo", firmware.hash_part()))
        .exists());
    // Every referrer (kernels, toplevels) is held back; the rest (glibc, bash, …) published.
    let held: Vec<&StorePath> = summary.held_back.iter().map(|h| &h.path).collect();
    assert!(
        held.iter().any(|p| p.name().starts_with("linux-6.1.0")),
        "{held:?}"
    );
    assert!(
        held.iter().any(|p| p.name().starts_with("nixos-system")),
        "{held:?}"
    );
    assert!(summary.uploaded_paths > 0);
    assert!(summary.roots.iter().all(|r| !r.complete));
    assert!(!summary.is_complete());
    assert_eq!(closure_problems(&local.bed.cache), Vec::<String>::new());
    // The corrupt NAR was not renamed into place (held-back referrers' NARs may be there,
    // unreferenced, until GC) and no temporary is left.
    let nars = std::fs::read_dir(local.bed.cache.join("nar"))
        .unwrap()
        .count();
    assert!(
        nars < closure.len(),
        "{nars} NARs for {} paths",
        closure.len()
    );
    assert_eq!(common::temporaries(&local.bed.cache), Vec::<PathBuf>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_logs_are_served_to_nix_log() {
    let local = Local::new().await;
    let toplevel = local.bed.toplevels().remove(0);
    let info = local
        .bed
        .fleet
        .env()
        .nix(["path-info", "--json", &toplevel]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let drv: StorePath = v[0]["deriver"].as_str().unwrap().parse().unwrap();
    // The farm's log file of the machine's build comes first.
    let log_file = local.bed.farm.dir().join("alpha.log");
    std::fs::write(&log_file, "alpha: the farm's own build log\n").unwrap();
    let summary = local
        .publish(std::slice::from_ref(&toplevel), &[(drv.clone(), log_file)])
        .await;
    assert_eq!(summary.logs_uploaded, 1);

    // Nix 2.8's `nix log` takes the output path and finds its deriver in the cache's narinfo,
    // as a fleet machine would ask; `nix-store -l` takes the derivation itself.
    let nginx = Nginx::serve(&local.bed.cache);
    let want = "alpha: the farm's own build log\n";
    let env = local.bed.fleet.env();
    let out = env.nix(["log", "--store", &nginx.url(), &toplevel]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    let out =
        common::run(
            env.command("nix-store")
                .args(["--store", &nginx.url(), "-l", drv.as_str()]),
        );
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
}

/// A staged narinfo can wait for its references longer than another host's publisher leaves
/// temporaries alone; if that one removed it, the narinfo is written again, not the publish
/// failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_narinfo_removed_by_another_cleanup_is_written_again() {
    let local = Local::new().await;
    let toplevels = local.bed.toplevels();
    local
        .counting
        .steal_staged_narinfos
        .store(true, Ordering::SeqCst);
    let summary = local.publish(&toplevels, &[]).await;
    assert_eq!(summary.uploaded_paths, summary.closure_paths, "{summary:?}");
    let stolen = local.counting.stolen.lock().unwrap().len();
    assert_eq!(stolen, summary.closure_paths);
    assert_eq!(closure_problems(&local.bed.cache), Vec::<String>::new());
    assert_eq!(common::temporaries(&local.bed.cache), Vec::<PathBuf>::new());
}
