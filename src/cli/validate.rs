//! `dashbatch validate MANIFEST|JOB`: check without the network, print the plan.

use std::path::PathBuf;

use crate::config::default_output;
use crate::config::job::{JobFile, is_job_file};
use crate::exit;
use crate::manifest::ManifestError;
use crate::validate::validate;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The manifest CSV, or a job file (`.toml`) naming it.
    #[arg(value_name = "MANIFEST|JOB")]
    pub input: PathBuf,

    /// The results file whose finished rows a run would skip
    /// [default: the job's output, else <manifest stem>.results.csv, or .results.jsonl
    /// for a job of format jsonl].
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// The largest file the target models accept, in MB. The service allows 1024; some
    /// models allow less.
    #[arg(long, default_value_t = 1024)]
    pub max_file_size_mb: u64,
}

/// Exit codes: 0 when the manifest (and job file) are valid, 1 when anything is not; clap's
/// own usage errors stay 2.
pub fn run(args: ValidateArgs) -> u8 {
    let (manifest, job_output, job_format) = if is_job_file(&args.input) {
        match JobFile::load(&args.input) {
            Ok(job) => (job.manifest.unwrap_or_default(), job.output, job.format),
            Err(err) => {
                say!("error: {err}");
                return exit::SOME_FAILED;
            }
        }
    } else {
        (args.input.clone(), None, None)
    };
    let output = args
        .output
        .or(job_output)
        .unwrap_or_else(|| default_output(&manifest, job_format));
    if let Err(err) = super::files::check_manifest(&manifest) {
        say!("error: {err}");
        out!("invalid: fix the problem above");
        return exit::SOME_FAILED;
    }
    let plan = match validate(&manifest, &output, args.max_file_size_mb) {
        Ok(plan) => plan,
        Err(ManifestError::NoHeader { path }) => {
            // As `run` sees it: an empty manifest is nothing to do, not an error.
            out!("manifest: {}", path.display());
            out!("valid: nothing to do (the manifest is empty)");
            return exit::OK;
        }
        Err(err) => {
            // The manifest as a whole is unusable: that is "invalid" (1), like a bad row.
            say!("error: {err}");
            out!("invalid: fix the problem above");
            return exit::SOME_FAILED;
        }
    };
    for problem in &plan.problems {
        out!("problem: {problem}");
    }
    if plan.invalid as usize > plan.problems.len() {
        out!(
            "... and {} more problems",
            plan.invalid as usize - plan.problems.len()
        );
    }
    let models: Vec<String> = plan
        .models
        .iter()
        .map(|(m, n)| format!("{m} ({n})"))
        .collect();
    out!("manifest: {}", manifest.display());
    out!(
        "rows: {} ({} invalid, {} already done in {})",
        plan.rows,
        plan.invalid,
        plan.done,
        output.display()
    );
    out!(
        "files: {} distinct, {} bytes; {}",
        plan.distinct_files,
        plan.bytes,
        use_urls(plan.urls)
    );
    out!("models: {}", models.join(", "));
    if plan.is_valid() {
        out!("valid");
        exit::OK
    } else {
        out!("invalid: fix the problems above (rows with problems would fail)");
        exit::SOME_FAILED
    }
}

/// `1 row uses a URL`, `3 rows use URLs`.
fn use_urls(rows: u64) -> String {
    if rows == 1 {
        "1 row uses a URL".to_owned()
    } else {
        format!("{rows} rows use URLs")
    }
}
