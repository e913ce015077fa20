//! Compatible mode: `POST {root}/compatible-mode/v1/chat/completions`, the OpenAI chat
//! completions shape. The system prompt is a plain string message; the user message is a
//! list of parts, the media first, then the prompt.

use serde::{Deserialize, Serialize};

use super::sse::Frame;
use super::stream::{Partial, in_stream_error};
use super::{ApiError, Mapping, ModelReply, ModelRequest, ReplyMessage, Usage, content_text};
use crate::dashscope::media::MediaKind;

pub(super) const PATH: &str = "/compatible-mode/v1/chat/completions";

/// The compatible-mode [`Mapping`].
pub(super) struct Compatible;

impl Mapping for Compatible {
    fn path(&self) -> &'static str {
        PATH
    }

    fn body(&self, request: &ModelRequest) -> serde_json::Value {
        let mut messages = Vec::new();
        if let Some(system) = &request.system {
            messages.push(Message {
                role: "system",
                content: Content::Text(system),
            });
        }
        // Media before text, as in Model Studio's Qwen-VL examples.
        let mut parts: Vec<Part> = request
            .media
            .iter()
            .map(|media| {
                let url = media.url.as_str();
                match media.kind {
                    MediaKind::Image => Part::ImageUrl {
                        image_url: UrlRef { url },
                    },
                    // `video_url` for a single video file (unverified for files in the
                    // documentation; a frame list would be `{"type":"video","video":[..]}`,
                    // which we never send).
                    MediaKind::Video => Part::VideoUrl {
                        video_url: UrlRef { url },
                    },
                    MediaKind::Audio => Part::InputAudio {
                        input_audio: AudioRef {
                            data: url,
                            format: media.format.as_deref(),
                        },
                    },
                }
            })
            .collect();
        parts.push(Part::Text {
            text: &request.prompt,
        });
        messages.push(Message {
            role: "user",
            content: Content::Parts(parts),
        });
        // Serializing these plain structs to a Value cannot fail (string keys only).
        let own = serde_json::to_value(Request {
            model: &request.model,
            messages,
        })
        .unwrap_or(serde_json::Value::Null);
        // Parameters sit at the top level, beside the request's own keys, which win.
        let mut body = request.params.clone();
        if let serde_json::Value::Object(own) = own {
            body.extend(own);
        }
        serde_json::Value::Object(body)
    }

    fn parse(
        &self,
        body: &[u8],
        status: u16,
        header_id: Option<String>,
    ) -> Result<ModelReply, ApiError> {
        let reply: Reply = serde_json::from_slice(body)
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
            reasoning: choice.message.reasoning(),
            finish_reason: choice.finish_reason,
            usage: Usage::counted(
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
            ),
            request_id,
        })
    }

    fn stream_body(&self, request: &ModelRequest) -> serde_json::Value {
        let mut body = self.body(request);
        if let Some(fields) = body.as_object_mut() {
            fields.insert("stream".to_owned(), true.into());
            // Without it the stream carries no token counts at all.
            fields.insert(
                "stream_options".to_owned(),
                serde_json::json!({"include_usage": true}),
            );
        }
        body
    }

    fn stream_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[]
    }

    fn read_frame(&self, frame: &Frame, answer: &mut Partial) -> Result<bool, ApiError> {
        if frame.data.trim() == "[DONE]" {
            return Ok(true);
        }
        let chunk: Chunk = serde_json::from_str(&frame.data)
            .map_err(|e| ApiError::invalid_body(200, answer.request_id.clone(), e))?;
        if chunk
            .error
            .as_ref()
            .is_some_and(serde_json::Value::is_object)
        {
            return Err(in_stream_error(frame));
        }
        answer.request_id = chunk.request_id.or(answer.request_id.take());
        answer.chunk_id = chunk.id.or(answer.chunk_id.take());
        for choice in chunk.choices.into_iter().take(1) {
            answer.text.push_str(&content_text(&choice.delta.content));
            if let Some(reasoning) = choice.delta.reasoning_content {
                answer.reasoning.push_str(&reasoning);
            }
            if choice.finish_reason.is_some() {
                answer.finish_reason = choice.finish_reason;
            }
        }
        // Only the last chunk has usage (include_usage); the others say `null`.
        if let Some(u) = chunk.usage {
            answer.usage = Some(Usage::counted(
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
            ));
        }
        Ok(false)
    }
}

// ---- Request -----------------------------------------------------------------------------

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Content<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    Text(&'a str),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
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

// ---- Reply -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ReplyMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct ReplyUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// One `chat.completion.chunk` of a stream (or its error object).
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    choices: Vec<ChunkChoice>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    #[serde(default)]
    delta: Delta,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: serde_json::Value,
    #[serde(default)]
    reasoning_content: Option<String>,
}
