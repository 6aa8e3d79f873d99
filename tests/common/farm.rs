//! A farm under test: a config file written for a [`Fleet`], a state directory, and the real
//! `farmd` / `farmctl` binaries run in the fleet's isolated environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use super::fleet::Fleet;
use super::process::{run_unchecked, stderr_of, stdout_of};

/// A config file built section by section; every value is a TOML literal.
pub struct FarmConfig {
    sections: BTreeMap<String, Vec<String>>,
}

impl FarmConfig {
    /// Sets `key = value` (a TOML literal) in `[section]`, replacing an earlier value.
    pub fn set(&mut self, section: &str, key: &str, value: &str) -> &mut Self {
        let lines = self.sections.entry(section.to_owned()).or_default();
        lines.retain(|l| !l.starts_with(&format!("{key} =")));
        lines.push(format!("{key} = {value}"));
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for (section, lines) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
            out.push('\n');
        }
        out
    }
}

/// TOML string literal.
pub fn toml_str(s: impl AsRef<str>) -> String {
    format!("{:?}", s.as_ref())
}

pub struct Farm {
    dir: TempDir,
    pub config: FarmConfig,
    /// Extra environment for farmd (e.g. NIX_SSHOPTS for remote builders).
    pub env: Vec<(String, String)>,
}

impl Farm {
    /// A farm for `fleet` with the default policy (`push = "built"`), its remote over file://.
    pub fn new(fleet: &Fleet) -> Farm {
        let dir = tempfile::Builder::new()
            .prefix("nixfarm-farm-")
            .tempdir()
            .expect("temp dir");
        let mut config = FarmConfig {
            sections: BTreeMap::new(),
        };
        config
            .set(
                "repo",
                "url",
                &toml_str(fleet.remote_path().display().to_string()),
            )
            .set("repo", "branch", &toml_str("main"))
            .set(
                "update",
                "author",
                &toml_str("farm bot <farm@nixfarm.invalid>"),
            )
            .set("build", "jobs", "2")
            .set(
                "state",
                "dir",
                &toml_str(dir.path().join("state").display().to_string()),
            )
            .set(
                "control",
                "socket",
                &toml_str(dir.path().join("control.sock").display().to_string()),
            );
        Farm {
            dir,
            config,
            env: Vec::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Points `[repo]` at `fleet`'s remote over `sshd` with the bed's client key, trusting the
    /// host keys in `known_hosts`.
    pub fn use_ssh_remote(&mut self, fleet: &Fleet, sshd: &super::Sshd, known_hosts: &Path) {
        self.config
            .set("repo", "url", &toml_str(sshd.ssh_url(&fleet.remote_path())))
            .set(
                "repo",
                "ssh_key",
                &toml_str(sshd.ssh_key_path().display().to_string()),
            )
            .set(
                "repo",
                "known_hosts",
                &toml_str(known_hosts.display().to_string()),
            );
    }

    /// Writes the config file and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("farmd.toml");
        std::fs::write(&path, self.config.render()).expect("write config");
        path
    }

    fn command(&self, fleet: &Fleet, bin: &str) -> Command {
        let mut cmd = fleet.env().command(bin);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env("NO_COLOR", "1");
        cmd
    }

    /// `farmd --once --config …`, whatever its exit code.
    pub fn once(&self, fleet: &Fleet) -> Output {
        let config = self.write_config();
        let out = run_unchecked(
            self.command(fleet, env!("CARGO_BIN_EXE_farmd"))
                .arg("--once")
                .arg("--config")
                .arg(&config),
        );
        eprintln!(
            "farmd --once exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            stdout_of(&out),
            stderr_of(&out)
        );
        out
    }

    /// `farmctl --config … ARGS`, whatever its exit code.
    pub fn farmctl<I, S>(&self, fleet: &Fleet, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let config = self.write_config();
        run_unchecked(
            self.command(fleet, env!("CARGO_BIN_EXE_farmctl"))
                .arg("--config")
                .arg(&config)
                .args(args),
        )
    }

    /// The newest run from `farmctl history --json`.
    pub fn last_run(&self, fleet: &Fleet) -> serde_json::Value {
        let out = self.farmctl(fleet, ["history", "-n", "1", "--json"]);
        assert!(
            out.status.success(),
            "farmctl history failed: {}",
            stderr_of(&out)
        );
        let runs: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("farmctl history --json prints JSON");
        runs[0].clone()
    }
}

/// The phases a run's JSON record went through, in order.
pub fn phases(run: &serde_json::Value) -> Vec<&str> {
    run["phases"]
        .as_array()
        .expect("phases is an array")
        .iter()
        .map(|p| p["phase"].as_str().expect("a phase name"))
        .collect()
}

/// The machine named `name` in a run's JSON record.
pub fn machine<'a>(run: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    run["machines"]
        .as_array()
        .expect("machines is an array")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no machine {name} in {run:#}"))
}
