//! The git module against a real `sshd` on 127.0.0.1 (libssh2 inside libgit2 on the client):
//! host-key verification and key authentication as a farm meets them.

use crate::config::RepoAuth;
use crate::git::testutil::{git, keygen, settings, Remote, Sshd};
use crate::git::{push, sync, GitError};
use crate::record::PushOutcome;

fn ssh_settings(
    sshd: &Sshd,
    remote: &Remote,
    known_hosts: std::path::PathBuf,
) -> crate::config::RepoSettings {
    let mut repo = settings(&sshd.url(&remote.bare));
    repo.auth = RepoAuth::SshKey {
        key: sshd.client_key.clone(),
        passphrase_file: None,
    };
    repo.known_hosts = Some(known_hosts);
    repo
}

#[test]
fn clone_fetch_and_push_over_ssh_with_a_known_host_key() {
    let Some(sshd) = Sshd::start() else {
        eprintln!("skipped: no sshd on this machine");
        return;
    };
    let remote = Remote::new();
    let first = remote.commit("flake.nix", "x");
    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key);
    let known_hosts = sshd.known_hosts("known_hosts", &line);
    let repo = ssh_settings(&sshd, &remote, known_hosts.clone());
    let dir = remote.tmp.path().join("checkout");

    assert_eq!(sync(&repo, &dir).unwrap().rev, first);
    let second = remote.commit("flake.lock", "y");
    assert_eq!(sync(&repo, &dir).unwrap().rev, second);

    std::fs::write(dir.join("flake.lock"), "z").unwrap();
    git(&dir, &["commit", "-qam", "flake.lock: update"]);
    let lock = git(&dir, &["rev-parse", "HEAD"]);
    assert_eq!(
        push(&repo, &dir).unwrap(),
        PushOutcome::Pushed { rev: lock.clone() }
    );
    assert_eq!(remote.tip("main"), lock);
    assert_eq!(
        push(&repo, &dir).unwrap(),
        PushOutcome::UpToDate { rev: lock }
    );

    // The same host, hashed by the real ssh-keygen.
    let status = std::process::Command::new("ssh-keygen")
        .arg("-q")
        .arg("-H")
        .arg("-f")
        .arg(&known_hosts)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(!std::fs::read_to_string(&known_hosts)
        .unwrap()
        .contains("127.0.0.1"));
    sync(&repo, &dir).unwrap();
}

#[test]
fn passphrase_protected_key_is_unlocked_from_its_file() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let key = sshd.dir.path().join("locked_ed25519");
    let public = keygen(&key, "correct horse");
    std::fs::write(
        sshd.dir.path().join("authorized_keys"),
        format!("{public}\n"),
    )
    .unwrap();
    let passphrase = sshd.dir.path().join("passphrase");
    std::fs::write(&passphrase, "correct horse\n").unwrap();
    let remote = Remote::new();
    let rev = remote.commit("flake.nix", "x");
    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key);
    let mut repo = ssh_settings(&sshd, &remote, sshd.known_hosts("known_hosts", &line));
    repo.auth = RepoAuth::SshKey {
        key,
        passphrase_file: Some(passphrase),
    };
    let dir = remote.tmp.path().join("checkout");
    assert_eq!(sync(&repo, &dir).unwrap().rev, rev);

    std::fs::write(sshd.dir.path().join("passphrase"), "wrong\n").unwrap();
    let err = sync(&repo, &dir).unwrap_err();
    eprintln!("{err}");
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert!(err.to_string().contains("holds its passphrase"), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
}

#[test]
fn unknown_host_key_is_refused_with_the_command_to_add_it() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let remote = Remote::new();
    remote.commit("flake.nix", "x");
    // Known on the default port only: a different host as far as ssh is concerned.
    let known_hosts = sshd.known_hosts("known_hosts", &format!("127.0.0.1 {}", sshd.host_key));
    let repo = ssh_settings(&sshd, &remote, known_hosts.clone());
    let dir = remote.tmp.path().join("checkout");
    let err = sync(&repo, &dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    let GitError::UnknownHost { host, port, .. } = &err else {
        panic!("expected UnknownHost, got {err:?}");
    };
    assert_eq!((host.as_str(), *port), ("127.0.0.1", sshd.port));
    let keyscan = format!(
        "`ssh-keyscan -p {} 127.0.0.1 >> {}`",
        sshd.port,
        known_hosts.display()
    );
    assert!(msg.contains(&keyscan), "{msg}");
    assert!(msg.contains("SHA256:"), "{msg}");
    assert!(!dir.exists());
}

#[test]
fn changed_host_key_is_refused_loudly() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let remote = Remote::new();
    remote.commit("flake.nix", "x");
    let impostor = keygen(&sshd.dir.path().join("old_host_key"), "");
    let line = format!("[127.0.0.1]:{} {impostor}", sshd.port);
    let repo = ssh_settings(&sshd, &remote, sshd.known_hosts("known_hosts", &line));
    let err = sync(&repo, &remote.tmp.path().join("checkout")).unwrap_err();
    assert!(
        matches!(err, GitError::HostKeyChanged { line: 1, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("has CHANGED") && msg.contains("man-in-the-middle"),
        "{msg}"
    );
}

#[test]
fn refused_client_key_fails_once_with_a_clear_error() {
    let Some(sshd) = Sshd::start() else {
        return;
    };
    let remote = Remote::new();
    remote.commit("flake.nix", "x");
    let stranger = sshd.dir.path().join("stranger_ed25519");
    keygen(&stranger, "");
    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key);
    let mut repo = ssh_settings(&sshd, &remote, sshd.known_hosts("known_hosts", &line));
    repo.auth = RepoAuth::SshKey {
        key: stranger.clone(),
        passphrase_file: None,
    };
    let err = sync(&repo, &remote.tmp.path().join("checkout")).unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    let msg = err.to_string();
    eprintln!("{msg}");
    let expected = format!(
        "authentication to `{}` failed with key `{}`: check the key is in the remote's authorized keys",
        repo.url,
        stranger.display()
    );
    assert!(msg.starts_with(&expected), "{msg}");
}

#[test]
fn host_listed_only_with_another_key_type_is_refused_and_names_the_type() {
    // The server offers ecdsa and ed25519 host keys; libssh2 1.11 negotiates ed25519.
    let Some(sshd) = Sshd::start_with_ecdsa_host_key() else {
        return;
    };
    let remote = Remote::new();
    let rev = remote.commit("flake.nix", "x");
    let ecdsa = sshd.ecdsa_host_key.clone().unwrap();
    let line = format!("[127.0.0.1]:{} {ecdsa}", sshd.port);
    let mut repo = ssh_settings(&sshd, &remote, sshd.known_hosts("ecdsa_only", &line));
    let dir = remote.tmp.path().join("checkout");
    let err = sync(&repo, &dir).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    let GitError::UnknownHost { known_types, .. } = &err else {
        panic!("expected UnknownHost, got {err:?}");
    };
    assert_eq!(known_types, &["ecdsa-sha2-nistp256".to_string()]);
    assert!(
        msg.contains(&format!(
            "ssh-keyscan -p {} -t ssh-ed25519 127.0.0.1",
            sshd.port
        )),
        "{msg}"
    );

    let line = format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key);
    repo.known_hosts = Some(sshd.known_hosts("ed25519_only", &line));
    assert_eq!(sync(&repo, &dir).unwrap().rev, rev);
}
