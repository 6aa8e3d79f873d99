//! Credentials for libgit2's `credentials` callback, from the `[repo]` auth settings: an SSH key
//! file (with an optional passphrase file), ssh-agent, or an HTTPS token file. Secrets only ever
//! come from files; their contents never reach an error or a log line.
//!
//! libgit2 calls the callback again after every rejected attempt, forever; [`Credentials`] counts
//! and gives up after the first real attempt with an [`GitError::Auth`] that says what to check.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use git2::{Cred, CredentialType};

use super::GitError;
use crate::config::RepoAuth;

/// The username for SSH when the URL names none (what GitHub, GitLab, Gitea expect).
const DEFAULT_SSH_USER: &str = "git";

pub(crate) struct Credentials<'a> {
    auth: &'a RepoAuth,
    /// The redacted URL, for messages.
    url: String,
    attempts: u32,
}

impl<'a> Credentials<'a> {
    pub fn new(auth: &'a RepoAuth, url: String) -> Self {
        Credentials {
            auth,
            url,
            attempts: 0,
        }
    }

    /// Answers one credentials request. An `Err` is the reason to stop (libgit2 only keeps a
    /// generic message, so the caller stashes it).
    pub fn get(
        &mut self,
        user_from_url: Option<&str>,
        allowed: CredentialType,
    ) -> Result<Cred, GitError> {
        let user = user_from_url.unwrap_or(DEFAULT_SSH_USER);
        // libgit2 first asks which user to log in as when the URL has none; that is not a try.
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user).map_err(|e| self.git(e));
        }
        self.attempts += 1;
        if self.attempts > 1 {
            return Err(self.rejected());
        }
        match self.auth {
            RepoAuth::SshKey {
                key,
                passphrase_file,
            } => {
                self.require(allowed, CredentialType::SSH_KEY, "ssh_key")?;
                let passphrase = match passphrase_file {
                    Some(file) => Some(read_secret(file, "passphrase file")?),
                    None => None,
                };
                let passphrase = passphrase
                    .as_deref()
                    .map(|p| p.trim_end_matches(['\r', '\n']));
                Cred::ssh_key(user, None, key, passphrase).map_err(|e| self.git(e))
            }
            RepoAuth::SshAgent => {
                self.require(allowed, CredentialType::SSH_KEY, "ssh_agent")?;
                Cred::ssh_key_from_agent(user).map_err(|e| self.git(e))
            }
            RepoAuth::Token { file, user } => {
                self.require(allowed, CredentialType::USER_PASS_PLAINTEXT, "token_file")?;
                let token = read_secret(file, "token file")?;
                Cred::userpass_plaintext(user, token.trim()).map_err(|e| self.git(e))
            }
            RepoAuth::Default => {
                if allowed.contains(CredentialType::SSH_KEY)
                    && std::env::var_os("SSH_AUTH_SOCK").is_some()
                {
                    Cred::ssh_key_from_agent(user).map_err(|e| self.git(e))
                } else {
                    Err(GitError::Auth {
                        url: self.url.clone(),
                        method: "no credentials".into(),
                        hint: "the remote asks for credentials but none are configured (and \
                               SSH_AUTH_SOCK is not set); set `ssh_key`, `ssh_agent` or \
                               `token_file` under [repo]"
                            .into(),
                    })
                }
            }
        }
    }

    fn require(
        &self,
        allowed: CredentialType,
        needed: CredentialType,
        setting: &str,
    ) -> Result<(), GitError> {
        if allowed.contains(needed) {
            return Ok(());
        }
        let asks = if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            "a username and token (use `token_file` for https remotes)"
        } else if allowed.contains(CredentialType::SSH_KEY) {
            "an SSH key (use `ssh_key` or `ssh_agent` for ssh remotes)"
        } else {
            "a kind of credentials farmd does not support"
        };
        Err(GitError::Auth {
            url: self.url.clone(),
            method: format!("`{setting}`"),
            hint: format!("the remote asks for {asks}"),
        })
    }

    /// The error once the remote has refused what we offered.
    fn rejected(&self) -> GitError {
        let (method, hint) = match self.auth {
            RepoAuth::SshKey { key, .. } => (
                format!("key `{}`", key.display()),
                "check the key is in the remote's authorized keys (a deploy key with write access \
                 if farmd pushes) and that the user in the URL is right"
                    .to_string(),
            ),
            RepoAuth::SshAgent | RepoAuth::Default => (
                "ssh-agent".to_string(),
                "check that the agent at SSH_AUTH_SOCK holds a key the remote authorizes \
                 (`ssh-add -l`)"
                    .to_string(),
            ),
            RepoAuth::Token { file, user } => (
                format!("token file `{}` (user `{user}`)", file.display()),
                "check the token is valid, not expired, and allowed to read (and push to) the \
                 repository"
                    .to_string(),
            ),
        };
        GitError::Auth {
            url: self.url.clone(),
            method,
            hint,
        }
    }

    fn git(&self, source: git2::Error) -> GitError {
        GitError::Git {
            context: format!("cannot prepare credentials for `{}`", self.url),
            cause: source,
        }
    }
}

