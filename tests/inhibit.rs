//! `daemon::inhibit` against a real D-Bus: a private `dbus-daemon` (Debian `dbus-daemon`) with
//! a system-bus-like policy, and a stand-in logind that owns org.freedesktop.login1 on it and
//! implements Manager.Inhibit the way logind does: it hands out one end of a socket pair and
//! keeps the other, so it sees EOF exactly when every copy of the lock's fd is closed.
//!
//! The stand-in uses zbus's "service" feature, a dev-dependency feature only: under Cargo's
//! feature resolver 2, `cargo build` of farmd does not get it.
//!
//! `Inhibitor::take` finds the bus through DBUS_SYSTEM_BUS_ADDRESS as it would on a host that
//! sets it. The tests change that variable, so they take `ENV` first and run one at a time.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nixfarm::daemon::inhibit::{Inhibitor, TIMEOUT};

static ENV: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private bus: `dbus-daemon --nofork` on a socket in a temp dir, killed on drop.
struct Bus {
    child: Child,
    address: String,
    dir: tempfile::TempDir,
}

impl Bus {
    fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("system_bus_socket");
        let config = dir.path().join("system.conf");
        std::fs::write(&config, config_text(&socket)).unwrap();
        // Its complaints (policy rejections, "cannot raise the fd limit") go to a file kept
        // out of the test output; `logind` names it when something does not work.
        let log = std::fs::File::create(dir.path().join("dbus-daemon.log")).unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--print-address", "--nofork", "--nopidfile"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("cannot start dbus-daemon (Debian package `dbus-daemon`)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line.trim().to_owned();
        assert!(address.starts_with("unix:"), "dbus-daemon printed {line:?}");
        Bus {
            child,
            address,
            dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Like the system bus (Debian's /usr/share/dbus-1/system.conf): nothing may own a name or
/// call a method unless allowed, and only logind's name and interface are.
fn config_text(socket: &Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow own="org.freedesktop.login1"/>
    <allow send_destination="org.freedesktop.login1" send_interface="org.freedesktop.login1.Manager"/>
  </policy>
</busconfig>
"#,
        socket.display()
    )
}

#[derive(Clone, Copy)]
enum Behaviour {
    Grant,
    Refuse,
    Hang,
}

/// One Inhibit call as the stand-in saw it, with its end of the socket pair.
struct Call {
    args: [String; 4],
    peer_end: UnixStream,
}

struct FakeLogind {
    behaviour: Behaviour,
    calls: Arc<Mutex<Vec<Call>>>,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogind {
    async fn inhibit(
        &self,
        what: &str,
        who: &str,
        why: &str,
        mode: &str,
    ) -> zbus::fdo::Result<zbus::OwnedFd> {
        match self.behaviour {
            Behaviour::Refuse => Err(zbus::fdo::Error::AccessDenied(
                "Permission denied".to_owned(),
            )),
            Behaviour::Hang => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Err(zbus::fdo::Error::Failed("too late".to_owned()))
            }
            Behaviour::Grant => {
                let (ours, theirs) = UnixStream::pair().unwrap();
                ours.set_nonblocking(true).unwrap();
                self.calls.lock().unwrap().push(Call {
                    args: [what, who, why, mode].map(str::to_owned),
                    peer_end: ours,
                });
                // zbus closes our copy once the reply is sent.
                Ok(std::os::fd::OwnedFd::from(theirs).into())
            }
        }
    }
}

/// Starts the stand-in logind on `bus`; it serves until the returned connection is dropped.
async fn logind(bus: &Bus, behaviour: Behaviour) -> (zbus::Connection, Arc<Mutex<Vec<Call>>>) {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let build = zbus::connection::Builder::address(bus.address.as_str())
        .name("org.freedesktop.login1")
        .serve_at(
            "/org/freedesktop/login1",
            FakeLogind {
                behaviour,
                calls: calls.clone(),
            },
        )
        .build();
    let log = bus.dir.path().join("dbus-daemon.log");
    let connection = tokio::time::timeout(Duration::from_secs(10), build)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the stand-in logind got no answer from the bus; see {}",
                log.display()
            )
        })
        .unwrap_or_else(|e| {
            panic!(
                "the stand-in logind cannot serve on the private bus ({e}); see {}",
                log.display()
            )
        });
    (connection, calls)
}

