//! What `daemon::logging` really sends to journald, captured at the journal's own socket path.
//!
//! tracing-journald always sends to /run/systemd/journal/socket, so each test re-executes this
//! test binary (the `child_emits_a_run` entry point, inert unless `CHILD_ENV` is set) under
//! `unshare -m` (util-linux, needs root): in that private mount namespace a tmpfs hides the
//! host's /run/systemd, and a temp directory holding the test's own `UnixDatagram` is bound
//! onto /run/systemd/journal. The child initialises `nixfarm::daemon::logging` exactly as farmd
//! does and logs spans and events the way a run does; the test parses the journal native
//! protocol out of the datagrams. The host's real /run/systemd is never touched.
//!
//! Every message here is small, so it arrives as a plain datagram; tracing-journald only falls
//! back to a sealed memfd (passed with SCM_RIGHTS, which std cannot receive) for payloads
//! larger than the socket's send buffer (~200 KiB).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nixfarm::daemon::logging::{self, Mode};
use tracing::{debug, info, info_span, warn};

/// Set (to a `Mode`) when this binary runs as the emitting child.
const CHILD_ENV: &str = "NIXFARM_JOURNALD_TEST_CHILD";
/// A value the child has in its environment and that must never reach a log.
const SECRET: &str = "hunter2-do-not-log-me";
const TOPLEVEL: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-pi3";

/// The child: logs what a run logs, then exits. A no-op in a normal test run.
#[test]
fn child_emits_a_run() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mode = match mode.as_str() {
        "auto" => Mode::Auto,
        "journal" => Mode::Journal,
        _ => Mode::Stderr,
    };
    let destination = logging::init(mode);
    // On a line of its own: the harness has already written "test child_emits_a_run ... ".
    println!("\nDESTINATION={destination}");

    info!("daemon started");
    let run = info_span!("run", run = 42);
    let _run = run.enter();
    info!(phase = "checkout", "phase started");
    info!(machine = "pi3", phase = "build", "building");
    info!(
        machine = "pi3",
        toplevel = TOPLEVEL,
        duration_ms = 1234u64,
        status = "built",
        "built"
    );
    {
        // A machine span: its field reaches the events inside it too.
        let machine = info_span!("machine", machine = "web1");
        let _machine = machine.enter();
        warn!(
            status = "failed",
            error = "builder for `web1` failed\nerror: exit code 1",
            "build failed"
        );
    }
    debug!("filtered out at the default level");
}

/// What one child run left behind.
struct Captured {
    destination: String,
    stderr: String,
    entries: Vec<Entry>,
    raw: Vec<Vec<u8>>,
}

/// One journal entry: field name to values (a field may repeat).
#[derive(Debug)]
struct Entry(HashMap<String, Vec<String>>);

impl Entry {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.first()).map(String::as_str)
    }
    fn message(&self) -> &str {
        self.get("MESSAGE").unwrap_or("")
    }
}

/// Parses one datagram of the journal native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL):
/// `KEY=value\n`, or `KEY\n` + little-endian u64 length + value + `\n` for values that may
/// hold newlines.
fn parse_native(mut data: &[u8]) -> Entry {
    let mut fields: HashMap<String, Vec<String>> = HashMap::new();
    while !data.is_empty() {
        let eol = data
            .iter()
            .position(|&b| b == b'\n')
            .expect("unterminated field");
        let line = &data[..eol];
        let (key, value, rest) = if let Some(eq) = line.iter().position(|&b| b == b'=') {
            (&line[..eq], line[eq + 1..].to_vec(), &data[eol + 1..])
        } else {
            let after = &data[eol + 1..];
            let len = u64::from_le_bytes(after[..8].try_into().unwrap()) as usize;
            let value = after[8..8 + len].to_vec();
            assert_eq!(
                after[8 + len],
                b'\n',
                "binary field not followed by a newline"
            );
            (line, value, &after[8 + len + 1..])
        };
        fields
            .entry(String::from_utf8(key.to_vec()).unwrap())
            .or_default()
            .push(String::from_utf8(value).unwrap());
        data = rest;
    }
    Entry(fields)
}

