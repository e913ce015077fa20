//! Slow start (issue 11) end to end: a model with no known limit ramps up under the
//! emulator's growth-rate limit (`--burst-floor 10 --burst-growth 2`) instead of opening
//! with C calls at once, in both APIs, and the growth 429s it meets are counted by kind.
//!
//! Bounds are counts with wide margins, never times. An unpaced start sends its C = 64 calls
//! in the first instant, of which the limit takes 10: over 50 are refused, and again in each
//! second the retries outgrow the one before. The ramp's gate follows the limit's own rule
//! with a margin for the jitter between send times and arrivals, so it meets at most a few
//! (none on a quiet machine).

mod common;

use common::*;
use dashbatch::dashscope::Api;
use dashbatch::emulator::{Burst, EmulatorConfig};
use dashbatch::pipeline::{self, Outcome};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "qwen-vl-plus";
/// About four seconds of ramp: 10, 20, 40, 80 calls.
const ROWS: usize = 150;
const CONCURRENCY: usize = 64;
/// A loaded test machine may delay a call past the gate's margin now and then; an unpaced
/// start is refused five times this in its first second alone.
const FEW: u64 = 10;

/// Runs [`ROWS`] rows under a growth limit of floor 10 and growth 2: the outcome, and the
/// growth 429s the emulator counted.
async fn run_under_a_growth_limit(api: Api, model_rps: Option<f64>) -> (Outcome, u64) {
    let em = start(EmulatorConfig {
        burst: Some(Burst {
            floor: 10,
            growth: 2.0,
        }),
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    for i in 0..ROWS {
        // Web URLs: no upload, so every call the emulator counts is a model call.
        job.row(&format!(
            "r{i},{MODEL},https://example.com/img/{i}.png,Describe {i}"
        ));
    }
    let mut config = job.config(api, CONCURRENCY);
    config.retry = fast_retry(16);
    config.model_rps = model_rps;
    let outcome = pipeline::run(&config, client(&em, "sk-ramp"), CancellationToken::new())
        .await
        .unwrap();
    let refused = stats(&em).await["chat_throttled_burst"]
        .as_u64()
        .unwrap_or(0);
    (outcome, refused)
}

async fn ramps_under_a_growth_limit(api: Api) {
    let (outcome, refused) = run_under_a_growth_limit(api, None).await;
    let summary = outcome.stats.summary_line();
    assert_eq!(outcome.stats.rows_ok, ROWS as u64, "{api:?}: {summary}");
    eprintln!("{api:?}: {refused} growth 429s; {summary}");
    assert!(
        refused <= FEW,
        "{api:?}: {refused} growth 429s for {ROWS} rows: {summary}"
    );
    // The client counted the same 429s, by kind, and none of another kind.
    assert_eq!(
        outcome.stats.throttled_by_kind.get("burst").copied(),
        (refused > 0).then_some(refused),
        "{api:?}: {summary}"
    );
    assert_eq!(
        outcome.stats.throttled_by_kind.keys().count(),
        usize::from(refused > 0),
        "{api:?}: {summary}"
    );
    // A growth 429 slows the ramp; it sets no request pace.
    assert_eq!(
        outcome.stats.model_pace.get(MODEL),
        None,
        "{api:?}: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_ramps_under_a_growth_limit_native() {
    ramps_under_a_growth_limit(Api::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_ramps_under_a_growth_limit_compatible() {
    ramps_under_a_growth_limit(Api::Compatible).await;
}

/// The bound above tells a ramp from a burst: the same rows with a known limit far above
/// the growth limit's floor (no slow start) open with C calls at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_slow_start_the_same_rows_meet_the_growth_limit() {
    let (_, refused) = run_under_a_growth_limit(Api::Native, Some(1000.0)).await;
    assert!(refused > FEW * 3, "{refused} growth 429s");
}
