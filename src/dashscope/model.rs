//! The two model-call APIs: request and reply shapes, and the call itself.
//!
//! - Compatible mode: `POST {root}/compatible-mode/v1/chat/completions`, the OpenAI shape.
//! - Native: `POST {root}/api/v1/services/aigc/multimodal-generation/generation`.
//!
//! Both always send `X-DashScope-OssResourceResolve: enable`: without it the service cannot
//! resolve `oss://` URLs, and it is harmless for `http(s)://` ones.
//!
//! Owns the mapping of one prompt, an optional system prompt and at most one media input to
//! each API's content parts, and reading text, finish reason and token usage back. Reply
//! parsing is lenient about what it does not need (content as a string or a list of parts,
//! missing usage) and strict about what it does (a choice must be there): a 200 without one
//! is classified `Network`, since a truncated body is the realistic cause.
//!
//! Deliberately not here: streaming replies, generation parameters, tool calls.

use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};

use super::auth::scrub;
use super::body::BodyLimit;
use super::client::Client;
use super::error::{ApiError, truncate};
use super::media::{Media, MediaKind};

/// Which of the two HTTP APIs to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI-compatible chat completions (the default in the CLI).
    Compatible,
    /// DashScope's native multimodal-generation API.
    Native,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRequest {
    pub model: String,
    pub prompt: String,
    pub system: Option<String>,
    pub media: Option<Media>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReply {
    pub text: String,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub request_id: Option<String>,
}

const OSS_RESOLVE: &str = "X-DashScope-OssResourceResolve";
const COMPATIBLE_PATH: &str = "/compatible-mode/v1/chat/completions";
const NATIVE_PATH: &str = "/api/v1/services/aigc/multimodal-generation/generation";

impl Client {
    /// One attempt at a model call.
    pub async fn call_model(
        &self,
        api: Api,
        request: &ModelRequest,
    ) -> Result<ModelReply, ApiError> {
        let (path, body) = match api {
            Api::Compatible => (COMPATIBLE_PATH, compatible_body(request)),
            Api::Native => (NATIVE_PATH, native_body(request)),
        };
        let http = self
            .inner
            .http
            .post(self.url(path))
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(OSS_RESOLVE, "enable")
            .json(&body)
            .timeout(self.inner.config.request_timeout);
        let (status, headers, bytes) = self.send(http, BodyLimit::Model).await?;
        let header_id = ["x-request-id", "x-dashscope-request-id"]
            .iter()
            .find_map(|n| headers.get(*n)?.to_str().ok())
            .map(str::to_owned);
        let reply = match api {
            Api::Compatible => parse_compatible(&bytes, status, header_id),
            Api::Native => parse_native(&bytes, status, header_id),
        };
        let secret = self.secret();
        reply
            .map(|reply| reply.redact(secret))
            .map_err(|err| err.redact(secret))
    }
}

impl ModelReply {
    /// Every text copied from the reply, with the key scrubbed out (a gateway that quotes
    /// the Authorization header back could put it in any of them). The answer itself is
    /// kept whole; the short fields are also cut to a length a results line can carry.
    fn redact(self, secret: &str) -> ModelReply {
        const MAX_SHORT: usize = 128;
        let short = |text: &str| truncate(&scrub(text, secret), MAX_SHORT);
        ModelReply {
            text: scrub(&self.text, secret),
            finish_reason: self.finish_reason.as_deref().map(short),
            request_id: self.request_id.as_deref().map(short),
            usage: self.usage,
        }
    }
}

// ---- Compatible mode ---------------------------------------------------------------------

#[derive(Serialize)]
struct CompatibleRequest<'a> {
    model: &'a str,
    messages: Vec<CompatibleMessage<'a>>,
}

#[derive(Serialize)]
struct CompatibleMessage<'a> {
    role: &'static str,
    content: CompatibleContent<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum CompatibleContent<'a> {
    Text(&'a str),
    Parts(Vec<CompatiblePart<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CompatiblePart<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: UrlRef<'a> },
    VideoUrl { video_url: UrlRef<'a> },
    InputAudio { input_audio: AudioRef<'a> },
}

#[derive(Serialize)]
struct UrlRef<'a> {
    url: &'a str,
}

#[derive(Serialize)]
struct AudioRef<'a> {
    data: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'a str>,
}

fn compatible_body(request: &ModelRequest) -> serde_json::Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(CompatibleMessage {
            role: "system",
            content: CompatibleContent::Text(system),
        });
    }
    let mut parts = Vec::new();
    // Media before text, as in Model Studio's Qwen-VL examples.
    if let Some(media) = &request.media {
        let url = media.url.as_str();
        parts.push(match media.kind {
            MediaKind::Image => CompatiblePart::ImageUrl {
                image_url: UrlRef { url },
            },
            // `video_url` for a single video file (unverified for files in the documentation; a
            // frame list would be `{"type":"video","video":[..]}`, which we never send).
            MediaKind::Video => CompatiblePart::VideoUrl {
                video_url: UrlRef { url },
            },
            MediaKind::Audio => CompatiblePart::InputAudio {
                input_audio: AudioRef {
                    data: url,
                    format: media.format.as_deref(),
                },
            },
        });
    }
    parts.push(CompatiblePart::Text {
        text: &request.prompt,
    });
    messages.push(CompatibleMessage {
        role: "user",
        content: CompatibleContent::Parts(parts),
    });
    // Serializing these plain structs to a Value cannot fail (string keys only).
    serde_json::to_value(CompatibleRequest {
        model: &request.model,
        messages,
    })
    .unwrap_or(serde_json::Value::Null)
}

