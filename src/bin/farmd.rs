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
    if !args.once {
        eprintln!(
            "error: the long-running daemon is not part of this version yet; run `farmd --once --config {}`",
            args.config.display()
        );
        std::process::exit(exit::ERROR);
    }
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    let code = match runtime.block_on(once(settings)) {
        Ok(code) => code,
        Err(e) => {
            report::print_error(&e);
            exit::ERROR
        }
    };
    std::process::exit(code);
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
