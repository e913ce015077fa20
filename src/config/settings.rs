//! Every `run` setting, declared once.
//!
//! [`Settings`] is both `run`'s flags (clap) and a job file's keys (serde): a field's name is
//! its job-file key and, with `-` for `_`, its flag; its doc comment is its help. A number's
//! default and accepted range are one [`Bounded`] constant, which the flag's parser, the job
//! file's check, the help text and the typed configuration all read. [`Layers`] is the one
//! merge: a flag, else the job file, else the default.
//!
//! A new setting is a field here (a number with its `Bounded` constant, listed in
//! [`defaults`] for the help) and its use where the typed configuration is built
//! (`cli::run::plan`). The tests hold every flag to being a job-file key, every path to being
//! relative to the job file, and every help to stating its default or having none.
//!
//! Every field is an `Option` (a switch is `false` when not given), so that a setting left
//! out is visible as such. A clap `default_value` would make every flag look given and
//! beat the job file; defaults are applied by [`Layers`] instead, and shown in the help by
//! [`show_defaults`]. Deliberately not here: the settings that are not a job's (`--fresh`,
//! which would start the results over every night) and the checks that need the disk
//! (`cli::files`).

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use serde::Deserialize;

use crate::dashscope::{Api, ClientConfig, CredentialOptions, RetryPolicy, Streaming};
use crate::shared::RedisUrl;

pub use super::layers::{Layers, SettingError};

/// The settings of a run, as flags or as a job file's keys. `deny_unknown_fields`: a
/// misspelt key is refused, naming it, rather than silently ignored.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[command(mut_args(show_defaults))]
pub struct Settings {
    /// The manifest CSV. A job file's key only: on the command line the manifest is the
    /// input itself.
    #[arg(skip)]
    pub manifest: Option<PathBuf>,

    /// The results file [default: <manifest stem>.results.csv beside the manifest, or
    /// .results.jsonl with --format jsonl].
    #[arg(short, long, value_name = "OUT")]
    pub output: Option<PathBuf>,

    /// The results file's format: csv, or jsonl (one JSON object per row, numbers as
    /// numbers). Without it OUT's extension decides: .jsonl and .ndjson are JSONL, anything
    /// else CSV. A format that contradicts OUT's extension is refused, since later runs and
    /// `dashbatch merge` tell a results file's format by its name.
    #[arg(long, value_enum)]
    pub format: Option<crate::output::results::Format>,

    /// Start a CSV results file with a UTF-8 byte order mark, so that Excel reads it as
    /// UTF-8 (a file that has one keeps it when it is rewritten). Not with JSONL.
    #[arg(long)]
    pub excel_bom: bool,

    /// Which model API to call.
    #[arg(long, value_enum)]
    pub api: Option<ApiChoice>,

    /// When a model call asks for its answer as a stream: auto streams the models that
    /// answer only that way (Omni, QVQ, QwQ, *-thinking, and any the service refuses
    /// without a stream), always streams every call (for answers longer than the service's
    /// 300 s non-stream limit), never streams.
    #[arg(long, value_enum)]
    pub stream: Option<StreamChoice>,

    /// The service root.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,

    /// Start an emulator of DashScope in this process and run against it (no network; a
    /// demo key is used when no key is given).
    #[arg(long, conflicts_with = "base_url")]
    pub emulator: bool,

    /// Read the API key from this file instead of DASHSCOPE_API_KEY.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,

    /// Rows in flight at once.
    #[arg(long, value_parser = CONCURRENCY.parser())]
    pub concurrency: Option<u32>,

    /// Uploads in flight at once, a separate limit since uploads are bound by bandwidth.
    #[arg(long, value_parser = UPLOAD_CONCURRENCY.parser())]
    pub upload_concurrency: Option<u32>,

    /// Attempts per request before its row fails, 1 = no retries. Credential fetches,
    /// uploads and model calls each retry on their own.
    #[arg(long, value_parser = MAX_ATTEMPTS.parser())]
    pub max_attempts: Option<u32>,

    /// Upload-credential requests per second, per model. The service allows 100 per account
    /// per model; the default leaves room for clock jitter and other clients.
    #[arg(long, value_parser = CREDENTIAL_QPS.parser())]
    pub credential_qps: Option<u32>,

    /// Model calls per second, per model, when you know the limit. Without it dashbatch
    /// finds the pace from 429 answers, for each model on its own.
    #[arg(long, value_name = "RPS", value_parser = parse_rps)]
    pub model_rps: Option<f64>,

