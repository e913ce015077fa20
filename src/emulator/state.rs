//! The emulator's knobs ([`EmulatorConfig`]) and the state shared by all handlers.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::billing::Billing;
use super::clock::Clock;
use super::errors::BillingStop;
use super::faults::Faults;
pub use super::limits::Burst;
use super::limits::Limits;
use super::stats::Stats;
use super::store::{Grants, Objects};
use super::window::SlidingWindow;

/// Models served when none are configured: vision models, Omni (audio) models, and a
/// thinking vision model (QVQ).
pub const DEFAULT_MODELS: &[&str] = &[
    "qwen-vl-plus",
    "qwen-vl-max",
    "qwen-omni-turbo",
    "qwen3-omni-flash",
    "qvq-max",
    "qwen2.5-vl-72b-instruct",
];

/// Models that answer only as a stream (protocol notes §5: the Omni and QVQ families).
pub const DEFAULT_STREAM_ONLY_MODELS: &[&str] = &["qwen-omni-turbo", "qwen3-omni-flash", "qvq-max"];

/// Everything that can be tuned. [`Default`] is the documented behaviour with zero latency
/// and no faults.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The base URL clients reach this emulator at; returned as `upload_host`. `None`: the
    /// listener's address (filled by [`super::serve`]), else the request's `Host`.
    pub public_base_url: Option<String>,
    /// Models that exist. Others get 400 on getPolicy and 404 on model calls.
    pub models: Vec<String>,
    /// Models refused (400) without a stream.
    pub stream_only_models: Vec<String>,
    /// Models every account is refused (403 `Model.AccessDenied`) on model calls.
    pub denied_models: Vec<String>,
    /// `max_file_size_mb` (and the policy's content-length-range) for models not overridden.
    pub max_file_size_mb: u64,
    /// Per-model overrides of `max_file_size_mb` ("each model enforces its own limit").
    pub max_file_size_mb_per_model: HashMap<String, u64>,
    /// Daily upload capacity per account, in MB (the documentation's sample: 999999999).
    pub capacity_limit_mb: u64,
    /// Lifetime of an upload credential (`expire_in_seconds`).
    pub policy_ttl_s: u64,
    /// getPolicy requests allowed per account per model in any one-second window.
    pub credential_qps: u32,
    /// Model calls allowed per account per model in any one-second window; `None` = no limit.
    pub model_rps: Option<u32>,
    /// The growth-rate limit per account per model; `None` = none.
    pub burst: Option<Burst>,
    /// Tokens per minute per account per model, also enforced per second as TPM/60.
    pub model_tpm: Option<u64>,
    /// An account falls into arrears after this many model calls; `None` = never by count
    /// (the control endpoint can still put one there).
    pub arrears_after: Option<u64>,
    /// What an account in arrears is refused with.
    pub arrears_code: BillingStop,
    pub credential_latency: Duration,
    pub upload_latency: Duration,
    pub chat_latency: Duration,
    /// A uniformly random extra delay in `[0, jitter]` added to each of the three latencies.
    pub latency_jitter: Duration,
    /// Probability (0..=1) that a request meets an injected fault.
    pub fault_rate: f64,
    /// Seed of the fault sequence: the same seed gives the same mix in the same order.
    pub fault_seed: u64,
    /// How long a "slow response" fault stalls before answering normally.
    pub fault_slow: Duration,
    /// Reads uploads no faster than this many megabits per second; `None` = unthrottled.
    pub upload_bandwidth_mbps: Option<f64>,
    /// The upload host's access key, as returned in `oss_access_key_id`.
    pub oss_access_key_id: String,
    /// Its secret, which signs policies. Tests may sign their own policies with it.
    pub oss_access_key_secret: String,
    /// The bucket a policy's `{"bucket": ..}` condition names.
    pub bucket: String,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            public_base_url: None,
            models: DEFAULT_MODELS.iter().map(|m| m.to_string()).collect(),
            stream_only_models: DEFAULT_STREAM_ONLY_MODELS
                .iter()
                .map(|m| m.to_string())
                .collect(),
            denied_models: Vec::new(),
            max_file_size_mb: 1024,
            max_file_size_mb_per_model: HashMap::new(),
            capacity_limit_mb: 999_999_999,
            policy_ttl_s: 300,
            credential_qps: 100,
            model_rps: None,
            burst: None,
            model_tpm: None,
            arrears_after: None,
            arrears_code: BillingStop::Arrearage,
            credential_latency: Duration::ZERO,
            upload_latency: Duration::ZERO,
            chat_latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            fault_rate: 0.0,
            fault_seed: 0,
            fault_slow: Duration::from_secs(2),
            upload_bandwidth_mbps: None,
            oss_access_key_id: "LTAI5tEmulatorAccessKey".to_owned(),
            oss_access_key_secret: "dashbatch-emulator-secret".to_owned(),
            bucket: "dashscope-file-mgr".to_owned(),
        }
    }
}

