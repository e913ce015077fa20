//! `dashbatch run`: flags (over a job file) → [`RunConfig`], the API key, the service root
//! (or an in-process emulator), signal handling, then the pipeline; its outcome → reports and
//! an exit code.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::config::job::{JobFile, is_job_file};
use crate::config::{RunConfig, default_output, default_state_dir};
use crate::dashscope::{Api, ApiKey, Client, ClientConfig, CredentialOptions, RetryPolicy};
use crate::exit;
use crate::manifest::ManifestError;
use crate::output::Stats;
use crate::output::atomic::resolve_links;
use crate::output::lock::LockError;
use crate::pipeline::{self, Outcome, PipelineError, StopReason};

use super::files::{self, RunFiles};
use reports::Reports;

/// The real service's root, used unless `--base-url` or `DASHSCOPE_HTTP_BASE_URL` says otherwise.
const DEFAULT_BASE_URL: &str = "https://dashscope.aliyuncs.com";
/// The key `--emulator` uses when no key is given: the emulator accepts any `sk-<account>`
/// key, and this one can never be a real key.
const DEMO_KEY: &str = "sk-demo";
/// The longest either upload clock may be set to: a day is already far past any real upload.
const UPLOAD_TIMEOUT_MAX: i64 = 86_400;

/// Flags are optional here so that a job file can supply them; the documented defaults
/// apply when neither does.
#[derive(Debug, Default, clap::Args)]
pub struct RunArgs {
    /// The manifest CSV, or a job file (`.toml`) that names the manifest and any settings.
    /// Manifest columns: model, file, prompt (required), id, system (optional); any other
    /// column is copied to the results. `file` is a path relative to the manifest's folder,
    /// an oss:// URL or an http(s):// URL.
    #[arg(value_name = "MANIFEST|JOB")]
    pub input: PathBuf,

    /// The results CSV [default: <manifest stem>.results.csv beside the manifest].
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Ignore rows an earlier run finished and start the results file over.
    #[arg(long)]
    pub fresh: bool,

    /// Which model API to call [default: compatible].
    #[arg(long, value_enum)]
    pub api: Option<ApiFlag>,

    /// The service root [default: $DASHSCOPE_HTTP_BASE_URL (the official SDK's variable,
    /// ending in /api/v1), else https://dashscope.aliyuncs.com].
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// Start an emulator of DashScope in this process and run against it (no network; a
    /// demo key is used when no key is given).
    #[arg(long, conflicts_with = "base_url")]
    pub emulator: bool,

    /// Read the API key from this file instead of DASHSCOPE_API_KEY.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Rows in flight at once [default: 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: Option<u32>,

    /// Uploads in flight at once, a separate limit since uploads are bound by bandwidth
    /// [default: 16].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub upload_concurrency: Option<u32>,

    /// Attempts per request before its row fails, 1 = no retries. Credential fetches,
    /// uploads and model calls each retry on their own [default: 6].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: Option<u32>,

    /// Upload-credential requests per second, per model. The service allows 100 per account
    /// per model; the default leaves room for clock jitter and other clients [default: 80].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub credential_qps: Option<u32>,

    /// Model calls per second, per model, when you know the limit. Without it dashbatch
    /// finds the pace from 429 answers, for each model on its own.
    #[arg(long, value_name = "RPS", value_parser = parse_rps)]
    pub model_rps: Option<f64>,

    /// Timeout of one model call, in seconds [default: 300].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_s: Option<u64>,

    /// Limit of one upload attempt as a whole, in seconds [default: 900].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=UPLOAD_TIMEOUT_MAX))]
    pub upload_timeout_s: Option<u32>,

    /// An upload attempt fails once the upload host has taken none of the file, or not
    /// answered after the last of it, for this many seconds; a slow upload that keeps moving
    /// is not cut [default: 60].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u32).range(1..=UPLOAD_TIMEOUT_MAX))]
    pub upload_stall_timeout_s: Option<u32>,

    /// After SIGINT/SIGTERM, how long rows in flight may take to finish, in seconds
    /// [default: 30]. A second signal stops at once.
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<u64>,

    /// How long the service, its upload host or a model may answer nothing but connection
    /// failures, timeouts or 429s before the run stops (exit 4, the rest `not_attempted`),
    /// in seconds. Requests pause and probe it after 30 s of that (or a quarter of this, if
    /// less) [default: 300].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub outage_timeout: Option<u64>,