fn read_secret(path: &Path, what: &'static str) -> Result<String, GitError> {
    std::fs::read_to_string(path).map_err(|source| GitError::SecretFile {
        what,
        path: path.to_path_buf(),
        cause: source,
    })
}

/// Warns (once per call) about secret files that others can read, as ssh and harmonia do. Not
/// fatal: the daemon may run with a group that legitimately shares them.
pub(crate) fn warn_readable_secrets(auth: &RepoAuth) {
    let files: Vec<(&Path, &str)> = match auth {
        RepoAuth::SshKey {
            key,
            passphrase_file,
        } => std::iter::once((key.as_path(), "ssh key"))
            .chain(passphrase_file.as_deref().map(|p| (p, "passphrase file")))
            .collect(),
        RepoAuth::Token { file, .. } => vec![(file.as_path(), "token file")],
        RepoAuth::SshAgent | RepoAuth::Default => vec![],
    };
    for (path, what) in files {
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "{what} `{}` is readable by others (mode {mode:04o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_trimmed_and_second_attempt_gives_up() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret-token\n").unwrap();
        let auth = RepoAuth::Token {
            file: file.clone(),
            user: "farm".into(),
        };
        let mut creds = Credentials::new(&auth, "https://example.org/x.git".into());
        let allowed = CredentialType::USER_PASS_PLAINTEXT;
        assert!(creds.get(None, allowed).is_ok());
        let err = creds.get(None, allowed).err().expect("an error");
        let msg = err.to_string();
        assert!(matches!(err, GitError::Auth { .. }));
        assert!(
            msg.starts_with("authentication to `https://example.org/x.git` failed with token file")
        );
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn missing_token_file_names_the_file_not_its_content() {
        let auth = RepoAuth::Token {
            file: "/nonexistent/token".into(),
            user: "farm".into(),
        };
        let mut creds = Credentials::new(&auth, "https://example.org/x.git".into());
        let msg = creds
            .get(None, CredentialType::USER_PASS_PLAINTEXT)
            .err()
            .expect("an error")
            .to_string();
        assert!(
            msg.starts_with("cannot read token file `/nonexistent/token`"),
            "{msg}"
        );
    }

    #[test]
    fn ssh_key_for_an_https_remote_says_to_use_a_token() {
        let auth = RepoAuth::SshKey {
            key: "/k".into(),
            passphrase_file: None,
        };
        let mut creds = Credentials::new(&auth, "https://example.org/x.git".into());
        let msg = creds
            .get(None, CredentialType::USER_PASS_PLAINTEXT)
            .err()
            .expect("an error")
            .to_string();
        assert!(msg.contains("use `token_file` for https remotes"), "{msg}");
    }

    #[test]
    fn username_requests_do_not_count_as_attempts() {
        let auth = RepoAuth::SshAgent;
        let mut creds = Credentials::new(&auth, "ssh://h/x".into());
        for _ in 0..3 {
            assert!(creds.get(None, CredentialType::USERNAME).is_ok());
        }
        assert_eq!(creds.attempts, 0);
    }
}
