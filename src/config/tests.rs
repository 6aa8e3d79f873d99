//! Behaviour of [`super::parse`] and [`super::load`] as a user meets it: defaults, and for each
//! mistake, the message (file:line:column, key, what to do).

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::document::KeyIndex;
use super::raw::{self, RawConfig};
use super::*;
use crate::record::MachineKind;

const SOURCE: &str = "/etc/farmd/farmd.toml";
const EXAMPLE: &str = include_str!("../../config/farmd.example.toml");

fn parse_ok(text: &str) -> Settings {
    parse(text, Path::new(SOURCE)).unwrap_or_else(|e| panic!("{e}"))
}

/// The error's one-line message.
fn error(text: &str) -> String {
    match parse(text, Path::new(SOURCE)) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// `[repo] url` plus `rest`.
fn with_url(rest: &str) -> String {
    format!("[repo]\nurl = \"git@example.org:fleet.git\"\n{rest}")
}

fn assert_mentions(message: &str, parts: &[&str]) {
    for part in parts {
        assert!(message.contains(part), "`{part}` not in:\n{message}");
    }
}

#[test]
fn a_config_with_only_the_url_gets_every_default() {
    let s = parse_ok("[repo]\nurl = \"git@example.org:fleet.git\"\n");
    assert_eq!(s.source, Path::new(SOURCE));
    assert_eq!(s.repo.branch, "main");
    assert_eq!(s.repo.push_branch, "main");
    assert_eq!(s.repo.auth, RepoAuth::Default);
    assert_eq!((s.repo.known_hosts, s.repo.prepare), (None, None));
    assert!(s.update.enable && s.update.inputs.is_empty());
    assert_eq!(
        (
            s.update.author_name.as_str(),
            s.update.author_email.as_str()
        ),
        ("farmd", "farmd@localhost")
    );
    assert_eq!(s.update.push, PushPolicy::Built);
    assert_eq!(
        s.build.machines,
        MachineSelection::Auto(vec![MachineKind::Nixos])
    );
    assert_eq!(
        s.build.attributes[&MachineKind::Nixos],
        "nixosConfigurations.{name}.config.system.build.toplevel"
    );
    assert_eq!(
        s.build.attributes[&MachineKind::Darwin],
        "darwinConfigurations.{name}.system"
    );
    assert_eq!(
        s.build.attributes[&MachineKind::Home],
        "homeConfigurations.{name}.activationPackage"
    );
    assert_eq!(s.build.jobs, NonZeroUsize::MIN);
    assert_eq!(
        (s.build.max_jobs, s.build.cores, s.build.builders),
        (None, None, None)
    );
    assert!(s.build.extra_platforms.is_empty() && s.build.nix_options.is_empty());
    assert_eq!(s.build.timeout, Duration::from_secs(4 * 3600));
    assert_eq!(s.state.dir, Path::new("/var/lib/farmd"));
    assert!(s.cache.is_none());
    assert_eq!((s.schedule.cron, s.schedule.timezone), (None, None));
    assert!(s.schedule.catch_up);
    assert_eq!(s.control.socket, Path::new("/run/farmd/control.sock"));
    assert_eq!((s.hooks.on_success, s.hooks.on_failure), (None, None));
    assert_eq!(s.hooks.timeout, Duration::from_secs(300));
}

#[test]
fn push_branch_follows_branch_unless_set() {
    let s = parse_ok("[repo]\nurl = \"x\"\nbranch = \"prod\"\n");
    assert_eq!(s.repo.push_branch, "prod");
    let s = parse_ok("[repo]\nurl = \"x\"\nbranch = \"prod\"\npush_branch = \"lock\"\n");
    assert_eq!(
        (s.repo.branch.as_str(), s.repo.push_branch.as_str()),
        ("prod", "lock")
    );
}

#[test]
fn a_cache_section_gets_its_defaults_and_level_follows_compression() {
    let s = parse_ok(&with_url(
        "[cache]\nurl = \"sftp://farm@cache.example.org:2222/srv/cache\"\nsecret_key_files = [\"cache.sk\"]\n",
    ));
    let c = s.cache.unwrap();
    assert_eq!(
        (c.compression, c.level, c.jobs.get(), c.priority),
        (Compression::Zstd, 3, 4, 40)
    );
    assert!(c.upload_logs);
    assert_eq!(c.secret_key_files, [PathBuf::from("/etc/farmd/cache.sk")]);
    let xz = |extra: &str| {
        parse_ok(&with_url(&format!(
            "[cache]\nurl = \"file:///srv/cache\"\nsecret_key_files = [\"/k\"]\ncompression = \"xz\"\n{extra}"
        )))
        .cache
        .unwrap()
        .level
    };
    assert_eq!(xz(""), 6);
    assert_eq!(xz("level = 0\n"), 0);
}

#[test]
fn a_missing_file_says_to_pass_config_or_copy_the_example() {
    let e = load(Path::new("/nonexistent/farmd.toml")).unwrap_err();
    assert!(matches!(e, ConfigError::NotFound { .. }));
    assert_mentions(
        &e.to_string(),
        &[
            "/nonexistent/farmd.toml",
            "--config",
            "config/farmd.example.toml",
        ],
    );
}

#[test]
fn an_unreadable_file_names_the_path_and_keeps_the_cause() {
    // A directory cannot be read as a file; the OS error is the source, for the caller's chain.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let e = load(dir).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("cannot read config file `{}`", dir.display())
    );
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn a_missing_url_says_which_key_to_add_where() {
    let e = error("[repo]\nbranch = \"main\"\n");
    assert_mentions(
        &e,
        &[
            "/etc/farmd/farmd.toml:1:2: `repo.url` is not set",
            "add `url = ",
            "under [repo]",
        ],
    );
    // Without a [repo] section there is no line to point at, only the file.
    assert!(error("").starts_with("/etc/farmd/farmd.toml: `repo.url` is not set"));
}

#[test]
fn a_misspelt_key_suggests_the_right_one_with_its_line() {
    let e = error(&with_url("[build]\njobs = 2\njbos = 3\n"));
    assert_eq!(
        e,
        "/etc/farmd/farmd.toml:5:1: unknown key `jbos` in [build]; did you mean `jobs`?"
    );
}

#[test]
fn a_misspelt_section_suggests_the_right_one() {
    let e = error(&with_url("[cahce]\nurl = \"file:///srv\"\n"));
    assert_mentions(&e, &["farmd.toml:3:2:", "`cahce`", "did you mean [cache]?"]);
}

#[test]
fn a_key_in_the_wrong_section_names_the_right_section() {
    let e = error(&with_url("jobs = 4\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:3:1:",
            "unknown key `jobs` in [repo]",
            "belongs in [build]",
        ],
    );
}

#[test]
fn an_unrelated_unknown_key_points_to_the_example() {
    let e = error(&with_url("[hooks]\nfrobnicate = true\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:1:",
            "`frobnicate` in [hooks]",
            "config/farmd.example.toml",
        ],
    );
}

#[test]
fn a_toml_syntax_error_has_its_position() {
    let e = error(&with_url("[build]\njobs = \n"));
    assert!(e.starts_with("/etc/farmd/farmd.toml:4:8: "), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key_and_the_expected_type() {
    let e = error(&with_url("[build]\njobs = \"two\"\n"));
    assert_eq!(
        e,
        "/etc/farmd/farmd.toml:4:8: `build.jobs`: invalid type: string \"two\", \
         expected a whole number (0 or more)"
    );
    let e = error(&with_url("[update]\npush = \"sometimes\"\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:8:",
            "`update.push`",
            "`built`, `always`, `never`",
        ],
    );
}

#[test]
fn ssh_key_and_token_file_are_mutually_exclusive() {
    let e = error(
        "[repo]\nurl = \"https://example.org/fleet.git\"\ntoken_file = \"t\"\nssh_key = \"k\"\n",
    );
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:11: `repo.ssh_key` cannot be combined with `token_file`",
            "keep one of `ssh_key`, `ssh_agent = true` and `token_file`",
        ],
    );
    let e = error("[repo]\nurl = \"git@h:f\"\nssh_agent = true\nssh_key = \"k\"\n");
    assert_mentions(
        &e,
        &["`repo.ssh_key` cannot be combined with `ssh_agent = true`"],
    );
}

#[test]
fn auth_methods_must_fit_the_url_scheme() {
    let e = error("[repo]\nurl = \"git@github.com:me/fleet.git\"\ntoken_file = \"t\"\n");
    assert_mentions(
        &e,
        &[
            "farmd.toml:3:14: `repo.token_file` is for https:// remotes",
            "ssh_key",
        ],
    );
    let e = error("[repo]\nurl = \"https://github.com/me/fleet\"\nssh_key = \"k\"\n");
    assert_mentions(&e, &["`repo.ssh_key` is for SSH remotes", "token_file"]);
}

#[test]
fn auth_settings_become_one_auth_method() {
    let s = parse_ok("[repo]\nurl = \"https://h/f\"\ntoken_file = \"tok\"\n");
    let file = PathBuf::from("/etc/farmd/tok");
    assert_eq!(
        s.repo.auth,
        RepoAuth::Token {
            file,
            user: "git".into()
        }
    );
    let s = parse_ok("[repo]\nurl = \"git@h:f\"\nssh_agent = true\n");
    assert_eq!(s.repo.auth, RepoAuth::SshAgent);
    let e = error("[repo]\nurl = \"git@h:f\"\nssh_key_passphrase_file = \"p\"\n");
    assert_mentions(
        &e,
        &[
            "farmd.toml:3:27:",
            "`repo.ssh_key_passphrase_file` is set but `repo.ssh_key` is not",
        ],
    );
    let e = error("[repo]\nurl = \"git@h:f\"\ntoken_user = \"oauth2\"\n");
    assert_mentions(
        &e,
        &["`repo.token_user` is set but `repo.token_file` is not"],
    );
}

#[test]
fn relative_paths_resolve_against_the_config_files_directory() {
    let text = "[repo]\nurl = \"git@h:f\"\nssh_key = \"keys/./deploy\"\nknown_hosts = \"../known_hosts\"\n\
                [control]\nsocket = \"/run/farmd.sock\"\n[cache]\nurl = \"file:///srv/c\"\n\
                secret_key_files = [\"cache.sk\", \"/abs/other.sk\"]\n";
    let s = parse(text, Path::new("/srv/farm/conf/farmd.toml")).unwrap();
    let RepoAuth::SshKey { key, .. } = &s.repo.auth else {
        panic!("{:?}", s.repo.auth)
    };
    assert_eq!(key, Path::new("/srv/farm/conf/keys/deploy"));
    assert_eq!(
        s.repo.known_hosts.unwrap(),
        Path::new("/srv/farm/conf/../known_hosts")
    );
    assert_eq!(s.control.socket, Path::new("/run/farmd.sock"));
    assert_eq!(
        s.cache.unwrap().secret_key_files,
        [
            PathBuf::from("/srv/farm/conf/cache.sk"),
            PathBuf::from("/abs/other.sk")
        ]
    );
}

#[test]
fn a_relative_config_path_still_gives_absolute_paths() {
    let s = parse(
        "[repo]\nurl = \"git@h:f\"\nssh_key = \"k\"\n",
        Path::new("farmd.toml"),
    )
    .unwrap();
    let RepoAuth::SshKey { key, .. } = &s.repo.auth else {
        panic!()
    };
    assert_eq!(key, &std::env::current_dir().unwrap().join("k"));
}

#[test]
fn tilde_and_relative_state_dir_are_refused() {
    let e = error("[repo]\nurl = \"git@h:f\"\nssh_key = \"~/.ssh/id_ed25519\"\n");
    assert_mentions(
        &e,
        &[
            "farmd.toml:3:11: `repo.ssh_key`",
            "does not expand `~`",
            "full path",
        ],
    );
    let e = error(&with_url("[state]\ndir = \"state\"\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:7: `state.dir` is `state`, a relative path",
            "must be absolute",
        ],
    );
}

#[test]
fn listed_machines_are_parsed_with_their_kinds() {
    let s = parse_ok(&with_url(
        "[build]\nmachines = [\"pi3\", \"nixos:web-01\", \"darwin:mac\", \"home:alice\"]\n",
    ));
    let r = |kind, name: &str| MachineRef {
        kind,
        name: name.parse().unwrap(),
    };
    assert_eq!(
        s.build.machines,
        MachineSelection::List(vec![
            r(MachineKind::Nixos, "pi3"),
            r(MachineKind::Nixos, "web-01"),
            r(MachineKind::Darwin, "mac"),
            r(MachineKind::Home, "alice"),
        ])
    );
}

#[test]
fn auto_discovery_takes_the_listed_kinds() {
    let s = parse_ok(&with_url(
        "[build]\ndiscover = [\"home\", \"nixos\", \"home\"]\n",
    ));
    assert_eq!(
        s.build.machines,
        MachineSelection::Auto(vec![MachineKind::Nixos, MachineKind::Home])
    );
    let e = error(&with_url("[build]\ndiscover = [\"nixos\", \"windows\"]\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:22: `build.discover`",
            "unknown variant `windows`",
        ],
    );
}

#[test]
fn invalid_machine_entries_are_pointed_at() {
    let text = with_url("[build]\nmachines = [\n  \"pi3\",\n  \"../etc\",\n]\n");
    let e = error(&text);
    assert_mentions(
        &e,
        &[
            "farmd.toml:6:3: `build.machines` entry `../etc` is not a valid machine name",
            "contains `.`",
            "as the flake defines it",
        ],
    );
    let e = error(&with_url("[build]\nmachines = [\"windows:box\"]\n"));
    assert_mentions(
        &e,
        &["farmd.toml:4:13:", "unknown kind `windows`", "`darwin:`"],
    );
    let e = error(&with_url("[build]\nmachines = [\"pi3\", \"nixos:pi3\"]\n"));
    assert_mentions(&e, &["farmd.toml:4:20:", "lists `nixos:pi3` twice"]);
    let e = error(&with_url("[build]\nmachines = [\"-rf\"]\n"));
    assert_mentions(&e, &["must start with a letter"]);
}

#[test]
fn machine_selection_mistakes_are_explained() {
    let e = error(&with_url("[build]\nmachines = \"all\"\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:12: `build.machines` is \"all\"",
            "machines = \"auto\"",
        ],
    );
    let e = error(&with_url("[build]\nmachines = []\n"));
    assert_mentions(&e, &["`build.machines` is an empty list"]);
    let e = error(&with_url(
        "[build]\nmachines = [\"pi3\"]\ndiscover = [\"darwin\"]\n",
    ));
    assert_mentions(&e, &["farmd.toml:5:12: `build.discover` only applies when"]);
    let e = error(&with_url("[build]\nmachines = 3\n"));
    assert_mentions(
        &e,
        &[
            "`build.machines`",
            r#"expected "auto" or a list of machine names"#,
        ],
    );
}

#[test]
fn build_values_out_of_range_are_refused_with_a_hint() {
    let e = error(&with_url("[build]\njobs = 0\n"));
    assert_eq!(
        e,
        "/etc/farmd/farmd.toml:4:8: `build.jobs` is 0, so nothing would ever build; \
         set it to how many machines to build at once (at least 1)"
    );
    let e = error(&with_url("[build]\ntimeout = \"0s\"\n"));
    assert_mentions(&e, &["farmd.toml:4:11: `build.timeout` is zero", "\"4h\""]);
    let e = error(&with_url("[build]\ntimeout = \"4 hours-ish\"\n"));
    assert_mentions(
        &e,
        &["`build.timeout` is `4 hours-ish`, which is not a duration"],
    );
    let e = error(&with_url("[hooks]\ntimeout = \"soon\"\n"));
    assert_mentions(&e, &["farmd.toml:4:11: `hooks.timeout`"]);
    let e = error(&with_url(
        "[build.attributes]\ndarwin = \"darwinConfigurations.mac.system\"\n",
    ));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:10: `build.attributes.darwin`",
            "does not contain `{name}`",
            "the default is `darwinConfigurations.{name}.system`",
        ],
    );
}

