//! The batch pipeline against the emulator on loopback: correctness under concurrency,
//! upload de-duplication, policy expiry, faults, per-row failures and both APIs.

mod common;

use std::time::Duration;

use common::*;
use dashbatch::dashscope::{Api, CredentialOptions, Credentials};
use dashbatch::emulator::EmulatorConfig;
use dashbatch::pipeline;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_its_own_row_under_concurrency_256() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let mut expected = Vec::new();
    for i in 0..600u64 {
        // 150 distinct files, each used by four rows with different prompts.
        let f = i % 150;
        let content = bytes(f, 200 + f as usize);
        let file = job.file(&format!("media/{f}.png"), &content);
        let prompt = format!("prompt number {i}, with a comma");
        job.row(&format!("r{i},qwen-vl-plus,{file},\"{prompt}\""));
        expected.push((format!("r{i}"), sha256_hex(&content), prompt));
    }
    let config = job.config(Api::Compatible, 256);
    let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        outcome.stats.rows_ok,
        600,
        "{}",
        outcome.stats.summary_line()
    );
    let rows = by_id(&results(&config.output));
    assert_eq!(rows.len(), 600);
    for (id, sha, prompt) in expected {
        let r = &rows[&id];
        assert_eq!(r["status"], "ok", "{r:?}");
        assert!(r["response"].contains(&format!("sha256={sha}")), "{r:?}");
        assert!(r["response"].contains(&prompt), "{r:?}");
        assert!(r["oss_url"].starts_with("oss://"), "{r:?}");
    }
    // Same (model, content) is uploaded once per run, then shared.
    assert_eq!(outcome.stats.uploads_new, 150);
    assert_eq!(outcome.stats.uploads_reused, 450);
    assert_eq!(stats(&em).await["uploads"], 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_sharing_a_basename_do_not_collide() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let a = job.file("a/cat.png", b"first cat");
    let b = job.file("b/cat.png", b"second cat");
    job.row(&format!("a,qwen-vl-plus,{a},Which cat?"));
    job.row(&format!("b,qwen-vl-plus,{b},Which cat?"));
    let config = job.config(Api::Compatible, 2);
    let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.stats.rows_ok, 2);
    let rows = by_id(&results(&config.output));
    assert!(rows["a"]["response"].contains(&sha256_hex(b"first cat")));
    assert!(rows["b"]["response"].contains(&sha256_hex(b"second cat")));
    assert_ne!(rows["a"]["oss_url"], rows["b"]["oss_url"]);
    assert_eq!(rows["a"]["upload"], "new");
    assert_eq!(rows["b"]["upload"], "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_apis_carry_media_of_every_kind() {
    for api in [Api::Compatible, Api::Native] {
        // Omni answers only as a stream: `--stream auto` (the default) streams it.
        let em = start(EmulatorConfig::default()).await;
        let mut job = Job::with_header("id,model,file,prompt,system,note");
        let img = job.file("i.jpg", b"image bytes");
        let vid = job.file("v.mp4", b"video bytes");
        let aud = job.file("a.mp3", b"audio bytes");
        job.row(&format!("img,qwen-vl-plus,{img},Describe,Be brief,n1"));
        job.row(&format!("vid,qwen-vl-max,{vid},Summarise,,n2"));
        job.row(&format!("aud,qwen-omni-turbo,{aud},Transcribe,,n3"));
        job.row("web,qwen-vl-plus,https://example.com/pic.png?x=1,Look,,n4");
        let config = job.config(api, 4);
        let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
            .await
            .unwrap();
        let rows = by_id(&results(&config.output));
        assert_eq!(outcome.stats.rows_ok, 4, "{api:?}: {rows:?}");
        for (id, content) in [
            ("img", &b"image bytes"[..]),
            ("vid", b"video bytes"),
            ("aud", b"audio bytes"),
        ] {
            assert!(
                rows[id]["response"].contains(&sha256_hex(content)),
                "{api:?} {id}: {:?}",
                rows[id]
            );
            assert!(rows[id]["total_tokens"].parse::<u64>().unwrap() > 0);
        }
        assert!(rows["img"]["response"].contains("Be brief"), "{api:?}");
        assert_eq!(rows["web"]["upload"], "none");
        assert_eq!(rows["web"]["note"], "n4", "pass-through column");
        assert_eq!(stats(&em).await["uploads"], 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_expires_mid_run_is_replaced_and_the_file_reuploaded() {
    let em = start(EmulatorConfig {
        policy_ttl_s: 120,
        upload_latency: Duration::from_millis(20),
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    for i in 0..60u64 {
        let file = job.file(&format!("f{i}.png"), &bytes(i, 64));
        job.row(&format!("r{i},qwen-vl-plus,{file},p{i}"));
    }
    let config = job.config(Api::Compatible, 2);
    let run = tokio::spawn({
        let client = client(&em, "sk-acme");
        async move { pipeline::run(&config, client, CancellationToken::new()).await }
    });
    // Once some uploads are done, jump the service's clock past the policy's life: the
    // client's cached policy is now expired at the service but not by the client's clock.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats(&em).await["uploads"].as_u64().unwrap() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "uploads never started"
        );
        tokio::task::yield_now().await;
    }
    advance_clock(&em, 121).await;
    let outcome = run.await.unwrap().unwrap();
    assert_eq!(
        outcome.stats.rows_ok,
        60,
        "{}",
        outcome.stats.summary_line()
    );
    let s = stats(&em).await;
    assert!(
        s["upload_errors"]["AccessDenied"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    assert!(s["credential_calls"].as_u64().unwrap() >= 2, "{s}");
    assert!(
        outcome
            .stats
            .retries
            .get("policy_expired")
            .copied()
            .unwrap_or(0)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_429_storms_5xx_and_drops_all_end_ok() {
    let em = start(EmulatorConfig {
        fault_rate: 0.3,
        fault_seed: 7,
        fault_slow: Duration::from_millis(20),
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    for i in 0..80u64 {
        let file = job.file(&format!("f{}.png", i % 40), &bytes(i % 40, 100));
        job.row(&format!("r{i},qwen-vl-plus,{file},p{i}"));
    }
    let mut config = job.config(Api::Native, 16);
    config.retry = fast_retry(30);
    config.credentials.retry = fast_retry(30);
    let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        outcome.stats.rows_ok,
        80,
        "{}\n{:?}",
        outcome.stats.summary_line(),
        results(&config.output)
    );
    let s = stats(&em).await;
    assert!(s["faults_injected"].as_u64().unwrap() > 10, "{s}");
    assert!(outcome.stats.retries.values().sum::<u64>() > 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_fail_alone_with_a_reason() {
    let em = start(EmulatorConfig {
        max_file_size_mb: 1,
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    let ok = job.file("ok.png", b"fine");
    let big = job.file("big.png", &vec![7u8; 1024 * 1024 + 1]);
    let odd = job.file("notes.xyz", b"text");
    std::fs::create_dir_all(job.dir.path().join("folder.png")).unwrap();
    job.row(&format!("ok,qwen-vl-plus,{ok},p"));
    job.row(&format!("model,no-such-model,{ok},p"));
    job.row("missing,qwen-vl-plus,nowhere.png,p");
    job.row("folder,qwen-vl-plus,folder.png,p");
    job.row(&format!("big,qwen-vl-plus,{big},p"));
    job.row(&format!("odd,qwen-vl-plus,{odd},p"));
    job.row("bogus,qwen-vl-plus,oss://dashscope-instant/nope/x.png,p");
    job.row("short,qwen-vl-plus");
    let config = job.config(Api::Compatible, 4);
    let outcome = pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    let rows = by_id(&results(&config.output));
    assert_eq!(rows.len(), 8, "every row has a line: {rows:?}");
    assert_eq!(outcome.stats.rows_ok, 1);
    assert_eq!(outcome.stats.rows_failed, 7);
    let code = |id: &str| rows[id]["error_code"].clone();
    assert_eq!(rows["ok"]["status"], "ok");
    assert_eq!(code("model"), "InvalidParameter");
    assert!(rows["model"]["error_message"].contains("check the model column"));
    assert!(rows["big"]["error_message"].contains("http(s):// URL"));
    assert_eq!(code("missing"), "file_not_found");
    assert_eq!(code("folder"), "not_a_file");
    assert_eq!(code("big"), "file_too_large");
    assert_eq!(code("odd"), "unsupported_media");
    assert_eq!(code("bogus"), "invalid_parameter_error");
    let short = rows.values().find(|r| r["line"] == "9").unwrap();
    assert_eq!(short["error_code"], "bad_row");
    assert!(short["error_message"].contains("line 9"), "{short:?}");
    // The oversized file was refused before any byte was sent.
    assert_eq!(stats(&em).await["uploads"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_oss_url_fails_its_row_and_a_local_file_is_uploaded_again() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let f = job.file("a.png", b"expiring");
    job.row(&format!("first,qwen-vl-plus,{f},p"));
    let config = job.config(Api::Compatible, 1);
    pipeline::run(&config, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    let url = results(&config.output)[0]["oss_url"].clone();
    advance_clock(&em, 48 * 3600 + 1).await;

    let mut job2 = Job::new();
    let f2 = job2.file("a.png", b"expiring");
    job2.row(&format!("old,qwen-vl-plus,{url},p"));
    job2.row(&format!("fresh,qwen-vl-plus,{f2},p"));
    let config2 = job2.config(Api::Compatible, 1);
    let outcome = pipeline::run(&config2, client(&em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap();
    let rows = by_id(&results(&config2.output));
    assert_eq!(rows["old"]["status"], "failed");
    assert_eq!(rows["old"]["error_code"], "invalid_parameter_error");
    assert_eq!(rows["fresh"]["status"], "ok", "{:?}", rows["fresh"]);
    assert_eq!(outcome.stats.rows_ok, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_stops_the_run_and_every_row_still_gets_a_line() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    for i in 0..50 {
        let f = job.file(&format!("{i}.png"), &bytes(i, 10));
        job.row(&format!("r{i},qwen-vl-plus,{f},p"));
    }
    // Many rows in flight when the 401 comes: none of them may send the key again.
    let config = job.config(Api::Compatible, 32);
    // "sk-" with no account is not a key the service knows.
    let outcome = pipeline::run(&config, client(&em, "sk-"), CancellationToken::new())
        .await
        .unwrap();
    let stopped = outcome.stopped.unwrap();
    assert_eq!(stopped.as_str(), "key_rejected");
    assert!(stopped.to_string().contains("API key"));
    assert_eq!(
        outcome.stats.credential_calls, 1,
        "one refused getPolicy, then no request with the rejected key"
    );
    let rows = results(&config.output);
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r["status"] == "failed"));
    assert!(
        rows.iter().any(|r| r["error_code"] == "not_attempted"),
        "dispatching stopped early"
    );
    assert!(stats(&em).await["credential_throttled"] == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_limiter_stays_under_100_per_second() {
    let em = start(EmulatorConfig::default()).await;
    let creds = Credentials::new(
        client(&em, "sk-acme"),
        CredentialOptions {
            reuse: false,
            ..CredentialOptions::default()
        },
    );
    let calls = (0..1000).map(|_| {
        let creds = creds.clone();
        async move { creds.get("qwen-vl-plus").await }
    });
    let results = futures::future::join_all(calls).await;
    assert!(results.iter().all(Result::is_ok));
    let s = stats(&em).await;
    assert_eq!(s["credential_calls"], 1000);
    assert_eq!(s["credential_throttled"], 0, "{s}");
    assert!(
        s["credential_max_in_window"].as_u64().unwrap() <= 100,
        "{s}"
    );
}
