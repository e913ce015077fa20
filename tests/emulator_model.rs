//! The model APIs: both shapes, the `oss://` rules (header, account, model, 48 h), the
//! deterministic answer, errors in each API's shape, and the optional call rate limit.

mod emulator_support;

use dashbatch::emulator::EmulatorConfig;
use emulator_support::*;
use futures::future::join_all;
use serde_json::{Value, json};

const CAT: &[u8] = b"a white cat running on the grass";
const INVALID_URL: &str = "InternalError.Algo.InvalidParameter: The provided URL does not appear to be valid. Ensure it is correctly formatted.";

fn compat_body(model: &str, url: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": url}},
            ]},
        ],
    })
}

fn native_body(model: &str, url: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "input": {"messages": [
            {"role": "system", "content": [{"text": "You are terse."}]},
            {"role": "user", "content": [{"image": url}, {"text": prompt}]},
        ]},
        "parameters": {},
    })
}

#[tokio::test]
async fn happy_path_through_both_apis_shows_the_file_hash_and_the_prompt() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-demo", MODEL, "cat.png", CAT).await;
    let hash = format!("sha256={}", sha256_hex(CAT));
    let prompt = "What is this?\nAnswer \"briefly\".";

    let answer = emu
        .compatible("sk-demo", true, &compat_body(MODEL, &url, prompt))
        .await;
    let text = compat_text(&answer);
    assert!(text.contains(&hash), "{text}");
    assert!(text.contains(prompt), "{text}");
    assert!(text.contains("You are terse."), "{text}");
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["logprobs"].is_null());
    assert!(body["system_fingerprint"].is_null());
    assert!(body["created"].as_i64().is_some());
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    let usage = &body["usage"];
    let (p, c, t) = (
        &usage["prompt_tokens"],
        &usage["completion_tokens"],
        &usage["total_tokens"],
    );
    assert_eq!(
        p.as_u64().expect("n") + c.as_u64().expect("n"),
        t.as_u64().expect("n")
    );

    let answer = emu
        .native("sk-demo", true, &native_body(MODEL, &url, prompt))
        .await;
    let text = native_text(&answer);
    assert!(text.contains(&hash), "{text}");
    assert!(text.contains(prompt), "{text}");
    assert!(text.contains("You are terse."), "{text}");
    let body = answer.json();
    assert_eq!(body["output"]["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["output"]["choices"][0]["message"]["role"], "assistant");
    assert!(body["request_id"].is_string());
    let usage = &body["usage"];
    assert_eq!(
        usage["input_tokens"].as_u64().expect("n") + usage["output_tokens"].as_u64().expect("n"),
        usage["total_tokens"].as_u64().expect("n")
    );

    let stats = emu.stats().await;
    assert_eq!(stats["chat_calls"], 2);
    assert_eq!(stats["uploads"], 1);
    assert_eq!(stats["credential_calls"], 1);
}

#[tokio::test]
async fn answers_and_usage_are_deterministic() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-demo", MODEL, "cat.png", CAT).await;
    let body = compat_body(MODEL, &url, "Describe.");
    let a = emu.compatible("sk-demo", true, &body).await.json();
    let b = emu.compatible("sk-demo", true, &body).await.json();
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["usage"], b["usage"]);
    let body = native_body(MODEL, &url, "Describe.");
    let a = emu.native("sk-demo", true, &body).await.json();
    let b = emu.native("sk-demo", true, &body).await.json();
    assert_eq!(a["output"], b["output"]);
    assert_eq!(a["usage"], b["usage"]);
}

