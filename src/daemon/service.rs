//! The long-running service: one run at a time, at most one follow-up queued (later triggers
//! coalesce into it), the schedule, and the state that `farmctl status` and the sd_notify
//! `STATUS=` line are made from.
//!
//! It owns *when* runs happen and who is told about them; *what* a run does is
//! [`crate::run`]'s. The control socket ([`crate::control`]) and the binary's main loop
//! (signals, watchdog, reload) call into [`Daemon`].

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Settings;
use crate::control::protocol::{ActiveRun, Event, Position, QueuedRun, Status};
use crate::history::History;
use crate::record::{MachineRecord, MachineStatus, Phase, RunRecord, Trigger};
use crate::run::{self, Farm, Observer, RunRequest};
use crate::types::MachineName;

use super::notify::Notifier;

/// Events kept for slow subscribers before they start missing some.
const EVENT_BACKLOG: usize = 256;

pub struct Daemon {
    settings: watch::Sender<Arc<Settings>>,
    history: Arc<History>,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    wake: Notify,
    notifier: Notifier,
    /// The last `STATUS=` sent: progress saves are frequent, status changes are not, and
    /// sd_notify's send blocks when the service manager is slow to read.
    status_sent: Mutex<String>,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct State {
    active: Option<Active>,
    queued: Option<Queued>,
    next_ticket: u64,
    next_run: Option<DateTime<Utc>>,
    last: Option<(crate::record::RunId, crate::record::RunStatus, i64)>,
}

struct Active {
    run: ActiveRun,
    cancel: CancellationToken,
}

struct Queued {
    request: RunRequest,
    tickets: Vec<u64>,
}

/// What a trigger asked for.
#[derive(Clone, Debug)]
pub struct TriggerRequest {
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    pub machines: Vec<MachineName>,
    pub update: bool,
}

impl Daemon {
    pub fn new(settings: Settings, history: Arc<History>, notifier: Notifier) -> Arc<Daemon> {
        let last = history
            .last()
            .ok()
            .flatten()
            .map(|r| (r.id, r.status, r.finished_at.unwrap_or(r.started_at)));
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Arc::new(Daemon {
            settings: watch::Sender::new(Arc::new(settings)),
            history,
            state: Mutex::new(State {
                last,
                ..State::default()
            }),
            events,
            wake: Notify::new(),
            notifier,
            status_sent: Mutex::new(String::new()),
            shutdown: CancellationToken::new(),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    /// Replaces the settings; the active run keeps the ones it started with, the scheduler
    /// recomputes the next fire.
    pub fn replace_settings(&self, settings: Settings) {
        self.settings.send_replace(Arc::new(settings));
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Queues a run: it starts now when idle; during a run it becomes the one follow-up,
    /// or merges into the follow-up already queued (machine subsets union; "all" wins; an
    /// update is done if any trigger wanted one).
    pub fn trigger(&self, req: TriggerRequest) -> (u64, Position) {
        let mut state = self.state.lock().unwrap();
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        let position = match state.queued.as_mut() {
            Some(q) => {
                let r = &mut q.request;
                if r.machines.is_empty() || req.machines.is_empty() {
                    r.machines.clear();
                } else {
                    for m in req.machines {
                        if !r.machines.contains(&m) {
                            r.machines.push(m);
                        }
                    }
                }
                r.update |= req.update;
                q.tickets.push(ticket);
                Position::Coalesced
            }
            None => {
                let position = if state.active.is_some() {
                    Position::Queued
                } else {
                    Position::Starting
                };
                state.queued = Some(Queued {
                    request: RunRequest {
                        trigger: req.trigger,
                        requested_by: req.requested_by.clone(),
                        update: req.update,
                        machines: req.machines,
                    },
                    tickets: vec![ticket],
                });
                position
            }
        };
        drop(state);
        info!(ticket, ?position, by = req.requested_by.as_deref().unwrap_or("-"), trigger = ?req.trigger, "run requested");
        self.wake.notify_one();
        (ticket, position)
    }

    /// Cancels the active run (the nix process groups are killed; the run is recorded as
    /// cancelled). Returns its id, if one was active.
    pub fn cancel(&self, by: &str) -> Option<crate::record::RunId> {
        let state = self.state.lock().unwrap();
        let active = state.active.as_ref()?;
        info!(run = active.run.id, by, "cancelling the run");
        active.cancel.cancel();
        Some(active.run.id)
    }

    pub fn is_running(&self) -> bool {
        self.state.lock().unwrap().active.is_some()
    }

    pub fn status(&self) -> anyhow::Result<Status> {
        let machines = self.history.machine_summaries()?;
        let settings = self.settings();
        let state = self.state.lock().unwrap();
        Ok(Status {
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            active: state.active.as_ref().map(|a| a.run.clone()),
            queued: state.queued.as_ref().map(|q| QueuedRun {
                trigger: q.request.trigger,
                requested_by: q.request.requested_by.clone(),
                machines: q.request.machines.clone(),
                update: q.request.update,
            }),
            next_run: state.next_run.map(|t| t.timestamp()),
            schedule: settings.schedule.schedule.as_ref().map(|s| s.to_string()),
            machines,
        })
    }

    /// The active run's log of a machine, and whether the run is still going.
    pub fn is_active_run(&self, run: crate::record::RunId) -> bool {
        self.state
            .lock()
            .unwrap()
            .active
            .as_ref()
            .is_some_and(|a| a.run.id == run)
    }

    /// Asks the runner and the scheduler to stop; the active run is cancelled.
    pub fn shut_down(&self) {
        self.shutdown.cancel();
        if let Some(active) = self.state.lock().unwrap().active.as_ref() {
            active.cancel.cancel();
        }
        self.wake.notify_one();
    }

    /// Runs queued runs one at a time until shutdown.
    pub async fn runner(self: Arc<Self>) {
        loop {
            let next = {
                let mut state = self.state.lock().unwrap();
                match state.queued.take() {
                    Some(q) if !self.shutdown.is_cancelled() => {
                        let cancel = CancellationToken::new();
                        state.active = Some(Active {
                            run: ActiveRun {
                                id: 0,
                                trigger: q.request.trigger,
                                requested_by: q.request.requested_by.clone(),
                                started_at: Utc::now().timestamp(),
                                phase: None,
                                machines: Vec::new(),
                            },
                            cancel: cancel.clone(),
                        });
                        Some((q, cancel))
                    }
                    other => {
                        state.queued = other;
                        None
                    }
                }
            };
            let Some((queued, cancel)) = next else {
                if self.shutdown.is_cancelled() {
                    return;
                }
                self.update_status_line();
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = self.shutdown.cancelled() => return,
                }
                continue;
            };
            self.run(queued, cancel).await;
        }
    }

    async fn run(self: &Arc<Self>, queued: Queued, cancel: CancellationToken) {
        let settings = self.settings();
        // Held until the run is recorded: the host must not suspend mid-upload.
        let inhibitor = super::inhibit::Inhibitor::default().take().await;
        let observer = RunObserver {
            daemon: self.clone(),
            tickets: queued.tickets.clone(),
            started: std::sync::atomic::AtomicBool::new(false),
        };
        let farm = Farm {
            settings: &settings,
            history: &self.history,
            cancel,
            observer: Some(&observer),
        };
        let result = run::run_once(&farm, queued.request).await;
        drop(inhibitor);
        match result {
            Ok(record) => {
                {
                    let mut state = self.state.lock().unwrap();
                    state.active = None;
                    state.last = Some((
                        record.id,
                        record.status,
                        record.finished_at.unwrap_or(record.started_at),
                    ));
                }
                let _ = self.events.send(Event::Finished {
                    record: Box::new(record.clone()),
                });
                super::hooks::run_hooks(&settings.hooks, &record).await;
            }
            Err(e) => {
                // Only the history itself failing lands here: the run could not be recorded.
                warn!(error = %format!("{e:#}"), "the run could not be recorded");
                self.state.lock().unwrap().active = None;
            }
        }
        self.update_status_line();
    }

    /// The scheduler: sleeps until the next fire of `[schedule] cron` and triggers a run.
    /// Woken by reloads (the schedule may have changed). Returns at shutdown.
    pub async fn scheduler(self: Arc<Self>) {
        let mut changes = self.settings.subscribe();
        loop {
            let schedule = self.settings().schedule.schedule.clone();
            let next = schedule.as_ref().and_then(|s| s.next_after(Utc::now()));
            self.state.lock().unwrap().next_run = next;
            self.update_status_line();
            let sleep = async {
                match next {
                    Some(at) => {
                        let wait = (at - Utc::now()).to_std().unwrap_or_default();
                        tokio::time::sleep(wait).await;
                        true
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                fire = sleep => if fire {
                    self.trigger(TriggerRequest {
                        trigger: Trigger::Schedule,
                        requested_by: Some("schedule".to_owned()),
                        machines: Vec::new(),
                        update: true,
                    });
                    // Never fire twice for one instant (clock jitter).
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                },
                _ = changes.changed() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }

    /// At start: was a scheduled run missed while the daemon was down?
    pub fn catch_up(&self) -> bool {
        let settings = self.settings();
        let Some(schedule) = settings.schedule.schedule.as_ref() else {
            return false;
        };
        if !settings.schedule.catch_up {
            return false;
        }
        let last = self
            .history
            .last()
            .ok()
            .flatten()
            .map(|r| DateTime::<Utc>::from_timestamp(r.started_at, 0).unwrap_or_default());
        if schedule.missed(last, Utc::now()) {
            info!("a scheduled run was missed while farmd was down; running it now");
            self.trigger(TriggerRequest {
                trigger: Trigger::CatchUp,
                requested_by: Some("catch-up at start".to_owned()),
                machines: Vec::new(),
                update: true,
            });
            return true;
        }
        false
    }

    /// Sends the sd_notify `STATUS=` line for the current state.
    pub fn update_status_line(&self) {
        let line = {
            let state = self.state.lock().unwrap();
            status_line(&state)
        };
        let mut sent = self.status_sent.lock().unwrap();
        if *sent != line {
            self.notifier.status(&line);
            *sent = line;
        }
    }
}

/// e.g. `building pi3 (2/4), 1 failed; next run 03:00`.
fn status_line(state: &State) -> String {
    let mut line = match &state.active {
        Some(a) => describe_run(&a.run.machines, a.run.phase),
        None => match state.last {
            Some((id, status, at)) => format!(
                "idle; last run {id} {} at {}",
                status.as_str(),
                local_time(at, "%Y-%m-%d %H:%M")
            ),
            None => "idle; no run yet".to_owned(),
        },
    };
    if state.queued.is_some() {
        line.push_str("; 1 run queued");
    }
    if let Some(next) = state.next_run {
        line.push_str(&format!(
            "; next run {}",
            local_time(next.timestamp(), "%a %H:%M")
        ));
    }
    line
}

fn describe_run(machines: &[MachineRecord], phase: Option<Phase>) -> String {
    let total = machines.len();
    let failed = machines.iter().filter(|m| m.status.is_failure()).count();
    let failed = if failed > 0 {
        format!(", {failed} failed")
    } else {
        String::new()
    };
    match phase {
        None | Some(Phase::Checkout) => "checking out the fleet repository".to_owned(),
        Some(Phase::Update) => "updating the flake's inputs".to_owned(),
        Some(Phase::Evaluate) => format!("evaluating {}{failed}", plural(total, "machine")),
        Some(Phase::Build) => {
            let building: Vec<&str> = machines
                .iter()
                .filter(|m| m.status == MachineStatus::Building)
                .map(|m| m.name.as_str())
                .collect();
            let started = machines
                .iter()
                .filter(|m| m.status != MachineStatus::Pending)
                .count();
            if building.is_empty() {
                format!("building ({started}/{total}){failed}")
            } else {
                format!(
                    "building {} ({started}/{total}){failed}",
                    building.join(", ")
                )
            }
        }
        Some(Phase::Publish) => format!("publishing {}{failed}", plural(total, "machine")),
        Some(Phase::Push) => format!("pushing the lock commit{failed}"),
        Some(Phase::Gc) => format!("collecting garbage in the cache{failed}"),
        Some(Phase::Record) => format!("recording the run{failed}"),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn local_time(unix: i64, format: &str) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .map(|t| t.with_timezone(&chrono::Local).format(format).to_string())
        .unwrap_or_default()
}

/// Turns a run's progress into daemon state, events and the `STATUS=` line.
struct RunObserver {
    daemon: Arc<Daemon>,
    tickets: Vec<u64>,
    started: std::sync::atomic::AtomicBool,
}

impl Observer for RunObserver {
    fn progress(&self, record: &RunRecord, phase: Option<Phase>) {
        use std::sync::atomic::Ordering;
        if !self.started.swap(true, Ordering::Relaxed) {
            let _ = self.daemon.events.send(Event::Started {
                run: record.id,
                tickets: self.tickets.clone(),
            });
        }
        {
            let mut state = self.daemon.state.lock().unwrap();
            if let Some(active) = state.active.as_mut() {
                active.run.id = record.id;
                active.run.started_at = record.started_at;
                active.run.phase = phase;
                active.run.machines = record.machines.clone();
            }
        }
        let _ = self.daemon.events.send(Event::Progress {
            run: record.id,
            phase,
            machines: record.machines.clone(),
        });
        self.daemon.update_status_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::MachineKind;

    fn machine(name: &str, status: MachineStatus) -> MachineRecord {
        MachineRecord {
            name: name.parse().unwrap(),
            kind: MachineKind::Nixos,
            status,
            attribute: String::new(),
            drv_path: None,
            toplevel: None,
            duration_ms: 0,
            error: None,
            log_tail: None,
            log_path: None,
            publish: None,
        }
    }

    #[test]
    fn the_status_line_says_what_is_building_and_what_failed() {
        let machines = [
            machine("alpha", MachineStatus::Built),
            machine("pi3", MachineStatus::Building),
            machine("beta", MachineStatus::BuildFailed),
            machine("gamma", MachineStatus::Pending),
        ];
        assert_eq!(
            describe_run(&machines, Some(Phase::Build)),
            "building pi3 (3/4), 1 failed"
        );
        assert_eq!(
            describe_run(&machines[..1], Some(Phase::Evaluate)),
            "evaluating 1 machine"
        );
    }
}
