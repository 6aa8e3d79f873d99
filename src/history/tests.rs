use tempfile::TempDir;

use super::*;
use crate::record::{MachineKind, MachineStatus, Phase, PhaseTiming, PushOutcome};
use crate::types::StorePath;

fn store_path(name: &str) -> StorePath {
    format!("/nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-{name}")
        .parse()
        .unwrap()
}

fn machine(name: &str, kind: MachineKind, status: MachineStatus) -> MachineRecord {
    let ok = status.is_success();
    MachineRecord {
        name: name.parse().unwrap(),
        kind,
        status,
        attribute: format!(
            "{}.{name}.config.system.build.toplevel",
            kind.flake_output()
        ),
        drv_path: Some(store_path(&format!("nixos-system-{name}.drv"))),
        toplevel: ok.then(|| store_path(&format!("nixos-system-{name}"))),
        duration_ms: 61_234,
        error: (!ok).then(|| format!("{name} went wrong\nsecond line")),
        log_tail: (!ok).then(|| "line 1\nline 2".to_owned()),
        log_path: Some(format!("/var/lib/farmd/logs/{name}.log")),
        publish: None,
    }
}

/// A record with every optional field set and one machine of every status and kind.
fn full_record(id: RunId) -> RunRecord {
    let kinds = MachineKind::ALL.iter().cycle();
    let statuses = [
        MachineStatus::Pending,
        MachineStatus::EvalFailed,
        MachineStatus::BuildFailed,
        MachineStatus::TimedOut,
        MachineStatus::Built,
        MachineStatus::Cancelled,
    ];
    RunRecord {
        id,
        trigger: Trigger::CatchUp,
        requested_by: Some("uid 1000 (alice), pid 4242".to_owned()),
        started_at: 1_714_532_400,
        finished_at: Some(1_714_536_133),
        status: RunStatus::Failed,
        rev_before: Some("1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d".to_owned()),
        rev_after: Some("5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f".to_owned()),
        lock_changed: true,
        push: Some(PushOutcome::Rejected {
            message: "remote moved on".to_owned(),
        }),
        error: Some("a run error\n -> its cause".to_owned()),
        publish: None,
        generations: Vec::new(),
        gc: None,
        phases: [
            Phase::Checkout,
            Phase::Update,
            Phase::Evaluate,
            Phase::Build,
            Phase::Publish,
            Phase::Push,
            Phase::Record,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, phase)| PhaseTiming {
            phase,
            duration_ms: 1000 * i as u64 + 7,
        })
        .collect(),
        // Not in name order, to show the stored order is the record's.
        machines: statuses
            .into_iter()
            .zip(kinds)
            .enumerate()
            .map(|(i, (status, kind))| machine(&format!("m{}", 9 - i), *kind, status))
            .collect(),
    }
}

fn open() -> (TempDir, History) {
    let dir = TempDir::new().unwrap();
    let history = History::open(dir.path()).unwrap();
    (dir, history)
}

fn begin_at(history: &History, started_at: i64) -> RunId {
    history.begin(Trigger::Schedule, None, started_at).unwrap()
}

#[test]
fn begin_records_a_running_run() {
    let (_dir, history) = open();
    let id = history
        .begin(Trigger::Manual, Some("uid 0 (root), pid 1"), 100)
        .unwrap();
    let run = history.get(id).unwrap().unwrap();
    assert_eq!(
        run,
        RunRecord {
            id,
            trigger: Trigger::Manual,
            requested_by: Some("uid 0 (root), pid 1".to_owned()),
            started_at: 100,
            finished_at: None,
            status: RunStatus::Running,
            rev_before: None,
            rev_after: None,
            lock_changed: false,
            push: None,
            error: None,
            publish: None,
            generations: Vec::new(),
            gc: None,
            phases: vec![],
            machines: vec![],
        }
    );
}

#[test]
fn full_record_round_trips_through_save_and_get() {
    let (_dir, history) = open();
    let id = begin_at(&history, 1);
    let record = full_record(id);
    history.save(&record).unwrap();
    assert_eq!(history.get(id).unwrap(), Some(record));
}

#[test]
fn every_trigger_run_status_and_push_outcome_round_trips() {
    let (_dir, history) = open();
    let triggers = [
        Trigger::Once,
        Trigger::Manual,
        Trigger::Schedule,
        Trigger::CatchUp,
    ];
    let statuses = [
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Error,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];
    let pushes = [
        None,
        Some(PushOutcome::Skipped {
            reason: "policy is `never`".to_owned(),
        }),
        Some(PushOutcome::UpToDate { rev: "abc".into() }),
        Some(PushOutcome::Pushed { rev: "def".into() }),
        Some(PushOutcome::Rejected {
            message: "non-fast-forward".into(),
        }),
        Some(PushOutcome::Failed {
            message: "connection refused".into(),
        }),
    ];
    for trigger in triggers {
        for (status, push) in statuses.iter().zip(&pushes) {
            let id = history.begin(trigger, None, 5).unwrap();
            let record = RunRecord {
                trigger,
                status: *status,
                push: push.clone(),
                requested_by: None,
                finished_at: None,
                rev_before: None,
                rev_after: None,
                lock_changed: false,
                error: None,
                ..full_record(id)
            };
            history.save(&record).unwrap();
            assert_eq!(history.get(id).unwrap().as_ref(), Some(&record));
        }
    }
}

