//! The cache core judged by the real Nix client: store paths built here, a cache written by
//! `nix copy --to file://…`, and the same paths put through our NAR encoder, hasher, compressor,
//! signer and narinfo renderer. Where Nix's output is deterministic we compare bytes.

use std::io::{Read, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nixfarm::cache::{
    compressor, dump_path, generate_keypair, nar_url, narinfo_file_name, nix_cache_info,
    Compression, HashingWriter, NarHash, NarInfo, PublicKey, SigningKey,
};
use nixfarm::types::StorePath;

const NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsandbox = false\n\
                          substituters =\nbuild-users-group =";

/// Runs a Nix command, returns its stdout, panics with its stderr on failure.
fn nix(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .env("NIX_CONFIG", NIX_CONFIG)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap().trim().to_owned()
}

const PATHS_NIX: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" ("PATH=/usr/bin:/bin\n" + script) ];
  };
  leaf = mk "cache-core-leaf" "echo hello > $out";
  empty = mk "cache-core-empty" ": > $out";
  tool = mk "cache-core-tool" "printf '#!/bin/sh\\necho hi\\n' > $out; chmod +x $out";
  link = mk "cache-core-link" "ln -s ${leaf} $out";
in {
  inherit leaf empty tool link;
  tree = mk "cache-core-tree" ''
    mkdir -p $out/bin $out/a/b/c $out/empty-dir
    printf '#!/bin/sh\necho hi\n' > $out/bin/run; chmod +x $out/bin/run
    : > $out/empty
    ln -s ../bin/run $out/a/link
    ln -s ${leaf} $out/leaf
    echo $out > $out/self
    printf x > $out/a/b/c/one
    printf 1234567 > $out/Zcap
    printf 12345678 > $out/aa
    head -c 300000 /dev/urandom > $out/big
  '';
}
"#;

/// Paths built once for all tests, and a cache `nix copy` wrote of them with a Nix-made key.
struct Fixture {
    _dir: tempfile::TempDir,
    paths: Vec<StorePath>,
    secret_key: PathBuf,
    public_key: String,
    nix_cache: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("paths.nix"), PATHS_NIX).unwrap();
        let mut paths: Vec<StorePath> = text(nix(
            "nix-build",
            &[d.join("paths.nix").to_str().unwrap(), "--no-out-link"],
            None,
        ))
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
        // A content-addressed path, so the narinfo has a `CA:` line.
        std::fs::write(d.join("cache-core-added"), "added by nix store add-file\n").unwrap();
        let added = text(nix(
            "nix",
            &[
                "store",
                "add-file",
                d.join("cache-core-added").to_str().unwrap(),
            ],
            None,
        ));
        paths.push(added.parse().unwrap());

        let (sk, pk) = (d.join("cache.sk"), d.join("cache.pk"));
        nix(
            "nix-store",
            &[
                "--generate-binary-cache-key",
                "cache-core-1",
                sk.to_str().unwrap(),
                pk.to_str().unwrap(),
            ],
            None,
        );
        let nix_cache = d.join("nix-cache");
        let to = format!(
            "file://{}?compression=zstd&secret-key={}",
            nix_cache.display(),
            sk.display()
        );
        let mut args = vec!["copy", "--to", &to];
        args.extend(paths.iter().map(StorePath::as_str));
        nix("nix", &args, None);
        Fixture {
            public_key: std::fs::read_to_string(&pk).unwrap(),
            _dir: dir,
            paths,
            secret_key: sk,
            nix_cache,
        }
    })
}

/// What `nix path-info --json` says about a path (Nix 2.8: an array of objects).
fn path_info(path: &StorePath) -> serde_json::Value {
    let json: serde_json::Value =
        serde_json::from_slice(&nix("nix", &["path-info", "--json", path.as_str()], None)).unwrap();
    json[0].clone()
}

/// Our NAR of `path`, with its hash and size as a HashingWriter saw them.
fn our_nar(path: &StorePath) -> (Vec<u8>, NarHash, u64) {
    let mut hashing = HashingWriter::new(Vec::new());
    let size = dump_path(Path::new(path.as_str()), &mut hashing).unwrap();
    let (bytes, hash, seen) = hashing.finish();
    assert_eq!((size, seen), (bytes.len() as u64, bytes.len() as u64));
    (bytes, hash, size)
}

