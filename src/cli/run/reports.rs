//! Where a run's reports go, and writing them. The targets are known from the flags before
//! anything else can fail and completed once the job file loads, so every exit after the
//! flags parse leaves `--summary-json` and `--metrics-textfile` saying how the run ended.

use std::path::PathBuf;

use crate::config::default_output;
use crate::config::job::is_job_file;
use crate::exit;
use crate::output::Stats;
use crate::output::report::{RunReport, write_metrics, write_summary_json};

use super::{Plan, RunArgs};

#[derive(Debug, Clone)]
pub(super) struct Reports {
    manifest: PathBuf,
    output: PathBuf,
    summary_json: Option<PathBuf>,
    metrics_textfile: Option<PathBuf>,
}

impl Reports {
    /// Before the job file loads: its report paths are not known yet, only the flags'.
    pub(super) fn from_flags(args: &RunArgs) -> Self {
        let output = args.settings.output.clone().unwrap_or_else(|| {
            if is_job_file(&args.input) {
                PathBuf::new()
            } else {
                default_output(&args.input, args.settings.format)
            }
        });
        Self {
            manifest: args.input.clone(),
            output,
            summary_json: args.settings.summary_json.clone(),
            metrics_textfile: args.settings.metrics_textfile.clone(),
        }
    }

    pub(super) fn from_plan(plan: &Plan) -> Self {
        Self {
            manifest: plan.config.manifest.clone(),
            output: plan.config.output.clone(),
            summary_json: plan.summary_json.clone(),
            metrics_textfile: plan.metrics_textfile.clone(),
        }
    }

    /// Forgets the report of `flag` (`--summary-json` or `--metrics-textfile`).
    pub(super) fn drop_flag(&mut self, flag: Option<&str>) {
        match flag {
            Some("--summary-json") => self.summary_json = None,
            Some("--metrics-textfile") => self.metrics_textfile = None,
            _ => {}
        }
    }

    /// Writes the reports asked for. One that cannot be written is a warning: the results
    /// file is what matters.
    pub(super) fn write(&self, stats: &Stats, code: u8) {
        let report = RunReport {
            manifest: &self.manifest,
            output: &self.output,
            success: code == exit::OK,
            exit_code: code,
            finished_at: chrono::Utc::now().timestamp(),
            stats,
        };
        if let Some(path) = &self.summary_json
            && let Err(err) = write_summary_json(path, &report)
        {
            say!(
                "warning: cannot write summary JSON {}: {err}",
                path.display()
            );
        }
        if let Some(path) = &self.metrics_textfile
            && let Err(err) = write_metrics(path, &report)
        {
            say!(
                "warning: cannot write metrics file {}: {err}",
                path.display()
            );
        }
    }
}
