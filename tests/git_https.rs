//! The fleet's repository over HTTPS with a token (`[repo] token_file`), as on a self-hosted
//! forge: nginx with TLS and basic auth in front of git's own `git-http-backend`, on loopback.
//! farmd clones, fetches and pushes the lock commit through it; a wrong token and an
//! untrusted certificate are clear errors that never show the token.

mod common;

use std::process::Output;

use common::{stderr_of, toml_str, Farm, Fleet, GitHttps};

const USER: &str = "farm-bot";
const TOKEN: &str = "glpat-s3cr3t-t0ken-value";

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

/// `farmd --once`, which must succeed (nginx's error log in the message if not).
fn once_ok(farm: &Farm, fleet: &Fleet, server: &GitHttps) -> Output {
    let out = farm.once(fleet);
    assert_eq!(
        code(&out),
        0,
        "{}\nnginx:\n{}",
        stderr_of(&out),
        server.log()
    );
    out
}

/// A farm whose `[repo]` is the fleet's remote over HTTPS, with the token in `token_file`.
fn https_farm(fleet: &Fleet, server: &GitHttps, token: &str, trust: bool) -> Farm {
    let mut farm = Farm::new(fleet);
    let token_file = farm.dir().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let name = fleet
        .remote_path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    farm.config
        .set("repo", "url", &toml_str(server.url(&name)))
        .set(
            "repo",
            "token_file",
            &toml_str(token_file.display().to_string()),
        )
        .set("repo", "token_user", &toml_str(USER));
    if trust {
        // OpenSSL (libgit2's TLS) reads its trust store from SSL_CERT_FILE.
        farm.env.push((
            "SSL_CERT_FILE".into(),
            server.certificate().display().to_string(),
        ));
    }
    farm
}

#[test]
fn clone_fetch_and_push_over_https_with_a_token() {
    let fleet = Fleet::new();
    let server = GitHttps::serve(fleet.remote_path().parent().unwrap(), USER, TOKEN);
    let before = fleet.remote_head("main");
    let pkgs = fleet.bump();
    let farm = https_farm(&fleet, &server, TOKEN, true);

    let out = once_ok(&farm, &fleet, &server);
    assert!(!stderr_of(&out).contains(TOKEN), "the token was printed");
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), pkgs);
    assert_ne!(fleet.remote_head("main"), before);
    let run = farm.last_run(&fleet);
    assert_eq!(run["push"]["status"], "pushed", "{run:#}");

    // A second run fetches into the existing clone and pushes again, through the same auth.
    let pkgs = fleet.bump();
    let out = once_ok(&farm, &fleet, &server);
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), pkgs);
    assert!(!stderr_of(&out).contains(TOKEN), "the token was printed");
}

#[test]
fn a_wrong_token_or_an_untrusted_certificate_is_a_clear_error() {
    let fleet = Fleet::new();
    let server = GitHttps::serve(fleet.remote_path().parent().unwrap(), USER, TOKEN);
    let before = fleet.remote_head("main");
    fleet.bump();

    let wrong = "not-the-token";
    let farm = https_farm(&fleet, &server, wrong, true);
    let out = farm.once(&fleet);
    assert_eq!(code(&out), 2, "{}", stderr_of(&out));
    let err = stderr_of(&out);
    let token_file = farm.dir().join("token").display().to_string();
    assert!(
        err.contains("authentication") && err.contains(&token_file),
        "the error should say authentication failed with the token file:\n{err}"
    );
    assert!(
        !err.contains(wrong) && !err.contains(TOKEN),
        "a token was printed:\n{err}"
    );
    assert_eq!(farm.last_run(&fleet)["status"], "error");
    assert!(!farm.state().join("checkout/flake.nix").exists());

    let farm = https_farm(&fleet, &server, TOKEN, false);
    let out = farm.once(&fleet);
    assert_eq!(code(&out), 2, "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("TLS to `https://127.0.0.1:") && err.contains("SSL_CERT_FILE"),
        "the error should say TLS failed and how to trust the certificate:\n{err}"
    );
    assert!(!err.contains(TOKEN), "the token was printed:\n{err}");
    assert!(!farm.state().join("checkout/flake.nix").exists());
    assert_eq!(fleet.remote_head("main"), before, "something was pushed");
}
