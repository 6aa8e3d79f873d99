//! The config file: one TOML file (default [`DEFAULT_CONFIG_PATH`]; every key is documented in
//! `config/farmd.example.toml`), read in three passes:
//!
//! 1. [`document`] indexes every key with its position and refuses unknown keys, suggesting
//!    the key that was probably meant;
//! 2. serde reads it into the [`raw`] structs (`deny_unknown_fields`, named defaults);
//! 3. [`validate`] checks it in one step into [`Settings`] of domain types.
//!
//! Relative paths in the file are resolved against the directory the file is in (so
//! `ssh_key = "deploy_key"` next to `/etc/farmd/farmd.toml` means `/etc/farmd/deploy_key`),
//! except `[state] dir`, which must be absolute. `~` is not expanded.
//!
//! This module does not read secrets or check their permissions: [`Settings`] holds their
//! paths, and whoever opens a secret checks it then (a key rotated on disk is then picked up).

mod document;
mod error;
mod raw;
mod settings;
mod validate;

#[cfg(test)]
mod tests;

use std::io;
use std::path::Path;

pub use error::{ConfigError, Location, Suggestion};
pub use settings::*;

use document::KeyIndex;

/// The tables of the file (`""` is the top level) and the keys each accepts, in file order.
/// Tables not listed (`build.nix_options`) hold the user's own keys.
pub fn schema() -> Vec<(&'static str, &'static [&'static str])> {
    raw::schema()
}

/// `settings` written back in the config file's shape, every default filled in and every
/// path absolute: loading it gives the same settings. Unset optional keys are absent.
pub fn to_table(settings: &Settings) -> Result<toml::Table, toml::ser::Error> {
    toml::Table::try_from(raw::RawConfig::from(settings))
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ConfigError::NotFound {
            path: path.to_owned(),
        },
        _ => ConfigError::Read {
            path: path.to_owned(),
            source,
        },
    })?;
    parse(&text, path)
}

/// Validates config `text` that was read from `source` (named in errors; relative paths in the
/// text are resolved against its directory).
pub fn parse(text: &str, source: &Path) -> Result<Settings, ConfigError> {
    let (index, unknown) = KeyIndex::parse(text).map_err(|e| toml_error(&e, text, source, None))?;
    if let Some(u) = unknown {
        return Err(ConfigError::UnknownKey {
            at: Location::at_span(source, text, u.span),
            section: u.section,
            key: u.key,
            suggestion: u.suggestion,
        });
    }
    let raw: raw::RawConfig =
        toml::from_str(text).map_err(|e| toml_error(&e, text, source, Some(&index)))?;
    let base_dir = std::path::absolute(source)
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
        .unwrap_or_default();
    let cx = validate::Context {
        source,
        text,
        index: &index,
        base_dir,
    };
    validate::validate(raw, &cx)
}

fn toml_error(
    e: &toml::de::Error,
    text: &str,
    source: &Path,
    index: Option<&KeyIndex>,
) -> ConfigError {
    let span = e.span();
    let key = span
        .clone()
        .zip(index)
        .and_then(|(s, index)| index.key_at(s.start))
        .map(str::to_owned);
    // serde names Rust types; say what they mean in a config file.
    let message = e
        .message()
        .trim()
        .replace("expected usize", "expected a whole number (0 or more)")
        .replace("expected u32", "expected a whole number (0 or more)")
        .replace("expected i32", "expected a whole number");
    ConfigError::Toml {
        at: Location::at_span(source, text, span),
        key,
        message,
    }
}
