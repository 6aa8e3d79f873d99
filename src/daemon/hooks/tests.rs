use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::record::Trigger;

fn record(status: RunStatus) -> RunRecord {
    RunRecord {
        id: 7,
        trigger: Trigger::Schedule,
        requested_by: None,
        started_at: 1_714_532_400,
        finished_at: Some(1_714_536_000),
        status,
        rev_before: Some("1a2b3c4d".into()),
        rev_after: Some("5e6f7a8b".into()),
        lock_changed: true,
        push: None,
        // Quotes, a newline and non-ASCII must arrive byte for byte.
        error: Some("nix said \"no\"\nüber alles".into()),
        publish: None,
        generations: Vec::new(),
        gc: None,
        phases: Vec::new(),
        machines: Vec::new(),
    }
}

fn settings(on_success: Option<String>, on_failure: Option<String>) -> HookSettings {
    HookSettings {
        on_success,
        on_failure,
        timeout: Duration::from_secs(30),
    }
}

fn quoted(path: &Path) -> String {
    shlex::try_quote(path.to_str().unwrap())
        .unwrap()
        .into_owned()
}

#[tokio::test]
async fn the_hook_gets_the_run_record_as_json_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdin.json");
    let s = settings(None, Some(format!("cat > {}", quoted(&out))));
    let r = record(RunStatus::Failed);
    let outcome = run_hooks(&s, &r).await;
    assert!(matches!(outcome, HookOutcome::Succeeded), "{outcome:?}");
    let expected = format!("{}\n", serde_json::to_string(&r).unwrap());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), expected);
    let parsed: RunRecord = serde_json::from_str(&expected).unwrap();
    assert_eq!(parsed, r);
}

#[tokio::test]
async fn the_right_hook_runs_for_each_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = quoted(&dir.path().join("calls"));
    let s = settings(
        Some(format!("echo \"success $FARM_RUN $FARM_STATUS\" >> {out}")),
        Some(format!("echo \"failure $FARM_RUN $FARM_STATUS\" >> {out}")),
    );
    for status in [
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Error,
        RunStatus::Interrupted,
        RunStatus::Cancelled,
        RunStatus::Running,
    ] {
        run_hooks(&s, &record(status)).await;
    }
    let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        [
            "success 7 succeeded",
            "failure 7 failed",
            "failure 7 error",
            "failure 7 interrupted",
        ]
    );
}

#[tokio::test]
async fn no_configured_hook_runs_nothing() {
    let outcome = run_hooks(&settings(None, None), &record(RunStatus::Failed)).await;
    assert!(matches!(outcome, HookOutcome::NotRun));
}

#[tokio::test]
async fn a_hook_past_its_timeout_is_killed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild");
    let mut s = settings(
        None,
        Some(format!("sleep 300 & echo $! > {}; wait", quoted(&pidfile))),
    );
    s.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let outcome = run_hooks(&s, &record(RunStatus::Error)).await;
    assert!(matches!(outcome, HookOutcome::TimedOut), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        crate::process::tests::dies_soon(pid),
        "the hook's child {pid} survived"
    );
}

/// Log lines written while `f` runs on this thread.
async fn logs_of<F: std::future::Future>(f: F) -> (F::Output, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let output = f.await;
    let text = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    (output, text)
}

#[tokio::test]
async fn a_failing_hook_is_logged_and_the_run_goes_on() {
    let s = settings(None, Some("echo oops >&2; exit 3".into()));
    let (outcome, logs) = logs_of(run_hooks(&s, &record(RunStatus::Failed))).await;
    assert!(matches!(outcome, HookOutcome::Failed), "{outcome:?}");
    for part in [
        "WARN",
        "hook failed",
        "hook=\"on_failure\"",
        "command=\"echo oops >&2; exit 3\"",
        "status=exit status: 3",
        "stderr=oops",
    ] {
        assert!(logs.contains(part), "`{part}` not in: {logs}");
    }
}

#[tokio::test]
async fn a_timed_out_hook_is_logged_with_its_timeout() {
    let mut s = settings(Some("sleep 300".into()), None);
    s.timeout = Duration::from_millis(200);
    let (outcome, logs) = logs_of(run_hooks(&s, &record(RunStatus::Succeeded))).await;
    assert!(matches!(outcome, HookOutcome::TimedOut), "{outcome:?}");
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("timeout=200ms"), "{logs}");
    assert!(logs.contains("killed with its process group"), "{logs}");
}

#[test]
fn long_output_is_shortened_for_the_log() {
    let long = "é".repeat(OUTPUT_LOGGED + 10);
    let short = shortened(&long);
    assert!(short.starts_with(&"é".repeat(OUTPUT_LOGGED)));
    assert!(short.ends_with("… (20 more bytes)"), "{short}");
    assert_eq!(shortened("  ok\n"), "ok");
}
