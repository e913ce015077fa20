//! Calls queued while a model's pace is low must go out at the new pace once it rises.
//!
//! A model's first 429 pauses it at a provisional pace of 1 call/s while the rest of the
//! first burst answers; one window later the pace is set from what got through. Every call
//! that queued during the pause must then go out at that pace, not at 1/s: a pacer that
//! swapped limiters left them on the old one, and the run's last calls trickled out one a
//! second.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use dashbatch::dashscope::{Api, ApiKey, Client, ClientConfig};
use dashbatch::pipeline;
use tokio_util::sync::CancellationToken;

/// Calls the test server refuses: the first ones of the model, answered at once, so that
/// they come back before any success and the provisional pace is the floor (1/s).
const REFUSED: u64 = 4;
const CONCURRENCY: usize = 48;
const ROWS: usize = 150;
/// A generous bound: the rows need about 4 s at the pace the first burst finds (44 got
/// through, doubling each second), while the calls stranded at 1/s (about `CONCURRENCY`
/// of them) would need at least 45 s.
const BOUND: Duration = Duration::from_secs(20);

/// A chat endpoint that refuses a model's first burst, then takes any rate. Not the
/// project's emulator: a few lines that show exactly the service this test needs.
async fn chat(State(calls): State<Arc<AtomicU64>>) -> Response {
    let n = calls.fetch_add(1, Ordering::SeqCst);
    if n < REFUSED {
        let body = r#"{"error":{"message":"Requests rate limit exceeded","type":"limit_requests","code":"limit_requests"},"request_id":"r"}"#;
        return (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    }
    // A model call's latency: the refusals above answer first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    axum::Json(serde_json::json!({
        "id": format!("chatcmpl-{n}"),
        "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    }))
    .into_response()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_during_the_first_pause_go_out_at_the_pace_found_after_it() {
    let calls = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/compatible-mode/v1/chat/completions", post(chat))
        .with_state(Arc::clone(&calls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut job = Job::new();
    for i in 0..ROWS {
        // Web URLs: no upload, every request is a model call.
        job.row(&format!(
            "r{i},qwen-vl-plus,https://example.com/img/{i}.png,Describe {i}"
        ));
    }
    let mut config = job.config(Api::Compatible, CONCURRENCY);
    config.retry = fast_retry(16);
    let client = Client::new(
        ApiKey::new("sk-test").unwrap(),
        ClientConfig {
            base_url: format!("http://{addr}"),
            ..ClientConfig::default()
        },
    )
    .unwrap();

    let started = Instant::now();
    let run = pipeline::run(&config, client, CancellationToken::new());
    let outcome = tokio::time::timeout(BOUND, run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{ROWS} rows not done in {BOUND:?} ({} calls made): calls queued at 1/s kept that pace",
                calls.load(Ordering::SeqCst)
            )
        })
        .unwrap();
    let summary = outcome.stats.summary_line();
    assert_eq!(outcome.stats.rows_ok, ROWS as u64, "{summary}");
    assert_eq!(outcome.stats.throttled_seen, REFUSED, "{summary}");
    // Since issue 11's tuning, 429s at no more calls than the slow start's rate are taken
    // for noise and set no pace at all (the model is then not listed): that also passes.
    let pace = outcome
        .stats
        .model_pace
        .get("qwen-vl-plus")
        .copied()
        .unwrap_or(f64::INFINITY);
    assert!(
        pace > 10.0,
        "the pace rose from 1/s: {pace} ({summary}, {:?})",
        started.elapsed()
    );
}