#[test]
fn nix_options_that_farmd_sets_itself_name_the_build_key() {
    for (option, ours) in [
        ("max-jobs", "max_jobs"),
        ("extra-platforms", "extra_platforms"),
        ("cores", "cores"),
        ("extra-builders", "builders"),
    ] {
        let e = error(&with_url(&format!(
            "[build.nix_options]\n{option} = \"1\"\n"
        )));
        assert_mentions(
            &e,
            &[
                &format!(
                    "farmd.toml:4:{}: `build.nix_options.{option}` is set by farmd itself",
                    option.len() + 4
                ),
                &format!("use `{ours} = …` in [build] instead"),
            ],
        );
    }
    let s = parse_ok(&with_url(
        "[build]\nnix_options = { keep-going = \"true\" }\n",
    ));
    assert_eq!(s.build.nix_options["keep-going"], "true");
}

#[test]
fn author_is_split_into_name_and_email() {
    let s = parse_ok(&with_url(
        "[update]\nauthor = \"Farm Bot <bot@example.org>\"\n",
    ));
    assert_eq!(
        (
            s.update.author_name.as_str(),
            s.update.author_email.as_str()
        ),
        ("Farm Bot", "bot@example.org")
    );
    for bad in ["farmd", "<a@b>", "x <>", "x <a@b", "x <a b@c>"] {
        let e = error(&with_url(&format!("[update]\nauthor = \"{bad}\"\n")));
        assert_mentions(
            &e,
            &["farmd.toml:4:10: `update.author`", "not `Name <email>`"],
        );
    }
}

