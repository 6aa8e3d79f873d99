//! farmctl: the command line for a farm.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nixfarm::cli::report::{self, exit};
use nixfarm::config;
use nixfarm::history::History;

#[derive(Parser)]
#[command(version, about = "Control and inspect a nixfarm build farm")]
struct Args {
    /// The farm's config file (for the state directory).
    #[arg(long, short, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and print the effective settings (defaults filled in).
    CheckConfig {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
    },
    /// List recent runs, newest first.
    History {
        /// How many runs.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one run: phases, machines, errors and log tails.
    Show {
        /// The run's id (see `farmctl history`).
        run: i64,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let args = Args::parse();
    report::init_stderr_logging("warn");
    let code = match run(args) {
        Ok(code) => code,
        Err(e) => {
            report::print_error(&e);
            if e.downcast_ref::<config::ConfigError>().is_some() {
                exit::CONFIG
            } else {
                exit::ERROR
            }
        }
    };
    std::process::exit(code);
}

fn run(args: Args) -> anyhow::Result<i32> {
    let style = nixfarm::cli::style::Style::terminal(report::stdout_color());
    match args.command {
        Command::CheckConfig { path } => {
            let path = path.unwrap_or(args.config);
            let settings = config::load(&path)?;
            println!("# {} is valid; effective settings:", path.display());
            print!("{}", nixfarm::cli::check_config::render(&settings));
            Ok(exit::OK)
        }
        Command::History { limit, json } => {
            let history = open_history(&args.config)?;
            let runs = history.list(limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", nixfarm::cli::history::render_list(&runs, &style));
            }
            Ok(exit::OK)
        }
        Command::Show { run, json } => {
            let history = open_history(&args.config)?;
            let record = history
                .get(run)?
                .with_context(|| format!("there is no run {run}; `farmctl history` lists them"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                print!("{}", nixfarm::cli::history::render_run(&record, &style));
            }
            Ok(exit::OK)
        }
    }
}

fn open_history(config_path: &std::path::Path) -> anyhow::Result<History> {
    let settings = config::load(config_path)?;
    History::open(&settings.state.dir).with_context(|| {
        format!(
            "cannot open the history in `{}`",
            settings.state.dir.display()
        )
    })
}
