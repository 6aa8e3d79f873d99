use super::*;
use crate::record::{MachineKind, MachineStatus, Phase, PhaseTiming, RunId, RunStatus, Trigger};
use crate::types::StorePath;

const STARTED: i64 = 1_714_532_400; // 2024-05-01 03:00:00 UTC

fn store_path(base: &str) -> StorePath {
    format!("/nix/store/{base}").parse().unwrap()
}

fn built(name: &str, ms: u64, hash: &str) -> MachineRecord {
    MachineRecord {
        name: name.parse().unwrap(),
        kind: MachineKind::Nixos,
        status: MachineStatus::Built,
        attribute: format!("nixosConfigurations.{name}.config.system.build.toplevel"),
        drv_path: None,
        toplevel: Some(store_path(&format!("{hash}-nixos-system-{name}-24.05"))),
        duration_ms: ms,
        error: None,
        log_tail: None,
        log_path: Some(format!("/var/lib/farmd/logs/42/{name}.log")),
        publish: None,
    }
}

/// A night in which one machine failed to build and the lock commit was therefore not pushed.
fn failed_run() -> RunRecord {
    RunRecord {
        id: 42,
        trigger: Trigger::Schedule,
        requested_by: None,
        started_at: STARTED,
        finished_at: Some(STARTED + 3733),
        status: RunStatus::Failed,
        rev_before: Some("1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d".into()),
        rev_after: Some("5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f".into()),
        lock_changed: true,
        push: Some(PushOutcome::Skipped {
            reason: "policy `built`: 1 machine did not build".into(),
        }),
        error: None,
        publish: None,
        generations: Vec::new(),
        gc: None,
        phases: vec![
            PhaseTiming {
                phase: Phase::Checkout,
                duration_ms: 1_200,
            },
            PhaseTiming {
                phase: Phase::Update,
                duration_ms: 14_000,
            },
            PhaseTiming {
                phase: Phase::Evaluate,
                duration_ms: 63_000,
            },
            PhaseTiming {
                phase: Phase::Build,
                duration_ms: 3_492_000,
            },
            PhaseTiming {
                phase: Phase::Push,
                duration_ms: 0,
            },
        ],
        machines: vec![
            built("nas", 754_000, "zrkr1yakb0k47k4yj1hicsr4mcb8xyv4"),
            MachineRecord {
                status: MachineStatus::BuildFailed,
                toplevel: None,
                error: Some(
                    "builder for '/nix/store/8vz0lv0pbb5ivrgb4y2fnmbqzzzmhhqz-linux-6.6.drv' \
                     failed with exit code 2\n(see the log)"
                        .into(),
                ),
                log_tail: Some(
                    "  CC      kernel/fork.o\nmake: *** [Makefile:1919] Error 2\n".into(),
                ),
                ..built("pi3", 3_412_000, "0c1gdn5m3yyr4yivyxcgfrhgl23ybf4a")
            },
            built("web-01", 95_000, "1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r6s"),
        ],
    }
}

fn quick_run(id: RunId, status: RunStatus, trigger: Trigger) -> RunRecord {
    RunRecord {
        id,
        trigger,
        requested_by: Some("uid 1000 (alice), pid 4242".into()),
        started_at: STARTED + id * 86_400,
        finished_at: Some(STARTED + id * 86_400 + 42),
        status,
        rev_before: Some("5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f".into()),
        rev_after: Some("5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f".into()),
        lock_changed: false,
        push: Some(PushOutcome::UpToDate {
            rev: "5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f".into(),
        }),
        error: None,
        publish: None,
        generations: Vec::new(),
        gc: None,
        phases: vec![],
        machines: vec![],
    }
}

fn plain() -> Style {
    Style::plain_utc()
}