/// Runs the child in a private mount namespace. With `journal` the test's datagram socket is
/// at /run/systemd/journal/socket there; without it the path does not exist. `journal_stream`
/// decides JOURNAL_STREAM: `Some(true)` names the child's real stderr, `Some(false)` some other
/// file (as a child of a systemd service inherits it), `None` leaves it unset.
fn run_child(
    mode: &str,
    journal: bool,
    journal_stream: Option<bool>,
    env: &[(&str, &str)],
) -> Captured {
    let sockdir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let socket = UnixDatagram::bind(sockdir.path().join("socket")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stderr_path = scratch.path().join("stderr");
    let stderr = File::create(&stderr_path).unwrap();
    let stderr_meta = stderr.metadata().unwrap();

    // In the namespace: hide the host's /run/systemd under a tmpfs, then bind our socket's
    // directory onto /run/systemd/journal (or leave it empty), then become the child.
    let script = r#"set -eu
if [ -d /run/systemd ]; then mount -t tmpfs nixfarm-test /run/systemd; else mount -t tmpfs nixfarm-test /run; fi
mkdir -p /run/systemd/journal
[ -z "$1" ] || mount --bind "$1" /run/systemd/journal
shift
exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        "sh",
    ])
    .arg(if journal {
        sockdir.path()
    } else {
        Path::new("")
    })
    .arg(std::env::current_exe().unwrap())
    .args([
        "child_emits_a_run",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, mode)
    .env("FARM_TEST_SECRET", SECRET)
    .env_remove("FARMD_LOG")
    .env_remove("JOURNAL_STREAM")
    .env_remove("NO_COLOR")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(stderr);
    match journal_stream {
        Some(true) => {
            cmd.env(
                "JOURNAL_STREAM",
                format!("{}:{}", stderr_meta.dev(), stderr_meta.ino()),
            );
        }
        Some(false) => {
            let other = scratch.path().metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", other.dev(), other.ino()));
        }
        None => {}
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("cannot start unshare (util-linux)");

    // Read while the child writes: a Unix datagram queue holds only a few messages and the
    // child blocks when it is full.
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut exited = false;
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => raw.push(buf[..n].to_vec()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if exited {
                    break;
                }
                exited = child.try_wait().unwrap().is_some();
                assert!(
                    Instant::now() < deadline,
                    "the child did not finish in 30 s"
                );
            }
            Err(e) => panic!("receiving from the journal socket: {e}"),
        }
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        output.status.success(),
        "the child failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        output.status
    );
    let destination = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DESTINATION="))
        .unwrap_or_else(|| panic!("the child did not log anything: {stdout}\n{stderr}"))
        .to_owned();
    // tracing-journald probes the socket with an empty datagram; journald discards it.
    let entries = raw
        .iter()
        .filter(|d| !d.is_empty())
        .map(|d| parse_native(d))
        .collect();
    Captured {
        destination,
        stderr,
        entries,
        raw,
    }
}

fn entry<'a>(captured: &'a Captured, message: &str) -> &'a Entry {
    captured
        .entries
        .iter()
        .find(|e| e.message() == message)
        .unwrap_or_else(|| panic!("no journal entry {message:?} in {:#?}", captured.entries))
}

