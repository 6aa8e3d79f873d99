//! One run, top to bottom. Each phase hands a plain value to the next:
//!
//! checkout → `Checkout { dir, rev }` → update → evaluate → `Vec<Machine>` → build →
//! `MachineRecord`s → publish (the cache, then a generation record per machine) → push →
//! gc (`[cache.retention]`) → `RunRecord` in the history.
//!
//! Every phase change goes through [`Run::transition_to`], which updates the log, the history
//! and the phase timings together so they never disagree. One machine failing never stops the
//! others; an infrastructure failure (checkout, update, listing machines) ends the run as
//! `error`.

pub mod build;
pub mod evaluate;
pub mod state;

use std::fs::File;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::config::{PushPolicy, Settings};
use crate::git;
use crate::history::History;
use crate::nix::{self, NixCommand, NixError, NixOptions};
use crate::process::{self, Limits, Outcome};
use crate::record::{
    MachineRecord, MachineStatus, Phase, PhaseTiming, PushOutcome, RunRecord, RunStatus, Trigger,
};
use crate::types::MachineName;

use evaluate::Machine;
pub use state::StateLayout;

/// What to run.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub trigger: Trigger,
    pub requested_by: Option<String>,
    /// Run the update phase (`farmctl trigger --no-update` turns it off).
    pub update: bool,
    /// Only these machines (empty: all).
    pub machines: Vec<MachineName>,
}

/// Everything a run needs from its surroundings.
pub struct Farm<'a> {
    pub settings: &'a Settings,
    pub history: &'a History,
    pub cancel: CancellationToken,
    /// Told about every change of phase and machine (the daemon's status, events, sd_notify).
    pub observer: Option<&'a (dyn Observer + 'a)>,
}

/// Watches a run's progress. Called on the run's task: keep it quick and never block.
pub trait Observer: Send + Sync {
    fn progress(&self, record: &RunRecord, phase: Option<Phase>);
}

/// The run was cancelled (by SIGINT/SIGTERM or `farmctl cancel`).
#[derive(Debug, thiserror::Error)]
#[error("the run was cancelled")]
pub struct Cancelled;

/// Runs one complete cycle and returns its record (also saved in the history).
/// Only a failure to write the history itself is an `Err`.
pub async fn run_once(farm: &Farm<'_>, request: RunRequest) -> anyhow::Result<RunRecord> {
    let started_at = chrono::Utc::now().timestamp();
    let id = farm
        .history
        .begin(request.trigger, request.requested_by.as_deref(), started_at)
        .context("cannot record the start of the run")?;
    let mut run = Run {
        farm,
        layout: StateLayout::new(&farm.settings.state.dir),
        nix: NixOptions::from_settings(&farm.settings.build),
        phase: None,
        record: RunRecord {
            id,
            trigger: request.trigger,
            requested_by: request.requested_by.clone(),
            started_at,
            finished_at: None,
            status: RunStatus::Running,
            rev_before: None,
            rev_after: None,
            lock_changed: false,
            push: None,
            error: None,
            phases: Vec::new(),
            machines: Vec::new(),
            publish: None,
            generations: Vec::new(),
            gc: None,
        },
    };
    let span = tracing::info_span!("run", run = id);
    let outcome = run.pipeline(&request).instrument(span.clone()).await;
    let _enter = span.enter();
    run.finish(outcome)?;
    Ok(run.record)
}

struct Run<'a> {
    farm: &'a Farm<'a>,
    layout: StateLayout,
    nix: NixOptions,
    phase: Option<(Phase, Instant)>,
    record: RunRecord,
}

