//! `dashbatch emulator`: flags → [`EmulatorConfig`], then serve until SIGINT/SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::emulator::{
    self, BillingStop, Burst, DEFAULT_MODELS, DEFAULT_STREAM_ONLY_MODELS, EmulatorConfig,
};

#[derive(Debug, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on. Port 0 picks a free port; the chosen address is printed as
    /// `listening on http://ADDR`.
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,

    /// Base URL clients reach the emulator at, returned as `upload_host` (default: the
    /// listening address). Set it when the emulator sits behind a proxy or in a container.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,

    /// Delay before answering each getPolicy request, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub credential_latency_ms: u64,

    /// Delay before handling each upload (OSS PostObject), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub upload_latency_ms: u64,

    /// Delay before answering each model call (both APIs), in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub chat_latency_ms: u64,

    /// A random extra delay of 0..=MS added to each of the latencies above.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_jitter_ms: u64,

    /// Fraction (0 to 1) of requests that meet an injected fault: 500 InternalError, 503,
    /// a dropped connection, a slow response or a burst of 429s, on every endpoint.
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = parse_fraction)]
    pub fault_rate: f64,

    /// Seed of the fault sequence; the same seed gives the same mix of faults.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub fault_seed: u64,

    /// How long a "slow response" fault stalls, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub fault_slow_ms: u64,

    /// Read uploads no faster than this many megabits per second, at least 0.001
    /// (default: unthrottled).
    #[arg(long, value_name = "MBPS", value_parser = parse_bandwidth)]
    pub upload_bandwidth_mbps: Option<f64>,

    /// Lifetime of an upload credential (`expire_in_seconds`), in seconds.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub policy_ttl_s: u64,

    /// getPolicy requests allowed per account per model in any one-second window; the next
    /// one gets 429 Throttling.RateQuota. The real service allows 100.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub credential_qps: u32,

    /// Model calls allowed per account per model in any one-second window (default: no
    /// limit); the next one gets 429 Throttling.RateQuota / limit_requests.
    #[arg(long, value_name = "N")]
    pub model_rps: Option<u32>,

    /// Largest upload accepted, in MB (1 MB = 2^20 bytes), for every model.
    #[arg(long, value_name = "MB", default_value_t = 1024)]
    pub max_file_size_mb: u64,

    /// Daily upload capacity per account, in MB; an upload past it is refused until the
    /// next day (Beijing time).
    #[arg(long, value_name = "MB", default_value_t = 999_999_999)]
    pub capacity_limit_mb: u64,

    /// The models that exist, as a comma-separated list [default:
    /// qwen-vl-plus,qwen-vl-max,qwen-omni-turbo,qwen3-omni-flash,qvq-max,qwen2.5-vl-72b-instruct].
    // The default is written out by hand because clap would show it space-separated, which
    // is not how the flag is given; a test keeps it equal to `DEFAULT_MODELS`.
    #[arg(long, value_name = "LIST", value_delimiter = ',', hide_default_value = true, default_values_t = DEFAULT_MODELS.iter().map(|m| m.to_string()))]
    pub models: Vec<String>,

    /// Models that answer only as a stream; a call without `stream` (compatible) or
    /// `X-DashScope-SSE: enable` (native) gets 400. An empty value means none
    /// [default: qwen-omni-turbo,qwen3-omni-flash,qvq-max].
    #[arg(long, value_name = "LIST", value_delimiter = ',', hide_default_value = true, default_values_t = DEFAULT_STREAM_ONLY_MODELS.iter().map(|m| m.to_string()))]
    pub stream_only_models: Vec<String>,

    /// Models no account may use: model calls get 403 Model.AccessDenied.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub denied_models: Vec<String>,

    /// Growth-rate limit: in any 1 s window a model may take at most
    /// max(N, G × the window before) calls per account; then 429 Throttling.BurstRate /
    /// limit_burst_rate (default: no such limit).
    #[arg(long, value_name = "N")]
    pub burst_floor: Option<u32>,

    /// The growth factor G of the growth-rate limit; needs --burst-floor.
    #[arg(long, value_name = "G", default_value_t = 2.0, requires = "burst_floor", value_parser = parse_growth)]
    pub burst_growth: f64,

    /// Tokens per minute per account per model, also enforced per second as TPM/60; then
    /// 429 Throttling.AllocationQuota / insufficient_quota, mid-stream for a stream that
    /// crosses it (default: no limit).
    #[arg(long, value_name = "TPM", value_parser = clap::value_parser!(u64).range(1..))]
    pub model_tpm: Option<u64>,

    /// An account falls into arrears after N model calls: every later call and getPolicy
    /// gets the --arrears-code refusal (default: never; see POST /__emulator/arrears).
    #[arg(long, value_name = "N")]
    pub arrears_after: Option<u64>,

    /// What an account in arrears is refused with: Arrearage (400), or one of the billing
    /// 429s CommodityNotPurchased, PrepaidBillOverdue, PostpaidBillOverdue.
    #[arg(long, value_name = "CODE", default_value = "Arrearage", value_parser = parse_billing_stop)]
    pub arrears_code: BillingStop,
}