#[test]
fn show_prints_header_phases_machines_then_failures() {
    assert_eq!(
        render_run(&failed_run(), &plain()),
        "\
run 42  failed
  trigger       schedule
  started       2024-05-01 03:00:00 +00:00
  finished      2024-05-01 04:02:13 +00:00 (took 1h02m)
  rev before    1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d
  rev after     5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f
  lock          changed
  push          skipped: policy `built`: 1 machine did not build

phases
  checkout     1.2s
  update        14s
  evaluate    1m03s
  build      58m12s
  push          0ms

machines: 2 of 3 built
  NAME    STATUS          TIME  TOPLEVEL
  nas     built         12m34s  /nix/store/zrkr1yakb0k47k4yj1hicsr4mcb8xyv4-nixos-system-nas-24.05
  pi3     build-failed  56m52s  -
  web-01  built          1m35s  /nix/store/1b2c3d4f5g6h7i8j9k0l1m2n3p4q5r6s-nixos-system-web-01-24.05

pi3: build-failed
  builder for '/nix/store/8vz0lv0pbb5ivrgb4y2fnmbqzzzmhhqz-linux-6.6.drv' failed with exit code 2
  (see the log)
  log /var/lib/farmd/logs/42/pi3.log, last lines:
      CC      kernel/fork.o
    make: *** [Makefile:1919] Error 2
"
    );
}

#[test]
fn show_of_a_run_that_could_not_start_names_who_asked_and_why() {
    let run = RunRecord {
        id: 7,
        trigger: Trigger::Manual,
        requested_by: Some("uid 1000 (alice), pid 4242".into()),
        started_at: STARTED,
        finished_at: None,
        status: RunStatus::Error,
        rev_before: None,
        rev_after: None,
        lock_changed: false,
        push: None,
        error: Some("failed to fetch `git@example.org:fleet.git`\n -> connection refused".into()),
        publish: None,
        generations: Vec::new(),
        gc: None,
        phases: vec![],
        machines: vec![],
    };
    assert_eq!(
        render_run(&run, &plain()),
        "\
run 7  error
  trigger       manual
  requested by  uid 1000 (alice), pid 4242
  started       2024-05-01 03:00:00 +00:00
  finished      -
  rev before    -
  rev after     -
  lock          unchanged
  push          not attempted

run error:
  failed to fetch `git@example.org:fleet.git`
   -> connection refused
"
    );
    assert_eq!(
        render_summary(&run, &plain()),
        "\
run 7: error
error: failed to fetch `git@example.org:fleet.git`
 -> connection refused
details: farmctl show 7
"
    );
}

#[test]
fn summary_names_each_failure_in_one_line_and_where_the_logs_are() {
    assert_eq!(
        render_summary(&failed_run(), &plain()),
        "\
run 42: failed after 1h02m, 2 of 3 machines built
  pi3: build-failed: builder for '/nix/store/8vz0lv0pbb5ivrgb4y2fnmbqzzzmhhqz-linux-6.6.drv' failed with exit code 2
push: skipped: policy `built`: 1 machine did not build
log: /var/lib/farmd/logs/42/pi3.log
details: farmctl show 42
"
    );
}

#[test]
fn summary_points_at_the_log_directory_when_several_failed() {
    let mut run = failed_run();
    for m in &mut run.machines {
        m.status = MachineStatus::TimedOut;
        m.error = None;
    }
    run.machines[1].status = MachineStatus::Cancelled;
    run.push = Some(PushOutcome::Pushed {
        rev: "5e6f7a8b9c0d1e2f".into(),
    });
    assert_eq!(
        render_summary(&run, &plain()),
        "\
run 42: failed after 1h02m, 0 of 3 machines built
  nas: timed-out
  pi3: cancelled
  web-01: timed-out
push: pushed 5e6f7a8b
logs: /var/lib/farmd/logs/42/
details: farmctl show 42
"
    );
}

