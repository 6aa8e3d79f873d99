//! A fixture fleet: a flake with NixOS-shaped machines, its bare remote, and a stand-in
//! for nixpkgs, all in one temp dir that the [`Fleet`] owns.
//!
//! Layout of the temp dir:
//! - `pkgs/`: a git repo (working tree, committed directly) with a flake exporting
//!   `lib.salt`, `lib.testSalt`, `lib.version` and `lib.mkPath`, the derivation builder.
//!   [`Fleet::bump`] commits a new version, so `nix flake update` moves the fleet's lock.
//! - `remote.git`: the bare remote the code under test clones, fetches and pushes to (`main`).
//! - `work/`: the bed's own clone; every bed change is fetch + reset + commit + push, so the
//!   bed never conflicts with commits (lock updates) the code under test pushed.
//!
//! Each machine's `config.system.build.toplevel` is a plain `derivation` (builder /bin/sh)
//! whose closure is: toplevel → kernel (→ firmware), etc (→ bash), sw (→ bash, coreutils);
//! bash and coreutils → glibc. glibc carries the pkgs version, so a bump changes glibc, bash,
//! coreutils, sw, etc and the toplevels, but not the kernels or firmware. gamma has its own
//! kernel; everything else is shared between machines. Every path carries the fleet's salt.
//! What fails, fails evaluation or sleeps is read from `failing.nix`, `eval-failing.nix` and
//! `sleep.nix` in the fleet repo.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Mutex;

use tempfile::TempDir;

use super::env::NixEnv;
use super::process::{run_unchecked, stdout_of};
use super::unique_salt;

/// The machines of [`Fleet::new`].
pub const DEFAULT_MACHINES: [&str; 3] = ["alpha", "beta", "gamma"];

const PKGS_FLAKE: &str = r#"{
  description = "nixfarm test bed: a tiny stand-in for nixpkgs";
  outputs = { self }:
    let
      testSalt = import ./salt.nix;
      version = import ./version.nix;
      salt = "${testSalt}-v${toString version}";
      # One store path: a directory whose `references` file embeds the store paths of
      # `refs` (so Nix records them as references) and whose `payload` has `size` bytes.
      mkPath = { name, refs ? [ ], text ? "", size ? 0, fail ? null, sleep ? 0, versioned ? true }:
        derivation {
          inherit name text refs;
          system = "x86_64-linux";
          builder = "/bin/sh";
          salt = if versioned then salt else testSalt;
          size = toString size;
          failMessage = if fail == null then "" else fail;
          sleepSeconds = toString sleep;
          args = [ "-c" ''
            PATH=/usr/bin:/bin
            set -e
            echo "nixfarm-testbed: building $name" >&2
            if [ -n "$failMessage" ]; then echo "$failMessage" >&2; exit 1; fi
            if [ "$sleepSeconds" != 0 ]; then
              echo "nixfarm-testbed: sleeping $sleepSeconds s" >&2
              sleep "$sleepSeconds"
            fi
            mkdir "$out"
            printf '%s\n' "$name" "$salt" "$text" > "$out/info"
            : > "$out/references"
            for r in $refs; do echo "$r" >> "$out/references"; done
            if [ "$size" != 0 ]; then yes "$name $salt" | head -c "$size" > "$out/payload"; fi
          '' ];
        };
    in {
      lib = { inherit salt testSalt version mkPath; };
    };
}
"#;

const FLEET_FLAKE: &str = r#"{
  description = "nixfarm test fleet";
  inputs.pkgs.url = "@PKGS_URL@";
  outputs = { self, pkgs }:
    let
      inherit (pkgs.lib) mkPath;
      machines = import ./machines.nix;
      failing = import ./failing.nix;
      evalFailing = import ./eval-failing.nix;
      sleeps = import ./sleep.nix;
      firmware = mkPath { name = "linux-firmware-20230210"; versioned = false; size = 32768; };
      kernel = variant: mkPath {
        name = "linux-6.1.0-${variant}"; versioned = false; refs = [ firmware ]; size = 65536;
      };
      glibc = mkPath { name = "glibc-2.37"; size = 16384; };
      bash = mkPath { name = "bash-5.2"; refs = [ glibc ]; size = 8192; };
      coreutils = mkPath { name = "coreutils-9.1"; refs = [ glibc ]; size = 8192; };
      sw = mkPath { name = "system-path"; refs = [ bash coreutils ]; };
      toplevel = name:
        if builtins.elem name evalFailing
        then throw "nixfarm-testbed: evaluation of ${name} fails on purpose"
        else mkPath {
          name = "nixos-system-${name}";
          refs = [
            (kernel (if name == "gamma" then "rpi" else "generic"))
            (mkPath { name = "etc"; text = "hostname=${name}"; refs = [ bash ]; })
            sw
          ];
          text = "machine=${name}";
          fail = if builtins.elem name failing
            then "nixfarm-testbed: ${name} fails to build on purpose"
            else null;
          sleep = sleeps.${name} or 0;
        };
    in {
      nixosConfigurations = builtins.listToAttrs (map (name: {
        inherit name;
        value = { config.system.build.toplevel = toplevel name; };
      }) machines);
    };
}
"#;

