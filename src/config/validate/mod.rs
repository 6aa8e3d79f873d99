//! The one step from [`RawConfig`] (what the file says) to [`Settings`] (what the program
//! uses): defaults that depend on other keys, ranges, mutually exclusive keys, machine names,
//! and relative paths resolved against the config file's directory. Every error names the key,
//! the line it is on, and what to write instead. [build] and [cache], the sections with the
//! most rules, have a file each.

mod build;
mod cache;

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::document::KeyIndex;
use super::error::{ConfigError, Location};
use super::raw::*;
use super::settings::*;
use crate::daemon::schedule::{Schedule, ScheduleError, Zone};

/// What validation needs besides the raw values: where keys are, to point at them.
pub(super) struct Context<'a> {
    pub source: &'a Path,
    pub text: &'a str,
    pub index: &'a KeyIndex,
    /// Relative paths in the file are resolved against this (the file's directory).
    pub base_dir: PathBuf,
}

type Result<T> = std::result::Result<T, ConfigError>;

impl Context<'_> {
    /// Where `key`'s value is; for an absent key, its section's header; else the file.
    fn at(&self, key: &str) -> Location {
        let mut path = key;
        loop {
            if let Some(spans) = self.index.get(path) {
                let (value, key_span) = (spans.value.clone(), spans.key.clone());
                let span = if path == key {
                    value.or(key_span)
                } else {
                    key_span.or(value)
                };
                if span.is_some() {
                    return Location::at_span(self.source, self.text, span);
                }
            }
            match path.rsplit_once('.') {
                Some((parent, _)) => path = parent,
                None => return Location::file(self.source),
            }
        }
    }

    /// Where `needle` (one element of a list) is written inside `key`'s value, else `at(key)`.
    fn at_element(&self, key: &str, needle: &str) -> Location {
        let Some(span) = self.index.get(key).and_then(|s| s.value.clone()) else {
            return self.at(key);
        };
        let value = &self.text[span.clone()];
        [format!("\"{needle}\""), format!("'{needle}'")]
            .iter()
            .find_map(|quoted| value.find(quoted.as_str()))
            .map(|i| {
                let start = span.start + i;
                Location::at_span(self.source, self.text, Some(start..start))
            })
            .unwrap_or_else(|| self.at(key))
    }

    fn invalid(
        &self,
        key: &str,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        self.invalid_at(self.at(key), key, problem, hint)
    }

    fn invalid_at(
        &self,
        at: Location,
        key: &str,
        problem: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            at,
            key: key.to_owned(),
            problem: problem.into(),
            hint: hint.into(),
        }
    }

    fn missing(&self, key: &str, hint: &str) -> ConfigError {
        ConfigError::Missing {
            at: self.at(key),
            key: key.to_owned(),
            hint: hint.to_owned(),
        }
    }

    /// A path as written, made absolute against the config file's directory.
    fn path(&self, key: &str, p: PathBuf) -> Result<PathBuf> {
        if p.as_os_str().is_empty() {
            return Err(self.invalid(key, "is empty", "write a path, or remove the key"));
        }
        if p.starts_with("~") {
            return Err(self.invalid(
                key,
                format!("is `{}`, but farmd does not expand `~`", p.display()),
                "write the full path, e.g. /var/lib/farmd/…",
            ));
        }
        // `components()` drops `.` segments; `..` stays (it may cross a symlink).
        Ok(self.base_dir.join(p).components().collect())
    }

    fn opt_path(&self, key: &str, p: Option<PathBuf>) -> Result<Option<PathBuf>> {
        p.map(|p| self.path(key, p)).transpose()
    }

    /// A shell command or other free text: when written, it must say something.
    fn text(&self, key: &str, s: Option<String>) -> Result<Option<String>> {
        match s {
            Some(s) if s.trim().is_empty() => {
                Err(self.invalid(key, "is empty", "remove the key to leave it unset"))
            }
            s => Ok(s),
        }
    }

    fn duration(&self, key: &str, s: &str, example: &str) -> Result<Duration> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            self.invalid(
                key,
                format!("is `{s}`, which is not a duration ({e})"),
                format!("write it like \"{example}\", \"90m\" or \"1h 30m\""),
            )
        })?;
        if d.is_zero() {
            return Err(self.invalid(
                key,
                "is zero",
                format!("set a positive limit like \"{example}\""),
            ));
        }
        Ok(d)
    }
}

