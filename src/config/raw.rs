//! The config file as written: serde structs that mirror the TOML one to one, with
//! `deny_unknown_fields` and every default named here. Nothing is checked beyond TOML types;
//! [`super::validate`] turns a [`RawConfig`] into [`super::Settings`].
//!
//! Keys whose presence matters (a required `url`, an auth method that excludes another) are
//! `Option`s so validation can tell "not written" from "written as the default". The structs
//! also serialize, so `farmctl check-config` can print the effective settings in the same shape
//! the file is written in.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::settings::{Compression, MachineSelection, PushPolicy, RepoAuth, Settings};
use crate::record::MachineKind;

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub repo: RawRepo,
    pub update: RawUpdate,
    pub build: RawBuild,
    pub state: RawState,
    /// Optional: without it nothing is published.
    pub cache: Option<RawCache>,
    pub schedule: RawSchedule,
    pub control: RawControl,
    pub hooks: RawHooks,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRepo {
    /// Required.
    pub url: Option<String>,
    /// Default: `main`.
    pub branch: String,
    /// Default: `branch`.
    pub push_branch: Option<String>,
    pub ssh_key: Option<PathBuf>,
    pub ssh_key_passphrase_file: Option<PathBuf>,
    /// Default: false.
    pub ssh_agent: bool,
    pub token_file: Option<PathBuf>,
    /// Default: `git` (only with `token_file`).
    pub token_user: Option<String>,
    pub known_hosts: Option<PathBuf>,
    pub prepare: Option<String>,
}

pub const DEFAULT_TOKEN_USER: &str = "git";