#[tokio::test]
async fn video_audio_and_frame_lists_are_resolved() {
    let emu = start_default().await;
    // Any model takes any medium here; the Omni models answer only as a stream
    // (emulator_stream.rs), so a plain vision model stands in.
    let model = "qwen-vl-max";
    let video = emu
        .upload_ok("sk-demo", model, "clip.mp4", b"video bytes")
        .await;
    let audio = emu
        .upload_ok("sk-demo", model, "talk.mp3", b"audio bytes")
        .await;
    let frame = emu
        .upload_ok("sk-demo", model, "f1.jpg", b"frame one")
        .await;
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": video}},
            {"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}},
            {"type": "video", "video": [frame, "https://example.com/f2.jpg"]},
            {"type": "text", "text": "Summarise."},
        ]}],
    });
    let text = compat_text(&emu.compatible("sk-demo", true, &body).await);
    for bytes in [&b"video bytes"[..], b"audio bytes", b"frame one"] {
        assert!(text.contains(&sha256_hex(bytes)), "{text}");
    }
    assert!(text.contains("https://example.com/f2.jpg"), "{text}");

    let body = json!({
        "model": model,
        "input": {"messages": [{"role": "user", "content": [
            {"video": video}, {"audio": audio}, {"video": [frame]}, {"text": "Summarise."},
        ]}]},
    });
    let text = native_text(&emu.native("sk-demo", true, &body).await);
    for bytes in [&b"video bytes"[..], b"audio bytes", b"frame one"] {
        assert!(text.contains(&sha256_hex(bytes)), "{text}");
    }
}

#[tokio::test]
async fn http_media_needs_no_header_and_is_not_downloaded() {
    let emu = start_default().await;
    let url = "https://example.invalid/cat.png";
    let text = compat_text(
        &emu.compatible("sk-demo", false, &compat_body(MODEL, url, "Hi"))
            .await,
    );
    assert!(text.contains(url));
    let text = native_text(
        &emu.native("sk-demo", false, &native_body(MODEL, url, "Hi"))
            .await,
    );
    assert!(text.contains(url));
}

#[tokio::test]
async fn oss_urls_without_the_resolve_header_are_refused() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-demo", MODEL, "cat.png", CAT).await;
    let message = "The media format is not supported or incorrect for the data inspection.";
    let answer = emu
        .compatible("sk-demo", false, &compat_body(MODEL, &url, "Hi"))
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.compat_code(), "InvalidParameter.DataInspection");
    assert_eq!(answer.json()["error"]["message"], message);
    let answer = emu
        .native("sk-demo", false, &native_body(MODEL, &url, "Hi"))
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.native_code(), "InvalidParameter.DataInspection");
    assert_eq!(answer.json()["message"], message);
    let stats = emu.stats().await;
    assert_eq!(stats["chat_calls"], 0);
    assert_eq!(
        counts(&stats["chat_errors"])["InvalidParameter.DataInspection"],
        2
    );
}

/// Both APIs refuse `url` for `key` with the documented invalid-URL error.
async fn assert_invalid_url(emu: &Emu, api_key: &str, model: &str, url: &str) {
    let answer = emu
        .compatible(api_key, true, &compat_body(model, url, "Hi"))
        .await;
    assert_eq!(answer.status, 400, "{url}: {}", answer.body);
    assert_eq!(answer.compat_code(), "invalid_parameter_error");
    assert_eq!(answer.json()["error"]["message"], INVALID_URL);
    let answer = emu
        .native(api_key, true, &native_body(model, url, "Hi"))
        .await;
    assert_eq!(answer.status, 400, "{url}: {}", answer.body);
    assert_eq!(answer.native_code(), "InvalidParameter");
    assert_eq!(answer.json()["message"], INVALID_URL);
}

#[tokio::test]
async fn files_are_bound_to_their_account_not_their_key() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-alice.key1", MODEL, "cat.png", CAT).await;
    // Another key of the same account may use it.
    let text = compat_text(
        &emu.compatible("sk-alice.key2", true, &compat_body(MODEL, &url, "Hi"))
            .await,
    );
    assert!(text.contains(&sha256_hex(CAT)));
    native_text(
        &emu.native("sk-alice", true, &native_body(MODEL, &url, "Hi"))
            .await,
    );
    // Another account may not.
    assert_invalid_url(&emu, "sk-bob", MODEL, &url).await;
}

#[tokio::test]
async fn files_are_bound_to_their_model() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-demo", MODEL, "cat.png", CAT).await;
    assert_invalid_url(&emu, "sk-demo", "qwen-vl-max", &url).await;
    compat_text(
        &emu.compatible("sk-demo", true, &compat_body(MODEL, &url, "Hi"))
            .await,
    );
}

#[tokio::test]
async fn files_expire_48_hours_after_upload() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-demo", MODEL, "cat.png", CAT).await;
    emu.advance_clock(48 * 3600 - 60).await;
    compat_text(
        &emu.compatible("sk-demo", true, &compat_body(MODEL, &url, "Hi"))
            .await,
    );
    emu.advance_clock(61).await;
    assert_invalid_url(&emu, "sk-demo", MODEL, &url).await;
}

