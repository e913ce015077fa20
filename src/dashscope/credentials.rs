//! Upload credentials for one account: rate limit, per-model policy cache, single-flight
//! refresh, and getPolicy retries.
//!
//! Owns every getPolicy request the program sends for one key. The documented limit is 100
//! QPS per account per model and "cannot be scaled out", so all of them go through one
//! [`Limiter`] (key = model; the account is implicit, one `Credentials` per key), which also
//! queues the callers of a model in arrival order.
//!
//! Deliberately not here: knowing why a policy went bad. The pipeline sees the 403 "Policy
//! expired" from OSS and calls [`Credentials::invalidate`] with the policy it used. Nor
//! stopping after a 401: a rejected key is run state, kept by the caller's stop switch,
//! which refuses every later request through the retry policy's watch (the pipeline's
//! `Stop`, set by its outage gate as the 401 arrives).
//!
//! # Concurrency
//! - `slots` (std `Mutex<HashMap>`): the current policy per model. Held only for a lookup or
//!   an assignment, never across an `.await`, so a cache hit costs one uncontended lock and
//!   an `Arc` clone: no limiter, no allocation.
//! - `Slot::refresh` (tokio `Mutex`, one per model): single-flight. A caller that finds the
//!   policy stale queues on it; the first one in fetches, the rest wake in FIFO order, see
//!   that a fetch finished while they waited (`generation` moved) and take its outcome,
//!   policy or error. This bounds getPolicy to one request in flight per model, and a
//!   stale-policy stampede of N callers to one fetch. If the fetching task is cancelled its
//!   guard drops without bumping `generation`, and the next waiter simply fetches itself:
//!   nobody waits for a result that will never come.
//! - With `reuse = false` many callers want a getPolicy slot at once: the limiter hands the
//!   slots out in arrival order, one waiter awake at a time (see `limit::local`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::client::Client;
use super::error::ApiError;
use super::policy::Policy;
use super::retry::{RetryPolicy, retry};
use crate::limit::{Cost, Limiter, LocalLimiter, Rate};

#[derive(Debug, Clone)]
pub struct CredentialOptions {
    /// Sustained getPolicy rate per model.
    pub qps: NonZeroU32,
    /// How many requests may go at once after a quiet spell.
    pub burst: NonZeroU32,
    /// Reuse a policy until it nearly expires (`false`: fetch one per call, still limited).
    pub reuse: bool,
    /// A policy is handed out only while more than this (at most a quarter of the
    /// lifetime) is left of its lifetime.
    pub safety_margin: Duration,
    pub retry: RetryPolicy,
}

