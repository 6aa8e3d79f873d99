//! The git side of a run: the persistent checkout the run builds from (phase 1, [`sync`]) and the
//! push of the lock commit (phase 6, [`push`]), with git2. It owns SSH host-key verification
//! against known_hosts files (`known_hosts.rs`) and credentials read from key, passphrase and
//! token files or ssh-agent (`credentials.rs`).
//!
//! It does not commit (the update phase runs `nix flake update --commit-lock-file` in the
//! checkout), run the `prepare` command, or decide whether to push (the push policy is the run's).
//! Everything here blocks; callers run it in `spawn_blocking`.

mod credentials;
mod known_hosts;
mod push;
mod remote;
#[cfg(test)]
mod ssh_tests;
mod sync;
#[cfg(test)]
mod testutil;

use std::path::PathBuf;

pub use push::push;
pub use sync::{head, sync, Checkout};

/// What went wrong talking to a git remote or with the checkout. Messages name the remote (with
/// any password in the URL masked) or the directory, and say what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The SSH server presented a key no known_hosts line vouches for.
    #[error(
        "host key of `{host}` port {port} is unknown: the server presented {key_type} key {fingerprint}, \
         which is not in {}{}; check that fingerprint out of band (e.g. on the server: \
         `ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub`), then run `ssh-keyscan -p {port}{} {host} >> {}`",
        file_list(.known_hosts),
        other_types(.known_types),
        key_file_stem(.key_type),
        keyscan_type(.key_type, .known_types),
        .known_hosts.first().map(|f| f.display().to_string()).unwrap_or_default()
    )]
    UnknownHost {
        host: String,
        port: u16,
        key_type: String,
        /// `SHA256:…`, as `ssh-keygen -l` prints it.
        fingerprint: String,
        /// The files that were searched; the first is where the key should be added.
        known_hosts: Vec<PathBuf>,
        /// Key types the files do list for this host (ssh would have negotiated one of them).
        known_types: Vec<String>,
    },
    /// The SSH server presented a different key than the one known for it.
    #[error(
        "host key for `{host}` port {port} has CHANGED: the server presented {key_type} key \
         {fingerprint}, but `{}` line {line} holds a different {key_type} key for it. Someone may \
         be intercepting the connection (man-in-the-middle), or the server was reinstalled; \
         refusing to connect. Only if you have confirmed the new fingerprint out of band, remove \
         the old key with `ssh-keygen -R '{}' -f {}` and add the new one",
        .file.display(),
        known_hosts::host_string(.host, *.port),
        .file.display()
    )]
    HostKeyChanged {
        host: String,
        port: u16,
        key_type: String,
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },
    /// The SSH server presented a key marked `@revoked`.
    #[error(
        "host key of `{host}` port {port} ({fingerprint}) is marked @revoked in `{}` line {line}; \
         refusing to connect",
        .file.display()
    )]
    HostKeyRevoked {
        host: String,
        port: u16,
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },
    /// The remote refused our credentials, or none were configured when it asked for some.
    #[error("authentication to `{url}` failed with {method}: {hint}")]
    Auth {
        url: String,
        /// e.g. ``key `/var/lib/farmd/deploy_key` ``, `ssh-agent`, ``token file `…` ``.
        method: String,
        hint: String,
    },
    /// TLS to an https:// remote failed, most often over a certificate nobody here trusts.
    #[error(
        "TLS to `{url}` failed: {detail}; if the server's certificate is self-signed or from a \
         private CA, add that CA to the system's trust store (NixOS: \
         `security.pki.certificateFiles`; Debian: copy it to /usr/local/share/ca-certificates/ \
         and run update-ca-certificates), or set SSL_CERT_FILE to it in farmd's environment"
    )]
    Tls { url: String, detail: String },
    /// A key, passphrase or token file could not be read. Never carries the file's content.
    #[error("cannot read {what} `{}`: {cause}", .path.display())]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The configured branch does not exist on the remote.
    #[error(
        "branch `{branch}` does not exist on `{url}`; check `branch` under [repo] in the config"
    )]
    BranchNotFound { url: String, branch: String },
    /// The local checkout is unusable ([`sync`] removes it and clones again).
    #[error("the checkout `{}` is broken: {cause}", .dir.display())]
    Corrupt { dir: PathBuf, cause: git2::Error },
    /// Any other git failure, with what we were doing.
    #[error("{context}: {cause}")]
    Git { context: String, cause: git2::Error },
    /// A filesystem failure in the checkout, with what we were doing.
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
}

pub(crate) fn file_list(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|f| format!("`{}`", f.display()))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn other_types(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (only {} keys are listed for this host)", known.join(", "))
    }
}

fn key_file_stem(key_type: &str) -> &'static str {
    match key_type {
        "ssh-rsa" => "rsa",
        t if t.starts_with("ecdsa-") => "ecdsa",
        _ => "ed25519",
    }
}

/// `ssh-keyscan` prints every key type; when the host is already listed with other types only
/// the missing one needs adding.
fn keyscan_type(key_type: &str, known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" -t {key_type}")
    }
}

/// The URL with any password masked, for messages and logs.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_masks_only_passwords() {
        assert_eq!(
            redact_url("https://me:s3cret@github.com/a/b.git"),
            "https://me:***@github.com/a/b.git"
        );
        assert_eq!(
            redact_url("ssh://git@host:2222/x.git"),
            "ssh://git@host:2222/x.git"
        );
        assert_eq!(redact_url("git@host:x.git"), "git@host:x.git");
    }

    /// The cause is part of the message, not also an error source: with anyhow's `{:#}` (how
    /// run errors are shown) a source would be printed a second time.
    #[test]
    fn a_git_failure_is_told_once_in_an_error_chain() {
        let e = anyhow::Error::from(GitError::Git {
            context: "cannot clone `x`".into(),
            cause: git2::Error::from_str("boom"),
        })
        .context("cannot check out branch `main`");
        assert_eq!(
            format!("{e:#}"),
            "cannot check out branch `main`: cannot clone `x`: boom"
        );
    }

    #[test]
    fn unknown_host_message_says_what_to_run() {
        let e = GitError::UnknownHost {
            host: "127.0.0.1".into(),
            port: 2222,
            key_type: "ssh-ed25519".into(),
            fingerprint: "SHA256:abc".into(),
            known_hosts: vec!["/k".into()],
            known_types: vec![],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("`ssh-keyscan -p 2222 127.0.0.1 >> /k`"),
            "{msg}"
        );
        assert!(msg.starts_with("host key of `127.0.0.1` port 2222 is unknown"));
    }
}
