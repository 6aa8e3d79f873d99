//! Static checks of what ships for installation, with the host's own tools: the unit files in
//! systemd/ (`systemd-analyze verify` prints nothing; `systemd-analyze security` exposure of
//! the services ≤ 1.5), every .nix file parses (`nix-instantiate --parse`), and README.md
//! documents every option of the NixOS modules with its default (read from the modules
//! themselves, see tests/nixos/options.nix).
//!
//! The units are also installed and run under a real systemd in tests/systemd_nspawn.rs.

use std::path::{Path, PathBuf};
use std::process::Command;

const UNITS: [&str; 4] = [
    "farmd.service",
    "farmd.socket",
    "farmd-nightly.service",
    "farmd-nightly.timer",
];
const MAX_EXPOSURE: f64 = 1.5;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The units as shipped, except that `/usr/local/bin/` (where a user installs the binaries,
/// absent on a build machine) points at this build's binaries: verify insists that ExecStart=
/// programs exist. Nothing else is changed.
fn units_with_built_binaries() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for b in [env!("CARGO_BIN_EXE_farmd"), env!("CARGO_BIN_EXE_farmctl")] {
        std::os::unix::fs::symlink(b, bin.join(Path::new(b).file_name().unwrap())).unwrap();
    }
    for unit in UNITS {
        let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        let text = text.replace("/usr/local/bin/", &format!("{}/", bin.display()));
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    dir
}

#[test]
fn systemd_analyze_verify_prints_nothing() {
    let dir = units_with_built_binaries();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(UNITS)
        .current_dir(dir.path())
        .output()
        .expect("cannot run systemd-analyze");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify only warns (exit 0) about unknown keys and the like: any output is a failure.
    assert!(
        out.status.success() && printed.is_empty(),
        "systemd-analyze verify ({}):\n{printed}",
        out.status
    );
}

/// `systemd-analyze security --offline=true`'s overall exposure of `unit`.
fn exposure(unit: &str) -> (f64, String) {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(repo().join("systemd").join(unit))
        .output()
        .expect("cannot run systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure for {unit}:\n{text}"));
    let score = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the score in {line:?}"));
    (score, text)
}

#[test]
fn services_are_hardened_to_an_exposure_of_at_most_1_5() {
    for unit in ["farmd.service", "farmd-nightly.service"] {
        let (score, report) = exposure(unit);
        eprintln!("{unit}: exposure {score}");
        assert!(
            score <= MAX_EXPOSURE,
            "{unit}: exposure {score} > {MAX_EXPOSURE}\n{report}"
        );
    }
}

/// Every .nix file of the repository (target/ aside).
fn nix_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == ".git" {
            continue;
        }
        if path.is_dir() {
            nix_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "nix") {
            out.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let mut files = Vec::new();
    nix_files(&repo(), &mut files);
    for required in ["flake.nix", "nixos/module.nix", "nixos/client.nix"] {
        assert!(
            files.contains(&repo().join(required)),
            "{required} is missing"
        );
    }
    for file in files {
        let out = Command::new("nix-instantiate")
            .arg("--parse")
            .arg(&file)
            .output()
            .expect("cannot run nix-instantiate");
        assert!(
            out.status.success(),
            "{} does not parse:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The options `module` declares, with their defaults as README shows them ("required" for
/// none), evaluated by Nix from the module itself (tests/nixos/options.nix).
fn module_options(module: &str) -> Vec<(String, String)> {
    let out = Command::new("nix-instantiate")
        .args(["--eval", "--strict", "--json"])
        .arg(repo().join("tests/nixos/options.nix"))
        .arg("--arg")
        .arg("module")
        .arg(repo().join(module))
        .output()
        .expect("cannot run nix-instantiate");
    assert!(
        out.status.success(),
        "cannot read the options of {module}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_owned(),
                o["default"].as_str().unwrap_or("required").to_owned(),
            )
        })
        .collect()
}

#[test]
fn readme_documents_every_module_option_with_its_default() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let rows: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.replace("\\|", "|"))
        .collect();
    let mut missing = Vec::new();
    let mut count = 0;
    for module in ["nixos/module.nix", "nixos/client.nix"] {
        for (name, default) in module_options(module) {
            count += 1;
            let row = rows
                .iter()
                .find(|r| r.starts_with(&format!("| `{name}` |")));
            let documented = match row {
                Some(r) if default == "required" => r.contains("| required |"),
                Some(r) => r.contains(&format!("| `{default}` |")),
                None => false,
            };
            if !documented {
                missing.push(format!("| `{name}` | `{default}` |"));
            }
        }
    }
    assert!(
        count > 20,
        "only {count} options found; is options.nix broken?"
    );
    assert!(
        missing.is_empty(),
        "README.md lacks these option rows (or shows another default):\n{}",
        missing.join("\n")
    );
}
