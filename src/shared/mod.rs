//! What several dashbatch processes share through Redis (`--redis`): the connection, the
//! names of the keys, and the bounded wait for Redis that every shared operation goes
//! through.
//!
//! Owns: connecting ([`Shared::connect`], bounded, refused at the start with the URL
//! masked), the redis crate's tokio `ConnectionManager` (it reconnects by itself after an
//! outage), the key prefix `dashbatch:v1:<account fingerprint>` (a version, so that a
//! later layout never reads an older one's keys, and the key's fingerprint, never the key),
//! and [`Shared::call`], which retries an operation while Redis is unreachable for at most
//! `--redis-timeout-s` and then declares Redis lost.
//!
//! Deliberately not here: what is shared. The limiter (`limit::redis`) is one user; the
//! shared upload cache ([`uploads`]) is another, built the same way: its own kind of key
//! under [`Shared::key`], every command through [`Shared::call`].
//!
//! # When Redis fails
//! Unreachable at the start: the run does not start (exit 2), before any request. Mid-run,
//! an operation waits for Redis for at most `--redis-timeout-s`, counted from the first
//! failure of the outage (one clock for all callers, so a long queue does not stretch it).
//! Past that, Redis is *lost*: every later call fails at once, and the hook set with
//! [`Shared::on_lost`] (the pipeline's stop switch) ends the run like an interrupt.
//! Nothing falls back to local state: see `limit::redis` for why.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::time::Instant;

pub mod pace;
mod ramp;
mod uploads;
mod url;

pub use pace::{PACE_SCRIPT, SharedPace};
pub use ramp::{RAMP_SCRIPT, RampRule, RampTurn};
pub use uploads::{Claim, LOCK_TTL, Lock, SharedUploads};
pub use url::RedisUrl;

/// The layout of every key under the prefix. Bumped when a key's meaning changes, so that
/// processes of two versions on one Redis never read each other's state.
const LAYOUT: &str = "v1";

/// The longest a single command may take before it counts as a failure (and is tried again
/// while the outage allows). Redis answers in well under a millisecond; a second means it
/// is gone or stalled.
const ATTEMPT: Duration = Duration::from_secs(1);

/// `--redis` and `--redis-timeout-s`, as the run's configuration holds them.
#[derive(Debug, Clone)]
pub struct SharedOptions {
    pub url: RedisUrl,
    /// How long an operation may wait for an unreachable Redis, and how long connecting at
    /// the start may take.
    pub timeout: Duration,
}

/// Redis could not be reached at the start.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot reach Redis at {url} ({cause}); start it or fix --redis (or DASHBATCH_REDIS_URL, \
     or the job file's `redis`), or run without --redis to pace this process alone"
)]
pub struct ConnectError {
    url: RedisUrl,
    cause: String,
}

/// Redis stayed unreachable past `--redis-timeout-s`: the message says so, naming the URL.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Lost(pub String);

/// A handle on the Redis every process of one account shares. Cheap to clone.
#[derive(Clone)]
pub struct Shared {
    inner: Arc<Inner>,
}

type LostHook = Box<dyn Fn(&Lost) + Send + Sync>;

struct Inner {
    /// Multiplexed: one connection carries every caller's commands, and reconnects in the
    /// background after a failure.
    manager: ConnectionManager,
    prefix: String,
    url: RedisUrl,
    timeout: Duration,
    /// When the current outage began; `None` while Redis answers. Locked only to read or
    /// set it, never across an await.
    down_since: Mutex<Option<Instant>>,
    /// Set once, when an outage outlasts the timeout: from then on every call fails.
    lost: OnceLock<Lost>,
    /// Told once, when Redis is lost.
    on_lost: Mutex<Option<LostHook>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.inner.url)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

