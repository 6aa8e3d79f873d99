//! OpenSSH `known_hosts` files, parsed and matched the way `ssh` does with
//! `StrictHostKeyChecking=yes`: a host key is trusted only when a line for the host holds exactly
//! that key. This module only decides; turning a verdict into a [`super::GitError`] and wiring it
//! into libgit2's certificate callback lives in `remote.rs`.
//!
//! Supported: plain and wildcard (`*`, `?`) host patterns, `!negated` patterns, comma lists,
//! `[host]:port` for ports other than 22, hashed `|1|salt|hmac` entries (HMAC-SHA1 of the same
//! host string), `@revoked` (refused) and `@cert-authority` (skipped: libssh2 cannot present
//! host certificates), comments and blank lines.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// One usable line of a known_hosts file.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub file: PathBuf,
    /// 1-based, as editors and `ssh-keygen -R` report it.
    pub line: usize,
    revoked: bool,
    hosts: Vec<HostPattern>,
    pub key_type: String,
    key: Vec<u8>,
}

#[derive(Clone, Debug)]
enum HostPattern {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Glob { pattern: String, negated: bool },
}

/// What the known_hosts files say about a key a server presented.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Trusted,
    /// No line for this host holds a key of this type. `known_types` lists the types the files do
    /// hold for the host (empty: the host is not known at all).
    Unknown {
        known_types: Vec<String>,
    },
    /// A line for this host holds a different key of the same type.
    Changed {
        file: PathBuf,
        line: usize,
    },
    /// The key is listed under `@revoked`.
    Revoked {
        file: PathBuf,
        line: usize,
    },
}

/// The host string ssh looks up and hashes: `host` on port 22, `[host]:port` otherwise.
pub(crate) fn host_string(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// The key type named inside an SSH wire-format public key blob (its first string).
pub(crate) fn blob_key_type(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4usize.checked_add(len)?)?).ok()
}

#[derive(Debug, Default)]
pub(crate) struct KnownHosts {
    entries: Vec<Entry>,
}

impl KnownHosts {
    /// Reads the files in order; a missing file counts as empty (ssh does the same).
    pub fn load(files: &[PathBuf]) -> std::io::Result<KnownHosts> {
        let mut entries = Vec::new();
        for file in files {
            match std::fs::read_to_string(file) {
                Ok(text) => entries.extend(parse(&text, file)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(KnownHosts { entries })
    }

    pub fn check(&self, host: &str, port: u16, key: &[u8]) -> Verdict {
        let host = host_string(host, port);
        let key_type = blob_key_type(key).unwrap_or("unknown");
        let for_host: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.matches_host(&host))
            .collect();
        // Revocation wins over any other line, as in ssh.
        if let Some(e) = for_host.iter().find(|e| e.revoked && e.key == key) {
            return Verdict::Revoked {
                file: e.file.clone(),
                line: e.line,
            };
        }
        let trusted: Vec<&&Entry> = for_host.iter().filter(|e| !e.revoked).collect();
        if trusted.iter().any(|e| e.key == key) {
            return Verdict::Trusted;
        }
        if let Some(e) = trusted.iter().find(|e| e.key_type == key_type) {
            return Verdict::Changed {
                file: e.file.clone(),
                line: e.line,
            };
        }
        let mut known_types: Vec<String> = trusted.iter().map(|e| e.key_type.clone()).collect();
        known_types.sort();
        known_types.dedup();
        Verdict::Unknown { known_types }
    }
}

impl Entry {
    fn matches_host(&self, host: &str) -> bool {
        let mut matched = false;
        for pattern in &self.hosts {
            match pattern {
                HostPattern::Hashed { salt, hash } => {
                    let mut mac =
                        Hmac::<Sha1>::new_from_slice(salt).expect("HMAC accepts any key length");
                    mac.update(host.as_bytes());
                    if mac.verify_slice(hash).is_ok() {
                        matched = true;
                    }
                }
                HostPattern::Glob { pattern, negated } => {
                    if glob(pattern.as_bytes(), host.as_bytes()) {
                        if *negated {
                            // A matching negation excludes the host from the whole line.
                            return false;
                        }
                        matched = true;
                    }
                }
            }
        }
        matched
    }
}

/// Parses one file's text. Lines that are malformed are skipped with a warning (ssh skips them
/// too), so one bad line never hides the others.
pub(crate) fn parse(text: &str, file: &Path) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(Some((revoked, hosts, key_type, key))) => entries.push(Entry {
                file: file.to_path_buf(),
                line: index + 1,
                revoked,
                hosts,
                key_type,
                key,
            }),
            Ok(None) => {}
            Err(why) => tracing::warn!(
                file = %file.display(),
                line = index + 1,
                "ignoring malformed known_hosts line: {why}"
            ),
        }
    }
    entries
}