#[test]
fn enums_are_stored_as_their_kebab_case_names() {
    let (_dir, history) = open();
    let id = begin_at(&history, 1);
    history.save(&full_record(id)).unwrap();
    let conn = history.lock();
    let (trigger, status, push): (String, String, String) = conn
        .query_row(
            "SELECT trigger, status, push FROM runs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((trigger.as_str(), status.as_str()), ("catch-up", "failed"));
    assert_eq!(push, r#"{"status":"rejected","message":"remote moved on"}"#);
    let statuses: Vec<String> = conn
        .prepare("SELECT status FROM machines ORDER BY position")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        statuses,
        [
            "pending",
            "eval-failed",
            "build-failed",
            "timed-out",
            "built",
            "cancelled"
        ]
    );
}

#[test]
fn saving_again_replaces_the_machines() {
    let (_dir, history) = open();
    let id = begin_at(&history, 1);
    let mut record = full_record(id);
    history.save(&record).unwrap();

    record.status = RunStatus::Succeeded;
    record.error = None;
    record.machines = vec![machine("pi3", MachineKind::Nixos, MachineStatus::Built)];
    history.save(&record).unwrap();

    assert_eq!(history.get(id).unwrap(), Some(record));
}

#[test]
fn saving_a_run_that_was_never_begun_is_refused() {
    let (_dir, history) = open();
    let err = history.save(&full_record(77)).unwrap_err();
    assert!(
        matches!(err, HistoryError::NoSuchRun { id: 77, .. }),
        "{err}"
    );
    assert!(err
        .to_string()
        .starts_with("run 77 is not in the run history `"));
}

#[test]
fn get_of_an_unknown_id_is_none() {
    let (_dir, history) = open();
    assert_eq!(history.get(1).unwrap(), None);
}

#[test]
fn list_is_newest_first_and_limited() {
    let (_dir, history) = open();
    assert_eq!(history.list(10).unwrap(), vec![]);
    assert_eq!(history.last().unwrap(), None);
    let ids: Vec<RunId> = (0..5).map(|i| begin_at(&history, 100 + i)).collect();
    for &id in &ids {
        history.save(&full_record(id)).unwrap();
    }

    let listed = history.list(3).unwrap();
    let listed_ids: Vec<RunId> = listed.iter().map(|r| r.id).collect();
    assert_eq!(listed_ids, [ids[4], ids[3], ids[2]]);
    assert!(listed.iter().all(|r| r.machines.len() == 6));
    assert_eq!(history.list(100).unwrap().len(), 5);
    assert_eq!(history.list(0).unwrap(), vec![]);
    assert_eq!(history.last().unwrap().map(|r| r.id), Some(ids[4]));
}

#[test]
fn mark_interrupted_ends_only_running_runs() {
    let (_dir, history) = open();
    let running = begin_at(&history, 1);
    let done = begin_at(&history, 2);
    let also_running = begin_at(&history, 3);
    history
        .save(&RunRecord {
            status: RunStatus::Succeeded,
            ..full_record(done)
        })
        .unwrap();

    assert_eq!(history.mark_interrupted().unwrap(), [running, also_running]);
    let status = |id| history.get(id).unwrap().unwrap().status;
    assert_eq!(status(running), RunStatus::Interrupted);
    assert_eq!(status(also_running), RunStatus::Interrupted);
    assert_eq!(status(done), RunStatus::Succeeded);
    assert_eq!(history.mark_interrupted().unwrap(), Vec::<RunId>::new());
}

#[test]
fn history_survives_reopening() {
    let dir = TempDir::new().unwrap();
    let id = {
        let history = History::open(dir.path()).unwrap();
        let id = begin_at(&history, 1);
        history.save(&full_record(id)).unwrap();
        id
    };
    let history = History::open(dir.path()).unwrap();
    assert_eq!(history.get(id).unwrap(), Some(full_record(id)));
    assert_eq!(history.path(), dir.path().join("history.sqlite"));
}

#[test]
fn a_file_that_is_not_a_database_is_named_in_the_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("history.sqlite");
    std::fs::write(
        &path,
        "this is not sqlite, it is a note to self\n".repeat(200),
    )
    .unwrap();
    let err = History::open(dir.path()).err().unwrap();
    assert!(matches!(err, HistoryError::NotADatabase { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "`{}` is not an SQLite database, so it cannot be the run history; \
             move it aside and a new, empty history is created",
            path.display()
        )
    );
}

#[test]
fn a_missing_state_directory_is_named_in_the_error() {
    let dir = TempDir::new().unwrap();
    let missing = dir.path().join("nope");
    let err = History::open(&missing).err().unwrap();
    assert!(matches!(err, HistoryError::NoStateDir { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains(&missing.join("history.sqlite").display().to_string()));
}

#[test]
fn a_history_from_a_newer_nixfarm_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(History::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join("history.sqlite")).unwrap();
    conn.pragma_update(None, "user_version", 1000).unwrap();
    drop(conn);
    let err = History::open(dir.path()).err().unwrap();
    assert!(
        matches!(err, HistoryError::TooNew { found: 1000, .. }),
        "{err:?}"
    );
}

#[test]
fn a_corrupt_row_is_an_error_naming_the_run_not_a_panic() {
    let (_dir, history) = open();
    let id = begin_at(&history, 1);
    history
        .lock()
        .execute("UPDATE runs SET status = 'exploded' WHERE id = ?1", [id])
        .unwrap();
    let err = history.get(id).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.starts_with("failed to read run 1 in the run history `"),
        "{chain}"
    );
    assert!(chain.contains("unknown value `exploded`"), "{chain}");
}

/// Saves a finished run in which each `(machine, status)` had that outcome.
fn run_with(history: &History, started_at: i64, outcomes: &[(&str, MachineStatus)]) -> RunId {
    let id = begin_at(history, started_at);
    let record = RunRecord {
        id,
        trigger: Trigger::Schedule,
        requested_by: None,
        started_at,
        finished_at: Some(started_at + 60),
        status: RunStatus::Failed,
        rev_before: None,
        rev_after: None,
        lock_changed: false,
        push: None,
        error: None,
        publish: None,
        generations: Vec::new(),
        gc: None,
        phases: vec![],
        machines: outcomes
            .iter()
            .map(|(name, status)| machine(name, MachineKind::Nixos, *status))
            .collect(),
    };
    history.save(&record).unwrap();
    id
}

fn summary<'a>(all: &'a [MachineSummary], name: &str) -> &'a MachineSummary {
    all.iter().find(|s| s.name.as_str() == name).unwrap()
}

