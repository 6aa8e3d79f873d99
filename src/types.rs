//! Domain types parsed at the border. Inside the program a machine name or a store path is never
//! a bare `String`: once one of these exists, it is valid to put into an attribute path, a file
//! name or a narinfo.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A machine's name as it appears in the flake (`nixosConfigurations.<name>`).
///
/// Restricted to what is safe both in a Nix attribute path and in a file name under the state
/// directory: ASCII letters, digits, `-` and `_`, starting with a letter, digit or `_`, at most
/// 63 bytes (a hostname label). Anything else is refused before it reaches a command line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidName {
    #[error("machine name is empty")]
    Empty,
    #[error("machine name `{0}` is longer than 63 characters")]
    TooLong(String),
    #[error(
        "machine name `{name}` contains `{ch}`; only ASCII letters, digits, `-` and `_` are allowed"
    )]
    BadChar { name: String, ch: char },
    #[error("machine name `{0}` must start with a letter, a digit or `_`")]
    BadStart(String),
}

impl MachineName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for MachineName {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(InvalidName::Empty);
        }
        if s.len() > 63 {
            return Err(InvalidName::TooLong(s.chars().take(80).collect()));
        }
        if let Some(ch) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(InvalidName::BadChar {
                name: s.escape_debug().to_string(),
                ch,
            });
        }
        if s.starts_with('-') {
            return Err(InvalidName::BadStart(s.to_owned()));
        }
        Ok(MachineName(s.to_owned()))
    }
}

impl TryFrom<String> for MachineName {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MachineName> for String {
    fn from(n: MachineName) -> String {
        n.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Nix store directory every path lives in. Debian's nix-bin and NixOS both use this one.
pub const STORE_DIR: &str = "/nix/store";

/// The nixbase32 alphabet (no `e`, `o`, `u`, `t`).
pub const NIXBASE32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A full store path, `/nix/store/<32-char hash>-<name>`, checked the way Nix checks it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorePath(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{path}` is not a valid Nix store path: {why}")]
pub struct InvalidStorePath {
    pub path: String,
    pub why: &'static str,
}

impl StorePath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<hash>-<name>`, the part after `/nix/store/`.
    pub fn base_name(&self) -> &str {
        &self.0[STORE_DIR.len() + 1..]
    }

    /// The 32-character nixbase32 hash part (the narinfo's file name).
    pub fn hash_part(&self) -> &str {
        &self.base_name()[..32]
    }

    pub fn name(&self) -> &str {
        &self.base_name()[33..]
    }

    /// Parses a base name (`<hash>-<name>`), as narinfo `References:` hold them.
    pub fn from_base_name(base: &str) -> Result<Self, InvalidStorePath> {
        format!("{STORE_DIR}/{base}").parse()
    }
}

impl FromStr for StorePath {
    type Err = InvalidStorePath;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidStorePath {
            path: s.escape_debug().to_string(),
            why,
        };
        let base = s
            .strip_prefix(STORE_DIR)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| bad("it is not under /nix/store"))?;
        if base.contains('/') {
            return Err(bad("it names a file inside a store path"));
        }
        if base.len() < 34 || base.as_bytes()[32] != b'-' {
            return Err(bad("it lacks the `<32-character hash>-<name>` form"));
        }
        if !base.as_bytes()[..32]
            .iter()
            .all(|b| NIXBASE32_ALPHABET.contains(b))
        {
            return Err(bad("its hash part is not nixbase32"));
        }
        let name = &base[33..];
        if name.len() > 211 {
            return Err(bad("its name is longer than 211 characters"));
        }
        if name.starts_with('.')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b))
        {
            return Err(bad("its name has characters Nix does not allow"));
        }
        Ok(StorePath(s.to_owned()))
    }
}

impl TryFrom<String> for StorePath {
    type Error = InvalidStorePath;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<StorePath> for String {
    fn from(p: StorePath) -> String {
        p.0
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_safe_for_attr_paths_and_files_are_accepted() {
        for ok in ["pi3", "web-01", "_x", "A_b-9"] {
            assert_eq!(ok.parse::<MachineName>().unwrap().as_str(), ok);
        }
    }

    #[test]
    fn machine_names_that_could_escape_are_refused() {
        assert_eq!("".parse::<MachineName>(), Err(InvalidName::Empty));
        for bad in ["../etc", "a b", "a.b", "x\"y", "a/b", "é", "a;rm"] {
            assert!(
                matches!(bad.parse::<MachineName>(), Err(InvalidName::BadChar { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            "-rf".parse::<MachineName>(),
            Err(InvalidName::BadStart(_))
        ));
        assert!(matches!(
            "a".repeat(64).parse::<MachineName>(),
            Err(InvalidName::TooLong(_))
        ));
    }

    #[test]
    fn store_paths_are_split_into_hash_and_name() {
        let p: StorePath = "/nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-dep-alpha"
            .parse()
            .unwrap();
        assert_eq!(p.hash_part(), "zrkr1yakb0k47k4yj1hicsr4mcb8xyv4");
        assert_eq!(p.name(), "dep-alpha");
        assert_eq!(p.base_name(), "zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-dep-alpha");
        assert_eq!(StorePath::from_base_name(p.base_name()).unwrap(), p);
    }

    #[test]
    fn malformed_store_paths_are_refused() {
        for bad in [
            "/tmp/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-x",
            "/nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4",
            "/nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyve-x",
            "/nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-x/bin/sh",
            "/nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-a b",
            "/nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-.hidden",
        ] {
            assert!(bad.parse::<StorePath>().is_err(), "{bad}");
        }
    }
}
