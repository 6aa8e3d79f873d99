//! [cache]: where the binary cache is (only the URL's shape is checked here; the publish phase
//! parses it into its own target), its signing keys and compression.

use std::num::NonZeroUsize;
use std::path::{Component, Path};

use super::{Context, Result};
use crate::config::raw::{RawCache, RawCompression, RawRetention};
use crate::config::settings::{CacheSettings, Compression, RetentionSettings};

pub(super) fn cache(c: RawCache, cx: &Context) -> Result<CacheSettings> {
    let url = c.url.ok_or_else(|| {
        cx.missing(
            "cache.url",
            "add `url = \"sftp://user@host/srv/nix-cache\"` or `url = \"file:///srv/nix-cache\"` \
             under [cache], or remove [cache] to publish nothing",
        )
    })?;
    let is_sftp = cache_url(&url).map_err(|problem| {
        cx.invalid(
            "cache.url",
            format!("is `{url}`: {problem}"),
            "write `sftp://[user@]host[:port]/path` for a remote host or `file:///path` for a \
             local directory",
        )
    })?;
    if !is_sftp {
        for (key, set) in [
            ("cache.ssh_identity", c.ssh_identity.is_some()),
            ("cache.ssh_known_hosts", c.ssh_known_hosts.is_some()),
        ] {
            if set {
                return Err(cx.invalid(
                    key,
                    "only applies to sftp:// caches",
                    "remove it, or use an sftp:// URL",
                ));
            }
        }
    }
    if c.secret_key_files.is_empty() {
        return Err(cx.missing(
            "cache.secret_key_files",
            "add `secret_key_files = [\"/var/lib/farmd/cache.sk\"]` under [cache]; \
             `farmctl keygen` creates a key",
        ));
    }
    let secret_key_files = c
        .secret_key_files
        .into_iter()
        .map(|p| cx.path("cache.secret_key_files", p))
        .collect::<Result<_>>()?;

    let (compression, default_level, range, name) = match c.compression {
        RawCompression::Zstd => (Compression::Zstd, 3, 1..=19, "zstd"),
        RawCompression::Xz => (Compression::Xz, 6, 0..=9, "xz"),
        RawCompression::None => (Compression::None, 0, 0..=0, "none"),
    };
    let level = c.level.unwrap_or(default_level);
    if !range.contains(&level) {
        let hint = match c.compression {
            RawCompression::None => {
                "remove `level`: there is nothing to tune without compression".to_owned()
            }
            _ => format!(
                "use {}..={} (default {default_level}); higher is smaller but slower",
                range.start(),
                range.end()
            ),
        };
        return Err(cx.invalid(
            "cache.level",
            format!("is {level}, outside the range of `compression = \"{name}\"`"),
            hint,
        ));
    }

    let jobs = NonZeroUsize::new(c.jobs).ok_or_else(|| {
        cx.invalid(
            "cache.jobs",
            "is 0, so nothing would be uploaded",
            "set it to how many paths to compress and upload at once (default 4)",
        )
    })?;

    Ok(CacheSettings {
        url,
        secret_key_files,
        compression,
        level,
        jobs,
        priority: c.priority,
        upload_logs: c.upload_logs,
        ssh_identity: cx.opt_path("cache.ssh_identity", c.ssh_identity)?,
        ssh_known_hosts: cx.opt_path("cache.ssh_known_hosts", c.ssh_known_hosts)?,
        retention: retention(c.retention, cx)?,
    })
}

fn retention(r: RawRetention, cx: &Context) -> Result<RetentionSettings> {
    let keep_generations = NonZeroUsize::new(r.keep_generations).ok_or_else(|| {
        cx.invalid(
            "cache.retention.keep_generations",
            "is 0, so GC could delete the generation a machine is about to upgrade to",
            "keep at least 1 generation per machine (default 3)",
        )
    })?;
    Ok(RetentionSettings {
        keep_generations,
        keep_days: r.keep_days,
        grace: cx.duration("cache.retention.grace", &r.grace, "1h")?,
        gc_after_publish: r.gc_after_publish,
    })
}

/// Checks the shape of a cache URL; true for sftp://, false for file:///. The publish phase
/// parses it into its own target type; this only catches what would fail there at 3 a.m.
fn cache_url(url: &str) -> std::result::Result<bool, String> {
    if let Some(rest) = url.strip_prefix("sftp://") {
        let (authority, path) = rest
            .find('/')
            .map(|i| rest.split_at(i))
            .ok_or("it has no directory after the host")?;
        if path.len() < 2 {
            return Err("it has no directory after the host".into());
        }
        let host_port =
            authority.rsplit_once('@').map_or(
                authority,
                |(user, hp)| {
                    if user.is_empty() {
                        ""
                    } else {
                        hp
                    }
                },
            );
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("its IPv6 host lacks `]`")?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            }
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err("it has no host (or an empty user before `@`)".into());
        }
        if let Some(port) = port {
            if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
                return Err(format!("its port `{port}` is not a number from 1 to 65535"));
            }
        }
        Ok(true)
    } else if let Some(path) = url.strip_prefix("file://") {
        let path = Path::new(path);
        if !path.is_absolute() || path.components().all(|c| c == Component::RootDir) {
            return Err("a file URL needs an absolute directory: `file:///srv/nix-cache`".into());
        }
        Ok(false)
    } else {
        Err("farmd publishes only over sftp:// or to a local file:/// directory".into())
    }
}
