//! Issue 10, the emulator: streaming-only models, SSE in both APIs as protocol notes §5
//! writes it, reasoning, moderation and cut streams, generation parameters, several media.

mod emulator_support;

use dashbatch::emulator::{
    CUT_STREAM, DROP_STREAM, EmulatorConfig, MODERATE_INPUT, MODERATE_OUTPUT,
};
use emulator_support::*;
use serde_json::{Value, json};

const COMPAT: &str = "/compatible-mode/v1/chat/completions";
const NATIVE: &str = "/api/v1/services/aigc/multimodal-generation/generation";
const IMG: &str = "https://example.com/cat.png";
const STREAM_ONLY: &str =
    "This model only support stream mode, please enable the stream parameter to access the model. ";

fn compat_body(model: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": IMG}},
            {"type": "text", "text": prompt},
        ]}],
    })
}

fn native_body(model: &str, prompt: &str) -> Value {
    json!({
        "model": model,
        "input": {"messages": [{"role": "user", "content": [{"image": IMG}, {"text": prompt}]}]},
        "parameters": {"incremental_output": true},
    })
}

/// `body` with `"stream": true` and, if `usage`, `stream_options.include_usage`.
fn streamed(mut body: Value, usage: bool) -> Value {
    body["stream"] = json!(true);
    if usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

async fn send(emu: &Emu, path: &str, body: &Value, sse: bool) -> reqwest::Response {
    let mut request = emu
        .http
        .post(emu.url(path))
        .bearer_auth("sk-demo")
        .json(body);
    if sse {
        request = request
            .header("X-DashScope-SSE", "enable")
            .header("Accept", "text/event-stream");
    }
    request.send().await.expect("request sent")
}

/// A stream answer read to its end: status, content type, and its events (the text
/// between blank lines).
async fn read_stream(response: reqwest::Response) -> (u16, String, Vec<String>) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = response.text().await.expect("a complete body");
    let events = body
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect();
    (status, content_type, events)
}

/// The JSON of a compatible event `data: {..}`.
fn compat_data(event: &str) -> Value {
    let data = event
        .strip_prefix("data: ")
        .unwrap_or_else(|| panic!("not a data event: {event:?}"));
    serde_json::from_str(data).unwrap_or_else(|e| panic!("{e}: {data}"))
}

/// A native frame's (id, event, status, data).
fn native_frame(frame: &str) -> (String, String, String, Value) {
    let lines: Vec<&str> = frame.split('\n').collect();
    assert_eq!(lines.len(), 4, "{frame:?}");
    let id = lines[0].strip_prefix("id:").expect("id:").to_owned();
    let event = lines[1].strip_prefix("event:").expect("event:").to_owned();
    let status = lines[2]
        .strip_prefix(":HTTP_STATUS/")
        .expect(":HTTP_STATUS/")
        .to_owned();
    let data = lines[3].strip_prefix("data:").expect("data:");
    assert!(
        !data.starts_with(' '),
        "no space after the colon: {frame:?}"
    );
    (
        id,
        event,
        status,
        serde_json::from_str(data).expect("JSON data"),
    )
}

