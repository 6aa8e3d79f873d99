//! The long-running farmd end to end: the real binary with a NOTIFY_SOCKET the test owns, the
//! real control socket driven by the real farmctl (and by raw protocol lines), real nix.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{machine, stderr_of, stdout_of, toml_str, Farm, Fleet, RunningFarmd};
use rustix::process::Signal;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        stderr_of(out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout_of(out)))
}

/// One raw protocol exchange: the lines farmd answers with.
fn raw(socket: &std::path::Path, request: &[u8]) -> Vec<serde_json::Value> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    BufReader::new(s)
        .lines()
        .map_while(Result::ok)
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect()
}

#[test]
fn trigger_wait_follows_the_run_and_exits_with_its_result() {
    let fleet = Fleet::new();
    fleet.bump();
    let farm = Farm::new(&fleet);
    let mut farmd = RunningFarmd::start(&farm, &fleet, &[]);

    let out = farm.farmctl(&fleet, ["trigger", "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(text.contains("build"), "{text}");
    for name in fleet.machine_names() {
        assert!(text.contains(&name), "{name} missing from:\n{text}");
    }
    assert!(text.contains("succeeded"), "{text}");
    // STATUS= told systemd what was happening, then went back to idle.
    farmd.wait_for(Duration::from_secs(10), |m| {
        m.contains("STATUS=idle; last run 1 succeeded")
    });
    assert!(
        farmd.messages.iter().any(|m| m.contains("STATUS=building")),
        "{:?}",
        farmd.messages
    );

    // Status over the socket: every machine's last success.
    let status = json(&farm.farmctl(&fleet, ["status", "--json"]));
    assert!(status["active"].is_null());
    for name in fleet.machine_names() {
        let m = status["machines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name.as_str())
            .unwrap();
        assert_eq!(m["last_status"], "built");
        assert!(m["last_success"]["toplevel"].is_string());
        assert!(m["failing_since"].is_null());
    }
    let human = farm.farmctl(&fleet, ["status"]);
    assert!(
        stdout_of(&human).contains("LAST SUCCESS"),
        "{}",
        stdout_of(&human)
    );

    // A failing machine makes `trigger --wait` exit 1, and status shows it failing.
    fleet.set_failing("beta", true);
    let out = farm.farmctl(&fleet, ["trigger", "--wait", "--no-update"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout_of(&out));
    let status = json(&farm.farmctl(&fleet, ["status", "--json"]));
    let beta = status["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "beta")
        .unwrap();
    assert_eq!(beta["last_status"], "build-failed");
    assert!(beta["failing_since"].is_i64(), "{beta:#}");

    // history/show/log through the daemon.
    let runs = json(&farm.farmctl(&fleet, ["history", "--json"]));
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[0]["trigger"], "manual");
    assert!(runs[0]["requested_by"]
        .as_str()
        .unwrap()
        .contains("farmctl"));
    let show = json(&farm.farmctl(&fleet, ["show", "2", "--json"]));
    assert_eq!(machine(&show, "beta")["status"], "build-failed");
    let log = farm.farmctl(&fleet, ["log", "2", "beta"]);
    assert!(
        stdout_of(&log).contains(&Fleet::failure_message("beta")),
        "{}",
        stdout_of(&log)
    );
}

#[test]
fn triggers_during_a_run_coalesce_into_one_follow_up_and_every_request_is_answered() {
    let fleet = Fleet::new();
    fleet.set_sleep("alpha", 8);
    let farm = Farm::new(&fleet);
    let _farmd = RunningFarmd::start(&farm, &fleet, &[]);
    let socket = farm.socket();

    let first = raw(&socket, b"{\"version\":1,\"verb\":\"trigger\"}\n");
    assert_eq!(first.last().unwrap()["ok"]["position"], "starting");
    // Wait until the run is active.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = raw(&socket, b"{\"version\":1,\"verb\":\"status\"}\n");
        if !s[0]["ok"]["active"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "the run never became active");
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut latencies = Vec::new();
    let mut positions = std::collections::BTreeMap::new();
    for i in 0..1000 {
        let request: &[u8] = if i % 2 == 0 {
            b"{\"version\":1,\"verb\":\"status\"}\n"
        } else {
            b"{\"version\":1,\"verb\":\"trigger\",\"machines\":[\"beta\"]}\n"
        };
        let started = Instant::now();
        let lines = raw(&socket, request);
        let took = started.elapsed();
        let last = lines.last().expect("an answer");
        assert!(last["ok"].is_object(), "request {i}: {last}");
        if i % 2 == 0 {
            assert!(
                !last["ok"]["active"].is_null(),
                "the run ended during the burst"
            );
            latencies.push(took);
        } else {
            *positions
                .entry(last["ok"]["position"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!(
        "status while a run is active: p50 {:?}, p99 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        p99,
        latencies.last().unwrap()
    );
    // Exactly one follow-up was queued; every later trigger merged into it.
    assert_eq!(positions.get("queued"), Some(&1), "{positions:?}");
    assert_eq!(positions.get("coalesced"), Some(&499), "{positions:?}");

    // Two runs in all: the active one and the single follow-up (for beta only).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = json(&farm.farmctl(&fleet, ["history", "--json"]));
        let runs = runs.as_array().unwrap();
        if runs.len() == 2 && runs.iter().all(|r| r["status"] != "running") {
            let follow_up = &runs[0];
            let names: Vec<&str> = follow_up["machines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["beta"]);
            break;
        }
        assert!(runs.len() <= 2, "more than one follow-up ran: {runs:#?}");
        assert!(Instant::now() < deadline, "runs did not finish: {runs:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn malformed_oversized_and_unknown_requests_get_errors_and_the_daemon_carries_on() {
    let fleet = Fleet::new();
    let farm = Farm::new(&fleet);
    let _farmd = RunningFarmd::start(&farm, &fleet, &[]);
    let socket = farm.socket();

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{this is not json\n".to_vec(), "not JSON"),
        (
            b"{\"version\":1,\"verb\":\"reboot\"}\n".to_vec(),
            "unknown variant",
        ),
        (b"{\"verb\":\"status\"}\n".to_vec(), "version"),
        (
            b"{\"version\":7,\"verb\":\"status\"}\n".to_vec(),
            "version 7",
        ),
        (
            b"{\"version\":1,\"verb\":\"trigger\",\"machines\":[\"../../etc\"]}\n".to_vec(),
            "machine name",
        ),
        (vec![b'x'; 200 * 1024], "too large"),
        (
            b"{\"version\":1,\"verb\":\"show\",\"run\":999}\n".to_vec(),
            "no run 999",
        ),
    ];
    for (request, expect) in cases {
        let lines = raw(&socket, &request);
        let err = lines[0]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{lines:?}"));
        assert!(err.contains(expect), "expected `{expect}` in `{err}`");
    }
    let out = farm.farmctl(&fleet, ["status", "--json"]);
    assert!(
        out.status.success(),
        "the daemon did not survive: {}",
        stderr_of(&out)
    );
}

#[test]
fn sighup_reloads_a_good_config_and_keeps_the_old_one_when_the_new_is_bad() {
    let fleet = Fleet::new();
    let mut farm = Farm::new(&fleet);
    let mut farmd = RunningFarmd::start(&farm, &fleet, &[]);

    farm.config.set("schedule", "cron", &toml_str("0 3 * * *"));
    farm.write_config();
    farmd.signal(Signal::HUP);
    farmd.wait_for(Duration::from_secs(10), |m| m.contains("RELOADING=1"));
    farmd.wait_for(Duration::from_secs(10), |m| m.contains("READY=1"));
    let status = json(&farm.farmctl(&fleet, ["status", "--json"]));
    assert!(status["next_run"].is_i64(), "{status:#}");

    // A broken file: rejected, logged, the old settings stay (the schedule is still there).
    std::fs::write(farm.dir().join("farmd.toml"), "[build]\njbos = 1\n").unwrap();
    farmd.signal(Signal::HUP);
    farmd.wait_for(Duration::from_secs(10), |m| m.contains("READY=1"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(farmd.stderr().contains("invalid"), "{}", farmd.stderr());
    let out = farm.farmctl(
        &fleet,
        [
            "--socket",
            farm.socket().to_str().unwrap(),
            "status",
            "--json",
        ],
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        status["next_run"].is_i64(),
        "old config lost: {}",
        stderr_of(&out)
    );
}

#[test]
fn the_watchdog_is_pinged_at_half_its_interval() {
    let fleet = Fleet::new();
    let farm = Farm::new(&fleet);
    let mut farmd = RunningFarmd::start(&farm, &fleet, &[("WATCHDOG_USEC", "1000000")]);
    let started = Instant::now();
    for _ in 0..3 {
        farmd.wait_for(Duration::from_secs(3), |m| m.contains("WATCHDOG=1"));
    }
    // Three pings at 0.5 s intervals (the first comes at once).
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn sigterm_during_a_build_cancels_the_run_kills_nix_and_exits_0() {
    let fleet = Fleet::new();
    fleet.set_sleep("alpha", 120);
    let farm = Farm::new(&fleet);
    let mut farmd = RunningFarmd::start(&farm, &fleet, &[]);
    farmd.trigger_and_wait_building(&farm, &fleet, "alpha");
    std::thread::sleep(Duration::from_millis(500));

    farmd.signal(Signal::TERM);
    farmd.wait_for(Duration::from_secs(10), |m| m.contains("STOPPING=1"));
    assert_eq!(
        farmd.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        farmd.stderr()
    );

    let run = farm.last_run(&fleet);
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(machine(&run, "alpha")["status"], "cancelled");
    fleet.assert_no_builder_left();
}

#[test]
fn farmctl_cancel_stops_the_active_run() {
    let fleet = Fleet::new();
    fleet.set_sleep("gamma", 120);
    let farm = Farm::new(&fleet);
    let mut farmd = RunningFarmd::start(&farm, &fleet, &[]);
    let waiter = {
        let config = farm.write_config();
        let mut cmd = fleet.env().command(env!("CARGO_BIN_EXE_farmctl"));
        cmd.arg("--config").arg(config).args(["trigger", "--wait"]);
        cmd.stdout(std::process::Stdio::piped()).spawn().unwrap()
    };
    farmd.wait_for(Duration::from_secs(30), |m| {
        m.contains("STATUS=building") && m.contains("gamma")
    });
    let out = json(&farm.farmctl(&fleet, ["cancel", "--json"]));
    assert_eq!(out["cancelled"], 1);
    let waited = waiter.wait_with_output().unwrap();
    assert_eq!(waited.status.code(), Some(3), "{}", stdout_of(&waited));
    assert_eq!(farm.last_run(&fleet)["status"], "cancelled");
    fleet.assert_no_builder_left();
    // The daemon goes on serving.
    json(&farm.farmctl(&fleet, ["status", "--json"]));
}

#[test]
fn a_missed_scheduled_run_is_caught_up_at_start_and_interrupted_runs_are_marked() {
    let fleet = Fleet::new();
    let mut farm = Farm::new(&fleet);
    // A run long ago, then a daemon that was "down" across several 03:00s.
    assert_eq!(farm.once(&fleet).status.code(), Some(0));
    let db = farm.state().join("history.sqlite");
    let sql = "UPDATE runs SET started_at = started_at - 3*86400, finished_at = finished_at - 3*86400;\
               INSERT INTO runs (trigger, started_at, status) VALUES ('manual', strftime('%s','now') - 2*86400, 'running');";
    common::run(std::process::Command::new("sqlite3").arg(&db).arg(sql));
    farm.config.set("schedule", "cron", &toml_str("0 3 * * *"));

    let mut farmd = RunningFarmd::start(&farm, &fleet, &[]);
    farmd.wait_for(Duration::from_secs(60), |m| {
        m.contains("STATUS=idle; last run 3")
    });
    let runs = json(&farm.farmctl(&fleet, ["history", "--json"]));
    assert_eq!(runs[0]["trigger"], "catch-up", "{runs:#}");
    assert_eq!(runs[0]["status"], "succeeded");
    assert_eq!(runs[1]["status"], "interrupted");
}

#[test]
fn log_follow_streams_a_build_log_until_the_run_ends() {
    let fleet = Fleet::new();
    fleet.set_sleep("alpha", 3);
    let farm = Farm::new(&fleet);
    let mut farmd = RunningFarmd::start(&farm, &fleet, &[]);
    farmd.trigger_and_wait_building(&farm, &fleet, "alpha");
    let started = Instant::now();
    let out = farm.farmctl(&fleet, ["log", "1", "alpha", "--follow"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    // It kept following until the build (sleeping 3 s) ended, and printed the builder's lines.
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "returned at once"
    );
    assert!(text.contains("nixfarm-testbed: sleeping 3 s"), "{text}");
    assert!(
        text.contains("nixfarm-testbed: building nixos-system-alpha"),
        "{text}"
    );
    assert_eq!(farm.last_run(&fleet)["status"], "succeeded");
}