    /// Tokens per minute, per model, when you know the limit: calls are paced so that their
    /// tokens (as the answers' usage reports them, learnt per model) stay under TPM/60 a
    /// second. Without it a token-rate 429 slows the model's calls like any other 429.
    #[arg(long, value_name = "TPM", value_parser = clap::value_parser!(u64).range(1..=MAX_MODEL_TPM))]
    pub model_tpm: Option<u64>,

    /// Timeout of one model call, in seconds.
    #[arg(long, value_parser = REQUEST_TIMEOUT_S.parser())]
    pub request_timeout_s: Option<u64>,

    /// Limit of one upload attempt as a whole, in seconds.
    #[arg(long, value_name = "SECONDS", value_parser = UPLOAD_TIMEOUT_S.parser())]
    pub upload_timeout_s: Option<u32>,

    /// An upload attempt fails once the upload host has taken none of the file, or not
    /// answered after the last of it, for this many seconds; a slow upload that keeps moving
    /// is not cut.
    #[arg(long, value_name = "SECONDS", value_parser = UPLOAD_STALL_TIMEOUT_S.parser())]
    pub upload_stall_timeout_s: Option<u32>,

    /// After SIGINT/SIGTERM, how long rows in flight may take to finish, in seconds. A
    /// second signal stops at once.
    // Named like the other clocks (`--request-timeout-s`); the old name stays as a hidden
    // alias, for flags and job files written before.
    #[arg(long, value_name = "SECONDS", alias = "drain-timeout", value_parser = DRAIN_TIMEOUT.parser())]
    #[serde(alias = "drain_timeout")]
    pub drain_timeout_s: Option<u64>,

    /// How long the service, its upload host or a model may answer nothing but connection
    /// failures, timeouts or 429s before the run stops (exit 4, the rest `not_attempted`),
    /// in seconds. Requests pause and probe it after 30 s of that (or a quarter of this, if
    /// less).
    #[arg(long, value_name = "SECONDS", alias = "outage-timeout", value_parser = OUTAGE_TIMEOUT.parser())]
    #[serde(alias = "outage_timeout")]
    pub outage_timeout_s: Option<u64>,

    /// Run only the first N rows still to do (after the rows an earlier run finished), to
    /// try a manifest, prompt or parameters on a few rows; the rest are written as
    /// `not_attempted` and left for the next run. The exit code is 0 when the N rows are ok.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Run only the rows of shard K of N (1 <= K <= N), chosen by a stable hash of the row
    /// id, so that N processes (on any hosts) split one manifest; `dashbatch merge` joins
    /// their results files.
    #[arg(long, value_name = "K/N", value_parser = clap::value_parser!(crate::manifest::Shard))]
    pub shard: Option<crate::manifest::Shard>,

    /// Share this account's limits with every dashbatch process given the same Redis:
    /// redis://[:PASSWORD@]HOST:PORT/DB, rediss://… (TLS) or redis+unix:///PATH. Also read
    /// from DASHBATCH_REDIS_URL. Unreachable at the start: exit 2.
    #[arg(long, value_name = "URL", env = "DASHBATCH_REDIS_URL", hide_env_values = true, value_parser = RedisUrl::parse)]
    pub redis: Option<RedisUrl>,

    /// How long a call may wait for Redis when it stops answering, in seconds; past it the
    /// run stops (exit 4, the rest `not_attempted`). No call goes without Redis's grant.
    #[arg(long, value_name = "SECONDS", value_parser = REDIS_TIMEOUT_S.parser())]
    pub redis_timeout_s: Option<u64>,

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

    /// A generation parameter for every model call, as the service names it (temperature,
    /// top_p, max_tokens, seed, response_format, enable_thinking, …); repeatable. VALUE is
    /// read as JSON when it parses, else as a string. In a job file: a `[params]` table. A
    /// manifest's `params` column overrides it key by key for its row.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    #[serde(deserialize_with = "params_table")]
    pub params: Vec<Param>,
}

/// One generation parameter: its name and its JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub value: serde_json::Value,
}

/// `--param KEY=VALUE`: the value as JSON when it parses (`0.2`, `true`, `{"type":"json_object"}`),
/// else as a string (`--param stop=END`). Names dashbatch sets itself are refused.
pub fn parse_param(text: &str) -> Result<Param, String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!(
            "{text:?} is not KEY=VALUE; write e.g. --param temperature=0.2"
        ));
    };
    let name = name.trim();
    crate::dashscope::check_param_name(name)?;
    let value =
        serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
    Ok(Param {
        name: name.to_owned(),
        value,
    })
}

