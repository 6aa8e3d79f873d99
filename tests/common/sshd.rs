//! A throwaway OpenSSH server on 127.0.0.1 for one test: git over ssh, SFTP, Nix remote builds.
//!
//! `/usr/sbin/sshd -D -e` runs with its own config, host key and authorized_keys in a temp dir,
//! on a free port. The one authorized (client) key is forced through a wrapper script that
//! logs the requested command to `sessions.log`, sets NIX_CONFIG and a PATH that finds git
//! (/usr/local/bin), and runs the command. `nix-store --serve` (Nix's `ssh://` store, used for
//! remote builds) is pointed at a separate chroot store under the temp dir: a remote build
//! into the same /nix/store deadlocks, because the client holds the output path locks while
//! the "remote" tries to take them. The chroot store builds in a sandbox (Nix forces one for a
//! diverted store) whose `sandbox-paths` expose /bin, /usr and /lib so `/bin/sh` builders work.
//!
//! Not owned here: the client side's environment (see [`super::NixEnv`]).

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tempfile::TempDir;

use super::env::NIX_CONFIG;
use super::process::run;

/// A running sshd on 127.0.0.1; killed (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Sshd {
    dir: TempDir,
    port: u16,
    child: Child,
    host_public_key: String,
}

impl Sshd {
    /// Starts sshd on a free port and waits until it listens; panics with its log on failure.
    pub fn start() -> Sshd {
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (privilege separation dir)");
        let dir = tempfile::Builder::new()
            .prefix("nixfarm-sshd-")
            .tempdir()
            .expect("create sshd temp dir");
        let d = dir.path();
        for (file, comment) in [
            ("host_key", "nixfarm-test-host"),
            ("client_key", "nixfarm-test-client"),
            ("wrong_host_key", "nixfarm-test-wrong-host"),
        ] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(d.join(file)));
        }
        let host_public_key = public_key_of(&d.join("host_key.pub"));
        write_wrapper(d);
        let client_pub = public_key_of(&d.join("client_key.pub"));
        std::fs::write(
            d.join("authorized_keys"),
            format!(
                "command=\"{}\",no-port-forwarding,no-agent-forwarding,no-X11-forwarding,no-pty {client_pub}\n",
                d.join("wrapper.sh").display()
            ),
        )
        .expect("write authorized_keys");

        let mut last_log = String::new();
        for _attempt in 0..10 {
            let port = free_port();
            match spawn_on(d, port) {
                Ok(child) => {
                    let sshd = Sshd {
                        dir,
                        port,
                        child,
                        host_public_key,
                    };
                    sshd.write_client_files();
                    return sshd;
                }
                Err(log) if log.contains("Address already in use") => last_log = log,
                Err(log) => panic!("sshd did not start:\n{log}"),
            }
        }
        panic!("sshd found no free port in 10 attempts:\n{last_log}");
    }

    /// The port sshd listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private key of the one authorized client key (root may log in with it).
    pub fn ssh_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// A known_hosts file with the `[127.0.0.1]:PORT ssh-ed25519 …` line of this server.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// A known_hosts file naming the same `[127.0.0.1]:PORT` with a different key
    /// (the "host key changed" / man-in-the-middle case).
    pub fn wrong_known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("wrong_known_hosts")
    }

    /// This server's host public key as `ssh-ed25519 AAAA…` (no comment).
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    /// An ssh_config with `Host nixfarm-sshd` (HostName, Port, User root, IdentityFile, the
    /// right known_hosts, StrictHostKeyChecking yes, BatchMode yes), for `ssh -F`.
    pub fn ssh_config_path(&self) -> PathBuf {
        self.dir.path().join("ssh_config")
    }

    /// `ssh://root@127.0.0.1:PORT/abs/path`: a git (or other) URL to `path` on this server.
    pub fn ssh_url(&self, path: &Path) -> String {
        assert!(
            path.is_absolute(),
            "ssh_url needs an absolute path: {path:?}"
        );
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }

    /// Options for `ssh` that use the client key, `known_hosts` and never prompt; the port
    /// is not included (`-p` / the URL gives it).
    pub fn ssh_options(&self, known_hosts: &Path) -> Vec<String> {
        vec![
            "-F".into(),
            "/dev/null".into(),
            "-i".into(),
            self.ssh_key_path().display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", known_hosts.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
        ]
    }

    /// A `GIT_SSH_COMMAND` value: `ssh` with [`Sshd::ssh_options`] for `known_hosts`.
    pub fn git_ssh_command(&self, known_hosts: &Path) -> String {
        std::iter::once("ssh".to_owned())
            .chain(self.ssh_options(known_hosts))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A Nix `builders` line that makes Nix 2.8 build x86_64-linux derivations through this
    /// server (`ssh://` store, i.e. `nix-store --serve --write`, 2 jobs, speed factor 1, host
    /// key pinned). Needs [`Sshd::builder_env`] for the port.
    pub fn nix_builders_spec(&self) -> String {
        let host_key = base64::engine::general_purpose::STANDARD.encode(&self.host_public_key);
        format!(
            "ssh://root@127.0.0.1 x86_64-linux {} 2 1 - - {host_key}",
            self.ssh_key_path().display()
        )
    }

    /// Environment for the Nix client using [`Sshd::nix_builders_spec`]: Nix 2.8 takes no
    /// port in `ssh://` store URIs, so it comes from `NIX_SSHOPTS`.
    pub fn builder_env(&self) -> Vec<(String, String)> {
        vec![("NIX_SSHOPTS".into(), format!("-p {}", self.port))]
    }

    /// The chroot store (`--store DIR`) that remote builds through this server build in.
    pub fn remote_store_dir(&self) -> PathBuf {
        self.dir.path().join("remote-store")
    }

    /// The commands clients ran through this server, in order (one per session).
    pub fn sessions(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("sessions.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// sshd's own log (`-e`, LogLevel VERBOSE): connections, accepted keys, sessions.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Kills the per-connection sshd processes (children of ours, by pid), cutting every
    /// session mid-flight, as a network failure or a rebooting cache host would.
    pub fn cut_sessions(&self) {
        let parent = self.child.id().to_string();
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid …; comm may contain spaces: split after the last ')'.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            if after.split_whitespace().nth(1) == Some(parent.as_str()) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }

    fn write_client_files(&self) {
        let d = self.dir.path();
        let wrong = public_key_of(&d.join("wrong_host_key.pub"));
        let host = format!("[127.0.0.1]:{}", self.port);
        std::fs::write(
            d.join("known_hosts"),
            format!("{host} {}\n", self.host_public_key),
        )
        .expect("write known_hosts");
        std::fs::write(d.join("wrong_known_hosts"), format!("{host} {wrong}\n"))
            .expect("write wrong_known_hosts");
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host nixfarm-sshd\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  \
                 IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n",
                self.port,
                self.ssh_key_path().display(),
                self.known_hosts_path().display()
            ),
        )
        .expect("write ssh_config");
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh-ed25519 AAAA…` from a `.pub` file (comment dropped).
fn public_key_of(pub_file: &Path) -> String {
    let text = std::fs::read_to_string(pub_file).expect("read public key");
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A port that was free a moment ago (bind port 0, read it, close).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Writes the forced-command wrapper and the remote side's Nix config.
fn write_wrapper(d: &Path) {
    let conf_dir = d.join("remote-nix-conf");
    std::fs::create_dir_all(&conf_dir).expect("create remote nix conf dir");
    std::fs::write(conf_dir.join("nix.conf"), "").expect("write remote nix.conf");
    let remote_config = format!("{NIX_CONFIG}\nsandbox-paths = /bin /usr /lib /lib64");
    let script = format!(
        r#"#!/bin/sh
# Forced command of the nixfarm test bed's client key: log, set the environment, run.
export NIX_CONFIG='{remote_config}'
export NIX_CONF_DIR='{conf_dir}'
export HOME='{home}'
export XDG_CACHE_HOME='{home}/.cache'
export PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin
store='{store}'
printf '%s\n' "$SSH_ORIGINAL_COMMAND" >> '{sessions}'
case "$SSH_ORIGINAL_COMMAND" in
  "nix-store --serve"*) exec nix-store --store "$store" ${{SSH_ORIGINAL_COMMAND#nix-store }} ;;
  "nix-daemon --stdio") exec nix-daemon --store "$store" --stdio ;;
  "") exec /bin/sh -l ;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"#,
        conf_dir = conf_dir.display(),
        home = d.join("remote-home").display(),
        store = d.join("remote-store").display(),
        sessions = d.join("sessions.log").display(),
    );
    let wrapper = d.join("wrapper.sh");
    std::fs::write(&wrapper, script).expect("write wrapper");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod wrapper");
}

/// Starts sshd on `port` and waits for "Server listening"; on failure returns its log.
fn spawn_on(d: &Path, port: u16) -> Result<Child, String> {
    let config = d.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nAddressFamily inet\nHostKey {host_key}\n\
             PidFile {pid}\nAuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             StrictModes no\nUsePAM no\nUseDNS no\nPrintMotd no\nLogLevel VERBOSE\n\
             MaxStartups 100\nMaxSessions 100\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            host_key = d.join("host_key").display(),
            pid = d.join("sshd.pid").display(),
            authorized = d.join("authorized_keys").display(),
        ),
    )
    .expect("write sshd_config");
    let log_path = d.join("sshd.log");
    let log = std::fs::File::create(&log_path).expect("create sshd.log");
    let mut child = Command::new("/usr/sbin/sshd")
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start /usr/sbin/sshd");
    let ready = format!("Server listening on 127.0.0.1 port {port}.");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&log_path) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains(&ready) {
            return Ok(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("sshd exited ({status}):\n{text}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("sshd not listening after 10 s:\n{text}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
