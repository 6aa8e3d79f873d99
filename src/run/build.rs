//! Phase 4: building one machine's toplevel, with its log file, time limit and GC root.

use std::path::Path;

use crate::nix::{BuildResult, NixCommand, NixError, NixOptions};
use crate::process::Limits;
use crate::types::StorePath;

use super::evaluate::Machine;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Nix(#[from] NixError),
    #[error("`nix build` reported no `out` output for `{attribute}`")]
    NoOutput { attribute: String },
    #[error("`nix build` reported an invalid toplevel: {0}")]
    BadPath(#[from] crate::types::InvalidStorePath),
}

/// Builds the machine's evaluated derivation (never evaluating again: parallel evaluations of
/// one flake contend for Nix's eval cache database) and points `gcroot` at the result. On failure the previous root stays, so
/// the last good toplevel is still protected from `nix-collect-garbage`.
pub async fn build(
    nix_opts: &NixOptions,
    machine: &Machine,
    drv: &StorePath,
    nix_version: (u32, u32),
    gcroot: &Path,
    limits: Limits<'_>,
) -> Result<StorePath, BuildError> {
    let results: Vec<BuildResult> = NixCommand::new(nix_opts)
        .args([
            "build",
            "--json",
            "--print-build-logs",
            "--keep-going",
            "--out-link",
        ])
        .arg(gcroot)
        .arg(crate::nix::derivation_outputs(drv, nix_version))
        .json(limits)
        .await?;
    let out = results
        .into_iter()
        .find_map(|r| r.outputs.get("out").cloned())
        .ok_or_else(|| BuildError::NoOutput {
            attribute: machine.attribute.clone(),
        })?;
    Ok(out.parse()?)
}
