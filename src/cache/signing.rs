//! Nix's ed25519 signing of store paths: secret and public key files in Nix's `name:base64`
//! format, the fingerprint a signature covers, signing and checking.
//!
//! Key material never appears in an error, a log line or a `Debug` print. A secret key file
//! that anyone but its owner can read is refused, not warned about: a leaked cache key lets
//! whoever holds it push anything to every machine of the fleet.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _};
use zeroize::Zeroizing;

use super::hash::NarHash;
use crate::types::StorePath;

/// A secret key loaded from a Nix secret key file (`name:base64(seed ‖ public key)`).
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

/// A public key as Nix writes it in `trusted-public-keys`: `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

/// What is wrong with the text of a key (never the key itself).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyFormatError {
    #[error("it has no `:` between the key name and the base64 key")]
    NoColon,
    #[error("its key name (before the `:`) is empty")]
    EmptyName,
    #[error("the part after the `:` is not valid base64")]
    BadBase64,
    #[error("the key is {found} bytes long; a Nix {what} key is {expected}")]
    WrongLength {
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("its public half (the last 32 bytes) does not belong to its secret half")]
    MismatchedPublicHalf,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read cache secret key `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cache secret key `{}` is readable or writable by others (mode {mode:04o}); run `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "cache secret key `{}` is not a Nix secret key file (`name:base64`, as \
         `nix-store --generate-binary-cache-key` writes): {problem}",
        path.display()
    )]
    Malformed {
        path: PathBuf,
        problem: KeyFormatError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateKeyError {
    #[error("key name `{0}` must be non-empty and free of `:` and whitespace (e.g. `cache.example.org-1`)")]
    BadName(String),
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
}

/// Splits `name:base64` and decodes the base64 into a buffer that is wiped when dropped.
fn split_key(text: &str) -> Result<(&str, Zeroizing<Vec<u8>>), KeyFormatError> {
    let (name, b64) = text.trim().split_once(':').ok_or(KeyFormatError::NoColon)?;
    if name.is_empty() {
        return Err(KeyFormatError::EmptyName);
    }
    // The decode error would quote a character of the key: leave it out.
    let bytes = BASE64.decode(b64).map_err(|_| KeyFormatError::BadBase64)?;
    Ok((name, Zeroizing::new(bytes)))
}

impl SigningKey {
    /// Loads a Nix secret key file, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(read_err)?;
        // Checked on the open file, so the file read is the file checked.
        let mode = file.metadata().map_err(read_err)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = Zeroizing::new(String::new());
        file.read_to_string(&mut text).map_err(read_err)?;
        text.parse().map_err(|problem| KeyError::Malformed {
            path: path.to_owned(),
            problem,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs a fingerprint (see [`fingerprint`]); returns `name:base64(signature)`, the value of
    /// a narinfo `Sig:` line. ed25519 is deterministic: the same key and fingerprint always
    /// give the same line, byte for byte what `nix copy` and `nix store sign` write.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, BASE64.encode(sig.to_bytes()))
    }
}

/// Parses the text of a secret key file (surrounding whitespace ignored).
impl FromStr for SigningKey {
    type Err = KeyFormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split_key(text)?;
        let pair: &[u8; 64] = bytes[..]
            .try_into()
            .map_err(|_| KeyFormatError::WrongLength {
                what: "secret",
                expected: 64,
                found: bytes.len(),
            })?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(pair)
            .map_err(|_| KeyFormatError::MismatchedPublicHalf)?;
        Ok(SigningKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, public {})", self.name, self.public_key())
    }
}

impl PublicKey {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `sig` (`name:base64`) is this key's valid signature of `fingerprint`.
    pub fn verifies(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        let Ok(bytes) = BASE64.decode(b64) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&bytes) else {
            return false;
        };
        // Strict, as libsodium (which Nix uses) rejects malleable and small-order signatures.
        name == self.name && self.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok()
    }
}