pub(super) fn validate(raw: RawConfig, cx: &Context) -> Result<Settings> {
    Ok(Settings {
        source: cx.source.to_owned(),
        repo: repo(raw.repo, cx)?,
        update: update(raw.update, cx)?,
        build: build::build(raw.build, cx)?,
        state: state(raw.state, cx)?,
        cache: raw.cache.map(|c| cache::cache(c, cx)).transpose()?,
        schedule: schedule(raw.schedule, cx)?,
        control: ControlSettings {
            socket: cx.path("control.socket", raw.control.socket)?,
        },
        hooks: HookSettings {
            on_success: cx.text("hooks.on_success", raw.hooks.on_success)?,
            on_failure: cx.text("hooks.on_failure", raw.hooks.on_failure)?,
            timeout: cx.duration("hooks.timeout", &raw.hooks.timeout, "5m")?,
        },
    })
}

fn repo(r: RawRepo, cx: &Context) -> Result<RepoSettings> {
    let url = r.url.ok_or_else(|| {
        cx.missing(
            "repo.url",
            "add `url = \"git@github.com:you/fleet.git\"` (or an https:// or file:// URL of your \
             flake's repository) under [repo]",
        )
    })?;
    if url.trim().is_empty() {
        return Err(cx.invalid("repo.url", "is empty", "set it to your flake's git URL"));
    }
    let branch = branch_name(cx, "repo.branch", r.branch)?;
    let push_branch = match r.push_branch {
        Some(b) => branch_name(cx, "repo.push_branch", b)?,
        None => branch.clone(),
    };

    let chosen: Vec<&str> = [
        r.ssh_key.as_ref().map(|_| "ssh_key"),
        r.ssh_agent.then_some("ssh_agent"),
        r.token_file.as_ref().map(|_| "token_file"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let [first, second, ..] = chosen[..] {
        // Point at whichever of the two comes later in the file: that is the one just added.
        let offset = |k: &str| {
            cx.index
                .get(&format!("repo.{k}"))
                .and_then(|s| s.key.clone())
                .map(|s| s.start)
        };
        let (first, second) = match (offset(first), offset(second)) {
            (Some(a), Some(b)) if a > b => (second, first),
            _ => (first, second),
        };
        let what = |k: &str| {
            if k == "ssh_agent" {
                "`ssh_agent = true`".to_owned()
            } else {
                format!("`{k}`")
            }
        };
        return Err(cx.invalid(
            &format!("repo.{second}"),
            format!("cannot be combined with {} (also set)", what(first)),
            "farmd authenticates one way only: keep one of `ssh_key`, `ssh_agent = true` and \
             `token_file`, and remove the others",
        ));
    }
    if r.ssh_key_passphrase_file.is_some() && r.ssh_key.is_none() {
        return Err(cx.invalid(
            "repo.ssh_key_passphrase_file",
            "is set but `repo.ssh_key` is not",
            "add `ssh_key = \"PATH\"` for the key it unlocks, or remove it",
        ));
    }
    if r.token_user.is_some() && r.token_file.is_none() {
        return Err(cx.invalid(
            "repo.token_user",
            "is set but `repo.token_file` is not",
            "add `token_file = \"PATH\"` (a file holding the token), or remove it",
        ));
    }

    let is_http = url.starts_with("https://") || url.starts_with("http://");
    let auth = if let Some(key) = r.ssh_key {
        if is_http {
            return Err(cx.invalid(
                "repo.ssh_key",
                format!("is for SSH remotes, but `repo.url` is `{url}`"),
                "use `token_file` for an https:// remote, or an SSH URL like `git@host:fleet.git`",
            ));
        }
        RepoAuth::SshKey {
            key: cx.path("repo.ssh_key", key)?,
            passphrase_file: cx
                .opt_path("repo.ssh_key_passphrase_file", r.ssh_key_passphrase_file)?,
        }
    } else if r.ssh_agent {
        if is_http {
            return Err(cx.invalid(
                "repo.ssh_agent",
                format!("is for SSH remotes, but `repo.url` is `{url}`"),
                "use `token_file` for an https:// remote, or an SSH URL like `git@host:fleet.git`",
            ));
        }
        RepoAuth::SshAgent
    } else if let Some(file) = r.token_file {
        if !is_http {
            return Err(cx.invalid(
                "repo.token_file",
                format!("is for https:// remotes, but `repo.url` is `{url}`"),
                "use `ssh_key` or `ssh_agent = true` for an SSH remote, or an https:// URL",
            ));
        }
        RepoAuth::Token {
            file: cx.path("repo.token_file", file)?,
            user: r
                .token_user
                .unwrap_or_else(|| DEFAULT_TOKEN_USER.to_owned()),
        }
    } else {
        RepoAuth::Default
    };

    Ok(RepoSettings {
        url,
        branch,
        push_branch,
        auth,
        known_hosts: cx.opt_path("repo.known_hosts", r.known_hosts)?,
        prepare: cx.text("repo.prepare", r.prepare)?,
    })
}

/// Enough of git's ref-name rules to catch typos and option injection; git checks the rest.
fn branch_name(cx: &Context, key: &str, b: String) -> Result<String> {
    let bad = b.is_empty()
        || b.starts_with('-')
        || b.contains("..")
        || b.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        return Err(cx.invalid(
            key,
            format!("is `{}`, which is not a git branch name", b.escape_debug()),
            "write the branch name as `git branch` shows it, e.g. \"main\"",
        ));
    }
    Ok(b)
}

fn update(u: RawUpdate, cx: &Context) -> Result<UpdateSettings> {
    for input in &u.inputs {
        if input.is_empty() || input.starts_with('-') || input.contains(char::is_whitespace) {
            return Err(cx.invalid_at(
                cx.at_element("update.inputs", input),
                "update.inputs",
                format!(
                    "contains `{}`, which is not a flake input name",
                    input.escape_debug()
                ),
                "list inputs as they are named in flake.nix, e.g. [\"nixpkgs\"], or [] for all",
            ));
        }
    }
    let (author_name, author_email) = parse_author(&u.author).ok_or_else(|| {
        cx.invalid(
            "update.author",
            format!("is `{}`, not `Name <email>`", u.author.escape_debug()),
            "write it like `author = \"farmd <farmd@example.org>\"`",
        )
    })?;
    Ok(UpdateSettings {
        enable: u.enable,
        inputs: u.inputs,
        author_name,
        author_email,
        push: match u.push {
            RawPush::Built => PushPolicy::Built,
            RawPush::Always => PushPolicy::Always,
            RawPush::Never => PushPolicy::Never,
        },
    })
}

/// `Name <email>` → (name, email), as git writes an author. Angle brackets and line breaks
/// inside either part would corrupt the commit header, so they are refused.
fn parse_author(s: &str) -> Option<(String, String)> {
    let (name, rest) = s.trim().split_once('<')?;
    let email = rest.strip_suffix('>')?;
    let name = name.trim();
    let clean = |p: &str| !p.is_empty() && !p.contains(['<', '>', '\n', '\r']);
    (clean(name) && clean(email) && !email.contains(char::is_whitespace))
        .then(|| (name.to_owned(), email.to_owned()))
}
fn state(s: RawState, cx: &Context) -> Result<StateSettings> {
    // The one path not resolved against the config's directory: where the daemon keeps its
    // data must not move when the config file does.
    if !s.dir.is_absolute() {
        return Err(cx.invalid(
            "state.dir",
            format!("is `{}`, a relative path", s.dir.display()),
            "the state directory must be absolute, e.g. \"/var/lib/farmd\"",
        ));
    }
    let keep_logs = NonZeroUsize::new(s.keep_logs).ok_or_else(|| {
        cx.invalid(
            "state.keep_logs",
            "is 0".to_owned(),
            "keep the logs of at least the latest run, e.g. keep_logs = 50",
        )
    })?;
    Ok(StateSettings {
        dir: s.dir.components().collect(),
        keep_logs,
    })
}
fn schedule(s: RawSchedule, cx: &Context) -> Result<ScheduleSettings> {
    let refused = |e: ScheduleError| {
        let key = match e {
            ScheduleError::UnknownZone { .. } => "schedule.timezone",
            _ => "schedule.cron",
        };
        cx.invalid(
            key,
            format!("is `{}`: {}", e.input(), e.problem()),
            e.hint(),
        )
    };
    let zone = s.timezone.as_deref();
    let schedule = match &s.cron {
        Some(cron) => Some(Schedule::parse(cron, zone).map_err(refused)?),
        // A zone without a schedule does nothing, but a typo in it is still worth saying.
        None => {
            Zone::parse(zone).map_err(refused)?;
            None
        }
    };
    Ok(ScheduleSettings {
        cron: s.cron,
        timezone: s.timezone,
        schedule,
        catch_up: s.catch_up,
    })
}