/// The bed's knobs, mirrored into the fleet repo's `*.nix` files on every change.
struct Knobs {
    machines: Vec<String>,
    failing: BTreeSet<String>,
    eval_failing: BTreeSet<String>,
    sleeps: BTreeMap<String, u32>,
}

/// A fixture fleet flake with a bare remote and a bumpable "pkgs" input; see module docs.
pub struct Fleet {
    dir: TempDir,
    env: NixEnv,
    salt: String,
    pkgs_version: Mutex<u32>,
    knobs: Mutex<Knobs>,
}

impl Fleet {
    /// A fleet of alpha, beta and gamma with an initial flake.lock committed and pushed.
    pub fn new() -> Fleet {
        Fleet::with_machines(&DEFAULT_MACHINES)
    }

    /// A fleet of the named machines (`[A-Za-z0-9_-]+`); gamma, if present, has its own kernel.
    pub fn with_machines(names: &[&str]) -> Fleet {
        for n in names {
            assert!(valid_name(n), "bad machine name {n:?}");
        }
        let salt = unique_salt();
        let dir = tempfile::Builder::new()
            .prefix("nixfarm-fleet-")
            .tempdir()
            .expect("create fleet temp dir");
        let fleet = Fleet {
            dir,
            env: NixEnv::new(),
            salt,
            pkgs_version: Mutex::new(1),
            knobs: Mutex::new(Knobs {
                machines: names.iter().map(|s| s.to_string()).collect(),
                failing: BTreeSet::new(),
                eval_failing: BTreeSet::new(),
                sleeps: BTreeMap::new(),
            }),
        };
        fleet.init_pkgs();
        fleet.init_fleet();
        fleet
    }

    /// The environment the bed runs Nix and git in; use it for the code under test too.
    pub fn env(&self) -> &NixEnv {
        &self.env
    }

    /// The per-fleet unique salt in every store path of this fleet.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// The fleet's temp dir (tests may put their state dirs etc. under it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The bare remote's path (`…/remote.git`), usable as a git URL as is.
    pub fn remote_path(&self) -> PathBuf {
        self.dir.path().join("remote.git")
    }

    /// The bare remote as a `file://` URL.
    pub fn remote_url(&self) -> String {
        format!("file://{}", self.remote_path().display())
    }

    /// The pkgs repo's path.
    pub fn pkgs_path(&self) -> PathBuf {
        self.dir.path().join("pkgs")
    }

    /// The fleet flake's `inputs.pkgs.url` (`git+file://…/pkgs`).
    pub fn pkgs_url(&self) -> String {
        format!("git+file://{}", self.pkgs_path().display())
    }

    /// The pkgs repo's current head commit.
    pub fn pkgs_head(&self) -> String {
        stdout_of(&self.env.git(&self.pkgs_path(), ["rev-parse", "HEAD"]))
    }

    /// The current pkgs version (1 after `new`, +1 per `bump`).
    pub fn pkgs_version(&self) -> u32 {
        *self.pkgs_version.lock().unwrap()
    }

    /// Commits a new pkgs version (changes `lib.salt`, hence glibc and what depends on it);
    /// returns the new pkgs head. The fleet's lock only moves when someone runs an update.
    pub fn bump(&self) -> String {
        let mut v = self.pkgs_version.lock().unwrap();
        *v += 1;
        let pkgs = self.pkgs_path();
        std::fs::write(pkgs.join("version.nix"), format!("{}\n", *v)).expect("write version");
        self.env.git(
            &pkgs,
            ["commit", "-q", "-a", "-m", &format!("pkgs: version {v}")],
        );
        self.pkgs_head()
    }

