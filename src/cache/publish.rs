//! The publish phase: the closures of some store paths into the static binary cache, as
//! `nix copy --to file://…` would lay them out, but streaming over SFTP, incremental without a
//! round trip per path, and closure-complete at every instant.
//!
//! One publish, top to bottom ([`publish`]):
//!
//! ```text
//!  keys (SigningKey::load each)  ─┐
//!  nix path-info --json --recursive ROOTS ─► closure: BTreeMap<StorePath, PathInfo>
//!  open(url) ─► plan: one listing ─► UploadPlan { missing (dependency order), already_cached }
//!            ─► schedule: NARs in parallel (stream), narinfos in dependency order
//!            ─► logs: log/<drv> for the given derivations
//!            ─► PublishSummary (per run and per root)
//! ```
//!
//! It owns deciding what to upload and in which order. The formats are [`crate::cache`]'s,
//! the transport is [`crate::cache::backend`]'s, and running nix is [`crate::nix`]'s.

mod logs;
mod plan;
mod schedule;
mod stream;
mod summary;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use plan::{dependency_order, STALE_AFTER};
pub use stream::NarError;
pub use summary::{bytes, HeldBack, PathFailure, PublishSummary, RootSummary};

use super::backend::{self, CacheBackend, CacheUrl, SshOptions};
use super::{Compression, SigningKey};
use crate::config::CacheSettings;
use crate::nix::{self, NixOptions, PathInfo};
use crate::process::Limits;
use crate::types::StorePath;

/// How long `nix path-info` / `nix log` may take.
const NIX_TIMEOUT: Duration = Duration::from_secs(600);

/// The publisher's resolved settings: keys loaded, URL parsed.
#[derive(Debug)]
pub struct Settings {
    pub url: CacheUrl,
    pub ssh: SshOptions,
    /// Every narinfo is signed with each of these.
    pub keys: Arc<Vec<SigningKey>>,
    pub compression: Compression,
    pub level: i32,
    /// Large NARs compressed and uploaded at once (small ones: up to 16× as many, see
    /// `schedule`).
    pub jobs: usize,
    pub priority: u32,
    pub upload_logs: bool,
}

impl Settings {
    /// Parses the URL and loads every secret key file (refusing ones others can read).
    pub fn load(cache: &CacheSettings) -> anyhow::Result<Settings> {
        let url: CacheUrl = cache.url.parse()?;
        Ok(Settings {
            url,
            ssh: SshOptions::from(cache),
            keys: Arc::new(load_keys(&cache.secret_key_files)?),
            compression: cache.compression,
            level: cache.level,
            jobs: cache.jobs.get(),
            priority: cache.priority,
            upload_logs: cache.upload_logs,
        })
    }
}

/// Loads each of `files` with [`SigningKey::load`].
pub fn load_keys(files: &[PathBuf]) -> anyhow::Result<Vec<SigningKey>> {
    files
        .iter()
        .map(|f| SigningKey::load(f).map_err(anyhow::Error::from))
        .collect()
}

/// Where the publish is, for a progress display.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Paths published (narinfo in place) of those missing from the cache.
    pub paths_done: usize,
    pub paths_total: usize,
    /// NAR bytes uploaded (uncompressed) of those missing.
    pub nar_bytes_done: u64,
    pub nar_bytes_total: u64,
    /// Compressed bytes written.
    pub file_bytes_done: u64,
}

/// Called whenever [`Progress`] changes (cheap; from the publisher's task).
pub type ProgressFn<'a> = dyn Fn(&Progress) + Send + Sync + 'a;

/// Publishes the closures of `roots` to the `[cache]` of the config, and the build logs of
/// `logs` (derivation, the farm's log file of its build) when `upload_logs` is on.
///
/// `Err` when nothing could be published properly: a key cannot be loaded, the cache is
/// unreachable or fails (full, read-only, connection lost), Nix cannot describe the closure,
/// or `cancel` fired ([`crate::run::Cancelled`]). Single paths that cannot be published
/// (corrupt in the local store) do not make it an `Err`: see [`PublishSummary::failed`] and
/// [`PublishSummary::is_complete`].
pub async fn publish(
    cache: &CacheSettings,
    nix: &NixOptions,
    roots: &[StorePath],
    logs: &[(StorePath, PathBuf)],
    cancel: &CancellationToken,
    progress: &ProgressFn<'_>,
) -> anyhow::Result<PublishSummary> {
    let settings = Settings::load(cache)?;
    // Both take a while (`nix path-info` of a big closure, the SSH handshake): at once.
    let (closure, backend) = tokio::join!(
        query_closure(nix, roots, cancel),
        backend::open(&settings.url, &settings.ssh)
    );
    let closure = closure?;
    let backend =
        backend.with_context(|| format!("cannot open the binary cache `{}`", settings.url))?;
    publish_closure(
        &backend, &settings, nix, roots, closure, logs, cancel, progress,
    )
    .await
}

