//! The one step from [`RawConfig`] (what the file says) to [`Settings`] (what the program
//! uses): defaults that depend on other keys, ranges, mutually exclusive keys, machine names,
//! and relative paths resolved against the config file's directory. Every error names the key,
//! the line it is on, and what to write instead.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::document::KeyIndex;
use super::error::{ConfigError, Location};
use super::raw::*;
use super::settings::*;
use crate::record::MachineKind;
use crate::types::MachineName;

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
        build: build(raw.build, cx)?,
        state: state(raw.state, cx)?,
        cache: raw.cache.map(|c| cache(c, cx)).transpose()?,
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

fn build(b: RawBuild, cx: &Context) -> Result<BuildSettings> {
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
    Ok(StateSettings {
        dir: s.dir.components().collect(),
    })
}

fn cache(c: RawCache, cx: &Context) -> Result<CacheSettings> {
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

fn schedule(s: RawSchedule, cx: &Context) -> Result<ScheduleSettings> {
    if let Some(cron) = &s.cron {
        let fields = cron.split_whitespace().count();
        if !(5..=7).contains(&fields) {
            return Err(cx.invalid(
                "schedule.cron",
                format!("is `{cron}`, which has {fields} fields"),
                "write a crontab line of 5 fields (\"0 3 * * *\" = 03:00 every day), or 6-7 \
                 with seconds first; remove it to run only on `farmctl trigger`",
            ));
        }
    }
    if let Some(tz) = &s.timezone {
        if tz.is_empty() || tz.contains(char::is_whitespace) {
            return Err(cx.invalid(
                "schedule.timezone",
                format!("is `{tz}`, which is not a time zone name"),
                "use an IANA name like \"Europe/Berlin\" or \"UTC\", or remove it for local time",
            ));
        }
    }
    Ok(ScheduleSettings {
        cron: s.cron,
        timezone: s.timezone,
        catch_up: s.catch_up,
    })
}
