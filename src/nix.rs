//! The one wrapper around the `nix` CLI (cargo's `ProcessBuilder`, for Nix). Nothing else in the
//! program spawns `nix`: every invocation is built here, displayed shell-quoted in logs and
//! errors, asks for `--json` wherever Nix offers it, and fails with the command, its exit status
//! and the tail of its stderr.
//!
//! It does not decide *what* to run; the phases in [`crate::run`] do.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::process::{self, Limits, Outcome};
use crate::types::StorePath;

pub mod path_info;
pub use path_info::PathInfo;

#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error("could not start `{command}`: {source} (is Nix installed and on PATH?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{stderr_tail}")]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("`{command}` timed out after {}; its process group was killed", humantime::format_duration(*.after))]
    TimedOut {
        command: String,
        after: Duration,
        stderr_tail: String,
    },
    #[error("`{command}` was cancelled")]
    Cancelled { command: String },
    #[error("`{command}` printed output that could not be parsed: {error}")]
    BadOutput { command: String, error: String },
}

impl NixError {
    /// The last lines Nix printed, when there are any.
    pub fn stderr_tail(&self) -> Option<&str> {
        match self {
            NixError::Failed { stderr_tail, .. } | NixError::TimedOut { stderr_tail, .. } => {
                Some(stderr_tail)
            }
            _ => None,
        }
    }
}

/// Options every invocation gets (from `[build]`): how Nix builds, not what.
#[derive(Clone, Debug, Default)]
pub struct NixOptions {
    pub options: Vec<(String, String)>,
    pub env: Vec<(OsString, OsString)>,
}

impl NixOptions {
    pub fn from_settings(build: &crate::config::BuildSettings) -> NixOptions {
        let mut options = Vec::new();
        if let Some(n) = build.max_jobs {
            options.push(("max-jobs".to_owned(), n.to_string()));
        }
        if let Some(n) = build.cores {
            options.push(("cores".to_owned(), n.to_string()));
        }
        if let Some(b) = &build.builders {
            options.push(("builders".to_owned(), b.clone()));
        }
        if !build.extra_platforms.is_empty() {
            options.push((
                "extra-platforms".to_owned(),
                build.extra_platforms.join(" "),
            ));
        }
        for (k, v) in &build.nix_options {
            options.push((k.clone(), v.clone()));
        }
        NixOptions {
            options,
            env: Vec::new(),
        }
    }
}

/// One `nix …` invocation under construction.
#[derive(Clone, Debug)]
pub struct NixCommand {
    program: OsString,
    args: Vec<OsString>,
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
}

impl NixCommand {
    /// `nix <subcommand…>` with the global options applied.
    pub fn new(opts: &NixOptions) -> NixCommand {
        let mut cmd = NixCommand {
            program: OsString::from("nix"),
            args: Vec::new(),
            cwd: None,
            env: opts.env.clone(),
        };
        for (k, v) in &opts.options {
            cmd = cmd.args(["--option", k, v]);
        }
        cmd
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub fn cwd(mut self, dir: impl AsRef<Path>) -> Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    pub fn env(mut self, k: impl AsRef<OsStr>, v: impl AsRef<OsStr>) -> Self {
        self.env
            .push((k.as_ref().to_owned(), v.as_ref().to_owned()));
        self
    }

    /// Runs and returns stdout; any non-zero exit is an error.
    pub async fn output(&self, limits: Limits<'_>) -> Result<Vec<u8>, NixError> {
        let command = self.to_string();
        tracing::debug!(command = %command, "running nix");
        let timeout = limits.timeout;
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let outcome = process::run(cmd, limits)
            .await
            .map_err(|source| NixError::Spawn {
                command: command.clone(),
                source,
            })?;
        match outcome {
            Outcome::Finished(f) if f.status.success() => Ok(f.stdout),
            Outcome::Finished(f) => Err(NixError::Failed {
                command,
                status: f.status.to_string(),
                stderr_tail: f.stderr_tail,
            }),
            Outcome::TimedOut { stderr_tail } => Err(NixError::TimedOut {
                command,
                after: timeout.unwrap_or_default(),
                stderr_tail,
            }),
            Outcome::Cancelled { .. } => Err(NixError::Cancelled { command }),
        }
    }

    /// Runs and parses stdout as JSON (the caller has added `--json`).
    pub async fn json<T: DeserializeOwned>(&self, limits: Limits<'_>) -> Result<T, NixError> {
        let out = self.output(limits).await?;
        serde_json::from_slice(&out).map_err(|e| NixError::BadOutput {
            command: self.to_string(),
            error: e.to_string(),
        })
    }

    /// Runs and returns stdout as text without a trailing newline (for `--raw`).
    pub async fn text(&self, limits: Limits<'_>) -> Result<String, NixError> {
        let out = self.output(limits).await?;
        String::from_utf8(out)
            .map(|s| s.trim_end_matches('\n').to_owned())
            .map_err(|e| NixError::BadOutput {
                command: self.to_string(),
                error: e.to_string(),
            })
    }
}

/// Shell-quoted, copy-pasteable (environment not shown: it may hold secrets).
impl fmt::Display for NixCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = std::iter::once(&self.program).chain(&self.args);
        let quote = |w: &OsString| {
            let w = w.to_string_lossy();
            shlex::try_quote(&w)
                .map(|q| q.into_owned())
                .unwrap_or_else(|_| format!("{w:?}"))
        };
        if let Some(first) = words.next() {
            f.write_str(&quote(first))?;
        }
        for w in words {
            write!(f, " {}", quote(w))?;
        }
        Ok(())
    }
}

