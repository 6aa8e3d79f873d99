//! farmctl: the command line for a farm.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use nixfarm::cli::report::{self, exit};
use nixfarm::history::History;
use nixfarm::{cli, config};

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
    /// Publish the closures of installables or store paths to the binary cache, signed with
    /// the config's keys (like `nix copy --to`, closure-complete at every instant).
    Publish {
        /// Flake installables (built if needed) or store paths.
        #[arg(required = true, value_name = "INSTALLABLE|STORE_PATH")]
        paths: Vec<String>,
        /// The cache URL (default: `[cache] url` of the config).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a Nix binary cache key pair (as `nix-store --generate-binary-cache-key`).
    Keygen {
        /// The key's name, e.g. `cache.example.org-1`.
        name: String,
        #[arg(long, value_name = "PATH")]
        secret_key_file: PathBuf,
        #[arg(long, value_name = "PATH")]
        public_key_file: PathBuf,
    },
    /// Binary cache maintenance.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Show one run: phases, machines, errors and log tails.
    Show {
        /// The run's id (see `farmctl history`).
        run: i64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CacheCommand {
    /// Check every narinfo's signature, that every reference's narinfo and every NAR (with
    /// its FileSize) is there; `--deep` re-hashes every NAR. Exits 1 listing the problems.
    Verify {
        /// The cache URL (default: `[cache] url` of the config).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        /// A key to accept (`name:base64`; default: the public halves of the config's keys).
        #[arg(long = "trusted-public-key", value_name = "KEY")]
        trusted_public_keys: Vec<String>,
        /// Also download each NAR and check FileHash, NarHash and NarSize.
        #[arg(long)]
        deep: bool,
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
        Command::Publish { paths, to, json } => {
            let settings = config::load(&args.config)?;
            let summary = runtime()?.block_on(async {
                let cancel = cancel_on_ctrl_c();
                cli::cache::publish(&settings, &paths, to.as_deref(), &cancel).await
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{summary}");
            }
            Ok(if summary.is_complete() {
                exit::OK
            } else {
                exit::FAILED
            })
        }
        Command::Keygen {
            name,
            secret_key_file,
            public_key_file,
        } => {
            let public = cli::cache::keygen(&name, &secret_key_file, &public_key_file)?;
            println!(
                "wrote the secret key to {} (mode 0600) and the public key to {};\n\
                 trust it on the fleet with: trusted-public-keys = {public}",
                secret_key_file.display(),
                public_key_file.display()
            );
            Ok(exit::OK)
        }
        Command::Cache {
            command:
                CacheCommand::Verify {
                    to,
                    trusted_public_keys,
                    deep,
                },
        } => {
            let settings = config::load(&args.config)?;
            let report = runtime()?.block_on(cli::cache::verify(
                &settings,
                to.as_deref(),
                &trusted_public_keys,
                deep,
            ))?;
            for p in &report.problems {
                println!("{p}");
            }
            println!(
                "{} narinfos checked{}, {} problems",
                report.narinfos,
                if deep {
                    format!(" ({} NARs re-hashed)", report.nars_hashed)
                } else {
                    String::new()
                },
                report.problems.len()
            );
            Ok(if report.problems.is_empty() {
                exit::OK
            } else {
                exit::FAILED
            })
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A token cancelled by Ctrl-C or SIGTERM, so a publish stops cleanly (temporaries removed).
fn cancel_on_ctrl_c() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        }
        t.cancel();
    });
    token
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
