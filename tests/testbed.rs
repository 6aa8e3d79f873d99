//! Smoke tests of the test bed itself, with the real tools: if these fail, every other
//! end-to-end test's failure means nothing.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{run, run_unchecked, stderr_of, stdout_of, Fleet, NixEnv, Sshd, BED_GIT_IDENTITY};

/// The store paths in the closure of `path`.
fn closure(env: &NixEnv, path: &str) -> BTreeSet<String> {
    stdout_of(&env.nix(["path-info", "--recursive", path]))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The closure member whose name (after the hash) starts with `name`.
fn member<'a>(closure: &'a BTreeSet<String>, name: &str) -> &'a str {
    closure
        .iter()
        .find(|p| p[44..].starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in closure {closure:#?}"))
}

#[test]
fn fleet_builds_every_machine_with_plain_nix_build() {
    let fleet = Fleet::new();
    let env = fleet.env();
    let checkout = fleet.checkout();
    let machines = fleet.machine_names();
    assert_eq!(machines, ["alpha", "beta", "gamma"]);

    let toplevels: Vec<String> = machines
        .iter()
        .map(|m| {
            fleet
                .build(&checkout, m)
                .unwrap_or_else(|out| panic!("{m} failed:\n{}", stderr_of(&out)))
        })
        .collect();
    for (m, t) in machines.iter().zip(&toplevels) {
        assert!(t.ends_with(&format!("-nixos-system-{m}")), "{t}");
        // Real references: Nix found the embedded store paths of kernel, etc and sw.
        let refs = stdout_of(&env.nix(["path-info", "--json", t.as_str()]));
        let info: serde_json::Value = serde_json::from_str(&refs).unwrap();
        assert_eq!(info[0]["references"].as_array().unwrap().len(), 3, "{info}");
    }

    let alpha = closure(env, &toplevels[0]);
    let beta = closure(env, &toplevels[1]);
    let gamma = closure(env, &toplevels[2]);
    assert_eq!(alpha.len(), 8, "{alpha:#?}");
    // alpha and beta differ only in toplevel and etc; gamma also has its own kernel.
    assert_eq!(alpha.intersection(&beta).count(), 6);
    assert_eq!(alpha.intersection(&gamma).count(), 5);
    assert!(member(&gamma, "linux-6.1.0-rpi").ends_with("rpi"));
}

#[test]
fn failing_machine_fails_with_its_message_and_others_still_build() {
    let fleet = Fleet::new();
    fleet.set_failing("beta", true);
    let checkout = fleet.checkout();
    let err = fleet
        .build(&checkout, "beta")
        .expect_err("beta is set failing");
    let stderr = stderr_of(&err);
    assert!(stderr.contains(&Fleet::failure_message("beta")), "{stderr}");
    fleet.build(&checkout, "alpha").expect("alpha still builds");

    fleet.set_failing("beta", false);
    let checkout = fleet.checkout();
    fleet.build(&checkout, "beta").expect("beta builds again");
}

#[test]
fn eval_failing_machine_throws_but_machine_list_still_evaluates() {
    let fleet = Fleet::new();
    fleet.set_eval_failing("gamma", true);
    let checkout = fleet.checkout();
    let env = fleet.env();
    let names = env.nix([
        "eval",
        "--json",
        &format!("{}#nixosConfigurations", checkout.display()),
        "--apply",
        "builtins.attrNames",
    ]);
    assert_eq!(stdout_of(&names), r#"["alpha","beta","gamma"]"#);
    let err = fleet
        .build(&checkout, "gamma")
        .expect_err("gamma is set eval-failing");
    let stderr = stderr_of(&err);
    assert!(
        stderr.contains(&Fleet::eval_failure_message("gamma")),
        "{stderr}"
    );
}

#[test]
fn sleepy_machine_takes_its_time() {
    let fleet = Fleet::with_machines(&["alpha", "delta"]);
    fleet.set_sleep("delta", 2);
    let checkout = fleet.checkout();
    let started = Instant::now();
    fleet.build(&checkout, "delta").expect("delta builds");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(fleet.machine_names(), ["alpha", "delta"]);
}

#[test]
fn bump_and_flake_update_move_the_lock_and_part_of_the_closure() {
    let fleet = Fleet::new();
    let env = fleet.env();
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), fleet.pkgs_head());
    let before = fleet.build(&fleet.checkout(), "alpha").unwrap();

    let new_pkgs = fleet.bump();
    let checkout = fleet.checkout();
    let update = run(env
        .command("nix")
        .current_dir(&checkout)
        .envs(BED_GIT_IDENTITY)
        .args(["flake", "update", "--commit-lock-file"]));
    assert!(stderr_of(&update).contains("Updated input 'pkgs'"));
    env.git(&checkout, ["push", "-q", "origin", "main"]);
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), new_pkgs);

    let after = fleet.build(&checkout, "alpha").unwrap();
    assert_ne!(before, after);
    let (before, after) = (closure(env, &before), closure(env, &after));
    for unchanged in ["linux-firmware", "linux-6.1.0-generic"] {
        assert_eq!(member(&before, unchanged), member(&after, unchanged));
    }
    for changed in ["glibc", "bash", "system-path", "etc"] {
        assert_ne!(member(&before, changed), member(&after, changed));
    }
}

