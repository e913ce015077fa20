//! `dashbatch run`: flags (over a job file) → [`RunConfig`], the API key, the service root
//! (or an in-process emulator), signal handling, then the pipeline; its outcome → reports and
//! an exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::config::settings::Settings;
use crate::dashscope::{ApiKey, Client, ClientConfig};
use crate::exit;
use crate::manifest::ManifestError;
use crate::output::Stats;
use crate::output::lock::LockError;
use crate::pipeline::{self, Outcome, PipelineError, StopReason};

use super::files::{self, RunFiles};
use plan::{Plan, plan};
use reports::Reports;

/// The key `--emulator` uses when no key is given: the emulator accepts any `sk-<account>`
/// key, and this one can never be a real key.
const DEMO_KEY: &str = "sk-demo";

/// `run`'s command line: the input, `--fresh`, and every setting a job file may also give
/// (declared in [`crate::config::settings`]).
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// The manifest CSV, or a job file (`.toml`) that names the manifest and any settings.
    /// Manifest columns: model, file, prompt (required), id, system (optional); any other
    /// column is copied to the results. `file` is a path relative to the manifest's folder,
    /// an oss:// URL or an http(s):// URL.
    #[arg(value_name = "MANIFEST|JOB")]
    pub input: PathBuf,

    /// Ignore rows an earlier run finished and start the results file over.
    #[arg(long)]
    pub fresh: bool,

    #[command(flatten)]
    pub settings: Settings,
}

/// Runs a manifest and returns the exit code. `quiet` is the count of `-q`: one hides the
/// progress, two the summary too (errors are always said). Whatever happens after the flags parse, the
/// reports (`--summary-json`, `--metrics-textfile`) are written with that exit code: cron's
/// watchers learn that last night's run failed as surely as that it succeeded.
pub async fn run(args: RunArgs, quiet: u8) -> u8 {
    // From the flags alone, so that even a job file that does not load leaves a report.
    let mut reports = Reports::from_flags(&args);
    let (code, stats) = match execute(args, quiet, &mut reports).await {
        Ok(ended) => ended,
        Err(err) => {
            say!("error: {err:#}");
            (exit::USAGE, Stats::default())
        }
    };
    reports.write(&stats, code);
    code
}

/// The exit code and the figures to report.
async fn execute(args: RunArgs, quiet: u8, reports: &mut Reports) -> anyhow::Result<(u8, Stats)> {
    let plan = plan(args, quiet > 0)?;
    *reports = Reports::from_plan(&plan);
    let checked = files::check(&RunFiles {
        manifest: &plan.config.manifest,
        job: plan.job.as_deref(),
        api_key_file: plan.api_key_file.as_deref(),
        output: &plan.config.output,
        summary_json: plan.summary_json.as_deref(),
        metrics_textfile: plan.metrics_textfile.as_deref(),
    });
    if let Err(err) = checked {
        // A report that would overwrite another file of the run is not written at all.
        reports.drop_flag(err.report_flag());
        return Err(err.into());
    }
    let key = api_key(plan.api_key_file.as_deref(), plan.emulator)?;
    // A mistyped manifest path is said before anything starts (the in-process emulator, a
    // results folder); the manifest reader would say it too, but only after those.
    if let Err(err) = std::fs::metadata(&plan.config.manifest) {
        bail!(
            "cannot read manifest {}: {err}",
            plan.config.manifest.display()
        );
    }
    // `-o` into a folder that does not exist yet: create it, as most tools do, rather than
    // fail on the lock file inside it.
    if let Some(folder) = plan
        .config
        .output
        .parent()
        .filter(|f| !f.as_os_str().is_empty())
    {
        std::fs::create_dir_all(folder)
            .with_context(|| format!("cannot create the results folder {}", folder.display()))?;
    }

    // Kept alive until the run ends: dropping it stops the emulator.
    let mut emulator = None;
    let base_url = if plan.emulator {
        let running = crate::emulator::spawn(crate::emulator::EmulatorConfig::default())
            .await
            .context("cannot start the in-process emulator")?;
        let url = running.base_url();
        // Debug, not info: a newcomer's first command should print the run's summary, not a
        // timestamped log line about an address nothing else needs (`-v` shows it).
        tracing::debug!("emulator listening on {url}");
        emulator = Some(running);
        url
    } else {
        base_url(plan.base_url.as_deref())
    };
    let client = Client::new(
        key,
        ClientConfig {
            base_url,
            request_timeout: plan.request_timeout,
            upload_timeout: plan.upload_timeout,
            upload_stall_timeout: plan.upload_stall_timeout,
            stream: plan.stream,
            ..ClientConfig::default()
        },
    )
    .context("cannot build the HTTP client")?;

    let shutdown = CancellationToken::new();
    watch_signals(shutdown.clone(), plan.config.drain_timeout, reports.clone());
    let result = pipeline::run(&plan.config, client, shutdown).await;
    if let Some(running) = emulator {
        let _ = running.shutdown().await;
    }
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(err) => return Ok(failed(err)),
    };
    let code = exit_code(&outcome);
    report(&plan, &outcome, quiet < 2);
    Ok((code, outcome.stats))
}