#[test]
fn under_systemd_run_fields_reach_the_journal_as_farm_fields() {
    let captured = run_child("auto", true, Some(true), &[]);
    assert_eq!(captured.destination, "journald");
    assert_eq!(captured.stderr, "", "nothing goes to stderr under journald");

    let built = entry(&captured, "built");
    assert_eq!(built.get("FARM_RUN"), Some("42"), "the run span's field");
    assert_eq!(built.get("FARM_MACHINE"), Some("pi3"));
    assert_eq!(built.get("FARM_STATUS"), Some("built"));
    assert_eq!(built.get("FARM_TOPLEVEL"), Some(TOPLEVEL));
    assert_eq!(built.get("FARM_DURATION_MS"), Some("1234"));
    assert_eq!(built.get("SYSLOG_IDENTIFIER"), Some("farmd"));
    assert_eq!(built.get("PRIORITY"), Some("6"), "info is syslog's INFO");

    let building = entry(&captured, "building");
    assert_eq!(building.get("FARM_PHASE"), Some("build"));
    assert_eq!(building.get("FARM_MACHINE"), Some("pi3"));
    let started = entry(&captured, "phase started");
    assert_eq!(started.get("FARM_PHASE"), Some("checkout"));
    assert_eq!(started.get("FARM_RUN"), Some("42"));
    assert_eq!(started.get("FARM_MACHINE"), None);

    // A field of an inner span, a warning's priority, a multi-line value (binary form).
    let failed = entry(&captured, "build failed");
    assert_eq!(failed.get("FARM_MACHINE"), Some("web1"));
    assert_eq!(failed.get("FARM_RUN"), Some("42"));
    assert_eq!(failed.get("FARM_STATUS"), Some("failed"));
    assert_eq!(failed.get("PRIORITY"), Some("4"));
    assert_eq!(
        failed.get("FARM_ERROR"),
        Some("builder for `web1` failed\nerror: exit code 1")
    );

    // Outside the run span there is no run id; below the default filter nothing is sent.
    assert_eq!(entry(&captured, "daemon started").get("FARM_RUN"), None);
    assert!(captured
        .entries
        .iter()
        .all(|e| e.message() != "filtered out at the default level"));

    // No timestamps of our own (journald stamps entries itself): MESSAGE is the bare message
    // and no field carries a time.
    for e in &captured.entries {
        assert!(
            e.0.keys()
                .all(|k| !k.contains("TIMESTAMP") && !k.contains("TIME")),
            "{e:?}"
        );
    }
    assert!(captured
        .raw
        .iter()
        .all(|d| !String::from_utf8_lossy(d).contains(SECRET)));
}

#[test]
fn explicit_journal_mode_falls_back_to_stderr_with_one_warning() {
    let captured = run_child("journal", false, None, &[]);
    assert_eq!(captured.destination, "stderr");
    let warnings: Vec<_> = captured
        .stderr
        .lines()
        .filter(|l| l.contains("cannot reach journald"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", captured.stderr);
    assert!(warnings[0].contains("WARN"), "{}", warnings[0]);
    let built = captured
        .stderr
        .lines()
        .find(|l| l.contains("built"))
        .unwrap_or_else(|| panic!("no `built` line on stderr:\n{}", captured.stderr));
    // Human-readable: the span context and the fields are on the line.
    assert!(built.contains("run{run=42}"), "{built}");
    assert!(built.contains("machine=\"pi3\""), "{built}");
    assert!(!captured.stderr.contains(SECRET));
}

#[test]
fn an_inherited_journal_stream_that_is_not_our_stderr_means_stderr() {
    // The journal socket is there, but JOURNAL_STREAM names another file: we are not the
    // process systemd connected to the journal (e.g. started from a service's shell).
    let captured = run_child("auto", true, Some(false), &[("FARMD_LOG", "debug")]);
    assert_eq!(captured.destination, "stderr");
    assert!(captured.entries.is_empty(), "{:?}", captured.entries);
    // Timestamps on stderr, and FARMD_LOG chose the level.
    let first = captured.stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(|c: char| c.is_ascii_digit()) && first.contains('T'),
        "no timestamp: {first}"
    );
    assert!(
        captured
            .stderr
            .contains("filtered out at the default level"),
        "{}",
        captured.stderr
    );
    // No colour: stderr is a file, not a terminal.
    assert!(!captured.stderr.contains('\x1b'));
}

#[test]
fn a_journal_stream_without_the_journal_socket_logs_to_stderr_without_timestamps() {
    // systemd connected stderr to journald, but its native socket is missing: stderr reaches
    // the journal anyway, which stamps lines itself.
    let captured = run_child("auto", false, Some(true), &[]);
    assert_eq!(captured.destination, "stderr");
    let lines: Vec<_> = captured.stderr.lines().collect();
    assert!(lines[0].contains("cannot reach journald"), "{lines:?}");
    assert!(
        lines.iter().all(|l| l.trim_start().starts_with(['I', 'W'])),
        "a line starts with something else than its level: {lines:?}"
    );
}
