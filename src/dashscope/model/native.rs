//! The native API: `POST {root}/api/v1/services/aigc/multimodal-generation/generation`.
//! Messages sit under `input`, every message's content is a list of one-key items
//! (`{"image": url}`, `{"text": "…"}`), the media first, and `parameters` is its own object.

use serde::{Deserialize, Serialize};

use super::sse::Frame;
use super::stream::{Partial, in_stream_error};
use super::{ApiError, Mapping, ModelReply, ModelRequest, ReplyMessage, Usage, content_text};
use crate::dashscope::media::MediaKind;

pub(super) const PATH: &str = "/api/v1/services/aigc/multimodal-generation/generation";

/// The native [`Mapping`].
pub(super) struct Native;

impl Mapping for Native {
    fn path(&self) -> &'static str {
        PATH
    }

    fn body(&self, request: &ModelRequest) -> serde_json::Value {
        let mut messages = Vec::new();
        if let Some(system) = &request.system {
            messages.push(Message {
                role: "system",
                content: vec![Item::Text(system)],
            });
        }
        let mut content: Vec<Item> = request
            .media
            .iter()
            .map(|media| {
                let url = media.url.as_str();
                match media.kind {
                    MediaKind::Image => Item::Image(url),
                    MediaKind::Video => Item::Video(url),
                    MediaKind::Audio => Item::Audio(url),
                }
            })
            .collect();
        content.push(Item::Text(&request.prompt));
        messages.push(Message {
            role: "user",
            content,
        });
        serde_json::to_value(Request {
            model: &request.model,
            input: Input { messages },
            parameters: &request.params,
        })
        .unwrap_or(serde_json::Value::Null)
    }

    fn parse(
        &self,
        body: &[u8],
        status: u16,
        header_id: Option<String>,
    ) -> Result<ModelReply, ApiError> {
        let reply: Reply = serde_json::from_slice(body)
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
            reasoning: choice.message.reasoning(),
            // The native API says "null" (a string) while a reply is unfinished in streams.
            finish_reason: choice.finish_reason.filter(|r| r != "null"),
            usage: Usage::counted(usage.input_tokens, usage.output_tokens, usage.total_tokens),
            request_id,
        })
    }

    fn stream_body(&self, request: &ModelRequest) -> serde_json::Value {
        let mut body = self.body(request);
        // Each frame then carries only what is new; some models refuse `false`.
        if let Some(parameters) = body.get_mut("parameters").and_then(|p| p.as_object_mut()) {
            parameters.insert("incremental_output".to_owned(), true.into());
        }
        body
    }

    fn stream_headers(&self) -> &'static [(&'static str, &'static str)] {
        &[("X-DashScope-SSE", "enable")]
    }

    fn read_frame(&self, frame: &Frame, answer: &mut Partial) -> Result<bool, ApiError> {
        let failed = frame.event.as_deref() == Some("error")
            || frame.status.is_some_and(|s| !(200..300).contains(&s));
        if failed {
            return Err(in_stream_error(frame));
        }
        let reply: StreamFrame = serde_json::from_str(&frame.data)
            .map_err(|e| ApiError::invalid_body(200, answer.request_id.clone(), e))?;
        if reply.output.is_none() && reply.code.as_deref().is_some_and(|c| !c.is_empty()) {
            return Err(in_stream_error(frame));
        }
        answer.request_id = reply.request_id.or(answer.request_id.take());
        // `usage` is the running total in every frame: the last one's is the answer's.
        if let Some(u) = reply.usage {
            answer.usage = Some(Usage::counted(
                u.input_tokens,
                u.output_tokens,
                u.total_tokens,
            ));
        }
        let Some(choice) = reply.output.and_then(|o| o.choices.into_iter().next()) else {
            return Ok(false);
        };
        answer.text.push_str(&content_text(&choice.message.content));
        if let Some(reasoning) = choice.message.reasoning_content {
            answer.reasoning.push_str(&reasoning);
        }
        // "null" (a string) until the last frame.
        match choice
            .finish_reason
            .filter(|r| !r.is_empty() && r != "null")
        {
            Some(reason) => {
                answer.finish_reason = Some(reason);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

// ---- Request -----------------------------------------------------------------------------

#[derive(Serialize)]
struct Request<'a> {
    model: &'a str,
    input: Input<'a>,
    /// The generation parameters, as given (empty: the service's defaults).
    parameters: &'a serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Input<'a> {
    messages: Vec<Message<'a>>,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Vec<Item<'a>>,
}

/// Serializes as a one-key object: `{"image": url}`, `{"text": "…"}`.
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Item<'a> {
    Image(&'a str),
    Video(&'a str),
    Audio(&'a str),
    Text(&'a str),
}

// ---- Reply -------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    request_id: Option<String>,
    output: Option<Output>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
}

#[derive(Deserialize)]
struct Output {
    #[serde(default)]
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    finish_reason: Option<String>,
    message: ReplyMessage,
}

#[derive(Deserialize, Default)]
struct ReplyUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// One frame of a stream: [`Reply`] with each message's reasoning, or an error body.
#[derive(Deserialize)]
struct StreamFrame {
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    code: Option<String>,
    output: Option<StreamOutput>,
    #[serde(default)]
    usage: Option<ReplyUsage>,
}

#[derive(Deserialize)]
struct StreamOutput {
    #[serde(default)]
    choices: Vec<StreamChoice>,
}

#[derive(Deserialize)]
struct StreamChoice {
    #[serde(default)]
    finish_reason: Option<String>,
    message: StreamMessage,
}

#[derive(Deserialize)]
struct StreamMessage {
    #[serde(default)]
    content: serde_json::Value,
    #[serde(default)]
    reasoning_content: Option<String>,
}