impl Shared {
    /// Connects to `options.url` for the account whose key has `fingerprint`, within
    /// `options.timeout`, and checks that Redis answers (PING).
    pub async fn connect(
        options: &SharedOptions,
        fingerprint: &str,
    ) -> Result<Shared, ConnectError> {
        let failed = |cause: String| ConnectError {
            url: options.url.clone(),
            cause,
        };
        let client =
            redis::Client::open(options.url.secret()).map_err(|e| failed(e.to_string()))?;
        let attempt = ATTEMPT.min(options.timeout);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(attempt))
            .set_response_timeout(Some(attempt))
            // Reconnecting is bounded by `call`'s clock, not by the manager's own count: a
            // few quick tries per command, and the next command tries again.
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let connect = async {
            let mut manager = ConnectionManager::new_with_config(client, config).await?;
            redis::cmd("PING")
                .query_async::<()>(&mut manager)
                .await
                .map(|()| manager)
        };
        let manager = match tokio::time::timeout(options.timeout, connect).await {
            Ok(Ok(manager)) => manager,
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => {
                return Err(failed(format!(
                    "no answer within {}s, --redis-timeout-s",
                    options.timeout.as_secs()
                )));
            }
        };
        Ok(Shared {
            inner: Arc::new(Inner {
                manager,
                prefix: format!("dashbatch:{LAYOUT}:{fingerprint}"),
                url: options.url.clone(),
                timeout: options.timeout,
                down_since: Mutex::new(None),
                lost: OnceLock::new(),
                on_lost: Mutex::new(None),
            }),
        })
    }

    /// The key of `name` (a model) among the keys of `kind` (what is stored:
    /// `credentials`, `pace`, …): `dashbatch:v1:<fingerprint>:<kind>:<name>`. The name goes
    /// last, so that any character in it is safe.
    pub fn key(&self, kind: &str, name: &str) -> String {
        format!("{}:{kind}:{name}", self.inner.prefix)
    }

    /// `dashbatch:v1:<account fingerprint>`, the start of every key of this account.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The URL, its password masked.
    pub fn url(&self) -> &RedisUrl {
        &self.inner.url
    }

    /// Sets what to do once Redis is lost (the pipeline stops the run). Replaces any earlier
    /// hook; called at most once per loss.
    pub fn on_lost(&self, hook: impl Fn(&Lost) + Send + Sync + 'static) {
        *lock(&self.inner.on_lost) = Some(Box::new(hook));
    }

    /// Runs `op` on the connection until it succeeds, waiting for Redis while it fails, for
    /// at most the timeout counted from the outage's first failure. Past that, or once Redis
    /// was lost, returns [`Lost`].
    ///
    /// `op` must be safe to run twice: a command whose answer was lost may have run.
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T, Lost>
    where
        F: FnMut(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Some(lost) = self.inner.lost.get() {
                return Err(lost.clone());
            }
            let attempt = ATTEMPT.min(self.inner.timeout);
            let err = match tokio::time::timeout(attempt, op(self.inner.manager.clone())).await {
                Ok(Ok(value)) => {
                    self.answered();
                    return Ok(value);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {}ms", attempt.as_millis()),
            };
            let deadline = self.failed(&err);
            let now = Instant::now();
            if now >= deadline {
                return Err(self.lose(&err));
            }
            tokio::time::sleep_until(deadline.min(now + backoff)).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    fn answered(&self) {
        if lock(&self.inner.down_since).take().is_some() {
            tracing::warn!("Redis at {} answers again; resuming", self.inner.url);
        }
    }

    /// Notes a failure; returns when the outage it belongs to runs out.
    fn failed(&self, err: &str) -> Instant {
        let mut since = lock(&self.inner.down_since);
        let began = *since.get_or_insert_with(|| {
            tracing::warn!(
                "Redis at {} does not answer ({err}); calls wait for it (the run stops if it \
                 lasts {}s, --redis-timeout-s)",
                self.inner.url,
                self.inner.timeout.as_secs()
            );
            Instant::now()
        });
        began + self.inner.timeout
    }

    fn lose(&self, err: &str) -> Lost {
        let lost = Lost(format!(
            "Redis at {} did not answer for {}s (--redis-timeout-s; last: {err}); no call goes \
             without its grant, so the run stopped. Start Redis again (or fix --redis), then \
             run again: the rows not done are left for the next run",
            self.inner.url,
            self.inner.timeout.as_secs()
        ));
        if self.inner.lost.set(lost.clone()).is_ok()
            && let Some(hook) = lock(&self.inner.on_lost).as_ref()
        {
            hook(&lost);
        }
        self.inner.lost.get().cloned().unwrap_or(lost)
    }
}

/// Nothing panics while holding these locks; if something did, the value is still valid.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
