//! `farmctl status` and `farmctl trigger --wait`'s live progress, as text.

use std::collections::BTreeMap;

use crate::control::protocol::{Event, Position, Status};
use crate::record::{MachineStatus, Phase};

use super::style::{duration_ms, Paint, Style};

/// Failing this long is shouted about: a farm broken for two months must be impossible to
/// miss.
const LONG_FAILURE_SECS: i64 = 3 * 24 * 3600;

pub fn render_status(status: &Status, style: &Style, now: i64) -> String {
    let mut out = format!("farmd {} (pid {})\n", status.daemon_version, status.pid);
    match (&status.schedule, status.next_run) {
        (Some(schedule), Some(next)) => out.push_str(&format!(
            "schedule   {schedule}, next run {}\n",
            style.minute(next)
        )),
        (Some(schedule), None) => out.push_str(&format!("schedule   {schedule}, no next run\n")),
        (None, _) => out.push_str("schedule   none (runs only when triggered)\n"),
    }
    match &status.active {
        Some(run) => {
            out.push_str(&format!(
                "running    run {} ({}{}), {}, for {}\n",
                run.id,
                trigger_name(run.trigger),
                run.requested_by
                    .as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default(),
                run.phase.map_or("starting", Phase::as_str),
                duration_ms(((now - run.started_at).max(0) as u64) * 1000),
            ));
            for m in &run.machines {
                out.push_str(&format!(
                    "  {:<20} {}\n",
                    m.name.as_str(),
                    style.paint(Paint::of_machine(m.status), m.status.as_str())
                ));
            }
        }
        None => out.push_str("running    nothing\n"),
    }
    if let Some(q) = &status.queued {
        let which = if q.machines.is_empty() {
            "all machines".to_owned()
        } else {
            q.machines
                .iter()
                .map(|m| m.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "queued     a follow-up run ({which}{})\n",
            if q.update { "" } else { ", no update" }
        ));
    }
    if status.machines.is_empty() {
        out.push_str("\nno machine has been built yet\n");
        return out;
    }
    out.push_str(&format!(
        "\n{:<20} {:<13} {:<17} {}\n",
        "MACHINE", "LAST", "LAST SUCCESS", "FAILING"
    ));
    for m in &status.machines {
        let success = m
            .last_success
            .as_ref()
            .map_or_else(|| "never".to_owned(), |s| style.minute(s.at));
        let failing = match m.failing_since {
            Some(since) => {
                let text = format!(
                    "since {} ({}, {} run{})",
                    style.minute(since),
                    duration_ms(((now - since).max(0) as u64) * 1000),
                    m.failures_since_success,
                    if m.failures_since_success == 1 {
                        ""
                    } else {
                        "s"
                    }
                );
                let paint = if now - since > LONG_FAILURE_SECS {
                    Paint::Bad
                } else {
                    Paint::Warn
                };
                style.paint(paint, &text)
            }
            None => "-".to_owned(),
        };
        out.push_str(&format!(
            "{:<20} {:<13} {:<17} {}\n",
            m.name.as_str(),
            style.paint(Paint::of_machine(m.last_status), m.last_status.as_str()),
            success,
            failing
        ));
    }
    out
}

pub fn trigger_name(t: crate::record::Trigger) -> &'static str {
    use crate::record::Trigger::*;
    match t {
        Once => "once",
        Manual => "manual",
        Schedule => "schedule",
        CatchUp => "catch-up",
    }
}

pub fn render_accepted(ticket: u64, position: Position) -> String {
    match position {
        Position::Starting => format!("run requested (ticket {ticket}): starting now\n"),
        Position::Queued => {
            format!("run requested (ticket {ticket}): queued to start after the active run\n")
        }
        Position::Coalesced => format!(
            "run requested (ticket {ticket}): merged into the run already queued after the active one\n"
        ),
    }
}

/// Turns the stream of events into lines worth printing: phase changes and machines that
/// finished. Remembers what it printed so repeated progress events print nothing new.
#[derive(Default)]
pub struct ProgressPrinter {
    phase: Option<Phase>,
    seen: BTreeMap<String, MachineStatus>,
}

impl ProgressPrinter {
    pub fn lines(&mut self, event: &Event, style: &Style) -> String {
        let mut out = String::new();
        match event {
            Event::Accepted { ticket, position } => {
                out.push_str(&render_accepted(*ticket, *position))
            }
            Event::Started { run, .. } => out.push_str(&format!("run {run} started\n")),
            Event::Progress {
                phase, machines, ..
            } => {
                if *phase != self.phase {
                    if let Some(p) = phase {
                        out.push_str(&format!("{}\n", style.paint(Paint::Bold, p.as_str())));
                    }
                    self.phase = *phase;
                }
                for m in machines {
                    let before = self.seen.insert(m.name.to_string(), m.status);
                    if before == Some(m.status) || m.status == MachineStatus::Pending {
                        continue;
                    }
                    let mut line = format!(
                        "  {:<20} {}",
                        m.name.as_str(),
                        style.paint(Paint::of_machine(m.status), m.status.as_str())
                    );
                    if m.status != MachineStatus::Building {
                        line.push_str(&format!(" ({})", duration_ms(m.duration_ms)));
                    }
                    if let Some(e) = m.error.as_deref().filter(|_| m.status.is_failure()) {
                        line.push_str(&format!(": {e}"));
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
            }
            Event::Finished { .. } | Event::Log { .. } => {}
        }
        out
    }
}
