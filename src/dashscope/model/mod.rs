//! Model calls: what a request asks ([`ModelRequest`]), what a reply says ([`ModelReply`]),
//! and the call itself, which is the same for both HTTP APIs.
//!
//! Each API is one [`Mapping`] of a request to a path and a body, and of an answer back to a
//! reply:
//! - [`compatible`]: `POST {root}/compatible-mode/v1/chat/completions`, the OpenAI shape.
//! - [`native`]: `POST {root}/api/v1/services/aigc/multimodal-generation/generation`.
//!
//! Both always send `X-DashScope-OssResourceResolve: enable`: without it the service cannot
//! resolve `oss://` URLs, and it is harmless for `http(s)://` ones.
//!
//! Owns the mapping of one prompt, an optional system prompt and a list of media inputs to
//! each API's content parts, and reading text, finish reason and token usage back. Reply
//! parsing is lenient about what it does not need (content as a string or a list of parts,
//! missing usage) and strict about what it does (a choice must be there): a 200 without one
//! is classified `Network`, since a truncated body is the realistic cause.
//!
//! A call asks for its answer whole ([`Client::call_model`]) or as a stream of events
//! ([`Client::call_model_streamed`], in [`stream`]); each mapping says how its API asks for a
//! stream and reads its events. Which calls stream is the caller's choice ([`Streaming`]).
//!
//! Generation parameters pass through as the service spells them: at the top level of a
//! compatible body, under `parameters` in a native one. The names this module sets itself
//! ([`RESERVED_PARAMS`]) are refused before a run starts ([`check_param_name`]). A thinking
//! model's reasoning (`reasoning_content` beside the answer, or in a stream's deltas) is read
//! into [`ModelReply::reasoning`].
//!
//! Deliberately not here: tool calls.

mod compatible;
mod native;
mod sse;
mod stream;

pub use stream::{Streaming, answers_only_as_stream, refused_without_stream};

use reqwest::header::AUTHORIZATION;
use serde::Deserialize;

use super::auth::scrub;
use super::body::BodyLimit;
use super::client::Client;
use super::error::{ApiError, truncate};
use super::media::Media;

/// Which of the two HTTP APIs to call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI-compatible chat completions (the default in the CLI).
    Compatible,
    /// DashScope's native multimodal-generation API.
    Native,
}

impl Api {
    /// The one place an [`Api`] picks its mapping.
    fn mapping(self) -> &'static dyn Mapping {
        match self {
            Api::Compatible => &compatible::Compatible,
            Api::Native => &native::Native,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRequest {
    pub model: String,
    pub prompt: String,
    pub system: Option<String>,
    /// The media inputs, in the order the model is to see them, all before the prompt.
    pub media: Vec<Media>,
    /// Generation parameters (`temperature`, `max_tokens`, …), as the service names them.
    /// None of them is one of [`RESERVED_PARAMS`]; a body builder puts its own keys last, so
    /// that one slipping through could never replace them.
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Body keys the mappings set themselves, in either API: a generation parameter of one of
/// these names would replace the request's own, so it is refused.
pub const RESERVED_PARAMS: [&str; 7] = [
    "model",
    "messages",
    "input",
    "parameters",
    "stream",
    "stream_options",
    "incremental_output",
];

/// Whether `name` may be given as a generation parameter; the error says why not and what
/// to do instead.
pub fn check_param_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a parameter needs a name, as in temperature=0.2".to_owned());
    }
    if RESERVED_PARAMS.contains(&name) {
        return Err(format!(
            "{name:?} is set by dashbatch itself and cannot be given as a parameter \
             (reserved: {}); the model and the messages come from the manifest",
            RESERVED_PARAMS.join(", ")
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// Usage as a reply counts it; a missing total is the sum of the two counts (saturating:
    /// they are the service's numbers).
    fn counted(prompt_tokens: u64, completion_tokens: u64, total_tokens: Option<u64>) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: total_tokens.unwrap_or(prompt_tokens.saturating_add(completion_tokens)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelReply {
    pub text: String,
    /// A thinking model's reasoning (`reasoning_content`), when the reply carries one.
    pub reasoning: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Usage,
    pub request_id: Option<String>,
}

/// One model API's request/reply mapping: where a call goes, what it sends and how its
/// answer reads. A seam because there are two real implementations, and the features still
/// to come (streaming, generation parameters) differ between them.
trait Mapping: Sync {
    /// The path under the service root.
    fn path(&self) -> &'static str;

    /// The JSON body that asks `request`.
    fn body(&self, request: &ModelRequest) -> serde_json::Value;

    /// Reads a 2xx answer's body. `header_id` is the request id its headers carry.
    fn parse(
        &self,
        body: &[u8],
        status: u16,
        header_id: Option<String>,
    ) -> Result<ModelReply, ApiError>;

    /// [`Self::body`] asking for the answer as a stream of events.
    fn stream_body(&self, request: &ModelRequest) -> serde_json::Value;

    /// Headers a streamed call sends besides `Accept: text/event-stream`.
    fn stream_headers(&self) -> &'static [(&'static str, &'static str)];

    /// Adds one event of a streamed answer to `answer`: `Ok(true)` once it was the stream's
    /// last, an error for an error event (see [`stream::in_stream_error`]).
    fn read_frame(
        &self,
        frame: &sse::Frame,
        answer: &mut stream::Partial,
    ) -> Result<bool, ApiError>;
}

const OSS_RESOLVE: &str = "X-DashScope-OssResourceResolve";

impl Client {
    /// One attempt at a model call.
    pub async fn call_model(
        &self,
        api: Api,
        request: &ModelRequest,
    ) -> Result<ModelReply, ApiError> {
        let mapping = api.mapping();
        let http = self
            .inner
            .http
            .post(self.url(mapping.path()))
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(OSS_RESOLVE, "enable")
            .json(&mapping.body(request))
            .timeout(self.inner.config.request_timeout);
        let (status, headers, bytes) = self.send(http, BodyLimit::Model).await?;
        let header_id = stream::header_request_id(&headers);
        let reply = mapping.parse(&bytes, status, header_id);
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
            reasoning: self.reasoning.as_deref().map(|r| scrub(r, secret)),
            finish_reason: self.finish_reason.as_deref().map(short),
            request_id: self.request_id.as_deref().map(short),
            usage: self.usage,
        }
    }
}

/// A reply's message, the same in both APIs' replies.
#[derive(Deserialize)]
struct ReplyMessage {
    #[serde(default)]
    content: serde_json::Value,
    /// A thinking model's reasoning, in both APIs under this name.
    #[serde(default)]
    reasoning_content: Option<serde_json::Value>,
}

impl ReplyMessage {
    /// The reasoning as text; `None` when absent, null or empty.
    fn reasoning(&self) -> Option<String> {
        self.reasoning_content
            .as_ref()
            .map(content_text)
            .filter(|text| !text.is_empty())
    }
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
mod params_tests;
#[cfg(test)]
mod tests;
