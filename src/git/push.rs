//! Phase 6, push: send the checkout's HEAD (the lock commit) to `repo.push_branch` on origin.
//! Never forced: if the remote moved on, the push is reported as rejected and the next run
//! builds on top of the remote's new commit. Whether to push at all is the run's decision.

use std::cell::RefCell;
use std::path::Path;

use git2::{Direction, ErrorCode, PushOptions, Repository};

use super::remote::Session;
use super::GitError;
use crate::config::RepoSettings;
use crate::record::PushOutcome;

/// Pushes HEAD of the checkout at `dir` to `refs/heads/<repo.push_branch>` on `repo.url`.
///
/// `Ok` covers every answer the remote gave (`UpToDate`, `Pushed`, `Rejected`); `Err` means the
/// push could not be attempted (transport, authentication, host key, broken checkout).
pub fn push(repo: &RepoSettings, dir: &Path) -> Result<PushOutcome, GitError> {
    let session = Session::new(repo);
    let corrupt = |source| GitError::Corrupt {
        dir: dir.to_path_buf(),
        cause: source,
    };
    let git = Repository::open(dir).map_err(corrupt)?;
    let local = git
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(corrupt)?
        .id();
    let rev = local.to_string();
    let target = format!("refs/heads/{}", repo.push_branch);
    git.remote_set_url("origin", &repo.url).map_err(corrupt)?;
    let mut remote = git.find_remote("origin").map_err(corrupt)?;
    let failed = |what: &'static str| {
        let url = session.url.clone();
        let branch = repo.push_branch.clone();
        move || format!("cannot {what} `{url}` to push `{branch}`")
    };
    let mut connection = remote
        .connect_auth(Direction::Push, Some(session.callbacks()), None)
        .map_err(|e| session.error(e, failed("connect to")))?;
    let remote_tip = connection
        .list()
        .map_err(|e| session.error(e, failed("list the branches of")))?
        .iter()
        .find(|head| head.name() == target)
        .map(|head| head.oid());

    if let Some(remote_tip) = remote_tip {
        if remote_tip == local {
            tracing::info!(%rev, branch = %repo.push_branch, "remote already has the commit");
            return Ok(PushOutcome::UpToDate { rev });
        }
        // Not having the remote's commit at all means it moved on since our fetch.
        let fast_forward = git.odb().is_ok_and(|odb| odb.exists(remote_tip))
            && git.graph_descendant_of(local, remote_tip).unwrap_or(false);
        if !fast_forward {
            let message = format!(
                "`{}` on `{}` is at {remote_tip}, which {rev} does not build on (the remote moved \
                 on); not forcing: the next run starts from the remote's commit",
                repo.push_branch, session.url
            );
            tracing::warn!("push rejected: {message}");
            return Ok(PushOutcome::Rejected { message });
        }
    }

    let refused: RefCell<Option<String>> = RefCell::new(None);
    let mut callbacks = session.callbacks();
    callbacks.push_update_reference(|refname, status| {
        if let Some(status) = status {
            *refused.borrow_mut() = Some(format!(
                "the remote refused to update `{refname}`: {status}"
            ));
        }
        Ok(())
    });
    let mut options = PushOptions::new();
    options.remote_callbacks(callbacks);
    // No `+`: libgit2 checks fast-forward itself too, and the server has the last word.
    let refspec = format!("HEAD:{target}");
    match connection.remote().push(&[refspec], Some(&mut options)) {
        Ok(()) => {}
        Err(e) if e.code() == ErrorCode::NotFastForward => {
            let message = format!(
                "`{}` on `{}` moved on ({}); not forcing",
                repo.push_branch,
                session.url,
                e.message()
            );
            tracing::warn!("push rejected: {message}");
            return Ok(PushOutcome::Rejected { message });
        }
        Err(e) => return Err(session.error(e, failed("push to"))),
    }
    drop(options);
    if let Some(message) = refused.into_inner() {
        tracing::warn!("push rejected: {message}");
        return Ok(PushOutcome::Rejected { message });
    }
    tracing::info!(%rev, branch = %repo.push_branch, "pushed");
    Ok(PushOutcome::Pushed { rev })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::sync;
    use crate::git::testutil::{git, settings, Remote};

    /// A synced checkout with one local commit on top, as the update phase leaves it.
    fn checkout_with_lock_commit(remote: &Remote) -> (std::path::PathBuf, String) {
        let dir = remote.tmp.path().join("checkout");
        sync(&settings(&remote.url()), &dir).unwrap();
        std::fs::write(dir.join("flake.lock"), "{}").unwrap();
        git(&dir, &["add", "flake.lock"]);
        git(&dir, &["commit", "-qm", "flake.lock: update"]);
        let rev = git(&dir, &["rev-parse", "HEAD"]);
        (dir, rev)
    }

    #[test]
    fn push_fast_forwards_the_remote_branch() {
        let remote = Remote::new();
        remote.commit("flake.nix", "x");
        let (dir, rev) = checkout_with_lock_commit(&remote);
        let out = push(&settings(&remote.url()), &dir).unwrap();
        assert_eq!(out, PushOutcome::Pushed { rev: rev.clone() });
        assert_eq!(remote.tip("main"), rev);
    }

    #[test]
    fn push_to_another_branch_creates_it() {
        let remote = Remote::new();
        let base = remote.commit("flake.nix", "x");
        let (dir, rev) = checkout_with_lock_commit(&remote);
        let mut repo = settings(&remote.url());
        repo.push_branch = "farm/lock".into();
        assert_eq!(
            push(&repo, &dir).unwrap(),
            PushOutcome::Pushed { rev: rev.clone() }
        );
        assert_eq!(remote.tip("farm/lock"), rev);
        assert_eq!(remote.tip("main"), base);
    }

    #[test]
    fn push_of_a_commit_the_remote_has_is_up_to_date() {
        let remote = Remote::new();
        let rev = remote.commit("flake.nix", "x");
        let dir = remote.tmp.path().join("checkout");
        let repo = settings(&remote.url());
        sync(&repo, &dir).unwrap();
        assert_eq!(push(&repo, &dir).unwrap(), PushOutcome::UpToDate { rev });

        // And after our own push, pushing again changes nothing.
        let (dir, lock) = checkout_with_lock_commit(&remote);
        assert_eq!(
            push(&repo, &dir).unwrap(),
            PushOutcome::Pushed { rev: lock.clone() }
        );
        assert_eq!(
            push(&repo, &dir).unwrap(),
            PushOutcome::UpToDate { rev: lock }
        );
    }

    #[test]
    fn push_when_the_remote_moved_on_is_rejected_and_changes_nothing() {
        let remote = Remote::new();
        remote.commit("flake.nix", "x");
        let (dir, _) = checkout_with_lock_commit(&remote);
        let moved = remote.commit("README", "someone else");
        let out = push(&settings(&remote.url()), &dir).unwrap();
        let PushOutcome::Rejected { message } = out else {
            panic!("expected a rejection, got {out:?}");
        };
        assert!(message.contains("moved on"), "{message}");
        assert_eq!(remote.tip("main"), moved);

        // Even when we have the remote's commit but diverged from it.
        git(&dir, &["fetch", "-q", "origin"]);
        let out = push(&settings(&remote.url()), &dir).unwrap();
        assert!(matches!(out, PushOutcome::Rejected { .. }), "{out:?}");
        assert_eq!(remote.tip("main"), moved);
    }
}
