//! `dashbatch run`: flags → [`crate::config::RunConfig`], then the pipeline.

use std::path::PathBuf;

use crate::exit;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The manifest CSV (columns model, file, prompt; optional id, system).
    pub manifest: PathBuf,
}

pub async fn run(args: RunArgs) -> u8 {
    eprintln!(
        "error: `run` is not built yet ({})",
        args.manifest.display()
    );
    exit::USAGE
}
