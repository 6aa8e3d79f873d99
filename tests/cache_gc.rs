//! Cache GC end to end: farmd runs night after night against a real sshd, publishes, records
//! generations and collects; the real Nix client (nginx, `require-sigs`) is the judge of what
//! stays. Also: kill -9 in the middle of `farmctl cache gc`, pins, another farm's records on
//! the same cache, and dry runs.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::synthetic::{fill, write_generation};
use common::{
    closure_problems, machine, run_unchecked, stderr_of, stdout_of, toml_str, CacheBed, Farm,
    Fleet, Nginx,
};
use nixfarm::cache::SigningKey;
use serde_json::Value;

fn retention(farm: &mut Farm, keep: usize) {
    farm.config
        .set("cache.retention", "keep_generations", &keep.to_string())
        .set("cache.retention", "keep_days", "0")
        .set("cache.retention", "grace", &toml_str("1s"));
}

/// Bytes of every file under `dir`.
fn size_of(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

fn has_narinfo(cache: &Path, path: &str) -> bool {
    let hash = &path["/nix/store/".len().."/nix/store/".len() + 32];
    cache.join(format!("{hash}.narinfo")).exists()
}

/// `nix-store -r PATHS` into an empty chroot store from the cache over HTTP, signatures
/// required; then every path of their closures must be in that store.
#[track_caller]
fn substitute_all(bed: &CacheBed, nginx: &Nginx, store: &Path, roots: &[String]) {
    let out = run_unchecked(
        bed.fleet
            .env()
            .command("nix-store")
            .arg("--store")
            .arg(store)
            .arg("-r")
            .args(roots)
            .args(["--max-jobs", "0"])
            .args(["--option", "substituters", &nginx.url()])
            .args(["--option", "trusted-public-keys", &bed.public_key])
            .args(["--option", "require-sigs", "true"]),
    );
    assert!(
        out.status.success(),
        "substitute {roots:?}: {}",
        stderr_of(&out)
    );
    for path in bed.closure(roots) {
        assert!(
            store.join(path.trim_start_matches('/')).exists(),
            "{path} not substituted"
        );
    }
}

fn toplevels(run: &Value, fleet: &Fleet) -> BTreeMap<String, String> {
    fleet
        .machine_names()
        .into_iter()
        .map(|name| {
            let top = machine(run, &name)["toplevel"].as_str().unwrap().to_owned();
            (name, top)
        })
        .collect()
}

#[track_caller]
fn night(bed: &CacheBed) -> Value {
    bed.fleet.bump();
    let out = bed.farm.once(&bed.fleet);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    bed.farm.last_run(&bed.fleet)
}

#[test]
fn ten_nights_keep_every_kept_generation_substitutable_and_the_cache_bounded() {
    let mut bed = CacheBed::new();
    retention(&mut bed.farm, 3);
    let nginx = Nginx::serve(&bed.cache);
    let clients = tempfile::tempdir().unwrap();
    let mut nights: Vec<BTreeMap<String, String>> = Vec::new();
    let mut curve = Vec::new();
    for n in 1..=10 {
        let run = night(&bed);
        nights.push(toplevels(&run, &bed.fleet));
        assert_eq!(run["generations"].as_array().unwrap().len(), 3, "{run:#}");
        let gc = &run["gc"];
        assert!(gc.is_object(), "night {n}: no gc in {run:#}");
        assert_eq!(
            closure_problems(&bed.cache),
            Vec::<String>::new(),
            "night {n}"
        );

        // Every kept generation of every machine substitutes in full.
        let kept: Vec<String> = nights
            .iter()
            .rev()
            .take(3)
            .flat_map(|t| t.values().cloned())
            .collect();
        substitute_all(
            &bed,
            &nginx,
            &clients.path().join(format!("night-{n}")),
            &kept,
        );

        // The generation that fell out: its unique paths are gone.
        if n > 3 {
            assert_eq!(gc["records_deleted"].as_array().unwrap().len(), 3, "{gc:#}");
            let dropped: Vec<String> = nights[n - 4].values().cloned().collect();
            let still: BTreeSet<String> = bed.closure(&kept);
            let unique: Vec<String> = bed
                .closure(&dropped)
                .into_iter()
                .filter(|p| !still.contains(p))
                .collect();
            assert!(!unique.is_empty());
            for p in &unique {
                assert!(
                    !has_narinfo(&bed.cache, p),
                    "night {n}: {p} of a dropped generation is still cached"
                );
            }
            assert!(
                gc["deleted_paths"].as_u64().unwrap() >= unique.len() as u64,
                "{gc:#}"
            );
        }
        let size = size_of(&bed.cache);
        let narinfos = std::fs::read_dir(&bed.cache)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".narinfo"))
            .count();
        let logs = std::fs::read_dir(bed.cache.join("log")).unwrap().count();
        eprintln!("night {n}: cache {size} bytes, {narinfos} narinfos, {logs} logs; gc {gc}");
        curve.push((size, narinfos, logs));
    }
    eprintln!("cache size curve (bytes, narinfos, logs) by night: {curve:?}");
    // From the fourth night on, each night adds one generation and drops one.
    let steady = (curve[3].1, curve[3].2);
    for (n, (_, narinfos, logs)) in curve.iter().enumerate().skip(3) {
        assert_eq!((*narinfos, *logs), steady, "night {}: {curve:?}", n + 1);
    }
    assert!(curve[9].0 <= curve[3].0 + curve[3].0 / 10, "{curve:?}");

    let run = bed.farm.last_run(&bed.fleet);
    let show = stdout_of(
        &bed.farm
            .farmctl(&bed.fleet, ["show", &run["id"].to_string()]),
    );
    assert!(
        show.contains("gc") && show.contains("records dropped"),
        "{show}"
    );
    assert!(
        show.contains("generations   recorded for alpha, beta, gamma"),
        "{show}"
    );
}