impl EmulatorConfig {
    /// The index of `model` in the model list, which is what objects and grants store.
    pub fn model_index(&self, model: &str) -> Option<u16> {
        self.models
            .iter()
            .position(|m| m == model)
            .and_then(|i| u16::try_from(i).ok())
    }

    /// The knobs as `GET /__emulator/config` shows them: named and scaled like the CLI's
    /// flags (durations in milliseconds), so a test or a tool can check what is in effect.
    /// The access key secret is left out.
    pub fn describe(&self) -> Value {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        json!({
            "public_url": self.public_base_url,
            "models": self.models,
            "max_file_size_mb": self.max_file_size_mb,
            "max_file_size_mb_per_model": self.max_file_size_mb_per_model,
            "capacity_limit_mb": self.capacity_limit_mb,
            "policy_ttl_s": self.policy_ttl_s,
            "credential_qps": self.credential_qps,
            "model_rps": self.model_rps,
            "stream_only_models": self.stream_only_models,
            "denied_models": self.denied_models,
            "burst_floor": self.burst.map(|b| b.floor),
            "burst_growth": self.burst.map(|b| b.growth),
            "model_tpm": self.model_tpm,
            "arrears_after": self.arrears_after,
            "arrears_code": self.arrears_code.as_str(),
            "credential_latency_ms": ms(self.credential_latency),
            "upload_latency_ms": ms(self.upload_latency),
            "chat_latency_ms": ms(self.chat_latency),
            "latency_jitter_ms": ms(self.latency_jitter),
            "fault_rate": self.fault_rate,
            "fault_seed": self.fault_seed,
            "fault_slow_ms": ms(self.fault_slow),
            "upload_bandwidth_mbps": self.upload_bandwidth_mbps,
            "oss_access_key_id": self.oss_access_key_id,
            "bucket": self.bucket,
        })
    }

    pub fn max_file_size_mb_for(&self, model: &str) -> u64 {
        self.max_file_size_mb_per_model
            .get(model)
            .copied()
            .unwrap_or(self.max_file_size_mb)
    }
}

pub struct State {
    pub config: EmulatorConfig,
    pub clock: Clock,
    pub stats: Stats,
    pub credential_window: SlidingWindow,
    pub model_window: SlidingWindow,
    pub limits: Limits,
    pub billing: Billing,
    pub grants: Grants,
    pub objects: Objects,
    pub faults: Faults,
}

impl State {
    pub fn new(config: EmulatorConfig) -> Self {
        Self {
            clock: Clock::default(),
            stats: Stats::default(),
            credential_window: SlidingWindow::new(Some(config.credential_qps)),
            model_window: SlidingWindow::new(config.model_rps),
            limits: Limits::new(config.burst, config.model_tpm),
            billing: Billing::new(config.arrears_after, config.arrears_code),
            grants: Grants::default(),
            objects: Objects::default(),
            faults: Faults::new(config.fault_rate, config.fault_seed),
            config,
        }
    }

    /// A fresh request id in DashScope's format (a UUID).
    pub fn request_id() -> uuid::Uuid {
        uuid::Uuid::new_v4()
    }
}
