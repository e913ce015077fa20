//! Pacing against 429s that are not about the call rate: the emulator has no model rate
//! limit but injects faults, among them short bursts of 429s. The pace must not collapse
//! towards the floor, as it did when each burst was taken for a limit.

mod common;

use std::time::Duration;

use common::*;
use dashbatch::dashscope::Api;
use dashbatch::emulator::EmulatorConfig;
use dashbatch::pipeline;
use tokio_util::sync::CancellationToken;

/// Far below what a run without faults reaches (hundreds of calls a second here), far
/// above where the old pacer ended after a few hundred rows (a few calls a second).
const COLLAPSED: f64 = 20.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_429_bursts_without_a_limit_leave_the_pace_high() {
    for seed in [1, 2] {
        let em = start(EmulatorConfig {
            // A fifth of the calls meet a fault: 500, 503, a dropped reply, a slow one, or a
            // burst of 3 to 7 429s. No `model_rps`: no call is refused for the rate.
            fault_rate: 0.2,
            fault_seed: seed,
            fault_slow: Duration::from_millis(20),
            ..EmulatorConfig::default()
        })
        .await;
        let mut job = Job::new();
        for i in 0..400 {
            // Web URLs: no upload, so every call the emulator sees is a model call.
            job.row(&format!(
                "r{i},qwen-vl-plus,https://example.com/img/{i}.png,Describe {i}"
            ));
        }
        let mut config = job.config(Api::Compatible, 32);
        // Enough attempts that a row outlasts a run of faults: what is tested is the pace.
        config.retry = fast_retry(16);
        let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
            .await
            .unwrap();
        let summary = outcome.stats.summary_line();
        assert_eq!(outcome.stats.rows_ok, 400, "seed {seed}: {summary}");
        assert!(
            outcome.stats.throttled_seen > 0,
            "seed {seed}: the faults must include 429s: {summary}"
        );
        // Unpaced (never throttled for long enough to pace) would pass too.
        if let Some(pace) = outcome.stats.model_pace.get("qwen-vl-plus") {
            assert!(
                *pace >= COLLAPSED,
                "seed {seed}: the pace collapsed: {summary}"
            );
        }
    }
}
