//! A cache under test: a [`Fleet`], an [`Sshd`] whose "remote" directory is on this machine,
//! a [`Farm`] configured to publish there over SFTP with a key made by Nix, and checks a
//! client relies on (closure completeness, no leftover temporaries).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use nixfarm::cache::NarInfo;
use serde_json::Value;

use super::{run, run_unchecked, stderr_of, stdout_of, toml_str, Farm, Fleet, Nginx, Sshd};

/// A fleet, an sshd whose "remote" cache directory is on this machine, a farm configured to
/// publish there over SFTP, and a key pair made by Nix itself.
pub struct CacheBed {
    pub fleet: Fleet,
    pub sshd: Sshd,
    pub farm: Farm,
    pub cache: PathBuf,
    pub secret_key: PathBuf,
    pub public_key: String,
}

impl CacheBed {
    pub fn new() -> CacheBed {
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
        let path = |p: &Path| toml_str(p.display().to_string());
        farm.config
            .set("cache", "url", &toml_str(url))
            .set(
                "cache",
                "secret_key_files",
                &format!("[{}]", path(&secret_key)),
            )
            .set("cache", "ssh_identity", &path(&sshd.ssh_key_path()))
            .set("cache", "ssh_known_hosts", &path(&sshd.known_hosts_path()));
        CacheBed {
            fleet,
            sshd,
            farm,
            cache,
            secret_key,
            public_key: public_key.trim().to_owned(),
        }
    }

    /// Builds every machine's toplevel from a fresh checkout of the fleet's remote.
    pub fn toplevels(&self) -> Vec<String> {
        let checkout = self.fleet.checkout();
        self.fleet
            .machine_names()
            .iter()
            .map(|m| self.fleet.build(&checkout, m).expect("fleet builds"))
            .collect()
    }

    /// `farmctl publish --json ARGS…`; the summary when it printed one.
    pub fn publish(&self, args: &[String]) -> (Output, Option<Value>) {
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
    pub fn publish_ok(&self, args: &[String]) -> Value {
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

    /// `nix store verify` (Nix's own judgement) passes on the closures of `roots` in the cache
    /// directory, with the farm's key trusted.
    pub fn assert_nix_verifies(&self, roots: &[String]) {
        let file_url = format!("file://{}", self.cache.display());
        run(self
            .fleet
            .env()
            .command("nix")
            .args(["store", "verify", "--store", &file_url])
            .args(["--trusted-public-keys", &self.public_key, "-r"])
            .args(roots));
    }

    /// A chain of `n` paths of `mib` MiB of random (incompressible) data each, every one
    /// referencing the previous (a real dependency order, slow enough to interrupt); returns
    /// the last.
    pub fn random_chain(&self, n: usize, mib: usize) -> String {
        let expr = format!(
            r#"let mk = prev: i: derivation {{
                  name = "big-{i}"; system = "x86_64-linux"; builder = "/bin/sh";
                  salt = "{salt}"; inherit prev; size = "{bytes}";
                  args = [ "-c" "PATH=/usr/bin:/bin; mkdir $out; echo $prev > $out/prev; head -c $size /dev/urandom > $out/data" ];
                }};
               in builtins.foldl' (p: i: mk p (toString i)) "" (builtins.genList (x: x) {n})"#,
            i = "${i}",
            salt = self.fleet.salt(),
            bytes = mib * 1024 * 1024,
        );
        let out =
            self.fleet
                .env()
                .nix(["build", "--impure", "--no-link", "--json", "--expr", &expr]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["outputs"]["out"].as_str().unwrap().to_owned()
    }

    /// `farmctl cache verify` (with `--deep`) found nothing wrong.
    #[track_caller]
    pub fn assert_verify_clean(&self, out: &Output) {
        assert!(
            out.status.success(),
            "{}\n{}",
            stdout_of(out),
            stderr_of(out)
        );
        assert!(
            stdout_of(out).ends_with(", 0 problems"),
            "{}",
            stdout_of(out)
        );
    }

    /// Every path of the closures of `roots`, per the local store.
    pub fn closure(&self, roots: &[String]) -> BTreeSet<String> {
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
pub fn closure_problems(cache: &Path) -> Vec<String> {
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
pub fn temporaries(cache: &Path) -> Vec<PathBuf> {
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
pub fn substitute(bed: &CacheBed, nginx: &Nginx, store: &Path, path: &str, key: &str) -> Output {
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