/// A job file's `[params]` table, in the form the flags take.
fn params_table<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<Param>, D::Error> {
    let table = serde_json::Map::<String, serde_json::Value>::deserialize(de)?;
    Ok(table
        .into_iter()
        .map(|(name, value)| Param { name, value })
        .collect())
}

impl Settings {
    /// The settings that are paths, which a job file gives relative to its own folder.
    pub(super) fn paths_mut(&mut self) -> [&mut Option<PathBuf>; 6] {
        [
            &mut self.manifest,
            &mut self.output,
            &mut self.state_dir,
            &mut self.summary_json,
            &mut self.metrics_textfile,
            &mut self.api_key_file,
        ]
    }
}

// The numbers' defaults and ranges. Where the library has a default of its own, it is taken
// from there, so `ClientConfig::default()` and `run` agree.
pub const CONCURRENCY: Bounded<u32> = Bounded::new("concurrency", 32, 1..=100_000);
pub const UPLOAD_CONCURRENCY: Bounded<u32> = Bounded::new("upload_concurrency", 16, 1..=10_000);
pub const MAX_ATTEMPTS: Bounded<u32> =
    Bounded::new("max_attempts", RetryPolicy::DEFAULT_MAX_ATTEMPTS, 1..=100);
pub const CREDENTIAL_QPS: Bounded<u32> = Bounded::new(
    "credential_qps",
    CredentialOptions::DEFAULT_QPS.get(),
    1..=100,
);
pub const REQUEST_TIMEOUT_S: Bounded<u64> = Bounded::new(
    "request_timeout_s",
    ClientConfig::DEFAULT_REQUEST_TIMEOUT.as_secs(),
    1..=u64::MAX,
);
pub const UPLOAD_TIMEOUT_S: Bounded<u32> = Bounded::new(
    "upload_timeout_s",
    ClientConfig::DEFAULT_UPLOAD_TIMEOUT.as_secs() as u32,
    1..=UPLOAD_CLOCK_MAX,
);
pub const UPLOAD_STALL_TIMEOUT_S: Bounded<u32> = Bounded::new(
    "upload_stall_timeout_s",
    ClientConfig::DEFAULT_UPLOAD_STALL_TIMEOUT.as_secs() as u32,
    1..=UPLOAD_CLOCK_MAX,
);
pub const DRAIN_TIMEOUT: Bounded<u64> = Bounded::new("drain_timeout_s", 30, 0..=u64::MAX);
pub const OUTAGE_TIMEOUT: Bounded<u64> = Bounded::new("outage_timeout_s", 300, 1..=u64::MAX);
/// Long enough for a Redis restart or a failover (seconds), short enough that a run does not
/// sit idle for long; at most an hour, past which the run should stop and be run again.
pub const REDIS_TIMEOUT_S: Bounded<u64> = Bounded::new("redis_timeout_s", 30, 1..=3600);

/// The longest either upload clock may be set to: a day is already far past any real upload.
const UPLOAD_CLOCK_MAX: u32 = 86_400;

/// The API used when neither flag nor job file names one.
pub const API: ApiChoice = ApiChoice::Compatible;

/// The largest `--model-rps`: the pacer spaces calls in whole nanoseconds, so a rate near
/// 1e9 has no period to pace by (it used to fall back to 1 call/s without a word), and no
/// model serves a million calls a second per account.
pub const MAX_MODEL_RPS: f64 = 1_000_000.0;

/// A number's job-file key, default and accepted range.
#[derive(Debug, Clone)]
pub struct Bounded<T> {
    pub key: &'static str,
    pub default: T,
    pub range: RangeInclusive<T>,
}

impl<T: Copy + Into<u64>> Bounded<T> {
    const fn new(key: &'static str, default: T, range: RangeInclusive<T>) -> Self {
        Bounded {
            key,
            default,
            range,
        }
    }

    /// The flag's parser, so clap refuses an out-of-range flag with its own usage error.
    fn parser(&self) -> RangedU64ValueParser<T>
    where
        T: TryFrom<u64> + Clone + Send + Sync + 'static,
    {
        RangedU64ValueParser::new().range((*self.range.start()).into()..=(*self.range.end()).into())
    }

    /// A flag's value, else the job file's (checked here: clap checked only the flag), else
    /// the default.
    pub fn pick(
        &self,
        layers: &Layers,
        field: impl Fn(&Settings) -> Option<T>,
    ) -> Result<T, SettingError>
    where
        T: PartialOrd + std::fmt::Display,
    {
        layers
            .merge(field, Some(self.default), self.key, |value| {
                if self.range.contains(value) {
                    Ok(())
                } else if (*self.range.end()).into() == u64::MAX {
                    Err(format!("use {} or more", self.range.start()))
                } else {
                    Err(format!("use {}..={}", self.range.start(), self.range.end()))
                }
            })
            .map(|value| value.unwrap_or(self.default))
    }

