//! Token pacing (issue 11). Under the emulator's token limit (counted per second as TPM/60
//! and per minute, as the service does), the client paces each model's tokens, learnt from
//! the usage of its answers, instead of meeting the limit with 429s: from `--model-tpm` when
//! it is given, and from the first token-rate 429 (`Throttling.AllocationQuota`, compatible
//! `insufficient_quota`) when it is not.
//!
//! Bounds are counts with wide margins, never times: the emulator's own count of calls it
//! refused for tokens against the calls made. Paced, a few percent are refused (the first
//! 429 that finds the limit, and a probe past it every few seconds); unpaced, the slow
//! start doubles past the limit and most calls of each second after it are refused.

mod common;

use common::*;
use dashbatch::dashscope::Api;
use dashbatch::emulator::EmulatorConfig;
use dashbatch::pipeline;
use tokio_util::sync::CancellationToken;

/// Calls a second the token limit is set to allow.
const CALLS_PER_S: u64 = 19;
const ROWS: usize = 240;
const MODEL: &str = "qwen-vl-plus";

fn job(rows: usize) -> Job {
    let mut job = Job::new();
    let file = job.file("m/a.png", &bytes(7, 256));
    for i in 0..rows {
        job.row(&format!("r{i},{MODEL},{file},Describe {i:03}"));
    }
    job
}

/// The tokens one row of [`job`] uses in `api`, from one call on an unlimited emulator.
async fn tokens_per_row(api: Api) -> u64 {
    let probe = start(EmulatorConfig::default()).await;
    let one = job(1);
    pipeline::run(
        &one.config(api, 1),
        client(&probe, "sk-acme"),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    results(&one.output())[0]["total_tokens"].parse().unwrap()
}

/// What a run under a token limit of [`CALLS_PER_S`] rows a second did.
struct Paced {
    /// Calls the emulator refused for tokens, and all the calls it answered.
    refused: u64,
    calls: u64,
    /// The token limit a second, and the token pace the run ended at (if paced).
    limit: f64,
    pace: Option<f64>,
    summary: String,
}

async fn run_under_token_limit(api: Api, tell_the_client: bool) -> Paced {
    let tokens = tokens_per_row(api).await;
    let tpm = tokens * CALLS_PER_S * 60;
    let em = start(EmulatorConfig {
        model_tpm: Some(tpm),
        ..EmulatorConfig::default()
    })
    .await;
    let job = job(ROWS);
    let mut config = job.config(api, 64);
    config.model_tpm = tell_the_client.then_some(tpm);
    config.retry = fast_retry(16);
    let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    let summary = outcome.stats.summary_line();
    assert_eq!(outcome.stats.rows_ok, ROWS as u64, "{summary}");
    let stats = stats(&em).await;
    let refused = stats["chat_throttled_tokens"].as_u64().unwrap_or(0);
    let calls = stats["chat_calls"].as_u64().unwrap() + refused;
    // The client counted the same 429s, by kind.
    assert_eq!(
        outcome.stats.throttled_by_kind.get("tokens").copied(),
        (refused > 0).then_some(refused),
        "{summary}"
    );
    eprintln!(
        "{api:?}, told {tell_the_client}: {tokens} tokens a call, TPM {tpm}: {refused} token \
         429s of {calls} calls ({:.1}%); {summary}",
        100.0 * refused as f64 / calls as f64
    );
    Paced {
        refused,
        calls,
        limit: tpm as f64 / 60.0,
        pace: outcome.stats.model_token_pace.get(MODEL).copied(),
        summary,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_token_limit_is_paced_not_met_with_429s() {
    for api in [Api::Native, Api::Compatible] {
        let run = run_under_token_limit(api, true).await;
        let Paced { refused, calls, .. } = run;
        assert!(
            refused * 20 <= calls,
            "{api:?}: {refused} of {calls} calls refused, over 5%: {}",
            run.summary
        );
        let pace = run
            .pace
            .expect("a --model-tpm model's token pace is reported");
        assert!(
            pace <= run.limit,
            "{api:?}: paced at {pace}, over {}",
            run.limit
        );
    }
}

/// No `--model-tpm`: the token limit is learnt from the first token 429, and the model's
/// tokens are paced from then on. Without that, the ramp doubles past the limit (there
/// are no request-rate 429s to stop it) and most calls are refused; with it, a few are.
async fn an_unknown_token_limit_is_learnt_and_paced(api: Api) {
    let run = run_under_token_limit(api, false).await;
    let Paced { refused, calls, .. } = run;
    assert!(refused > 0, "the limit was met: {}", run.summary);
    assert!(
        refused * 10 <= calls,
        "{refused} of {calls} calls refused, over 10%: {}",
        run.summary
    );
    // The pace learnt is under the limit, and not far under it (a cut is 3%; the floor
    // is 100 tokens a second).
    let pace = run.pace.expect("the token-paced model is reported");
    assert!(
        pace <= run.limit * 1.05 && pace >= run.limit * 0.5,
        "paced at {pace} tokens/s against a limit of {}: {}",
        run.limit,
        run.summary
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_limit_is_learnt_and_paced_native() {
    an_unknown_token_limit_is_learnt_and_paced(Api::Native).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_token_limit_is_learnt_and_paced_compatible() {
    an_unknown_token_limit_is_learnt_and_paced(Api::Compatible).await;
}
