//! The compressed form of a NAR in the cache: which file extension and narinfo `Compression:`
//! name each [`Compression`] has, and [`Compressor`], a writer that compresses on all cores.
//!
//! The enum itself is the config's ([`crate::config::Compression`]); this module only gives it
//! the cache's vocabulary. Where the compressed bytes go is the caller's business.

use std::io::{self, Write};
use std::num::NonZeroU32;

use liblzma::stream::{Check, Filters, LzmaOptions, MtStreamBuilder, Stream};
use liblzma::write::XzEncoder;

pub use crate::config::Compression;

impl Compression {
    /// The file name extension of a NAR in `nar/` (`.nar.zst`, `.nar.xz`, `.nar`).
    pub fn nar_extension(self) -> &'static str {
        match self {
            Compression::Zstd => ".nar.zst",
            Compression::Xz => ".nar.xz",
            Compression::None => ".nar",
        }
    }

    /// The narinfo `Compression:` value, as Nix names it.
    pub fn narinfo_name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }

    /// The inverse of [`Compression::narinfo_name`]; `None` for a method we do not write
    /// (a cache filled by other tools may hold `bzip2` or `br`).
    pub fn from_narinfo_name(name: &str) -> Option<Self> {
        match name {
            "zstd" => Some(Compression::Zstd),
            "xz" => Some(Compression::Xz),
            "none" => Some(Compression::None),
            _ => None,
        }
    }

    /// The level used when the config names none (zstd 3: ~400 MiB/s; xz 6: xz's own default).
    pub fn default_level(self) -> i32 {
        match self {
            Compression::Zstd => 3,
            Compression::Xz => 6,
            Compression::None => 0,
        }
    }
}

/// Input per zstd worker job. zstd's default is 4 × the window (8 MiB at level 3, more at
/// higher levels) and it buffers several jobs per worker: publishing one 1 GiB NAR at level 3
/// peaked at 129 MiB RSS, with 2 MiB jobs at 50 MiB (1 MiB: 38 MiB), for 0.2 % more output
/// (tests/bench, BENCHMARKS.md). Jobs still see the end of the previous one (zstd's overlap).
const ZSTD_JOB_SIZE: u32 = 2 * 1024 * 1024;

/// A writer compressing into `W`. Call [`Compressor::finish`] to write the end of the stream
/// and get `W` back: dropping it without that leaves a truncated file.
pub enum Compressor<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Xz(XzEncoder<W>),
    None(W),
}

/// Makes a compressor for `c` at `level` (zstd 1–22, xz 0–9; ignored for `None`) with up to
/// `threads` worker threads, for about `input_size` bytes of input (the NAR size: it sizes xz's
/// dictionary; more input is still compressed correctly). zstd and xz both cut the input into
/// independent blocks and compress them in parallel, so one large NAR uses every core (blocks
/// are several MiB: zstd's are [`ZSTD_JOB_SIZE`], xz's 3× its dictionary, 24 MiB at level 6,
/// so smaller NARs stay on one thread; the publisher's parallel jobs cover those). The output
/// is an ordinary single stream that any Nix decompresses.
pub fn compressor<W: Write>(
    c: Compression,
    level: i32,
    threads: NonZeroU32,
    input_size: u64,
    inner: W,
) -> io::Result<Compressor<W>> {
    Ok(match c {
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(inner, level)?;
            // One thread means "compress in this thread", not a worker plus this thread.
            if threads.get() > 1 {
                enc.multithread(threads.get())?;
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            }
            Compressor::Zstd(enc)
        }
        Compression::Xz => Compressor::Xz(XzEncoder::new_stream(
            inner,
            xz_stream(level, threads, input_size)?,
        )),
        Compression::None => Compressor::None(inner),
    })
}

/// xz's dictionary at each preset level (xz(1), "Presets"): what the level's match finder is
/// sized for.
const XZ_PRESET_DICT: [u32; 10] = [
    256 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
    4 << 20,
    8 << 20,
    8 << 20,
    16 << 20,
    32 << 20,
    64 << 20,
];

/// The dictionary for `input_size` bytes at `preset`: the preset's, or the smallest power of two
/// holding the whole input if that is less (LZMA2's minimum is 4 KiB). A dictionary at least as
/// large as the input finds every match the preset's would, so the output is as small, but the
/// encoder's memory and set-up (its match finder is ~11× the dictionary: 94 MiB at level 6)
/// shrink with it: most NARs are far smaller than 8 MiB. It also caps what a client needs to
/// decompress.
fn xz_dict_size(preset: u32, input_size: u64) -> u32 {
    let preset_dict = XZ_PRESET_DICT[preset as usize];
    let fits = input_size
        .max(4096)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX);
    u32::try_from(fits).map_or(preset_dict, |fits| fits.min(preset_dict))
}

fn xz_preset(level: i32) -> io::Result<u32> {
    u32::try_from(level)
        .ok()
        .filter(|l| *l <= 9)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("xz compression level {level} is outside 0–9"),
            )
        })
}

/// How many threads [`compressor`] really uses for these arguments: `threads` for zstd, and
/// for xz only when the input is at least two of liblzma's threaded blocks (3× the
/// dictionary: 48 MiB of NAR at level 6), else one. The publisher takes that many CPU permits.
pub fn threads_used(c: Compression, level: i32, threads: NonZeroU32, input_size: u64) -> u32 {
    match c {
        Compression::Zstd => threads.get(),
        Compression::None => 1,
        Compression::Xz => match xz_preset(level) {
            Ok(preset) if !xz_single_block(preset, input_size) => threads.get(),
            _ => 1,
        },
    }
}

