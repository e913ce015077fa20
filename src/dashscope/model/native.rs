//! The native API: `POST {root}/api/v1/services/aigc/multimodal-generation/generation`.
//! Messages sit under `input`, every message's content is a list of one-key items
//! (`{"image": url}`, `{"text": "…"}`), the media first, and `parameters` is its own object.

use serde::{Deserialize, Serialize};

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
