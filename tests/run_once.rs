//! `farmd --once` end to end: the real binary against a real fixture fleet, real git remotes
//! (file and ssh), a real sshd and the real Nix.

mod common;

use std::time::Instant;

use common::{machine, phases, stderr_of, stdout_of, toml_str, Farm, Fleet, Sshd};

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("exited normally")
}

#[test]
fn run_updates_the_lock_builds_every_machine_and_pushes_the_lock_commit() {
    let fleet = Fleet::new();
    let before = fleet.remote_head("main");
    let pkgs = fleet.bump();
    let farm = Farm::new(&fleet);

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));

    // The lock commit is on the remote, on top of what was there, by the configured author.
    let after = fleet.remote_head("main");
    assert_ne!(after, before);
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), pkgs);
    let author = fleet.env().git(
        &fleet.remote_path(),
        ["log", "-1", "--format=%an <%ae>|%P", "main"],
    );
    assert_eq!(
        stdout_of(&author),
        format!("farm bot <farm@nixfarm.invalid>|{before}")
    );

    let run = farm.last_run(&fleet);
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["trigger"], "once");
    assert_eq!(run["lock_changed"], true);
    assert_eq!(run["rev_before"], before);
    assert_eq!(run["rev_after"], after);
    assert_eq!(run["push"]["status"], "pushed");
    assert_eq!(
        phases(&run),
        ["checkout", "update", "evaluate", "build", "push", "record"]
    );
    for name in fleet.machine_names() {
        let m = machine(&run, &name);
        assert_eq!(m["status"], "built", "{m:#}");
        // The toplevel is what plain `nix build` of the pushed revision gives, and a GC root
        // in the state directory points at it.
        let toplevel = m["toplevel"].as_str().unwrap();
        let expected = fleet
            .build(&fleet.checkout(), &name)
            .expect("fixture builds");
        assert_eq!(toplevel, expected);
        let root = farm.state().join("gcroots").join(format!("nixos-{name}"));
        assert_eq!(
            std::fs::read_link(&root).unwrap().to_str().unwrap(),
            toplevel
        );
        let log = m["log_path"].as_str().unwrap();
        assert!(std::path::Path::new(log).is_file(), "missing log {log}");
        assert!(m["drv_path"].as_str().unwrap().ends_with(".drv"));
    }
    // The summary names the outcome.
    let summary = stdout_of(&out);
    assert!(summary.contains("succeeded"), "{summary}");
}

#[test]
fn a_failing_machine_fails_alone_and_the_lock_is_held_back() {
    let fleet = Fleet::new();
    fleet.set_failing("beta", true);
    let before = fleet.remote_head("main");
    fleet.bump();
    let farm = Farm::new(&fleet);

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 1, "{}", stderr_of(&out));
    assert_eq!(
        fleet.remote_head("main"),
        before,
        "push = built must not push"
    );

    let run = farm.last_run(&fleet);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["push"]["status"], "skipped");
    assert!(run["push"]["reason"]
        .as_str()
        .unwrap()
        .contains("1 of 3 machines failed"));
    assert_eq!(machine(&run, "alpha")["status"], "built");
    assert_eq!(machine(&run, "gamma")["status"], "built");
    let beta = machine(&run, "beta");
    assert_eq!(beta["status"], "build-failed");
    assert!(beta["toplevel"].is_null());
    let tail = beta["log_tail"].as_str().unwrap();
    assert!(tail.contains(&Fleet::failure_message("beta")), "{tail}");
    // The summary tells the user which machine failed and where its log is.
    let summary = stdout_of(&out);
    assert!(summary.contains("beta"), "{summary}");

    // `farmctl show` renders the same story for a human.
    let show = farm.farmctl(&fleet, ["show", &run["id"].to_string()]);
    assert!(show.status.success(), "{}", stderr_of(&show));
    let text = stdout_of(&show);
    assert!(text.contains("build-failed"), "{text}");
    assert!(text.contains(&Fleet::failure_message("beta")), "{text}");
}

#[test]
fn push_always_pushes_right_after_the_update_even_when_a_machine_fails() {
    let fleet = Fleet::new();
    fleet.set_failing("gamma", true);
    let pkgs = fleet.bump();
    let mut farm = Farm::new(&fleet);
    farm.config.set("update", "push", &toml_str("always"));

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 1, "{}", stderr_of(&out));
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), pkgs);
    let run = farm.last_run(&fleet);
    assert_eq!(run["push"]["status"], "pushed");
    assert_eq!(
        phases(&run),
        ["checkout", "update", "push", "evaluate", "build", "record"]
    );
}

#[test]
fn push_never_leaves_the_remote_alone() {
    let fleet = Fleet::new();
    let before = fleet.remote_head("main");
    fleet.bump();
    let mut farm = Farm::new(&fleet);
    farm.config.set("update", "push", &toml_str("never"));

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(fleet.remote_head("main"), before);
    let run = farm.last_run(&fleet);
    assert_eq!(run["lock_changed"], true);
    assert_eq!(run["push"]["status"], "skipped");
}

