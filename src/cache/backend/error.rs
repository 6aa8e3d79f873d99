//! What can go wrong between the publisher and the cache directory, as variants callers can
//! match (retry on [`BackendError::ConnectionLost`], stop the run on a host key problem) and
//! messages that say what to do. SSH failures carry the tail of ssh's own stderr.

use std::fmt;
use std::path::PathBuf;

/// The last lines ssh wrote to stderr (debug noise excluded), shown under the message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StderrTail(pub Vec<String>);

impl fmt::Display for StderrTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.0 {
            write!(f, "\n    ssh: {line}")?;
        }
        Ok(())
    }
}

impl StderrTail {
    pub fn contains(&self, needle: &str) -> bool {
        self.0.iter().any(|l| l.contains(needle))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// ssh has no key for this host in known_hosts (or none it may use in batch mode).
    #[error(
        "ssh does not know the host key of `{host}` port {port} (known_hosts: `{}`) and refused \
         to connect; check the server's fingerprint out of band (on the server: `ssh-keygen -lf \
         /etc/ssh/ssh_host_ed25519_key.pub`, here: `ssh-keyscan -p {port} {host} | ssh-keygen -lf -`), \
         then run `ssh-keyscan -p {port} {host} >> {}`{stderr}",
        known_hosts.display(), known_hosts.display()
    )]
    HostKeyUnknown {
        host: String,
        port: u16,
        known_hosts: PathBuf,
        stderr: StderrTail,
    },

    /// The host presented a key different from the one recorded.
    #[error(
        "the host key of `{host}` port {port} does NOT match the one recorded in `{}`: the server \
         was reinstalled, or someone is intercepting the connection; check the server's \
         fingerprint out of band, and only if the change is expected run \
         `ssh-keygen -R '{}' -f {}` and then `ssh-keyscan -p {port} {host} >> {}`{stderr}",
        known_hosts.display(), known_hosts_name(host, *port), known_hosts.display(), known_hosts.display()
    )]
    HostKeyChanged {
        host: String,
        port: u16,
        known_hosts: PathBuf,
        stderr: StderrTail,
    },

    /// The server accepted none of the keys offered.
    #[error(
        "ssh could not log in to `{host}` as `{user}`: the server accepted none of the offered \
         keys ({}); add the public key to `~{user}/.ssh/authorized_keys` on the cache host, or \
         set `ssh_identity` in the [cache] section{stderr}",
        match identity { Some(p) => format!("identity file `{}`", p.display()),
                         None => "ssh's default keys and the agent".to_owned() }
    )]
    AuthFailed {
        user: String,
        host: String,
        identity: Option<PathBuf>,
        stderr: StderrTail,
    },

    /// No TCP connection (refused, timed out, unknown name, no route).
    #[error(
        "cannot reach the cache host `{host}` port {port}: {reason}; is sshd running there and \
         are the host name and port in the cache url right?{stderr}"
    )]
    Unreachable {
        host: String,
        port: u16,
        reason: String,
        stderr: StderrTail,
    },

    /// ssh or the sftp subsystem failed to start for another reason.
    #[error("ssh to `{host}` failed: {reason}{stderr}")]
    SshFailed {
        host: String,
        reason: String,
        stderr: StderrTail,
    },

    /// The SSH connection died while the cache was in use. Nothing partial was published.
    #[error(
        "lost the connection to `{host}` while trying to {op} `{path}` ({reason}); nothing \
         partial was published, the next run uploads what is missing{stderr}"
    )]
    ConnectionLost {
        host: String,
        op: &'static str,
        path: String,
        reason: String,
        stderr: StderrTail,
    },

    /// The (remote) user may not do this to this path.
    #[error(
        "permission denied: cannot {op} `{path}` as user `{user}` on {host}; give that user \
         write access to the cache directory (e.g. `chown -R {user} {}` on the cache host)",
        std::path::Path::new(path).parent().map_or(path.clone(), |p| p.display().to_string())
    )]
    PermissionDenied {
        op: &'static str,
        path: String,
        user: String,
        host: String,
    },

    /// The file system holding the cache is full. For SFTP this is inferred: OpenSSH's
    /// sftp-server reports ENOSPC as a generic failure, so a failed write is checked against
    /// `statvfs` of the directory.
    #[error(
        "{}disk full? could not {op} `{path}` on {host}{}; free space there or let \
         `farmctl cache gc` delete old paths; nothing partial was published",
        if host == LOCAL { "" } else { "remote " },
        match free_bytes { Some(n) => format!(" (only {n} bytes free)"), None => String::new() }
    )]
    DiskFull {
        op: &'static str,
        path: String,
        host: String,
        free_bytes: Option<u64>,
    },

    /// The path (or its directory) does not exist.
    #[error("cannot {op} `{path}` on {host}: no such file or directory")]
    NotFound {
        op: &'static str,
        path: String,
        host: String,
    },

    /// The SFTP server lacks something atomic publishing needs.
    #[error("the sftp server on `{host}` does not support {what}, which the cache needs; use OpenSSH's sftp-server (or internal-sftp)")]
    Unsupported { host: String, what: &'static str },

    /// Any other failure the server reported, with its message.
    #[error("cannot {op} `{path}` on {host}: {message}")]
    Remote {
        op: &'static str,
        path: String,
        host: String,
        message: String,
    },

    /// Any other local I/O failure (`file://` caches).
    #[error("cannot {op} `{}`", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A cache-relative path that escapes the cache or is empty (a bug in the caller).
    #[error("invalid cache path `{path}`: {reason}")]
    InvalidPath { path: String, reason: &'static str },
}

/// The `host` of errors from a `file://` cache.
pub(crate) const LOCAL: &str = "this machine";

/// How known_hosts names a host: `host` on port 22, `[host]:port` elsewhere.
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

impl BackendError {
    /// Worth retrying with a fresh connection (the data and the configuration are fine).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BackendError::ConnectionLost { .. } | BackendError::Unreachable { .. }
        )
    }
}