/// `nix path-info --json --recursive ROOTS`, keyed by path.
pub async fn query_closure(
    nix: &NixOptions,
    roots: &[StorePath],
    cancel: &CancellationToken,
) -> anyhow::Result<BTreeMap<StorePath, PathInfo>> {
    if roots.is_empty() {
        return Ok(BTreeMap::new());
    }
    let limits = Limits {
        timeout: Some(NIX_TIMEOUT),
        cancel: Some(cancel),
        log: None,
    };
    let infos = nix::path_info::closure(nix, roots, limits)
        .await
        .context("cannot query the closure to publish from the local store")?;
    Ok(infos.into_iter().map(|i| (i.path.clone(), i)).collect())
}

/// The publish after the closure is known, on an open backend (tests drive it directly).
#[allow(clippy::too_many_arguments)]
pub async fn publish_closure(
    backend: &Arc<dyn CacheBackend>,
    settings: &Settings,
    nix: &NixOptions,
    roots: &[StorePath],
    closure: BTreeMap<StorePath, PathInfo>,
    logs: &[(StorePath, PathBuf)],
    cancel: &CancellationToken,
    progress: &ProgressFn<'_>,
) -> anyhow::Result<PublishSummary> {
    let started = Instant::now();
    let url = settings.url.to_string();
    let in_cache = |what: &str| format!("cannot {what} the binary cache `{url}`");
    let plan = plan::plan(backend, &closure, settings.priority)
        .await
        .with_context(|| in_cache("list"))?;
    tracing::info!(
        cache = %url,
        closure = closure.len(),
        missing = plan.missing.len(),
        already_cached = plan.already_cached.len(),
        "publishing"
    );
    let outcome = match schedule::run(backend, settings, plan.missing, cancel, progress).await {
        Ok(outcome) => outcome,
        Err(schedule::ScheduleError::Cancelled) => return Err(crate::run::Cancelled.into()),
        Err(schedule::ScheduleError::Backend(e)) => {
            return Err(anyhow::Error::from(e).context(in_cache("publish to")))
        }
    };
    let logs_uploaded = if settings.upload_logs && !logs.is_empty() {
        logs::upload(backend, nix, logs, cancel)
            .await
            .with_context(|| in_cache("upload build logs to"))?
    } else {
        0
    };
    let mut summary = PublishSummary {
        cache: url,
        logs_uploaded,
        stale_temporaries_removed: plan.stale_removed,
        failed: outcome.failed,
        held_back: outcome.held_back,
        ..PublishSummary::default()
    };
    summary.tally(roots, &closure, &plan.already_cached, &outcome.published);
    summary.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        uploaded = summary.uploaded_paths,
        nar_bytes = summary.uploaded_nar_bytes,
        file_bytes = summary.uploaded_file_bytes,
        already_cached = summary.already_cached,
        failed = summary.failed.len(),
        held_back = summary.held_back.len(),
        duration_ms = summary.duration_ms,
        "published"
    );
    Ok(summary)
}

/// The public halves of the secret key files (for `farmctl cache verify`'s default).
pub fn public_keys(files: &[PathBuf]) -> anyhow::Result<Vec<super::PublicKey>> {
    Ok(load_keys(files)?
        .iter()
        .map(SigningKey::public_key)
        .collect())
}

/// Whether `path` names a store path (as opposed to an installable) for `farmctl publish`.
pub fn as_store_path(arg: &str) -> Option<StorePath> {
    let path = Path::new(arg);
    if !path.starts_with(crate::types::STORE_DIR) {
        return None;
    }
    // `/nix/store/…-foo/bin/foo` publishes `/nix/store/…-foo`.
    let base = path.components().nth(3)?;
    format!("{}/{}", crate::types::STORE_DIR, base.as_os_str().to_str()?)
        .parse()
        .ok()
}