/// True when the peer end reads EOF (every copy of the lock's fd closed); false while it
/// would block.
fn at_eof(peer_end: &mut UnixStream) -> bool {
    match peer_end.read(&mut [0u8; 16]) {
        Ok(0) => true,
        Ok(n) => panic!("the lock's fd was written to ({n} bytes)"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("reading the peer end: {e}"),
    }
}

#[tokio::test]
async fn the_lock_is_taken_with_farmds_request_and_released_on_drop() {
    let _env = ENV.lock().await;
    let bus = Bus::start();
    let (_logind, calls) = logind(&bus, Behaviour::Grant).await;
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);

    let started = Instant::now();
    let lock = Inhibitor::default()
        .take()
        .await
        .expect("no lock from the stand-in logind");
    let took = started.elapsed();

    let mut call = {
        let mut calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        calls.pop().unwrap()
    };
    assert_eq!(
        call.args,
        [
            "sleep:shutdown",
            "farmd",
            "building and publishing the fleet",
            "delay"
        ]
    );
    // Held: the bus connection `take` used is gone, the fd is not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !at_eof(&mut call.peer_end),
        "the lock was released while held"
    );

    drop(lock);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !at_eof(&mut call.peer_end) {
        assert!(
            Instant::now() < deadline,
            "dropping the lock did not close its fd"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::env::remove_var("DBUS_SYSTEM_BUS_ADDRESS");
    eprintln!("lock taken in {took:?}");
}

#[tokio::test]
async fn a_dead_bus_socket_means_no_lock_at_once() {
    let _env = ENV.lock().await;
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var(
        "DBUS_SYSTEM_BUS_ADDRESS",
        format!("unix:path={}", dir.path().join("no-bus-here").display()),
    );
    let started = Instant::now();
    assert!(Inhibitor::default().take().await.is_none());
    let took = started.elapsed();
    std::env::remove_var("DBUS_SYSTEM_BUS_ADDRESS");
    eprintln!("no bus: None in {took:?}");
    assert!(took < Duration::from_millis(500), "took {took:?}");
}

#[tokio::test]
async fn a_bus_without_logind_or_a_refusal_means_no_lock() {
    let _env = ENV.lock().await;
    let bus = Bus::start();
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);

    // Nobody owns org.freedesktop.login1 (a container without logind).
    let started = Instant::now();
    assert!(Inhibitor::default().take().await.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // logind says no (polkit denied it).
    let (_logind, calls) = logind(&bus, Behaviour::Refuse).await;
    let started = Instant::now();
    assert!(Inhibitor::default().take().await.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(calls.lock().unwrap().is_empty());
    std::env::remove_var("DBUS_SYSTEM_BUS_ADDRESS");
}

#[tokio::test]
async fn a_logind_that_never_answers_costs_the_timeout_not_a_hang() {
    let _env = ENV.lock().await;
    let bus = Bus::start();
    let (_logind, _calls) = logind(&bus, Behaviour::Hang).await;
    std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);
    let started = Instant::now();
    assert!(Inhibitor::default().take().await.is_none());
    let took = started.elapsed();
    std::env::remove_var("DBUS_SYSTEM_BUS_ADDRESS");
    eprintln!("silent logind: None in {took:?}");
    assert!(
        took >= TIMEOUT && took < TIMEOUT + Duration::from_secs(1),
        "took {took:?}"
    );
}

/// The real farmd, through a run: the lock is taken when the run starts, held while it builds,
/// and released once the run is recorded.
#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_holds_the_lock_for_exactly_the_run() {
    use common::{stderr_of, Farm, Fleet, RunningFarmd};
    let bus = Bus::start();
    let (_logind, calls) = logind(&bus, Behaviour::Grant).await;
    let fleet = Fleet::new();
    fleet.set_sleep("alpha", 3);
    let farm = Farm::new(&fleet);
    let farmd = tokio::task::block_in_place(|| {
        RunningFarmd::start(
            &farm,
            &fleet,
            &[("DBUS_SYSTEM_BUS_ADDRESS", bus.address.as_str())],
        )
    });
    assert!(calls.lock().unwrap().is_empty(), "a lock without a run");

    let trigger = {
        let config = farm.write_config();
        let mut cmd = fleet.env().command(env!("CARGO_BIN_EXE_farmctl"));
        cmd.arg("--config").arg(config).args(["trigger", "--wait"]);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no Inhibit call:\n{}",
            farmd.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut call = calls.lock().unwrap().pop().unwrap();
    assert_eq!(call.args[0], "sleep:shutdown");
    assert_eq!(call.args[3], "delay");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!at_eof(&mut call.peer_end), "released during the run");

    let out = tokio::task::block_in_place(|| trigger.wait_with_output().unwrap());
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !at_eof(&mut call.peer_end) {
        assert!(Instant::now() < deadline, "the lock outlived the run");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
