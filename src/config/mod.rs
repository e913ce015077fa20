//! The settings of a run: each declared once in [`settings`] (flag, job-file key, default,
//! range, help), read from the command line and a [`job`] file, merged once (`layers`: flag
//! over job file over default) and checked into the typed [`RunConfig`] before any I/O
//! starts. The pipeline only ever sees the latter.

use std::path::PathBuf;

pub mod job;
mod layers;
pub mod settings;

use crate::dashscope::{Api, CredentialOptions, RetryPolicy};

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub manifest: PathBuf,
    pub output: PathBuf,
    pub api: Api,
    /// Rows in flight at once.
    pub concurrency: usize,
    /// Uploads in flight at once. Separate from `concurrency` because uploads are bounded
    /// by bandwidth and the storage service, model calls by the model's latency.
    pub upload_concurrency: usize,
    /// Retries of uploads and model calls (credential fetches use `credentials.retry`).
    pub retry: RetryPolicy,
    pub credentials: CredentialOptions,
    /// A known per-model call limit (calls per second). `None`: found from 429s.
    pub model_rps: Option<f64>,
    /// A known per-model token limit (tokens per minute). `None`: 429s steer the calls.
    pub model_tpm: Option<u64>,
    /// No progress bar or progress log lines.
    pub quiet: bool,
    /// Ignore an existing results file and start over.
    pub fresh: bool,
    /// Where the upload cache lives (default `.dashbatch/` beside the results file).
    pub state_dir: PathBuf,
    /// After a stop signal, how long rows in flight may take to finish.
    pub drain_timeout: std::time::Duration,
    /// How long the service, its upload host or a model may stay unavailable before the run
    /// stops (see `pipeline::outage`).
    pub outage_timeout: std::time::Duration,
    /// Generation parameters of every model call (`--param`, a job file's `[params]`); a
    /// row's `params` cell goes over them key by key.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Only the rows of this shard are run and written (`--shard K/N`).
    pub shard: Option<crate::manifest::Shard>,
    /// `--limit N`: run only the first N rows still to do; the rest stay for the next run.
    pub limit: Option<u64>,
    /// `--redis`: limits shared with every process of the account on this Redis.
    pub redis: Option<crate::shared::SharedOptions>,
    /// `--excel-bom`: a new CSV results file starts with a UTF-8 BOM. (The format itself is
    /// the output's name's, `output::results::Format::of`.)
    pub excel_bom: bool,
}

/// `.dashbatch/` beside the results file.
pub fn default_state_dir(output: &std::path::Path) -> PathBuf {
    output.with_file_name(".dashbatch")
}

/// `<manifest stem>.results.csv` beside the manifest (`.results.jsonl` for JSONL).
pub fn default_output(
    manifest: &std::path::Path,
    format: Option<crate::output::results::Format>,
) -> PathBuf {
    let stem = manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".to_owned());
    let extension = format.unwrap_or_default().extension();
    manifest.with_file_name(format!("{stem}.results.{extension}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_defaults_beside_the_manifest() {
        assert_eq!(
            default_output(std::path::Path::new("jobs/example/manifest.csv"), None),
            PathBuf::from("jobs/example/manifest.results.csv")
        );
        assert_eq!(
            default_output(std::path::Path::new("m.csv"), None),
            PathBuf::from("m.results.csv")
        );
        assert_eq!(
            default_output(
                std::path::Path::new("m.csv"),
                Some(crate::output::results::Format::Jsonl)
            ),
            PathBuf::from("m.results.jsonl")
        );
    }
}