#[test]
fn inputs_and_branches_that_would_become_options_are_refused() {
    let e = error(&with_url(
        "[update]\ninputs = [\"nixpkgs\", \"--impure\"]\n",
    ));
    assert_mentions(
        &e,
        &["farmd.toml:4:22: `update.inputs` contains `--impure`"],
    );
    let e = error("[repo]\nurl = \"x\"\nbranch = \"-main\"\n");
    assert_mentions(
        &e,
        &["farmd.toml:3:10: `repo.branch` is `-main`, which is not a git branch name"],
    );
}

#[test]
fn cache_mistakes_are_explained() {
    let cache = |body: &str| error(&with_url(&format!("[cache]\n{body}")));
    let e = cache("secret_key_files = [\"/k\"]\n");
    assert_mentions(
        &e,
        &[
            "farmd.toml:3:2: `cache.url` is not set",
            "remove [cache] to publish nothing",
        ],
    );
    let e = cache("url = \"https://cache.example.org\"\nsecret_key_files = [\"/k\"]\n");
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:7: `cache.url` is `https://cache.example.org`",
            "sftp://[user@]host[:port]/path",
        ],
    );
    for (url, why) in [
        ("sftp://host", "no directory"),
        ("sftp://host:0/srv", "port `0`"),
        ("sftp://@host/srv", "no host"),
        ("file://srv/cache", "absolute directory"),
    ] {
        let e = cache(&format!("url = \"{url}\"\nsecret_key_files = [\"/k\"]\n"));
        assert_mentions(&e, &["`cache.url`", why]);
    }
    let e = cache("url = \"file:///srv/c\"\n");
    assert_mentions(
        &e,
        &["`cache.secret_key_files` is not set", "farmctl keygen"],
    );
    let e = cache("url = \"file:///srv/c\"\nsecret_key_files = [\"/k\"]\nlevel = 22\n");
    assert_mentions(
        &e,
        &[
            "farmd.toml:6:9: `cache.level` is 22, outside the range of `compression = \"zstd\"`",
            "1..=19",
        ],
    );
    let e = cache(
        "url = \"file:///srv/c\"\nsecret_key_files = [\"/k\"]\ncompression = \"none\"\nlevel = 3\n",
    );
    assert_mentions(&e, &["`cache.level` is 3", "remove `level`"]);
    let e = cache("url = \"file:///srv/c\"\nsecret_key_files = [\"/k\"]\nssh_identity = \"/id\"\n");
    assert_mentions(&e, &["`cache.ssh_identity` only applies to sftp:// caches"]);
    let s = parse_ok(&with_url(
        "[cache]\nurl = \"sftp://[::1]:22/srv\"\nsecret_key_files = [\"/k\"]\n",
    ));
    assert!(s.cache.is_some());
}

