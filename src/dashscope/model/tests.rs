use super::compatible::{self, Compatible};
use super::native::{self, Native};
use super::*;
use crate::dashscope::MediaKind;
use serde_json::json;

const COMPATIBLE_PATH: &str = compatible::PATH;
const NATIVE_PATH: &str = native::PATH;

fn compatible_body(request: &ModelRequest) -> serde_json::Value {
    Compatible.body(request)
}

fn native_body(request: &ModelRequest) -> serde_json::Value {
    Native.body(request)
}

fn parse_compatible(
    body: &[u8],
    status: u16,
    header_id: Option<String>,
) -> Result<ModelReply, ApiError> {
    Compatible.parse(body, status, header_id)
}

fn parse_native(
    body: &[u8],
    status: u16,
    header_id: Option<String>,
) -> Result<ModelReply, ApiError> {
    Native.parse(body, status, header_id)
}

/// A request with at most one media input, the shape of every row so far.
fn request(media: Option<Media>, system: Option<&str>) -> ModelRequest {
    ModelRequest {
        model: "qwen-vl-plus".into(),
        prompt: "What is this?".into(),
        system: system.map(str::to_owned),
        media: media.into_iter().collect(),
        params: Default::default(),
    }
}

fn media(kind: MediaKind, url: &str, format: Option<&str>) -> Option<Media> {
    Some(Media {
        kind,
        url: url.into(),
        format: format.map(str::to_owned),
    })
}

#[test]
fn compatible_request_shapes() {
    let body = compatible_body(&request(
        media(MediaKind::Image, "oss://k/a.png", None),
        Some("Be brief."),
    ));
    assert_eq!(
        body,
        json!({"model":"qwen-vl-plus","messages":[
            {"role":"system","content":"Be brief."},
            {"role":"user","content":[
                {"type":"image_url","image_url":{"url":"oss://k/a.png"}},
                {"type":"text","text":"What is this?"}]}]})
    );
    let body = compatible_body(&request(
        media(MediaKind::Video, "oss://k/v.mp4", None),
        None,
    ));
    assert_eq!(
        body["messages"][0]["content"][0],
        json!({"type":"video_url","video_url":{"url":"oss://k/v.mp4"}})
    );
    let body = compatible_body(&request(
        media(MediaKind::Audio, "oss://k/a.mp3", Some("mp3")),
        None,
    ));
    assert_eq!(
        body["messages"][0]["content"][0],
        json!({"type":"input_audio","input_audio":{"data":"oss://k/a.mp3","format":"mp3"}})
    );
    let body = compatible_body(&request(None, None));
    assert_eq!(
        body["messages"],
        json!([{"role":"user","content":[{"type":"text","text":"What is this?"}]}])
    );
}

#[test]
fn native_request_shapes() {
    let body = native_body(&request(
        media(MediaKind::Image, "oss://k/a.png", None),
        Some("Be brief."),
    ));
    assert_eq!(
        body,
        json!({"model":"qwen-vl-plus","input":{"messages":[
            {"role":"system","content":[{"text":"Be brief."}]},
            {"role":"user","content":[{"image":"oss://k/a.png"},{"text":"What is this?"}]}]},
            "parameters":{}})
    );
    let body = native_body(&request(media(MediaKind::Video, "oss://v", None), None));
    assert_eq!(
        body["input"]["messages"][0]["content"][0],
        json!({"video":"oss://v"})
    );
    let body = native_body(&request(
        media(MediaKind::Audio, "oss://a", Some("wav")),
        None,
    ));
    assert_eq!(
        body["input"]["messages"][0]["content"][0],
        json!({"audio":"oss://a"})
    );
}

/// Several media inputs go in the order given, all before the prompt, in both APIs.
#[test]
fn a_request_carries_every_media_input_in_order() {
    let mut req = request(None, None);
    req.media = [
        media(MediaKind::Image, "oss://k/a.png", None),
        media(MediaKind::Audio, "oss://k/b.wav", Some("wav")),
        media(MediaKind::Image, "https://example.com/c.jpg", None),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(
        compatible_body(&req)["messages"][0]["content"],
        json!([
            {"type":"image_url","image_url":{"url":"oss://k/a.png"}},
            {"type":"input_audio","input_audio":{"data":"oss://k/b.wav","format":"wav"}},
            {"type":"image_url","image_url":{"url":"https://example.com/c.jpg"}},
            {"type":"text","text":"What is this?"}])
    );
    assert_eq!(
        native_body(&req)["input"]["messages"][0]["content"],
        json!([{"image":"oss://k/a.png"},{"audio":"oss://k/b.wav"},
            {"image":"https://example.com/c.jpg"},{"text":"What is this?"}])
    );
}

#[test]
fn parses_the_documented_compatible_reply() {
    let body = br#"{"choices":[{"message":{"content":"This is a picture of a white cat.","role":"assistant"},
        "finish_reason":"stop","index":0,"logprobs":null}],"object":"chat.completion",
        "usage":{"prompt_tokens":1253,"completion_tokens":104,"total_tokens":1357},"created":1739349052,
        "system_fingerprint":null,"model":"qwen-vl-plus","id":"chatcmpl-cfc4f2aa"}"#;
    let reply = parse_compatible(body, 200, None).unwrap();
    assert_eq!(reply.text, "This is a picture of a white cat.");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        reply.usage,
        Usage {
            prompt_tokens: 1253,
            completion_tokens: 104,
            total_tokens: 1357
        }
    );
    assert_eq!(reply.request_id.as_deref(), Some("chatcmpl-cfc4f2aa"));
    let reply = parse_compatible(body, 200, Some("hdr".into())).unwrap();
    assert_eq!(reply.request_id.as_deref(), Some("hdr"));
}

