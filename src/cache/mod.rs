//! The static binary cache's pure core: everything needed to turn a store path into the files
//! of a Nix binary cache, with no transport and no async.
//!
//! It owns the formats, byte for byte what Nix writes: the NAR stream ([`dump_path`]), hashes
//! in Nix's notations ([`NarHash`], [`nixbase32`]) and compression ([`compressor`]). It does
//! not decide what to upload, in which order, or how bytes reach the remote: the publisher
//! drives it, one path at a time.

mod compress;
mod hash;
mod nar;

pub use compress::{compressor, Compression, Compressor};
pub use hash::{nixbase32, FileHash, HashingWriter, InvalidHash, NarHash};
pub use nar::dump_path;
