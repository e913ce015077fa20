use super::*;
use crate::dashscope::{ApiKey, ClientConfig, ErrorKind};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
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
async fn a_short_lived_policy_is_still_reused_for_three_quarters_of_its_life() {
    // 30 s lifetime, 60 s margin: the margin is capped at 7.5 s, so callers that come one
    // after the other share the policy instead of spending a getPolicy call each.
    let (fake, base, _rx) = start("30", vec![], false).await;
    let creds = credentials(&base, true);
    let a = creds.get("m").await.unwrap();
    let b = creds.get("m").await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_policy_inside_the_margin_is_not_reused() {
    // A 1 s lifetime is inside its (capped) margin of 0.25 s only after 0.75 s, so use a
    // lifetime of 0: never handed out twice to callers that come one after the other.
    let (fake, base, _rx) = start("0", vec![], false).await;
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
async fn a_rejected_key_is_not_retried() {
    // (That it is not sent again is the run's stop switch: see tests/pipeline.rs.)
    let (fake, base, _rx) = start("300", vec![401], false).await;
    let creds = credentials(&base, true);
    let err = creds.get("m").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unauthorized);
    assert_eq!(fake.hits.load(Ordering::SeqCst), 1);
}

/// The default rate never lets more than burst + qps through in any 1 s window, per
/// model, and models do not share budgets. Driven by tokio's paused clock.
#[tokio::test(start_paused = true)]
async fn default_rate_stays_under_100_per_second_per_model() {
    let rate = rate(&CredentialOptions::default());
    let limiter = LocalLimiter::new();
    let t0 = tokio::time::Instant::now();
    // A greedy sender: asks again the moment it is let through, for 5 s.
    let mut sent_at = Vec::new();
    while t0.elapsed() < Duration::from_secs(5) {
        limiter.acquire("model-a", rate, Cost::REQUEST).await;
        sent_at.push(t0.elapsed());
    }
    let max_in_window = sent_at
        .iter()
        .map(|start| {
            sent_at
                .iter()
                .filter(|t| *t >= start && **t < *start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(max_in_window <= 90, "{max_in_window} in one second");
    // It is not needlessly slow either: the sustained rate is 80/s.
    assert!(sent_at.len() >= 5 * 80, "{}", sent_at.len());
    // Model b still has its whole burst: ten at once, then the eleventh waits.
    let t1 = tokio::time::Instant::now();
    for _ in 0..10 {
        limiter.acquire("model-b", rate, Cost::REQUEST).await;
    }
    assert_eq!(t1.elapsed(), Duration::ZERO);
    limiter.acquire("model-b", rate, Cost::REQUEST).await;
    assert!(t1.elapsed() > Duration::ZERO);
}

/// A limiter that never grants: a Redis limiter after Redis was lost (it fails closed).
struct NeverGrants;

impl Limiter for NeverGrants {
    fn acquire<'a>(
        &'a self,
        _: &'a str,
        _: crate::limit::Rate,
        _: Cost,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(std::future::pending())
    }
}

/// A watch that admits every attempt and refuses them all once `stop` is cancelled: the
/// run's stop, as the outage gate passes it on.
#[derive(Debug, Default)]
struct StopsOnCancel {
    stop: tokio_util::sync::CancellationToken,
}

impl crate::dashscope::retry::Watch for StopsOnCancel {
    fn admit(
        &self,
    ) -> futures::future::BoxFuture<'_, Result<crate::dashscope::retry::Ticket, ApiError>> {
        Box::pin(async { Ok(crate::dashscope::retry::Ticket::default()) })
    }

    fn answered(&self, _: crate::dashscope::retry::Ticket, _: Result<(), &ApiError>) -> bool {
        false
    }

    fn wake(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(std::future::pending())
    }

    fn refused(&self) -> futures::future::BoxFuture<'static, ApiError> {
        let stop = self.stop.clone();
        Box::pin(async move {
            stop.cancelled().await;
            ApiError::local(
                ErrorKind::Rejected,
                crate::failure::FailureCode::NotAttempted,
                "not attempted: Redis lost",
            )
        })
    }
}

/// A getPolicy waiting for a grant that will never come (Redis lost) ends as soon as the
/// run stops, with the refusal, instead of holding its row until `--drain-timeout-s`.
#[tokio::test]
async fn a_wait_for_a_grant_ends_when_the_run_stops() {
    let (fake, base, _rx) = start("300", vec![], false).await;
    let watch = Arc::new(StopsOnCancel::default());
    let stop = watch.stop.clone();
    let client = Client::new(
        ApiKey::new("sk-test").unwrap(),
        ClientConfig {
            base_url: base,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let creds = Credentials::with_limiter(
        Arc::new(NeverGrants),
        client,
        CredentialOptions {
            retry: RetryPolicy {
                watch: Some(watch),
                ..RetryPolicy::default()
            },
            ..CredentialOptions::default()
        },
    );
    let fetching = tokio::spawn(async move { creds.get("qwen-vl-plus").await });
    stop.cancel();
    // A hang guard, not a timing check: before the fix this never ended.
    let err = tokio::time::timeout(Duration::from_secs(30), fetching)
        .await
        .expect("the wait ends with the run's stop")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Rejected, "{err}");
    assert!(err.to_string().contains("not attempted"), "{err}");
    assert_eq!(
        fake.hits.load(Ordering::SeqCst),
        0,
        "nothing sent without a grant"
    );
}
