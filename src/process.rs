//! Running child processes the way a build farm must: each in its own process group (so a
//! timeout or a cancel kills the whole tree a `nix build` spawned, not just `nix`), with stderr
//! teed into a log file while its tail is kept for error messages, and stdout captured.
//!
//! This module knows nothing about Nix; [`crate::nix`] builds the commands.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Lines of stderr kept for error messages and the history's log tail.
pub const TAIL_LINES: usize = 25;

/// How long a process group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The last [`TAIL_LINES`] lines of stderr.
    pub stderr_tail: String,
}

#[derive(Debug)]
pub enum Outcome {
    Finished(Finished),
    /// The time limit passed; the process group was killed.
    TimedOut {
        stderr_tail: String,
    },
    /// The run was cancelled; the process group was killed.
    Cancelled {
        stderr_tail: String,
    },
}

pub struct Limits<'a> {
    pub timeout: Option<Duration>,
    pub cancel: Option<&'a CancellationToken>,
    /// Every stderr line is appended here as it arrives.
    pub log: Option<File>,
}

impl Limits<'_> {
    pub fn none() -> Self {
        Limits {
            timeout: None,
            cancel: None,
            log: None,
        }
    }
}

/// Runs `cmd` to completion in a new process group, within `limits`.
///
/// Stdin is closed; stdout is captured; stderr is read line by line into the log and the tail.
pub async fn run(cmd: Command, limits: Limits<'_>) -> std::io::Result<Outcome> {
    run_inner(cmd, None, limits).await
}

/// [`run`], with `input` written to the child's stdin, which is then closed. A child that
/// exits without reading it all is not an error: what it did is in the [`Outcome`].
pub async fn run_with_stdin(
    cmd: Command,
    input: Vec<u8>,
    limits: Limits<'_>,
) -> std::io::Result<Outcome> {
    run_inner(cmd, Some(input), limits).await
}

async fn run_inner(
    mut cmd: Command,
    input: Option<Vec<u8>>,
    limits: Limits<'_>,
) -> std::io::Result<Outcome> {
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32));
    // Written from a task: a child that reads slowly (or never) must not stop us from reading
    // its output or enforcing the time limit. Killing the group closes the pipe, which ends it.
    let stdin_task = child.stdin.take().zip(input).map(|(mut pipe, input)| {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // EPIPE: the child closed stdin early; that is its business.
            let _ = pipe.write_all(&input).await;
        })
    });
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");

    let stdout_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).await.map(|_| buf)
    });
    let mut log = limits.log;
    let stderr_task = tokio::spawn(async move {
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut lines = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match lines.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Some(log) = log.as_mut() {
                        // A full disk must not stop the build; the tail still has the end.
                        let _ = log.write_all(&line);
                    }
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(String::from_utf8_lossy(&line).trim_end().to_owned());
                }
            }
        }
        if let Some(log) = log.as_mut() {
            let _ = log.flush();
        }
        Vec::from(tail).join("\n")
    });

    let never = CancellationToken::new();
    let cancel = limits.cancel.unwrap_or(&never);
    let deadline = async {
        match limits.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };

    enum Stop {
        Exited(std::io::Result<ExitStatus>),
        TimedOut,
        Cancelled,
    }
    let stop = tokio::select! {
        status = child.wait() => Stop::Exited(status),
        _ = deadline => Stop::TimedOut,
        _ = cancel.cancelled() => Stop::Cancelled,
    };

    let killed = match stop {
        Stop::Exited(status) => Ok(status?),
        Stop::TimedOut => Err(true),
        Stop::Cancelled => Err(false),
    };
    if killed.is_err() {
        if let Some(pgid) = pgid {
            kill_group(pgid, &mut child).await;
        }
    }
    if let Some(task) = stdin_task {
        // A daemonised grandchild may still hold stdin open without reading it.
        task.abort();
    }
    // A daemonised grandchild may hold our pipes open: never wait on them forever.
    let stderr_tail = tokio::time::timeout(KILL_GRACE, stderr_task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    match killed {
        Ok(status) => {
            let stdout = match tokio::time::timeout(KILL_GRACE, stdout_task).await {
                Ok(Ok(read)) => read?,
                _ => Vec::new(),
            };
            Ok(Outcome::Finished(Finished {
                status,
                stdout,
                stderr_tail,
            }))
        }
        Err(true) => Ok(Outcome::TimedOut { stderr_tail }),
        Err(false) => Ok(Outcome::Cancelled { stderr_tail }),
    }
}