#[tokio::test]
async fn unknown_and_malformed_oss_urls_are_invalid() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-demo", MODEL, "cat.png", CAT).await;
    let sibling = url.replace("cat.png", "dog.png");
    for bad in [
        sibling.as_str(),
        "oss://",
        "oss://nothing/here",
        "ftp://example.com/cat.png",
    ] {
        assert_invalid_url(&emu, "sk-demo", MODEL, bad).await;
    }
}

#[tokio::test]
async fn auth_model_and_body_errors_in_each_shape() {
    let emu = start_default().await;
    let url = "https://example.com/cat.png";
    // 401 without or with a malformed key.
    for key in [None, Some("bogus")] {
        let answer = emu
            .post_json(
                "/compatible-mode/v1/chat/completions",
                key,
                false,
                &compat_body(MODEL, url, "Hi"),
            )
            .await;
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.compat_code(), "invalid_api_key");
        let answer = emu
            .post_json(
                "/api/v1/services/aigc/multimodal-generation/generation",
                key,
                false,
                &native_body(MODEL, url, "Hi"),
            )
            .await;
        assert_eq!(answer.status, 401, "{}", answer.body);
        assert_eq!(answer.native_code(), "InvalidApiKey");
    }
    // Unknown model.
    let answer = emu
        .compatible("sk-demo", false, &compat_body("gpt-nope", url, "Hi"))
        .await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(answer.compat_code(), "model_not_found");
    let answer = emu
        .native("sk-demo", false, &native_body("gpt-nope", url, "Hi"))
        .await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(answer.native_code(), "ModelNotFound");
    // Bodies that are not requests.
    for body in [
        json!({"model": MODEL}),
        json!({"model": MODEL, "messages": []}),
        json!([1, 2]),
    ] {
        let answer = emu.compatible("sk-demo", false, &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.compat_code(), "invalid_parameter_error");
        let answer = emu.native("sk-demo", false, &body).await;
        assert_eq!(answer.status, 400, "{body}: {}", answer.body);
        assert_eq!(answer.native_code(), "InvalidParameter");
    }
    let response = emu
        .http
        .post(emu.url("/compatible-mode/v1/chat/completions"))
        .bearer_auth("sk-demo")
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("sent");
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.compat_code(), "invalid_parameter_error");
    assert_eq!(emu.stats().await["chat_calls"], 0);
}

