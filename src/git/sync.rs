//! Phase 1, checkout: keep one persistent clone in the state directory in step with the remote
//! branch. Clone once; afterwards fetch, point the local branch at the fetched commit, and make
//! the work tree exactly that commit's tree (like `git reset --hard` + `git clean -ffdx`). A clone
//! that libgit2 finds broken is removed and cloned again.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use git2::build::{CheckoutBuilder, RepoBuilder};
use git2::{
    ErrorClass, ErrorCode, FetchOptions, Oid, Repository, ResetType, TreeWalkMode, TreeWalkResult,
};

use super::remote::Session;
use super::GitError;
use crate::config::RepoSettings;

/// The checkout a run builds from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    pub dir: PathBuf,
    /// The full hex id of the checked-out commit.
    pub rev: String,
}

/// Brings the clone at `dir` to the tip of `repo.branch` on `repo.url`, cloning it first if
/// needed. `dir` belongs to farmd: anything in it that is not part of that commit is deleted, and
/// if it is not a usable clone it is deleted as a whole and cloned again.
pub fn sync(repo: &RepoSettings, dir: &Path) -> Result<Checkout, GitError> {
    let session = Session::new(repo);
    if std::fs::symlink_metadata(dir).is_ok() {
        match update(repo, &session, dir) {
            Err(GitError::Corrupt { cause: source, .. }) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "the checkout is broken ({}); removing it and cloning again",
                    source.message()
                );
                remove(dir)?;
            }
            done => return done,
        }
    }
    clone(repo, &session, dir)
}

/// The commit checked out in `dir`.
pub fn head(dir: &Path) -> Result<String, GitError> {
    let corrupt = |source| GitError::Corrupt {
        dir: dir.to_path_buf(),
        cause: source,
    };
    let git = Repository::open(dir).map_err(corrupt)?;
    let commit = git
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(corrupt)?;
    Ok(commit.id().to_string())
}

fn update(repo: &RepoSettings, session: &Session<'_>, dir: &Path) -> Result<Checkout, GitError> {
    let corrupt = |source| GitError::Corrupt {
        dir: dir.to_path_buf(),
        cause: source,
    };
    let git = Repository::open(dir).map_err(corrupt)?;
    if git.is_bare() {
        return Err(corrupt(git2::Error::from_str("it is a bare repository")));
    }
    check_packs(&git.path().join("objects/pack")).map_err(corrupt)?;
    // The config may have changed since the clone.
    if git.find_remote("origin").is_ok() {
        git.remote_set_url("origin", &repo.url).map_err(corrupt)?;
    } else {
        git.remote("origin", &repo.url).map_err(corrupt)?;
    }
    let tracking = format!("refs/remotes/origin/{}", repo.branch);
    // A fetch of a branch the remote no longer has updates nothing: drop the old tracking ref so
    // that case cannot pass for "nothing new".
    if let Ok(mut old) = git.find_reference(&tracking) {
        old.delete().map_err(corrupt)?;
    }
    let mut remote = git.find_remote("origin").map_err(corrupt)?;
    let mut options = FetchOptions::new();
    options.remote_callbacks(session.callbacks());
    let refspec = format!("+refs/heads/{}:{tracking}", repo.branch);
    remote
        .fetch(&[refspec], Some(&mut options), Some("farmd: fetch"))
        .map_err(|e| {
            if is_local_damage(&e) {
                corrupt(e)
            } else {
                session.error(e, || {
                    format!(
                        "cannot fetch branch `{}` from `{}`",
                        repo.branch, session.url
                    )
                })
            }
        })?;
    let oid = git
        .refname_to_id(&tracking)
        .map_err(|_| GitError::BranchNotFound {
            url: session.url.clone(),
            branch: repo.branch.clone(),
        })?;
    check_out(&git, dir, &repo.branch, oid)?;
    tracing::info!(rev = %oid, branch = %repo.branch, "checkout updated");
    Ok(Checkout {
        dir: dir.to_path_buf(),
        rev: oid.to_string(),
    })
}

