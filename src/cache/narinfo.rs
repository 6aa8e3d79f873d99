//! The `<hash>.narinfo` file: the metadata of one store path in the cache, rendered exactly as
//! Nix 2.8's `NarInfo::to_string` writes it and parsed tolerantly (unknown fields ignored), so a
//! cache written by `nix copy` or another tool reads back.

use std::fmt;
use std::str::FromStr;

use super::compress::Compression;
use super::hash::{FileHash, NarHash};
use super::signing::{self, PublicKey, SigningKey};
use crate::types::StorePath;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Relative to the cache root, e.g. `nar/<filehash>.nar.zst`.
    pub url: String,
    /// The `Compression:` name. A string, not [`Compression`], because caches filled by other
    /// tools may use methods we never write (`bzip2`, `br`).
    pub compression: String,
    pub file_hash: Option<FileHash>,
    pub file_size: Option<u64>,
    pub nar_hash: NarHash,
    pub nar_size: u64,
    /// Sorted; may include the path itself.
    pub references: Vec<StorePath>,
    /// The `.drv` the path was built from, if known.
    pub deriver: Option<StorePath>,
    /// `name:base64` signature lines.
    pub sigs: Vec<String>,
    /// Content address (`fixed:r:sha256:…`, `text:sha256:…`), verbatim.
    pub ca: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("narinfo for `{subject}` is invalid: {why}")]
pub struct InvalidNarInfo {
    /// The `StorePath:` value if it got that far, else "unknown path".
    pub subject: String,
    pub why: String,
}

/// Where a NAR with this file hash lives: `nar/<nixbase32 filehash><extension>`.
pub fn nar_url(file_hash: &FileHash, compression: Compression) -> String {
    format!(
        "nar/{}{}",
        file_hash.to_nixbase32(),
        compression.nar_extension()
    )
}

/// The file name of a path's narinfo in the cache root: `<hash part>.narinfo`.
pub fn narinfo_file_name(path: &StorePath) -> String {
    format!("{}.narinfo", path.hash_part())
}

impl NarInfo {
    /// The fingerprint the `Sig:` lines sign.
    pub fn fingerprint(&self) -> String {
        signing::fingerprint(
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds `key`'s signature (replacing an older one by a key of the same name).
    pub fn sign(&mut self, key: &SigningKey) {
        let sig = key.sign(&self.fingerprint());
        let prefix = format!("{}:", key.name());
        self.sigs.retain(|s| !s.starts_with(&prefix));
        self.sigs.push(sig);
    }

    /// Whether at least one `Sig:` is valid under one of `keys`.
    pub fn is_signed_by_any(&self, keys: &[PublicKey]) -> bool {
        let fp = self.fingerprint();
        self.sigs.iter().any(|s| signing::verify(keys, &fp, s))
    }
}

/// Nix's field order. `References: ` keeps its trailing space when empty, as Nix writes it.
impl fmt::Display for NarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "StorePath: {}", self.store_path)?;
        writeln!(f, "URL: {}", self.url)?;
        writeln!(f, "Compression: {}", self.compression)?;
        if let Some(h) = &self.file_hash {
            writeln!(f, "FileHash: {h}")?;
        }
        if let Some(n) = self.file_size {
            writeln!(f, "FileSize: {n}")?;
        }
        writeln!(f, "NarHash: {}", self.nar_hash)?;
        writeln!(f, "NarSize: {}", self.nar_size)?;
        let mut refs: Vec<&str> = self.references.iter().map(StorePath::base_name).collect();
        refs.sort_unstable();
        writeln!(f, "References: {}", refs.join(" "))?;
        if let Some(d) = &self.deriver {
            writeln!(f, "Deriver: {}", d.base_name())?;
        }
        for s in &self.sigs {
            writeln!(f, "Sig: {s}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "CA: {ca}")?;
        }
        Ok(())
    }
}

