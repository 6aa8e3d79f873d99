//! One conversation with the remote: the libgit2 callbacks (credentials, host-key check) for
//! `repo.url`, and turning what went wrong into a [`GitError`].
//!
//! libgit2 replaces a callback's error message with a generic one ("invalid or unknown remote
//! ssh hostkey"), so the callbacks stash the real [`GitError`] in the [`Session`] and
//! [`Session::error`] prefers it over libgit2's.

use std::cell::RefCell;
use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use git2::cert::Cert;
use git2::{CertificateCheckStatus, ErrorClass, ErrorCode, RemoteCallbacks};

use super::credentials::Credentials;
use super::known_hosts::{blob_key_type, KnownHosts, Verdict};
use super::{file_list, redact_url, GitError};
use crate::config::{RepoAuth, RepoSettings};

/// The global file ssh also reads.
const GLOBAL_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

/// Where an SSH remote lives, as its known_hosts entry names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SshTarget {
    pub host: String,
    pub port: u16,
}

/// The host and port of an SSH URL (`ssh://[user@]host[:port]/path`, `git+ssh://…`, or scp-like
/// `[user@]host:path`); `None` for other transports and local paths.
pub(crate) fn ssh_target(url: &str) -> Option<SshTarget> {
    let authority = if let Some((scheme, rest)) = url.split_once("://") {
        if !matches!(scheme, "ssh" | "git+ssh" | "ssh+git") {
            return None;
        }
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        authority.rsplit_once('@').map_or(authority, |(_, h)| h)
    } else {
        // scp-like: a colon before any slash; otherwise it is a local path.
        let colon = url.find(':')?;
        if url[..colon].contains('/') {
            return None;
        }
        let host = &url[..colon];
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        return (!host.is_empty()).then(|| SshTarget {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: 22,
        });
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => 22,
        Some(p) => p.parse().ok()?,
    };
    (!host.is_empty()).then(|| SshTarget {
        host: host.to_string(),
        port,
    })
}

pub(crate) struct Session<'a> {
    repo: &'a RepoSettings,
    /// The redacted URL for messages.
    pub url: String,
    failure: RefCell<Option<GitError>>,
}

impl<'a> Session<'a> {
    pub fn new(repo: &'a RepoSettings) -> Self {
        super::credentials::warn_readable_secrets(&repo.auth);
        Session {
            repo,
            url: redact_url(&repo.url),
            failure: RefCell::new(None),
        }
    }