#[test]
fn machine_summaries_tell_when_a_machine_started_failing() {
    use MachineStatus::*;
    let (_dir, history) = open();
    let day = 86_400;
    let _r1 = run_with(
        &history,
        day,
        &[("ok", Built), ("flaky", Built), ("broken", BuildFailed)],
    );
    let _r2 = run_with(
        &history,
        2 * day,
        &[
            ("ok", Built),
            ("flaky", BuildFailed),
            ("broken", EvalFailed),
        ],
    );
    let r3 = run_with(
        &history,
        3 * day,
        &[("ok", Built), ("flaky", Built), ("broken", TimedOut)],
    );
    let _r4 = run_with(
        &history,
        4 * day,
        &[("ok", Built), ("flaky", EvalFailed), ("broken", Cancelled)],
    );
    let r5 = run_with(
        &history,
        5 * day,
        &[("ok", Built), ("flaky", Cancelled), ("broken", BuildFailed)],
    );
    // A run still going: its pending rows do not hide how the machines last did.
    let r6 = run_with(
        &history,
        6 * day,
        &[
            ("ok", Pending),
            ("flaky", TimedOut),
            ("broken", Pending),
            ("new", Pending),
        ],
    );

    let all = history.machine_summaries().unwrap();
    let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["broken", "flaky", "new", "ok"]);

    let ok = summary(&all, "ok");
    assert_eq!(
        (ok.last_status, ok.last_run, ok.last_run_at),
        (Built, r5, 5 * day)
    );
    assert_eq!(
        ok.last_success,
        Some(LastSuccess {
            run: r5,
            at: 5 * day,
            toplevel: Some(store_path("nixos-system-ok")),
        })
    );
    assert_eq!((ok.failing_since, ok.failures_since_success), (None, 0));

    // Succeeded in r3, failed in r4, cancelled in r5, timed out in r6: failing since r4.
    let flaky = summary(&all, "flaky");
    assert_eq!((flaky.last_status, flaky.last_run), (TimedOut, r6));
    assert_eq!(
        flaky.last_success.as_ref().map(|s| (s.run, s.at)),
        Some((r3, 3 * day))
    );
    assert_eq!(
        (flaky.failing_since, flaky.failures_since_success),
        (Some(4 * day), 2)
    );

    // Never built: failing since its first run.
    let broken = summary(&all, "broken");
    assert_eq!((broken.last_status, broken.last_run), (BuildFailed, r5));
    assert_eq!(broken.last_success, None);
    assert_eq!(
        (broken.failing_since, broken.failures_since_success),
        (Some(day), 4)
    );

    // Only ever pending: listed, neither succeeded nor failing.
    let new = summary(&all, "new");
    assert_eq!(
        (new.last_status, new.last_run, new.last_success.clone()),
        (Pending, r6, None)
    );
    assert_eq!(new.failing_since, None);
}

#[test]
fn machine_summaries_of_an_empty_history_are_empty() {
    let (_dir, history) = open();
    assert_eq!(history.machine_summaries().unwrap(), vec![]);
}

#[test]
fn history_can_be_shared_between_the_run_and_the_control_socket() {
    fn shareable<T: Send + Sync>() {}
    shareable::<History>();
}

#[test]
fn the_database_is_in_wal_mode_so_readers_never_block_the_daemon() {
    let (_dir, history) = open();
    let mode: String = history
        .lock()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}
