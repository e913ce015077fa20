//! Counters behind `GET /__emulator/stats`.
//!
//! Error maps count every error answer by its code, injected faults included
//! (`faults_injected` tells how many were injected).
//!
//! `chat_calls` counts answers given in full (a stream only when it ended with its final
//! chunk). The `chat_throttled_*` and `refused_*` counters count model calls by the kind of
//! refusal, mid-stream ones included; `refused_arrears` counts getPolicy refusals too.
//!
//! Plain atomics for the hot counters; the per-code error maps sit behind a short mutex
//! because errors are the rare path and the set of codes is small.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

#[derive(Debug, Default)]
pub struct Stats {
    pub credential_calls: AtomicU64,
    pub credential_throttled: AtomicU64,
    pub uploads: AtomicU64,
    pub upload_bytes: AtomicU64,
    pub chat_calls: AtomicU64,
    pub faults_injected: AtomicU64,
    /// Streams opened (answered 200 as `text/event-stream`), however they ended.
    pub streams: AtomicU64,
    refused: [AtomicU64; Refused::ALL.len()],
    upload_errors: Mutex<BTreeMap<String, u64>>,
    chat_errors: Mutex<BTreeMap<String, u64>>,
}

/// The kinds of model-call refusal counted apart from the per-code error maps, so a test
/// or a harness can tell throttles of each kind and final refusals at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    RateLimited,
    Burst,
    Tokens,
    Arrears,
    Denied,
    NotFound,
    Moderation,
    StreamOnly,
}

impl Refused {
    pub const ALL: [Self; 8] = [
        Self::RateLimited,
        Self::Burst,
        Self::Tokens,
        Self::Arrears,
        Self::Denied,
        Self::NotFound,
        Self::Moderation,
        Self::StreamOnly,
    ];

    /// The counter's name in `/__emulator/stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "chat_throttled_rate",
            Self::Burst => "chat_throttled_burst",
            Self::Tokens => "chat_throttled_tokens",
            Self::Arrears => "refused_arrears",
            Self::Denied => "refused_denied",
            Self::NotFound => "refused_not_found",
            Self::Moderation => "refused_moderation",
            Self::StreamOnly => "refused_stream_only",
        }
    }
}

pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn bump_map(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut map = map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

fn copy_map(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    map.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

impl Stats {
    pub fn upload_error(&self, code: &str) {
        bump_map(&self.upload_errors, code);
    }

    pub fn chat_error(&self, code: &str) {
        bump_map(&self.chat_errors, code);
    }

    pub fn chat_ok(&self) {
        bump(&self.chat_calls);
    }

    pub fn refused(&self, kind: Refused) {
        bump(&self.refused[kind as usize]);
    }

    pub fn stream_opened(&self) {
        bump(&self.streams);
    }

    /// The flat JSON document of the stats endpoint. `credential_max_in_window` lives in the
    /// credential window, so the caller passes it in.
    pub fn snapshot(&self, credential_max_in_window: u64) -> Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut snapshot = json!({
            "credential_calls": load(&self.credential_calls),
            "credential_throttled": load(&self.credential_throttled),
            "credential_max_in_window": credential_max_in_window,
            "uploads": load(&self.uploads),
            "upload_bytes": load(&self.upload_bytes),
            "upload_errors": copy_map(&self.upload_errors),
            "chat_calls": load(&self.chat_calls),
            "chat_errors": copy_map(&self.chat_errors),
            "faults_injected": load(&self.faults_injected),
            "streams": load(&self.streams),
        });
        for kind in Refused::ALL {
            snapshot[kind.as_str()] = json!(load(&self.refused[kind as usize]));
        }
        snapshot
    }
}