/// SIGTERM to the whole group, SIGKILL after a grace period, then reap the leader.
async fn kill_group(pgid: rustix::process::Pid, child: &mut tokio::process::Child) {
    use rustix::process::{kill_process_group, Signal};
    let _ = kill_process_group(pgid, Signal::TERM);
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = kill_process_group(pgid, Signal::KILL);
        let _ = child.wait().await;
    } else {
        // The leader is gone; make sure nothing it left behind in the group survives.
        let _ = kill_process_group(pgid, Signal::KILL);
    }
}

/// The last `n` lines of a (possibly large) log file, read from its end.
pub fn file_tail(path: &std::path::Path, n: usize) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    Some(lines[lines.len().saturating_sub(n)..].join("\n"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[tokio::test]
    async fn captures_stdout_and_keeps_the_stderr_tail() {
        let script = "echo out; for i in $(seq 1 40); do echo line$i >&2; done; exit 3";
        let Outcome::Finished(f) = run(sh(script), Limits::none()).await.unwrap() else {
            panic!("not finished")
        };
        assert_eq!(f.status.code(), Some(3));
        assert_eq!(f.stdout, b"out\n");
        let tail: Vec<&str> = f.stderr_tail.lines().collect();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last(), Some(&"line40"));
        assert_eq!(tail.first(), Some(&"line16"));
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        // The grandchild ignores nothing special; it must die with the group.
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let limits = Limits {
            timeout: Some(Duration::from_millis(300)),
            ..Limits::none()
        };
        let outcome = run(sh(&script), limits).await.unwrap();
        assert!(matches!(outcome, Outcome::TimedOut { .. }), "{outcome:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(dies_soon(pid), "grandchild {pid} survived the timeout");
    }

    /// Whether process `pid` is gone (or a zombie) within a second: a signalled process
    /// takes a moment to die.
    pub(crate) fn dies_soon(pid: i32) -> bool {
        for _ in 0..100 {
            let alive = std::path::Path::new(&format!("/proc/{pid}")).exists()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ");
            if !alive {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[tokio::test]
    async fn stdin_payload_reaches_the_child_and_is_closed() {
        let input = b"{\"id\": 1}\n".repeat(20_000); // more than a pipe buffer
        let outcome = run_with_stdin(sh("cat"), input.clone(), Limits::none())
            .await
            .unwrap();
        let Outcome::Finished(f) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(f.status.success());
        assert_eq!(f.stdout, input);
    }

    #[tokio::test]
    async fn a_child_that_ignores_stdin_is_not_an_error() {
        let input = vec![b'x'; 1 << 20];
        let outcome = run_with_stdin(sh("exit 0"), input, Limits::none())
            .await
            .unwrap();
        assert!(matches!(outcome, Outcome::Finished(ref f) if f.status.success()));
    }

    #[tokio::test]
    async fn cancel_kills_and_reports_cancelled() {
        let token = CancellationToken::new();
        let t = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            t.cancel();
        });
        let limits = Limits {
            cancel: Some(&token),
            ..Limits::none()
        };
        let outcome = run(sh("echo started >&2; sleep 300"), limits)
            .await
            .unwrap();
        match outcome {
            Outcome::Cancelled { stderr_tail } => assert_eq!(stderr_tail, "started"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn stderr_is_teed_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let limits = Limits {
            log: Some(File::create(&path).unwrap()),
            ..Limits::none()
        };
        run(sh("echo a >&2; echo b >&2"), limits).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        assert_eq!(file_tail(&path, 1).unwrap(), "b");
    }
}