#[test]
fn a_push_is_rejected_not_forced_when_the_remote_moved_on() {
    let fleet = Fleet::new();
    fleet.bump();
    let mut farm = Farm::new(&fleet);
    // Someone pushes to the fleet repo while the farm is working: the prepare command runs
    // after the checkout, so it is the moment to move the remote on.
    let other = fleet.checkout();
    let script = format!(
        "cd {dir} && echo moved > moved.txt && git add moved.txt && \
         git -c user.name=someone -c user.email=someone@x commit -qm 'meanwhile' && git push -q origin HEAD:main",
        dir = other.display()
    );
    farm.config.set("repo", "prepare", &toml_str(&script));

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 1, "{}", stderr_of(&out));
    let moved = fleet.remote_head("main");
    let msg = fleet
        .env()
        .git(&fleet.remote_path(), ["log", "-1", "--format=%s", "main"]);
    assert_eq!(
        stdout_of(&msg),
        "meanwhile",
        "the remote's commit must survive"
    );
    let run = farm.last_run(&fleet);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["push"]["status"], "rejected", "{run:#}");
    assert_ne!(run["rev_after"], moved);
    for name in fleet.machine_names() {
        assert_eq!(machine(&run, &name)["status"], "built");
    }
}

#[test]
fn an_evaluation_failure_fails_that_machine_only() {
    let fleet = Fleet::new();
    fleet.set_eval_failing("alpha", true);
    let farm = Farm::new(&fleet);

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 1, "{}", stderr_of(&out));
    let run = farm.last_run(&fleet);
    let alpha = machine(&run, "alpha");
    assert_eq!(alpha["status"], "eval-failed");
    assert!(
        alpha["error"]
            .as_str()
            .unwrap()
            .contains(&Fleet::eval_failure_message("alpha")),
        "{alpha:#}"
    );
    assert_eq!(machine(&run, "beta")["status"], "built");
    assert_eq!(machine(&run, "gamma")["status"], "built");
}

#[test]
fn a_second_run_with_nothing_changed_builds_nothing_new() {
    let fleet = Fleet::new();
    fleet.bump();
    let farm = Farm::new(&fleet);
    assert_eq!(code(&farm.once(&fleet)), 0);
    let first = farm.last_run(&fleet);

    let started = Instant::now();
    let out = farm.once(&fleet);
    let took = started.elapsed();
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    eprintln!("no-change second run took {took:?}");

    let run = farm.last_run(&fleet);
    assert_ne!(run["id"], first["id"]);
    assert_eq!(run["lock_changed"], false);
    assert_eq!(run["rev_before"], first["rev_after"]);
    assert_eq!(run["push"]["status"], "skipped");
    for name in fleet.machine_names() {
        let m = machine(&run, &name);
        assert_eq!(m["toplevel"], machine(&first, &name)["toplevel"]);
        // Nothing was built: Nix logs "building '<drv>'" for every derivation it builds.
        let log = std::fs::read_to_string(m["log_path"].as_str().unwrap()).unwrap();
        assert!(
            !log.contains("building '"),
            "{name} rebuilt something:\n{log}"
        );
    }
}

#[test]
fn a_machine_past_its_timeout_is_killed_with_its_whole_process_group() {
    let fleet = Fleet::new();
    fleet.set_sleep("alpha", 120);
    let mut farm = Farm::new(&fleet);
    // Not shorter: a machine waiting for a path another nix is building polls every 5 s
    // (Nix's pollInterval), and beta shares paths with alpha.
    farm.config.set("build", "timeout", &toml_str("15s"));

    let started = Instant::now();
    let out = farm.once(&fleet);
    assert_eq!(code(&out), 1, "{}", stderr_of(&out));
    assert!(
        started.elapsed().as_secs() < 60,
        "the timeout did not stop the build"
    );
    let run = farm.last_run(&fleet);
    let alpha = machine(&run, "alpha");
    assert_eq!(alpha["status"], "timed-out", "{alpha:#}");
    assert_eq!(machine(&run, "beta")["status"], "built");

    fleet.assert_no_builder_left();
}

#[test]
fn clone_fetch_and_push_over_ssh_verify_the_host_key() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    let pkgs = fleet.bump();
    let mut farm = Farm::new(&fleet);
    farm.use_ssh_remote(&fleet, &sshd, &sshd.known_hosts_path());

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), pkgs);
    // A second run fetches over ssh into the existing clone.
    fleet.bump();
    let out = farm.once(&fleet);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(farm.last_run(&fleet)["push"]["status"], "pushed");
}

