//! farmd: the build farm daemon. `farmd --once` runs one complete run in the foreground.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use nixfarm::cli::report::{self, exit};
use nixfarm::config;
use nixfarm::history::History;
use nixfarm::record::{RunStatus, Trigger};
use nixfarm::run::{self, Farm, RunRequest, StateLayout};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(version, about = "Build farm daemon for NixOS fleets")]
struct Args {
    /// The config file.
    #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Run one complete run in the foreground and exit: 0 all built, 1 some failed,
    /// 2 infrastructure error, 3 cancelled, 78 bad config.
    #[arg(long)]
    once: bool,
}

fn main() {
    let args = Args::parse();
    report::init_stderr_logging("info");
    let settings = match config::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            report::print_error(&anyhow::Error::new(e));
            std::process::exit(exit::CONFIG);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let job = async {
        if args.once {
            once(settings).await
        } else {
            daemon(settings, args.config.clone()).await
        }
    };
    let code = match runtime.block_on(job) {
        Ok(code) => code,
        Err(e) => {
            report::print_error(&e);
            exit::ERROR
        }
    };
    std::process::exit(code);
}

/// The long-running service: serves the control socket, runs on schedule and on trigger,
/// until SIGTERM (which cancels the active run cleanly and exits 0).
async fn daemon(settings: config::Settings, config_path: PathBuf) -> anyhow::Result<i32> {
    use nixfarm::control::server;
    use nixfarm::daemon::notify::Notifier;
    use nixfarm::daemon::service::Daemon;
    use tokio::signal::unix::{signal, SignalKind};

    let layout = StateLayout::new(&settings.state.dir);
    layout.prepare()?;
    let _lock = layout.lock()?;
    let history =
        std::sync::Arc::new(History::open(layout.root()).context("cannot open the history")?);
    let interrupted = history.mark_interrupted()?;
    if !interrupted.is_empty() {
        tracing::warn!(runs = ?interrupted, "runs were interrupted when farmd last stopped; marked as interrupted");
    }
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

    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
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
    if std::env::var_os("LISTEN_FDS").is_none() {
        let _ = std::fs::remove_file(&socket_path);
    }
    Ok(exit::OK)
}

/// SIGHUP: a valid new config replaces the old one for the next run; an invalid one is
/// rejected, logged, and the old one kept.
fn reload(daemon: &nixfarm::daemon::service::Daemon, path: &std::path::Path) {
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

async fn once(settings: config::Settings) -> anyhow::Result<i32> {
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
        nixfarm::cli::history::render_summary(
            &record,
            &nixfarm::cli::style::Style::terminal(report::stdout_color())
        )
    );
    Ok(match record.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::Failed => exit::FAILED,
        RunStatus::Cancelled => exit::CANCELLED,
        RunStatus::Error | RunStatus::Running | RunStatus::Interrupted => exit::ERROR,
    })
}
