//! farmd: the build farm daemon. `farmd --once` runs one complete run in the foreground;
//! without it, farmd serves until SIGTERM. The work is in `nixfarm::daemon::entry`.

use std::path::PathBuf;

use clap::Parser;
use nixfarm::cli::report::{self, exit};
use nixfarm::config;
use nixfarm::daemon::entry;

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
    nixfarm::alloc::limit_malloc_arenas();
    let args = Args::parse();
    // Under systemd (stderr is the journal stream), journald with FARM_* fields; otherwise
    // readable stderr. Also for --once: a user's own timer unit gets the fields too.
    nixfarm::daemon::logging::init(nixfarm::daemon::logging::Mode::Auto);
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
            entry::once(settings).await
        } else {
            entry::serve(settings, args.config.clone()).await
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