/// Fires `calls` at once; returns the answers and whether they all arrived within one
/// second (then the sliding window saw every one of them together).
async fn timed_burst<F: std::future::Future<Output = Answer>>(
    calls: impl IntoIterator<Item = F>,
) -> (Vec<Answer>, bool) {
    let started = std::time::Instant::now();
    let answers = join_all(calls).await;
    (
        answers,
        started.elapsed() < std::time::Duration::from_secs(1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_rps_throttles_in_both_shapes() {
    let emu = start(EmulatorConfig {
        model_rps: Some(3),
        ..EmulatorConfig::default()
    })
    .await;
    let url = "https://example.com/cat.png";
    let compat = compat_body(MODEL, url, "Hi");
    let (answers, in_one_window) =
        timed_burst((0..30).map(|_| emu.compatible("sk-hank", false, &compat))).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let throttled: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(ok + throttled.len(), 30);
    if in_one_window {
        assert_eq!(ok, 3);
    } else {
        assert!(ok >= 3, "{ok}");
    }
    assert!(!throttled.is_empty());
    for answer in &throttled {
        assert_eq!(answer.compat_code(), "limit_requests");
        assert_eq!(answer.json()["error"]["type"], "limit_requests");
    }
    let native = native_body("qwen-vl-max", url, "Hi");
    let (answers, in_one_window) =
        timed_burst((0..30).map(|_| emu.native("sk-hank", false, &native))).await;
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let throttled: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(ok + throttled.len(), 30);
    if in_one_window {
        assert_eq!(ok, 3);
    } else {
        assert!(ok >= 3, "{ok}");
    }
    assert!(!throttled.is_empty());
    for answer in &throttled {
        assert_eq!(answer.native_code(), "Throttling.RateQuota");
    }
    let errors = counts(&emu.stats().await["chat_errors"]);
    assert!(errors["limit_requests"] >= 1);
    assert!(errors["Throttling.RateQuota"] >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_calls_are_unlimited_by_default() {
    let emu = start_default().await;
    let body = compat_body(MODEL, "https://example.com/cat.png", "Hi");
    let answers = join_all((0..200).map(|_| emu.compatible("sk-ivy", false, &body))).await;
    assert!(answers.iter().all(|a| a.status == 200));
    assert_eq!(emu.stats().await["chat_calls"], 200);
}

fn data_url(mime: &str, bytes: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Inline base64 media are accepted in every media field of both APIs (no resolve header
/// needed), and the answer shows the decoded bytes' hash and size like an uploaded file.
#[tokio::test]
async fn data_urls_are_decoded_in_both_apis() {
    let emu = start_default().await;
    let image: &[u8] = b"\x89PNG inline image";
    let audio: &[u8] = b"ID3 inline audio";
    let frame: &[u8] = b"inline frame";
    let shows = |text: &str, kind: &str, mime: &str, bytes: &[u8]| {
        let line = format!(
            "{kind} data:{mime} sha256={} size={}",
            sha256_hex(bytes),
            bytes.len()
        );
        assert!(text.contains(&line), "{line} missing in {text}");
    };

    let compat = json!({
        "model": "qwen-vl-max",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_url("image/png", image)}},
            // DashScope's own audio examples leave the mime type out.
            {"type": "input_audio", "input_audio": {"data": data_url("", audio), "format": "mp3"}},
            {"type": "video", "video": [data_url("image/jpeg", frame)]},
            {"type": "text", "text": "What is this?"},
        ]}],
    });
    let text = compat_text(&emu.compatible("sk-demo", false, &compat).await);
    shows(&text, "image", "image/png", image);
    shows(&text, "audio", "", audio);
    shows(&text, "video frame 1/1", "image/jpeg", frame);

    let native = json!({
        "model": "qwen-vl-max",
        "input": {"messages": [{"role": "user", "content": [
            {"image": data_url("image/png", image)},
            {"audio": data_url("audio/mpeg", audio)},
            {"video": data_url("video/mp4", frame)},
            {"text": "What is this?"},
        ]}]},
    });
    let text = native_text(&emu.native("sk-demo", false, &native).await);
    shows(&text, "image", "image/png", image);
    shows(&text, "audio", "audio/mpeg", audio);
    shows(&text, "video", "video/mp4", frame);
    assert_eq!(emu.stats().await["chat_calls"], 2);
}

#[tokio::test]
async fn undecodable_data_urls_are_invalid_parameters_in_each_shape() {
    let emu = start_default().await;
    for bad in [
        "data:image/png;base64,not*base64!",
        "data:image/png;base64,QUJD=X",
        "data:text/plain,hello",
        "data:image/png;base64",
    ] {
        let answer = emu
            .compatible("sk-demo", false, &compat_body(MODEL, bad, "Hi"))
            .await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        assert_eq!(answer.compat_code(), "invalid_parameter_error", "{bad}");
        let answer = emu
            .native("sk-demo", false, &native_body(MODEL, bad, "Hi"))
            .await;
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        assert_eq!(answer.native_code(), "InvalidParameter", "{bad}");
        assert!(
            answer.json()["message"]
                .as_str()
                .expect("message")
                .contains("data URL"),
            "{}",
            answer.body
        );
    }
    assert_eq!(emu.stats().await["chat_calls"], 0);
}

/// OpenAI-shaped clients replay earlier assistant turns with `"content": null`.
#[tokio::test]
async fn compatible_mode_accepts_null_assistant_content_in_history() {
    let emu = start_default().await;
    let url = emu.upload_ok("sk-demo", MODEL, "cat.png", CAT).await;
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": null},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": "And this?"},
            ]},
        ],
    });
    let text = compat_text(&emu.compatible("sk-demo", true, &body).await);
    assert!(text.contains("First question\nAnd this?"), "{text}");
    assert!(text.contains(&sha256_hex(CAT)), "{text}");
    // Only an assistant turn may be empty.
    let body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": null}],
    });
    let answer = emu.compatible("sk-demo", false, &body).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.compat_code(), "invalid_parameter_error");
}