#[test]
fn push_from_a_stale_clone_is_rejected_after_an_unrelated_commit() {
    let fleet = Fleet::new();
    let env = fleet.env();
    let stale = fleet.checkout();
    let old_head = fleet.remote_head("main");
    let new_head = fleet.push_unrelated_commit();
    assert_ne!(old_head, new_head);
    std::fs::write(stale.join("flake.lock"), "{}\n").unwrap();
    env.git(&stale, ["commit", "-q", "-am", "a lock update"]);
    let push = run_unchecked(
        env.command("git")
            .current_dir(&stale)
            .args(["push", "origin", "main"]),
    );
    assert!(!push.status.success());
    assert!(
        stderr_of(&push).contains("rejected"),
        "{}",
        stderr_of(&push)
    );
    assert_eq!(fleet.remote_head("main"), new_head);
}

fn clone_over_ssh(
    env: &NixEnv,
    sshd: &Sshd,
    url: &str,
    known_hosts: &Path,
    into: &Path,
) -> std::process::Output {
    run_unchecked(
        env.command("git")
            .env("GIT_SSH_COMMAND", sshd.git_ssh_command(known_hosts))
            .args(["clone", "-q", url])
            .arg(into),
    )
}

#[test]
fn git_clone_over_sshd_verifies_the_host_key() {
    let sshd = Sshd::start();
    let fleet = Fleet::new();
    let env = fleet.env();
    let url = sshd.ssh_url(&fleet.remote_path());

    let good = fleet.dir().join("over-ssh");
    let out = clone_over_ssh(env, &sshd, &url, &sshd.known_hosts_path(), &good);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let head = stdout_of(&env.git(&good, ["rev-parse", "HEAD"]));
    assert_eq!(head, fleet.remote_head("main"));

    let bad = fleet.dir().join("over-ssh-wrong-key");
    let out = clone_over_ssh(env, &sshd, &url, &sshd.wrong_known_hosts_path(), &bad);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
    assert!(sshd
        .sessions()
        .iter()
        .any(|s| s.starts_with("git-upload-pack")));
}

#[test]
fn sftp_over_sshd_writes_files() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("hello");
    std::fs::write(&src, "hello over sftp\n").unwrap();
    let dest = dir.path().join("cache");
    std::fs::create_dir(&dest).unwrap();
    let batch = format!(
        "put {} {}/hello.tmp\nrename {1}/hello.tmp {1}/hello\n",
        src.display(),
        dest.display()
    );
    std::fs::write(dir.path().join("batch"), batch).unwrap();
    run(std::process::Command::new("sftp")
        .args(sshd.ssh_options(&sshd.known_hosts_path()))
        .arg("-P")
        .arg(sshd.port().to_string())
        .arg("-b")
        .arg(dir.path().join("batch"))
        .arg("root@127.0.0.1"));
    assert_eq!(
        std::fs::read_to_string(dest.join("hello")).unwrap(),
        "hello over sftp\n"
    );
}

