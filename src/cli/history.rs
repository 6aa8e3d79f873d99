//! `farmctl history`, `farmctl show` and the summary `farmd --once` prints: a [`RunRecord`]
//! as text. JSON output needs nothing from here: it is `serde_json` of the records as they are.

use std::fmt::Write as _;
use std::path::Path;

use crate::history::enum_str;
use crate::record::{MachineRecord, PushOutcome, RunRecord};

use super::style::{duration_ms, run_duration, short_rev, Paint, Style};

/// One line per run, newest first as given, under a header. Columns are as wide as their
/// widest value, two spaces apart, or one when two would pass 80 columns: with ids of up to four
/// digits and fewer than 1000 machines, every line fits an 80-column terminal.
pub fn render_list(runs: &[RunRecord], style: &Style) -> String {
    if runs.is_empty() {
        return "no runs recorded yet\n".to_owned();
    }
    const HEADER: [&str; 7] = [
        "ID", "STARTED", "TRIGGER", "STATUS", "BUILT", "TIME", "REVISION",
    ];
    // The numbers are right-aligned.
    const RIGHT: [bool; 7] = [true, false, false, false, true, true, false];
    const STATUS: usize = 3;
    let rows: Vec<[String; 7]> = runs
        .iter()
        .map(|run| {
            [
                run.id.to_string(),
                style.minute(run.started_at),
                enum_str(&run.trigger),
                enum_str(&run.status),
                built_of_total(run),
                run_duration(run.started_at, run.finished_at).unwrap_or_else(|| "-".into()),
                revisions(run),
            ]
        })
        .collect();
    let mut width = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let gap = if width.iter().sum::<usize>() + 2 * (width.len() - 1) <= 80 {
        "  "
    } else {
        " "
    };

    let line = |cells: [&str; 7], paint: [Option<Paint>; 7]| {
        let mut line = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i > 0 {
                line.push_str(gap);
            }
            let pad = " ".repeat(width[i] - cell.chars().count());
            let padded = match (RIGHT[i], i == cells.len() - 1) {
                (true, _) => format!("{pad}{cell}"),
                // No trailing blanks after the last column.
                (false, true) => cell.to_owned(),
                (false, false) => format!("{cell}{pad}"),
            };
            match paint[i] {
                Some(paint) => line.push_str(&style.paint(paint, &padded)),
                None => line.push_str(&padded),
            }
        }
        line + "\n"
    };

    let mut out = line(HEADER, [Some(Paint::Bold); 7]);
    for (run, row) in runs.iter().zip(&rows) {
        let mut paint = [None; 7];
        paint[STATUS] = Some(Paint::of_run(run.status));
        out.push_str(&line(row.each_ref().map(String::as_str), paint));
    }
    out
}

/// `farmctl show`: everything the record holds, failures last so they stay on screen.
pub fn render_run(run: &RunRecord, style: &Style) -> String {
    let mut out = String::new();
    let status = style.paint(Paint::of_run(run.status), &enum_str(&run.status));
    let _ = writeln!(
        out,
        "{}  {status}",
        style.paint(Paint::Bold, &format!("run {}", run.id))
    );

    let mut field = |label: &str, value: &str| {
        let _ = writeln!(out, "  {label:<14}{value}");
    };
    field("trigger", &enum_str(&run.trigger));
    if let Some(who) = &run.requested_by {
        field("requested by", who);
    }
    field("started", &style.second(run.started_at));
    match run.finished_at {
        Some(end) => {
            let took = run_duration(run.started_at, Some(end)).unwrap_or_default();
            field("finished", &format!("{} (took {took})", style.second(end)));
        }
        None => field("finished", "-"),
    }
    field("rev before", run.rev_before.as_deref().unwrap_or("-"));
    field("rev after", run.rev_after.as_deref().unwrap_or("-"));
    field(
        "lock",
        if run.lock_changed {
            "changed"
        } else {
            "unchanged"
        },
    );
    if let Some(p) = &run.publish {
        field("publish", &publish_line(p));
    }
    field("push", &push(run.push.as_ref()));
    if !run.generations.is_empty() {
        let names: Vec<&str> = run.generations.iter().map(|g| g.machine.as_str()).collect();
        field("generations", &format!("recorded for {}", names.join(", ")));
    }
    if let Some(gc) = &run.gc {
        field("gc", &gc_line(gc));
        for m in &gc.machines {
            let _ = writeln!(out, "  {:<14}{}", "", machine_gc_line(m));
        }
    }

    if !run.phases.is_empty() {
        out.push_str("\nphases\n");
        for timing in &run.phases {
            let _ = writeln!(
                out,
                "  {:<10}{:>7}",
                timing.phase.as_str(),
                duration_ms(timing.duration_ms)
            );
        }
    }

    if !run.machines.is_empty() {
        let _ = writeln!(
            out,
            "\nmachines: {} of {} built",
            built_count(run),
            run.machines.len()
        );
        out.push_str(&machine_table(&run.machines, style));
    }

    for m in run.machines.iter().filter(|m| has_details(m)) {
        let status = style.paint(Paint::of_machine(m.status), &enum_str(&m.status));
        let _ = writeln!(
            out,
            "\n{}: {status}",
            style.paint(Paint::Bold, m.name.as_str())
        );
        if let Some(error) = &m.error {
            out.push_str(&indent(error, "  "));
        }
        match (&m.log_path, &m.log_tail) {
            (Some(path), Some(_)) => {
                let _ = writeln!(out, "  log {path}, last lines:");
            }
            (Some(path), None) => {
                let _ = writeln!(out, "  log {path}");
            }
            (None, Some(_)) => out.push_str("  last lines of the log:\n"),
            (None, None) => {}
        }
        if let Some(tail) = &m.log_tail {
            out.push_str(&indent(tail, "    "));
        }
    }

    if let Some(error) = &run.error {
        let _ = writeln!(out, "\n{}", style.paint(Paint::Bad, "run error:"));
        out.push_str(&indent(error, "  "));
    }
    out
}

