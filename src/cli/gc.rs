//! farmctl's GC verbs: `cache gc [--dry-run]`, `cache pin STORE_PATH --name NAME` and
//! `cache unpin NAME`. The work is [`crate::cache::gc`]'s and [`crate::cache::generations`]'s.

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use super::cache::cache_settings;
use crate::cache::backend;
use crate::cache::gc::{self, GcReport};
use crate::cache::generations::{self, Pin, PinName};
use crate::cache::narinfo_file_name;
use crate::cache::publish::{self, as_store_path};
use crate::config::Settings;
use crate::types::StorePath;

/// `farmctl cache gc [--dry-run] [--to URL]`.
pub async fn gc(
    settings: &Settings,
    to: Option<&str>,
    dry_run: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<GcReport> {
    let cache = cache_settings(settings, to)?;
    gc::gc(&cache, &settings.state.dir, dry_run, cancel).await
}

/// `farmctl cache pin STORE_PATH --name NAME [--to URL]`: the path's closure is kept until
/// unpinned. Refused for a path the cache does not hold.
pub async fn pin(
    settings: &Settings,
    to: Option<&str>,
    path: &str,
    name: &str,
) -> anyhow::Result<Pin> {
    let name: PinName = name.parse()?;
    let path = as_store_path(path)
        .with_context(|| format!("`{path}` is not a store path (/nix/store/…)"))?;
    pin_path(settings, to, path, name).await
}

/// Pins `path` (already in the cache) as `name`; also `farmctl publish --pin NAME`.
pub async fn pin_path(
    settings: &Settings,
    to: Option<&str>,
    path: StorePath,
    name: PinName,
) -> anyhow::Result<Pin> {
    let cache = cache_settings(settings, to)?;
    let settings = publish::Settings::load(&cache)?;
    let backend = backend::connect(&settings.url, &settings.ssh)
        .await
        .with_context(|| format!("cannot open the binary cache `{}`", settings.url))?;
    if backend.read(&narinfo_file_name(&path)).await?.is_none() {
        bail!(
            "`{path}` is not in the cache `{}`; publish it first with `farmctl publish {path}`",
            settings.url
        );
    }
    let pin = Pin {
        name,
        path,
        time: chrono::Utc::now().timestamp(),
        sigs: Vec::new(),
    };
    Ok(generations::write_pin(&backend, pin, &settings.keys).await?)
}

/// `farmctl cache unpin NAME [--to URL]`; false when no such pin existed.
pub async fn unpin(settings: &Settings, to: Option<&str>, name: &str) -> anyhow::Result<bool> {
    let cache = cache_settings(settings, to)?;
    let name: PinName = name.parse()?;
    let settings = publish::Settings::load(&cache)?;
    let backend = backend::connect(&settings.url, &settings.ssh)
        .await
        .with_context(|| format!("cannot open the binary cache `{}`", settings.url))?;
    Ok(generations::remove_pin(&backend, &name).await?)
}