type Parsed = (bool, Vec<HostPattern>, String, Vec<u8>);

fn parse_line(line: &str) -> Result<Option<Parsed>, String> {
    let mut fields = line.split_whitespace();
    let mut first = fields.next().ok_or("empty line")?;
    let mut revoked = false;
    if let Some(marker) = first.strip_prefix('@') {
        match marker {
            "revoked" => revoked = true,
            // Host certificates: libssh2 never presents one, so these lines cannot vouch for a key.
            "cert-authority" => return Ok(None),
            other => return Err(format!("unknown marker `@{other}`")),
        }
        first = fields.next().ok_or("no host pattern after the marker")?;
    }
    let hosts = first
        .split(',')
        .filter(|p| !p.is_empty())
        .map(parse_pattern)
        .collect::<Result<Vec<_>, _>>()?;
    let key_type = fields.next().ok_or("no key type")?;
    let key_text = fields.next().ok_or("no key")?;
    let key = STANDARD
        .decode(key_text)
        .map_err(|e| format!("the key is not valid base64 ({e})"))?;
    match blob_key_type(&key) {
        Some(inner) if inner == key_type => {}
        Some(inner) => return Err(format!("key type `{key_type}` but the key is `{inner}`")),
        None => return Err("the key is not an SSH public key".into()),
    }
    Ok(Some((revoked, hosts, key_type.to_string(), key)))
}

fn parse_pattern(p: &str) -> Result<HostPattern, String> {
    if let Some(rest) = p.strip_prefix("|1|") {
        let (salt, hash) = rest
            .split_once('|')
            .ok_or("hashed host without `|` separator")?;
        let decode = |s: &str| {
            STANDARD
                .decode(s)
                .map_err(|e| format!("hashed host is not valid base64 ({e})"))
        };
        return Ok(HostPattern::Hashed {
            salt: decode(salt)?,
            hash: decode(hash)?,
        });
    }
    let (negated, pattern) = match p.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, p),
    };
    Ok(HostPattern::Glob {
        pattern: pattern.to_ascii_lowercase(),
        negated,
    })
}