/// libgit2 silently skips a pack it cannot open and fetches its objects again, leaving a damaged
/// pack behind that the `git` CLI (which nix runs in the checkout) trips over. So look at the
/// packs' headers and sizes ourselves; this costs one small read per pack.
fn check_packs(pack_dir: &Path) -> Result<(), git2::Error> {
    let Ok(entries) = std::fs::read_dir(pack_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        // (magic, minimum size): idx v2 = header + fan-out + two SHA-1s; pack = header + SHA-1.
        let (magic, min_len): (&[u8], u64) = match path.extension().and_then(OsStr::to_str) {
            Some("idx") => (b"\xfftOc\0\0\0\x02", 8 + 256 * 4 + 40),
            Some("pack") => (b"PACK", 12 + 20),
            _ => continue,
        };
        let mut head = [0u8; 8];
        let ok = std::fs::File::open(&path).and_then(|mut f| {
            use std::io::Read;
            let len = f.metadata()?.len();
            let n = f.read(&mut head)?;
            Ok(len >= min_len && n >= magic.len() && head.starts_with(magic))
        });
        if !ok.unwrap_or(false) {
            return Err(git2::Error::from_str(&format!(
                "pack file `{}` is damaged",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Errors that mean the local repository is damaged, as opposed to the network or the remote.
fn is_local_damage(e: &git2::Error) -> bool {
    matches!(
        e.class(),
        ErrorClass::Odb
            | ErrorClass::Object
            | ErrorClass::Zlib
            | ErrorClass::Reference
            | ErrorClass::Repository
            | ErrorClass::Index
            | ErrorClass::Tree
            | ErrorClass::Config
    )
}

/// Points `branch` at `oid`, makes it HEAD, and makes the work tree exactly that commit's tree.
fn check_out(git: &Repository, dir: &Path, branch: &str, oid: Oid) -> Result<(), GitError> {
    let corrupt = |source| GitError::Corrupt {
        dir: dir.to_path_buf(),
        cause: source,
    };
    let commit = git.find_commit(oid).map_err(corrupt)?;
    let tree = commit.tree().map_err(corrupt)?;
    // Clean first, against the target tree: this also removes symlinks standing where the tree
    // needs a directory, so the checkout below can never write through one out of the tree.
    let keep = tracked_paths(&tree).map_err(corrupt)?;
    clean(dir, Path::new(""), &keep).map_err(|source| GitError::Io {
        context: format!("cannot remove untracked files in `{}`", dir.display()),
        cause: source,
    })?;
    let branch_ref = format!("refs/heads/{branch}");
    git.reference(&branch_ref, oid, true, "farmd: sync to origin")
        .map_err(corrupt)?;
    git.set_head(&branch_ref).map_err(corrupt)?;
    git.reset(
        commit.as_object(),
        ResetType::Hard,
        Some(CheckoutBuilder::new().force()),
    )
    .map_err(corrupt)?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    /// A submodule: its directory is left alone.
    Gitlink,
}

fn tracked_paths(tree: &git2::Tree<'_>) -> Result<HashMap<PathBuf, Kind>, git2::Error> {
    let mut paths = HashMap::new();
    tree.walk(TreeWalkMode::PreOrder, |parent, entry| {
        let mut path = PathBuf::from(OsStr::from_bytes(parent.as_bytes()));
        path.push(OsStr::from_bytes(entry.name_bytes()));
        let kind = match (entry.kind(), entry.filemode()) {
            (Some(git2::ObjectType::Tree), _) => Kind::Dir,
            (_, 0o160000) => Kind::Gitlink,
            _ => Kind::File,
        };
        paths.insert(path, kind);
        TreeWalkResult::Ok
    })?;
    Ok(paths)
}

/// Removes everything under `root/rel` that `keep` does not list (`git clean -ffdx`, nested
/// repositories included). Never follows symlinks: a symlink is removed as a link, and
/// `remove_dir_all` does not descend through links.
fn clean(root: &Path, rel: &Path, keep: &HashMap<PathBuf, Kind>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let name = entry.file_name();
        if rel.as_os_str().is_empty() && name == ".git" {
            continue;
        }
        let path = rel.join(&name);
        let full = root.join(&path);
        // `DirEntry::file_type` does not follow symlinks.
        let is_dir = entry.file_type()?.is_dir();
        match (keep.get(&path), is_dir) {
            (Some(Kind::Dir), true) => clean(root, &path, keep)?,
            (Some(Kind::File), false) | (Some(Kind::Gitlink), _) => {}
            (_, true) => std::fs::remove_dir_all(&full)?,
            (_, false) => std::fs::remove_file(&full)?,
        }
    }
    Ok(())
}

fn clone(repo: &RepoSettings, session: &Session<'_>, dir: &Path) -> Result<Checkout, GitError> {
    // Clone next to `dir` and rename into place, so an interrupted clone never looks like one.
    let name = dir.file_name().unwrap_or(OsStr::new("checkout"));
    let partial = dir.with_file_name(format!(".{}.partial", name.to_string_lossy()));
    if std::fs::symlink_metadata(&partial).is_ok() {
        remove(&partial)?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| GitError::Io {
            context: format!("cannot create `{}`", parent.display()),
            cause: source,
        })?;
    }
    tracing::info!(url = %session.url, branch = %repo.branch, dir = %dir.display(), "cloning");
    let mut options = FetchOptions::new();
    options.remote_callbacks(session.callbacks());
    let cloned = RepoBuilder::new()
        .branch(&repo.branch)
        .fetch_options(options)
        .clone(&repo.url, &partial);
    let git = match cloned {
        Ok(git) => git,
        Err(e) => {
            let _ = remove(&partial);
            // libgit2 reports a missing branch as a missing remote-tracking reference.
            if e.code() == ErrorCode::NotFound && e.class() == ErrorClass::Reference {
                return Err(GitError::BranchNotFound {
                    url: session.url.clone(),
                    branch: repo.branch.clone(),
                });
            }
            return Err(session.error(e, || format!("cannot clone `{}`", session.url)));
        }
    };
    drop(git);
    std::fs::rename(&partial, dir).map_err(|source| GitError::Io {
        context: format!("cannot move the new clone to `{}`", dir.display()),
        cause: source,
    })?;
    let rev = head(dir)?;
    tracing::info!(%rev, "cloned");
    Ok(Checkout {
        dir: dir.to_path_buf(),
        rev,
    })
}

fn remove(path: &Path) -> Result<(), GitError> {
    let is_dir = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    let removed = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|source| GitError::Io {
        context: format!("cannot remove `{}`", path.display()),
        cause: source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::testutil::{git, settings, Remote};

    #[test]
    fn first_sync_clones_the_branch() {
        let remote = Remote::new();
        let rev = remote.commit("flake.nix", "{ }");
        let dir = remote.tmp.path().join("state/checkout");
        let out = sync(&settings(&remote.url()), &dir).unwrap();
        assert_eq!(out.rev, rev);
        assert_eq!(out.dir, dir);
        assert_eq!(
            std::fs::read_to_string(dir.join("flake.nix")).unwrap(),
            "{ }"
        );
        assert_eq!(head(&dir).unwrap(), rev);
        assert_eq!(git(&dir, &["symbolic-ref", "HEAD"]), "refs/heads/main");
        assert!(!remote.tmp.path().join("state/.checkout.partial").exists());
    }

    #[test]
    fn second_sync_fetches_and_resets_away_local_changes_and_untracked_files() {
        let remote = Remote::new();
        remote.commit("flake.nix", "one");
        let dir = remote.tmp.path().join("checkout");
        let repo = settings(&remote.url());
        sync(&repo, &dir).unwrap();

        // Everything a previous run or a person could leave behind.
        std::fs::write(dir.join("flake.nix"), "edited").unwrap();
        std::fs::write(dir.join(".gitignore"), "result\n").unwrap();
        std::fs::write(dir.join("untracked"), "x").unwrap();
        std::fs::create_dir_all(dir.join("sub/nested/.git")).unwrap();
        std::fs::write(dir.join("sub/nested/.git/HEAD"), "x").unwrap();
        let outside = remote.tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), "keep me").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("result")).unwrap();
        git(&dir, &["commit", "-qam", "local commit"]);

        let new = remote.commit("flake.lock", "two");
        let out = sync(&repo, &dir).unwrap();
        assert_eq!(out.rev, new);
        assert_eq!(
            std::fs::read_to_string(dir.join("flake.nix")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("flake.lock")).unwrap(),
            "two"
        );
        for gone in ["untracked", "sub", ".gitignore", "result"] {
            assert!(
                std::fs::symlink_metadata(dir.join(gone)).is_err(),
                "{gone} survived"
            );
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("precious")).unwrap(),
            "keep me"
        );
        assert_eq!(git(&dir, &["rev-parse", "refs/heads/main"]), new);
        assert_eq!(git(&dir, &["status", "--porcelain", "--ignored"]), "");
    }

    #[test]
    fn symlink_where_the_tree_has_a_directory_is_replaced_not_followed() {
        let remote = Remote::new();
        remote.commit("hosts/pi3.nix", "pi3");
        let dir = remote.tmp.path().join("checkout");
        let repo = settings(&remote.url());
        sync(&repo, &dir).unwrap();
        let outside = remote.tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::remove_dir_all(dir.join("hosts")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("hosts")).unwrap();

        remote.commit("hosts/pi4.nix", "pi4");
        sync(&repo, &dir).unwrap();
        assert!(std::fs::symlink_metadata(dir.join("hosts"))
            .unwrap()
            .is_dir());
        assert_eq!(
            std::fs::read_to_string(dir.join("hosts/pi4.nix")).unwrap(),
            "pi4"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn sync_follows_a_changed_url() {
        let first = Remote::new();
        first.commit("a", "first");
        let second = Remote::new();
        let rev = second.commit("b", "second");
        let dir = first.tmp.path().join("checkout");
        sync(&settings(&first.url()), &dir).unwrap();
        let out = sync(&settings(&second.url()), &dir).unwrap();
        assert_eq!(out.rev, rev);
        assert!(!dir.join("a").exists());
        assert_eq!(git(&dir, &["remote", "get-url", "origin"]), second.url());
    }

    #[test]
    fn clone_without_head_is_cloned_again() {
        let remote = Remote::new();
        let rev = remote.commit("flake.nix", "x");
        let dir = remote.tmp.path().join("checkout");
        let repo = settings(&remote.url());
        sync(&repo, &dir).unwrap();
        std::fs::remove_file(dir.join(".git/HEAD")).unwrap();
        std::fs::write(dir.join("untracked"), "x").unwrap();
        assert_eq!(sync(&repo, &dir).unwrap().rev, rev);
        assert!(!dir.join("untracked").exists());
    }

    #[test]
    fn clone_with_garbage_objects_is_cloned_again() {
        let remote = Remote::new();
        remote.commit("flake.nix", "x");
        let dir = remote.tmp.path().join("checkout");
        let repo = settings(&remote.url());
        sync(&repo, &dir).unwrap();
        // A clone keeps its objects in a pack; damage every object file there is.
        let mut damaged = 0;
        for entry in walk(&dir.join(".git/objects")) {
            let mut perms = std::fs::metadata(&entry).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            std::fs::set_permissions(&entry, perms).unwrap();
            std::fs::write(&entry, b"garbage").unwrap();
            damaged += 1;
        }
        assert!(damaged > 0);
        let rev = remote.commit("flake.lock", "y");
        assert_eq!(sync(&repo, &dir).unwrap().rev, rev);
        assert_eq!(git(&dir, &["fsck", "--no-progress"]), "");
    }

    #[test]
    fn directory_that_is_not_a_repository_is_replaced_by_a_clone() {
        let remote = Remote::new();
        let rev = remote.commit("flake.nix", "x");
        let dir = remote.tmp.path().join("checkout");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("junk"), "x").unwrap();
        assert_eq!(sync(&settings(&remote.url()), &dir).unwrap().rev, rev);
        assert!(!dir.join("junk").exists());
    }

    #[test]
    fn missing_branch_is_reported_on_clone_and_on_fetch() {
        let remote = Remote::new();
        remote.commit("flake.nix", "x");
        let dir = remote.tmp.path().join("checkout");
        let mut repo = settings(&remote.url());
        repo.branch = "nope".into();
        let err = sync(&repo, &dir).unwrap_err();
        assert!(matches!(err, GitError::BranchNotFound { .. }), "{err}");
        assert!(!dir.exists());

        repo.branch = "main".into();
        sync(&repo, &dir).unwrap();
        repo.branch = "nope".into();
        let err = sync(&repo, &dir).unwrap_err();
        assert!(matches!(err, GitError::BranchNotFound { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("branch `nope` does not exist on `file://"),
            "{err}"
        );
        assert!(
            dir.join("flake.nix").exists(),
            "a missing branch must not cost the clone"
        );
    }

    #[test]
    fn unreachable_remote_is_an_error_and_keeps_the_clone() {
        let remote = Remote::new();
        remote.commit("flake.nix", "x");
        let dir = remote.tmp.path().join("checkout");
        sync(&settings(&remote.url()), &dir).unwrap();
        let gone = format!("file://{}/missing.git", remote.tmp.path().display());
        let err = sync(&settings(&gone), &dir).unwrap_err();
        assert!(err.to_string().contains("missing.git"), "{err}");
        assert!(dir.join("flake.nix").exists());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }
}