impl Default for RawRepo {
    fn default() -> Self {
        RawRepo {
            url: None,
            branch: "main".into(),
            push_branch: None,
            ssh_key: None,
            ssh_key_passphrase_file: None,
            ssh_agent: false,
            token_file: None,
            token_user: None,
            known_hosts: None,
            prepare: None,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpdate {
    /// Default: true.
    pub enable: bool,
    /// Default: empty (= every input).
    pub inputs: Vec<String>,
    /// `Name <email>`. Default: `farmd <farmd@localhost>`.
    pub author: String,
    /// Default: `built`.
    pub push: RawPush,
}

impl Default for RawUpdate {
    fn default() -> Self {
        RawUpdate {
            enable: true,
            inputs: Vec::new(),
            author: "farmd <farmd@localhost>".into(),
            push: RawPush::Built,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawPush {
    Built,
    Always,
    Never,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawBuild {
    /// Default: `"auto"`.
    pub machines: RawMachines,
    /// Default: `["nixos"]` (only meaningful with `machines = "auto"`).
    pub discover: Option<Vec<MachineKind>>,
    pub attributes: RawAttributes,
    /// Default: 1.
    pub jobs: usize,
    pub max_jobs: Option<u32>,
    pub cores: Option<u32>,
    pub builders: Option<String>,
    /// Default: empty.
    pub extra_platforms: Vec<String>,
    /// Default: empty.
    pub nix_options: BTreeMap<String, String>,
    /// A humantime duration. Default: `4h`.
    pub timeout: String,
}

impl Default for RawBuild {
    fn default() -> Self {
        RawBuild {
            machines: RawMachines::Keyword("auto".into()),
            discover: None,
            attributes: RawAttributes::default(),
            jobs: 1,
            max_jobs: None,
            cores: None,
            builders: None,
            extra_platforms: Vec::new(),
            nix_options: BTreeMap::new(),
            timeout: "4h".into(),
        }
    }
}

/// `machines = "auto"` or `machines = ["pi3", "darwin:mac"]`. The keyword is kept as written so
/// validation can point at a misspelt `"atuo"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RawMachines {
    Keyword(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for RawMachines {
    // Hand-written rather than `#[serde(untagged)]`: untagged's error is "data did not match any
    // variant", which tells a user nothing.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMachines;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""auto" or a list of machine names like ["pi3", "darwin:mac"]"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RawMachines, E> {
                Ok(RawMachines::Keyword(s.to_owned()))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawMachines, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(RawMachines::List(names))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAttributes {
    pub nixos: String,
    pub darwin: String,
    pub home: String,
}

impl Default for RawAttributes {
    fn default() -> Self {
        RawAttributes {
            nixos: "nixosConfigurations.{name}.config.system.build.toplevel".into(),
            darwin: "darwinConfigurations.{name}.system".into(),
            home: "homeConfigurations.{name}.activationPackage".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawState {
    /// Default: `/var/lib/farmd`.
    pub dir: PathBuf,
    /// Runs whose build logs are kept. Default: 50.
    pub keep_logs: usize,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            dir: "/var/lib/farmd".into(),
            keep_logs: 50,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCache {
    /// Required when `[cache]` is present.
    pub url: Option<String>,
    /// At least one.
    pub secret_key_files: Vec<PathBuf>,
    /// Default: `zstd`.
    pub compression: RawCompression,
    /// Default: 3 for zstd, 6 for xz, 0 for none.
    pub level: Option<i32>,
    /// Default: 4.
    pub jobs: usize,
    /// Default: 40.
    pub priority: u32,
    /// Default: true.
    pub upload_logs: bool,
    pub ssh_identity: Option<PathBuf>,
    pub ssh_known_hosts: Option<PathBuf>,
    pub retention: RawRetention,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRetention {
    /// Default: 3.
    pub keep_generations: usize,
    /// Default: 14.
    pub keep_days: u32,
    /// A humantime duration. Default: `1h`.
    pub grace: String,
    /// Default: true.
    pub gc_after_publish: bool,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention {
            keep_generations: 3,
            keep_days: 14,
            grace: "1h".into(),
            gc_after_publish: true,
        }
    }
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            url: None,
            secret_key_files: Vec::new(),
            compression: RawCompression::Zstd,
            level: None,
            jobs: 4,
            priority: 40,
            upload_logs: true,
            ssh_identity: None,
            ssh_known_hosts: None,
            retention: RawRetention::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawCompression {
    Zstd,
    Xz,
    None,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSchedule {
    pub cron: Option<String>,
    pub timezone: Option<String>,
    /// Default: true.
    pub catch_up: bool,
}

impl Default for RawSchedule {
    fn default() -> Self {
        RawSchedule {
            cron: None,
            timezone: None,
            catch_up: true,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawControl {
    /// Default: `/run/farmd/control.sock`.
    pub socket: PathBuf,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            socket: "/run/farmd/control.sock".into(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHooks {
    pub on_success: Option<String>,
    pub on_failure: Option<String>,
    /// A humantime duration. Default: `5m`.
    pub timeout: String,
}

impl Default for RawHooks {
    fn default() -> Self {
        RawHooks {
            on_success: None,
            on_failure: None,
            timeout: "5m".into(),
        }
    }
}

/// The settings written back in the file's shape: what `farmctl check-config` shows, and a
/// config that loads to the same settings (paths are absolute by then).
impl From<&Settings> for RawConfig {
    fn from(s: &Settings) -> Self {
        let path = |p: &PathBuf| p.clone();
        let (ssh_key, ssh_key_passphrase_file, ssh_agent, token_file, token_user) =
            match &s.repo.auth {
                RepoAuth::Default => (None, None, false, None, None),
                RepoAuth::SshKey {
                    key,
                    passphrase_file,
                } => (Some(path(key)), passphrase_file.clone(), false, None, None),
                RepoAuth::SshAgent => (None, None, true, None, None),
                RepoAuth::Token { file, user } => {
                    (None, None, false, Some(path(file)), Some(user.clone()))
                }
            };
        let (machines, discover) = match &s.build.machines {
            MachineSelection::Auto(kinds) => {
                (RawMachines::Keyword("auto".into()), Some(kinds.clone()))
            }
            MachineSelection::List(refs) => (
                RawMachines::List(
                    refs.iter()
                        .map(|r| match r.kind {
                            MachineKind::Nixos => r.name.to_string(),
                            kind => format!("{}:{}", kind.as_str(), r.name),
                        })
                        .collect(),
                ),
                None,
            ),
        };
        let attribute = |kind| s.build.attributes.get(&kind).cloned().unwrap_or_default();
        let duration = |d: &std::time::Duration| humantime::format_duration(*d).to_string();
        RawConfig {
            repo: RawRepo {
                url: Some(s.repo.url.clone()),
                branch: s.repo.branch.clone(),
                push_branch: Some(s.repo.push_branch.clone()),
                ssh_key,
                ssh_key_passphrase_file,
                ssh_agent,
                token_file,
                token_user,
                known_hosts: s.repo.known_hosts.clone(),
                prepare: s.repo.prepare.clone(),
            },
            update: RawUpdate {
                enable: s.update.enable,
                inputs: s.update.inputs.clone(),
                author: format!("{} <{}>", s.update.author_name, s.update.author_email),
                push: match s.update.push {
                    PushPolicy::Built => RawPush::Built,
                    PushPolicy::Always => RawPush::Always,
                    PushPolicy::Never => RawPush::Never,
                },
            },
            build: RawBuild {
                machines,
                discover,
                attributes: RawAttributes {
                    nixos: attribute(MachineKind::Nixos),
                    darwin: attribute(MachineKind::Darwin),
                    home: attribute(MachineKind::Home),
                },
                jobs: s.build.jobs.get(),
                max_jobs: s.build.max_jobs,
                cores: s.build.cores,
                builders: s.build.builders.clone(),
                extra_platforms: s.build.extra_platforms.clone(),
                nix_options: s.build.nix_options.clone(),
                timeout: duration(&s.build.timeout),
            },
            state: RawState {
                dir: s.state.dir.clone(),
                keep_logs: s.state.keep_logs.get(),
            },
            cache: s.cache.as_ref().map(|c| RawCache {
                url: Some(c.url.clone()),
                secret_key_files: c.secret_key_files.clone(),
                compression: match c.compression {
                    Compression::Zstd => RawCompression::Zstd,
                    Compression::Xz => RawCompression::Xz,
                    Compression::None => RawCompression::None,
                },
                level: Some(c.level),
                jobs: c.jobs.get(),
                priority: c.priority,
                upload_logs: c.upload_logs,
                ssh_identity: c.ssh_identity.clone(),
                ssh_known_hosts: c.ssh_known_hosts.clone(),
                retention: RawRetention {
                    keep_generations: c.retention.keep_generations.get(),
                    keep_days: c.retention.keep_days,
                    grace: duration(&c.retention.grace),
                    gc_after_publish: c.retention.gc_after_publish,
                },
            }),
            schedule: RawSchedule {
                cron: s.schedule.cron.clone(),
                timezone: s.schedule.timezone.clone(),
                catch_up: s.schedule.catch_up,
            },
            control: RawControl {
                socket: s.control.socket.clone(),
            },
            hooks: RawHooks {
                on_success: s.hooks.on_success.clone(),
                on_failure: s.hooks.on_failure.clone(),
                timeout: duration(&s.hooks.timeout),
            },
        }
    }
}

/// Every table of the file (`""` is the top level) with the keys it accepts (tables not
/// listed, like `[build.nix_options]`, hold the user's own keys), read from the serde
/// derives above so the unknown-key check and the example-file test can never disagree with
/// what deserialization accepts.
pub fn schema() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", fields_of::<RawConfig>()),
        ("repo", fields_of::<RawRepo>()),
        ("update", fields_of::<RawUpdate>()),
        ("build", fields_of::<RawBuild>()),
        ("build.attributes", fields_of::<RawAttributes>()),
        ("state", fields_of::<RawState>()),
        ("cache", fields_of::<RawCache>()),
        ("cache.retention", fields_of::<RawRetention>()),
        ("schedule", fields_of::<RawSchedule>()),
        ("control", fields_of::<RawControl>()),
        ("hooks", fields_of::<RawHooks>()),
    ]
}

/// The field names a derived `Deserialize` struct accepts.
fn fields_of<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    struct_shape::<T>().1
}

/// The `(name, fields)` a `Deserialize` impl hands to `deserialize_struct`, read by a
/// deserializer that only records them and stops. serde derives pass the field names this way;
/// `toml::Spanned` and toml's datetime pass the marker names toml recognises them by.
pub(super) fn struct_shape<T: for<'de> Deserialize<'de>>() -> (&'static str, &'static [&'static str])
{
    struct Probe<'a>(&'a mut (&'static str, &'static [&'static str]));

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = (name, fields);
            Err(de::Error::custom("shape recorded"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut shape: (&'static str, &'static [&'static str]) = ("", &[]);
    let _ = T::deserialize(Probe(&mut shape));
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_lists_the_fields_serde_accepts() {
        let schema = schema();
        let build = schema.iter().find(|(p, _)| *p == "build").unwrap().1;
        assert!(build.contains(&"jobs") && build.contains(&"nix_options"));
        for (path, fields) in &schema {
            assert!(!fields.is_empty(), "no fields recorded for [{path}]");
        }
    }
}
