//! Hashes as Nix writes them: the nixbase32 encoding, the sha256 [`NarHash`] with its three
//! textual forms, and [`HashingWriter`], which hashes and counts whatever streams through it.
//! Nothing here knows about files or the cache layout.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::types::NIXBASE32_ALPHABET;

/// Nix's base32: its own alphabet, and the string starts with the *highest* 5-bit group of the
/// little-endian bit string (so it is not RFC 4648 with another alphabet).
pub mod nixbase32 {
    use super::NIXBASE32_ALPHABET;

    /// The length of the encoding of `n` bytes.
    pub const fn encoded_len(n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (n * 8 - 1) / 5 + 1
        }
    }

    pub fn encode(bytes: &[u8]) -> String {
        let len = encoded_len(bytes.len());
        (0..len)
            .rev()
            .map(|n| {
                let (i, j) = (n * 5 / 8, n * 5 % 8);
                let lo = bytes[i] >> j;
                let hi = bytes
                    .get(i + 1)
                    .map_or(0, |b| b.checked_shl(8 - j as u32).unwrap_or(0));
                char::from(NIXBASE32_ALPHABET[usize::from((lo | hi) & 0x1f)])
            })
            .collect()
    }

    /// Decodes a nixbase32 string; `None` if it has a character outside the alphabet, a length
    /// no byte string encodes to, or bits set beyond the last byte (Nix refuses those too).
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        let n = s.len() * 5 / 8;
        if encoded_len(n) != s.len() {
            return None;
        }
        let mut out = vec![0u8; n];
        for (k, c) in s.bytes().rev().enumerate() {
            let digit = NIXBASE32_ALPHABET.iter().position(|&a| a == c)? as u16;
            let (i, j) = (k * 5 / 8, k * 5 % 8);
            let wide = digit << j;
            out[i] |= wide as u8;
            let carry = (wide >> 8) as u8;
            match out.get_mut(i + 1) {
                Some(next) => *next |= carry,
                None if carry != 0 => return None,
                None => {}
            }
        }
        Some(out)
    }
}

/// A sha256 digest: the hash of a NAR (`NarHash:`), and in the same shape the hash of the
/// compressed file (`FileHash:`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NarHash([u8; 32]);

