//! `daemon::notify::Notifier` against a real datagram socket standing in for systemd's
//! NOTIFY_SOCKET: what arrives is what systemd would read.
//!
//! The tests change the process environment (NOTIFY_SOCKET, WATCHDOG_*), so they take `ENV`
//! first and never run at the same time.

use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use std::time::Duration;

use nixfarm::daemon::notify::Notifier;

static ENV: Mutex<()> = Mutex::new(());

fn receive(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf).expect("no notification arrived");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

#[test]
fn every_notification_reaches_the_notify_socket() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::env::set_var("NOTIFY_SOCKET", &path);

    let notifier = Notifier::new();
    notifier.ready();
    assert_eq!(receive(&socket), "READY=1\n");
    notifier.status("building pi3 (2/4), 1 failed;\nnext run 03:00");
    assert_eq!(
        receive(&socket),
        "STATUS=building pi3 (2/4), 1 failed; next run 03:00\n"
    );
    notifier.reloading();
    let reloading = receive(&socket);
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"));
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    notifier.watchdog();
    assert_eq!(receive(&socket), "WATCHDOG=1\n");
    notifier.stopping();
    assert_eq!(receive(&socket), "STOPPING=1\n");

    // The daemon notifies all its life: the variable stays for the next call.
    assert_eq!(
        std::env::var_os("NOTIFY_SOCKET").as_deref(),
        Some(path.as_os_str())
    );
    std::env::remove_var("NOTIFY_SOCKET");
}

#[test]
fn a_missing_notify_socket_never_fails() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("NOTIFY_SOCKET", dir.path().join("nobody-listens"));
    let notifier = Notifier::new();
    for _ in 0..3 {
        notifier.ready();
        notifier.status("idle");
        notifier.watchdog();
    }
    std::env::remove_var("NOTIFY_SOCKET");
    // And without systemd at all: silent no-ops.
    notifier.ready();
    notifier.stopping();
}

#[test]
fn watchdog_interval_is_half_of_watchdog_usec_for_this_pid() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let notifier = Notifier::new();
    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
    assert_eq!(notifier.watchdog_interval(), None);

    std::env::set_var("WATCHDOG_USEC", "30000000");
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(15)));
    // Meant for another process (we are a child that inherited it): not ours to ping.
    std::env::set_var("WATCHDOG_PID", "1");
    assert_eq!(notifier.watchdog_interval(), None);
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    std::env::set_var("WATCHDOG_USEC", "0");
    assert_eq!(notifier.watchdog_interval(), None);

    std::env::remove_var("WATCHDOG_USEC");
    std::env::remove_var("WATCHDOG_PID");
}
