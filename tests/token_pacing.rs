//! Token pacing (issue 11): with `--model-tpm` the client paces each model's tokens, learnt
//! from the usage of its answers, under the emulator's token limit (counted per second as
//! TPM/60 and per minute, as the service does), instead of meeting it with 429s.

mod common;

use std::time::Instant;

use common::*;
use dashbatch::dashscope::Api;
use dashbatch::emulator::EmulatorConfig;
use dashbatch::pipeline;
use tokio_util::sync::CancellationToken;

/// Calls a second the token limit is set to allow.
const CALLS_PER_S: u64 = 19;
const ROWS: usize = 240;

fn job(rows: usize) -> Job {
    let mut job = Job::new();
    let file = job.file("m/a.png", &bytes(7, 256));
    for i in 0..rows {
        job.row(&format!("r{i},qwen-vl-plus,{file},Describe {i:03}"));
    }
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_token_limit_is_paced_not_met_with_429s() {
    // One call on an unlimited emulator: the tokens a row of this manifest uses.
    let probe = start(EmulatorConfig::default()).await;
    let one = job(1);
    pipeline::run(
        &one.config(Api::Native, 1),
        client(&probe, "sk-acme"),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let tokens: u64 = results(&one.output())[0]["total_tokens"].parse().unwrap();
    let tpm = tokens * CALLS_PER_S * 60;

    let em = start(EmulatorConfig {
        model_tpm: Some(tpm),
        ..EmulatorConfig::default()
    })
    .await;
    let job = job(ROWS);
    let mut config = job.config(Api::Native, 64);
    config.model_tpm = Some(tpm);
    config.retry = fast_retry(16);
    let started = Instant::now();
    let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let summary = outcome.stats.summary_line();
    assert_eq!(outcome.stats.rows_ok, ROWS as u64, "{summary}");
    let refused = outcome
        .stats
        .throttled_by_kind
        .get("tokens")
        .copied()
        .unwrap_or(0);
    let calls = ROWS as u64 + outcome.stats.throttled_seen;
    let share = refused as f64 / calls as f64;
    let token_rate = (ROWS as u64 * tokens) as f64 / elapsed / (tpm as f64 / 60.0);
    eprintln!(
        "{tokens} tokens a call, TPM {tpm}: {refused} token 429s of {calls} calls ({:.1}%), \
         {:.0}% of the token rate ({elapsed:.1}s)",
        share * 100.0,
        token_rate * 100.0
    );
    assert!(share <= 0.05, "{share} of calls refused: {summary}");
}
