//! A real systemd to test the unit files under: a Debian bookworm container booted with
//! `systemd-nspawn -b`, farmd installed in it the way README.md tells a Debian user to.
//!
//! - The rootfs comes from `rootfs.sh` (debootstrap once per package list, cached under
//!   /var/cache/nixfarm-nspawn); every container boots it with `--volatile=overlay`, so each
//!   test starts from the same clean system and the cache is never written to.
//! - `--private-network`: the container's sshd and nginx listen on its own loopback, never
//!   clashing with the host or with other tests' containers.
//! - The built binaries (target/debug), `systemd/` and `tests/nspawn/` are bound read-only into
//!   /opt/nixfarm; `install.sh` copies them into place inside.
//! - Commands run inside with `nsenter -t LEADER -a` once systemd's private bus socket exists.
//! - Dropping a [`Container`] kills its PID 1 (the leader this test started) and reaps nspawn.
//!
//! Needs root, systemd-nspawn (systemd-container) and debootstrap: tests/setup-debian.sh.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// What `PATH` is inside the container (Debian's default for root).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A booted container; see the module docs.
pub struct Container {
    name: String,
    nspawn: Child,
    leader: u32,
    dir: TempDir,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The cached rootfs (built on first use; see rootfs.sh).
fn rootfs() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("tests/nspawn/rootfs.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run tests/nspawn/rootfs.sh");
    assert!(
        out.status.success(),
        "tests/nspawn/rootfs.sh failed ({}); is debootstrap installed (tests/setup-debian.sh)?",
        out.status
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

impl Container {
    /// Boots a fresh container and runs install.sh in it (farmd installed and enabled, not
    /// started). Panics with the boot log when it does not come up within 60 s.
    pub fn boot(test: &str) -> Container {
        assert!(
            rustix::process::geteuid().is_root(),
            "the systemd tests boot containers with systemd-nspawn and need root"
        );
        let rootfs = rootfs();
        let bin = repo().join("target/debug");
        for b in ["farmd", "farmctl"] {
            // Cargo builds the binaries for integration tests, so these are the current ones.
            assert!(bin.join(b).exists(), "{} is missing; run `cargo build`", b);
        }
        let dir = tempfile::Builder::new()
            .prefix("nixfarm-nspawn-")
            .tempdir()
            .unwrap();
        let name = format!(
            "nixfarm-{}-{}",
            std::process::id(),
            test.chars().take(24).collect::<String>().replace('_', "-")
        );
        let log = File::create(dir.path().join("boot.log")).unwrap();
        let mut cmd = Command::new("systemd-nspawn");
        cmd.env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .args(["-b", "--register=no", "--keep-unit", "--volatile=overlay"])
            .args(["--private-network", "--console=passive", "--quiet"])
            .arg(format!("--machine={name}"))
            .arg("-D")
            .arg(&rootfs)
            .arg(format!(
                "--bind-ro={}:/opt/nixfarm/bin/farmd",
                bin.join("farmd").display()
            ))
            .arg(format!(
                "--bind-ro={}:/opt/nixfarm/bin/farmctl",
                bin.join("farmctl").display()
            ))
            .arg(format!(
                "--bind-ro={}:/opt/nixfarm/systemd",
                repo().join("systemd").display()
            ))
            .arg(format!(
                "--bind-ro={}:/opt/nixfarm/tests",
                repo().join("tests/nspawn").display()
            ))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let nspawn = cmd
            .spawn()
            .expect("cannot start systemd-nspawn (apt install systemd-container)");
        let mut container = Container {
            name,
            leader: 0,
            nspawn,
            dir,
        };
        container.leader = container.wait_for_leader();
        let private = format!("/proc/{}/root/run/systemd/private", container.leader);
        container.wait_until("systemd's private socket", Duration::from_secs(60), || {
            Path::new(&private).exists()
        });
        // `degraded` is fine: a unit unrelated to farmd may fail in a container.
        let state = container.sh_unchecked("systemctl is-system-running --wait");
        let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
        assert!(
            state == "running" || state == "degraded",
            "the container did not finish booting ({state}); failed units:\n{}",
            container.stdout("systemctl --failed --no-legend || true")
        );
        container.sh("/opt/nixfarm/tests/install.sh");
        container
    }

    /// The container's PID 1 as the host sees it: the child of nspawn's process tree that
    /// runs systemd in a new PID namespace.
    fn wait_for_leader(&mut self) -> u32 {
        let nspawn = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = descendants(nspawn).into_iter().find(|&p| is_pid_ns_init(p)) {
                return pid;
            }
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", self.boot_log());
            }
            assert!(
                Instant::now() < deadline,
                "no container leader after 30 s:\n{}",
                self.boot_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn boot_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("boot.log")).unwrap_or_default()
    }

    /// A command line inside the container (`sh -c script` as root).
    pub fn command(&self, script: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "--", "/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0")
            .env("HOME", "/root")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `script` inside; panics with its output unless it exits 0.
    #[track_caller]
    pub fn sh(&self, script: &str) -> Output {
        let out = self.sh_unchecked(script);
        if !out.status.success() {
            panic!(
                "inside the container, `{script}` failed ({})\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- journal ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.journal_tail()
            );
        }
        out
    }

    #[track_caller]
    pub fn sh_unchecked(&self, script: &str) -> Output {
        self.command(script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run nsenter: {e}"))
    }

    /// `script`'s stdout, trimmed; panics unless it exits 0.
    #[track_caller]
    pub fn stdout(&self, script: &str) -> String {
        String::from_utf8_lossy(&self.sh(script).stdout)
            .trim()
            .to_owned()
    }

    /// `systemctl show -P PROPERTY UNIT`.
    #[track_caller]
    pub fn property(&self, unit: &str, property: &str) -> String {
        self.stdout(&format!("systemctl show -P {property} {unit}"))
    }

    /// Writes `text` to `path` inside the container (through its root, so into the overlay).
    pub fn write(&self, path: &str, text: &str) {
        let host = self.host_path(path);
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(&host, text).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }

    /// The host's view of a path inside the container.
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.leader))
    }

    /// The last journal lines, for failure messages.
    pub fn journal_tail(&self) -> String {
        self.sh_unchecked("journalctl --no-pager -n 60 -o short-monotonic")
            .stdout
            .iter()
            .map(|&b| b as char)
            .collect()
    }

    /// Polls `check` every 100 ms; panics (with the journal) after `timeout`.
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !check() {
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} in {}\n--- journal ---\n{}\n--- boot log ---\n{}",
                    self.name,
                    self.journal_tail(),
                    self.boot_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing a PID namespace's init kills everything in it; nspawn then exits, and the
        // volatile overlay goes with it.
        if self.leader != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &self.leader.to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.nspawn.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.nspawn.kill();
                    let _ = self.nspawn.wait();
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Every process below `pid` (children first), from /proc/PID/task/*/children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                out.push(c);
                queue.push(c);
            }
        }
    }
    out
}

/// True when `pid` is PID 1 of a PID namespace below ours (`NSpid:\t<host pid>\t1`).
fn is_pid_ns_init(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .is_some_and(|ids| {
            ids.split_whitespace().last() == Some("1") && ids.split_whitespace().count() > 1
        })
}