#[test]
fn an_unknown_or_changed_ssh_host_key_is_refused() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    let empty = tempfile::NamedTempFile::new().unwrap();
    for (known_hosts, expect) in [
        (empty.path().to_owned(), "ssh-keyscan"),
        (sshd.wrong_known_hosts_path(), "CHANGED"),
    ] {
        let mut farm = Farm::new(&fleet);
        farm.use_ssh_remote(&fleet, &sshd, &known_hosts);
        let out = farm.once(&fleet);
        assert_eq!(code(&out), 2, "{}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(err.contains(expect), "expected `{expect}` in:\n{err}");
        assert!(err.contains("127.0.0.1"), "{err}");
        let run = farm.last_run(&fleet);
        assert_eq!(run["status"], "error");
        // Nothing was cloned from a host we could not verify.
        assert!(!farm.state().join("checkout/flake.nix").exists());
    }
}

#[test]
fn remote_builders_build_everything_through_nix_remote_protocol() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    fleet.bump();
    let mut farm = Farm::new(&fleet);
    farm.config.set("build", "max_jobs", "0").set(
        "build",
        "builders",
        &toml_str(sshd.nix_builders_spec()),
    );
    farm.env = sshd.builder_env();

    let out = farm.once(&fleet);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    let run = farm.last_run(&fleet);
    for name in fleet.machine_names() {
        let m = machine(&run, &name);
        assert_eq!(m["status"], "built");
        let log = std::fs::read_to_string(m["log_path"].as_str().unwrap()).unwrap();
        assert!(
            !log.contains("building '") || log.contains("on 'ssh://root@127.0.0.1'"),
            "{name} built locally:\n{log}"
        );
    }
    assert!(
        sshd.sessions()
            .iter()
            .any(|s| s.contains("nix-store --serve --write")),
        "no remote build session: {:?}",
        sshd.sessions()
    );
}

#[test]
fn a_broken_clone_is_removed_and_cloned_again() {
    let fleet = Fleet::new();
    let farm = Farm::new(&fleet);
    assert_eq!(code(&farm.once(&fleet)), 0);
    let git_dir = farm.state().join("checkout/.git");
    std::fs::remove_file(git_dir.join("HEAD")).unwrap();
    std::fs::write(git_dir.join("config"), "garbage [[[").unwrap();

    fleet.bump();
    let out = farm.once(&fleet);
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(farm.last_run(&fleet)["push"]["status"], "pushed");
}

#[test]
fn bad_configs_are_rejected_with_the_message_the_user_needs() {
    let fleet = Fleet::new();
    let mut farm = Farm::new(&fleet);
    farm.config.set("build", "jbos", "3");
    let out = farm.once(&fleet);
    assert_eq!(code(&out), 78);
    let err = stderr_of(&out);
    assert!(err.contains("farmd.toml"), "{err}");
    assert!(err.contains("jbos"), "{err}");
    assert!(err.contains("did you mean `jobs`"), "{err}");

    let check = farm.farmctl(&fleet, ["check-config"]);
    assert_eq!(check.status.code(), Some(78));
    assert!(stderr_of(&check).contains("did you mean `jobs`"));

    let missing = common::run_unchecked(fleet.env().command(env!("CARGO_BIN_EXE_farmd")).args([
        "--once",
        "--config",
        "/nonexistent/farmd.toml",
    ]));
    assert_eq!(missing.status.code(), Some(78));
    assert!(stderr_of(&missing).contains("/nonexistent/farmd.toml"));
}

#[test]
fn farmctl_check_config_prints_the_effective_settings() {
    let fleet = Fleet::new();
    let farm = Farm::new(&fleet);
    let out = farm.farmctl(&fleet, ["check-config"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    // Defaults the file did not set are shown.
    assert!(text.contains("timeout"), "{text}");
    assert!(
        text.contains("nixosConfigurations.{name}.config.system.build.toplevel"),
        "{text}"
    );
}

#[test]
fn clone_and_push_over_ssh_with_the_key_in_ssh_agent() {
    let fleet = Fleet::new();
    let sshd = Sshd::start();
    let agent_dir = tempfile::tempdir().unwrap();
    let sock = agent_dir.path().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent");
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let added = common::run_unchecked(
        std::process::Command::new("ssh-add")
            .arg(sshd.ssh_key_path())
            .env("SSH_AUTH_SOCK", &sock),
    );
    assert!(added.status.success(), "{}", stderr_of(&added));

    let pkgs = fleet.bump();
    let mut farm = Farm::new(&fleet);
    farm.config
        .set("repo", "url", &toml_str(sshd.ssh_url(&fleet.remote_path())))
        .set("repo", "ssh_agent", "true")
        .set(
            "repo",
            "known_hosts",
            &toml_str(sshd.known_hosts_path().display().to_string()),
        );
    farm.env = vec![("SSH_AUTH_SOCK".into(), sock.display().to_string())];
    let out = farm.once(&fleet);
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(code(&out), 0, "{}", stderr_of(&out));
    assert_eq!(fleet.lock_rev_of_pkgs_in_remote(), pkgs);
}
