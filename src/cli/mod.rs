//! The command line. Parsing lives here; each subcommand turns its flags into a typed config
//! and calls into the library. This is the only module that may use both [`crate::dashscope`]
//! and [`crate::emulator`].

/// `eprintln!` that never panics: a closed stderr (`2>&1 | head -1`) must not turn a run
/// whose results are safe into a crash with no reports. What cannot be said is dropped.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` that never panics, for the same reason as [`say!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod emulator;
mod files;
mod merge;
mod run;
mod validate;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::exit;

#[derive(Debug, Parser)]
#[command(name = "dashbatch", version, about, long_about = None)]
pub struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace). `RUST_LOG` overrides both flags.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less output (-q: errors and the summary, no progress; -qq: errors only).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a manifest: upload each row's file, call its model, write a results CSV.
    Run(run::RunArgs),
    /// Check a manifest (or job) without the network and print what a run would do.
    Validate(validate::ValidateArgs),
    /// Serve a local emulator of DashScope temporary storage and the model APIs.
    Emulator(emulator::EmulatorArgs),
    /// Join the results files of a manifest's shards (`run --shard K/N`) into one.
    Merge(merge::MergeArgs),
}

/// Logs go to stderr so that stdout stays machine-readable.
pub fn init_tracing(verbose: u8, quiet: u8) {
    let default = match (quiet, verbose) {
        (q, _) if q >= 2 => "off",
        (1, _) => "error",
        (_, 0) => "warn,dashbatch=info",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: cron logs redirected to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // Its default reports a failed write with `eprintln!`, which panics when stderr is
        // closed; a log line that cannot be written is simply lost.
        .log_internal_errors(false)
        .init();
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            say!("error: cannot start the async runtime: {err}");
            return exit::USAGE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args, cli.quiet).await,
            Command::Validate(args) => validate::run(args),
            Command::Merge(args) => merge::run(args),
            Command::Emulator(args) => match emulator::run(args).await {
                Ok(()) => exit::OK,
                Err(err) => {
                    say!("error: {err:#}");
                    exit::USAGE
                }
            },
        }
    })
}
