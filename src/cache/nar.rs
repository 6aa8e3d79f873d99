//! Nix's archive format (NAR), streamed straight from the filesystem into any writer.
//!
//! This owns the serialisation only: which file is dumped, and where the bytes go (a hasher, a
//! compressor, an upload), is the caller's business. Nothing is buffered beyond one chunk of one
//! file, so a multi-gigabyte store path costs no memory.
//!
//! The format (Nix's `dumpPath`): every token is a little-endian u64 length, the bytes, then
//! zero padding to a multiple of 8. After the magic `nix-archive-1` a node is
//! `( type regular [executable ""] contents <data> )`, `( type symlink target <target> )` or
//! `( type directory entry ( name <name> node <node> ) … )` with entries sorted by name bytes.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const MAGIC: &[u8] = b"nix-archive-1";
/// Bytes read from a file per write to the output.
const CHUNK: usize = 128 * 1024;

/// Writes the NAR serialisation of `path` (a file, symlink or directory; not followed if it is a
/// symlink) to `out` and returns the number of bytes written (the narinfo's `NarSize`).
///
/// Errors name the file they happened on. A file that changes size while it is read is an error
/// rather than a silently wrong archive.
pub fn dump_path(path: &Path, out: &mut impl Write) -> io::Result<u64> {
    let mut nar = NarWriter { out, written: 0 };
    nar.token(MAGIC)?;
    nar.node(path)?;
    Ok(nar.written)
}

struct NarWriter<'a, W> {
    out: &'a mut W,
    written: u64,
}

impl<W: Write> NarWriter<'_, W> {
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn padding(&mut self, len: u64) -> io::Result<()> {
        let pad = (8 - len % 8) % 8;
        self.raw(&[0u8; 8][..pad as usize])
    }

    fn token(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.raw(&(bytes.len() as u64).to_le_bytes())?;
        self.raw(bytes)?;
        self.padding(bytes.len() as u64)
    }

    fn tokens(&mut self, tokens: &[&[u8]]) -> io::Result<()> {
        tokens.iter().try_for_each(|t| self.token(t))
    }

    fn node(&mut self, path: &Path) -> io::Result<()> {
        let meta = fs::symlink_metadata(path).map_err(|e| at(path, e))?;
        let kind = meta.file_type();
        self.token(b"(")?;
        if kind.is_file() {
            self.tokens(&[b"type", b"regular"])?;
            // Nix looks at the owner's execute bit only.
            if meta.permissions().mode() & 0o100 != 0 {
                self.tokens(&[b"executable", b""])?;
            }
            self.token(b"contents")?;
            self.contents(path, meta.len())?;
        } else if kind.is_symlink() {
            let target = fs::read_link(path).map_err(|e| at(path, e))?;
            self.tokens(&[
                b"type",
                b"symlink",
                b"target",
                target.as_os_str().as_bytes(),
            ])?;
        } else if kind.is_dir() {
            self.tokens(&[b"type", b"directory"])?;
            let mut names = fs::read_dir(path)
                .and_then(|dir| {
                    dir.map(|e| e.map(|e| e.file_name()))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| at(path, e))?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                self.tokens(&[b"entry", b"(", b"name", name.as_bytes(), b"node"])?;
                self.node(&path.join(&name))?;
                self.token(b")")?;
            }
        } else {
            return Err(at(
                path,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "not a regular file, symlink or directory; NARs cannot hold it",
                ),
            ));
        }
        self.token(b")")
    }

    /// The length-prefixed, padded contents of a regular file, copied in chunks.
    fn contents(&mut self, path: &Path, len: u64) -> io::Result<()> {
        self.raw(&len.to_le_bytes())?;
        let mut file = File::open(path).map_err(|e| at(path, e))?;
        let mut buf = vec![0u8; CHUNK.min(len as usize).max(1)];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => return Err(at(path, changed_size())),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(at(path, e)),
            };
            self.raw(&buf[..n])?;
            left -= n as u64;
        }
        if file.read(&mut [0u8; 1]).map_err(|e| at(path, e))? != 0 {
            return Err(at(path, changed_size()));
        }
        self.padding(len)
    }
}

fn changed_size() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the file changed size while it was read",
    )
}

/// Adds the path to an I/O error, keeping its kind so callers can still match on it.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("cannot archive `{}`: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tok(out: &mut Vec<u8>, s: &[u8]) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }

    fn nar(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        let n = dump_path(path, &mut out).unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    #[test]
    fn regular_file_is_padded_to_eight_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs::write(&f, b"hello").unwrap();
        let mut want = Vec::new();
        for t in [
            &b"nix-archive-1"[..],
            b"(",
            b"type",
            b"regular",
            b"contents",
            b"hello",
            b")",
        ] {
            tok(&mut want, t);
        }
        assert_eq!(nar(&f), want);
    }

    #[test]
    fn directory_entries_are_sorted_by_name_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        fs::create_dir(&d).unwrap();
        for name in ["b", "B", "a"] {
            fs::write(d.join(name), b"").unwrap();
        }
        symlink("a", d.join("link")).unwrap();
        let text = nar(&d);
        let pos = |needle: &[u8]| {
            let mut t = Vec::new();
            tok(&mut t, b"name");
            tok(&mut t, needle);
            text.windows(t.len()).position(|w| w == t).unwrap()
        };
        assert!(pos(b"B") < pos(b"a") && pos(b"a") < pos(b"b") && pos(b"b") < pos(b"link"));
    }

    #[test]
    fn errors_name_the_missing_file() {
        let err = dump_path(Path::new("/nonexistent/x"), &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("`/nonexistent/x`"), "{err}");
    }
}
