//! Test helpers: real bare repositories in temp dirs, driven by the real `git` CLI.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{RepoAuth, RepoSettings};

/// Runs `git` in `dir` with a fixed identity; panics on failure; returns trimmed stdout.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.org"])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub(crate) fn settings(url: &str) -> RepoSettings {
    RepoSettings {
        url: url.to_string(),
        branch: "main".into(),
        push_branch: "main".into(),
        auth: RepoAuth::Default,
        known_hosts: None,
        prepare: None,
    }
}

/// A bare repository (the "remote") plus a work clone that other people commit from.
pub(crate) struct Remote {
    pub tmp: tempfile::TempDir,
    pub bare: PathBuf,
    work: PathBuf,
}

impl Remote {
    pub fn new() -> Remote {
        let tmp = tempfile::tempdir().unwrap();
        let bare = tmp.path().join("remote.git");
        let work = tmp.path().join("someone-else");
        git(tmp.path(), &["init", "-q", "--bare", "remote.git"]);
        git(tmp.path(), &["init", "-q", "someone-else"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        Remote { tmp, bare, work }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// Commits `content` to `file` on `main` and pushes it; returns the new commit.
    pub fn commit(&self, file: &str, content: &str) -> String {
        let path = self.work.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        git(&self.work, &["add", file]);
        git(&self.work, &["commit", "-qm", &format!("change {file}")]);
        git(
            &self.work,
            &["push", "-q", "origin", "HEAD:refs/heads/main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }

    pub fn tip(&self, branch: &str) -> String {
        git(&self.bare, &["rev-parse", &format!("refs/heads/{branch}")])
    }
}

/// A throwaway `sshd` on 127.0.0.1 with its own host key and one authorized client key, as
/// nix-fast-build's tests do. Killed (by its own PID) on drop.
pub(crate) struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub user: String,
    /// The host's ed25519 public key, `ssh-ed25519 AAAA…`.
    pub host_key: String,
    /// The host's ecdsa public key, when started with one.
    pub ecdsa_host_key: Option<String>,
    /// A private key sshd accepts.
    pub client_key: PathBuf,
    child: std::process::Child,
}

pub(crate) const SSHD: &str = "/usr/sbin/sshd";

/// Generates an ed25519 key pair (optionally with a passphrase); returns the `.pub` line's
/// `type base64` part.
pub(crate) fn keygen(path: &Path, passphrase: &str) -> String {
    keygen_type(path, passphrase, "ed25519")
}

fn keygen_type(path: &Path, passphrase: &str, kind: &str) -> String {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-C", "farmd-test", "-N", passphrase, "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

impl Sshd {
    /// `None` when this machine has no sshd (the test then has nothing to run against).
    pub fn start() -> Option<Sshd> {
        Sshd::start_inner(false)
    }

    /// Like [`Sshd::start`], with an ecdsa host key next to the ed25519 one.
    pub fn start_with_ecdsa_host_key() -> Option<Sshd> {
        Sshd::start_inner(true)
    }

    fn start_inner(with_ecdsa: bool) -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let host_key = keygen(&d.join("host_ed25519"), "");
        let ecdsa_host_key = with_ecdsa.then(|| keygen_type(&d.join("host_ecdsa"), "", "ecdsa"));
        let client_key = d.join("client_ed25519");
        let client_pub = keygen(&client_key, "");
        std::fs::write(d.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
                 PidFile {pid}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n{extra}",
                hk = d.join("host_ed25519").display(),
                ak = d.join("authorized_keys").display(),
                pid = d.join("sshd.pid").display(),
                extra = if with_ecdsa {
                    format!("HostKey {}\n", d.join("host_ecdsa").display())
                } else {
                    String::new()
                },
            ),
        )
        .unwrap();
        // sshd running as root insists on its privilege-separation directory.
        if rustix::process::geteuid().is_root() {
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let log = std::fs::File::create(d.join("sshd.log")).unwrap();
        let child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd starts");
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        let sshd = Sshd {
            dir,
            port,
            user,
            host_key,
            ecdsa_host_key,
            client_key,
            child,
        };
        sshd.wait_ready();
        Some(sshd)
    }

    /// Waits until sshd answers with its version banner.
    fn wait_ready(&self) {
        use std::io::Read;
        for _ in 0..100 {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut banner = [0u8; 4];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default();
        panic!("sshd did not come up on port {}: {log}", self.port);
    }

    pub fn url(&self, bare: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            bare.display()
        )
    }

    /// A known_hosts file holding `line`.
    pub fn known_hosts(&self, name: &str, line: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, format!("{line}\n")).unwrap();
        path
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
