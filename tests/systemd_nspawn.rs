//! The unit files in systemd/ under a real systemd: a Debian bookworm container booted with
//! `systemd-nspawn -b` (see tests/nspawn/mod.rs), farmd installed in it as README.md tells a
//! Debian user to, running as the user farmd against Debian's own Nix daemon
//! (nix-setup-systemd's nix-daemon.socket). Every check asks systemd itself (`systemctl show`,
//! `journalctl`, `systemd-inhibit --list`), never farmd's own word.
//!
//! Each test boots its own container (< 1 s from the cached rootfs; the first test of a machine
//! debootstraps it, 1–2 min). Needs root, systemd-container and debootstrap.

mod nspawn;

use std::time::Duration;

use nspawn::Container;

/// Writes a drop-in for `unit` and reloads systemd.
fn drop_in(ct: &Container, unit: &str, name: &str, text: &str) {
    ct.write(&format!("/etc/systemd/system/{unit}.d/{name}.conf"), text);
    ct.sh("systemctl daemon-reload");
}

fn journal_has(ct: &Container, unit: &str, needle: &str) -> bool {
    String::from_utf8_lossy(
        &ct.sh_unchecked(&format!("journalctl --no-pager -o cat -u {unit}"))
            .stdout,
    )
    .contains(needle)
}

#[test]
fn installed_units_verify_without_a_word() {
    let ct = Container::boot("verify");
    // Inside, the paths in ExecStart= exist as a user installed them, so this is the real check
    // (the host-side check in tests/systemd_units.rs has to point them at target/debug).
    let out = ct.sh(
        "cd /etc/systemd/system && systemd-analyze verify farmd.service farmd.socket \
         farmd-nightly.service farmd-nightly.timer 2>&1",
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "",
        "systemd-analyze verify printed something"
    );
}

