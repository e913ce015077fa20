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
mod tests;
