//! The realism knobs: per-endpoint latency, upload bandwidth, and policy expiry judged at
//! the moment a request arrives (before any emulated delay). Only lower bounds on elapsed
//! time are asserted: a busy machine may be slower, never faster.

mod emulator_support;

use std::time::{Duration, Instant};

use dashbatch::emulator::EmulatorConfig;
use emulator_support::*;
use serde_json::json;

/// Awaits `future` and returns its output with the time it took.
async fn timed<T>(future: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = future.await;
    (out, started.elapsed())
}

#[tokio::test]
async fn each_endpoint_waits_its_own_latency() {
    // Distinct values, so a latency applied to the wrong endpoint shows.
    let credential = Duration::from_millis(300);
    let upload = Duration::from_millis(450);
    let chat = Duration::from_millis(600);
    let emu = start(EmulatorConfig {
        credential_latency: credential,
        upload_latency: upload,
        chat_latency: chat,
        ..EmulatorConfig::default()
    })
    .await;

    let (policy, took) = timed(emu.policy("sk-demo", MODEL)).await;
    assert!(took >= credential, "getPolicy took {took:?}");

    let ((answer, url), took) = timed(emu.upload(&policy, "cat.png", b"cat")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(took >= upload, "upload took {took:?}");

    let compat = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "?"},
        ]}],
    });
    let (answer, took) = timed(emu.compatible("sk-demo", true, &compat)).await;
    assert!(compat_text(&answer).contains(&sha256_hex(b"cat")));
    assert!(took >= chat, "compatible call took {took:?}");

    let native = json!({
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [{"image": url}, {"text": "?"}]}]},
    });
    let (answer, took) = timed(emu.native("sk-demo", true, &native)).await;
    assert!(native_text(&answer).contains(&sha256_hex(b"cat")));
    assert!(took >= chat, "native call took {took:?}");
}

#[tokio::test]
async fn a_bandwidth_limit_slows_an_upload_down() {
    let emu = start(EmulatorConfig {
        upload_bandwidth_mbps: Some(1.0),
        ..EmulatorConfig::default()
    })
    .await;
    let policy = emu.policy("sk-demo", MODEL).await;
    // 128 KiB at 1 Mbit/s: 131072 * 8 / 1e6 = 1.05 s on the wire.
    let bytes = vec![7u8; 128 * 1024];
    let ((answer, _), took) = timed(emu.upload(&policy, "a.bin", &bytes)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(took >= Duration::from_millis(1000), "upload took {took:?}");
    assert_eq!(emu.stats().await["upload_bytes"], bytes.len() as u64);
}

#[tokio::test]
async fn policy_expiry_is_judged_when_the_upload_arrives() {
    // The upload is handled 2.5 s after it arrives, past the 2 s lifetime of its policy;
    // what counts is that it arrived in time.
    let latency = Duration::from_millis(2500);
    let emu = start(EmulatorConfig {
        policy_ttl_s: 2,
        upload_latency: latency,
        ..EmulatorConfig::default()
    })
    .await;
    let policy = emu.policy("sk-demo", MODEL).await;
    assert_eq!(policy["expire_in_seconds"], 2);
    let ((answer, _), took) = timed(emu.upload(&policy, "a.png", b"a")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(took >= latency, "upload took {took:?}");
    // By now the policy has expired: the next upload under it arrives too late.
    let (answer, _) = emu.upload(&policy, "b.png", b"b").await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    let error = answer.oss_error();
    assert_eq!(error.code, "AccessDenied");
    assert!(
        error
            .message
            .starts_with("Invalid according to Policy: Policy expired"),
        "{}",
        error.message
    );
}
