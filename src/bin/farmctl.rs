//! farmctl: the command line for a farm. Talks to a running farmd over its control socket;
//! `history`, `show` and `log` read the state directory directly when no daemon runs (after
//! `farmd --once`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use nixfarm::cache::generations::PinName;
use nixfarm::cli;
use nixfarm::cli::report::{self, exit};
use nixfarm::cli::status::ProgressPrinter;
use nixfarm::cli::style::Style;
use nixfarm::config::{self, Settings};
use nixfarm::control::client::{self, ClientError};
use nixfarm::control::protocol::{Event, Reply, Request};
use nixfarm::history::History;
use nixfarm::record::{RunRecord, RunStatus};
use nixfarm::types::MachineName;

#[derive(Parser)]
#[command(version, about = "Control and inspect a nixfarm build farm")]
struct Args {
    /// The farm's config file (for the socket and the state directory).
    #[arg(long, short, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The control socket (default: `[control] socket` of the config).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask farmd for a run now (queued after the active run, if any).
    Trigger {
        /// Only this machine (repeatable; default: all).
        #[arg(long = "machine", short = 'm')]
        machines: Vec<MachineName>,
        /// Skip `nix flake update`: build the branch as it is.
        #[arg(long)]
        no_update: bool,
        /// Follow the run until it ends; exit 0 if every machine built, 1 if not, 2 if farmd
        /// is unreachable.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// What farmd is doing, when it runs next, and every machine's last success.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop the active run (its nix processes are killed; the run is recorded as cancelled).
    Cancel {
        #[arg(long)]
        json: bool,
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
        /// Also pin the closure as NAME (as `farmctl cache pin`), so that cache GC keeps it:
        /// GC's roots are the machines' recorded generations and the pins, nothing else.
        #[arg(long, value_name = "NAME")]
        pin: Option<String>,
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
    /// Print a machine's build log of a run.
    Log {
        run: i64,
        machine: MachineName,
        /// Keep printing while the run is active.
        #[arg(long, short)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Validate a config file and print the effective settings (defaults filled in).
    CheckConfig {
        /// The file to check (default: --config).
        path: Option<PathBuf>,
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
    /// Delete what no kept generation (`[cache.retention]`) or pin needs, referrers before
    /// references; prints what was (or would be) deleted, bytes freed and kept per machine.
    Gc {
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// The cache URL (default: `[cache] url` of the config).
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Keep a store path's closure in the cache until unpinned (a root in `farmd/pins/`).
    Pin {
        store_path: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
    /// Remove a pin made with `farmctl cache pin`.
    Unpin {
        name: String,
        #[arg(long, value_name = "URL")]
        to: Option<String>,
    },
    /// Remove this farm's generation records of a machine that left the fleet, so that cache
    /// GC may collect its closures (its last generations are kept forever otherwise).
    Forget {
        machine: String,
        /// Only say which records would go.
        #[arg(long)]
        dry_run: bool,
        /// Also for a machine the latest run still built (drops its rollback generations).
        #[arg(long)]
        force: bool,
        #[arg(long, value_name = "URL")]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    nixfarm::alloc::limit_malloc_arenas();
    let args = Args::parse();
    report::init_stderr_logging("warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    let code = match runtime.block_on(run(args)) {
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

/// Where to find the daemon and its state.
struct Target {
    socket: PathBuf,
    settings: Option<Settings>,
    config: PathBuf,
}

impl Target {
    fn new(args: &Args) -> anyhow::Result<Target> {
        // A missing default config is fine for socket verbs (the default socket is used);
        // a broken one is not.
        let settings = match config::load(&args.config) {
            Ok(s) => Some(s),
            Err(config::ConfigError::NotFound { .. }) if args.socket.is_some() => None,
            Err(config::ConfigError::NotFound { .. })
                if args.config == Path::new(config::DEFAULT_CONFIG_PATH) =>
            {
                None
            }
            Err(e) => return Err(e.into()),
        };
        let socket = args
            .socket
            .clone()
            .or_else(|| settings.as_ref().map(|s| s.control.socket.clone()))
            .unwrap_or_else(|| PathBuf::from("/run/farmd/control.sock"));
        Ok(Target {
            socket,
            settings,
            config: args.config.clone(),
        })
    }

    /// The history database, for when no daemon answers.
    fn history(&self) -> anyhow::Result<History> {
        let settings = self.settings.as_ref().with_context(|| {
            format!(
                "farmd is not running and there is no config at `{}` to find its state directory; pass --config",
                self.config.display()
            )
        })?;
        History::open(&settings.state.dir).with_context(|| {
            format!(
                "cannot open the history in `{}`",
                settings.state.dir.display()
            )
        })
    }
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn exit_for(record: &RunRecord) -> i32 {
    match record.status {
        RunStatus::Succeeded => exit::OK,
        RunStatus::Failed => exit::FAILED,
        RunStatus::Cancelled => exit::CANCELLED,
        _ => exit::ERROR,
    }
}

/// Calls the daemon; `None` when it is unreachable (the caller decides what that means).
async fn call(
    target: &Target,
    request: Request,
    on_event: impl FnMut(&Event),
) -> anyhow::Result<Option<Reply>> {
    match client::call(&target.socket, request, on_event).await {
        Ok(reply) => Ok(Some(reply)),
        Err(e) if e.is_unreachable() => {
            tracing::debug!(error = %e, "farmd unreachable");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn unreachable(target: &Target) -> anyhow::Error {
    anyhow::anyhow!(ClientError::Unreachable {
        path: target.socket.display().to_string(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let style = Style::terminal(report::stdout_color());
    // Verbs that need no daemon.
    match &args.command {
        Command::CheckConfig { path } => {
            let path = path.clone().unwrap_or(args.config.clone());
            let settings = config::load(&path)?;
            println!("# {} is valid; effective settings:", path.display());
            print!("{}", nixfarm::cli::check_config::render(&settings));
            return Ok(exit::OK);
        }
        Command::Publish {
            paths,
            to,
            pin,
            json,
        } => {
            let settings = config::load(&args.config)?;
            let pin: Option<PinName> = pin.as_deref().map(str::parse).transpose()?;
            let cancel = cancel_on_ctrl_c();
            let published =
                cli::cache::publish(&settings, paths, to.as_deref(), pin.as_ref(), &cancel).await?;
            let summary = &published.summary;
            let (pinned, pin_error) = match &published.pin {
                Some(Ok(pin)) => (Some(pin), None),
                Some(Err(e)) => (None, Some(format!("{e:#}"))),
                None => (None, None),
            };
            let complete = summary.is_complete() && pin_error.is_none();
            if *json {
                let mut value = serde_json::to_value(summary)?;
                value["pin"] = serde_json::to_value(pinned)?;
                if let Some(e) = &pin_error {
                    value["pin_error"] = e.as_str().into();
                }
                print_json(&value)?;
            } else {
                print!("{summary}");
                match (pinned, &pin_error) {
                    (Some(pin), _) => println!(
                        "pinned {} as `{}`: cache GC keeps its closure until `farmctl cache unpin {}`",
                        pin.path, pin.name, pin.name
                    ),
                    (None, Some(e)) => eprintln!("error: {e}"),
                    (None, None) if summary.is_complete() => eprintln!(
                        "note: cache GC keeps only the machines' recorded generations and pins; \
                         to keep a closure published by hand, pin it: \
                         farmctl cache pin PATH --name NAME (or publish with --pin NAME)"
                    ),
                    (None, None) => {}
                }
            }
            return Ok(if complete { exit::OK } else { exit::FAILED });
        }
        Command::Keygen {
            name,
            secret_key_file,
            public_key_file,
        } => {
            let public = cli::cache::keygen(name, secret_key_file, public_key_file)?;
            println!(
                "wrote the secret key to {} (mode 0600) and the public key to {};\n\
                 trust it on the fleet with: trusted-public-keys = {public}",
                secret_key_file.display(),
                public_key_file.display()
            );
            return Ok(exit::OK);
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
            let report =
                cli::cache::verify(&settings, to.as_deref(), trusted_public_keys, *deep).await?;
            for p in &report.problems {
                println!("{p}");
            }
            println!(
                "{} narinfos checked{}, {} problems",
                report.narinfos,
                if *deep {
                    format!(" ({} NARs re-hashed)", report.nars_hashed)
                } else {
                    String::new()
                },
                report.problems.len()
            );
            return Ok(if report.problems.is_empty() {
                exit::OK
            } else {
                exit::FAILED
            });
        }
        Command::Cache {
            command: CacheCommand::Gc { dry_run, to, json },
        } => {
            let settings = config::load(&args.config)?;
            let cancel = cancel_on_ctrl_c();
            let report = cli::gc::gc(&settings, to.as_deref(), *dry_run, &cancel).await?;
            if *json {
                print_json(&report)?;
            } else {
                print!("{report}");
            }
            return Ok(exit::OK);
        }
        Command::Cache {
            command:
                CacheCommand::Pin {
                    store_path,
                    name,
                    to,
                },
        } => {
            let settings = config::load(&args.config)?;
            let pin = cli::gc::pin(&settings, to.as_deref(), store_path, name).await?;
            println!("pinned {} as `{}`", pin.path, pin.name);
            return Ok(exit::OK);
        }
        Command::Cache {
            command:
                CacheCommand::Forget {
                    machine,
                    dry_run,
                    force,
                    to,
                    json,
                },
        } => {
            let settings = config::load(&args.config)?;
            let cancel = cancel_on_ctrl_c();
            let forgotten =
                cli::gc::forget(&settings, to.as_deref(), machine, *dry_run, *force, &cancel)
                    .await?;
            if *json {
                print_json(&forgotten)?;
            } else {
                print!("{forgotten}");
            }
            return Ok(exit::OK);
        }
        Command::Cache {
            command: CacheCommand::Unpin { name, to },
        } => {
            let settings = config::load(&args.config)?;
            if cli::gc::unpin(&settings, to.as_deref(), name).await? {
                println!("unpinned `{name}`");
                return Ok(exit::OK);
            }
            println!("there is no pin `{name}`");
            return Ok(exit::FAILED);
        }
        _ => {}
    }
    let target = Target::new(&args)?;
    match args.command {
        Command::CheckConfig { .. }
        | Command::Publish { .. }
        | Command::Keygen { .. }
        | Command::Cache { .. } => unreachable!("handled above"),
        Command::Trigger {
            machines,
            no_update,
            wait,
            json,
        } => {
            let mut printer = ProgressPrinter::default();
            let request = Request::Trigger {
                machines,
                no_update,
                wait,
            };
            let reply = call(&target, request, |event| {
                if !json {
                    print!("{}", printer.lines(event, &style));
                }
            })
            .await?;
            let Some(Reply::Triggered {
                ticket,
                position,
                record,
            }) = reply
            else {
                report::print_error(&unreachable(&target));
                return Ok(exit::ERROR);
            };
            if json {
                print_json(&serde_json::json!({
                    "ticket": ticket, "position": position, "record": record,
                }))?;
            } else if record.is_none() {
                print!(
                    "{}",
                    nixfarm::cli::status::render_accepted(ticket, position)
                );
            }
            Ok(match record {
                Some(record) => {
                    if !json {
                        print!("{}", nixfarm::cli::history::render_summary(&record, &style));
                    }
                    exit_for(&record)
                }
                None => exit::OK,
            })
        }
        Command::Status { json } => {
            let Some(Reply::Status(status)) = call(&target, Request::Status {}, |_| {}).await?
            else {
                report::print_error(&unreachable(&target));
                return Ok(exit::ERROR);
            };
            if json {
                print_json(&status)?;
            } else {
                let now = chrono::Utc::now().timestamp();
                print!(
                    "{}",
                    nixfarm::cli::status::render_status(&status, &style, now)
                );
            }
            Ok(exit::OK)
        }
        Command::Cancel { json } => {
            let Some(Reply::Cancelled { run }) = call(&target, Request::Cancel {}, |_| {}).await?
            else {
                report::print_error(&unreachable(&target));
                return Ok(exit::ERROR);
            };
            if json {
                print_json(&serde_json::json!({ "cancelled": run }))?;
            } else {
                match run {
                    Some(run) => println!("cancelling run {run}"),
                    None => println!("no run is active"),
                }
            }
            Ok(exit::OK)
        }
        Command::History { limit, json } => {
            let runs = match call(&target, Request::History { limit }, |_| {}).await? {
                Some(Reply::History { runs }) => runs,
                _ => target.history()?.list(limit)?,
            };
            if json {
                print_json(&runs)?;
            } else {
                print!("{}", nixfarm::cli::history::render_list(&runs, &style));
            }
            Ok(exit::OK)
        }
        Command::Show { run, json } => {
            let record = match call(&target, Request::Show { run }, |_| {}).await? {
                Some(Reply::Show { record }) => *record,
                _ => target.history()?.get(run)?.with_context(|| {
                    format!("there is no run {run}; `farmctl history` lists them")
                })?,
            };
            if json {
                print_json(&record)?;
            } else {
                print!("{}", nixfarm::cli::history::render_run(&record, &style));
            }
            Ok(exit::OK)
        }
        Command::Log {
            run,
            machine,
            follow,
            json,
        } => {
            let mut text = String::new();
            let request = Request::Log {
                run,
                machine: machine.clone(),
                follow,
            };
            let reply = call(&target, request, |event| {
                if let Event::Log { text: chunk } = event {
                    if json {
                        text.push_str(chunk);
                    } else {
                        print!("{chunk}");
                    }
                }
            })
            .await?;
            if reply.is_none() {
                // No daemon: read the log file the history points at.
                let record = target.history()?.get(run)?.with_context(|| {
                    format!("there is no run {run}; `farmctl history` lists them")
                })?;
                let path = record.machine_log(&machine).map_err(anyhow::Error::msg)?;
                let chunk = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read `{path}`"))?;
                if json {
                    text = chunk;
                } else {
                    print!("{chunk}");
                }
            }
            if json {
                print_json(&serde_json::json!({ "run": run, "machine": machine, "log": text }))?;
            }
            Ok(exit::OK)
        }
    }
}

/// A token cancelled by Ctrl-C or SIGTERM, so a publish stops cleanly (temporaries removed).
fn cancel_on_ctrl_c() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        t.cancel();
    });
    token
}