#[test]
fn parses_the_documented_native_reply() {
    let body = br#"{"requestId":"ignored","request_id":"b6d60f91","usage":{"input_tokens":1112,"output_tokens":91,
        "total_tokens":1203,"image_tokens":1091},"output":{"choices":[{"finish_reason":"stop","message":{"role":"assistant",
        "content":[{"text":"A cat "},{"image_hw":[["924","924"]]},{"text":"on grass."}]}}]}}"#;
    let reply = parse_native(body, 200, None).unwrap();
    assert_eq!(reply.text, "A cat on grass.");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        reply.usage,
        Usage {
            prompt_tokens: 1112,
            completion_tokens: 91,
            total_tokens: 1203
        }
    );
    assert_eq!(reply.request_id.as_deref(), Some("b6d60f91"));

    let no_total = br#"{"output":{"choices":[{"message":{"content":[{"text":"x"}]}}]},"usage":{"input_tokens":2,"output_tokens":3}}"#;
    assert_eq!(
        parse_native(no_total, 200, None)
            .unwrap()
            .usage
            .total_tokens,
        5
    );
}

/// Token counts are the service's numbers: summing two of them saturates, never overflows.
#[test]
fn huge_token_counts_saturate() {
    let max = u64::MAX;
    let compat = format!(
        r#"{{"choices":[{{"message":{{"content":"a"}}}}],"usage":{{"prompt_tokens":{max},"completion_tokens":1}}}}"#
    );
    let reply = parse_compatible(compat.as_bytes(), 200, None).unwrap();
    assert_eq!(reply.usage.total_tokens, max);
    let native = format!(
        r#"{{"output":{{"choices":[{{"message":{{"content":[]}}}}]}},"usage":{{"input_tokens":{max},"output_tokens":{max}}}}}"#
    );
    let reply = parse_native(native.as_bytes(), 200, None).unwrap();
    assert_eq!(reply.usage.total_tokens, max);
}

#[test]
fn truncated_or_unexpected_replies_are_retryable() {
    for body in [
        &br#"{"choices":[{"message":{"content":"par"#[..],
        b"",
        br#"{"choices":[]}"#,
        b"<html>",
    ] {
        let err = parse_compatible(body, 200, None).unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(err.code, "invalid_body");
    }
    for body in [
        &br#"{"output":{"choices":"#[..],
        br#"{"request_id":"r"}"#,
        br#"{"output":{"choices":[]}}"#,
    ] {
        assert!(parse_native(body, 200, None).unwrap_err().is_retryable());
    }
}

mod http {
    use super::*;
    use crate::dashscope::ErrorKind;
    use crate::dashscope::testing::{TEST_KEY, client, serve, serve_raw};
    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use std::sync::{Arc, Mutex};

    type Seen = Arc<Mutex<Vec<(String, HeaderMap, serde_json::Value)>>>;

