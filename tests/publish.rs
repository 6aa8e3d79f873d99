//! The publish phase judged by the real Nix client: farmctl publishes the fixture fleet's
//! closures over SFTP to a real sshd, a real nginx serves the directory, and `nix-store -r`
//! substitutes every closure into an empty store with `require-sigs`; `nix store verify` and
//! `nix copy`'s own output are the references for signatures and narinfos.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{run, run_unchecked, stderr_of, stdout_of, Farm, Fleet, Nginx, Sshd};
use nixfarm::cache::NarInfo;
use serde_json::Value;

/// A fleet, an sshd whose "remote" cache directory is on this machine, a farm configured to
/// publish there over SFTP, and a key pair made by Nix itself.
struct Bed {
    fleet: Fleet,
    sshd: Sshd,
    farm: Farm,
    cache: PathBuf,
    secret_key: PathBuf,
    public_key: String,
}

impl Bed {
    fn new() -> Bed {
        let fleet = Fleet::new();
        let sshd = Sshd::start();
        let mut farm = Farm::new(&fleet);
        let cache = farm.dir().join("remote/cache");
        let secret_key = farm.dir().join("cache.sk");
        let public_file = farm.dir().join("cache.pk");
        run(fleet
            .env()
            .command("nix-store")
            .arg("--generate-binary-cache-key")
            .arg("farm-test-1")
            .args([&secret_key, &public_file]));
        let public_key = std::fs::read_to_string(&public_file).unwrap();
        let url = format!("sftp://root@127.0.0.1:{}{}", sshd.port(), cache.display());
        let path = |p: &Path| common::toml_str(p.display().to_string());
        farm.config
            .set("cache", "url", &common::toml_str(url))
            .set(
                "cache",
                "secret_key_files",
                &format!("[{}]", path(&secret_key)),
            )
            .set("cache", "ssh_identity", &path(&sshd.ssh_key_path()))
            .set("cache", "ssh_known_hosts", &path(&sshd.known_hosts_path()));
        Bed {
            fleet,
            sshd,
            farm,
            cache,
            secret_key,
            public_key: public_key.trim().to_owned(),
        }
    }

    /// Builds every machine's toplevel from a fresh checkout of the fleet's remote.
    fn toplevels(&self) -> Vec<String> {
        let checkout = self.fleet.checkout();
        self.fleet
            .machine_names()
            .iter()
            .map(|m| self.fleet.build(&checkout, m).expect("fleet builds"))
            .collect()
    }

    /// `farmctl publish --json ARGS…`; the summary when it printed one.
    fn publish(&self, args: &[String]) -> (Output, Option<Value>) {
        let out = self.farm.farmctl(
            &self.fleet,
            ["publish", "--json"]
                .iter()
                .map(|s| s.to_string())
                .chain(args.iter().cloned()),
        );
        let summary = serde_json::from_slice(&out.stdout).ok();
        (out, summary)
    }

    #[track_caller]
    fn publish_ok(&self, args: &[String]) -> Value {
        let (out, summary) = self.publish(args);
        assert!(
            out.status.success(),
            "farmctl publish failed:\n{}\n{}\nsshd log:\n{}",
            stdout_of(&out),
            stderr_of(&out),
            self.sshd.log()
        );
        summary.expect("farmctl publish --json prints the summary")
    }

    /// Every path of the closures of `roots`, per the local store.
    fn closure(&self, roots: &[String]) -> BTreeSet<String> {
        let out = self.fleet.env().nix(
            ["path-info", "--recursive"]
                .iter()
                .map(|s| s.to_string())
                .chain(roots.iter().cloned()),
        );
        stdout_of(&out).lines().map(str::to_owned).collect()
    }
}

/// What a client could trip over: a narinfo whose NAR is missing or of the wrong size, or one
/// of whose references has no narinfo.
fn closure_problems(cache: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(dir) = std::fs::read_dir(cache) else {
        return problems;
    };
    let names: BTreeSet<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for name in names
        .iter()
        .filter(|n| n.ends_with(".narinfo") && !n.starts_with('.'))
    {
        let text = std::fs::read_to_string(cache.join(name)).unwrap();
        let info: NarInfo = text.parse().unwrap_or_else(|e| panic!("{name}: {e}"));
        match std::fs::metadata(cache.join(&info.url)) {
            Ok(m) if Some(m.len()) == info.file_size => {}
            Ok(m) => problems.push(format!(
                "{name}: NAR has {} bytes, not {:?}",
                m.len(),
                info.file_size
            )),
            Err(_) => problems.push(format!("{name}: NAR {} missing", info.url)),
        }
        for r in &info.references {
            if !names.contains(&format!("{}.narinfo", r.hash_part())) {
                problems.push(format!("{name}: reference {r} has no narinfo"));
            }
        }
    }
    problems
}

