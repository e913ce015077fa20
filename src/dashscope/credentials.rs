//! Upload credentials for one account: rate limit, per-model policy cache, single-flight
//! refresh, and getPolicy retries.
//!
//! Owns every getPolicy request the program sends for one key. The documented limit is 100
//! QPS per account per model and "cannot be scaled out", so all of them go through one
//! keyed limiter (key = model; the account is implicit, one `Credentials` per key).
//!
//! Deliberately not here: knowing why a policy went bad. The pipeline sees the 403 "Policy
//! expired" from OSS and calls [`Credentials::invalidate`] with the policy it used.
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
//! - `Slot::pacer` (tokio `Mutex`, one per model): held only while awaiting the limiter.
//!   With `reuse = false` many callers want a token at once; governor's `until_key_ready`
//!   would wake them all at every free slot (a thundering herd, and no fairness). Queueing
//!   them on a FIFO mutex hands the tokens out in arrival order, one waiter awake at a time.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::client::Client;
use super::error::ApiError;
use super::policy::Policy;
use super::retry::{RetryPolicy, retry};

#[derive(Debug, Clone)]
pub struct CredentialOptions {
    /// Sustained getPolicy rate per model.
    pub qps: NonZeroU32,
    /// How many requests may go at once after a quiet spell.
    pub burst: NonZeroU32,
    /// Reuse a policy until it nearly expires (`false`: fetch one per call, still limited).
    pub reuse: bool,
    /// A policy is handed out only while more than this is left of its lifetime.
    pub safety_margin: Duration,
    pub retry: RetryPolicy,
}

impl Default for CredentialOptions {
    fn default() -> Self {
        CredentialOptions {
            // GCRA at 80/s with a burst of 10: in any 1 s window the sender emits at most
            // 10 + 80 = 90 requests, 10% under the documented 100 QPS. The headroom absorbs
            // network bunching (requests released 12.5 ms apart can arrive closer together)
            // and the server counting windows on its own clock. With policy reuse, a run
            // needs about one request per model per few minutes, so the rate only matters
            // for policy-less mode and refresh storms.
            qps: NonZeroU32::new(80).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            reuse: true,
            // The reply we saw has a 300 s lifetime, so policies are reused for 240 s.
            // OSS checks expiry when the POST arrives, so the margin must cover the time
            // between `get` and the upload request reaching OSS: queueing for an upload
            // slot plus connection setup. A minute is generous; a late upload still gets a
            // 403 "Policy expired", which the pipeline handles with `invalidate`.
            safety_margin: Duration::from_secs(60),
            retry: RetryPolicy::default(),
        }
    }
}

/// The quota for the options: `qps` per second sustained, `burst` at once.
pub(crate) fn quota(options: &CredentialOptions) -> Quota {
    Quota::per_second(options.qps).allow_burst(options.burst)
}

