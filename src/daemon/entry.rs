//! farmd's two entry points as the binary calls them: [`serve`] (the long-running service:
//! control socket, runner, scheduler, signals, watchdog, reload) and [`once`] (one run in the
//! foreground). They return the process's exit code; the binary only parses arguments and
//! sets up logging.

use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cli::report::{self, exit};
use crate::config;
use crate::history::History;
use crate::record::{RunStatus, Trigger};
use crate::run::{self, Farm, RunRequest, StateLayout};

/// The long-running service: serves the control socket, runs on schedule and on trigger,
/// until SIGTERM (which cancels the active run cleanly and exits 0).
pub async fn serve(settings: config::Settings, config_path: PathBuf) -> anyhow::Result<i32> {
    use crate::control::server;
    use crate::daemon::notify::Notifier;
    use crate::daemon::service::Daemon;
    use tokio::signal::unix::{signal, SignalKind};

    // Before anything can announce readiness: a SIGHUP right after READY=1 must reload, not
    // kill (the default action).
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
    let layout = StateLayout::new(&settings.state.dir);
    layout.prepare()?;
    let _lock = layout.lock()?;
    let history =
        std::sync::Arc::new(History::open(layout.root()).context("cannot open the history")?);
    let interrupted = history.mark_interrupted()?;
    if !interrupted.is_empty() {
        tracing::warn!(runs = ?interrupted, "runs were interrupted when farmd last stopped; marked as interrupted");
    }
    // Read before `listen`, which clears LISTEN_FDS once it has taken the socket.
    let socket_activated = std::env::var_os("LISTEN_FDS").is_some();
    let listener = server::listen(&settings.control.socket)?;
    let socket_path = settings.control.socket.clone();
    let daemon = Daemon::new(settings, history, Notifier::new());
    let stop = CancellationToken::new();
    let server = tokio::spawn(server::serve(listener, daemon.clone(), stop.clone()));
    let runner = tokio::spawn(daemon.clone().runner());
    let scheduler = tokio::spawn(daemon.clone().scheduler());
    daemon.catch_up();
    daemon.notifier().ready();
    tracing::info!(socket = %socket_path.display(), "farmd ready");

    let watchdog = daemon.notifier().watchdog_interval();
    let mut tick = tokio::time::interval(watchdog.unwrap_or(std::time::Duration::from_secs(3600)));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => reload(&daemon, &config_path),
            _ = tick.tick(), if watchdog.is_some() => daemon.notifier().watchdog(),
        }
    }
    tracing::info!("stopping: cancelling the active run, if any");
    daemon.notifier().stopping();
    daemon.shut_down();
    stop.cancel();
    // The runner records the cancelled run; nix process groups die within seconds.
    if tokio::time::timeout(std::time::Duration::from_secs(60), runner)
        .await
        .is_err()
    {
        tracing::warn!("the active run did not stop within 60 s; exiting anyway");
    }
    scheduler.abort();
    server.abort();
    // A socket systemd passed in is farmd.socket's: it keeps listening for the next start.
    if !socket_activated {
        let _ = std::fs::remove_file(&socket_path);
    }
    Ok(exit::OK)
}

/// SIGHUP: a valid new config replaces the old one for the next run; an invalid one is
/// rejected, logged, and the old one kept.
fn reload(daemon: &super::service::Daemon, path: &std::path::Path) {
    daemon.notifier().reloading();
    match config::load(path) {
        Ok(new) => {
            let old = daemon.settings();
            if new.state.dir != old.state.dir || new.control.socket != old.control.socket {
                tracing::warn!(
                    "`[state] dir` and `[control] socket` changes take effect at the next restart"
                );
            }
            daemon.replace_settings(new);
            tracing::info!(config = %path.display(), "configuration reloaded");
        }
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "the new configuration is invalid; keeping the old one");
        }
    }
    daemon.notifier().ready();
}

pub async fn once(settings: config::Settings) -> anyhow::Result<i32> {
    let layout = StateLayout::new(&settings.state.dir);
    layout.prepare()?;
    let _lock = layout.lock()?;
    let history = History::open(layout.root()).context("cannot open the history")?;
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("cannot listen for SIGTERM");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::warn!("signal received: cancelling the run");
            cancel.cancel();
        });
    }
    let farm = Farm {
        settings: &settings,
        history: &history,
        cancel,
        observer: None,
    };
    let request = RunRequest {
        trigger: Trigger::Once,
        requested_by: Some(format!("farmd --once (pid {})", std::process::id())),
        update: true,
        machines: Vec::new(),
    };
    let record = run::run_once(&farm, request).await?;
    print!(
        "{}",
        crate::cli::history::render_summary(
            &record,
            &crate::cli::style::Style::terminal(report::stdout_color())
        )
    );
    Ok(match record.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::Failed => exit::FAILED,
        RunStatus::Cancelled => exit::CANCELLED,
        RunStatus::Error | RunStatus::Running | RunStatus::Interrupted => exit::ERROR,
    })
}