#[test]
fn list_shows_one_aligned_line_per_run() {
    let mut running = quick_run(44, RunStatus::Running, Trigger::CatchUp);
    running.finished_at = None;
    running.rev_after = None;
    let runs = [
        running,
        quick_run(43, RunStatus::Succeeded, Trigger::Manual),
        failed_run(),
    ];
    assert_eq!(
        render_list(&runs, &plain()),
        "\
ID  STARTED           TRIGGER   STATUS     BUILT   TIME  REVISION
44  2024-06-14 03:00  catch-up  running        -      -  5e6f7a8b
43  2024-06-13 03:00  manual    succeeded      -    42s  5e6f7a8b
42  2024-05-01 03:00  schedule  failed       2/3  1h02m  1a2b3c4d→5e6f7a8b lock
"
    );
}

#[test]
fn list_fits_80_columns_with_the_widest_values() {
    let mut wide = failed_run();
    wide.id = 9999;
    wide.status = RunStatus::Interrupted;
    wide.trigger = Trigger::CatchUp;
    wide.finished_at = Some(STARTED + 3599);
    let template = wide.machines[0].clone();
    wide.machines = (0..999)
        .map(|i| MachineRecord {
            name: format!("m{i}").parse().unwrap(),
            ..template.clone()
        })
        .collect();
    let text = render_list(&[wide, failed_run()], &plain());
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
    }
    assert_eq!(
        text.lines().nth(1),
        Some("9999 2024-05-01 03:00 catch-up interrupted 999/999 59m59s 1a2b3c4d→5e6f7a8b lock")
    );
}

#[test]
fn list_of_nothing_says_so() {
    assert_eq!(render_list(&[], &plain()), "no runs recorded yet\n");
}

#[test]
fn revisions_say_whether_the_checkout_moved() {
    let mut run = quick_run(1, RunStatus::Error, Trigger::Once);
    assert_eq!(revisions(&run), "5e6f7a8b");
    run.rev_after = None;
    assert_eq!(revisions(&run), "5e6f7a8b");
    run.rev_before = None;
    assert_eq!(revisions(&run), "-");
}

#[test]
fn every_push_outcome_reads_as_a_phrase() {
    let cases = [
        (None, "not attempted"),
        (
            Some(PushOutcome::Skipped {
                reason: "policy `never`".into(),
            }),
            "skipped: policy `never`",
        ),
        (
            Some(PushOutcome::UpToDate {
                rev: "1a2b3c4d5e6f".into(),
            }),
            "up to date at 1a2b3c4d",
        ),
        (
            Some(PushOutcome::Pushed {
                rev: "1a2b3c4d5e6f".into(),
            }),
            "pushed 1a2b3c4d",
        ),
        (
            Some(PushOutcome::Rejected {
                message: "non-fast-forward".into(),
            }),
            "rejected: non-fast-forward",
        ),
        (
            Some(PushOutcome::Failed {
                message: "connection refused".into(),
            }),
            "failed: connection refused",
        ),
    ];
    for (outcome, text) in cases {
        assert_eq!(push(outcome.as_ref()), text);
    }
}

/// Removes ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn colour_changes_nothing_but_the_escape_codes() {
    let color = Style {
        color: true,
        ..plain()
    };
    let runs = [
        failed_run(),
        quick_run(43, RunStatus::Succeeded, Trigger::Manual),
    ];
    let list = render_list(&runs, &color);
    assert!(list.contains("\x1b[31mfailed   \x1b[0m"), "{list:?}");
    assert!(list.contains("\x1b[32msucceeded\x1b[0m"), "{list:?}");
    assert_eq!(strip_ansi(&list), render_list(&runs, &plain()));

    let run = failed_run();
    let show = render_run(&run, &color);
    assert!(show.contains("\x1b[31mbuild-failed\x1b[0m"), "{show:?}");
    assert_eq!(strip_ansi(&show), render_run(&run, &plain()));
    assert_eq!(
        strip_ansi(&render_summary(&run, &color)),
        render_summary(&run, &plain())
    );
}

#[test]
fn no_colour_means_no_escape_codes_at_all() {
    let run = failed_run();
    for text in [
        render_list(std::slice::from_ref(&run), &plain()),
        render_run(&run, &plain()),
        render_summary(&run, &plain()),
    ] {
        assert!(!text.contains('\x1b'), "{text:?}");
    }
}