    /// Callbacks for one libgit2 operation. Each gets its own attempt counter.
    pub fn callbacks(&self) -> RemoteCallbacks<'_> {
        let mut cb = RemoteCallbacks::new();
        let mut creds = Credentials::new(&self.repo.auth, self.url.clone());
        cb.credentials(move |_url, user_from_url, allowed| {
            creds.get(user_from_url, allowed).map_err(|e| self.stash(e))
        });
        cb.certificate_check(move |cert, hostname| {
            self.check_host_key(cert, hostname)
                .map_err(|e| self.stash(e))
        });
        cb
    }

    fn stash(&self, e: GitError) -> git2::Error {
        let message = e.to_string();
        *self.failure.borrow_mut() = Some(e);
        git2::Error::from_str(&message)
    }

    /// The error to report for a failed libgit2 call: what a callback stashed, else libgit2's own
    /// with `context`.
    pub fn error(&self, source: git2::Error, context: impl FnOnce() -> String) -> GitError {
        if let Some(stashed) = self.failure.borrow_mut().take() {
            return stashed;
        }
        if source.class() == ErrorClass::Ssh && source.message().contains("private key") {
            if let RepoAuth::SshKey {
                key,
                passphrase_file,
            } = &self.repo.auth
            {
                let passphrase = match passphrase_file {
                    Some(file) => format!("that `{}` holds its passphrase", file.display()),
                    None => "that it has no passphrase (else set `ssh_key_passphrase_file` under [repo])".into(),
                };
                return GitError::Auth {
                    url: self.url.clone(),
                    method: format!("key `{}`", key.display()),
                    hint: format!(
                        "libssh2 cannot load the key ({}); check {passphrase} and that \
                         `ssh-keygen -y -f {}` prints its public key",
                        source.message(),
                        key.display()
                    ),
                };
            }
        }
        if source.class() == ErrorClass::Ssh && source.message().contains("authentication") {
            return GitError::Auth {
                url: self.url.clone(),
                method: "ssh".into(),
                hint: format!(
                    "{} ({})",
                    "the server refused every key offered",
                    source.message()
                ),
            };
        }
        if source.class() == ErrorClass::Ssl || source.code() == ErrorCode::Certificate {
            return GitError::Tls {
                url: self.url.clone(),
                detail: source.message().to_owned(),
            };
        }
        GitError::Git {
            context: context(),
            cause: source,
        }
    }

    fn known_hosts_files(&self) -> Vec<PathBuf> {
        match &self.repo.known_hosts {
            Some(file) => vec![file.clone()],
            None => std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".ssh/known_hosts"))
                .into_iter()
                .chain(std::iter::once(PathBuf::from(GLOBAL_KNOWN_HOSTS)))
                .collect(),
        }
    }

    fn check_host_key(
        &self,
        cert: &Cert<'_>,
        hostname: &str,
    ) -> Result<CertificateCheckStatus, GitError> {
        // TLS certificates: libgit2's own verification against the system roots decides.
        let Some(hostkey) = cert.as_hostkey() else {
            return Ok(CertificateCheckStatus::CertificatePassthrough);
        };
        let other = |what: &str| GitError::Git {
            context: format!("cannot verify the SSH host key of `{}`", self.url),
            cause: git2::Error::from_str(what),
        };
        // libgit2 passes the host without the port, so the port comes from our own reading of
        // the URL; refuse rather than guess if the two disagree.
        let target = ssh_target(&self.repo.url)
            .filter(|t| t.host.eq_ignore_ascii_case(hostname))
            .ok_or_else(|| {
                other(&format!(
                    "cannot tell which port `{hostname}` was reached on"
                ))
            })?;
        let key = hostkey
            .hostkey()
            .ok_or_else(|| other("libssh2 did not hand over the raw host key"))?;
        let key_type = blob_key_type(key).unwrap_or("unknown").to_string();
        let fingerprint = match hostkey.hash_sha256() {
            Some(hash) => format!("SHA256:{}", STANDARD_NO_PAD.encode(hash)),
            None => "(no SHA256 fingerprint)".to_string(),
        };
        let files = self.known_hosts_files();
        let known = KnownHosts::load(&files).map_err(|source| GitError::Io {
            context: format!("cannot read known_hosts files {}", file_list(&files)),
            cause: source,
        })?;
        let SshTarget { host, port } = target;
        match known.check(&host, port, key) {
            Verdict::Trusted => {
                tracing::debug!(%host, port, %fingerprint, "host key verified");
                Ok(CertificateCheckStatus::CertificateOk)
            }
            Verdict::Unknown { known_types } => Err(GitError::UnknownHost {
                host,
                port,
                key_type,
                fingerprint,
                known_hosts: files,
                known_types,
            }),
            Verdict::Changed { file, line } => Err(GitError::HostKeyChanged {
                host,
                port,
                key_type,
                fingerprint,
                file,
                line,
            }),
            Verdict::Revoked { file, line } => Err(GitError::HostKeyRevoked {
                host,
                port,
                fingerprint,
                file,
                line,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> Option<SshTarget> {
        Some(SshTarget {
            host: host.into(),
            port,
        })
    }

    #[test]
    fn ssh_targets_are_read_from_every_url_form() {
        assert_eq!(
            ssh_target("ssh://git@example.org/x.git"),
            t("example.org", 22)
        );
        assert_eq!(
            ssh_target("ssh://root@127.0.0.1:2222/srv/x.git"),
            t("127.0.0.1", 2222)
        );
        assert_eq!(ssh_target("git+ssh://h:22/x"), t("h", 22));
        assert_eq!(ssh_target("ssh://[::1]:2222/x"), t("::1", 2222));
        assert_eq!(
            ssh_target("git@github.com:me/fleet.git"),
            t("github.com", 22)
        );
        assert_eq!(ssh_target("github.com:me/fleet.git"), t("github.com", 22));
        assert_eq!(ssh_target("https://github.com/me/fleet.git"), None);
        assert_eq!(ssh_target("file:///srv/x.git"), None);
        assert_eq!(ssh_target("/srv/x.git"), None);
        assert_eq!(ssh_target("./a:b"), None);
    }
}