/// What `farmd --once` prints when the run ends: the outcome, one line per machine that did
/// not build, the push and where to look next.
pub fn render_summary(run: &RunRecord, style: &Style) -> String {
    let mut out = String::new();
    let status = style.paint(Paint::of_run(run.status), &enum_str(&run.status));
    let _ = write!(out, "run {}: {status}", run.id);
    if let Some(took) = run_duration(run.started_at, run.finished_at) {
        let _ = write!(out, " after {took}");
    }
    if !run.machines.is_empty() {
        let _ = write!(
            out,
            ", {} of {} machines built",
            built_count(run),
            run.machines.len()
        );
    }
    out.push('\n');

    for m in run.failed_machines() {
        let status = style.paint(Paint::of_machine(m.status), &enum_str(&m.status));
        let _ = write!(out, "  {}: {status}", m.name);
        if let Some(why) = m.error.as_deref().and_then(first_line) {
            let _ = write!(out, ": {why}");
        }
        out.push('\n');
    }
    if let Some(error) = &run.error {
        let _ = writeln!(
            out,
            "{} {}",
            style.paint(Paint::Bad, "error:"),
            error.trim_end()
        );
    }
    if let Some(p) = &run.publish {
        let _ = writeln!(out, "publish: {}", publish_line(p));
    }
    if let Some(outcome) = &run.push {
        let _ = writeln!(out, "push: {}", push(Some(outcome)));
    }
    if let Some(gc) = &run.gc {
        let _ = writeln!(out, "gc: {}", gc_line(gc));
    }
    out.push_str(&log_locations(run));
    let _ = writeln!(out, "details: farmctl show {}", run.id);
    out
}

/// `640 paths (450.0 MiB) in the closures: 97 uploaded (28.1 MiB compressed), 543 already
/// cached, in 1.2s`.
fn publish_line(p: &crate::cache::publish::PublishSummary) -> String {
    use crate::cache::publish::bytes;
    format!(
        "{} paths ({}) in the closures: {} uploaded ({} compressed), {} already cached, in {}",
        p.closure_paths,
        bytes(p.closure_nar_bytes),
        p.uploaded_paths,
        bytes(p.uploaded_file_bytes),
        p.already_cached,
        duration_ms(p.duration_ms)
    )
}

/// `12 paths deleted (3.4 MiB freed), 640 kept (450.0 MiB), 2 records dropped`.
fn gc_line(gc: &crate::cache::gc::GcReport) -> String {
    use crate::cache::publish::bytes;
    format!(
        "{} paths deleted ({} freed), {} kept ({}), {} records dropped, in {}",
        gc.deleted_paths,
        bytes(gc.freed_bytes),
        gc.kept_paths,
        bytes(gc.kept_bytes),
        gc.records_deleted.len(),
        duration_ms(gc.mark_ms + gc.sweep_ms)
    )
}