#[derive(Deserialize)]
struct CompatibleReply {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    choices: Vec<CompatibleChoice>,
    #[serde(default)]
    usage: Option<CompatibleUsage>,
}

#[derive(Deserialize)]
struct CompatibleChoice {
    message: ReplyMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    content: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct CompatibleUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
}

fn parse_compatible(
    body: &[u8],
    status: u16,
    header_id: Option<String>,
) -> Result<ModelReply, ApiError> {
    let reply: CompatibleReply = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body(status, header_id.clone(), e))?;
    // DashScope puts its request id in `id` (`chatcmpl-<uuid>`) and in a header; prefer an
    // explicit `request_id`, then the header, then `id`.
    let request_id = reply.request_id.or(header_id).or(reply.id);
    let Some(choice) = reply.choices.into_iter().next() else {
        return Err(ApiError::invalid_body(
            status,
            request_id,
            "no choices in the reply",
        ));
    };
    let usage = reply.usage.unwrap_or_default();
    Ok(ModelReply {
        text: content_text(&choice.message.content),
        finish_reason: choice.finish_reason,
        usage: Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage
                .total_tokens
                .unwrap_or(usage.prompt_tokens.saturating_add(usage.completion_tokens)),
        },
        request_id,
    })
}

// ---- Native ------------------------------------------------------------------------------

#[derive(Serialize)]
struct NativeRequest<'a> {
    model: &'a str,
    input: NativeInput<'a>,
    /// Sent empty: the defaults are what a batch wants, and the shape says it is there.
    parameters: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct NativeInput<'a> {
    messages: Vec<NativeMessage<'a>>,
}

#[derive(Serialize)]
struct NativeMessage<'a> {
    role: &'static str,
    content: Vec<NativeItem<'a>>,
}

/// Serializes as a one-key object: `{"image": url}`, `{"text": "…"}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum NativeItem<'a> {
    Image(&'a str),
    Video(&'a str),
    Audio(&'a str),
    Text(&'a str),
}

fn native_body(request: &ModelRequest) -> serde_json::Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(NativeMessage {
            role: "system",
            content: vec![NativeItem::Text(system)],
        });
    }
    let mut content = Vec::new();
    if let Some(media) = &request.media {
        let url = media.url.as_str();
        content.push(match media.kind {
            MediaKind::Image => NativeItem::Image(url),
            MediaKind::Video => NativeItem::Video(url),
            MediaKind::Audio => NativeItem::Audio(url),
        });
    }
    content.push(NativeItem::Text(&request.prompt));
    messages.push(NativeMessage {
        role: "user",
        content,
    });
    serde_json::to_value(NativeRequest {
        model: &request.model,
        input: NativeInput { messages },
        parameters: serde_json::Map::new(),
    })
    .unwrap_or(serde_json::Value::Null)
}

#[derive(Deserialize)]
struct NativeReply {
    #[serde(default)]
    request_id: Option<String>,
    output: Option<NativeOutput>,
    #[serde(default)]
    usage: Option<NativeUsage>,
}

#[derive(Deserialize)]
struct NativeOutput {
    #[serde(default)]
    choices: Vec<NativeChoice>,
}

#[derive(Deserialize)]
struct NativeChoice {
    #[serde(default)]
    finish_reason: Option<String>,
    message: ReplyMessage,
}

#[derive(Deserialize, Default)]
struct NativeUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
}

fn parse_native(
    body: &[u8],
    status: u16,
    header_id: Option<String>,
) -> Result<ModelReply, ApiError> {
    let reply: NativeReply = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_body(status, header_id.clone(), e))?;
    let request_id = reply.request_id.or(header_id);
    let Some(choice) = reply.output.and_then(|o| o.choices.into_iter().next()) else {
        return Err(ApiError::invalid_body(
            status,
            request_id,
            "no output.choices in the reply",
        ));
    };
    let usage = reply.usage.unwrap_or_default();
    Ok(ModelReply {
        text: content_text(&choice.message.content),
        // The native API says "null" (a string) while a reply is unfinished in streams.
        finish_reason: choice.finish_reason.filter(|r| r != "null"),
        usage: Usage {
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            total_tokens: usage
                .total_tokens
                .unwrap_or(usage.input_tokens.saturating_add(usage.output_tokens)),
        },
        request_id,
    })
}

/// The text of a reply message: a plain string, or the `text` items of a list of parts
/// (native replies mix them with non-text items such as `image_hw`), joined.
fn content_text(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|item| item.get("text")?.as_str())
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
