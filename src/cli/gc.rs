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
use crate::config::{MachineSelection, Settings};
use crate::nix::NixOptions;
use crate::run::evaluate::discover;
use crate::run::state::StateLayout;
use crate::types::{MachineName, StorePath};

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

/// What `farmctl cache forget MACHINE` removed (or, with `--dry-run`, would remove).
#[derive(Debug, serde::Serialize)]
pub struct Forgotten {
    pub machine: MachineName,
    /// This farm's record files of the machine (`latest.json` included when it is this farm's).
    pub records: Vec<String>,
    /// Records of the machine that other farms sharing the cache wrote: left alone.
    pub other_farms_records: usize,
    pub dry_run: bool,
}

impl std::fmt::Display for Forgotten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        writeln!(
            f,
            "{verb} {} generation record(s) of `{}`:",
            self.records.len(),
            self.machine
        )?;
        for r in &self.records {
            writeln!(f, "  {r}")?;
        }
        if self.other_farms_records > 0 {
            writeln!(
                f,
                "kept {} record(s) of `{}` that other farms wrote",
                self.other_farms_records, self.machine
            )?;
        }
        if !self.dry_run {
            writeln!(
                f,
                "the next `farmctl cache gc` (or run's GC) deletes what no other generation \
                 or pin keeps (and nothing while the cache has no roots at all)"
            )?;
        }
        Ok(())
    }
}

/// `farmctl cache forget MACHINE [--dry-run] [--force] [--to URL]`: removes this farm's
/// generation records of a machine that left the fleet, so that GC may collect its closures
/// (otherwise its last `keep_generations` stay forever). Other farms' records of a machine of
/// that name are theirs and stay. Refused, unless `force`, for a machine still in the fleet:
/// its records are its rollback targets.
pub async fn forget(
    settings: &Settings,
    to: Option<&str>,
    machine: &str,
    dry_run: bool,
    force: bool,
    cancel: &CancellationToken,
) -> anyhow::Result<Forgotten> {
    let machine: MachineName = machine
        .parse()
        .with_context(|| format!("`{machine}` is not a machine name"))?;
    if !force {
        still_in_fleet(settings, &machine, cancel).await?;
    }
    let cache = cache_settings(settings, to)?;
    let psettings = publish::Settings::load(&cache)?;
    let backend = backend::connect(&psettings.url, &psettings.ssh)
        .await
        .with_context(|| format!("cannot open the binary cache `{}`", psettings.url))?;
    // Not while this farm's GC or a run's publish holds the cache.
    let _lock = if dry_run {
        None
    } else {
        Some(gc::CacheLock::acquire(&settings.state.dir).await?)
    };
    let farm = generations::farm_id(&settings.state.dir);
    let dir = format!("{}/{machine}", generations::MACHINES_DIR);
    let entries = generations::list_if_exists(&backend, &dir).await?;
    let mut forgotten = Forgotten {
        machine: machine.clone(),
        records: Vec::new(),
        other_farms_records: 0,
        dry_run,
    };
    for entry in entries {
        if entry.is_dir || !entry.name.ends_with(".json") || backend::is_temp_name(&entry.name) {
            continue;
        }
        let file = format!("{dir}/{}", entry.name);
        let Some(bytes) = backend.read(&file).await? else {
            continue; // removed meanwhile
        };
        let record: generations::Generation =
            serde_json::from_slice(&bytes).with_context(|| {
                format!("`{file}` on the cache is not a generation record; fix or remove it first")
            })?;
        if record.farm == farm {
            forgotten.records.push(file);
        } else {
            forgotten.other_farms_records += 1;
        }
    }
    if forgotten.records.is_empty() {
        bail!(
            "the cache `{}` holds no generation record of `{machine}` written by this farm \
             ({farm}, state directory `{}`){}",
            psettings.url,
            settings.state.dir.display(),
            if forgotten.other_farms_records > 0 {
                format!(
                    "; {} record(s) of it are other farms': forget it on the farm that built it",
                    forgotten.other_farms_records
                )
            } else {
                String::new()
            }
        );
    }
    // `latest.json` last: until then the machine still has a newest generation on record.
    forgotten
        .records
        .sort_by_key(|f| f.ends_with(generations::LATEST));
    if !dry_run {
        for file in &forgotten.records {
            backend.remove(file).await?;
        }
    }
    Ok(forgotten)
}

/// Refuses to forget a machine that is still in the fleet: in the config's `[build]
/// machines` list, or (discovery) in the flake of the farm's checkout, i.e. as of its last run.
async fn still_in_fleet(
    settings: &Settings,
    machine: &MachineName,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let (fleet, source) = match &settings.build.machines {
        MachineSelection::List(list) => (
            list.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
            "the config's `[build] machines`".to_owned(),
        ),
        MachineSelection::Auto(_) => {
            let checkout = StateLayout::new(&settings.state.dir).checkout();
            if !checkout.join("flake.nix").exists() {
                return Ok(()); // no run on this host yet: there is no fleet to compare with
            }
            let nix = NixOptions::from_settings(&settings.build);
            let found = discover(settings, &nix, &checkout.to_string_lossy(), cancel)
                .await
                .with_context(|| {
                    format!(
                        "cannot list the machines of the fleet in the farm's checkout `{}` to \
                         check that `{machine}` left it; pass --force to forget it anyway",
                        checkout.display()
                    )
                })?;
            (
                found.machines.into_iter().map(|m| m.name).collect(),
                format!(
                    "the fleet's flake as of the farm's last run (`{}`)",
                    checkout.display()
                ),
            )
        }
    };
    if fleet.contains(machine) {
        bail!(
            "`{machine}` is still in the fleet ({source}); its generation records are its \
             rollback targets. Remove it from the fleet and let a run pick that up, or pass \
             --force to drop them anyway"
        );
    }
    Ok(())
}
