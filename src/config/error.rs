//! [`ConfigError`]: what is wrong with a config file, where (file, line, column, key) and what
//! to do about it. Messages are one line, `path:line:column: …`, the shape editors and
//! `journalctl` readers already know; the underlying I/O error, if any, is the error's source.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist.
    #[error(
        "config file `{}` does not exist; pass --config PATH, or create it from config/farmd.example.toml",
        path.display()
    )]
    NotFound { path: PathBuf },

    /// The file exists but could not be read (permissions, not a file, not UTF-8).
    #[error("cannot read config file `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Not valid TOML, or a value of the wrong type (as reported by the TOML parser).
    #[error("{at}: {}{message}", key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Toml {
        at: Location,
        /// The key the error is in, when it is in one (`build.jobs`).
        key: Option<String>,
        message: String,
    },

    /// A key or section farmd does not know, usually a typo.
    #[error("{at}: {}", unknown_key_message(section, key, suggestion))]
    UnknownKey {
        at: Location,
        /// The table it was found in (`build`; empty for the top level).
        section: String,
        key: String,
        suggestion: Option<Suggestion>,
    },

    /// A required key is absent.
    #[error("{at}: `{key}` is not set; {hint}")]
    Missing {
        at: Location,
        key: String,
        hint: String,
    },

    /// A value that parsed but makes no sense (out of range, conflicting, malformed).
    #[error("{at}: `{key}` {problem}{}", if hint.is_empty() { String::new() } else { format!("; {hint}") })]
    Invalid {
        at: Location,
        key: String,
        problem: String,
        hint: String,
    },
}

impl ConfigError {
    /// Where in which file the problem is (None for errors about the file as a whole).
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::NotFound { .. } | ConfigError::Read { .. } => None,
            ConfigError::Toml { at, .. }
            | ConfigError::UnknownKey { at, .. }
            | ConfigError::Missing { at, .. }
            | ConfigError::Invalid { at, .. } => Some(at),
        }
    }
}

/// What an unknown key was probably meant to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Suggestion {
    /// A key of the same table with a similar spelling.
    Similar(String),
    /// The same key exists, but in another table (`jobs` written under `[repo]`).
    InSection(String),
}

fn unknown_key_message(section: &str, key: &str, suggestion: &Option<Suggestion>) -> String {
    let is_section = section.is_empty();
    let mut msg = if is_section {
        format!("unknown section or key `{key}` at the top level")
    } else {
        format!("unknown key `{key}` in [{section}]")
    };
    match suggestion {
        Some(Suggestion::Similar(s)) if is_section => {
            msg += &format!("; did you mean [{s}]?");
        }
        Some(Suggestion::Similar(s)) => msg += &format!("; did you mean `{s}`?"),
        Some(Suggestion::InSection(s)) => msg += &format!("; `{key}` belongs in [{s}]"),
        None if is_section => {
            msg += "; see config/farmd.example.toml for the sections farmd reads";
        }
        None => msg += &format!("; see config/farmd.example.toml for the keys of [{section}]"),
    }
    msg
}

/// A place in a config file. Lines and columns count from 1; columns count characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    /// `(line, column)`, when the problem is at a particular place. (`u32` keeps
    /// [`ConfigError`] small enough to return by value.)
    pub position: Option<(u32, u32)>,
}

impl Location {
    pub fn file(path: &Path) -> Self {
        Location {
            path: path.to_owned(),
            position: None,
        }
    }

    /// The position of byte offset `span.start` in `text` (just the file without a span).
    pub fn at_span(path: &Path, text: &str, span: Option<Range<usize>>) -> Self {
        let Some(span) = span else {
            return Location::file(path);
        };
        let offset = span.start.min(text.len());
        let before = &text[..floor_char_boundary(text, offset)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Location {
            path: path.to_owned(),
            position: Some((clamp(line), clamp(column))),
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_become_one_based_line_and_column() {
        let text = "a = 1\n[build]\njbös = 2\nx = 3";
        let at =
            |offset| Location::at_span(Path::new("f.toml"), text, Some(offset..offset)).position;
        assert_eq!(at(0), Some((1, 1)));
        assert_eq!(at(6), Some((2, 1)));
        // Columns count characters, not bytes: `=` follows the two-byte `ö`.
        assert_eq!(at(text.find("= 2").unwrap()), Some((3, 6)));
        assert_eq!(at(text.len()), Some((4, 6)));
    }
}
