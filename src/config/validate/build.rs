//! [build]: which machines (auto or a list of names parsed at the border into `MachineName`),
//! their attribute templates, job counts and the Nix options passed through.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use super::{Context, Result};
use crate::config::raw::{RawAttributes, RawBuild, RawMachines};
use crate::config::settings::{BuildSettings, MachineRef, MachineSelection};
use crate::record::MachineKind;
use crate::types::MachineName;

pub(super) fn build(b: RawBuild, cx: &Context) -> Result<BuildSettings> {
    let machines =
        match b.machines {
            RawMachines::Keyword(k) if k == "auto" => {
                let mut kinds = b.discover.unwrap_or_else(|| vec![MachineKind::Nixos]);
                if kinds.is_empty() {
                    return Err(cx.invalid(
                        "build.discover",
                        "is empty, so nothing would be built",
                        "list at least one of \"nixos\", \"darwin\" and \"home\"",
                    ));
                }
                kinds.sort();
                kinds.dedup();
                MachineSelection::Auto(kinds)
            }
            RawMachines::Keyword(k) => return Err(cx.invalid(
                "build.machines",
                format!(
                    "is \"{}\", which is neither \"auto\" nor a list",
                    k.escape_debug()
                ),
                "write `machines = \"auto\"` to build every machine the flake defines, or list \
                 them: `machines = [\"pi3\", \"darwin:mac\"]`",
            )),
            RawMachines::List(entries) => {
                if b.discover.is_some() {
                    return Err(cx.invalid(
                        "build.discover",
                        "only applies when `machines = \"auto\"`, but machines are listed",
                        "remove `discover`, or set `machines = \"auto\"`",
                    ));
                }
                if entries.is_empty() {
                    return Err(cx.invalid(
                        "build.machines",
                        "is an empty list, so nothing would be built",
                        "list at least one machine, or set `machines = \"auto\"`",
                    ));
                }
                MachineSelection::List(machine_list(&entries, cx)?)
            }
        };

    let a = b.attributes;
    let mut attributes = BTreeMap::new();
    for (kind, template, default) in [
        (MachineKind::Nixos, a.nixos, RawAttributes::default().nixos),
        (
            MachineKind::Darwin,
            a.darwin,
            RawAttributes::default().darwin,
        ),
        (MachineKind::Home, a.home, RawAttributes::default().home),
    ] {
        if !template.contains("{name}") {
            return Err(cx.invalid(
                &format!("build.attributes.{}", kind.as_str()),
                format!("is `{template}`, which does not contain `{{name}}`"),
                format!("farmd puts each machine's name where `{{name}}` is; the default is `{default}`"),
            ));
        }
        attributes.insert(kind, template);
    }

    let jobs = NonZeroUsize::new(b.jobs).ok_or_else(|| {
        cx.invalid(
            "build.jobs",
            "is 0, so nothing would ever build",
            "set it to how many machines to build at once (at least 1)",
        )
    })?;

    for platform in &b.extra_platforms {
        if platform.is_empty() || platform.contains(char::is_whitespace) {
            return Err(cx.invalid_at(
                cx.at_element("build.extra_platforms", platform),
                "build.extra_platforms",
                format!(
                    "contains `{}`, which is not a Nix system",
                    platform.escape_debug()
                ),
                "write systems like \"aarch64-linux\", one per list element",
            ));
        }
    }

    for name in b.nix_options.keys() {
        let key = format!("build.nix_options.{name}");
        if let Some(ours) = reserved_nix_option(name) {
            return Err(cx.invalid(
                &key,
                "is set by farmd itself",
                format!("use `{ours} = …` in [build] instead"),
            ));
        }
        if name.is_empty() || name.starts_with('-') || name.contains(char::is_whitespace) {
            return Err(cx.invalid(
                &key,
                "is not a Nix option name",
                "write options as `name = \"value\"`, e.g. `keep-outputs = \"true\"`",
            ));
        }
    }

    Ok(BuildSettings {
        machines,
        attributes,
        jobs,
        max_jobs: b.max_jobs,
        cores: b.cores,
        builders: b.builders,
        extra_platforms: b.extra_platforms,
        nix_options: b.nix_options,
        timeout: cx.duration("build.timeout", &b.timeout, "4h")?,
    })
}

/// The [build] key to use instead of a Nix option farmd passes itself (also under its
/// `extra-` or underscore spellings, which Nix or users also write).
fn reserved_nix_option(name: &str) -> Option<&'static str> {
    const OURS: [(&str, &str); 4] = [
        ("max-jobs", "max_jobs"),
        ("cores", "cores"),
        ("builders", "builders"),
        ("extra-platforms", "extra_platforms"),
    ];
    let name = name.to_ascii_lowercase().replace('_', "-");
    let find = |n: &str| {
        OURS.iter()
            .find(|(nix, _)| *nix == n)
            .map(|(_, ours)| *ours)
    };
    find(&name).or_else(|| name.strip_prefix("extra-").and_then(find))
}

/// `"pi3"`, `"nixos:pi3"`, `"darwin:mac"`, `"home:alice"`.
fn machine_list(entries: &[String], cx: &Context) -> Result<Vec<MachineRef>> {
    let key = "build.machines";
    let mut refs: Vec<MachineRef> = Vec::with_capacity(entries.len());
    for entry in entries {
        let at = || cx.at_element(key, entry);
        let (kind, name) = match entry.split_once(':') {
            None => (MachineKind::Nixos, entry.as_str()),
            Some((kind, name)) => {
                let kind = MachineKind::ALL
                    .into_iter()
                    .find(|k| k.as_str() == kind)
                    .ok_or_else(|| {
                        cx.invalid_at(
                            at(),
                            key,
                            format!("entry `{}` has the unknown kind `{}`", entry.escape_debug(), kind.escape_debug()),
                            "prefix a name with `nixos:`, `darwin:` or `home:`, or write it bare for a NixOS machine",
                        )
                    })?;
                (kind, name)
            }
        };
        let name: MachineName = name.parse().map_err(|e| {
            cx.invalid_at(
                at(),
                key,
                format!(
                    "entry `{}` is not a valid machine name: {e}",
                    entry.escape_debug()
                ),
                "use the name as the flake defines it (nixosConfigurations.<name>)",
            )
        })?;
        let r = MachineRef { kind, name };
        if refs.contains(&r) {
            return Err(cx.invalid_at(
                at(),
                key,
                format!("lists `{}:{}` twice", r.kind.as_str(), r.name),
                "remove one of them",
            ));
        }
        refs.push(r);
    }
    Ok(refs)
}