/// Builds the narinfo for `path` the way the publisher will: from the local store's metadata
/// and our own NAR, compressed with `c`; returns it with the compressed bytes.
fn our_narinfo(path: &StorePath, c: Compression, key: &SigningKey) -> (NarInfo, Vec<u8>) {
    let info = path_info(path);
    let refs = info["references"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().parse().unwrap())
        .collect();
    let file = HashingWriter::new(Vec::new());
    let mut nar = HashingWriter::new(
        compressor(
            c,
            c.default_level(),
            NonZeroU32::new(2).unwrap(),
            info["narSize"].as_u64().unwrap(),
            file,
        )
        .unwrap(),
    );
    dump_path(Path::new(path.as_str()), &mut nar).unwrap();
    let (comp, nar_hash, nar_size) = nar.finish();
    let (compressed, file_hash, file_size) = comp.finish().unwrap().finish();
    let mut narinfo = NarInfo {
        store_path: path.clone(),
        url: nar_url(&file_hash, c),
        compression: c.narinfo_name().to_owned(),
        file_hash: Some(file_hash),
        file_size: Some(file_size),
        nar_hash,
        nar_size,
        references: refs,
        deriver: info["deriver"].as_str().map(|d| d.parse().unwrap()),
        sigs: vec![],
        ca: info["ca"].as_str().map(str::to_owned),
    };
    narinfo.sign(key);
    (narinfo, compressed)
}

/// Named so that `cargo test cache` selects these along with the unit tests.
mod cache_vs_nix {
    use super::*;

    #[test]
    fn nar_bytes_equal_nix_store_dump() {
        for path in &fixture().paths {
            let (ours, _, _) = our_nar(path);
            let theirs = nix("nix-store", &["--dump", path.as_str()], None);
            assert!(
                ours == theirs,
                "NAR of {path} differs from `nix-store --dump`"
            );
        }
    }

    #[test]
    fn nar_hash_and_size_equal_what_the_store_records() {
        for path in &fixture().paths {
            let (_, hash, size) = our_nar(path);
            let info = path_info(path);
            let recorded: NarHash = info["narHash"].as_str().unwrap().parse().unwrap();
            assert_eq!(hash, recorded, "{path}");
            assert_eq!(hash.to_sri(), info["narHash"].as_str().unwrap());
            assert_eq!(size, info["narSize"].as_u64().unwrap(), "{path}");
        }
    }

    #[test]
    fn narinfo_equals_nix_copy_except_the_compressed_file() {
        let fx = fixture();
        let key = SigningKey::load(&fx.secret_key).unwrap();
        let differ = |l: &str| {
            l.starts_with("URL: ") || l.starts_with("FileHash: ") || l.starts_with("FileSize: ")
        };
        let mut saw_ca = false;
        for path in &fx.paths {
            let theirs =
                std::fs::read_to_string(fx.nix_cache.join(narinfo_file_name(path))).unwrap();
            let (ours, _) = our_narinfo(path, Compression::Zstd, &key);
            let ours = ours.to_string();
            let keep = |t: &str| {
                t.lines()
                    .filter(|l| !differ(l))
                    .map(|l| format!("{l}\n"))
                    .collect::<String>()
            };
            assert_eq!(keep(&ours), keep(&theirs), "{path}");
            // Same lines in the same order, the differing ones included.
            let names = |t: &str| {
                t.lines()
                    .map(|l| l.split(':').next().unwrap().to_owned())
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(&ours), names(&theirs));
            saw_ca |= theirs.contains("\nCA: ");
            // Nix's own narinfo parses and renders back unchanged.
            assert_eq!(theirs.parse::<NarInfo>().unwrap().to_string(), theirs);
        }
        assert!(
            saw_ca,
            "the fixture should include a content-addressed path"
        );
    }

    #[test]
    fn signature_equals_nix_copys_sig_line() {
        let fx = fixture();
        let key = SigningKey::load(&fx.secret_key).unwrap();
        let trusted = [fx.public_key.parse::<PublicKey>().unwrap()];
        assert_eq!(key.public_key().to_string(), fx.public_key);
        for path in &fx.paths {
            let theirs: NarInfo =
                std::fs::read_to_string(fx.nix_cache.join(narinfo_file_name(path)))
                    .unwrap()
                    .parse()
                    .unwrap();
            assert_eq!(theirs.sigs, vec![key.sign(&theirs.fingerprint())], "{path}");
            assert!(theirs.is_signed_by_any(&trusted));
        }
    }

