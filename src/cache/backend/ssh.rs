//! The `ssh` child that carries SFTP: its arguments, who it really connects to (`ssh -G`),
//! the tail of its stderr, and turning ssh's words into a [`BackendError`].
//!
//! We run the system's OpenSSH rather than an SSH library so that `~/.ssh/config`, the agent,
//! known_hosts, ProxyJump, certificates, … work exactly as they do for `ssh` and for Nix's own
//! `ssh://` stores.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

use super::{BackendError, SftpTarget, SshOptions, StderrTail};

/// Lines of ssh's stderr kept for error messages.
const TAIL_LINES: usize = 12;

/// The options we pass to every ssh we run, before the host:
///
/// `-o BatchMode=yes` (a daemon can answer no prompt: no password, no "trust this host?"),
/// `-o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4` (a dead link is
/// noticed within ~1 min instead of hanging a run), `-T -x -a` (no tty, no X11, no agent
/// forwarding: the cache host needs none), then `-p PORT`, `-l USER`, `-i IDENTITY`,
/// `-o UserKnownHostsFile=FILE -o StrictHostKeyChecking=yes` when given. Everything else comes
/// from the user's ssh_config.
pub fn ssh_args(target: &SftpTarget, opts: &SshOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=30",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-T",
        "-x",
        "-a",
    ]
    .into_iter()
    .map(OsString::from)
    .collect();
    if let Some(port) = target.port {
        args.extend(["-p".into(), port.to_string().into()]);
    }
    if let Some(user) = &target.user {
        args.extend(["-l".into(), user.into()]);
    }
    if let Some(identity) = &opts.identity {
        args.extend(["-i".into(), identity.into()]);
    }
    if let Some(known_hosts) = &opts.known_hosts {
        let mut opt = OsString::from("UserKnownHostsFile=");
        opt.push(ssh_config_path(known_hosts));
        args.extend(["-o".into(), opt]);
        args.extend(["-o".into(), "StrictHostKeyChecking=yes".into()]);
    }
    args
}

/// A path as an ssh_config value: `%` is a token character (`%%`), whitespace needs quotes.
fn ssh_config_path(path: &Path) -> OsString {
    let s = path.to_string_lossy().replace('%', "%%");
    if s.contains(char::is_whitespace) {
        format!("\"{s}\"").into()
    } else {
        s.into()
    }
}

/// Whom ssh really talks to, after `~/.ssh/config` (`ssh -G`): for messages and advice.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub user: String,
    /// The real host name (`HostName`), which is what known_hosts and ssh-keyscan use.
    pub host: String,
    pub port: u16,
    pub known_hosts: PathBuf,
    pub identity: Option<PathBuf>,
}

impl Peer {
    /// `host` or `host` port N, for messages.
    pub fn host_label(&self) -> String {
        if self.port == 22 {
            format!("`{}`", self.host)
        } else {
            format!("`{}` port {}", self.host, self.port)
        }
    }

    /// `user@host` or `user@host` port N, for messages.
    pub fn label(&self) -> String {
        if self.port == 22 {
            format!("`{}@{}`", self.user, self.host)
        } else {
            format!("`{}@{}` port {}", self.user, self.host, self.port)
        }
    }
}

