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