impl Run<'_> {
    fn settings(&self) -> &Settings {
        self.farm.settings
    }

    fn cancel(&self) -> &CancellationToken {
        &self.farm.cancel
    }

    /// The one place a phase changes: closes the previous phase's timing, logs, saves.
    fn transition_to(&mut self, phase: Option<Phase>) {
        if let Some((prev, since)) = self.phase.take() {
            let duration_ms = since.elapsed().as_millis() as u64;
            info!(phase = %prev, duration_ms, "phase done");
            self.record.phases.push(PhaseTiming {
                phase: prev,
                duration_ms,
            });
        }
        if let Some(phase) = phase {
            info!(phase = %phase, "phase started");
            self.phase = Some((phase, Instant::now()));
        }
        self.save();
    }

    fn save(&self) {
        if let Some(observer) = self.farm.observer {
            observer.progress(&self.record, self.phase.map(|(p, _)| p));
        }
        // Progress saves are best effort; the final save's error is reported by `finish`.
        if let Err(e) = self.farm.history.save(&self.record) {
            warn!(error = %format!("{e:#}"), "cannot save run progress");
        }
    }

    fn check_cancelled(&self) -> anyhow::Result<()> {
        if self.cancel().is_cancelled() {
            return Err(Cancelled.into());
        }
        Ok(())
    }

    async fn pipeline(&mut self, request: &RunRequest) -> anyhow::Result<()> {
        self.layout.prepare()?;
        std::fs::create_dir_all(self.layout.run_logs(self.record.id))
            .context("cannot create the run's log directory")?;

        self.transition_to(Some(Phase::Checkout));
        let checkout = self.checkout().await?;
        self.record.rev_before = Some(checkout.rev.clone());
        self.record.rev_after = Some(checkout.rev.clone());
        self.check_cancelled()?;

        let flake = checkout.dir.to_string_lossy().into_owned();
        if self.settings().update.enable && request.update {
            self.transition_to(Some(Phase::Update));
            let rev = self.update(&checkout).await?;
            self.record.lock_changed = rev != checkout.rev;
            self.record.rev_after = Some(rev);
            self.check_cancelled()?;
            if self.settings().update.push == PushPolicy::Always {
                self.transition_to(Some(Phase::Push));
                self.push(&checkout).await?;
            }
        }

        self.transition_to(Some(Phase::Evaluate));
        let machines = self.evaluate(&flake, &request.machines).await?;
        self.check_cancelled()?;

        self.transition_to(Some(Phase::Build));
        self.build(&machines).await?;
        self.check_cancelled()?;

        if let Some(cache) = self.settings().cache.clone() {
            self.transition_to(Some(Phase::Publish));
            self.publish(&cache).await?;
            self.check_cancelled()?;
        }

        if self.settings().update.push == PushPolicy::Built {
            self.transition_to(Some(Phase::Push));
            let failed = self.record.failed_machines().count();
            let unpublished = self
                .record
                .publish
                .as_ref()
                .is_some_and(|p| !p.is_complete());
            if failed > 0 || unpublished || self.record.error.is_some() {
                let why = if failed > 0 {
                    format!("{failed} of {} machines failed", self.record.machines.len())
                } else if unpublished {
                    "not every built closure reached the cache".to_owned()
                } else {
                    "the run reported problems".to_owned()
                };
                self.record.push = Some(PushOutcome::Skipped {
                    reason: format!(
                        "{why}; with push = \"built\" the lock is pushed only when every machine built and was published"
                    ),
                });
            } else {
                self.push(&checkout).await?;
            }
        } else if self.settings().update.push == PushPolicy::Never {
            self.record.push = Some(PushOutcome::Skipped {
                reason: "push = \"never\"".to_owned(),
            });
        }

        if let Some(cache) = self.settings().cache.clone() {
            if cache.retention.gc_after_publish {
                self.check_cancelled()?;
                self.transition_to(Some(Phase::Gc));
                self.gc(&cache).await?;
            }
        }
        Ok(())
    }

    /// After publish and push: delete what no kept generation or pin needs. A failed GC
    /// leaves the cache consistent; the run is reported failed, not errored.
    async fn gc(&mut self, cache: &crate::config::CacheSettings) -> anyhow::Result<()> {
        let state = self.settings().state.dir.clone();
        match crate::cache::gc::gc(cache, &state, false, self.cancel()).await {
            Ok(mut report) => {
                report.deleted.clear(); // counted in deleted_paths; the list can be long
                self.record.gc = Some(report);
            }
            Err(e) if e.is::<Cancelled>() => return Err(e),
            Err(e) => {
                let e = format!("{:#}", e.context("garbage collection of the cache failed"));
                warn!(error = %e, "gc failed");
                self.record.error = Some(match self.record.error.take() {
                    Some(before) => format!("{before}\n{e}"),
                    None => e,
                });
            }
        }
        self.save();
        Ok(())
    }

    async fn checkout(&mut self) -> anyhow::Result<git::Checkout> {
        let repo = self.settings().repo.clone();
        let dir = self.layout.checkout();
        let checkout = tokio::task::spawn_blocking(move || git::sync(&repo, &dir))
            .await
            .context("the checkout task panicked")?
            .with_context(|| {
                format!(
                    "cannot check out branch `{}` of `{}`",
                    self.settings().repo.branch,
                    self.settings().repo.url
                )
            })?;
        info!(rev = %checkout.rev, "checked out");
        if let Some(prepare) = self.settings().repo.prepare.clone() {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c").arg(&prepare).current_dir(&checkout.dir);
            let log = self.layout.run_logs(self.record.id).join("prepare.log");
            let limits = Limits {
                timeout: Some(self.settings().build.timeout),
                cancel: Some(self.cancel()),
                log: File::create(&log).ok(),
            };
            match process::run(cmd, limits)
                .await
                .with_context(|| format!("cannot run the prepare command `{prepare}`"))?
            {
                Outcome::Finished(f) if f.status.success() => {}
                Outcome::Finished(f) => anyhow::bail!(
                    "the prepare command `{prepare}` failed ({}); fix `[repo] prepare`:\n{}",
                    f.status,
                    f.stderr_tail
                ),
                Outcome::TimedOut { .. } => {
                    anyhow::bail!("the prepare command `{prepare}` timed out")
                }
                Outcome::Cancelled { .. } => return Err(Cancelled.into()),
            }
        }
        Ok(checkout)
    }

    /// `nix flake update --commit-lock-file` (or only the configured inputs); returns the new HEAD.
    async fn update(&mut self, checkout: &git::Checkout) -> anyhow::Result<String> {
        let update = &self.settings().update;
        let mut cmd = NixCommand::new(&self.nix).cwd(&checkout.dir);
        // No positional flake argument: Nix ≥ 2.19 reads positional words as input names.
        cmd = if update.inputs.is_empty() {
            cmd.args(["flake", "update", "--commit-lock-file"])
        } else {
            let mut cmd = cmd.args(["flake", "lock", "--commit-lock-file"]);
            for input in &update.inputs {
                cmd = cmd.args(["--update-input", input]);
            }
            cmd
        };
        for who in ["AUTHOR", "COMMITTER"] {
            cmd = cmd
                .env(format!("GIT_{who}_NAME"), &update.author_name)
                .env(format!("GIT_{who}_EMAIL"), &update.author_email);
        }
        let log = File::create(self.layout.run_logs(self.record.id).join("update.log")).ok();
        match cmd
            .output(nix::limits(
                self.settings().build.timeout,
                self.cancel(),
                log,
            ))
            .await
        {
            Ok(_) => {}
            Err(NixError::Cancelled { .. }) => return Err(Cancelled.into()),
            Err(e) => return Err(e).context("cannot update the flake's inputs"),
        }
        let dir = checkout.dir.clone();
        let rev = tokio::task::spawn_blocking(move || git::head(&dir))
            .await
            .context("the git task panicked")??;
        if rev != checkout.rev {
            info!(rev = %rev, "lock file updated and committed");
        } else {
            info!("lock file unchanged");
        }
        Ok(rev)
    }

    async fn evaluate(
        &mut self,
        flake: &str,
        only: &[MachineName],
    ) -> anyhow::Result<Vec<(usize, Machine)>> {
        let discovered =
            evaluate::discover(self.settings(), &self.nix, flake, self.cancel()).await?;
        if !discovered.refused.is_empty() {
            for why in &discovered.refused {
                warn!("{why}");
            }
            self.record.error = Some(discovered.refused.join("\n"));
        }
        let mut machines: Vec<Machine> = discovered
            .machines
            .into_iter()
            .filter(|m| only.is_empty() || only.contains(&m.name))
            .collect();
        machines.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        if let Some(missing) = only
            .iter()
            .find(|n| !machines.iter().any(|m| &m.name == *n))
        {
            anyhow::bail!("machine `{missing}` was asked for, but the flake has no such machine");
        }
        for m in &machines {
            self.record.machines.push(MachineRecord {
                name: m.name.clone(),
                kind: m.kind,
                status: MachineStatus::Pending,
                attribute: m.attribute.clone(),
                drv_path: None,
                toplevel: None,
                duration_ms: 0,
                error: None,
                log_tail: None,
                publish: None,
                log_path: Some(
                    self.layout
                        .machine_log(self.record.id, m.kind, &m.name)
                        .display()
                        .to_string(),
                ),
            });
        }
        self.save();

        let machines: Vec<(usize, Machine)> = machines.into_iter().enumerate().collect();
        let mut ok = Vec::new();
        self.for_each_machine(
            &machines,
            |run, m| {
                let nix = run.nix.clone();
                let flake = flake.to_owned();
                let log = run.open_machine_log(m);
                let timeout = run.settings().build.timeout;
                let cancel = run.cancel().clone();
                let m = m.clone();
                async move {
                    let started = Instant::now();
                    let limits = nix::limits(timeout, &cancel, log);
                    let result = evaluate::derivation(&nix, &flake, &m, limits).await;
                    (result, started.elapsed())
                }
            },
            |_, _| {},
            |run, index, (result, elapsed)| {
                let rec = &mut run.record.machines[index];
                rec.duration_ms += elapsed.as_millis() as u64;
                let drv = result.map_err(|e| {
                    rec.status = match e {
                        NixError::Cancelled { .. } => MachineStatus::Cancelled,
                        NixError::TimedOut { .. } => MachineStatus::TimedOut,
                        _ => MachineStatus::EvalFailed,
                    };
                    rec.log_tail = e.stderr_tail().map(str::to_owned);
                    format!("evaluation failed: {}", first_error_line(&e))
                });
                match drv.and_then(|d| {
                    d.parse()
                        .map_err(|e| format!("evaluation gave an invalid derivation: {e}"))
                }) {
                    Ok(drv) => {
                        rec.drv_path = Some(drv);
                        ok.push(index);
                    }
                    Err(error) => {
                        if rec.status == MachineStatus::Pending {
                            rec.status = MachineStatus::EvalFailed;
                        }
                        warn!(machine = %rec.name, status = rec.status.as_str(), error = %error, "evaluation failed");
                        rec.error = Some(error);
                    }
                }
            },
        )
        .await;
        ok.sort_unstable();
        Ok(machines
            .into_iter()
            .filter(|(i, _)| ok.binary_search(i).is_ok())
            .collect())
    }

    async fn build(&mut self, machines: &[(usize, Machine)]) -> anyhow::Result<()> {
        let nix_version = nix::version(&self.nix)
            .await
            .context("cannot find out which Nix is installed")?;
        self.for_each_machine(
            machines,
            |run, m| {
                let nix = run.nix.clone();
                let log = run.open_machine_log(m);
                let gcroot = run.layout.gcroot(m.kind, &m.name);
                let rec = run
                    .record
                    .machines
                    .iter()
                    .find(|r| r.name == m.name && r.kind == m.kind)
                    .expect("evaluated machines are recorded");
                let drv = rec
                    .drv_path
                    .clone()
                    .expect("evaluated machines have a derivation");
                let already = Duration::from_millis(rec.duration_ms);
                let timeout = run.settings().build.timeout.saturating_sub(already);
                let cancel = run.cancel().clone();
                let m = m.clone();
                async move {
                    info!(machine = %m.name, drv = %drv, "building");
                    let started = Instant::now();
                    let limits = nix::limits(timeout, &cancel, log);
                    let result = build::build(&nix, &m, &drv, nix_version, &gcroot, limits).await;
                    (result, started.elapsed())
                }
            },
            |run, index| run.record.machines[index].status = MachineStatus::Building,
            |run, index, (result, elapsed)| {
                let rec = &mut run.record.machines[index];
                rec.duration_ms += elapsed.as_millis() as u64;
                match result {
                    Ok(toplevel) => {
                        rec.status = MachineStatus::Built;
                        info!(machine = %rec.name, toplevel = %toplevel, duration_ms = rec.duration_ms, status = rec.status.as_str(), "built");
                        rec.toplevel = Some(toplevel);
                    }
                    Err(e) => {
                        rec.status = match &e {
                            build::BuildError::Nix(NixError::Cancelled { .. }) => {
                                MachineStatus::Cancelled
                            }
                            build::BuildError::Nix(NixError::TimedOut { .. }) => {
                                MachineStatus::TimedOut
                            }
                            _ => MachineStatus::BuildFailed,
                        };
                        rec.log_tail = rec
                            .log_path
                            .as_deref()
                            .and_then(|p| process::file_tail(p.as_ref(), process::TAIL_LINES));
                        rec.error = Some(match &e {
                            build::BuildError::Nix(n) => first_error_line(n),
                            other => other.to_string(),
                        });
                        warn!(machine = %rec.name, status = rec.status.as_str(), duration_ms = rec.duration_ms, error = %rec.error.as_deref().unwrap_or(""), "build failed");
                    }
                }
            },
        )
        .await;
        Ok(())
    }

    /// Runs `make`'s futures for the machines, `[build] jobs` at a time, and applies
    /// `on_start` / `on_done` to the record as each one starts and ends (so progress is saved
    /// and observed live, not at the end of the phase). Indexes are into `record.machines`.
    async fn for_each_machine<Make, Fut, T>(
        &mut self,
        machines: &[(usize, Machine)],
        make: Make,
        mut on_start: impl FnMut(&mut Self, usize),
        mut on_done: impl FnMut(&mut Self, usize, T),
    ) where
        Make: Fn(&Self, &Machine) -> Fut,
        Fut: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        enum Event<T> {
            Started(usize),
            Done(usize, T),
        }
        let permits = std::sync::Arc::new(Semaphore::new(self.settings().build.jobs.get()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (index, m) in machines {
            let fut = make(self, m);
            let (permits, tx, index) = (permits.clone(), tx.clone(), *index);
            let span = tracing::info_span!("machine", machine = %m.name);
            tokio::spawn(
                async move {
                    let _permit = permits.acquire_owned().await.expect("never closed");
                    let _ = tx.send(Event::Started(index));
                    let _ = tx.send(Event::Done(index, fut.await));
                }
                .instrument(span),
            );
        }
        drop(tx);
        while let Some(event) = rx.recv().await {
            match event {
                Event::Started(index) => on_start(self, index),
                Event::Done(index, result) => on_done(self, index, result),
            }
            self.save();
        }
    }

    fn open_machine_log(&self, m: &Machine) -> Option<File> {
        let path = self.layout.machine_log(self.record.id, m.kind, &m.name);
        match File::options().create(true).append(true).open(&path) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot open machine log");
                None
            }
        }
    }

    /// Phase 5: the union of the built closures into the cache, closure-complete at every
    /// instant; per-machine figures go into each machine's record.
    async fn publish(&mut self, cache: &crate::config::CacheSettings) -> anyhow::Result<()> {
        let built: Vec<&MachineRecord> = self
            .record
            .machines
            .iter()
            .filter(|m| m.status.is_success())
            .collect();
        let roots: Vec<_> = built.iter().filter_map(|m| m.toplevel.clone()).collect();
        if roots.is_empty() {
            info!("nothing built: nothing to publish");
            return Ok(());
        }
        let logs: Vec<_> = built
            .iter()
            .filter_map(|m| Some((m.drv_path.clone()?, m.log_path.clone()?.into())))
            .collect();
        // No GC of this farm may run between finding paths cached and recording the roots.
        let _lock = crate::cache::gc::CacheLock::acquire(&self.settings().state.dir).await?;
        let summary = match crate::cache::publish::publish(
            cache,
            &self.nix,
            &roots,
            &logs,
            self.cancel(),
            &|_| {},
        )
        .await
        {
            Ok(summary) => summary,
            Err(e) if e.is::<Cancelled>() => return Err(e),
            Err(e) => return Err(e.context(format!("cannot publish to `{}`", cache.url))),
        };
        info!(
            paths = summary.closure_paths,
            uploaded = summary.uploaded_paths,
            uploaded_bytes = summary.uploaded_file_bytes,
            cached = summary.already_cached,
            duration_ms = summary.duration_ms,
            "published"
        );
        for m in &mut self.record.machines {
            if let Some(top) = &m.toplevel {
                m.publish = summary.root(top).cloned();
            }
        }
        if !summary.is_complete() {
            let mut problems: Vec<String> = summary
                .failed
                .iter()
                .map(|f| format!("{}: {}", f.path, f.error))
                .collect();
            problems.truncate(10);
            self.record.error = Some(format!(
                "{} paths could not be published and {} were held back so the cache stays closure-complete:\n{}",
                summary.failed.len(),
                summary.held_back.len(),
                problems.join("\n")
            ));
        }
        let mut totals = summary;
        totals.roots.clear(); // kept per machine
        self.record.publish = Some(totals);
        self.save();
        self.record_generations(cache).await
    }

    /// The GC roots: a signed record on the cache for every machine whose closure is now
    /// complete there.
    async fn record_generations(
        &mut self,
        cache: &crate::config::CacheSettings,
    ) -> anyhow::Result<()> {
        let farm = crate::cache::generations::farm_id(&self.settings().state.dir);
        let time = chrono::Utc::now().timestamp();
        let generations = self
            .record
            .machines
            .iter()
            .filter(|m| m.publish.as_ref().is_some_and(|p| p.complete))
            .filter_map(|m| {
                Some(crate::cache::generations::Generation {
                    farm: farm.clone(),
                    machine: m.name.clone(),
                    toplevel: m.toplevel.clone()?,
                    rev: self.record.rev_after.clone(),
                    time,
                    run: self.record.id,
                    sigs: Vec::new(),
                })
            })
            .collect();
        self.record.generations = crate::cache::gc::record_generations(cache, generations).await?;
        info!(
            count = self.record.generations.len(),
            "generation records written"
        );
        self.save();
        Ok(())
    }

    async fn push(&mut self, checkout: &git::Checkout) -> anyhow::Result<()> {
        if !self.record.lock_changed {
            self.record.push = Some(PushOutcome::Skipped {
                reason: "the lock did not change".to_owned(),
            });
            return Ok(());
        }
        let repo = self.settings().repo.clone();
        let dir = checkout.dir.clone();
        let outcome = tokio::task::spawn_blocking(move || git::push(&repo, &dir))
            .await
            .context("the push task panicked")?;
        match outcome {
            Ok(outcome) => {
                match &outcome {
                    PushOutcome::Rejected { message } => {
                        warn!(message = %message, "push rejected; the remote moved on (never forced)")
                    }
                    other => info!(outcome = ?other, "push"),
                }
                self.record.push = Some(outcome);
                Ok(())
            }
            Err(e) => {
                let message = format!("{:#}", anyhow::Error::from(e));
                self.record.push = Some(PushOutcome::Failed {
                    message: message.clone(),
                });
                Err(anyhow::anyhow!(message).context(format!(
                    "cannot push the lock commit to branch `{}` of `{}`",
                    self.settings().repo.push_branch,
                    self.settings().repo.url
                )))
            }
        }
    }

    /// Decides the run's status, closes the last phase and writes the final record.
    fn finish(&mut self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        let cancelled = self.cancel().is_cancelled();
        for m in &mut self.record.machines {
            if m.status == MachineStatus::Pending {
                m.status = MachineStatus::Cancelled;
            }
        }
        self.record.status = match outcome {
            Err(_) if cancelled => RunStatus::Cancelled,
            Err(e) if e.is::<Cancelled>() => RunStatus::Cancelled,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "run failed");
                self.record.error = Some(format!("{e:#}"));
                RunStatus::Error
            }
            Ok(()) if cancelled => RunStatus::Cancelled,
            Ok(()) => {
                let rejected = matches!(self.record.push, Some(PushOutcome::Rejected { .. }));
                if self.record.failed_machines().next().is_some()
                    || self.record.error.is_some()
                    || rejected
                {
                    RunStatus::Failed
                } else {
                    RunStatus::Succeeded
                }
            }
        };
        self.transition_to(Some(Phase::Record));
        self.layout
            .prune_logs(self.settings().state.keep_logs.get());
        self.record.finished_at = Some(chrono::Utc::now().timestamp());
        self.transition_to(None);
        info!(status = self.record.status.as_str(), "run finished");
        self.farm
            .history
            .save(&self.record)
            .context("cannot record the run in the history")
    }
}

/// Nix's first `error:` line (the rest is in the log tail).
fn first_error_line(e: &NixError) -> String {
    match e {
        NixError::Failed {
            stderr_tail,
            status,
            ..
        } => stderr_tail
            .lines()
            // Not "error (ignored): …": Nix's notes about e.g. a busy eval cache.
            .find(|l| l.trim_start().starts_with("error:"))
            .map(|l| l.trim().to_owned())
            .unwrap_or_else(|| format!("nix exited with {status}")),
        other => other.to_string(),
    }
}
