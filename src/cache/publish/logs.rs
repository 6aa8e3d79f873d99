//! Build logs into `log/<drv basename>`, where Nix's binary cache store looks for them, so
//! `nix log --store <cache url> DRV` shows how a machine was built.
//!
//! Which text: the farm's own log file of that machine's build comes first. It was captured
//! with `--print-build-logs`, so it holds every derivation built for the machine in that run
//! (prefixed by name) and Nix's own messages — what an operator wants when asking "how did
//! pi3's system get built?", where `nix log DRV` locally has only the toplevel builder's last
//! few lines. When the file is missing or empty (e.g. the derivation was built by an earlier
//! run), Nix's own record (`nix log DRV`, through [`crate::nix`]) is used instead. Logs are
//! stored uncompressed, as plain text any web server can serve.
//!
//! A log the cache already has is not written again (one listing of `log/`, not a request
//! per derivation): a derivation's build log does not change.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::cache::backend::{BackendError, CacheBackend};
use crate::nix::{self, NixOptions};
use crate::process::Limits;
use crate::types::StorePath;

const NIX_LOG_TIMEOUT: Duration = Duration::from_secs(60);

/// Uploads the logs of `logs` missing from the cache; returns how many were written.
pub async fn upload(
    backend: &Arc<dyn CacheBackend>,
    nix: &NixOptions,
    logs: &[(StorePath, PathBuf)],
    cancel: &CancellationToken,
) -> Result<usize, BackendError> {
    let present: BTreeSet<String> = backend
        .list_fast("log") // a name missed: a log written again
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    let mut written = 0;
    for (drv, file) in logs {
        if present.contains(drv.base_name()) || cancel.is_cancelled() {
            continue;
        }
        let Some(text) = log_text(nix, drv, file, cancel).await else {
            tracing::debug!(drv = %drv, "no build log to upload");
            continue;
        };
        backend
            .write_atomic(&format!("log/{}", drv.base_name()), Bytes::from(text))
            .await?;
        written += 1;
    }
    Ok(written)
}

/// The farm's log file of the build, else Nix's own log of `drv`; `None` if neither has one.
async fn log_text(
    nix: &NixOptions,
    drv: &StorePath,
    file: &PathBuf,
    cancel: &CancellationToken,
) -> Option<Vec<u8>> {
    match tokio::fs::read(file).await {
        Ok(text) if !text.is_empty() => return Some(text),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read a build log; asking nix");
        }
    }
    let limits = Limits {
        timeout: Some(NIX_LOG_TIMEOUT),
        cancel: Some(cancel),
        log: None,
    };
    match nix::build_log(nix, drv, limits).await {
        Ok(Some(text)) if !text.is_empty() => Some(text),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(drv = %drv, error = %e, "cannot get the build log from nix");
            None
        }
    }
}