/// ssh's `match_pattern`: `*` matches any run, `?` one character.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob(rest, &text[1..]),
        Some((c, rest)) => text.first() == Some(c) && glob(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A real key pair from `ssh-keygen`; returns the `.pub` line's type and base64 fields.
    fn keygen(dir: &Path, name: &str, kind: &str) -> (String, String) {
        let path = dir.join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", kind, "-N", "", "-C", "test", "-f"])
            .arg(&path)
            .status()
            .expect("ssh-keygen runs");
        assert!(status.success());
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let mut fields = public.split_whitespace();
        (
            fields.next().unwrap().to_string(),
            fields.next().unwrap().to_string(),
        )
    }

    fn blob(b64: &str) -> Vec<u8> {
        STANDARD.decode(b64).unwrap()
    }

    fn known(text: &str) -> KnownHosts {
        KnownHosts {
            entries: parse(text, Path::new("/test/known_hosts")),
        }
    }

    #[test]
    fn host_string_brackets_non_default_ports() {
        assert_eq!(host_string("Example.COM", 22), "example.com");
        assert_eq!(host_string("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn plain_and_bracketed_entries_match_only_their_port() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let kh = known(&format!(
            "# a comment\n\n[127.0.0.1]:2222 {t} {k} root@box\nexample.com,other.org {t} {k}\n"
        ));
        assert_eq!(kh.check("127.0.0.1", 2222, &blob(&k)), Verdict::Trusted);
        assert_eq!(kh.check("other.org", 22, &blob(&k)), Verdict::Trusted);
        assert_eq!(kh.check("EXAMPLE.com", 22, &blob(&k)), Verdict::Trusted);
        let unknown = Verdict::Unknown {
            known_types: vec![],
        };
        assert_eq!(kh.check("127.0.0.1", 22, &blob(&k)), unknown);
        assert_eq!(kh.check("127.0.0.1", 2223, &blob(&k)), unknown);
        assert_eq!(kh.check("example.com", 2222, &blob(&k)), unknown);
    }

    #[test]
    fn different_key_of_the_same_type_is_changed() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let (_, other) = keygen(dir.path(), "b", "ed25519");
        let kh = known(&format!("\n[127.0.0.1]:2222 {t} {k}\n"));
        assert_eq!(
            kh.check("127.0.0.1", 2222, &blob(&other)),
            Verdict::Changed {
                file: "/test/known_hosts".into(),
                line: 2
            }
        );
    }

    #[test]
    fn key_of_another_type_is_unknown_and_names_the_known_types() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let (_, ecdsa) = keygen(dir.path(), "b", "ecdsa");
        let kh = known(&format!("host {t} {k}\n"));
        assert_eq!(
            kh.check("host", 22, &blob(&ecdsa)),
            Verdict::Unknown {
                known_types: vec!["ssh-ed25519".into()]
            }
        );
    }

    #[test]
    fn hashed_entries_from_ssh_keygen_match() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let (rt, rk) = keygen(dir.path(), "r", "rsa");
        let file = dir.path().join("known_hosts");
        std::fs::write(
            &file,
            format!("[127.0.0.1]:2222 {t} {k}\ngit.example.org {rt} {rk}\n"),
        )
        .unwrap();
        let status = Command::new("ssh-keygen")
            .arg("-q")
            .arg("-H")
            .arg("-f")
            .arg(&file)
            .status()
            .unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("127.0.0.1") && text.contains("|1|"),
            "{text}"
        );

        let kh = KnownHosts::load(&[file.clone(), dir.path().join("missing")]).unwrap();
        assert_eq!(kh.check("127.0.0.1", 2222, &blob(&k)), Verdict::Trusted);
        assert_eq!(
            kh.check("git.example.org", 22, &blob(&rk)),
            Verdict::Trusted
        );
        assert!(matches!(
            kh.check("127.0.0.1", 22, &blob(&k)),
            Verdict::Unknown { .. }
        ));
        assert!(matches!(
            kh.check("127.0.0.1", 2222, &blob(&rk)),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn revoked_key_is_refused_even_when_also_listed() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let kh = known(&format!("host {t} {k}\n@revoked * {t} {k}\n"));
        assert_eq!(
            kh.check("host", 22, &blob(&k)),
            Verdict::Revoked {
                file: "/test/known_hosts".into(),
                line: 2
            }
        );
    }

    #[test]
    fn cert_authority_lines_do_not_vouch_for_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let kh = known(&format!("@cert-authority *.example.org {t} {k}\n"));
        assert!(matches!(
            kh.check("a.example.org", 22, &blob(&k)),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn wildcards_and_negations_follow_ssh() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let kh = known(&format!("*.example.org,!evil.example.org,h?st {t} {k}\n"));
        assert_eq!(kh.check("git.example.org", 22, &blob(&k)), Verdict::Trusted);
        assert_eq!(kh.check("host", 22, &blob(&k)), Verdict::Trusted);
        assert!(matches!(
            kh.check("evil.example.org", 22, &blob(&k)),
            Verdict::Unknown { .. }
        ));
        assert!(matches!(
            kh.check("example.org", 22, &blob(&k)),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn malformed_lines_are_skipped_without_hiding_others() {
        let dir = tempfile::tempdir().unwrap();
        let (t, k) = keygen(dir.path(), "a", "ed25519");
        let kh = known(&format!(
            "host\nhost ssh-ed25519 !!notbase64\nhost ssh-rsa {k}\n@bogus host {t} {k}\nhost {t} {k}\n"
        ));
        assert_eq!(kh.entries.len(), 1);
        assert_eq!(kh.entries[0].line, 5);
        assert_eq!(kh.check("host", 22, &blob(&k)), Verdict::Trusted);
    }
}
