//! `farmctl check-config [PATH]`: the effective settings, shown in the config file's own shape
//! with every default filled in and every path absolute, so a user sees exactly what farmd will
//! do. Loading and validating is [`crate::config`]'s job; this only renders.
//!
//! The output is itself a valid config that loads to the same settings; unset optional keys are
//! listed as comments so every key farmd reads appears.

use std::fmt::Write;

use crate::config::{self, Settings};

/// The effective settings as TOML with a comment line for each key left unset.
pub fn render(settings: &Settings) -> String {
    let mut out = format!(
        "# Effective settings of {}: defaults filled in, relative paths resolved.\n",
        settings.source.display()
    );
    let table = match config::to_table(settings) {
        Ok(table) => table,
        // Only a path that is not UTF-8 gets here; show what we have rather than nothing.
        Err(e) => {
            let _ = writeln!(out, "# (cannot be shown as TOML: {e})\n{settings:#?}");
            return out;
        }
    };
    let schema = config::schema();
    let keys_of = |path: &str| schema.iter().find(|(p, _)| *p == path).map(|(_, k)| *k);
    for section in keys_of("").unwrap_or_default() {
        let Some(toml::Value::Table(values)) = table.get(*section) else {
            let _ = writeln!(out, "\n# [{section}]: not set");
            continue;
        };
        let _ = writeln!(out, "\n[{section}]");
        let mut subtables = Vec::new();
        for key in keys_of(section).unwrap_or_default() {
            match values.get(*key) {
                Some(toml::Value::Table(sub)) => subtables.push((*key, sub)),
                Some(value) => {
                    let _ = writeln!(out, "{key} = {value}");
                }
                None => {
                    let _ = writeln!(out, "# {key}: not set");
                }
            }
        }
        for (key, sub) in subtables {
            let _ = writeln!(out, "\n[{section}.{key}]");
            if sub.is_empty() {
                let _ = writeln!(out, "# none");
            }
            // Our own tables in file order; the user's (nix options) as they sort.
            let names: Vec<&str> = match keys_of(&format!("{section}.{key}")) {
                Some(known) => known.to_vec(),
                None => sub.keys().map(String::as_str).collect(),
            };
            for name in names {
                if let Some(value) = sub.get(name) {
                    let _ = writeln!(out, "{} = {value}", toml_key(name));
                }
            }
        }
    }
    out
}

/// A key as TOML needs it written: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare {
        key.to_owned()
    } else {
        toml::Value::String(key.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TEXT: &str = r#"
[repo]
url = "https://example.org/fleet.git"
token_file = "secrets/token"

[build]
machines = ["pi3", "darwin:mac"]
timeout = "90m"

[build.nix_options]
keep-going = "true"
"odd.key" = "x"

[cache]
url = "sftp://farm@cache.example.org/srv/nix-cache"
secret_key_files = ["/var/lib/farmd/cache.sk"]
"#;

    fn settings(text: &str) -> Settings {
        config::parse(text, Path::new("/etc/farmd/farmd.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn rendering_shows_defaults_resolved_paths_and_unset_keys() {
        let out = render(&settings(TEXT));
        for line in [
            "# Effective settings of /etc/farmd/farmd.toml",
            "[repo]\nurl = \"https://example.org/fleet.git\"\nbranch = \"main\"\npush_branch = \"main\"\n",
            "# ssh_key: not set\n",
            "token_file = \"/etc/farmd/secrets/token\"\n",
            "token_user = \"git\"\n",
            "author = \"farmd <farmd@localhost>\"\n",
            "machines = [\"pi3\", \"darwin:mac\"]\n",
            "timeout = \"1h 30m\"\n",
            "[build.attributes]\nnixos = \"nixosConfigurations.{name}.config.system.build.toplevel\"\n",
            "[build.nix_options]\nkeep-going = \"true\"\n\"odd.key\" = \"x\"\n",
            "level = 3\n",
            "[hooks]\n# on_success: not set\n# on_failure: not set\ntimeout = \"5m\"\n",
        ] {
            assert!(out.contains(line), "`{line}` not in:\n{out}");
        }
    }

    #[test]
    fn a_missing_cache_section_is_said_to_be_unset() {
        let out = render(&settings("[repo]\nurl = \"x\"\n"));
        assert!(out.contains("\n# [cache]: not set\n"), "{out}");
        assert!(out.contains("[build.nix_options]\n# none\n"), "{out}");
    }

    #[test]
    fn rendered_settings_load_back_to_the_same_settings() {
        let example = include_str!("../../config/farmd.example.toml");
        for text in [
            TEXT,
            example,
            "[repo]\nurl = \"git@h:f\"\nssh_agent = true\n",
        ] {
            let before = settings(text);
            let after = settings(&render(&before));
            assert_eq!(
                serde_json::to_value(&before).unwrap(),
                serde_json::to_value(&after).unwrap(),
                "{}",
                render(&before)
            );
        }
    }
}