#[test]
fn cron_is_parsed_into_a_schedule() {
    let s = parse_ok(&with_url(
        "[schedule]\ncron = \"0 3 * * 1-5\"\ntimezone = \"Europe/Berlin\"\n",
    ));
    assert_eq!(s.schedule.cron.as_deref(), Some("0 3 * * 1-5"));
    let schedule = s.schedule.schedule.expect("parsed");
    assert_eq!(schedule.to_string(), "0 0 3 * * Mon-Fri (Europe/Berlin)");
    let s = parse_ok(&with_url("[schedule]\ncron = \"0 30 3 * * *\"\n"));
    assert_eq!(
        s.schedule.schedule.map(|s| s.to_string()).as_deref(),
        Some("0 30 3 * * * (local time)")
    );
    let s = parse_ok(&with_url("[schedule]\ncatch_up = false\n"));
    assert!(s.schedule.schedule.is_none() && !s.schedule.catch_up);
}

#[test]
fn a_bad_cron_is_a_config_error_at_its_line() {
    let e = error(&with_url("[schedule]\ncron = \"daily\"\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:8: `schedule.cron` is `daily`: it has 1 field",
            "\"0 3 * * *\"",
            "\"@daily\"",
        ],
    );
    let e = error(&with_url("[schedule]\ncron = \"0 3 * * 8\"\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:8: `schedule.cron` is `0 3 * * 8`: its day-of-week field `8` is not valid",
            "\"0 3 * * mon-fri\"",
        ],
    );
}