fn farmctl_gc(bed: &CacheBed, args: &[&str]) -> (Output, Value) {
    let out = bed
        .farm
        .farmctl(&bed.fleet, ["cache", "gc", "--json"].iter().chain(args));
    assert!(
        out.status.success(),
        "farmctl cache gc: {}",
        stderr_of(&out)
    );
    let report = serde_json::from_slice(&out.stdout).expect("gc --json prints the report");
    (out, report)
}

#[test]
fn kill_9_during_gc_leaves_a_complete_cache_and_the_next_gc_finishes() {
    let mut bed = CacheBed::new();
    retention(&mut bed.farm, 1);
    let key = SigningKey::load(&bed.secret_key).unwrap();
    let old = Duration::from_secs(7200);
    let live = fill(&bed.cache, &key, "live", 500, old);
    write_generation(
        &bed.cache,
        &key,
        "killtest",
        "live",
        live.last().unwrap(),
        0,
    );
    let config = bed.farm.write_config();
    let mut seed =
        std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64 ^ 0x9e37_79b9;
    let mut kills_in_sweep = 0;
    for round in 0..8 {
        fill(&bed.cache, &key, &format!("garbage{round}"), 1500, old);
        let before = std::fs::read_dir(&bed.cache).unwrap().count();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(200 + (seed >> 33) % 2500);
        let mut child = bed
            .fleet
            .env()
            .command(env!("CARGO_BIN_EXE_farmctl"))
            .arg("--config")
            .arg(&config)
            .args(["cache", "gc"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let status = child.wait().unwrap();
        let after = std::fs::read_dir(&bed.cache).unwrap().count();
        if after < before && status.code().is_none() {
            kills_in_sweep += 1;
        }
        eprintln!(
            "round {round}: killed after {delay:?} ({status}); root entries {before} -> {after}"
        );
        assert_eq!(
            closure_problems(&bed.cache),
            Vec::<String>::new(),
            "round {round}"
        );
    }
    eprintln!("{kills_in_sweep} of 8 kills landed in the sweep");
    let (_, report) = farmctl_gc(&bed, &[]);
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    let (_, again) = farmctl_gc(&bed, &[]);
    assert_eq!(again["deleted_paths"], 0, "{again:#}");
    assert_eq!(again["deleted_nars"], 0, "{again:#}");
    assert_eq!(again["kept_paths"], live.len(), "{report:#}");
    for p in &live {
        assert!(has_narinfo(&bed.cache, p.as_str()));
    }
}

#[test]
fn pins_and_another_farms_generations_are_kept_and_a_dry_run_matches_the_real_gc() {
    let mut bed = CacheBed::new();
    retention(&mut bed.farm, 1);
    let nginx = Nginx::serve(&bed.cache);
    let clients = tempfile::tempdir().unwrap();
    let first = toplevels(&night(&bed), &bed.fleet);

    let pinned = first["alpha"].clone();
    let out = bed.farm.farmctl(
        &bed.fleet,
        ["cache", "pin", &pinned, "--name", "alpha-first"],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));

    // Another farm (its own fleet and state dir) publishes to the same cache.
    let fleet2 = Fleet::new();
    let mut farm2 = Farm::new(&fleet2);
    retention(&mut farm2, 1);
    let path = |p: &Path| toml_str(p.display().to_string());
    farm2
        .config
        .set(
            "cache",
            "url",
            &toml_str(format!(
                "sftp://root@127.0.0.1:{}{}",
                bed.sshd.port(),
                bed.cache.display()
            )),
        )
        .set(
            "cache",
            "secret_key_files",
            &format!("[{}]", path(&bed.secret_key)),
        )
        .set("cache", "ssh_identity", &path(&bed.sshd.ssh_key_path()))
        .set(
            "cache",
            "ssh_known_hosts",
            &path(&bed.sshd.known_hosts_path()),
        );
    fleet2.bump();
    let out = farm2.once(&fleet2);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let theirs: Vec<String> = toplevels(&farm2.last_run(&fleet2), &fleet2)
        .into_values()
        .collect();

    // Two more nights here: with keep_generations = 1 the first generation is dropped.
    night(&bed);
    let last = night(&bed);
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    assert!(
        !has_narinfo(&bed.cache, &first["beta"]),
        "beta's first generation is dropped"
    );
    // Same machine names, another farm: kept; the pin: kept.
    let mut keep = theirs.clone();
    keep.push(pinned.clone());
    keep.extend(toplevels(&last, &bed.fleet).into_values());
    substitute_all(&bed, &nginx, &clients.path().join("kept"), &keep);

    let out = bed
        .farm
        .farmctl(&bed.fleet, ["cache", "unpin", "alpha-first"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let listing = |cache: &Path| -> BTreeSet<String> {
        let mut all = BTreeSet::new();
        for d in [cache.to_owned(), cache.join("nar")] {
            for e in std::fs::read_dir(d).unwrap().flatten() {
                all.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
        all
    };
    let before = listing(&bed.cache);
    let (text, _) = (
        stdout_of(&bed.farm.farmctl(&bed.fleet, ["cache", "gc", "--dry-run"])),
        (),
    );
    assert!(
        text.contains("would delete") && text.contains(&pinned),
        "{text}"
    );
    let (_, dry) = farmctl_gc(&bed, &["--dry-run"]);
    assert_eq!(listing(&bed.cache), before, "a dry run deleted something");
    let (_, real) = farmctl_gc(&bed, &[]);
    assert_eq!(dry["deleted"], real["deleted"]);
    assert_eq!(dry["freed_bytes"], real["freed_bytes"]);
    let deleted: Vec<&str> = real["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(deleted.contains(&pinned.as_str()), "{real:#}");
    assert!(!has_narinfo(&bed.cache, &pinned));
    let gone: BTreeSet<String> = before.difference(&listing(&bed.cache)).cloned().collect();
    for p in &deleted {
        assert!(gone.contains(&format!("{}.narinfo", &p[11..43])), "{p}");
    }
    // The other farm's generation is still whole.
    substitute_all(&bed, &nginx, &clients.path().join("theirs"), &theirs);
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
}

/// `farmctl publish --pin NAME`: a closure published by hand (no machine's generation) is kept
/// by GC, one published without it is collected, and the human output says why. `--pin` with
/// several store paths, or a bad name, is refused before anything is uploaded.
#[test]
fn publish_pin_keeps_a_hand_published_closure_through_gc() {
    let mut bed = CacheBed::new();
    retention(&mut bed.farm, 1);
    let nginx = Nginx::serve(&bed.cache);
    let clients = tempfile::tempdir().unwrap();
    night(&bed);
    let kept = bed.random_chain(2, 1);
    let dropped = bed.random_chain(2, 2);
    let fresh = bed.random_chain(1, 3);

    let summary = bed.publish_ok(&[kept.clone(), "--pin".into(), "hotfix".into()]);
    assert_eq!(summary["pin"]["name"], "hotfix", "{summary:#}");
    assert_eq!(summary["pin"]["path"], kept.as_str(), "{summary:#}");
    assert_eq!(summary["uploaded_paths"], 2, "{summary:#}");

    let out = bed.farm.farmctl(&bed.fleet, ["publish", dropped.as_str()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("farmctl cache pin PATH --name NAME"),
        "no advice to pin: {}",
        stderr_of(&out)
    );

    for (args, why) in [
        (
            vec!["--pin", "two", kept.as_str(), fresh.as_str()],
            "gave 2 store paths",
        ),
        (vec!["--pin", "../x", fresh.as_str()], "../x"),
    ] {
        let out = bed
            .farm
            .farmctl(&bed.fleet, ["publish"].into_iter().chain(args.clone()));
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            stderr_of(&out).contains(why),
            "{args:?}: {}",
            stderr_of(&out)
        );
        assert!(!has_narinfo(&bed.cache, &fresh), "{args:?} uploaded");
    }

    std::thread::sleep(Duration::from_millis(1100)); // past the 1 s grace
    let (_, report) = farmctl_gc(&bed, &[]);
    let deleted = report["deleted"].as_array().unwrap();
    assert!(deleted.iter().any(|p| p == dropped.as_str()), "{report:#}");
    assert!(!has_narinfo(&bed.cache, &dropped));
    assert!(has_narinfo(&bed.cache, &kept));
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    substitute_all(&bed, &nginx, &clients.path().join("pinned"), &[kept]);
}

/// `farmctl cache forget MACHINE`: a machine that left the fleet keeps its last generations
/// forever otherwise. Refused while the latest run still built it; a dry run removes nothing;
/// then only this farm's records go, GC collects the closure, and another farm's record of a
/// machine of that name keeps what it protects.
#[test]
fn forget_lets_gc_collect_a_machine_that_left_the_fleet() {
    let mut bed = CacheBed::new();
    retention(&mut bed.farm, 1);
    let nginx = Nginx::serve(&bed.cache);
    let clients = tempfile::tempdir().unwrap();
    let first = toplevels(&night(&bed), &bed.fleet);
    let beta = first["beta"].clone();
    let forget = |args: &[&str]| {
        bed.farm
            .farmctl(&bed.fleet, ["cache", "forget"].iter().chain(args).copied())
    };

    let out = forget(&["beta"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("`beta` is still in the fleet"),
        "{}",
        stderr_of(&out)
    );

    // Another farm sharing the cache has a machine called beta too.
    let theirs = bed.random_chain(1, 1);
    bed.publish_ok(std::slice::from_ref(&theirs));
    let key = SigningKey::load(&bed.secret_key).unwrap();
    write_generation(
        &bed.cache,
        &key,
        "otherfarm",
        "beta",
        &theirs.parse().unwrap(),
        0,
    );

    bed.fleet.remove_machine("beta");
    let last = night(&bed);
    assert!(!toplevels(&last, &bed.fleet).contains_key("beta"));
    std::thread::sleep(Duration::from_millis(1100)); // past the 1 s grace
    let (_, report) = farmctl_gc(&bed, &[]);
    assert!(
        has_narinfo(&bed.cache, &beta),
        "kept by its record: {report:#}"
    );

    let records = || {
        let mut names: Vec<String> = std::fs::read_dir(bed.cache.join("farmd/machines/beta"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = records();
    assert_eq!(before.len(), 3, "ours, latest.json, theirs: {before:?}");
    let out = forget(&["beta", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dry["records"].as_array().unwrap().len(), 2, "{dry:#}");
    assert_eq!(dry["other_farms_records"], 1, "{dry:#}");
    assert_eq!(records(), before, "a dry run removed something");

    let out = forget(&["beta"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("removed 2 generation record(s) of `beta`"));
    let left = records();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("-otherfarm-"), "{left:?}");

    let (_, report) = farmctl_gc(&bed, &[]);
    let deleted = report["deleted"].as_array().unwrap();
    assert!(deleted.iter().any(|p| p == beta.as_str()), "{report:#}");
    assert!(!has_narinfo(&bed.cache, &beta));
    assert_eq!(closure_problems(&bed.cache), Vec::<String>::new());
    let mut keep = vec![theirs];
    keep.extend(toplevels(&last, &bed.fleet).into_values());
    substitute_all(&bed, &nginx, &clients.path().join("kept"), &keep);

    let out = forget(&["beta"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("no generation record of `beta` written by this farm")
            && stderr_of(&out).contains("1 record(s) of it are other farms'"),
        "{}",
        stderr_of(&out)
    );
}