/// Upload credentials of one account. Cheap to clone.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    options: CredentialOptions,
    limiter: DefaultKeyedRateLimiter<String>,
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
    pacer: Arc<tokio::sync::Mutex<()>>,
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
        Credentials {
            inner: Arc::new(Inner {
                limiter: RateLimiter::keyed(quota(&options)),
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
        let pacer = self
            .slots()
            .entry(model.to_owned())
            .or_default()
            .pacer
            .clone();
        let key = model.to_owned();
        let (result, attempts) = retry(
            &self.inner.options.retry,
            || async {
                {
                    let _turn = pacer.lock().await;
                    self.inner.limiter.until_key_ready(&key).await;
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
mod tests {
    use super::*;
    use crate::dashscope::{ApiKey, ClientConfig, ErrorKind};
    use axum::Router;
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use governor::clock::FakeRelativeClock;
    use governor::middleware::NoOpMiddleware;
    use governor::state::keyed::DefaultKeyedStateStore;
    use std::sync::atomic::AtomicBool;
    use tokio::sync::{Notify, mpsc};

    /// A test double of getPolicy that counts requests. Not the project's emulator.
    #[derive(Clone)]
    struct Fake {
        hits: Arc<AtomicU64>,
        /// Status codes to answer with before answering 200.
        failures: Arc<Mutex<Vec<u16>>>,
        expire: &'static str,
        /// When set, the first request is held until `release` is notified.
        hold_first: Arc<AtomicBool>,
        arrived: mpsc::UnboundedSender<()>,
        release: Arc<Notify>,
    }

    async fn handler(
        State(fake): State<Fake>,
        headers: axum::http::HeaderMap,
        Query(q): Query<HashMap<String, String>>,
    ) -> Response {
        let n = fake.hits.fetch_add(1, Ordering::SeqCst);
        let _ = fake.arrived.send(());
        if n == 0 && fake.hold_first.load(Ordering::SeqCst) {
            fake.release.notified().await;
        }
        if q.get("action").map(String::as_str) != Some("getPolicy") {
            return StatusCode::BAD_REQUEST.into_response();
        }
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sk-test") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        let failure = {
            let mut f = fake.failures.lock().unwrap();
            if f.is_empty() {
                None
            } else {
                Some(f.remove(0))
            }
        };
        if let Some(status) = failure {
            let body = r#"{"code":"Oops","message":"scripted failure","request_id":"f"}"#;
            return (StatusCode::from_u16(status).unwrap(), body).into_response();
        }
        let model = q.get("model").cloned().unwrap_or_default();
        let body = serde_json::json!({"request_id": format!("req-{n}"), "data": {
            "policy": "cG9saWN5", "signature": "c2ln", "upload_dir": format!("dashscope-instant/t/{model}/{n}"),
            "upload_host": "http://127.0.0.1:9", "expire_in_seconds": fake.expire, "max_file_size_mb": 1024,
            "capacity_limit_mb": 999999999, "oss_access_key_id": "LTAI", "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true"}});
        axum::Json(body).into_response()
    }

    async fn start(
        expire: &'static str,
        failures: Vec<u16>,
        hold_first: bool,
    ) -> (Fake, String, mpsc::UnboundedReceiver<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let fake = Fake {
            hits: Arc::new(AtomicU64::new(0)),
            failures: Arc::new(Mutex::new(failures)),
            expire,
            hold_first: Arc::new(AtomicBool::new(hold_first)),
            arrived: tx,
            release: Arc::new(Notify::new()),
        };
        let app = Router::new()
            .route("/api/v1/uploads", get(handler))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (fake, format!("http://{addr}/api/v1"), rx)
    }

    fn credentials(base: &str, reuse: bool) -> Credentials {
        let client = Client::new(
            ApiKey::new("sk-test").unwrap(),
            ClientConfig {
                base_url: base.to_owned(),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        Credentials::new(
            client,
            CredentialOptions {
                reuse,
                // Fast retries: these tests are about counting, not waiting.
                retry: RetryPolicy {
                    base: Duration::from_millis(1),
                    cap: Duration::from_millis(2),
                    ..RetryPolicy::default()
                },
                ..CredentialOptions::default()
            },
        )
    }

    #[tokio::test]
    async fn reuses_the_policy_and_invalidates_only_the_current_one() {
        let (fake, base, _rx) = start("300", vec![], false).await;
        let creds = credentials(&base, true);
        let p1 = creds.get("qwen-vl-plus").await.unwrap();
        let again = creds.get("qwen-vl-plus").await.unwrap();
        assert!(Arc::ptr_eq(&p1, &again));
        assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
        assert_eq!(p1.expire_in_seconds, 300);

        // Another model has its own policy.
        let other = creds.get("qwen-vl-max").await.unwrap();
        assert!(other.upload_dir.contains("qwen-vl-max"));
        assert_eq!(fake.hits.load(Ordering::SeqCst), 2);

        creds.invalidate("qwen-vl-plus", &p1);
        let p2 = creds.get("qwen-vl-plus").await.unwrap();
        assert!(!Arc::ptr_eq(&p1, &p2));
        assert_eq!(fake.hits.load(Ordering::SeqCst), 3);

        // A late failure report about p1 must not throw away p2.
        creds.invalidate("qwen-vl-plus", &p1);
        let p3 = creds.get("qwen-vl-plus").await.unwrap();
        assert!(Arc::ptr_eq(&p2, &p3));
        assert_eq!(creds.fetches(), 3);
        assert_eq!(fake.hits.load(Ordering::SeqCst), 3);
        // The other model was untouched throughout.
        assert!(Arc::ptr_eq(
            &other,
            &creds.get("qwen-vl-max").await.unwrap()
        ));
    }

    #[tokio::test]
    async fn a_policy_inside_the_margin_is_not_reused() {
        // 30 s lifetime, 60 s margin: never handed out twice to callers that come one
        // after the other.
        let (fake, base, _rx) = start("30", vec![], false).await;
        let creds = credentials(&base, true);
        let a = creds.get("m").await.unwrap();
        let b = creds.get("m").await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(fake.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn reuse_false_fetches_every_time() {
        let (fake, base, _rx) = start("300", vec![], false).await;
        let creds = credentials(&base, false);
        for _ in 0..5 {
            creds.get("m").await.unwrap();
        }
        assert_eq!(fake.hits.load(Ordering::SeqCst), 5);
        assert_eq!(creds.fetches(), 5);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_share_one_fetch() {
        let (fake, base, mut arrived) = start("300", vec![], true).await;
        let creds = credentials(&base, true);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let creds = creds.clone();
                tokio::spawn(async move { creds.get("m").await })
            })
            .collect();
        // The first request is at the server and held there. Give the other tasks every
        // chance to send theirs (they must not); yields, not sleeps: nothing is awaited for
        // correctness, a correct implementation passes however this interleaves.
        arrived.recv().await.unwrap();
        for _ in 0..200 {
            tokio::task::yield_now().await;
        }
        fake.release.notify_one();
        let mut policies = Vec::new();
        for t in tasks {
            policies.push(t.await.unwrap().unwrap());
        }
        assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
        assert!(policies.iter().all(|p| Arc::ptr_eq(p, &policies[0])));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_refresh_does_not_strand_its_waiters() {
        let (fake, base, mut arrived) = start("300", vec![], true).await;
        let creds = credentials(&base, true);
        let first = tokio::spawn({
            let creds = creds.clone();
            async move { creds.get("m").await }
        });
        // The first fetch is at the server and will never be answered.
        arrived.recv().await.unwrap();
        let second = tokio::spawn({
            let creds = creds.clone();
            async move { creds.get("m").await }
        });
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        // The waiter (queued or not yet) makes its own request and gets a policy.
        let policy = second.await.unwrap().unwrap();
        assert_eq!(policy.request_id, "req-1");
        assert_eq!(fake.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn retries_retryable_errors_and_counts_every_request() {
        let (fake, base, _rx) = start("300", vec![503, 429, 500], false).await;
        let creds = credentials(&base, true);
        let policy = creds.get("m").await.unwrap();
        assert_eq!(policy.request_id, "req-3");
        assert_eq!(fake.hits.load(Ordering::SeqCst), 4);
        assert_eq!(creds.fetches(), 4);
    }

    #[tokio::test]
    async fn does_not_retry_unauthorized_and_tries_again_on_the_next_call() {
        let (fake, base, _rx) = start("300", vec![401], false).await;
        let creds = credentials(&base, true);
        let err = creds.get("m").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unauthorized);
        assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
        // A later caller is not served the old error: it makes a new attempt.
        assert!(creds.get("m").await.is_ok());
        assert_eq!(fake.hits.load(Ordering::SeqCst), 2);
    }

    /// The default quota never lets more than burst + qps through in any 1 s window, per
    /// model, and models do not share tokens. Driven by governor's fake clock.
    #[test]
    fn default_quota_stays_under_100_per_second_per_model() {
        let options = CredentialOptions::default();
        let clock = FakeRelativeClock::default();
        let limiter: RateLimiter<
            String,
            DefaultKeyedStateStore<String>,
            FakeRelativeClock,
            NoOpMiddleware<governor::nanos::Nanos>,
        > = RateLimiter::new(
            quota(&options),
            DefaultKeyedStateStore::default(),
            clock.clone(),
        );
        let (a, b) = ("model-a".to_owned(), "model-b".to_owned());
        // Greedy sender: tries 10 times per millisecond for 5 s.
        let mut sent_at = Vec::new();
        for ms in 0..5000u64 {
            for _ in 0..10 {
                if limiter.check_key(&a).is_ok() {
                    sent_at.push(ms);
                }
            }
            clock.advance(Duration::from_millis(1));
        }
        let max_in_window = (0..5000u64)
            .map(|start| {
                sent_at
                    .iter()
                    .filter(|&&t| t >= start && t < start + 1000)
                    .count()
            })
            .max()
            .unwrap();
        assert!(max_in_window <= 90, "{max_in_window} in one second");
        // It is not needlessly slow either: the sustained rate is 80/s.
        assert!(sent_at.len() >= 5 * 80, "{}", sent_at.len());
        // Model b still has its whole burst.
        let burst_b = (0..20).filter(|_| limiter.check_key(&b).is_ok()).count();
        assert_eq!(burst_b, 10);
    }
}