    /// A number of seconds, as [`Self::pick`].
    pub fn seconds(
        &self,
        layers: &Layers,
        field: impl Fn(&Settings) -> Option<T>,
    ) -> Result<Duration, SettingError>
    where
        T: PartialOrd + std::fmt::Display,
    {
        Ok(Duration::from_secs(self.pick(layers, field)?.into()))
    }

    fn shown(&self) -> (&'static str, String)
    where
        T: std::fmt::Display,
    {
        (self.key, self.default.to_string())
    }
}

/// Every setting with a default of its own, as its help shows it.
fn defaults() -> [(&'static str, String); 13] {
    [
        CONCURRENCY.shown(),
        UPLOAD_CONCURRENCY.shown(),
        MAX_ATTEMPTS.shown(),
        CREDENTIAL_QPS.shown(),
        REQUEST_TIMEOUT_S.shown(),
        UPLOAD_TIMEOUT_S.shown(),
        UPLOAD_STALL_TIMEOUT_S.shown(),
        DRAIN_TIMEOUT.shown(),
        OUTAGE_TIMEOUT.shown(),
        REDIS_TIMEOUT_S.shown(),
        ("api", API.name().to_owned()),
        ("stream", "auto".to_owned()),
        (
            "base_url",
            format!(
                "$DASHSCOPE_HTTP_BASE_URL (the official SDK's variable, ending in /api/v1), \
                 else {}",
                ClientConfig::DEFAULT_BASE_URL
            ),
        ),
    ]
}

/// Appends `[default: …]` to the help of each setting in [`defaults`], so that the help
/// cannot drift from the value used. (Run by clap on every argument of `run`.)
fn show_defaults(arg: clap::Arg) -> clap::Arg {
    let Some((_, default)) = defaults().into_iter().find(|(key, _)| arg.get_id() == *key) else {
        return arg;
    };
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    let help = format!("{} [default: {default}]", help.trim_end_matches('.'));
    arg.help(help)
}

/// `--model-rps`: above 0, at most [`MAX_MODEL_RPS`].
/// The largest `--model-tpm`: far above any published limit, small enough for a rate.
pub const MAX_MODEL_TPM: u64 = 1_000_000_000_000;

pub fn parse_rps(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rps) if rps_in_range(rps) => Ok(rps),
        _ => Err(format!(
            "{text:?} is not a number of calls per second from above 0 to {MAX_MODEL_RPS}"
        )),
    }
}

pub(super) fn rps_in_range(rps: f64) -> bool {
    rps.is_finite() && rps > 0.0 && rps <= MAX_MODEL_RPS
}

/// `--api` and a job file's `api`, matched without regard to case in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(try_from = "String")]
pub enum ApiChoice {
    /// POST /compatible-mode/v1/chat/completions (OpenAI shape).
    Compatible,
    /// POST /api/v1/services/aigc/multimodal-generation/generation (DashScope shape).
    Native,
}

impl ApiChoice {
    fn name(self) -> &'static str {
        match self {
            ApiChoice::Compatible => "compatible",
            ApiChoice::Native => "native",
        }
    }
}

impl TryFrom<String> for ApiChoice {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        <ApiChoice as clap::ValueEnum>::from_str(&name, true)
            .map_err(|_| format!("{name:?} is not an API; use \"compatible\" or \"native\""))
    }
}

impl From<ApiChoice> for Api {
    fn from(choice: ApiChoice) -> Api {
        match choice {
            ApiChoice::Compatible => Api::Compatible,
            ApiChoice::Native => Api::Native,
        }
    }
}

/// `--stream` and a job file's `stream`, matched without regard to case in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(try_from = "String")]
pub enum StreamChoice {
    Auto,
    Always,
    Never,
}

impl TryFrom<String> for StreamChoice {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        <StreamChoice as clap::ValueEnum>::from_str(&name, true).map_err(|_| {
            format!("{name:?} is not a stream setting; use \"auto\", \"always\" or \"never\"")
        })
    }
}

impl From<StreamChoice> for Streaming {
    fn from(choice: StreamChoice) -> Streaming {
        match choice {
            StreamChoice::Auto => Streaming::Auto,
            StreamChoice::Always => Streaming::Always,
            StreamChoice::Never => Streaming::Never,
        }
    }
}

#[cfg(test)]
mod tests;