impl Default for CredentialOptions {
    fn default() -> Self {
        CredentialOptions {
            // 80/s with a burst of 10 (a GCRA): in any 1 s window the sender emits at most
            // 10 + 80 = 90 requests, 10% under the documented 100 QPS. The headroom absorbs
            // network bunching (requests released 12.5 ms apart can arrive closer together)
            // and the server counting windows on its own clock. With policy reuse, a run
            // needs about one request per model per few minutes, so the rate only matters
            // for policy-less mode and refresh storms.
            qps: Self::DEFAULT_QPS,
            burst: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            reuse: true,
            // The reply we saw has a 300 s lifetime, so policies are reused for 240 s.
            // OSS checks expiry when the POST arrives, so the margin must cover the time
            // between `get` and the upload request reaching OSS: queueing for an upload
            // slot plus connection setup. A minute is generous; a late upload still gets a
            // 403 "Policy expired", which the pipeline handles with `invalidate`. For a
            // lifetime under four minutes the margin shrinks to a quarter of it
            // (`Policy::reusable_until`), so short-lived policies are still reused.
            safety_margin: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

impl CredentialOptions {
    /// See [`Default`]; `run --credential-qps` takes its default from here.
    pub const DEFAULT_QPS: NonZeroU32 = NonZeroU32::new(80).unwrap();
}

/// The rate for the options: `qps` per second sustained, `burst` at once.
pub(crate) fn rate(options: &CredentialOptions) -> Rate {
    Rate::per_second(f64::from(options.qps.get())).with_burst(options.burst)
}

/// Upload credentials of one account. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    options: CredentialOptions,
    limiter: Arc<dyn Limiter>,
    slots: Mutex<HashMap<String, Slot>>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct Slot {
    current: Option<Arc<Policy>>,
    /// Bumped each time a fetch finishes (success or failure), under the `slots` lock.
    generation: u64,
    /// The outcome of the last fetch if it failed: shared with the callers that waited for it.
    last_error: Option<ApiError>,
    refresh: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("client", &self.inner.client)
            .field("options", &self.inner.options)
            .field("fetches", &self.fetches())
            .finish()
    }
}

impl Credentials {
    pub fn new(client: Client, options: CredentialOptions) -> Credentials {
        Credentials::with_limiter(Arc::new(LocalLimiter::new()), client, options)
    }

    /// As [`Credentials::new`], with the getPolicy requests spaced by `limiter` (key: the
    /// model): one shared with other processes of the account (`--redis`).
    pub fn with_limiter(
        limiter: Arc<dyn Limiter>,
        client: Client,
        options: CredentialOptions,
    ) -> Credentials {
        Credentials {
            inner: Arc::new(Inner {
                limiter,
                client,
                options,
                slots: Mutex::new(HashMap::new()),
                fetches: AtomicU64::new(0),
            }),
        }
    }

    /// A policy for `model` with more than `safety_margin` of its lifetime left, fetched if
    /// need be (single-flight, rate-limited, retried per `options.retry`).
    pub async fn get(&self, model: &str) -> Result<Arc<Policy>, ApiError> {
        if !self.inner.options.reuse {
            return self.fetch(model).await.map(Arc::new);
        }
        let (refresh, seen) = {
            let mut slots = self.slots();
            if let Some(slot) = slots.get(model)
                && let Some(policy) = self.usable(slot)
            {
                return Ok(policy);
            }
            let slot = slots.entry(model.to_owned()).or_default();
            (slot.refresh.clone(), slot.generation)
        };

        let _refreshing = refresh.lock().await;
        {
            let slots = self.slots();
            if let Some(slot) = slots.get(model) {
                if let Some(policy) = self.usable(slot) {
                    return Ok(policy);
                }
                // A fetch finished while we queued: its outcome is ours too, policy or
                // error. The policy is taken even if it is already inside the margin (a
                // lifetime shorter than the margin): it is as fresh as any we could fetch,
                // and fetching again would serialise one request per caller. A caller that
                // arrives after the fetch finished starts a new attempt instead.
                if slot.generation != seen {
                    if let Some(err) = &slot.last_error {
                        return Err(err.clone());
                    }
                    if let Some(policy) = &slot.current {
                        return Ok(policy.clone());
                    }
                }
            }
        }

        let result = self.fetch(model).await.map(Arc::new);
        let mut slots = self.slots();
        let slot = slots.entry(model.to_owned()).or_default();
        slot.generation += 1;
        match &result {
            Ok(policy) => {
                slot.current = Some(policy.clone());
                slot.last_error = None;
            }
            Err(err) => slot.last_error = Some(err.clone()),
        }
        result
    }

    /// Drops `stale` if it is still the current policy for `model`. A burst of uploads that
    /// all failed on one expired policy thus causes one refresh: the first call drops it,
    /// the rest find a different (or no) current policy and leave it alone.
    pub fn invalidate(&self, model: &str, stale: &Arc<Policy>) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(model)
            && slot.current.as_ref().is_some_and(|p| Arc::ptr_eq(p, stale))
        {
            slot.current = None;
            tracing::debug!(model, request_id = %stale.request_id, "upload policy invalidated");
        }
    }

    /// getPolicy requests sent so far, retries included.
    pub fn fetches(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // No code panics while holding this lock; if one ever did, the map is still valid.
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn usable(&self, slot: &Slot) -> Option<Arc<Policy>> {
        let policy = slot.current.as_ref()?;
        (Instant::now() < policy.reusable_until(self.inner.options.safety_margin))
            .then(|| policy.clone())
    }

    /// getPolicy with retries; each attempt waits for the limiter right before it is sent.
    async fn fetch(&self, model: &str) -> Result<Policy, ApiError> {
        let rate = rate(&self.inner.options);
        let (result, attempts) = retry(
            &self.inner.options.retry,
            || async {
                let grant = self.inner.limiter.acquire(model, rate, Cost::REQUEST);
                // A shared limiter whose Redis was lost never grants (it fails closed); the
                // run's stop, passed on by the watch, ends the wait, so that the row is
                // refused at once rather than held until `--drain-timeout-s`.
                match &self.inner.options.retry.watch {
                    Some(watch) => tokio::select! {
                        () = grant => {}
                        refused = watch.refused() => return Err(refused),
                    },
                    None => grant.await,
                }
                self.inner.fetches.fetch_add(1, Ordering::Relaxed);
                self.inner.client.get_policy(model).await
            },
            |err, wait| tracing::debug!(model, %err, ?wait, "getPolicy failed; retrying"),
        )
        .await;
        match &result {
            Ok(policy) => {
                tracing::debug!(model, attempts, request_id = %policy.request_id, "upload policy fetched")
            }
            Err(err) => tracing::warn!(model, attempts, %err, "getPolicy failed"),
        }
        result
    }
}

#[cfg(test)]
mod tests;