/// Asks `ssh -G` (no network) how the user's config resolves the target. Falls back to the
/// URL and ssh's defaults if that fails.
pub(super) async fn resolve(target: &SftpTarget, opts: &SshOptions, args: &[OsString]) -> Peer {
    let mut peer = Peer {
        user: target
            .user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".into()),
        host: target.host.clone(),
        port: target.port.unwrap_or(22),
        known_hosts: opts
            .known_hosts
            .clone()
            .unwrap_or_else(|| home().join(".ssh/known_hosts")),
        identity: opts.identity.clone(),
    };
    let output = Command::new("ssh")
        .args(args)
        .args(["-G", "--", &target.host])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let Ok(Ok(output)) = tokio::time::timeout(Duration::from_secs(10), output).await else {
        return peer;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        match key {
            "user" => peer.user = value.to_owned(),
            "hostname" => peer.host = value.to_owned(),
            "port" => peer.port = value.parse().unwrap_or(peer.port),
            "userknownhostsfile" if opts.known_hosts.is_none() => {
                if let Some(first) = value.split_whitespace().next() {
                    peer.known_hosts = match first.strip_prefix("~/") {
                        Some(rest) => home().join(rest),
                        None => first.into(),
                    };
                }
            }
            _ => {}
        }
    }
    peer
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

/// The running `ssh … -s HOST sftp` and what it said on stderr.
#[derive(Debug)]
pub(super) struct SshProcess {
    child: tokio::sync::Mutex<Child>,
    tail: Arc<Mutex<VecDeque<String>>>,
    reader: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl SshProcess {
    /// Spawns ssh with the sftp subsystem; returns its stdin and stdout for the SFTP client.
    pub fn spawn(
        args: &[OsString],
        host: &str,
    ) -> std::io::Result<(SshProcess, ChildStdin, ChildStdout)> {
        let mut cmd = Command::new("ssh");
        cmd.args(args)
            .args(["-s", "--", host, "sftp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        tracing::debug!(command = ?cmd.as_std(), "starting sftp over ssh");
        let mut child = cmd.spawn()?;
        let (stdin, stdout, stderr) = (
            child.stdin.take().expect("piped"),
            child.stdout.take().expect("piped"),
            child.stderr.take().expect("piped"),
        );
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let reader = tokio::spawn(read_stderr(stderr, Arc::clone(&tail)));
        let process = SshProcess {
            child: tokio::sync::Mutex::new(child),
            tail,
            reader: tokio::sync::Mutex::new(Some(reader)),
        };
        Ok((process, stdin, stdout))
    }

    /// ssh's last words: waits up to `wait` for it to exit (after a failure it usually is
    /// exiting), then returns its stderr tail and exit status.
    pub async fn last_words(&self, wait: Duration) -> (StderrTail, Option<ExitStatus>) {
        let status = {
            let mut child = self.child.lock().await;
            tokio::time::timeout(wait, child.wait())
                .await
                .ok()
                .and_then(Result::ok)
        };
        if status.is_some() {
            if let Some(reader) = self.reader.lock().await.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
            }
        }
        let tail = self.tail.lock().unwrap().iter().cloned().collect();
        (StderrTail(tail), status)
    }
}

async fn read_stderr(stderr: ChildStderr, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        // Skip blank lines and the `@@@@…` frame of ssh's host key warning.
        if line.is_empty() || line.chars().all(|c| c == '@') {
            continue;
        }
        tracing::debug!(line, "ssh stderr");
        // "ssh: connect to host …" is shown as "ssh: …" anyway.
        let line = line.strip_prefix("ssh: ").unwrap_or(line);
        let line: String = line.chars().take(300).collect();
        let mut tail = tail.lock().unwrap();
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Why ssh could not start SFTP, from its stderr (OpenSSH's wording, stable for decades).
pub(super) fn classify_connect_failure(
    peer: &Peer,
    stderr: StderrTail,
    status: Option<ExitStatus>,
    detail: String,
) -> BackendError {
    let (host, port) = (peer.host.clone(), peer.port);
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr
            .0
            .iter()
            .any(|l| l.contains("Host key for") && l.contains("has changed"))
    {
        return BackendError::HostKeyChanged {
            host,
            port,
            known_hosts: peer.known_hosts.clone(),
            stderr,
        };
    }
    if stderr.contains("Host key verification failed") || stderr.contains("host key is known for") {
        return BackendError::HostKeyUnknown {
            host,
            port,
            known_hosts: peer.known_hosts.clone(),
            stderr,
        };
    }
    if [
        "Permission denied (",
        "Too many authentication failures",
        "No more authentication methods",
    ]
    .iter()
    .any(|s| stderr.contains(s))
    {
        return BackendError::AuthFailed {
            user: peer.user.clone(),
            host,
            identity: peer.identity.clone(),
            stderr,
        };
    }
    for (needle, reason) in [
        (
            "Could not resolve hostname",
            "the host name does not resolve",
        ),
        ("Connection refused", "connection refused"),
        ("timed out", "connection timed out"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network is unreachable"),
        (
            "kex_exchange_identification",
            "the server closed the connection before the SSH handshake",
        ),
        ("Connection reset by", "connection reset"),
        ("Connection closed by", "the server closed the connection"),
    ] {
        if stderr.contains(needle) {
            return BackendError::Unreachable {
                host,
                port,
                reason: reason.into(),
                stderr,
            };
        }
    }
    let reason = if stderr.contains("subsystem request failed") {
        "the server offers no `sftp` subsystem (add `Subsystem sftp internal-sftp` to its sshd_config)"
            .to_owned()
    } else {
        match status {
            Some(status) => format!("ssh exited ({status}) before SFTP started: {detail}"),
            None => format!("SFTP did not start: {detail}"),
        }
    };
    BackendError::SshFailed {
        host,
        reason,
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            user: "farm".into(),
            host: "cache.example.org".into(),
            port: 2222,
            known_hosts: "/etc/farmd/known_hosts".into(),
            identity: Some("/etc/farmd/id_ed25519".into()),
        }
    }

    fn classify(lines: &[&str]) -> BackendError {
        let tail = StderrTail(lines.iter().map(|l| l.to_string()).collect());
        classify_connect_failure(&peer(), tail, None, "eof".into())
    }

    #[test]
    fn args_pin_batch_mode_and_the_given_key_files() {
        let target = SftpTarget {
            user: Some("farm".into()),
            host: "cache".into(),
            port: Some(2222),
            root: "/srv/cache".into(),
        };
        let opts = SshOptions {
            identity: Some("/k/id".into()),
            known_hosts: Some("/k/known hosts%".into()),
            ..SshOptions::default()
        };
        let args: Vec<String> = ssh_args(&target, &opts)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args.join(" "),
            "-o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=15 \
             -o ServerAliveCountMax=4 -T -x -a -p 2222 -l farm -i /k/id \
             -o UserKnownHostsFile=\"/k/known hosts%%\" -o StrictHostKeyChecking=yes"
        );
    }

    #[test]
    fn unknown_host_key_says_which_file_and_how_to_add_it() {
        let err = classify(&[
            "No ED25519 host key is known for [cache.example.org]:2222 and you have requested strict checking.",
            "Host key verification failed.",
        ]);
        assert!(matches!(err, BackendError::HostKeyUnknown { .. }));
        let msg = err.to_string();
        assert!(msg.contains("`/etc/farmd/known_hosts`"), "{msg}");
        assert!(
            msg.contains("ssh-keyscan -p 2222 cache.example.org >> /etc/farmd/known_hosts"),
            "{msg}"
        );
        assert!(msg.contains("ssh: Host key verification failed."), "{msg}");
    }

    #[test]
    fn changed_host_key_is_not_mistaken_for_an_unknown_one() {
        let err = classify(&[
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
            "Host key verification failed.",
        ]);
        let msg = err.to_string();
        assert!(matches!(err, BackendError::HostKeyChanged { .. }), "{msg}");
        assert!(
            msg.contains("ssh-keygen -R '[cache.example.org]:2222' -f /etc/farmd/known_hosts"),
            "{msg}"
        );
    }

    #[test]
    fn auth_and_network_failures_are_told_apart() {
        let err = classify(&["farm@cache.example.org: Permission denied (publickey)."]);
        let msg = err.to_string();
        assert!(matches!(err, BackendError::AuthFailed { .. }), "{msg}");
        assert!(
            msg.contains("as `farm`") && msg.contains("/etc/farmd/id_ed25519"),
            "{msg}"
        );

        let err =
            classify(&["ssh: connect to host cache.example.org port 2222: Connection refused"]);
        assert!(
            matches!(&err, BackendError::Unreachable { reason, .. } if reason == "connection refused"),
            "{err}"
        );
        let err = classify(&["ssh: Could not resolve hostname nope: Name or service not known"]);
        assert!(err.to_string().contains("does not resolve"), "{err}");
        let err = classify(&["subsystem request failed on channel 0"]);
        assert!(err.to_string().contains("no `sftp` subsystem"), "{err}");
    }
}