    /// Panics unless, within 10 s, no process of this fleet's builds is left (builders'
    /// environments carry the fleet's salt): a timeout or cancel must kill whole process groups.
    pub fn assert_no_builder_left(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let survivors: Vec<String> = std::fs::read_dir("/proc")
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|c| c.is_ascii_digit())
                })
                .filter(|e| {
                    std::fs::read(e.path().join("environ"))
                        .map(|env| String::from_utf8_lossy(&env).contains(self.salt()))
                        .unwrap_or(false)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if survivors.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "processes survived: {survivors:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The machine names, sorted.
    pub fn machine_names(&self) -> Vec<String> {
        let mut names = self.knobs.lock().unwrap().machines.clone();
        names.sort();
        names
    }

    /// The flake attribute of `machine`'s toplevel.
    pub fn toplevel_attr(machine: &str) -> String {
        format!("nixosConfigurations.{machine}.config.system.build.toplevel")
    }

    /// The text on stderr of `machine`'s build while it is set failing.
    pub fn failure_message(machine: &str) -> String {
        format!("nixfarm-testbed: {machine} fails to build on purpose")
    }

    /// The text of the evaluation error of `machine` while it is set eval-failing.
    pub fn eval_failure_message(machine: &str) -> String {
        format!("nixfarm-testbed: evaluation of {machine} fails on purpose")
    }

    /// Commits and pushes a change that makes `machine`'s toplevel builder exit 1 with
    /// [`Fleet::failure_message`] on stderr (or builds again when `failing` is false).
    pub fn set_failing(&self, machine: &str, failing: bool) {
        let mut k = self.knobs.lock().unwrap();
        toggle(&mut k.failing, machine, failing);
        self.push_knobs(&k, &format!("test: {machine} failing={failing}"));
    }

    /// Commits and pushes a change that makes evaluating `machine`'s toplevel `throw`
    /// [`Fleet::eval_failure_message`] (or evaluate again when `failing` is false).
    pub fn set_eval_failing(&self, machine: &str, failing: bool) {
        let mut k = self.knobs.lock().unwrap();
        toggle(&mut k.eval_failing, machine, failing);
        self.push_knobs(&k, &format!("test: {machine} eval-failing={failing}"));
    }

    /// Commits and pushes a change that makes `machine`'s toplevel build sleep `seconds`
    /// before finishing (0: no sleep). Changes the toplevel's derivation.
    pub fn set_sleep(&self, machine: &str, seconds: u32) {
        let mut k = self.knobs.lock().unwrap();
        if seconds == 0 {
            k.sleeps.remove(machine);
        } else {
            k.sleeps.insert(machine.to_owned(), seconds);
        }
        self.push_knobs(&k, &format!("test: {machine} sleeps {seconds}s"));
    }

    /// Commits and pushes a new machine (sharing most of its closure with the others).
    pub fn add_machine(&self, machine: &str) {
        assert!(valid_name(machine), "bad machine name {machine:?}");
        let mut k = self.knobs.lock().unwrap();
        if !k.machines.iter().any(|m| m == machine) {
            k.machines.push(machine.to_owned());
        }
        self.push_knobs(&k, &format!("test: add machine {machine}"));
    }

    /// Commits and pushes the fleet without `machine` (it was decommissioned).
    pub fn remove_machine(&self, machine: &str) {
        let mut k = self.knobs.lock().unwrap();
        k.machines.retain(|m| m != machine);
        self.push_knobs(&k, &format!("test: remove machine {machine}"));
    }

    /// The commit `refs/heads/<branch>` of the remote points to.
    pub fn remote_head(&self, branch: &str) -> String {
        let remote = self.remote_path();
        stdout_of(&self.env.git(
            &remote,
            [
                "rev-parse",
                "--verify",
                &format!("refs/heads/{branch}^{{commit}}"),
            ],
        ))
    }

    /// Moves the remote's `main` on by a commit that does not touch the flake (so a push
    /// based on the old head is rejected as non-fast-forward); returns the new head.
    pub fn push_unrelated_commit(&self) -> String {
        let work = self.sync_work();
        let notes = work.join("NOTES.md");
        let mut text = std::fs::read_to_string(&notes).unwrap_or_default();
        text.push_str(&format!("unrelated change {}\n", unique_salt()));
        std::fs::write(&notes, text).expect("write NOTES.md");
        self.commit_push(&work, "docs: an unrelated change");
        self.remote_head("main")
    }

    /// The flake.lock at the head of the remote's `main`, parsed.
    pub fn remote_lock(&self) -> serde_json::Value {
        let out = self
            .env
            .git(&self.remote_path(), ["show", "main:flake.lock"]);
        serde_json::from_slice(&out.stdout).expect("flake.lock in the remote is JSON")
    }

    /// The pkgs revision locked by the flake.lock at the head of the remote's `main`.
    pub fn lock_rev_of_pkgs_in_remote(&self) -> String {
        lock_rev_of_pkgs(&self.remote_lock())
    }

    /// A fresh clone of the remote's `main` in a new dir under the fleet's temp dir.
    pub fn checkout(&self) -> PathBuf {
        let dir = self.dir.path().join(format!("checkout-{}", unique_salt()));
        let remote = self.remote_path();
        self.env
            .git(self.dir.path(), ["clone", "-q", utf8(&remote), utf8(&dir)]);
        dir
    }

    /// `nix build --json --no-link` of `machine`'s toplevel in the flake at `flake_dir`
    /// (e.g. a [`Fleet::checkout`]): the toplevel's store path, or the failed output.
    pub fn build(&self, flake_dir: &Path, machine: &str) -> Result<String, Output> {
        let installable = format!("{}#{}", flake_dir.display(), Fleet::toplevel_attr(machine));
        let out = run_unchecked(self.env.command("nix").args([
            "build",
            "--json",
            "--no-link",
            &installable,
        ]));
        if !out.status.success() {
            return Err(out);
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nix build --json");
        Ok(v[0]["outputs"]["out"]
            .as_str()
            .expect("outputs.out in nix build --json")
            .to_owned())
    }

    fn init_pkgs(&self) {
        let pkgs = self.pkgs_path();
        std::fs::create_dir_all(&pkgs).expect("create pkgs");
        std::fs::write(pkgs.join("flake.nix"), PKGS_FLAKE).expect("write pkgs flake");
        std::fs::write(pkgs.join("salt.nix"), format!("\"{}\"\n", self.salt)).expect("salt");
        std::fs::write(pkgs.join("version.nix"), "1\n").expect("version");
        self.env.git(&pkgs, ["init", "-q", "-b", "main"]);
        self.env.git(&pkgs, ["add", "-A"]);
        self.env
            .git(&pkgs, ["commit", "-q", "-m", "pkgs: version 1"]);
    }

    fn init_fleet(&self) {
        let remote = self.remote_path();
        let work = self.work_path();
        let root = self.dir.path();
        self.env
            .git(root, ["init", "-q", "--bare", "-b", "main", utf8(&remote)]);
        self.env
            .git(root, ["init", "-q", "-b", "main", utf8(&work)]);
        self.env
            .git(&work, ["remote", "add", "origin", utf8(&remote)]);
        let flake = FLEET_FLAKE.replace("@PKGS_URL@", &self.pkgs_url());
        std::fs::write(work.join("flake.nix"), flake).expect("write fleet flake");
        self.write_knobs(&work, &self.knobs.lock().unwrap());
        self.env.git(&work, ["add", "-A"]);
        self.env
            .git(&work, ["commit", "-q", "-m", "fleet: initial"]);
        self.env.nix(["flake", "lock", utf8(&work)]);
        self.env.git(&work, ["add", "flake.lock"]);
        self.env
            .git(&work, ["commit", "-q", "-m", "flake.lock: initial"]);
        self.env.git(&work, ["push", "-q", "origin", "main"]);
    }

    fn work_path(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// Brings the bed's clone to the remote's `main` (whoever pushed there last).
    fn sync_work(&self) -> PathBuf {
        let work = self.work_path();
        self.env.git(&work, ["fetch", "-q", "origin"]);
        self.env
            .git(&work, ["reset", "-q", "--hard", "origin/main"]);
        work
    }

    fn commit_push(&self, work: &Path, message: &str) {
        self.env.git(work, ["add", "-A"]);
        self.env
            .git(work, ["commit", "-q", "--allow-empty", "-m", message]);
        self.env.git(work, ["push", "-q", "origin", "main"]);
    }

    fn push_knobs(&self, knobs: &Knobs, message: &str) {
        let work = self.sync_work();
        self.write_knobs(&work, knobs);
        self.commit_push(&work, message);
    }

    fn write_knobs(&self, work: &Path, k: &Knobs) {
        let list = |names: &mut dyn Iterator<Item = &String>| {
            let items: Vec<String> = names.map(|n| format!("\"{n}\"")).collect();
            format!("[ {} ]\n", items.join(" "))
        };
        let write = |file: &str, text: String| {
            std::fs::write(work.join(file), text).expect("write fleet knob file");
        };
        write("machines.nix", list(&mut k.machines.iter()));
        write("failing.nix", list(&mut k.failing.iter()));
        write("eval-failing.nix", list(&mut k.eval_failing.iter()));
        let sleeps: Vec<String> = k
            .sleeps
            .iter()
            .map(|(m, s)| format!("\"{m}\" = {s};"))
            .collect();
        write("sleep.nix", format!("{{ {} }}\n", sleeps.join(" ")));
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Fleet::new()
    }
}

/// The `rev` of the `pkgs` input in a parsed flake.lock.
pub fn lock_rev_of_pkgs(lock: &serde_json::Value) -> String {
    lock["nodes"]["pkgs"]["locked"]["rev"]
        .as_str()
        .unwrap_or_else(|| panic!("no nodes.pkgs.locked.rev in flake.lock: {lock}"))
        .to_owned()
}

fn toggle(set: &mut BTreeSet<String>, name: &str, on: bool) {
    if on {
        set.insert(name.to_owned());
    } else {
        set.remove(name);
    }
}

/// Temp dir paths are ASCII; this keeps argument lists plain `&str`.
fn utf8(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
