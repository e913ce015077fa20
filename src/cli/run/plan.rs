//! `run`'s flags over its job file over the defaults → the [`Plan`]: where each setting is
//! used. What a setting is (its flag, key, default, range and help) is declared in
//! [`crate::config::settings`]; this file only says where its value goes.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::job::{JobFile, is_job_file};
use crate::config::settings::{
    API, CONCURRENCY, CREDENTIAL_QPS, DRAIN_TIMEOUT, Layers, MAX_ATTEMPTS, OUTAGE_TIMEOUT,
    REDIS_TIMEOUT_S, REQUEST_TIMEOUT_S, Settings, UPLOAD_CONCURRENCY, UPLOAD_STALL_TIMEOUT_S,
    UPLOAD_TIMEOUT_S,
};
use crate::config::{RunConfig, default_output, default_state_dir};
use crate::dashscope::{CredentialOptions, RetryPolicy, Streaming};
use crate::output::atomic::resolve_links;
use crate::shared::SharedOptions;

use super::RunArgs;

/// Everything a run needs that is not the pipeline's own config.
pub(super) struct Plan {
    pub config: RunConfig,
    pub emulator: bool,
    pub base_url: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub request_timeout: Duration,
    pub upload_timeout: Duration,
    pub upload_stall_timeout: Duration,
    pub stream: Streaming,
    pub summary_json: Option<PathBuf>,
    pub metrics_textfile: Option<PathBuf>,
    /// The job file the settings came from, if any.
    pub job: Option<PathBuf>,
}

/// The getPolicy burst for `--credential-qps QPS`: an eighth of the rate, at most the
/// library's 10 (80/s → 10), at least 1. Any one-second window then holds at most QPS +
/// burst: 90 at the default, 5 at `--credential-qps 4`. The library's fixed 10 would let a
/// low rate burst past what it asked for (4/s: 14 in one second), and N processes sharing
/// one Redis limit would all spend that burst at once as they start.
fn credential_burst(qps: u32) -> NonZeroU32 {
    let default = CredentialOptions::default().burst;
    NonZeroU32::new(qps / 8).map_or(NonZeroU32::MIN, |b| b.min(default))
}

/// Merges the flags over the job file (if the input is one) over the defaults.
pub(super) fn plan(args: RunArgs, quiet: bool) -> anyhow::Result<Plan> {
    let job_path = is_job_file(&args.input).then(|| args.input.clone());
    let job = match &job_path {
        Some(path) => JobFile::load(path)?,
        None => Settings::default(),
    };
    let manifest = job.manifest.clone().unwrap_or_else(|| args.input.clone());
    let layers = Layers {
        flags: args.settings,
        job,
        job_path: job_path.clone(),
    };
    // Through any symlink to the file it names: the lock, the appends, the rename at the end
    // and the default state folder all belong to that file, whichever name reached it.
    let format = layers.given(|s| s.format);
    let output = resolve_links(
        &layers
            .given(|s| s.output.clone())
            .unwrap_or_else(|| default_output(&manifest, format)),
    );
    let excel_bom = layers.flags.excel_bom || layers.job.excel_bom;
    crate::output::results::format::check_format(&output, format, excel_bom)?;
    let retry = RetryPolicy {
        max_attempts: MAX_ATTEMPTS.pick(&layers, |s| s.max_attempts)?,
        ..RetryPolicy::default()
    };
    let qps = CREDENTIAL_QPS.pick(&layers, |s| s.credential_qps)?;
    let config = RunConfig {
        state_dir: layers
            .given(|s| s.state_dir.clone())
            .unwrap_or_else(|| default_state_dir(&output)),
        fresh: args.fresh,
        drain_timeout: DRAIN_TIMEOUT.seconds(&layers, |s| s.drain_timeout_s)?,
        outage_timeout: OUTAGE_TIMEOUT.seconds(&layers, |s| s.outage_timeout_s)?,
        api: layers.given(|s| s.api).unwrap_or(API).into(),
        concurrency: CONCURRENCY.pick(&layers, |s| s.concurrency)? as usize,
        upload_concurrency: UPLOAD_CONCURRENCY.pick(&layers, |s| s.upload_concurrency)? as usize,
        credentials: CredentialOptions {
            qps: NonZeroU32::new(qps).unwrap_or(NonZeroU32::MIN),
            burst: credential_burst(qps),
            retry: retry.clone(),
            ..CredentialOptions::default()
        },
        retry,
        model_rps: layers.model_rps()?,
        params: layers.params(),
        model_tpm: layers.model_tpm()?,
        shard: layers.given(|s| s.shard),
        quiet,
        limit: layers.given(|s| s.limit),
        redis: match layers.given(|s| s.redis.clone()) {
            Some(url) => Some(SharedOptions {
                url,
                timeout: REDIS_TIMEOUT_S.seconds(&layers, |s| s.redis_timeout_s)?,
            }),
            None => None,
        },
        excel_bom,
        manifest,
        output,
    };
    Ok(Plan {
        config,
        // A --base-url on the command line beats a job file's `emulator = true`, as every
        // other flag beats the job file.
        emulator: layers.flags.emulator || (layers.flags.base_url.is_none() && layers.job.emulator),
        base_url: layers.given(|s| s.base_url.clone()),
        api_key_file: layers.given(|s| s.api_key_file.clone()),
        request_timeout: REQUEST_TIMEOUT_S.seconds(&layers, |s| s.request_timeout_s)?,
        upload_timeout: UPLOAD_TIMEOUT_S.seconds(&layers, |s| s.upload_timeout_s)?,
        upload_stall_timeout: UPLOAD_STALL_TIMEOUT_S
            .seconds(&layers, |s| s.upload_stall_timeout_s)?,
        stream: layers
            .given(|s| s.stream)
            .map_or(Streaming::Auto, Streaming::from),
        summary_json: layers.given(|s| s.summary_json.clone()),
        metrics_textfile: layers.given(|s| s.metrics_textfile.clone()),
        job: job_path,
    })
}
