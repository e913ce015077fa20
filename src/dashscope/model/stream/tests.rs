use super::*;

fn error_frame(status: Option<u16>, data: &str) -> Frame {
    Frame {
        event: Some("error".to_owned()),
        data: data.to_owned(),
        status,
    }
}

#[test]
fn in_stream_errors_classify_as_their_status_would() {
    let moderation = r#"{"error":{"message":"Output data may contain inappropriate content.","type":"data_inspection_failed","code":"data_inspection_failed"}}"#;
    let e = in_stream_error(&error_frame(None, moderation));
    assert_eq!((e.kind, e.status), (ErrorKind::ContentRefused, Some(400)));
    assert_eq!(e.code, "data_inspection_failed");
    assert!(!e.is_retryable());

    let quota = r#"{"code":"Throttling.AllocationQuota","message":"Free allocated quota exceeded.","request_id":"r-1"}"#;
    let e = in_stream_error(&error_frame(Some(429), quota));
    assert_eq!((e.kind, e.status), (ErrorKind::Throttled, Some(429)));
    assert_eq!(e.request_id.as_deref(), Some("r-1"));
    // Without the status comment, the code alone says the same.
    assert_eq!(
        in_stream_error(&error_frame(None, quota)).kind,
        ErrorKind::Throttled
    );

    let server = r#"{"code":"InternalError.Algo","message":"oops"}"#;
    assert_eq!(
        in_stream_error(&error_frame(None, server)).kind,
        ErrorKind::Server
    );
}

#[test]
fn the_refusal_without_stream_is_recognised_in_both_shapes_only() {
    let refusal = |code: &str, message: &str, status: u16| {
        let body = serde_json::json!({"error": {"code": code, "message": message,
            "type": "invalid_request_error"}});
        let body = body.to_string().replace("\"code\":\"\"", "\"code\":null");
        ApiError::from_response(
            status,
            &HeaderMap::new(),
            body.as_bytes(),
            SystemTime::now(),
        )
    };
    let compatible = refusal(
        "invalid_parameter_error",
        "This model only support stream mode, please enable the stream parameter to access the model. ",
        400,
    );
    assert!(refused_without_stream(&compatible));
    let omni = refusal("", "qwen3-omni-flash only support with stream=true", 400);
    assert!(refused_without_stream(&omni), "{omni:?}");
    // The same words under another code or status, or another message, are not it.
    assert!(!refused_without_stream(&refusal(
        "invalid_parameter_error",
        "Range of max_tokens should be [1, 8192]",
        400
    )));
    assert!(!refused_without_stream(&refusal(
        "Throttling",
        "only support stream mode",
        429
    )));
}

/// Feeds a whole stream to `mapping`: the reply once its last event came, else `None`.
fn read_all(mapping: &dyn Mapping, stream: &str) -> Result<Option<ModelReply>, ApiError> {
    let mut frames = Vec::new();
    Decoder::default().push(stream.as_bytes(), &mut frames);
    let mut answer = Partial::default();
    for frame in &frames {
        if mapping.read_frame(frame, &mut answer)? {
            return Ok(Some(answer.reply(None)));
        }
    }
    Ok(None)
}

#[test]
fn compatible_chunks_join_into_one_reply_with_the_last_usage() {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\
             \"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}],\
             \"usage\":null}}\n\n"
        )
    };
    let stream = [
        chunk(r#"{"content":"","role":"assistant"}"#, "null"),
        chunk(r#"{"content":null,"reasoning_content":"Think "}"#, "null"),
        chunk(r#"{"content":null,"reasoning_content":"twice."}"#, "null"),
        chunk(r#"{"content":"Hello"}"#, "null"),
        chunk(r#"{"content":", world"}"#, "\"stop\""),
        "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\
         \"completion_tokens\":4,\"total_tokens\":7}}\n\n"
            .to_owned(),
    ]
    .concat();
    let compatible = &super::super::compatible::Compatible;
    // Without [DONE] the stream has not ended.
    assert_eq!(read_all(compatible, &stream).unwrap(), None);
    let reply = read_all(compatible, &format!("{stream}data: [DONE]\n\n"))
        .unwrap()
        .unwrap();
    assert_eq!(reply.text, "Hello, world");
    assert_eq!(reply.reasoning.as_deref(), Some("Think twice."));
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(reply.usage.total_tokens, 7);
    assert_eq!(reply.request_id.as_deref(), Some("chatcmpl-1"));
}

#[test]
fn native_frames_end_at_the_finish_reason_with_the_running_usage() {
    let frame = |id: u32, text: &str, finish: &str, out: u64| {
        format!(
            "id:{id}\nevent:result\n:HTTP_STATUS/200\ndata:{{\"output\":{{\"choices\":\
             [{{\"message\":{{\"content\":[{{\"text\":\"{text}\"}}],\"role\":\"assistant\"}},\
             \"finish_reason\":\"{finish}\"}}]}},\"usage\":{{\"input_tokens\":5,\
             \"output_tokens\":{out}}},\"request_id\":\"req-9\"}}\n\n"
        )
    };
    let native = &super::super::native::Native;
    let unfinished = [frame(1, "Hel", "null", 1), frame(2, "lo", "null", 2)].concat();
    assert_eq!(read_all(native, &unfinished).unwrap(), None);
    let whole = format!("{unfinished}{}", frame(3, "!", "stop", 3));
    let reply = read_all(native, &whole).unwrap().unwrap();
    assert_eq!(reply.text, "Hello!");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        (reply.usage.completion_tokens, reply.usage.total_tokens),
        (3, 8)
    );
    assert_eq!(reply.request_id.as_deref(), Some("req-9"));
    // An error frame after HTTP 200, as the notes show it.
    let error = "id:2\nevent:error\n:HTTP_STATUS/429\ndata:{\"code\":\"Throttling.AllocationQuota\",\
                 \"message\":\"Free allocated quota exceeded.\",\"request_id\":\"r\"}\n\n";
    let e = read_all(native, &format!("{}{error}", frame(1, "Hel", "null", 1))).unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Throttled, Some(429)));
}

#[test]
fn stream_requests_ask_for_a_stream_in_each_api() {
    let request = ModelRequest {
        model: "qvq-max".to_owned(),
        prompt: "p".to_owned(),
        system: None,
        media: Vec::new(),
        params: serde_json::Map::new(),
    };
    let compatible = super::super::compatible::Compatible.stream_body(&request);
    assert_eq!(compatible["stream"], true);
    assert_eq!(compatible["stream_options"]["include_usage"], true);
    let native = &super::super::native::Native;
    assert_eq!(
        native.stream_body(&request)["parameters"]["incremental_output"],
        true
    );
    assert!(
        native
            .stream_headers()
            .contains(&("X-DashScope-SSE", "enable"))
    );
}

#[test]
fn known_streaming_only_families() {
    for model in [
        "qwen3-omni-flash",
        "qwen-omni-turbo",
        "qvq-max",
        "QwQ-32B",
        "qwen3-vl-235b-a22b-thinking",
    ] {
        assert!(answers_only_as_stream(model), "{model}");
    }
    for model in ["qwen-vl-max", "qwen3-vl-plus", "qwen-plus"] {
        assert!(!answers_only_as_stream(model), "{model}");
    }
}