#[tokio::test]
async fn stream_only_models_are_refused_without_a_stream_exactly_as_documented() {
    let emu = start_default().await;
    let answer = emu
        .compatible("sk-demo", false, &compat_body("qvq-max", "Hi"))
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let body = answer.json();
    assert_eq!(
        body["error"],
        json!({"code": "invalid_parameter_error", "message": STREAM_ONLY, "type": "invalid_request_error"})
    );
    let request_id = body["request_id"].as_str().expect("request_id");
    assert_eq!(body["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(body.as_object().expect("object").len(), 3, "{body}");
    for omni in ["qwen-omni-turbo", "qwen3-omni-flash"] {
        let answer = emu
            .compatible("sk-demo", false, &compat_body(omni, "Hi"))
            .await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(
            answer.json(),
            json!({"error": {"code": null, "message": format!("{omni} only support with stream=true"), "type": "invalid_request_error"}})
        );
        // The same call as a stream is answered.
        let (status, _, _) = read_stream(
            send(
                &emu,
                COMPAT,
                &streamed(compat_body(omni, "Hi"), true),
                false,
            )
            .await,
        )
        .await;
        assert_eq!(status, 200);
    }
    let answer = emu
        .native("sk-demo", false, &native_body("qvq-max", "Hi"))
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.native_code(), "InvalidParameter");
    assert_eq!(answer.json()["message"], STREAM_ONLY);
    let (status, _, _) =
        read_stream(send(&emu, NATIVE, &native_body("qvq-max", "Hi"), true).await).await;
    assert_eq!(status, 200);
    let stats = emu.stats().await;
    assert_eq!(stats["refused_stream_only"], 4);
    assert_eq!(stats["streams"], 3);
}

#[tokio::test]
async fn the_stream_only_list_is_configurable() {
    let emu = start(EmulatorConfig {
        stream_only_models: vec![MODEL.to_owned()],
        ..EmulatorConfig::default()
    })
    .await;
    let answer = emu
        .compatible("sk-demo", false, &compat_body(MODEL, "Hi"))
        .await;
    assert_eq!(answer.status, 400);
    let answer = emu
        .compatible("sk-demo", false, &compat_body("qvq-max", "Hi"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn compatible_stream_is_written_as_the_notes_show() {
    let emu = start_default().await;
    let plain = emu
        .compatible("sk-demo", false, &compat_body(MODEL, "Describe the cat."))
        .await
        .json();
    let text = plain["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");

    let (status, content_type, events) = read_stream(
        send(
            &emu,
            COMPAT,
            &streamed(compat_body(MODEL, "Describe the cat."), true),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/event-stream");
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| compat_data(e))
        .collect();
    let (last, earlier) = chunks.split_last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"], plain["usage"],
        "usage of the stream = usage of the answer"
    );
    let mut joined = String::new();
    let mut pieces = 0;
    for chunk in earlier {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], MODEL);
        assert!(
            chunk["usage"].is_null() && chunk.get("usage").is_some(),
            "{chunk}"
        );
        if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
            joined.push_str(piece);
            pieces += usize::from(!piece.is_empty());
        }
    }
    assert_eq!(joined, text);
    assert!(pieces >= 3, "split into pieces: {pieces}");
    assert_eq!(earlier[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = earlier
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .collect();
    assert_eq!(finish.last(), Some(&&json!("stop")));
    assert!(finish[..finish.len() - 1].iter().all(|f| f.is_null()));

    // Without include_usage: no usage anywhere, no empty-choices chunk.
    let (_, _, events) = read_stream(
        send(
            &emu,
            COMPAT,
            &streamed(compat_body(MODEL, "Describe."), false),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(events.last().map(String::as_str), Some("data: [DONE]"));
    for event in &events[..events.len() - 1] {
        let chunk = compat_data(event);
        assert!(chunk.get("usage").is_none(), "{chunk}");
        assert_ne!(chunk["choices"], json!([]));
    }
    assert_eq!(emu.stats().await["streams"], 2);
    assert_eq!(emu.stats().await["chat_calls"], 3);
}

#[tokio::test]
async fn native_stream_frames_are_written_as_the_notes_show() {
    let emu = start_default().await;
    let plain = emu
        .native("sk-demo", false, &native_body(MODEL, "Describe the cat."))
        .await
        .json();
    let text = plain["output"]["choices"][0]["message"]["content"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    for incremental in [true, false] {
        let mut body = native_body(MODEL, "Describe the cat.");
        body["parameters"]["incremental_output"] = json!(incremental);
        let (status, content_type, events) =
            read_stream(send(&emu, NATIVE, &body, true).await).await;
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/event-stream");
        assert!(events.len() >= 3, "{events:?}");
        let mut joined = String::new();
        let mut output_tokens = 0;
        for (i, event) in events.iter().enumerate() {
            let (id, kind, status, data) = native_frame(event);
            assert_eq!(id, (i + 1).to_string());
            assert_eq!((kind.as_str(), status.as_str()), ("result", "200"));
            let choice = &data["output"]["choices"][0];
            let last = i + 1 == events.len();
            assert_eq!(choice["finish_reason"], if last { "stop" } else { "null" });
            let piece = choice["message"]["content"][0]["text"]
                .as_str()
                .unwrap_or("");
            if incremental {
                joined.push_str(piece);
            } else {
                assert!(text.starts_with(piece), "the text so far: {piece:?}");
                joined = piece.to_owned();
            }
            let usage = &data["usage"];
            let now = usage["output_tokens"].as_u64().expect("running total");
            assert!(now >= output_tokens);
            output_tokens = now;
            if last {
                assert_eq!(usage, &plain["usage"]);
            }
            assert!(data["request_id"].is_string());
        }
        assert_eq!(joined, text, "incremental_output {incremental}");
    }
}

#[tokio::test]
async fn thinking_models_and_enable_thinking_give_reasoning() {
    let emu = start_default().await;
    // qvq-max thinks in a stream: reasoning first, then the answer.
    let (_, _, events) = read_stream(
        send(
            &emu,
            COMPAT,
            &streamed(compat_body("qvq-max", "Why?"), true),
            false,
        )
        .await,
    )
    .await;
    let (mut reasoning, mut content, mut order) = (String::new(), String::new(), Vec::new());
    for event in &events[..events.len() - 1] {
        let delta = &compat_data(event)["choices"][0]["delta"];
        if let Some(r) = delta["reasoning_content"].as_str() {
            reasoning.push_str(r);
            order.push('r');
        }
        if let Some(c) = delta["content"].as_str().filter(|c| !c.is_empty()) {
            content.push_str(c);
            order.push('c');
        }
    }
    assert!(reasoning.contains("Why?"), "{reasoning}");
    assert!(
        content.starts_with("Emulated answer from qvq-max."),
        "{content}"
    );
    let first_content = order.iter().position(|&k| k == 'c').expect("content");
    assert!(
        order[first_content..].iter().all(|&k| k == 'c'),
        "{order:?}"
    );

    let (_, _, events) =
        read_stream(send(&emu, NATIVE, &native_body("qvq-max", "Why?"), true).await).await;
    let reasoning: String = events
        .iter()
        .map(|e| {
            native_frame(e).3["output"]["choices"][0]["message"]["reasoning_content"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert!(reasoning.contains("Why?"), "{reasoning}");

    // enable_thinking on any model, without a stream; none without it.
    let mut body = compat_body(MODEL, "Why?");
    body["enable_thinking"] = json!(true);
    let message =
        emu.compatible("sk-demo", false, &body).await.json()["choices"][0]["message"].clone();
    assert!(
        message["reasoning_content"]
            .as_str()
            .expect("reasoning")
            .contains("Why?")
    );
    let message = emu
        .compatible("sk-demo", false, &compat_body(MODEL, "Why?"))
        .await
        .json()["choices"][0]["message"]
        .clone();
    assert!(message.get("reasoning_content").is_none(), "{message}");
    let mut body = native_body(MODEL, "Why?");
    body["parameters"]["enable_thinking"] = json!(true);
    let message =
        emu.native("sk-demo", false, &body).await.json()["output"]["choices"][0]["message"].clone();
    assert!(
        message["reasoning_content"]
            .as_str()
            .expect("reasoning")
            .contains("Why?")
    );
}

#[tokio::test]
async fn output_moderation_cuts_a_stream_with_the_documented_error() {
    let emu = start_default().await;
    let prompt = format!("Tell me. {MODERATE_OUTPUT}");
    let (status, _, events) = read_stream(
        send(
            &emu,
            COMPAT,
            &streamed(compat_body(MODEL, &prompt), true),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert!(events.len() >= 3, "some output first: {events:?}");
    assert_eq!(
        events.last().expect("events"),
        r#"data: {"error":{"message":"Output data may contain inappropriate content.","type":"data_inspection_failed","code":"data_inspection_failed"}}"#
    );
    assert!(!events.iter().any(|e| e == "data: [DONE]"));

    let (status, _, events) =
        read_stream(send(&emu, NATIVE, &native_body(MODEL, &prompt), true).await).await;
    assert_eq!(status, 200);
    let (frames, error) = events.split_at(events.len() - 1);
    assert!(!frames.is_empty());
    for frame in frames {
        assert_eq!(
            native_frame(frame).3["output"]["choices"][0]["finish_reason"],
            "null"
        );
    }
    let (id, kind, status, data) = native_frame(&error[0]);
    assert_eq!(id, (frames.len() + 1).to_string());
    assert_eq!((kind.as_str(), status.as_str()), ("error", "400"));
    assert_eq!(data["code"], "DataInspectionFailed");
    assert_eq!(
        data["message"],
        "Output data may contain inappropriate content."
    );
    assert!(data["request_id"].is_string());

    // Without a stream: a 400 in each shape.
    let answer = emu
        .compatible("sk-demo", false, &compat_body(MODEL, &prompt))
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.compat_code(), "data_inspection_failed");
    assert_eq!(
        answer.json()["error"]["message"],
        "Output data may contain inappropriate content."
    );
    let answer = emu
        .native("sk-demo", false, &native_body(MODEL, &prompt))
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.native_code(), "DataInspectionFailed");
    let stats = emu.stats().await;
    assert_eq!(stats["refused_moderation"], 4);
    assert_eq!(stats["chat_calls"], 0);
}

#[tokio::test]
async fn input_moderation_refuses_before_any_output() {
    let emu = start_default().await;
    let prompt = format!("{MODERATE_INPUT} hello");
    for stream in [false, true] {
        let body = if stream {
            streamed(compat_body(MODEL, &prompt), true)
        } else {
            compat_body(MODEL, &prompt)
        };
        let answer = emu.compatible("sk-demo", false, &body).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.compat_code(), "data_inspection_failed");
        assert_eq!(answer.json()["error"]["type"], "data_inspection_failed");
        assert_eq!(
            answer.json()["error"]["message"],
            "Input data may contain inappropriate content."
        );
        let answer =
            Answer::read(send(&emu, NATIVE, &native_body(MODEL, &prompt), stream).await).await;
        assert_eq!(answer.status, 400, "{}", answer.body);
        assert_eq!(answer.native_code(), "DataInspectionFailed");
        assert_eq!(
            answer.json()["message"],
            "Input data may contain inappropriate content."
        );
    }
    assert_eq!(emu.stats().await["refused_moderation"], 4);
    assert_eq!(emu.stats().await["streams"], 0);
}

#[tokio::test]
async fn a_cut_stream_ends_without_its_final_chunk_and_a_dropped_one_breaks() {
    let emu = start_default().await;
    let cut = format!("Describe the cat in detail. {CUT_STREAM}");
    let (status, _, events) = read_stream(
        send(
            &emu,
            COMPAT,
            &streamed(compat_body(MODEL, &cut), true),
            false,
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert!(events.len() >= 2);
    for event in &events {
        let chunk = compat_data(event);
        assert!(chunk["choices"][0]["finish_reason"].is_null(), "{chunk}");
        assert_ne!(chunk["choices"], json!([]));
    }
    let (_, _, events) =
        read_stream(send(&emu, NATIVE, &native_body(MODEL, &cut), true).await).await;
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| native_frame(e).3["output"]["choices"][0]["finish_reason"] == "null")
    );

    let dropped = format!("Describe. {DROP_STREAM}");
    let response = send(
        &emu,
        COMPAT,
        &streamed(compat_body(MODEL, &dropped), true),
        false,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.is_err(), "the connection breaks");
    let response = send(&emu, NATIVE, &native_body(MODEL, &dropped), true).await;
    assert!(response.text().await.is_err(), "the connection breaks");
    let stats = emu.stats().await;
    assert_eq!(stats["streams"], 4);
    assert_eq!(stats["chat_calls"], 0, "no stream was answered in full");
}

#[tokio::test]
async fn parameters_are_echoed_sorted_in_both_shapes() {
    let emu = start_default().await;
    let mut body = compat_body(MODEL, "Hi");
    for (k, v) in [
        ("top_p", json!(0.5)),
        ("temperature", json!(0.2)),
        ("seed", json!(7)),
        ("max_tokens", json!(100)),
    ] {
        body[k] = v;
    }
    let text = compat_text(&emu.compatible("sk-demo", false, &body).await);
    let line = r#"params: {"max_tokens":100,"seed":7,"temperature":0.2,"top_p":0.5}"#;
    assert!(text.lines().any(|l| l == line), "{text}");
    // In a stream the transport keys are not parameters.
    let (_, _, events) = read_stream(send(&emu, COMPAT, &streamed(body, true), false).await).await;
    let joined: String = events[..events.len() - 1]
        .iter()
        .filter_map(|e| {
            compat_data(e)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(joined.lines().any(|l| l == line), "{joined}");

    let mut body = native_body(MODEL, "Hi");
    body["parameters"] = json!({"temperature": 0.2, "seed": 7, "top_p": 0.5, "max_tokens": 100, "incremental_output": true});
    let text = native_text(&emu.native("sk-demo", false, &body).await);
    assert!(text.lines().any(|l| l == line), "{text}");
    // No parameters, no line.
    let text = native_text(&emu.native("sk-demo", false, &json!({"model": MODEL, "input": {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}})).await);
    assert!(!text.contains("params:"), "{text}");
}

#[tokio::test]
async fn parameters_are_checked_with_the_service_messages() {
    let emu = start_default().await;
    let cases = [
        (
            json!({"temperature": 2}),
            "<400> InternalError.Algo.InvalidParameter: Temperature should be in [0.0, 2.0)",
        ),
        (
            json!({"temperature": -1}),
            "<400> InternalError.Algo.InvalidParameter: Temperature should be in [0.0, 2.0)",
        ),
        (
            json!({"max_tokens": 0}),
            "<400> InternalError.Algo.InvalidParameter: Range of max_tokens should be [1, 8192]",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "<400> InternalError.Algo.InvalidParameter: 'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
        ),
    ];
    for (params, message) in cases {
        let mut body = compat_body(MODEL, "Describe.");
        for (k, v) in params.as_object().expect("object") {
            body[k] = v.clone();
        }
        let answer = emu.compatible("sk-demo", false, &body).await;
        assert_eq!(answer.status, 400, "{params}: {}", answer.body);
        assert_eq!(answer.compat_code(), "invalid_parameter_error");
        assert_eq!(answer.json()["error"]["message"], message);
        let mut body = native_body(MODEL, "Describe.");
        body["parameters"] = params.clone();
        let answer = emu.native("sk-demo", false, &body).await;
        assert_eq!(answer.status, 400, "{params}: {}", answer.body);
        assert_eq!(answer.native_code(), "InvalidParameter");
        assert_eq!(answer.json()["message"], message);
    }
}

#[tokio::test]
async fn a_json_object_answer_is_one_json_object() {
    let emu = start_default().await;
    let mut body = compat_body(MODEL, "Describe the cat as JSON.");
    body["response_format"] = json!({"type": "json_object"});
    body["temperature"] = json!(0.3);
    let text = compat_text(&emu.compatible("sk-demo", false, &body).await);
    let object: Value = serde_json::from_str(&text).expect("the whole answer is JSON");
    assert_eq!(object["prompt"], "Describe the cat as JSON.");
    assert_eq!(object["params"]["temperature"], 0.3);
    assert_eq!(
        object["media"][0],
        format!("image {IMG} (remote, not fetched)")
    );
    let mut body = native_body(MODEL, "Answer in json.");
    body["parameters"]["response_format"] = json!({"type": "json_object"});
    let (_, _, events) = read_stream(send(&emu, NATIVE, &body, true).await).await;
    let joined: String = events
        .iter()
        .map(|e| {
            native_frame(e).3["output"]["choices"][0]["message"]["content"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    let object: Value = serde_json::from_str(&joined).expect("the joined stream is JSON");
    assert_eq!(object["prompt"], "Answer in json.");
}

#[tokio::test]
async fn several_media_and_frame_lists_come_in_order() {
    let emu = start_default().await;
    let (a, b, c) = (
        "https://example.com/a.png",
        "https://example.com/b.png",
        "https://example.com/c.png",
    );
    let frames = ["https://example.com/f1.jpg", "https://example.com/f2.jpg"];
    let expected = [
        format!("image {a} (remote, not fetched)"),
        format!("image {b} (remote, not fetched)"),
        format!("video frame 1/2 {} (remote, not fetched)", frames[0]),
        format!("video frame 2/2 {} (remote, not fetched)", frames[1]),
        format!("image {c} (remote, not fetched)"),
    ];
    let compat = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": a}},
            {"type": "image_url", "image_url": {"url": b}},
            {"type": "video", "video": frames},
            {"type": "image_url", "image_url": {"url": c}},
            {"type": "text", "text": "Compare."},
        ]}],
    });
    let native = json!({
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [
            {"image": a}, {"image": b}, {"video": frames}, {"image": c}, {"text": "Compare."},
        ]}]},
    });
    for text in [
        compat_text(&emu.compatible("sk-demo", false, &compat).await),
        native_text(&emu.native("sk-demo", false, &native).await),
    ] {
        let media: Vec<&str> = text.lines().filter(|l| l.contains("(remote")).collect();
        assert_eq!(
            media,
            expected.iter().map(String::as_str).collect::<Vec<_>>(),
            "{text}"
        );
    }
}