#[test]
fn farmd_goes_active_only_after_ready() {
    let ct = Container::boot("ready");

    // Without the notification socket farmd never sends READY=1: it runs and even serves its
    // socket, but systemd keeps the unit activating until the start times out. (NotifyAccess=none
    // would not do: systemd turns it back into `main` for Type=notify.)
    drop_in(
        &ct,
        "farmd.service",
        "no-notify",
        "[Service]\nExecStart=\nExecStart=/usr/bin/env -u NOTIFY_SOCKET /usr/local/bin/farmd \
         --config /etc/farmd/farmd.toml\nTimeoutStartSec=4s\nRestart=no\n",
    );
    ct.sh("systemctl start --no-block farmd.service");
    ct.wait_until("farmd's main process", Duration::from_secs(10), || {
        ct.property("farmd.service", "MainPID") != "0"
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ct.property("farmd.service", "ActiveState"), "activating");
    ct.wait_until("the start to time out", Duration::from_secs(15), || {
        ct.property("farmd.service", "ActiveState") == "failed"
    });
    assert_eq!(ct.property("farmd.service", "Result"), "timeout");

    // The real unit: `systemctl start` returns once farmd said READY=1, and its STATUS= line
    // is what `systemctl status` shows.
    ct.sh("rm -r /etc/systemd/system/farmd.service.d && systemctl daemon-reload && systemctl reset-failed farmd.service");
    ct.sh("systemctl start farmd.service");
    assert_eq!(ct.property("farmd.service", "ActiveState"), "active");
    assert_eq!(ct.property("farmd.service", "SubState"), "running");
    assert!(journal_has(&ct, "farmd.service", "farmd ready"));
    assert_ne!(
        ct.property("farmd.service", "StatusText"),
        "",
        "no STATUS= line"
    );

    // ExecReload= (SIGHUP): RELOADING=1 … READY=1, still active, the config re-read.
    ct.sh("systemctl reload farmd.service");
    assert_eq!(ct.property("farmd.service", "ActiveState"), "active");
    assert!(journal_has(&ct, "farmd.service", "configuration reloaded"));
}

#[test]
fn a_bad_config_fails_the_start_and_is_not_restarted() {
    let ct = Container::boot("badconfig");
    drop_in(
        &ct,
        "farmd.service",
        "fast-restart",
        "[Service]\nRestartSec=500ms\n",
    );
    ct.write(
        "/etc/farmd/farmd.toml",
        "[repo]\nurl = \"file:///x\"\nbranhc = \"main\"\n",
    );
    let out = ct.sh_unchecked("systemctl start farmd.service");
    assert!(!out.status.success(), "farmd started with a bad config");
    // Exit 78 is in RestartPreventExitStatus=: three RestartSec later still no restart.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(ct.property("farmd.service", "ActiveState"), "failed");
    assert_eq!(ct.property("farmd.service", "ExecMainStatus"), "78");
    assert_eq!(ct.property("farmd.service", "NRestarts"), "0");
    assert!(
        journal_has(&ct, "farmd.service", "branhc"),
        "the error does not name the key"
    );
}

#[test]
fn the_watchdog_restarts_a_hung_farmd() {
    let ct = Container::boot("watchdog");
    drop_in(
        &ct,
        "farmd.service",
        "short-watchdog",
        "[Service]\nWatchdogSec=2s\nRestartSec=500ms\nLimitCORE=0\n",
    );
    ct.sh("systemctl start farmd.service");
    // farmd pings at WatchdogSec/2: alive for three periods, no restart.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(ct.property("farmd.service", "NRestarts"), "0");
    let hung = ct.property("farmd.service", "MainPID");
    ct.sh(&format!("kill -STOP {hung}"));
    ct.wait_until("a restart by the watchdog", Duration::from_secs(20), || {
        let pid = ct.property("farmd.service", "MainPID");
        pid != hung && pid != "0" && ct.property("farmd.service", "ActiveState") == "active"
    });
    assert_eq!(ct.property("farmd.service", "NRestarts"), "1");
    assert!(journal_has(&ct, "farmd.service", "Watchdog timeout"));
    // And the new farmd answers.
    ct.sh("farmctl status");
}

#[test]
fn farmctl_reaches_farmd_through_the_activated_socket() {
    let ct = Container::boot("socket");
    ct.sh("systemctl start farmd.socket");
    assert_eq!(ct.property("farmd.service", "ActiveState"), "inactive");
    // systemd owns the socket: mode 0660, group farmd.
    assert_eq!(
        ct.stdout("stat -c '%a %U %G' /run/farmd/control.sock"),
        "660 farmd farmd"
    );

    ct.sh("useradd -m -G farmd alice && useradd -m bob");
    ct.sh("su alice -c 'farmctl status'");
    assert_eq!(ct.property("farmd.service", "ActiveState"), "active");
    assert!(journal_has(
        &ct,
        "farmd.service",
        "control socket passed by systemd"
    ));
    // Not in the group: farmctl says the daemon is unreachable (exit 2).
    let out = ct.sh_unchecked("su bob -c 'farmctl status'");
    assert_eq!(out.status.code(), Some(2), "bob reached farmd: {out:?}");

    // farmd stopped or restarted: the socket stays, and the next farmctl starts farmd again.
    ct.sh("systemctl stop farmd.service");
    assert_eq!(ct.property("farmd.socket", "ActiveState"), "active");
    ct.sh("test -S /run/farmd/control.sock");
    ct.sh("su alice -c 'farmctl status'");
    assert_eq!(ct.property("farmd.service", "ActiveState"), "active");
    ct.sh("systemctl restart farmd.service && su alice -c 'farmctl status'");
}

/// The nightly timer's service runs a real cycle: farmd (user farmd, hardened) clones the fleet
/// over ssh, updates the lock, builds both machines through the Nix daemon, publishes over SFTP
/// to a cache nginx serves, and pushes the lock; the timer's unit reports the run's outcome.
#[test]
fn the_nightly_timer_runs_a_real_cycle() {
    let ct = Container::boot("nightly");
    ct.sh("BETA_SLEEP=6 /opt/nixfarm/tests/fleet.sh");
    ct.sh("systemctl start farmd.socket");
    // Fire in a second instead of at 03:00 (the calendar itself is checked by verify).
    drop_in(
        &ct,
        "farmd-nightly.timer",
        "now",
        "[Timer]\nOnCalendar=\nOnActiveSec=1s\nRandomizedDelaySec=0\n",
    );
    ct.sh("systemctl start farmd-nightly.timer");

    // While beta builds (it sleeps), logind shows farmd's delay lock.
    ct.wait_until("farmd's inhibitor lock", Duration::from_secs(120), || {
        String::from_utf8_lossy(
            &ct.sh_unchecked("systemd-inhibit --list --no-legend --no-pager")
                .stdout,
        )
        .lines()
        .any(|l| l.contains("farmd") && l.contains("delay"))
    });
    ct.wait_until(
        "the nightly service to finish",
        Duration::from_secs(300),
        || {
            ct.property("farmd-nightly.service", "ExecMainExitTimestampMonotonic") != "0"
                && ct.property("farmd-nightly.service", "ActiveState") != "activating"
        },
    );
    let result = ct.property("farmd-nightly.service", "Result");
    assert_eq!(
        (
            result.as_str(),
            ct.property("farmd-nightly.service", "ExecMainStatus")
                .as_str()
        ),
        ("success", "0"),
        "the nightly run failed; its journal:\n{}\nfarmd's:\n{}",
        ct.stdout("journalctl --no-pager -o cat -u farmd-nightly.service"),
        ct.stdout("journalctl --no-pager -o cat -u farmd.service | tail -n 60"),
    );
    // The lock is released with the run.
    assert!(!String::from_utf8_lossy(
        &ct.sh("systemd-inhibit --list --no-legend --no-pager")
            .stdout
    )
    .contains("farmd"));

    // journald got the structured fields.
    let journal = ct.stdout("journalctl --no-pager -o json -u farmd.service");
    let entries: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let field =
        |e: &serde_json::Value, k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let has = |pred: &dyn Fn(&serde_json::Value) -> bool| entries.iter().any(pred);
    assert!(
        has(&|e| field(e, "FARM_PHASE").as_deref() == Some("build")
            && field(e, "FARM_RUN").is_some()),
        "no journal entry with FARM_RUN and FARM_PHASE=build"
    );
    for machine in ["alpha", "beta"] {
        assert!(
            has(&|e| field(e, "FARM_MACHINE").as_deref() == Some(machine)
                && field(e, "FARM_RUN").is_some()),
            "no journal entry with FARM_RUN and FARM_MACHINE={machine}"
        );
    }

    // What was published substitutes into an empty store over HTTP with signatures required.
    let record: serde_json::Value =
        serde_json::from_str(&ct.stdout("farmctl history -n 1 --json")).unwrap();
    let record = record.as_array().map(|a| a[0].clone()).unwrap_or(record);
    for m in record["machines"].as_array().unwrap() {
        let toplevel = m["toplevel"].as_str().unwrap();
        ct.sh(&format!(
            "nix-store --store /tmp/client -r {toplevel} --max-jobs 0 \
             --option substituters http://127.0.0.1:8080 --option require-sigs true \
             --option trusted-public-keys \"$(cat /etc/farmd/cache.pub)\" >/dev/null"
        ));
    }
    // The lock commit reached the remote (push = "built": everything built and published).
    assert_eq!(
        ct.stdout("su git -c 'git -C /srv/git/fleet.git log -1 --format=%an main'"),
        "farmd"
    );

    // A machine that fails: the timer's service fails with farmctl's exit 1.
    ct.sh(
        "su git -c 'set -e; rm -rf /tmp/w; git clone -q /srv/git/fleet.git /tmp/w; cd /tmp/w; \
         echo \"[ \\\"beta\\\" ]\" > failing.nix; git commit -qam \"beta fails\"; git push -q origin main'",
    );
    let out = ct.sh_unchecked("systemctl start farmd-nightly.service");
    assert!(!out.status.success());
    assert_eq!(ct.property("farmd-nightly.service", "Result"), "exit-code");
    assert_eq!(ct.property("farmd-nightly.service", "ExecMainStatus"), "1");
}
