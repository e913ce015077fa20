//! The `dashbatch` binary: parse the command line, set up logging, run, map to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = dashbatch::cli::Cli::parse();
    dashbatch::cli::init_tracing(cli.verbose, cli.quiet);
    ExitCode::from(dashbatch::cli::main(cli))
}