/// `alpha: 3 generations kept (9 paths, 1.2 MiB), 1 dropped (4 paths, 200 KiB freed)`.
fn machine_gc_line(m: &crate::cache::gc::MachineGc) -> String {
    use crate::cache::publish::bytes;
    format!(
        "{}: {} generations kept ({} paths, {}), {} dropped ({} paths, {} freed)",
        m.machine,
        m.generations_kept,
        m.kept_paths,
        bytes(m.kept_bytes),
        m.generations_dropped,
        m.freed_paths,
        bytes(m.freed_bytes)
    )
}

fn built_count(run: &RunRecord) -> usize {
    run.machines
        .iter()
        .filter(|m| m.status.is_success())
        .count()
}

fn built_of_total(run: &RunRecord) -> String {
    if run.machines.is_empty() {
        return "-".to_owned();
    }
    format!("{}/{}", built_count(run), run.machines.len())
}

/// `1a2b3c4d→5e6f7a8b lock` when the update committed a new lock, `1a2b3c4d` when the
/// revision did not move, `-` when the checkout never got one.
fn revisions(run: &RunRecord) -> String {
    let mut text = match (run.rev_before.as_deref(), run.rev_after.as_deref()) {
        (Some(before), Some(after)) if before != after => {
            format!("{}→{}", short_rev(before), short_rev(after))
        }
        (Some(rev), _) | (None, Some(rev)) => short_rev(rev).to_owned(),
        (None, None) => "-".to_owned(),
    };
    if run.lock_changed {
        // "lock changed", shortened so the line fits 80 columns.
        text.push_str(" lock");
    }
    text
}

fn push(outcome: Option<&PushOutcome>) -> String {
    match outcome {
        None => "not attempted".to_owned(),
        Some(PushOutcome::Skipped { reason }) => format!("skipped: {reason}"),
        Some(PushOutcome::UpToDate { rev }) => format!("up to date at {}", short_rev(rev)),
        Some(PushOutcome::Pushed { rev }) => format!("pushed {}", short_rev(rev)),
        Some(PushOutcome::Rejected { message }) => format!("rejected: {message}"),
        Some(PushOutcome::Failed { message }) => format!("failed: {message}"),
    }
}

fn machine_table(machines: &[MachineRecord], style: &Style) -> String {
    let name_w = machines
        .iter()
        .map(|m| m.name.as_str().len())
        .max()
        .unwrap_or(0)
        .max(4);
    let status_w = machines
        .iter()
        .map(|m| enum_str(&m.status).len())
        .max()
        .unwrap_or(0)
        .max(6);
    let times: Vec<String> = machines
        .iter()
        .map(|m| duration_ms(m.duration_ms))
        .collect();
    let time_w = times.iter().map(String::len).max().unwrap_or(0).max(4);

    let mut out = format!(
        "  {}\n",
        style.paint(
            Paint::Bold,
            &format!(
                "{:<name_w$}  {:<status_w$}  {:>time_w$}  TOPLEVEL",
                "NAME", "STATUS", "TIME"
            )
        )
    );
    for (m, time) in machines.iter().zip(&times) {
        let status = format!("{:<status_w$}", enum_str(&m.status));
        let toplevel = m.toplevel.as_ref().map_or("-", |p| p.as_str());
        let _ = writeln!(
            out,
            "  {:<name_w$}  {}  {time:>time_w$}  {toplevel}",
            m.name.as_str(),
            style.paint(Paint::of_machine(m.status), &status),
        );
    }
    out
}

/// Whether `show` gives a machine its own section: it did not build and there is something to
/// say about why.
fn has_details(m: &MachineRecord) -> bool {
    !m.status.is_success() && (m.error.is_some() || m.log_tail.is_some())
}

/// Where the logs of the machines that did not build are: their directory when they share one.
fn log_locations(run: &RunRecord) -> String {
    let paths: Vec<&str> = run
        .failed_machines()
        .filter_map(|m| m.log_path.as_deref())
        .collect();
    match paths.as_slice() {
        [] => String::new(),
        [one] => format!("log: {one}\n"),
        [first, rest @ ..] => {
            let dir = Path::new(first).parent();
            if dir.is_some() && rest.iter().all(|p| Path::new(p).parent() == dir) {
                format!("logs: {}/\n", dir.unwrap_or(Path::new("")).display())
            } else {
                paths.iter().map(|p| format!("log: {p}\n")).collect()
            }
        }
    }
}

fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Every line of `text` behind `prefix`, ending in a newline.
fn indent(text: &str, prefix: &str) -> String {
    text.trim_end()
        .lines()
        .map(|line| {
            if line.is_empty() {
                "\n".to_owned()
            } else {
                format!("{prefix}{line}\n")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