#[test]
fn nix_remote_build_goes_through_sshd() {
    let sshd = Sshd::start();
    let env = NixEnv::new();
    let salt = common::unique_salt();
    let expr = format!(
        r#"let
          mk = name: refs: derivation {{
            inherit name refs; salt = "{salt}"; system = "x86_64-linux"; builder = "/bin/sh";
            args = [ "-c" "echo $salt $refs > $out; echo nixfarm-testbed: built $name >&2" ];
          }};
          dep = mk "remote-dep" [ ];
        in {{ inherit dep; top = mk "remote-top" [ dep ]; }}"#
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), expr).unwrap();
    let file = file.path().to_str().unwrap();
    // dep is built here, so the remote build must first copy it over.
    env.nix(["build", "--no-link", "-f", file, "dep"]);

    let out = run(env
        .command("nix")
        .envs(sshd.builder_env())
        .args([
            "build",
            "-L",
            "--json",
            "--no-link",
            "--max-jobs",
            "0",
            "--builders",
        ])
        .arg(sshd.nix_builders_spec())
        .args(["-f", file, "top"]));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("on 'ssh://root@127.0.0.1'"), "{stderr}");
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let top = built[0]["outputs"]["out"].as_str().unwrap();
    // It was built in the builder's store, then copied back here.
    let base = Path::new(top).file_name().unwrap();
    assert!(sshd
        .remote_store_dir()
        .join("nix/store")
        .join(base)
        .exists());
    assert!(Path::new(top).exists());
    assert!(
        sshd.sessions()
            .iter()
            .any(|s| s == "nix-store --serve --write"),
        "{:?}",
        sshd.sessions()
    );
}

#[test]
fn nix_remote_build_with_a_wrong_host_key_finds_no_builder() {
    let sshd = Sshd::start();
    let env = NixEnv::new();
    let salt = common::unique_salt();
    let expr = format!(
        r#"derivation {{ name = "never-built"; salt = "{salt}"; system = "x86_64-linux";
            builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }}"#
    );
    let wrong_key = std::fs::read_to_string(sshd.wrong_known_hosts_path()).unwrap();
    let wrong_key: Vec<&str> = wrong_key.split_whitespace().skip(1).collect();
    let spec = sshd.nix_builders_spec();
    let (head, _) = spec.rsplit_once(' ').unwrap();
    use base64::Engine as _;
    let spec = format!(
        "{head} {}",
        base64::engine::general_purpose::STANDARD.encode(wrong_key.join(" "))
    );
    let out = run_unchecked(env.command("nix").envs(sshd.builder_env()).args([
        "build",
        "--no-link",
        "--max-jobs",
        "0",
        "--builders",
        &spec,
        "--expr",
        &expr,
    ]));
    assert!(!out.status.success());
    // Nix 2.8 hides the ssh error behind this message.
    assert!(
        stderr_of(&out).contains("Failed to find a machine for remote build"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn fleets_in_parallel_get_distinct_store_paths() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Fleet::new);
        let b = s.spawn(Fleet::new);
        (a.join().unwrap(), b.join().unwrap())
    });
    let eval = |f: &Fleet| {
        let attr = format!(
            "{}#{}",
            f.checkout().display(),
            Fleet::toplevel_attr("alpha")
        );
        stdout_of(&f.env().nix(["eval", "--raw", &format!("{attr}.drvPath")]))
    };
    assert_ne!(a.salt(), b.salt());
    assert_ne!(eval(&a), eval(&b));
}