/// The sha256 of a compressed NAR file; written and parsed exactly like a [`NarHash`].
pub type FileHash = NarHash;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{input}` is not a sha256 hash ({why}); expected `sha256:<nixbase32>`, `sha256:<hex>` or `sha256-<base64>`")]
pub struct InvalidHash {
    pub input: String,
    pub why: &'static str,
}

impl NarHash {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        NarHash(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The sha256 of `data` (for small things; streams go through [`HashingWriter`]).
    pub fn digest(data: &[u8]) -> Self {
        NarHash(Sha256::digest(data).into())
    }

    /// The bare 52-character nixbase32 form, as in `nar/<filehash>.nar.zst`.
    pub fn to_nixbase32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    /// The SRI form `sha256-<base64>`, as `nix path-info --json` prints it.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(self.0))
    }
}

/// `sha256:<nixbase32>`, the form narinfo files and fingerprints use.
impl fmt::Display for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nixbase32())
    }
}

impl fmt::Debug for NarHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarHash({self})")
    }
}

impl FromStr for NarHash {
    type Err = InvalidHash;

    /// Accepts `sha256-<base64>` (SRI, Nix ≥ 2.4's JSON), and after `sha256:` any of nixbase32
    /// (52 chars), hex (64) or base64 (44), told apart by length as Nix does.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| InvalidHash {
            input: s
                .chars()
                .take(100)
                .collect::<String>()
                .escape_debug()
                .to_string(),
            why,
        };
        let bytes = if let Some(b64) = s.strip_prefix("sha256-") {
            BASE64.decode(b64).map_err(|_| bad("bad base64"))?
        } else if let Some(rest) = s.strip_prefix("sha256:") {
            match rest.len() {
                52 => nixbase32::decode(rest).ok_or_else(|| bad("bad nixbase32"))?,
                64 => decode_hex(rest).ok_or_else(|| bad("bad hex"))?,
                44 => BASE64.decode(rest).map_err(|_| bad("bad base64"))?,
                _ => return Err(bad("wrong length")),
            }
        } else {
            return Err(bad("it does not start with `sha256:` or `sha256-`"));
        };
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("not 32 bytes"))?;
        Ok(NarHash(bytes))
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(*p.get(1)?)?))
        .collect()
}

/// A writer that passes everything on to `inner` and keeps the sha256 and byte count of what
/// `inner` accepted. Put one on each side of a compressor to get the NarHash/NarSize and the
/// FileHash/FileSize of one stream in one pass.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    /// Bytes passed through so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Returns the inner writer (not flushed: flush first if it buffers), the hash and size.
    pub fn finish(self) -> (W, NarHash, u64) {
        (
            self.inner,
            NarHash(self.hasher.finalize().into()),
            self.size,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the real tool: `nix hash to-base32 --type sha256 <hex>` and
    // `nix-hash --type sha256 --flat` on files holding "" and "abc".
    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const ABC_NIX32: &str = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";

    #[test]
    fn nixbase32_matches_nix_for_sha256() {
        assert_eq!(NarHash::digest(b"").to_nixbase32(), EMPTY_NIX32);
        assert_eq!(NarHash::digest(b"abc").to_nixbase32(), ABC_NIX32);
    }

    #[test]
    fn nixbase32_round_trips_every_length() {
        for n in 0..70usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let s = nixbase32::encode(&bytes);
            assert_eq!(s.len(), nixbase32::encoded_len(n));
            assert_eq!(nixbase32::decode(&s).as_deref(), Some(&bytes[..]), "{n}");
        }
        // 20-byte hashes (store path hash parts) encode to 32 characters.
        assert_eq!(nixbase32::encoded_len(20), 32);
    }

    #[test]
    fn nixbase32_refuses_foreign_characters_and_overflow() {
        assert_eq!(nixbase32::decode(&EMPTY_NIX32.replace('0', "e")), None);
        assert_eq!(
            nixbase32::decode("0md"),
            None,
            "no byte string encodes to 3 chars"
        );
        // 52 chars carry 260 bits; the top 4 must be zero, so the first char is at most `1`.
        let mut over = String::from("2");
        over.push_str(&EMPTY_NIX32[1..]);
        assert_eq!(nixbase32::decode(&over), None);
    }

    #[test]
    fn nar_hash_parses_all_three_forms_and_prints_nixbase32() {
        let want = NarHash::digest(b"");
        let sri = want.to_sri();
        assert_eq!(sri, "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        for text in [
            sri.clone(),
            format!("sha256:{EMPTY_NIX32}"),
            format!("sha256:{EMPTY_HEX}"),
            format!("sha256:{}", &sri[7..]),
        ] {
            let got: NarHash = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string(), format!("sha256:{EMPTY_NIX32}"));
        }
    }

    #[test]
    fn malformed_hashes_are_refused_with_the_reason() {
        for (text, why) in [
            ("md5:abc", "it does not start with `sha256:` or `sha256-`"),
            ("sha256:abc", "wrong length"),
            ("sha256-!!!!", "bad base64"),
            ("sha256-AAAA", "not 32 bytes"),
        ] {
            assert_eq!(text.parse::<NarHash>().unwrap_err().why, why, "{text}");
        }
        assert!(format!("sha256:{}", "g".repeat(64))
            .parse::<NarHash>()
            .is_err());
    }

    #[test]
    fn hashing_writer_hashes_and_counts_what_passes_through() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"a").unwrap();
        w.write_all(b"bc").unwrap();
        let (inner, hash, size) = w.finish();
        assert_eq!((inner.as_slice(), size), (&b"abc"[..], 3));
        assert_eq!(hash.to_nixbase32(), ABC_NIX32);
    }
}
