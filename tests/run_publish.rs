//! The publish phase inside a run: farmd builds the fleet, publishes every closure over SFTP to
//! a real sshd, and the real Nix client substitutes each machine from it over HTTP (nginx) with
//! `require-sigs`. The lock is pushed only when every closure reached the cache.

mod common;

use common::{
    closure_problems, machine, phases, stderr_of, substitute, temporaries, toml_str, CacheBed,
    Nginx, RunningFarmd,
};

#[test]
fn a_run_publishes_every_built_closure_and_the_nix_client_substitutes_it() {
    let bed = CacheBed::new();
    let pkgs = bed.fleet.bump();
    let out = bed.farm.once(&bed.fleet);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(bed.fleet.lock_rev_of_pkgs_in_remote(), pkgs, "lock pushed");

    let run = bed.farm.last_run(&bed.fleet);
    assert_eq!(
        phases(&run),
        ["checkout", "update", "evaluate", "build", "publish", "push", "gc", "record"]
    );
    let total = &run["publish"];
    assert!(total["uploaded_paths"].as_u64().unwrap() > 0, "{total:#}");
    assert_eq!(total["uploaded_paths"], total["closure_paths"]);
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    assert!(temporaries(&bed.cache).is_empty());

    let nginx = Nginx::serve(&bed.cache);
    let clients = tempfile::tempdir().unwrap();
    for name in bed.fleet.machine_names() {
        let m = machine(&run, &name);
        let p = &m["publish"];
        assert_eq!(p["complete"], true, "{m:#}");
        let toplevel = m["toplevel"].as_str().unwrap();
        let closure = bed.closure(&[toplevel.to_owned()]);
        assert_eq!(p["closure_paths"], closure.len());
        let store = clients.path().join(&name);
        let out = substitute(&bed, &nginx, &store, toplevel, &bed.public_key);
        assert!(out.status.success(), "{name}: {}", stderr_of(&out));
        for path in closure {
            assert!(store.join(path.trim_start_matches('/')).exists(), "{path}");
        }
    }

    // Nothing changed: the next run uploads nothing and lists the cache instead of asking
    // for every path.
    let out = bed.farm.once(&bed.fleet);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let run = bed.farm.last_run(&bed.fleet);
    assert_eq!(run["publish"]["uploaded_paths"], 0);
    assert_eq!(
        run["publish"]["already_cached"],
        run["publish"]["closure_paths"]
    );
    let show = bed
        .farm
        .farmctl(&bed.fleet, ["show", &run["id"].to_string()]);
    let text = common::stdout_of(&show);
    assert!(text.contains("0 uploaded"), "{text}");
}

#[test]
fn an_unreachable_cache_fails_the_run_and_holds_the_lock_back() {
    let mut bed = CacheBed::new();
    let before = bed.fleet.remote_head("main");
    bed.fleet.bump();
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    bed.farm.config.set(
        "cache",
        "url",
        &toml_str(format!(
            "sftp://root@127.0.0.1:{port}{}",
            bed.cache.display()
        )),
    );
    let out = bed.farm.once(&bed.fleet);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("cannot reach"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(bed.fleet.remote_head("main"), before, "nothing pushed");
    let run = bed.farm.last_run(&bed.fleet);
    assert_eq!(run["status"], "error");
    for name in bed.fleet.machine_names() {
        assert_eq!(machine(&run, &name)["status"], "built");
    }
}

#[test]
fn the_daemon_publishes_too_and_status_shows_it() {
    let bed = CacheBed::new();
    bed.fleet.bump();
    let _farmd = RunningFarmd::start(&bed.farm, &bed.fleet, &[]);
    let out = bed
        .farm
        .farmctl(&bed.fleet, ["trigger", "--wait", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let record = &reply["record"];
    assert_eq!(record["status"], "succeeded");
    assert!(record["publish"]["uploaded_paths"].as_u64().unwrap() > 0);
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
}