/// Our temporary files left in the cache root and `nar/`.
fn temporaries(cache: &Path) -> Vec<PathBuf> {
    [cache.to_owned(), cache.join("nar")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|d| d.flatten())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".tmp-farmd-")
        })
        .collect()
}

/// `nix-store -r` of `path` into an empty chroot store from the cache served by nginx.
fn substitute(bed: &Bed, nginx: &Nginx, store: &Path, path: &str, key: &str) -> Output {
    run_unchecked(
        bed.fleet
            .env()
            .command("nix-store")
            .arg("--store")
            .arg(store)
            .args(["-r", path, "--max-jobs", "0"])
            .args(["--option", "substituters", &nginx.url()])
            .args(["--option", "trusted-public-keys", key])
            .args(["--option", "require-sigs", "true"]),
    )
}

#[test]
fn fleet_closures_substitute_from_the_sftp_cache_with_require_sigs() {
    let bed = Bed::new();
    let toplevels = bed.toplevels();
    let summary = bed.publish_ok(&toplevels);
    let closure = bed.closure(&toplevels);
    assert_eq!(summary["closure_paths"], closure.len());
    assert_eq!(summary["uploaded_paths"], closure.len());
    assert_eq!(summary["roots"].as_array().unwrap().len(), 3);
    assert!(summary["failed"].as_array().unwrap().is_empty());
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    assert_eq!(temporaries(&bed.cache), Vec::<PathBuf>::new());
    let info = std::fs::read_to_string(bed.cache.join("nix-cache-info")).unwrap();
    assert_eq!(
        info,
        "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
    );

    let nginx = Nginx::serve(&bed.cache);
    let clients = tempfile::tempdir().unwrap();
    for (i, top) in toplevels.iter().enumerate() {
        let store = clients.path().join(format!("store-{i}"));
        let out = substitute(&bed, &nginx, &store, top, &bed.public_key);
        assert!(
            out.status.success(),
            "substituting {top}:\n{}",
            stderr_of(&out)
        );
        for path in bed.closure(std::slice::from_ref(top)) {
            assert!(
                store.join(path.trim_start_matches('/')).exists(),
                "{path} not substituted"
            );
        }
    }

    // Another key: the client must refuse every path.
    let (_, wrong) = nixfarm::cache::generate_keypair("farm-test-1").unwrap();
    let store = clients.path().join("store-wrong-key");
    let out = substitute(&bed, &nginx, &store, &toplevels[0], &wrong.to_string());
    assert!(!out.status.success(), "substituted with the wrong key");
    assert!(!store.join(toplevels[0].trim_start_matches('/')).exists());

    // Nix's own verification and ours agree that everything is signed and complete.
    let file_url = format!("file://{}", bed.cache.display());
    run(bed
        .fleet
        .env()
        .command("nix")
        .args([
            "store",
            "verify",
            "--store",
            &file_url,
            "--trusted-public-keys",
            &bed.public_key,
            "-r",
        ])
        .args(&toplevels));
    let out = bed.farm.farmctl(&bed.fleet, ["cache", "verify", "--deep"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    assert!(
        stdout_of(&out).ends_with(", 0 problems"),
        "{}",
        stdout_of(&out)
    );
}

#[test]
fn signatures_and_narinfos_match_nix_copy() {
    let bed = Bed::new();
    let toplevels = bed.toplevels();
    bed.publish_ok(&toplevels[..1].to_vec());
    let theirs = tempfile::tempdir().unwrap();
    let to = format!(
        "file://{}?compression=zstd&secret-key={}",
        theirs.path().display(),
        bed.secret_key.display()
    );
    bed.fleet.env().nix(["copy", "--to", &to, &toplevels[0]]);
    let strip = |text: &str| -> String {
        text.lines()
            .filter(|l| {
                !["URL:", "FileHash:", "FileSize:"]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let closure = bed.closure(&toplevels[..1].to_vec());
    for path in &closure {
        let hash = &path["/nix/store/".len()..][..32];
        let ours = std::fs::read_to_string(bed.cache.join(format!("{hash}.narinfo"))).unwrap();
        let nix = std::fs::read_to_string(theirs.path().join(format!("{hash}.narinfo"))).unwrap();
        assert_eq!(strip(&ours), strip(&nix), "narinfo of {path}");
        assert!(ours.contains("\nSig: farm-test-1:"), "{ours}");
    }
}

#[test]
fn world_readable_and_malformed_keys_are_refused_before_anything_is_written() {
    let bed = Bed::new();
    let toplevels = bed.toplevels();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bed.secret_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (out, _) = bed.publish(&toplevels);
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("run `chmod 600 {}`", bed.secret_key.display())),
        "{err}"
    );

    std::fs::write(&bed.secret_key, "farm-test-1:not base64!").unwrap();
    std::fs::set_permissions(&bed.secret_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (out, _) = bed.publish(&toplevels);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(err.contains("is not a Nix secret key file"), "{err}");
    assert!(!bed.cache.exists(), "nothing may be written with a bad key");
}