impl FromStr for NarInfo {
    type Err = InvalidNarInfo;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut subject = "unknown path".to_owned();
        let fail = |why: String, subject: &str| InvalidNarInfo {
            subject: subject.to_owned(),
            why,
        };
        let (mut store_path, mut url, mut compression) = (None, None, None);
        let (mut file_hash, mut file_size, mut nar_hash, mut nar_size) = (None, None, None, None);
        let (mut references, mut deriver, mut sigs, mut ca) = (Vec::new(), None, Vec::new(), None);

        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(": ").or_else(|| line.split_once(':')) else {
                return Err(fail(format!("line {n} has no `Key: value`"), &subject));
            };
            let value = value.trim();
            let field = |why: String| format!("line {n} (`{key}`): {why}");
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| field(format!("`{v}` is not a number")))
            };
            match key {
                "StorePath" => {
                    let p: StorePath = value
                        .parse()
                        .map_err(|e| fail(field(format!("{e}")), &subject))?;
                    subject = p.to_string();
                    store_path = Some(p);
                }
                "URL" => url = Some(value.to_owned()),
                "Compression" => compression = Some(value.to_owned()),
                "FileHash" => {
                    file_hash = Some(
                        value
                            .parse()
                            .map_err(|e| fail(field(format!("{e}")), &subject))?,
                    )
                }
                "FileSize" => file_size = Some(num(value).map_err(|w| fail(w, &subject))?),
                "NarHash" => {
                    nar_hash = Some(
                        value
                            .parse()
                            .map_err(|e| fail(field(format!("{e}")), &subject))?,
                    )
                }
                "NarSize" => nar_size = Some(num(value).map_err(|w| fail(w, &subject))?),
                // An empty value is no references, not one empty reference.
                "References" => {
                    references = value
                        .split_ascii_whitespace()
                        .map(StorePath::from_base_name)
                        .collect::<Result<_, _>>()
                        .map_err(|e| fail(field(format!("{e}")), &subject))?
                }
                "Deriver" if !value.is_empty() && value != "unknown-deriver" => {
                    deriver = Some(
                        StorePath::from_base_name(value)
                            .map_err(|e| fail(field(format!("{e}")), &subject))?,
                    )
                }
                "Sig" => sigs.push(value.to_owned()),
                "CA" if !value.is_empty() => ca = Some(value.to_owned()),
                _ => {}
            }
        }
        let missing = |name: &str| format!("it has no `{name}:` line");
        let store_path = store_path.ok_or_else(|| fail(missing("StorePath"), &subject))?;
        let url = url.ok_or_else(|| fail(missing("URL"), &subject))?;
        let nar_hash = nar_hash.ok_or_else(|| fail(missing("NarHash"), &subject))?;
        let nar_size = nar_size.ok_or_else(|| fail(missing("NarSize"), &subject))?;
        references.sort();
        Ok(NarInfo {
            store_path,
            url,
            // Nix reads a missing `Compression:` as bzip2, its historical default.
            compression: compression.unwrap_or_else(|| "bzip2".to_owned()),
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references,
            deriver,
            sigs,
            ca,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by `nix copy --to file://…?compression=zstd&secret-key=…` (Nix 2.8).
    const TREE: &str = "\
StorePath: /nix/store/37j056ypyhhvvy8fsxk5hz8iz63y1kb9-probe-tree
URL: nar/1145dai1l4sh3x4dv2akiy1671q042nsw01dh0p8pybmzry9pzfd.nar.zst
Compression: zstd
FileHash: sha256:1145dai1l4sh3x4dv2akiy1671q042nsw01dh0p8pybmzry9pzfd
FileSize: 423
NarHash: sha256:1sr5yvwm3fqmv2k0fhhxpsk5gz9xsi04w1ziwzf00bllv1j0sq3s
NarSize: 2384
References: srsmpdvkaf3cfb3a3kn6yff2mqgax60d-probe-leaf
Deriver: fpl4n9ajgfgb1zch45pgj02mz5j6l68m-probe-tree.drv
Sig: probe-1:xCXWIgZ40RlTBKkF3qGpaJU+5cYhg1d/IKP4IXlg+wQNvn4OtrpCTHAg9WSb8CAzIkPw9t6xKHVQRIGTpYpuBA==
";
    const LEAF: &str = "\
StorePath: /nix/store/srsmpdvkaf3cfb3a3kn6yff2mqgax60d-probe-leaf
URL: nar/0qa62dhmhx2947b66ndaalppnzplds7c3ybf8n3a82xicrwvs8cs.nar.zst
Compression: zstd
FileHash: sha256:0qa62dhmhx2947b66ndaalppnzplds7c3ybf8n3a82xicrwvs8cs
FileSize: 91
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Deriver: j29kmkh2j7dsqiw8s9bqxpmw9fzqz6pp-probe-leaf.drv
Sig: probe-1:mHus+G2wdtTHR307hhOEsxUIYb8g/tsWgAPl6fUx/bim7GbxD+dEizg54Ff70V921vGyAOPjGOZeaiYdGHXfBg==
";
    const PUBLIC: &str = "probe-1:OcS8jN8cNxTdv7TdkRcvsyP5/K8hWF4xBF7IjeOsENA=";

    #[test]
    fn narinfos_written_by_nix_round_trip_byte_for_byte() {
        for text in [TREE, LEAF] {
            let info: NarInfo = text.parse().unwrap();
            assert_eq!(info.to_string(), text);
            assert!(info.is_signed_by_any(&[PUBLIC.parse().unwrap()]));
        }
    }

    #[test]
    fn empty_references_are_an_empty_list() {
        let info: NarInfo = LEAF.parse().unwrap();
        assert_eq!(info.references, vec![]);
        let tree: NarInfo = TREE.parse().unwrap();
        assert_eq!(tree.references, vec![info.store_path.clone()]);
        assert_eq!(info.deriver.unwrap().name(), "probe-leaf.drv");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_ones_named() {
        let extra = format!("{LEAF}System: x86_64-linux\nFutureField: whatever\n");
        assert_eq!(extra.parse::<NarInfo>().unwrap(), LEAF.parse().unwrap());
        let no_hash: String = LEAF
            .lines()
            .filter(|l| !l.starts_with("NarHash"))
            .map(|l| format!("{l}\n"))
            .collect();
        let err = no_hash.parse::<NarInfo>().unwrap_err();
        assert_eq!(
            err.subject,
            "/nix/store/srsmpdvkaf3cfb3a3kn6yff2mqgax60d-probe-leaf"
        );
        assert!(err.why.contains("`NarHash:`"), "{err}");
        let bad_size = LEAF.replace("NarSize: 120", "NarSize: lots");
        assert!(bad_size
            .parse::<NarInfo>()
            .unwrap_err()
            .why
            .contains("line 7"));
    }

    #[test]
    fn ca_comes_last_and_file_names_follow_nix() {
        let mut info: NarInfo = LEAF.parse().unwrap();
        info.ca =
            Some("fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s".into());
        assert!(info.to_string().ends_with(
            "==\nCA: fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n"
        ));
        assert_eq!(info.to_string().parse::<NarInfo>().unwrap(), info);
        assert_eq!(
            narinfo_file_name(&info.store_path),
            "srsmpdvkaf3cfb3a3kn6yff2mqgax60d.narinfo"
        );
        assert_eq!(
            nar_url(&info.file_hash.unwrap(), Compression::Zstd),
            info.url
        );
    }

    #[test]
    fn signing_replaces_an_older_signature_of_the_same_key() {
        let mut info: NarInfo = LEAF.parse().unwrap();
        let (secret, public) = crate::cache::generate_keypair("probe-1").unwrap();
        info.sign(&secret.parse().unwrap());
        assert_eq!(info.sigs.len(), 1);
        assert!(info.is_signed_by_any(&[public]));
        assert!(!info.is_signed_by_any(&[PUBLIC.parse().unwrap()]));
    }
}