impl FromStr for PublicKey {
    type Err = KeyFormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split_key(text)?;
        let raw: &[u8; 32] = bytes[..]
            .try_into()
            .map_err(|_| KeyFormatError::WrongLength {
                what: "public",
                expected: 32,
                found: bytes.len(),
            })?;
        // Not every 32-byte string is a curve point.
        let key = ed25519_dalek::VerifyingKey::from_bytes(raw)
            .map_err(|_| KeyFormatError::MismatchedPublicHalf)?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// What a store path's signature covers:
/// `1;<path>;sha256:<nixbase32 nar hash>;<nar size>;<full reference paths, sorted, comma-separated>`.
pub fn fingerprint(
    path: &StorePath,
    nar_hash: &NarHash,
    nar_size: u64,
    references: &[StorePath],
) -> String {
    let mut refs: Vec<&str> = references.iter().map(StorePath::as_str).collect();
    refs.sort_unstable();
    refs.dedup();
    format!("1;{path};{nar_hash};{nar_size};{}", refs.join(","))
}

/// Whether `sig` is valid for `fingerprint` under one of `keys`
/// (the key is picked by the name before the `:`, as Nix does).
pub fn verify(keys: &[PublicKey], fingerprint: &str, sig: &str) -> bool {
    keys.iter().any(|k| k.verifies(fingerprint, sig))
}

/// A new key pair for `farmctl keygen`: the text of the secret key file and of the public key,
/// in the format of `nix-store --generate-binary-cache-key` (no trailing newline).
pub fn generate_keypair(name: &str) -> Result<(Zeroizing<String>, PublicKey), GenerateKeyError> {
    if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
        return Err(GenerateKeyError::BadName(name.escape_debug().to_string()));
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut seed[..]).map_err(GenerateKeyError::Random)?;
    let key = SigningKey {
        name: name.to_owned(),
        key: ed25519_dalek::SigningKey::from_bytes(&seed),
    };
    let pair = Zeroizing::new(key.key.to_keypair_bytes());
    let secret = Zeroizing::new(format!("{name}:{}", BASE64.encode(&pair[..])));
    Ok((secret, key.public_key()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    // Made with `nix-store --generate-binary-cache-key probe-1 sk pk` (Nix 2.8), only for tests.
    const SECRET: &str = "probe-1:PWYNnexXF++jZikQBiEKybSG0bY+lor/4cXXNUUxExg5xLyM3xw3FN2/tN2RFy+zI/n8ryFYXjEEXsiN46wQ0A==";
    const PUBLIC: &str = "probe-1:OcS8jN8cNxTdv7TdkRcvsyP5/K8hWF4xBF7IjeOsENA=";

    fn write_key(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let path = dir.join("cache.sk");
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(mode)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn store_path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    #[test]
    fn nix_generated_key_loads_and_matches_its_public_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::load(&write_key(dir.path(), SECRET, 0o600)).unwrap();
        assert_eq!(key.name(), "probe-1");
        assert_eq!(key.public_key().to_string(), PUBLIC);
        assert_eq!(PUBLIC.parse::<PublicKey>().unwrap(), key.public_key());
    }

    #[test]
    fn signature_matches_the_one_nix_copy_wrote() {
        // From the narinfo `nix copy --to file://…?secret-key=sk` wrote for this path.
        let key: SigningKey = SECRET.parse().unwrap();
        let fp = fingerprint(
            &store_path("srsmpdvkaf3cfb3a3kn6yff2mqgax60d-probe-leaf"),
            &"sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
                .parse()
                .unwrap(),
            120,
            &[],
        );
        let want = "probe-1:mHus+G2wdtTHR307hhOEsxUIYb8g/tsWgAPl6fUx/bim7GbxD+dEizg54Ff70V921vGyAOPjGOZeaiYdGHXfBg==";
        assert_eq!(key.sign(&fp), want);
        let trusted = [PUBLIC.parse().unwrap()];
        assert!(verify(&trusted, &fp, want));
        assert!(!verify(&trusted, &fp.replace(";120;", ";121;"), want));
        assert!(!verify(
            &trusted,
            &fp,
            &want.replace("probe-1:", "other-1:")
        ));
        assert!(!verify(&trusted, &fp, "probe-1:AAAA"));
    }

    #[test]
    fn fingerprint_has_full_reference_paths_sorted() {
        let a = store_path("0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-zlib");
        let b = store_path("zbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-aa");
        let me = store_path("1ccccccccccccccccccccccccccccccc-me");
        let fp = fingerprint(
            &me,
            &NarHash::digest(b""),
            7,
            &[b.clone(), me.clone(), a.clone()],
        );
        assert_eq!(
            fp,
            format!(
                "1;{me};sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73;7;{a},{me},{b}"
            )
        );
    }

    #[test]
    fn key_readable_by_others_is_refused_with_chmod_advice() {
        for mode in [0o644, 0o640, 0o604, 0o620] {
            let dir = tempfile::tempdir().unwrap();
            let path = write_key(dir.path(), SECRET, mode);
            let err = SigningKey::load(&path).unwrap_err();
            let msg = err.to_string();
            let p = path.display();
            assert!(matches!(err, KeyError::Exposed { .. }), "{msg}");
            assert!(msg.contains(&format!("`{p}`")), "{msg}");
            assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
            assert!(msg.contains(&format!("run `chmod 600 {p}`")), "{msg}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(SigningKey::load(&write_key(dir.path(), SECRET, 0o400)).is_ok());
    }

    #[test]
    fn malformed_key_files_are_explained_without_the_key() {
        let (name, b64) = SECRET.split_once(':').unwrap();
        let raw = BASE64.decode(b64).unwrap();
        let mut swapped = raw.clone();
        swapped[40] ^= 1;
        let cases = [
            (b64.to_owned(), KeyFormatError::NoColon),
            (format!(":{b64}"), KeyFormatError::EmptyName),
            (format!("{name}:{}!", &b64[..20]), KeyFormatError::BadBase64),
            (
                format!("{name}:{}", BASE64.encode(&raw[..32])),
                KeyFormatError::WrongLength {
                    what: "secret",
                    expected: 64,
                    found: 32,
                },
            ),
            (
                format!("{name}:{}", BASE64.encode(&swapped)),
                KeyFormatError::MismatchedPublicHalf,
            ),
        ];
        for (text, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let path = write_key(dir.path(), &text, 0o600);
            match SigningKey::load(&path) {
                Err(KeyError::Malformed { problem, .. }) => assert_eq!(problem, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
            let msg = SigningKey::load(&path).unwrap_err().to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(
                !msg.contains(&b64[..12]) && !msg.contains(&b64[30..42]),
                "{msg}"
            );
        }
        let missing = SigningKey::load(Path::new("/nonexistent/cache.sk")).unwrap_err();
        assert!(missing.to_string().contains("`/nonexistent/cache.sk`"));
        // Debug of a loaded key shows the public half only.
        let dbg = format!("{:?}", SECRET.parse::<SigningKey>().unwrap());
        assert!(!dbg.contains(&b64[..12]), "{dbg}");
    }

    #[test]
    fn public_keys_of_the_wrong_shape_are_refused() {
        let (name, b64) = PUBLIC.split_once(':').unwrap();
        assert_eq!("nocolon".parse::<PublicKey>(), Err(KeyFormatError::NoColon));
        let long = format!("{name}:{}", BASE64.encode([0u8; 64]));
        assert!(matches!(
            long.parse::<PublicKey>(),
            Err(KeyFormatError::WrongLength { found: 64, .. })
        ));
        assert_eq!(
            format!("{name}:{b64}\n")
                .parse::<PublicKey>()
                .unwrap()
                .to_string(),
            PUBLIC
        );
    }

    #[test]
    fn generated_keys_load_sign_and_verify() {
        let (secret, public) = generate_keypair("farm.example.org-1").unwrap();
        let key: SigningKey = secret.parse().unwrap();
        assert_eq!(key.public_key(), public);
        assert!(public.to_string().starts_with("farm.example.org-1:"));
        assert!(public.verifies("fp", &key.sign("fp")));
        let (other, _) = generate_keypair("farm.example.org-1").unwrap();
        assert_ne!(*other, *secret);
        for bad in ["", "a:b", "a b", "a\n"] {
            assert!(matches!(
                generate_keypair(bad),
                Err(GenerateKeyError::BadName(_))
            ));
        }
    }
}