    async fn model(
        State(seen): State<Seen>,
        uri: Uri,
        headers: HeaderMap,
        body: String,
    ) -> Response {
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let path = uri.path().to_owned();
        seen.lock()
            .unwrap()
            .push((path.clone(), headers, json.clone()));
        if json["model"] == "unauthorized" {
            let body = r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"},"request_id":"e1"}"#;
            return (StatusCode::UNAUTHORIZED, body).into_response();
        }
        if path.starts_with("/compatible-mode") {
            axum::Json(json!({"id":"chatcmpl-1","choices":[{"message":{"role":"assistant","content":"compat says hi"},
                "finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}))
            .into_response()
        } else {
            axum::Json(json!({"request_id":"n-1","output":{"choices":[{"finish_reason":"stop","message":{"role":"assistant",
                "content":[{"text":"native says hi"}]}}]},"usage":{"input_tokens":5,"output_tokens":6}}))
            .into_response()
        }
    }

    async fn fake() -> (Seen, String) {
        let seen = Seen::default();
        let app = Router::new().fallback(post(model)).with_state(seen.clone());
        (seen.clone(), serve(app).await)
    }

    #[tokio::test]
    async fn both_apis_send_the_oss_header_and_parse_replies() {
        let (seen, root) = fake().await;
        let c = client(&format!("{root}/api/v1/"));
        let req = request(media(MediaKind::Image, "oss://d/k_a.png", None), None);

        let reply = c.call_model(Api::Compatible, &req).await.unwrap();
        assert_eq!(reply.text, "compat says hi");
        assert_eq!(reply.usage.total_tokens, 7);
        let reply = c.call_model(Api::Native, &req).await.unwrap();
        assert_eq!(reply.text, "native says hi");
        assert_eq!(
            reply.usage,
            Usage {
                prompt_tokens: 5,
                completion_tokens: 6,
                total_tokens: 11
            }
        );
        assert_eq!(reply.request_id.as_deref(), Some("n-1"));

        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, COMPATIBLE_PATH);
        assert_eq!(seen[1].0, NATIVE_PATH);
        for (_, headers, _) in seen.iter() {
            assert_eq!(headers["x-dashscope-ossresourceresolve"], "enable");
            assert_eq!(
                headers["authorization"],
                format!("Bearer {TEST_KEY}").as_str()
            );
            assert_eq!(headers["content-type"], "application/json");
        }
        assert_eq!(seen[0].2, compatible_body(&req));
        assert_eq!(seen[1].2, native_body(&req));
    }

    #[tokio::test]
    async fn errors_are_classified_without_the_key() {
        let (_seen, root) = fake().await;
        let mut req = request(None, None);
        req.model = "unauthorized".into();
        let e = client(&root)
            .call_model(Api::Compatible, &req)
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.code.as_str(), e.status),
            (ErrorKind::Unauthorized, "invalid_api_key", Some(401))
        );
        assert_eq!(e.request_id.as_deref(), Some("e1"));
        assert!(!format!("{e} {e:?}").contains(TEST_KEY));
    }

    /// Finding 9 of issue 8: a gateway that quotes the Authorization header into the answer,
    /// the finish reason and the request id (body and header) leaves no key in the reply.
    #[tokio::test]
    async fn a_reply_quoting_the_key_is_scrubbed() {
        async fn echo(headers: HeaderMap, uri: Uri) -> Response {
            let auth = headers["authorization"].to_str().unwrap().to_owned();
            let body = if uri.path().starts_with("/compatible-mode") {
                json!({"choices": [{"message": {"content": format!("said {auth}")},
                    "finish_reason": auth}]})
            } else {
                json!({"request_id": auth, "output": {"choices": [{"finish_reason": auth,
                    "message": {"content": [{"text": format!("said {auth}")}]}}]}})
            };
            ([("x-request-id", auth)], axum::Json(body)).into_response()
        }
        let root = serve(Router::new().fallback(post(echo))).await;
        for api in [Api::Compatible, Api::Native] {
            let reply = client(&root)
                .call_model(api, &request(None, None))
                .await
                .unwrap();
            assert_eq!(reply.text, "said Bearer ****");
            assert_eq!(reply.finish_reason.as_deref(), Some("Bearer ****"));
            assert_eq!(reply.request_id.as_deref(), Some("Bearer ****"));
        }
    }

    #[tokio::test]
    async fn a_truncated_200_is_a_retryable_network_error() {
        let root = serve_raw(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\nconnection: close\r\n\r\n{\"choices\":[{\"message\":",
        )
        .await;
        for api in [Api::Compatible, Api::Native] {
            let e = client(&root)
                .call_model(api, &request(None, None))
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Network, "{e}");
            assert!(e.is_retryable());
        }
        // A complete 200 that is not the expected JSON: same class.
        let root =
            serve_raw("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}").await;
        let e = client(&root)
            .call_model(Api::Native, &request(None, None))
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind, e.code.as_str()),
            (ErrorKind::Network, "invalid_body")
        );
    }

    #[tokio::test]
    async fn request_timeout_applies_per_request() {
        // Accepts the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let c = crate::dashscope::Client::new(
            crate::dashscope::ApiKey::new(TEST_KEY).unwrap(),
            crate::dashscope::ClientConfig {
                base_url: format!("http://{addr}"),
                request_timeout: std::time::Duration::from_millis(50),
                ..Default::default()
            },
        )
        .unwrap();
        let e = c
            .call_model(Api::Compatible, &request(None, None))
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Network, "timeout"));
        let e = c.get_policy("m").await.unwrap_err();
        assert_eq!(e.code, "timeout");
    }
}