#[test]
fn a_bad_timezone_is_a_config_error_at_its_line() {
    let e = error(&with_url(
        "[schedule]\ncron = \"0 3 * * *\"\ntimezone = \"Europe/Berln\"\n",
    ));
    assert_mentions(
        &e,
        &[
            "farmd.toml:5:12: `schedule.timezone` is `Europe/Berln`: it is not an IANA time zone name",
            "did you mean \"Europe/Berlin\"?",
        ],
    );
    // Without a cron line the zone is unused, but still checked.
    let e = error(&with_url("[schedule]\ntimezone = \"Mars/Olympus\"\n"));
    assert_mentions(
        &e,
        &["farmd.toml:4:12: `schedule.timezone` is `Mars/Olympus`"],
    );
}

#[test]
fn empty_commands_are_refused() {
    let e = error(&with_url("[hooks]\non_failure = \"  \"\n"));
    assert_mentions(
        &e,
        &[
            "farmd.toml:4:14: `hooks.on_failure` is empty",
            "remove the key",
        ],
    );
}

#[test]
fn the_example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/farmd.example.toml");
    let s = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.repo.url, "git@github.com:example/fleet.git");
}

/// The example with every `#key = value` and `#[section]` line made live, as a user would
/// uncomment them. Prose lines start with `# ` and stay comments.
fn example_uncommented() -> String {
    EXAMPLE
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| !c.is_whitespace() && c != '#') => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_example_documents_every_key() {
    let text = example_uncommented();
    let (index, unknown) = KeyIndex::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    if let Some(u) = unknown {
        panic!("the example has unknown key `{}` in [{}]", u.key, u.section);
    }
    let mut missing = Vec::new();
    for (section, fields) in raw::schema() {
        for field in fields {
            let path = if section.is_empty() {
                field.to_string()
            } else {
                format!("{section}.{field}")
            };
            if index.get(&path).is_none() {
                missing.push(path);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from config/farmd.example.toml: {missing:?}"
    );
}

#[test]
fn the_examples_commented_values_have_the_right_types() {
    let text = example_uncommented();
    toml::from_str::<RawConfig>(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn the_examples_commented_defaults_are_the_real_defaults() {
    // Lines documenting a default (`#key = value` whose prose does not say "e.g." or give a
    // different default) must match what an empty config yields.
    let defaults = toml::Value::try_from(RawConfig::default()).unwrap();
    let text = example_uncommented();
    let example: toml::Value = toml::from_str(&text).unwrap();
    for (section, key) in [
        ("repo", "branch"),
        ("update", "enable"),
        ("update", "author"),
        ("update", "push"),
        ("build", "machines"),
        ("build", "jobs"),
        ("build", "timeout"),
        ("state", "dir"),
        ("schedule", "catch_up"),
        ("control", "socket"),
        ("hooks", "timeout"),
    ] {
        assert_eq!(
            example[section][key], defaults[section][key],
            "{section}.{key}"
        );
    }
    for key in ["nixos", "darwin", "home"] {
        assert_eq!(
            example["build"]["attributes"][key],
            defaults["build"]["attributes"][key]
        );
    }
    let cache = toml::Value::try_from(raw::RawCache::default()).unwrap();
    for key in ["compression", "jobs", "priority", "upload_logs"] {
        assert_eq!(example["cache"][key], cache[key], "cache.{key}");
    }
    for key in ["keep_generations", "keep_days", "grace", "gc_after_publish"] {
        assert_eq!(
            example["cache"]["retention"][key], cache["retention"][key],
            "cache.retention.{key}"
        );
    }
}

#[test]
fn retention_has_defaults_and_refuses_keeping_no_generation() {
    let cache = |extra: &str| {
        with_url(&format!(
            "[cache]\nurl = \"file:///srv/cache\"\nsecret_key_files = [\"/k\"]\n{extra}"
        ))
    };
    let r = parse_ok(&cache("")).cache.unwrap().retention;
    assert_eq!(
        (
            r.keep_generations.get(),
            r.keep_days,
            r.grace,
            r.gc_after_publish
        ),
        (3, 14, std::time::Duration::from_secs(3600), true)
    );
    let r = parse_ok(&cache(
        "[cache.retention]\nkeep_generations = 5\nkeep_days = 0\ngrace = \"10m\"\ngc_after_publish = false\n",
    ))
    .cache
    .unwrap()
    .retention;
    assert_eq!(
        (
            r.keep_generations.get(),
            r.keep_days,
            r.grace,
            r.gc_after_publish
        ),
        (5, 0, std::time::Duration::from_secs(600), false)
    );
    let e = error(&cache("[cache.retention]\nkeep_generations = 0\n"));
    assert_mentions(
        &e,
        &["`cache.retention.keep_generations` is 0", "at least 1"],
    );
    let e = error(&cache("[cache.retention]\ngrace = \"soon\"\n"));
    assert_mentions(&e, &["`cache.retention.grace` is `soon`"]);
    let e = error(&cache("[cache.retention]\nkeep_generation = 2\n"));
    assert_mentions(&e, &["keep_generations"]);
}