/// A run that ended in a [`PipelineError`]: what to say, the exit code, and the figures.
fn failed(err: PipelineError) -> (u8, Stats) {
    let (message, code, stats) = judge(err);
    say!("{message}");
    (code, stats)
}

/// The message, exit code and figures of a [`PipelineError`]. The message is the error's
/// `Display`, which already names the cause; `{:#}` would repeat it once per source.
fn judge(err: PipelineError) -> (String, u8, Stats) {
    let code = match &err {
        PipelineError::Manifest(ManifestError::NoHeader { path }) => {
            let message = format!("nothing to do: {} is empty", path.display());
            return (message, exit::OK, Stats::default());
        }
        PipelineError::Locked(LockError::Held { .. } | LockError::HeldByLink { .. }) => {
            exit::LOCKED
        }
        _ => exit::USAGE,
    };
    let message = format!("error: {err}");
    match err {
        // The rows ran and their lines are in the results file, uncompacted (the next run
        // resumes from them): the figures are real, not zeros.
        PipelineError::Compact { stats, .. } => (message, code, *stats),
        _ => (message, code, Stats::default()),
    }
}

fn exit_code(outcome: &Outcome) -> u8 {
    match &outcome.stopped {
        Some(StopReason::Interrupted) => exit::INTERRUPTED,
        Some(StopReason::KeyRejected(_) | StopReason::AccountStopped(_)) => exit::USAGE,
        Some(StopReason::Outage(_) | StopReason::RedisLost(_)) => exit::UNAVAILABLE,
        None if outcome.stats.rows_failed > 0 => exit::SOME_FAILED,
        None => exit::OK,
    }
}

/// The summary (unless `summary` is false, `-qq`), and why the run stopped early: that
/// explains an exit code, so it is said even under `-qq`.
fn report(plan: &Plan, outcome: &Outcome, summary: bool) {
    let stats = &outcome.stats;
    let config = &plan.config;
    if summary && stats.rows_total == 0 {
        say!("nothing to do: {} has no rows", config.manifest.display());
    } else if summary {
        say!("{}", stats.summary_line());
        say!("results: {}", config.output.display());
    }
    if let Some(reason) = &outcome.stopped {
        say!("stopped early: {reason}");
    }
}

/// The key from `--api-key-file`, else `DASHSCOPE_API_KEY`, else (with `--emulator`) a demo key.
fn api_key(file: Option<&Path>, emulator: bool) -> anyhow::Result<ApiKey> {
    if let Some(path) = file {
        let raw = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the API key file {}", path.display()))?;
        return ApiKey::new(raw.trim().to_owned())
            .with_context(|| format!("the API key file {} holds no usable key", path.display()));
    }
    match std::env::var("DASHSCOPE_API_KEY") {
        Ok(raw) if !raw.trim().is_empty() => {
            ApiKey::new(raw).context("DASHSCOPE_API_KEY is not a usable API key")
        }
        _ if emulator => Ok(ApiKey::new(DEMO_KEY)?),
        _ => bail!(
            "no API key: set DASHSCOPE_API_KEY to a Model Studio key (China (Beijing) region) \
             or pass --api-key-file, or pass --emulator to try the manifest offline"
        ),
    }
}

fn base_url(flag: Option<&str>) -> String {
    if let Some(url) = flag {
        return url.trim_end_matches('/').to_owned();
    }
    match std::env::var("DASHSCOPE_HTTP_BASE_URL") {
        Ok(sdk) if !sdk.trim().is_empty() => ClientConfig::root_from_sdk_base(sdk.trim()),
        _ => ClientConfig::DEFAULT_BASE_URL.to_owned(),
    }
}

/// First SIGINT/SIGTERM: stop dispatching and drain. Second: exit at once. That is safe
/// because every finished row is already flushed, and the next run resumes from it.
/// The reports are written before that exit too, saying 130 (the figures of rows still
/// running are not known; the results file has every finished one).
fn watch_signals(shutdown: CancellationToken, drain: Duration, reports: Reports) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; Ctrl-C will stop at once");
        return;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        // The bar would redraw over the message, or under it again and again.
        crate::output::progress::above_the_bar(|| {
            say!(
                "stopping: no new rows; rows in flight get {}s to finish; signal again to quit",
                drain.as_secs()
            );
        });
        shutdown.cancel();
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        say!("aborted: rows in flight are lost; the next run resumes");
        reports.write(&Stats::default(), exit::INTERRUPTED);
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
}

mod plan;
mod reports;
#[cfg(test)]
mod tests;
