//! The static binary cache's pure core: everything needed to turn a store path into the files
//! of a Nix binary cache, with no transport and no async.
//!
//! It owns the formats, byte for byte what Nix writes: the NAR stream ([`dump_path`]), hashes
//! in Nix's notations ([`NarHash`], [`nixbase32`]), compression ([`compressor`]), signing keys
//! and fingerprints ([`SigningKey`], [`fingerprint`]), `<hash>.narinfo` ([`NarInfo`]) and
//! `nix-cache-info` ([`nix_cache_info`]). It does not decide what to upload, in which order, or
//! how bytes reach the remote: the publisher drives it, one path at a time, as
//!
//! ```text
//!  dump_path ─► HashingWriter (NarHash, NarSize)
//!                 ─► Compressor ─► HashingWriter (FileHash, FileSize) ─► upload
//!  then NarInfo { … } .sign(key) ─► `<hash>.narinfo`, written after its NAR and references
//! ```
//!
//! [`publish`] is the phase that drives it all: what to upload, in which order, with which
//! keys, and the summary of what it did.
//!
//! [`generations`] are the signed records of what each machine runs (GC roots, on the cache
//! itself) and [`gc`] deletes what no kept root needs, referrers before references.
//!
//! How the bytes reach the cache directory is [`backend`]'s job: the `CacheBackend` seam with
//! its SFTP and local-directory transports, the only async, networked part of this module.

pub mod backend;
mod compress;
pub mod gc;
pub mod generations;
mod hash;
mod nar;
mod narinfo;
pub mod publish;
mod signing;
pub mod verify;

pub use compress::{compressor, Compression, Compressor};
pub use hash::{nixbase32, FileHash, HashingWriter, InvalidHash, NarHash};
pub use nar::dump_path;
pub use narinfo::{nar_url, narinfo_file_name, InvalidNarInfo, NarInfo};
pub use signing::{
    fingerprint, generate_keypair, verify, GenerateKeyError, KeyError, KeyFormatError, PublicKey,
    SigningKey,
};

use crate::types::STORE_DIR;

/// The name of the file at the cache root that says what kind of cache it is.
pub const NIX_CACHE_INFO: &str = "nix-cache-info";

/// The contents of `nix-cache-info`. Nix 2.8 itself writes only `StoreDir`; `WantMassQuery`
/// lets clients query many paths at once and `Priority` orders caches (cache.nixos.org is 40,
/// lower is preferred).
pub fn nix_cache_info(priority: u32) -> String {
    format!("StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: {priority}\n")
}

#[cfg(test)]
mod tests {
    #[test]
    fn nix_cache_info_names_the_store_and_priority() {
        assert_eq!(
            super::nix_cache_info(40),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
    }
}