/// Whether `input_size` bytes are under two threaded blocks of liblzma (3× the dictionary):
/// the threaded encoder would then use one worker anyway, at the cost of its machinery and a
/// copy of each block; the plain encoder writes the same format.
fn xz_single_block(preset: u32, input_size: u64) -> bool {
    input_size < 2 * 3 * u64::from(xz_dict_size(preset, input_size))
}

fn xz_stream(level: i32, threads: NonZeroU32, input_size: u64) -> io::Result<Stream> {
    let preset = xz_preset(level)?;
    let mut options = LzmaOptions::new_preset(preset).map_err(io::Error::other)?;
    let dict = xz_dict_size(preset, input_size);
    options.dict_size(dict);
    let mut filters = Filters::new();
    filters.lzma2(&options);
    let block = 3 * u64::from(dict);
    if threads.get() == 1 || xz_single_block(preset, input_size) {
        return Stream::new_stream_encoder(&filters, Check::Crc64).map_err(io::Error::other);
    }
    MtStreamBuilder::new()
        .threads(threads.get())
        .filters(filters)
        .block_size(block)
        .check(Check::Crc64)
        .encoder()
        .map_err(io::Error::other)
}

impl<W: Write> Compressor<W> {
    /// Ends the compressed stream, flushes, and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        let mut inner = match self {
            Compressor::Zstd(enc) => enc.finish()?,
            Compressor::Xz(enc) => enc.finish()?,
            Compressor::None(w) => w,
        };
        inner.flush()?;
        Ok(inner)
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zstd(enc) => enc.write(buf),
            Compressor::Xz(enc) => enc.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zstd(enc) => enc.flush(),
            Compressor::Xz(enc) => enc.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn round_trip(c: Compression, threads: u32) -> (Vec<u8>, Vec<u8>) {
        // Small enough for a quick debug build; multithreaded mode still goes through the
        // worker-thread code paths, which write a different (but standard) stream.
        let data: Vec<u8> = (0..400_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let threads = NonZeroU32::new(threads).unwrap();
        let size = data.len() as u64;
        let mut enc = compressor(c, c.default_level(), threads, size, Vec::new()).unwrap();
        for chunk in data.chunks(100_000) {
            enc.write_all(chunk).unwrap();
        }
        let packed = enc.finish().unwrap();
        let mut unpacked = Vec::new();
        match c {
            Compression::Zstd => zstd::stream::read::Decoder::new(&packed[..])
                .unwrap()
                .read_to_end(&mut unpacked),
            Compression::Xz => {
                liblzma::read::XzDecoder::new(&packed[..]).read_to_end(&mut unpacked)
            }
            Compression::None => (&packed[..]).read_to_end(&mut unpacked),
        }
        .unwrap();
        assert_eq!(unpacked, data, "{c:?} with {threads} threads");
        (packed, data)
    }

    #[test]
    fn every_compression_round_trips_single_and_multithreaded() {
        for c in [Compression::Zstd, Compression::Xz, Compression::None] {
            for threads in [1, 4] {
                round_trip(c, threads);
            }
        }
        let (packed, data) = round_trip(Compression::Zstd, 2);
        assert!(packed.len() < data.len() / 4);
    }

    #[test]
    fn xz_dictionary_fits_the_input_up_to_the_presets() {
        assert_eq!(xz_dict_size(6, 0), 4096);
        assert_eq!(xz_dict_size(6, 5000), 8192);
        assert_eq!(xz_dict_size(6, 1 << 20), 1 << 20);
        assert_eq!(xz_dict_size(6, (1 << 20) + 1), 2 << 20);
        assert_eq!(xz_dict_size(6, 1 << 40), 8 << 20);
        assert_eq!(xz_dict_size(9, 1 << 40), 64 << 20);
        assert_eq!(xz_dict_size(0, 1 << 20), 256 << 10);
    }

    #[test]
    fn xz_threaded_encoder_for_several_blocks_stays_standard() {
        // Level 0: a 256 KiB dictionary, 768 KiB blocks, so the 1.6 MB input is three blocks
        // on 4 threads: the threaded path, which the other tests' sizes never take.
        let data: Vec<u8> = (0..400_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let four = NonZeroU32::new(4).unwrap();
        let size = data.len() as u64;
        assert_eq!(threads_used(Compression::Xz, 0, four, size), 4);
        let mut enc = compressor(Compression::Xz, 0, four, size, Vec::new()).unwrap();
        assert!(matches!(&enc, Compressor::Xz(_)));
        enc.write_all(&data).unwrap();
        let packed = enc.finish().unwrap();
        let mut unpacked = Vec::new();
        liblzma::read::XzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, data);
        // Level 6 keeps the same input on one thread: one block of 3 × 2 MiB.
        assert_eq!(threads_used(Compression::Xz, 6, four, size), 1);
        assert_eq!(threads_used(Compression::Xz, 6, four, 64 << 20), 4);
        assert_eq!(threads_used(Compression::Zstd, 3, four, size), 4);
    }

    #[test]
    fn names_and_extensions_are_nix_ones() {
        for (c, name, ext) in [
            (Compression::Zstd, "zstd", ".nar.zst"),
            (Compression::Xz, "xz", ".nar.xz"),
            (Compression::None, "none", ".nar"),
        ] {
            assert_eq!((c.narinfo_name(), c.nar_extension()), (name, ext));
            assert_eq!(Compression::from_narinfo_name(name), Some(c));
        }
        assert_eq!(Compression::from_narinfo_name("bzip2"), None);
    }

    #[test]
    fn out_of_range_xz_level_is_refused() {
        let one = NonZeroU32::MIN;
        let err = compressor(Compression::Xz, 12, one, 0, Vec::new())
            .err()
            .unwrap();
        assert!(err.to_string().contains("level 12"), "{err}");
    }
}
