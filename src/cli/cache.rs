//! farmctl's cache verbs: `publish` (any closure, like `nix copy --to`), `keygen` (a
//! Nix-compatible key pair) and `cache verify`. Each is one function the binary calls with
//! parsed arguments; the work itself is [`crate::cache`]'s.

use std::fs::OpenOptions;
use std::io::{ErrorKind, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tokio_util::sync::CancellationToken;

use crate::cache::backend::{self, CacheUrl, SshOptions};
use crate::cache::generations::{Pin, PinName};
use crate::cache::publish::{self, bytes, Progress, PublishSummary};
use crate::cache::verify::{self as cache_verify, Report};
use crate::cache::{generate_keypair, PublicKey};
use crate::config::{CacheSettings, Settings};
use crate::nix::{self, NixOptions};
use crate::process::Limits;
use crate::types::StorePath;

/// The `[cache]` section, with `--to` overriding its URL.
pub(crate) fn cache_settings(
    settings: &Settings,
    to: Option<&str>,
) -> anyhow::Result<CacheSettings> {
    let Some(cache) = &settings.cache else {
        bail!(
            "`{}` has no [cache] section: add one with `url` and `secret_key_files` (see the \
             example config); `--to` only overrides the URL",
            settings.source.display()
        );
    };
    let mut cache = cache.clone();
    if let Some(url) = to {
        url.parse::<CacheUrl>()?;
        cache.url = url.to_owned();
    }
    Ok(cache)
}

/// `farmctl publish INSTALLABLE|STORE_PATH… [--to URL] [--pin NAME]`.
///
/// With `pin`, the installables must give exactly one store path (checked before anything is
/// uploaded), pinned once the publish is complete.
pub async fn publish(
    settings: &Settings,
    args: &[String],
    to: Option<&str>,
    pin: Option<&PinName>,
    cancel: &CancellationToken,
) -> anyhow::Result<Published> {
    let cache = cache_settings(settings, to)?;
    // Fail on a bad key before building anything.
    publish::load_keys(&cache.secret_key_files)?;
    let nix = NixOptions::from_settings(&settings.build);
    let mut roots: Vec<StorePath> = Vec::new();
    let installables: Vec<String> = args
        .iter()
        .filter(|a| match publish::as_store_path(a) {
            Some(p) => {
                roots.push(p);
                false
            }
            None => true,
        })
        .cloned()
        .collect();
    if !installables.is_empty() {
        let limits = Limits {
            timeout: Some(settings.build.timeout),
            cancel: Some(cancel),
            log: None,
        };
        let built = nix::build_outputs(&nix, &installables, limits)
            .await
            .with_context(|| format!("cannot build {}", installables.join(" ")))?;
        roots.extend(built);
    }
    roots.sort();
    roots.dedup();
    if let (Some(name), [_, _, ..]) = (pin, roots.as_slice()) {
        bail!(
            "`--pin {name}` keeps one closure, but `{}` gave {} store paths:\n  {}\n\
             publish them without --pin, then pin each: farmctl cache pin PATH --name NAME",
            args.join(" "),
            roots.len(),
            roots
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }

    // Not while this farm's GC runs. Best effort: whoever may publish may not own the state dir.
    let _lock = match crate::cache::gc::CacheLock::acquire(&settings.state.dir).await {
        Ok(lock) => Some(lock),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "publishing without the cache lock; a GC of this farm running now could race");
            None
        }
    };
    let line = ProgressLine::new(std::io::stderr().is_terminal());
    let summary = publish::publish(&cache, &nix, &roots, &[], cancel, &|p| line.show(p)).await;
    line.clear();
    let summary = summary?;
    // Pinned under the same lock: this farm's GC cannot collect the closure in between.
    let pin = match (pin, roots.as_slice()) {
        (Some(_), _) if !summary.is_complete() => {
            Some(Err(anyhow!("not pinned: the publish did not complete")))
        }
        (Some(name), [root]) => Some(
            super::gc::pin_path(settings, to, root.clone(), name.clone())
                .await
                .context("published, but not pinned"),
        ),
        _ => None,
    };
    Ok(Published { summary, pin })
}

/// What `farmctl publish` did.
pub struct Published {
    pub summary: PublishSummary,
    /// With `--pin`: the pin written, or why there is none.
    pub pin: Option<anyhow::Result<Pin>>,
}

/// A live `paths done/total, bytes, rate` line on a terminal; nothing otherwise.
struct ProgressLine {
    on: bool,
    started: Instant,
    last: Mutex<Option<Instant>>,
}

impl ProgressLine {
    fn new(on: bool) -> Self {
        ProgressLine {
            on,
            started: Instant::now(),
            last: Mutex::new(None),
        }
    }

    fn show(&self, p: &Progress) {
        if !self.on {
            return;
        }
        let mut last = self.last.lock().unwrap();
        let done = p.paths_done == p.paths_total;
        if last.is_some_and(|t| t.elapsed() < Duration::from_millis(100)) && !done {
            return;
        }
        *last = Some(Instant::now());
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r\x1b[Kpublishing: {}/{} paths, {} of {} NAR ({} compressed), {}/s",
            p.paths_done,
            p.paths_total,
            bytes(p.nar_bytes_done),
            bytes(p.nar_bytes_total),
            bytes(p.file_bytes_done),
            bytes((p.nar_bytes_done as f64 / secs) as u64)
        );
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

/// `farmctl keygen NAME --secret-key-file PATH --public-key-file PATH`: a key pair in
/// `nix-store --generate-binary-cache-key`'s format; never overwrites a file. Returns the
/// public key (for `trusted-public-keys`).
pub fn keygen(name: &str, secret: &Path, public: &Path) -> anyhow::Result<PublicKey> {
    for path in [secret, public] {
        if path.symlink_metadata().is_ok() {
            bail!(
                "`{}` already exists; farmctl keygen never overwrites a key (a lost secret key \
                 means re-signing the cache and re-trusting on every machine): remove it first \
                 or choose another path",
                path.display()
            );
        }
    }
    let (secret_text, public_key) = generate_keypair(name)?;
    write_new(secret, secret_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(public, public_key.to_string().as_bytes(), 0o644) {
        let _ = std::fs::remove_file(secret);
        return Err(e);
    }
    Ok(public_key)
}

/// Creates `path` (failing if it exists) with `mode` from the start, so the secret is never
/// readable by others even for a moment.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            ErrorKind::AlreadyExists => anyhow::anyhow!(
                "`{}` already exists; farmctl keygen never overwrites a key",
                path.display()
            ),
            _ => anyhow::Error::from(e).context(format!("cannot create `{}`", path.display())),
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write `{}`", path.display()))
}

/// `farmctl cache verify [--to URL] [--trusted-public-key KEY…] [--deep]`.
pub async fn verify(
    settings: &Settings,
    to: Option<&str>,
    trusted: &[String],
    deep: bool,
) -> anyhow::Result<Report> {
    let cache = cache_settings(settings, to)?;
    let keys: Vec<PublicKey> = if trusted.is_empty() {
        publish::public_keys(&cache.secret_key_files)?
    } else {
        trusted
            .iter()
            .map(|k| {
                k.parse()
                    .with_context(|| format!("`{k}` is not a Nix public key (`name:base64`)"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let url: CacheUrl = cache.url.parse()?;
    let backend = backend::connect(&url, &SshOptions::from(&cache))
        .await
        .with_context(|| format!("cannot open the binary cache `{url}`"))?;
    cache_verify::verify(&backend, &keys, deep)
        .await
        .with_context(|| format!("cannot read the binary cache `{url}`"))
}