/// The version of the `nix` on PATH, e.g. `(2, 8)` from `nix (Nix) 2.8.0`.
pub async fn version(opts: &NixOptions) -> Result<(u32, u32), NixError> {
    let cmd = NixCommand {
        args: vec!["--version".into()],
        ..NixCommand::new(&NixOptions {
            options: Vec::new(),
            env: opts.env.clone(),
        })
    };
    let text = cmd.text(Limits::none()).await?;
    parse_version(&text).ok_or_else(|| NixError::BadOutput {
        command: cmd.to_string(),
        error: format!("no version number in {text:?}"),
    })
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let word = text.split_whitespace().last()?;
    let mut parts = word.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor.len());
    Some((major, minor[..digits].parse().ok()?))
}

/// How to name "the outputs of this derivation" as an installable: `drv^*` since Nix 2.13;
/// before that a bare `.drv` path meant its outputs (and `^` was not understood).
pub fn derivation_outputs(drv: &crate::types::StorePath, version: (u32, u32)) -> String {
    if version >= (2, 13) {
        format!("{drv}^*")
    } else {
        drv.to_string()
    }
}

/// Limits with a log file and the run's cancel token.
pub fn limits<'a>(
    timeout: Duration,
    cancel: &'a CancellationToken,
    log: Option<File>,
) -> Limits<'a> {
    Limits {
        timeout: Some(timeout),
        cancel: Some(cancel),
        log,
    }
}

/// One element of `nix build --json`'s output.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildResult {
    pub drv_path: String,
    pub outputs: std::collections::BTreeMap<String, String>,
}

/// Builds (or finds already built) `installables` without a GC root and returns every output
/// path (`nix build --no-link --json`; Nix 2.8 has no `--print-out-paths`).
pub async fn build_outputs(
    opts: &NixOptions,
    installables: &[String],
    limits: Limits<'_>,
) -> Result<Vec<StorePath>, NixError> {
    let cmd = NixCommand::new(opts)
        .args(["build", "--no-link", "--json"])
        .args(installables);
    let results: Vec<BuildResult> = cmd.json(limits).await?;
    results
        .into_iter()
        .flat_map(|r| r.outputs.into_values())
        .map(|p| {
            p.parse()
                .map_err(|e: crate::types::InvalidStorePath| NixError::BadOutput {
                    command: cmd.to_string(),
                    error: e.to_string(),
                })
        })
        .collect()
}

/// The build log Nix keeps for `drv` (`nix log DRV`), or `None` when it has none.
pub async fn build_log(
    opts: &NixOptions,
    drv: &StorePath,
    limits: Limits<'_>,
) -> Result<Option<Vec<u8>>, NixError> {
    match NixCommand::new(opts)
        .args(["log", drv.as_str()])
        .output(limits)
        .await
    {
        Ok(text) => Ok(Some(text)),
        Err(NixError::Failed { stderr_tail, .. })
            if stderr_tail.contains("build log") && stderr_tail.contains("not available") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_what_nix_prints() {
        assert_eq!(parse_version("nix (Nix) 2.8.0"), Some((2, 8)));
        assert_eq!(parse_version("nix (Nix) 2.24.10"), Some((2, 24)));
        assert_eq!(parse_version("nix (Lix, like Nix) 2.91.1"), Some((2, 91)));
        assert_eq!(
            parse_version("nix (Nix) 2.25pre20241101_dirty"),
            Some((2, 25))
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn derivation_outputs_use_the_syntax_of_the_nix_at_hand() {
        let drv: crate::types::StorePath =
            "/nix/store/l044v8ym3m3dar9y2z94w2arb8wd4vgb-dep-alpha.drv"
                .parse()
                .unwrap();
        assert_eq!(derivation_outputs(&drv, (2, 8)), drv.to_string());
        assert_eq!(derivation_outputs(&drv, (2, 18)), format!("{drv}^*"));
    }

    #[test]
    fn commands_display_shell_quoted() {
        let cmd = NixCommand::new(&NixOptions {
            options: vec![("builders".into(), "ssh://a x86_64-linux".into())],
            env: vec![],
        })
        .args([
            "build",
            "--json",
            "/var/lib/farmd/checkout#nixosConfigurations.pi3",
        ]);
        assert_eq!(
            cmd.to_string(),
            "nix --option builders 'ssh://a x86_64-linux' build --json '/var/lib/farmd/checkout#nixosConfigurations.pi3'"
        );
    }

    /// Recorded from Nix 2.8's `nix build --json --out-link …` (see tests/fixtures).
    #[test]
    fn parses_nix_build_json() {
        let text = include_str!("../tests/fixtures/nix-2.8-build.json");
        let r: Vec<BuildResult> = serde_json::from_str(text).unwrap();
        assert_eq!(r.len(), 1);
        assert!(r[0].drv_path.ends_with("-dep-alpha.drv"));
        assert!(r[0].outputs["out"].ends_with("-dep-alpha"));
    }

    #[tokio::test]
    async fn failures_carry_command_status_and_stderr_tail() {
        let mut cmd =
            NixCommand::new(&NixOptions::default()).args(["eval", "--expr", "throw \"boom\""]);
        cmd.program = "sh".into();
        cmd.args = vec!["-c".into(), "echo 'error: boom' >&2; exit 1".into()];
        let err = cmd.output(Limits::none()).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                r#"`sh -c "echo 'error: boom' >&2; exit 1"` failed (exit status: 1):"#
            ),
            "{text}"
        );
        assert!(text.ends_with("error: boom"), "{text}");
    }
}