    #[test]
    fn nix_copys_compressed_nar_unpacks_to_our_nar() {
        let fx = fixture();
        for path in &fx.paths {
            let theirs: NarInfo =
                std::fs::read_to_string(fx.nix_cache.join(narinfo_file_name(path)))
                    .unwrap()
                    .parse()
                    .unwrap();
            let mut unpacked = Vec::new();
            zstd::stream::read::Decoder::new(
                std::fs::File::open(fx.nix_cache.join(&theirs.url)).unwrap(),
            )
            .unwrap()
            .read_to_end(&mut unpacked)
            .unwrap();
            assert!(unpacked == our_nar(path).0, "{path}");
        }
    }

    /// Writes a whole cache with our code only, then lets Nix check every NAR and signature in it and
    /// substitute from it into an empty store with `require-sigs`.
    #[test]
    fn nix_verifies_and_substitutes_a_cache_we_wrote() {
        let fx = fixture();
        let (secret, public) = generate_keypair("cache-core-ours-1").unwrap();
        let key: SigningKey = secret.parse().unwrap();
        for c in [Compression::Zstd, Compression::Xz, Compression::None] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("cache");
            std::fs::create_dir_all(root.join("nar")).unwrap();
            std::fs::write(root.join("nix-cache-info"), nix_cache_info(40)).unwrap();
            for path in &fx.paths {
                let (info, compressed) = our_narinfo(path, c, &key);
                std::fs::write(root.join(&info.url), compressed).unwrap();
                std::fs::write(root.join(narinfo_file_name(path)), info.to_string()).unwrap();
            }
            let store = format!("file://{}", root.display());
            let pk = public.to_string();
            let mut args = vec![
                "store",
                "verify",
                "--store",
                &store,
                "--trusted-public-keys",
                &pk,
            ];
            args.extend(fx.paths.iter().map(StorePath::as_str));
            nix("nix", &args, None);

            let chroot = dir.path().join("client");
            let mut args = vec![
                "--store",
                chroot.to_str().unwrap(),
                "-r",
                "--max-jobs",
                "0",
                "--option",
                "substituters",
                &store,
                "--option",
                "trusted-public-keys",
                &pk,
                "--option",
                "require-sigs",
                "true",
            ];
            args.extend(fx.paths.iter().map(StorePath::as_str));
            nix("nix-store", &args, None);
            for path in &fx.paths {
                let copied = chroot.join(path.as_str().trim_start_matches('/'));
                assert!(
                    std::fs::symlink_metadata(&copied).is_ok(),
                    "{c:?}: {path} not substituted"
                );
            }
        }
    }

    #[test]
    fn nix_accepts_a_key_we_generated() {
        let fx = fixture();
        let (secret, public) = generate_keypair("cache-core-gen-1").unwrap();
        let derived = text(nix(
            "nix",
            &["key", "convert-secret-to-public"],
            Some(secret.as_bytes()),
        ));
        assert_eq!(derived, public.to_string());

        let dir = tempfile::tempdir().unwrap();
        let sk = dir.path().join("gen.sk");
        std::fs::write(&sk, secret.as_bytes()).unwrap();
        let cache = format!("file://{}", dir.path().join("cache").display());
        let to = format!("{cache}?compression=zstd&secret-key={}", sk.display());
        let mut args = vec!["copy", "--to", &to];
        args.extend(fx.paths.iter().map(StorePath::as_str));
        nix("nix", &args, None);
        let pk = public.to_string();
        let mut args = vec![
            "store",
            "verify",
            "--store",
            &cache,
            "--trusted-public-keys",
            &pk,
        ];
        args.extend(fx.paths.iter().map(StorePath::as_str));
        nix("nix", &args, None);
        // …and a different trusted key makes the same check fail.
        let (_, stranger) = generate_keypair("cache-core-gen-1").unwrap();
        let status = Command::new("nix")
            .args([
                "store",
                "verify",
                "--store",
                &cache,
                "--trusted-public-keys",
                &stranger.to_string(),
            ])
            .arg(fx.paths[0].as_str())
            .env("NIX_CONFIG", NIX_CONFIG)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success());
    }
}
