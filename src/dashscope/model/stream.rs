//! Streamed model calls, the same for both APIs: ask for the answer as server-sent events,
//! read them as they come ([`super::sse`]) and hand each to the API's [`Mapping`], which joins
//! the pieces into one [`ModelReply`].
//!
//! Also owns what dashbatch knows about models that answer only as a stream: the families
//! known to ([`answers_only_as_stream`]) and the service's refusal of a non-stream call
//! ([`refused_without_stream`]).
//!
//! A stream is an answer only once its last event has arrived (`[DONE]` in compatible mode,
//! a frame with a finish reason in native): one that ends before is a `Network` error
//! (retried, never recorded). An error event after HTTP 200 is classified as the same error
//! given as a status ([`in_stream_error`]).

use std::time::SystemTime;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap};

use super::sse::{Decoder, Frame};
use super::{Api, Mapping, ModelReply, ModelRequest, OSS_RESOLVE, Usage};
use crate::dashscope::body::BodyLimit;
use crate::dashscope::client::Client;
use crate::dashscope::error::{ApiError, ErrorKind};
use crate::failure::FailureCode;

/// When a model call asks for a stream (`--stream`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Streaming {
    /// Stream the models that answer only as a stream: those known
    /// ([`answers_only_as_stream`]) and those the service refuses without one.
    #[default]
    Auto,
    /// Stream every call (a long answer outlives the service's 300 s non-stream limit).
    Always,
    /// Never stream: a streaming-only model's rows fail with the service's refusal.
    Never,
}

/// Models known to answer only as a stream: the Omni, QVQ and QwQ families and the
/// `*-thinking` models (protocol notes §5). Others are learnt from the service's refusal.
pub fn answers_only_as_stream(model: &str) -> bool {
    let model = model.to_ascii_lowercase();
    model.contains("omni")
        || model.starts_with("qvq")
        || model.starts_with("qwq")
        || model.contains("-thinking")
}

/// The service's 400 for a non-stream call to a streaming-only model. The notes give it no
/// code of its own (compatible mode says `invalid_parameter_error`, which every bad parameter
/// shares, and Omni says `code: null`), so this is the one place where dashbatch reads a
/// message to decide: the status and the code first, then the message's words.
pub fn refused_without_stream(err: &ApiError) -> bool {
    let code = err.code.as_str();
    err.status == Some(400)
        && matches!(
            code,
            "invalid_parameter_error" | "invalid_request_error" | "InvalidParameter"
        )
        && (err.message.contains("only support stream mode")
            || err.message.contains("only support with stream=true"))
}

/// What a stream has said so far.
#[derive(Debug, Default)]
pub(super) struct Partial {
    pub text: String,
    pub reasoning: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// An explicit `request_id` in a frame.
    pub request_id: Option<String>,
    /// Compatible mode's chunk `id` (`chatcmpl-…`), the last resort for a request id.
    pub chunk_id: Option<String>,
}

impl Partial {
    fn reply(self, header_id: Option<String>) -> ModelReply {
        ModelReply {
            text: self.text,
            reasoning: (!self.reasoning.is_empty()).then_some(self.reasoning),
            finish_reason: self.finish_reason,
            usage: self.usage.unwrap_or_default(),
            request_id: self.request_id.or(header_id).or(self.chunk_id),
        }
    }
}

impl Client {
    /// One attempt at a model call whose answer comes as a stream.
    pub async fn call_model_streamed(
        &self,
        api: Api,
        request: &ModelRequest,
    ) -> Result<ModelReply, ApiError> {
        let secret = self.secret();
        read_stream(self, api.mapping(), request)
            .await
            .map(|reply| reply.redact(secret))
            .map_err(|err| err.redact(secret))
    }
}

async fn read_stream(
    client: &Client,
    mapping: &dyn Mapping,
    request: &ModelRequest,
) -> Result<ModelReply, ApiError> {
    let mut http = client
        .inner
        .http
        .post(client.url(mapping.path()))
        .header(AUTHORIZATION, client.inner.auth.clone())
        .header(OSS_RESOLVE, "enable")
        .header(ACCEPT, "text/event-stream")
        .json(&mapping.stream_body(request));
    for (name, value) in mapping.stream_headers() {
        http = http.header(*name, *value);
    }
    let (status, headers, mut body) = client.open_stream(http).await?;
    let header_id = header_request_id(&headers);
    if !is_event_stream(&headers) {
        // A server (or a gateway) that answered the whole reply at once: read it as one.
        let mut whole = Vec::new();
        while let Some(chunk) = body.chunk().await? {
            whole.extend_from_slice(&chunk);
        }
        return mapping.parse(&whole, status, header_id);
    }
    let mut decoder = Decoder::default();
    let mut frames = Vec::new();
    let mut answer = Partial::default();
    while let Some(chunk) = body.chunk().await? {
        decoder.push(&chunk, &mut frames);
        for frame in frames.drain(..) {
            if mapping.read_frame(&frame, &mut answer)? {
                return Ok(answer.reply(header_id));
            }
        }
    }
    Err(ApiError {
        kind: ErrorKind::Network,
        status: Some(status),
        code: FailureCode::Body.into(),
        message: format!(
            "the {} stream ended before its last event ({} characters of answer so far, \
             not kept)",
            BodyLimit::Model.what(),
            answer.text.chars().count()
        ),
        request_id: answer.request_id.or(header_id),
        retry_after: None,
    })
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("text/event-stream"))
}

pub(super) fn header_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-request-id", "x-dashscope-request-id"]
        .iter()
        .find_map(|n| headers.get(*n)?.to_str().ok())
        .map(str::to_owned)
}

/// An error event inside a stream that opened with HTTP 200, classified as the same error
/// given as a status: the frame's `:HTTP_STATUS/` when it has one (native), else the status
/// the service gives that code (compatible mode names no status).
pub(super) fn in_stream_error(frame: &Frame) -> ApiError {
    let status = frame
        .status
        .filter(|s| *s >= 400)
        .unwrap_or_else(|| status_of_code(&error_code(&frame.data)));
    ApiError::from_response(
        status,
        &HeaderMap::new(),
        frame.data.as_bytes(),
        SystemTime::now(),
    )
}

/// The code of an error body in either shape (`error.code`, else `error.type`; or `code`).
fn error_code(data: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
    let error = value.get("error").unwrap_or(&value);
    ["code", "type"]
        .iter()
        .find_map(|k| error.get(*k)?.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// The status each code comes with when it is an answer's status (protocol notes §6). A code
/// not listed is taken as a refusal (400): the row fails with the service's own code and
/// message, rather than a request the service turned down being sent again.
fn status_of_code(code: &str) -> u16 {
    match code {
        c if c.starts_with("Throttling") => 429,
        "limit_requests"
        | "limit_burst_rate"
        | "insufficient_quota"
        | "CommodityNotPurchased"
        | "PrepaidBillOverdue"
        | "PostpaidBillOverdue" => 429,
        "InvalidApiKey" | "invalid_api_key" => 401,
        "Model.AccessDenied" | "AllocationQuota.FreeTierOnly" => 403,
        "ModelNotFound" | "model_not_found" | "model_not_supported" => 404,
        c if c.starts_with("InternalError") => 500,
        "SystemError" | "ModelServiceFailed" | "RequestTimeOut" | "ModelServingError"
        | "internal_error" => 500,
        "ModelUnavailable" => 503,
        _ => 400,
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!((e.kind, e.status), (ErrorKind::Rejected, Some(400)));
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
}