fn parse_growth(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(g) if g.is_finite() && g >= 1.0 => Ok(g),
        _ => Err(format!("{s:?} is not a growth factor of at least 1")),
    }
}

fn parse_billing_stop(s: &str) -> Result<BillingStop, String> {
    BillingStop::parse(s).ok_or_else(|| {
        let codes: Vec<&str> = BillingStop::ALL.iter().map(|b| b.as_str()).collect();
        format!("{s:?} is not one of {}", codes.join(", "))
    })
}

/// A comma-separated flag's names, trimmed, empty ones dropped.
fn names(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|m| m.trim().to_owned())
        .filter(|m| !m.is_empty())
        .collect()
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// The slowest link worth emulating: 1 kbit/s. Anything slower only stalls uploads forever
/// (and tiny values such as 1e-300 make durations overflow).
const MIN_BANDWIDTH_MBPS: f64 = 0.001;

fn parse_bandwidth(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= MIN_BANDWIDTH_MBPS => Ok(f),
        _ => Err(format!(
            "{s:?} is not a bandwidth in Mbit/s of at least {MIN_BANDWIDTH_MBPS} (1 kbit/s)"
        )),
    }
}

impl EmulatorArgs {
    pub fn config(&self) -> anyhow::Result<EmulatorConfig> {
        let models = names(&self.models);
        anyhow::ensure!(!models.is_empty(), "--models needs at least one model name");
        let ms = Duration::from_millis;
        Ok(EmulatorConfig {
            public_base_url: self.public_url.clone(),
            models,
            max_file_size_mb: self.max_file_size_mb,
            capacity_limit_mb: self.capacity_limit_mb,
            policy_ttl_s: self.policy_ttl_s,
            credential_qps: self.credential_qps,
            model_rps: self.model_rps,
            stream_only_models: names(&self.stream_only_models),
            denied_models: names(&self.denied_models),
            burst: self.burst_floor.map(|floor| Burst {
                floor,
                growth: self.burst_growth,
            }),
            model_tpm: self.model_tpm,
            arrears_after: self.arrears_after,
            arrears_code: self.arrears_code,
            credential_latency: ms(self.credential_latency_ms),
            upload_latency: ms(self.upload_latency_ms),
            chat_latency: ms(self.chat_latency_ms),
            latency_jitter: ms(self.latency_jitter_ms),
            fault_rate: self.fault_rate,
            fault_seed: self.fault_seed,
            fault_slow: ms(self.fault_slow_ms),
            upload_bandwidth_mbps: self.upload_bandwidth_mbps,
            ..EmulatorConfig::default()
        })
    }
}

pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    // Registered before the line is printed: a script may signal us the moment it reads
    // the line, and a signal that arrives before its handler exists kills the process
    // (exit by signal) instead of shutting down cleanly (exit 0).
    let signals = ShutdownSignals::register()?;
    // The socket is bound and listening, so connections are accepted from here on; the line
    // is the signal scripts wait for.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{addr}").context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")?;
    drop(stdout);
    emulator::serve(listener, config, signals.recv())
        .await
        .context("the emulator server failed")
}

/// SIGINT and SIGTERM, registered up front. Registration (not the first poll) is what
/// replaces the default disposition, so it must happen in [`run`] before anything tells
/// the outside world we are up.
struct ShutdownSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(not(unix))]
    interrupt: tokio::signal::windows::CtrlC,
}

impl ShutdownSignals {
    fn register() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())
                    .context("cannot install the SIGINT handler")?,
                terminate: signal(SignalKind::terminate())
                    .context("cannot install the SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {
                interrupt: tokio::signal::windows::ctrl_c()
                    .context("cannot install the Ctrl-C handler")?,
            })
        }
    }

    /// Resolves on the first SIGINT or SIGTERM.
    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        self.interrupt.recv().await;
        tracing::info!("shutting down");
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, Command};

    use super::*;

    /// The lists' defaults are shown as the flag takes them, comma-separated, and match the
    /// emulator's own.
    #[test]
    fn the_model_lists_show_their_defaults_comma_separated() {
        let help = EmulatorArgs::augment_args(Command::new("emulator"))
            .render_help()
            .to_string();
        let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for list in [DEFAULT_MODELS, DEFAULT_STREAM_ONLY_MODELS] {
            assert!(
                flat.contains(&format!("[default: {}]", list.join(","))),
                "{help}"
            );
        }
        assert!(
            !flat.contains("[default: qwen-vl-plus qwen-vl-max"),
            "{help}"
        );
    }
}
