//! `dashbatch run`: flags → [`RunConfig`], the API key, the service root (or an in-process
//! emulator), then the pipeline; its outcome → an exit code.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;

use crate::config::{RunConfig, default_output};
use crate::dashscope::{Api, ApiKey, Client, ClientConfig, CredentialOptions, RetryPolicy};
use crate::exit;
use crate::pipeline::{self, PipelineError};

/// The real service's root, used unless `--base-url` or `DASHSCOPE_HTTP_BASE_URL` says otherwise.
const DEFAULT_BASE_URL: &str = "https://dashscope.aliyuncs.com";
/// The key `--emulator` uses when `DASHSCOPE_API_KEY` is not set: the emulator accepts any
/// `sk-<account>` key, and this one can never be a real key.
const DEMO_KEY: &str = "sk-demo";

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The manifest CSV. Columns: model, file, prompt (required), id, system (optional);
    /// any other column is copied to the results. `file` is a path relative to the manifest's
    /// folder, an oss:// URL or an http(s):// URL.
    pub manifest: PathBuf,

    /// The results CSV [default: <manifest stem>.results.csv beside the manifest].
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// Which model API to call: OpenAI-compatible mode or DashScope's native API.
    #[arg(long, value_enum, default_value_t = ApiFlag::Compatible)]
    pub api: ApiFlag,

    /// The service root. Defaults to DASHSCOPE_HTTP_BASE_URL (the official SDK's variable,
    /// ending in /api/v1) if set, else https://dashscope.aliyuncs.com.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// Start an emulator of DashScope in this process and run against it (no network, no
    /// real key needed: a demo key is used when DASHSCOPE_API_KEY is unset).
    #[arg(long, conflicts_with = "base_url")]
    pub emulator: bool,

    /// Rows in flight at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Uploads in flight at once (a separate limit: uploads are bound by bandwidth).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub upload_concurrency: u32,

    /// Attempts per request before its row fails (1 = no retries). Applies to credential
    /// fetches, uploads and model calls, each on its own.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Upload-credential requests per second, per model. The service allows 100 per account
    /// per model; the default leaves room for other clients and clock jitter.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub credential_qps: u32,

    /// Timeout of one model call, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_s: u64,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ApiFlag {
    /// POST /compatible-mode/v1/chat/completions (OpenAI shape).
    Compatible,
    /// POST /api/v1/services/aigc/multimodal-generation/generation (DashScope shape).
    Native,
}

pub async fn run(args: RunArgs, quiet: bool) -> u8 {
    match execute(args, quiet).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            exit::USAGE
        }
    }
}

async fn execute(args: RunArgs, quiet: bool) -> anyhow::Result<u8> {
    let config = run_config(&args, quiet);
    let key = api_key(args.emulator)?;

    // Kept alive until the run ends: dropping it stops the emulator.
    let mut emulator = None;
    let base_url = if args.emulator {
        let running = crate::emulator::spawn(crate::emulator::EmulatorConfig::default())
            .await
            .context("cannot start the in-process emulator")?;
        let url = running.base_url();
        tracing::info!("emulator listening on {url}");
        emulator = Some(running);
        url
    } else {
        base_url(args.base_url.as_deref())
    };
    let client = Client::new(
        key,
        ClientConfig {
            base_url,
            request_timeout: Duration::from_secs(args.request_timeout_s),
            ..ClientConfig::default()
        },
    )
    .context("cannot build the HTTP client")?;

    let shutdown = CancellationToken::new();
    let outcome = match pipeline::run(&config, client, shutdown).await {
        Ok(outcome) => outcome,
        Err(err @ (PipelineError::Manifest(_) | PipelineError::Output { .. })) => {
            eprintln!("error: {err}");
            return Ok(exit::USAGE);
        }
        Err(err) => return Err(err.into()),
    };
    if let Some(running) = emulator {
        running.shutdown().await;
    }

    let stats = &outcome.stats;
    if stats.rows_total == 0 && stats.rows_done() == 0 {
        eprintln!("nothing to do: {} has no rows", config.manifest.display());
        return Ok(exit::OK);
    }
    eprintln!("{}", stats.summary_line());
    eprintln!("results: {}", config.output.display());
    if let Some(reason) = &outcome.stopped {
        eprintln!("error: stopped early: {reason}");
        return Ok(exit::USAGE);
    }
    Ok(if stats.rows_failed > 0 {
        exit::SOME_FAILED
    } else {
        exit::OK
    })
}

fn run_config(args: &RunArgs, quiet: bool) -> RunConfig {
    let retry = RetryPolicy {
        max_attempts: args.max_attempts,
        ..RetryPolicy::default()
    };
    RunConfig {
        output: args
            .output
            .clone()
            .unwrap_or_else(|| default_output(&args.manifest)),
        manifest: args.manifest.clone(),
        api: match args.api {
            ApiFlag::Compatible => Api::Compatible,
            ApiFlag::Native => Api::Native,
        },
        concurrency: args.concurrency as usize,
        upload_concurrency: args.upload_concurrency as usize,
        credentials: CredentialOptions {
            qps: NonZeroU32::new(args.credential_qps).unwrap_or(NonZeroU32::MIN),
            retry: retry.clone(),
            ..CredentialOptions::default()
        },
        retry,
        quiet,
    }
}

/// The key from `DASHSCOPE_API_KEY`; with `--emulator` a demo key when it is unset.
fn api_key(emulator: bool) -> anyhow::Result<ApiKey> {
    match std::env::var("DASHSCOPE_API_KEY") {
        Ok(raw) if !raw.trim().is_empty() => {
            ApiKey::new(raw).context("DASHSCOPE_API_KEY is not a usable API key")
        }
        _ if emulator => Ok(ApiKey::new(DEMO_KEY)?),
        _ => bail!(
            "no API key: set DASHSCOPE_API_KEY to a Model Studio key (China (Beijing) region), \
             or pass --emulator to try the manifest offline"
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