    /// Folder of the upload cache kept across runs [default: .dashbatch/ beside OUT].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Also write the run's figures as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub summary_json: Option<PathBuf>,

    /// Also write the run's figures in the Prometheus text format (for node_exporter's
    /// textfile collector), including the end time and success of the run.
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiFlag {
    /// POST /compatible-mode/v1/chat/completions (OpenAI shape).
    Compatible,
    /// POST /api/v1/services/aigc/multimodal-generation/generation (DashScope shape).
    Native,
}

/// Everything a run needs that is not the pipeline's own config.
struct Plan {
    config: RunConfig,
    emulator: bool,
    base_url: Option<String>,
    api_key_file: Option<PathBuf>,
    request_timeout: Duration,
    upload_timeout: Duration,
    upload_stall_timeout: Duration,
    summary_json: Option<PathBuf>,
    metrics_textfile: Option<PathBuf>,
    /// The job file the settings came from, if any.
    job: Option<PathBuf>,
}

/// Runs a manifest and returns the exit code. Whatever happens after the flags parse, the
/// reports (`--summary-json`, `--metrics-textfile`) are written with that exit code: cron's
/// watchers learn that last night's run failed as surely as that it succeeded.
pub async fn run(args: RunArgs, quiet: bool) -> u8 {
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
async fn execute(args: RunArgs, quiet: bool, reports: &mut Reports) -> anyhow::Result<(u8, Stats)> {
    let plan = plan(args, quiet)?;
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

    // Kept alive until the run ends: dropping it stops the emulator.
    let mut emulator = None;
    let base_url = if plan.emulator {
        let running = crate::emulator::spawn(crate::emulator::EmulatorConfig::default())
            .await
            .context("cannot start the in-process emulator")?;
        let url = running.base_url();
        tracing::info!("emulator listening on {url}");
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
    report(&plan, &outcome);
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
        Some(StopReason::KeyRejected(_)) => exit::USAGE,
        Some(StopReason::Outage(_)) => exit::UNAVAILABLE,
        None if outcome.stats.rows_failed > 0 => exit::SOME_FAILED,
        None => exit::OK,
    }
}

fn report(plan: &Plan, outcome: &Outcome) {
    let stats = &outcome.stats;
    let config = &plan.config;
    if stats.rows_total == 0 {
        say!("nothing to do: {} has no rows", config.manifest.display());
    } else {
        say!("{}", stats.summary_line());
        say!("results: {}", config.output.display());
    }
    if let Some(reason) = &outcome.stopped {
        say!("stopped early: {reason}");
    }
}

/// Merges flags over the job file (if the input is one) over the defaults.
fn plan(args: RunArgs, quiet: bool) -> anyhow::Result<Plan> {
    let job_path = is_job_file(&args.input).then(|| args.input.clone());
    let job = if is_job_file(&args.input) {
        JobFile::load(&args.input)?
    } else {
        JobFile {
            manifest: Some(args.input.clone()),
            ..JobFile::default()
        }
    };
    let manifest = job.manifest.clone().unwrap_or_else(|| args.input.clone());
    let api = match (args.api, job.api.as_deref()) {
        (Some(flag), _) => flag,
        (None, None) => ApiFlag::Compatible,
        (None, Some(name)) => <ApiFlag as clap::ValueEnum>::from_str(name, true).map_err(|_| {
            anyhow::anyhow!(
                "job file {}: api = {name:?} is not an API; use \"compatible\" or \"native\"",
                args.input.display()
            )
        })?,
    };
    // Through any symlink to the file it names: the lock, the appends, the rename at the end
    // and the default state folder all belong to that file, whichever name reached it.
    let output = resolve_links(
        &args
            .output
            .or(job.output)
            .unwrap_or_else(|| default_output(&manifest)),
    );
    let max_attempts = pick(
        args.max_attempts,
        job.max_attempts,
        6,
        "max_attempts",
        1..=100,
    )?;
    let retry = RetryPolicy {
        max_attempts,
        ..RetryPolicy::default()
    };
    let qps = pick(
        args.credential_qps,
        job.credential_qps,
        80,
        "credential_qps",
        1..=100,
    )?;
    // The flag refuses 0 itself; a job file's 0 is refused as well, not quietly made 1.
    let request_timeout_s = args
        .request_timeout_s
        .or(job.request_timeout_s)
        .unwrap_or(300);
    if request_timeout_s == 0 {
        bail!(
            "job file {}: request_timeout_s = 0 is out of range; use a number of seconds, at \
             least 1",
            args.input.display()
        );
    }
    let config = RunConfig {
        state_dir: args
            .state_dir
            .or(job.state_dir)
            .unwrap_or_else(|| default_state_dir(&output)),
        fresh: args.fresh,
        drain_timeout: Duration::from_secs(args.drain_timeout.or(job.drain_timeout).unwrap_or(30)),
        outage_timeout: Duration::from_secs(match args.outage_timeout.or(job.outage_timeout) {
            Some(0) => bail!("outage_timeout = 0 is out of range; use 1 or more seconds"),
            Some(seconds) => seconds,
            None => 300,
        }),
        api: match api {
            ApiFlag::Compatible => Api::Compatible,
            ApiFlag::Native => Api::Native,
        },
        concurrency: pick(
            args.concurrency,
            job.concurrency,
            32,
            "concurrency",
            1..=100_000,
        )? as usize,
        upload_concurrency: pick(
            args.upload_concurrency,
            job.upload_concurrency,
            16,
            "upload_concurrency",
            1..=10_000,
        )? as usize,
        credentials: CredentialOptions {
            qps: NonZeroU32::new(qps).unwrap_or(NonZeroU32::MIN),
            retry: retry.clone(),
            ..CredentialOptions::default()
        },
        retry,
        model_rps: match (args.model_rps, job.model_rps) {
            (Some(flag), _) => Some(flag),
            (None, Some(rps)) => Some(parse_rps(&rps.to_string()).map_err(|why| {
                anyhow::anyhow!("job file {}: model_rps: {why}", args.input.display())
            })?),
            (None, None) => None,
        },
        quiet,
        manifest,
        output,
    };
    Ok(Plan {
        config,
        // A --base-url on the command line beats a job file's `emulator = true`, as every
        // other flag beats the job file.
        emulator: args.emulator || (args.base_url.is_none() && job.emulator.unwrap_or(false)),
        base_url: args.base_url.or(job.base_url),
        api_key_file: args.api_key_file.or(job.api_key_file),
        request_timeout: Duration::from_secs(request_timeout_s),
        upload_timeout: upload_clock(
            args.upload_timeout_s,
            job.upload_timeout_s,
            900,
            "upload_timeout_s",
        )?,
        upload_stall_timeout: upload_clock(
            args.upload_stall_timeout_s,
            job.upload_stall_timeout_s,
            60,
            "upload_stall_timeout_s",
        )?,
        summary_json: args.summary_json.or(job.summary_json),
        metrics_textfile: args.metrics_textfile.or(job.metrics_textfile),
        job: job_path,
    })
}

/// A flag's value, else the job file's (range-checked: clap checks only flags), else the default.
fn pick(
    flag: Option<u32>,
    job: Option<u32>,
    default: u32,
    name: &str,
    range: std::ops::RangeInclusive<u32>,
) -> anyhow::Result<u32> {
    let value = flag.or(job).unwrap_or(default);
    if !range.contains(&value) {
        bail!(
            "{name} = {value} is out of range; use {}..={}",
            range.start(),
            range.end()
        );
    }
    Ok(value)
}

/// The largest `--model-rps`: the pacer spaces calls in whole nanoseconds, so a rate near
/// 1e9 has no period to pace by (it used to fall back to 1 call/s without a word), and no
/// model serves a million calls a second per account.
const MAX_MODEL_RPS: f64 = 1_000_000.0;

/// One of the upload clocks, in seconds: flag, job file or default, 1 s to a day.
fn upload_clock(
    flag: Option<u32>,
    job: Option<u32>,
    default: u32,
    name: &str,
) -> anyhow::Result<Duration> {
    let max = UPLOAD_TIMEOUT_MAX as u32;
    let seconds = pick(flag, job, default, name, 1..=max)?;
    Ok(Duration::from_secs(u64::from(seconds)))
}

fn parse_rps(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps > 0.0 && rps <= MAX_MODEL_RPS => Ok(rps),
        _ => Err(format!(
            "{text:?} is not a number of calls per second from above 0 to {MAX_MODEL_RPS}"
        )),
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
        _ => DEFAULT_BASE_URL.to_owned(),
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
        say!(
            "stopping: no new rows; finishing rows in flight (up to {}s). \
             Signal again to stop at once.",
            drain.as_secs()
        );
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

mod reports;
#[cfg(test)]
mod tests;
