//! Phase 3: which machines the flake has, and each one's derivation. An evaluation failure
//! fails that machine only; a flake that cannot even list its machines fails the run.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::config::{MachineRef, MachineSelection, Settings};
use crate::nix::{self, NixCommand, NixError, NixOptions};
use crate::process::Limits;
use crate::record::MachineKind;
use crate::types::MachineName;

/// A machine to evaluate and build.
#[derive(Clone, Debug)]
pub struct Machine {
    pub kind: MachineKind,
    pub name: MachineName,
    /// The flake attribute, e.g. `nixosConfigurations.pi3.config.system.build.toplevel`.
    pub attribute: String,
}

impl Machine {
    pub fn installable(&self, flake: &str) -> String {
        format!("{flake}#{}", self.attribute)
    }
}

/// The machines of this run, and machine names in the flake that were refused.
pub struct Discovered {
    pub machines: Vec<Machine>,
    pub refused: Vec<String>,
}

/// Lists the machines: the configured list, or every attribute of the configured outputs.
pub async fn discover(
    settings: &Settings,
    nix_opts: &NixOptions,
    flake: &str,
    cancel: &CancellationToken,
) -> anyhow::Result<Discovered> {
    let attribute = |kind: MachineKind, name: MachineName| Machine {
        attribute: settings.build.attributes[&kind].replace("{name}", name.as_str()),
        kind,
        name,
    };
    let kinds = match &settings.build.machines {
        MachineSelection::List(list) => {
            return Ok(Discovered {
                machines: list
                    .iter()
                    .map(|MachineRef { kind, name }| attribute(*kind, name.clone()))
                    .collect(),
                refused: Vec::new(),
            })
        }
        MachineSelection::Auto(kinds) => kinds,
    };
    let mut found = Discovered {
        machines: Vec::new(),
        refused: Vec::new(),
    };
    for &kind in kinds {
        let output = kind.flake_output();
        let cmd = NixCommand::new(nix_opts).args([
            "eval",
            "--json",
            &format!("{flake}#{output}"),
            "--apply",
            "builtins.attrNames",
        ]);
        let names: Vec<String> = match cmd
            .json(nix::limits(Duration::from_secs(600), cancel, None))
            .await
        {
            Ok(names) => names,
            Err(NixError::Failed {
                ref stderr_tail, ..
            }) if stderr_tail.contains("does not provide attribute") => {
                tracing::debug!(output, "flake has no such output; no machines of this kind");
                Vec::new()
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot list the machines in `{output}` of the flake")
                })
            }
        };
        for raw in names {
            match raw.parse::<MachineName>() {
                Ok(name) => found.machines.push(attribute(kind, name)),
                Err(e) => found
                    .refused
                    .push(format!("{output}: {e}; rename it in the flake to build it")),
            }
        }
    }
    if found.machines.is_empty() && found.refused.is_empty() {
        let outputs: Vec<_> = kinds.iter().map(|k| k.flake_output()).collect();
        bail!(
            "the flake has no machines in {}; add some, or list them with `[build] machines = [...]` in {}",
            outputs.join(", "),
            settings.source.display()
        );
    }
    Ok(found)
}

/// Evaluates one machine to its derivation path (`<attribute>.drvPath`).
pub async fn derivation(
    nix_opts: &NixOptions,
    flake: &str,
    machine: &Machine,
    limits: Limits<'_>,
) -> Result<String, NixError> {
    NixCommand::new(nix_opts)
        .args([
            "eval",
            "--raw",
            &format!("{}.drvPath", machine.installable(flake)),
        ])
        .text(limits)
        .await
}
