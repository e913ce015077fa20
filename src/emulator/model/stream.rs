//! Streamed answers (`text/event-stream`), written byte for byte as protocol notes §5 shows.
//!
//! - Compatible: `data: {..chat.completion.chunk..}` events, blank-line separated: a first
//!   chunk with the role, one per piece of `delta.reasoning_content` then `delta.content`, a
//!   chunk with `finish_reason: "stop"`, with `include_usage` a last chunk with
//!   `"choices": []` and the usage (earlier chunks then carry `"usage": null`), and
//!   `data: [DONE]`.
//! - Native: `id:N` / `event:result` / `:HTTP_STATUS/200` / `data:{..}` frames, no space
//!   after the colons; `usage` is the running total in every frame and `finish_reason` the
//!   string `"null"` until the last frame. With `incremental_output` each frame holds the
//!   new piece; without it, the text so far (as the real service does).
//!
//! The answer is split every few words so a client must join the pieces. A stream can end
//! four ways ([`Ending`]): complete; with an error event half way (moderation of the
//! output, the token limit); cut half way with a clean end of the body but no final
//! chunk or frame; or with the connection dropped half way.

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::answer::{Answer, output_tokens};
use super::reply::{compat_usage, native_usage};
use crate::emulator::errors::{ApiError, Shape};

/// Words per streamed piece.
const WORDS_PER_PIECE: usize = 4;

#[derive(Debug, Clone)]
pub enum Ending {
    Complete,
    /// An error event after half the pieces, then the end of the body.
    Error(ApiError),
    /// The body ends cleanly after half the pieces, without the final chunk or frame.
    Cut,
    /// The connection breaks after half the pieces.
    Drop,
}

/// How the request asked to be streamed.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Compatible `stream_options.include_usage`.
    pub include_usage: bool,
    /// Native `parameters.incremental_output`.
    pub incremental: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Text,
}

/// `text` in pieces of a few words; joined, they give `text` back exactly.
fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut words = 0;
    for (i, c) in text.char_indices() {
        if c == ' ' || c == '\n' {
            words += 1;
            if words == WORDS_PER_PIECE {
                let end = i + c.len_utf8();
                out.push(&text[start..end]);
                start = end;
                words = 0;
            }
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

pub struct Stream<'a> {
    pub shape: Shape,
    pub options: Options,
    pub model: &'a str,
    pub created: i64,
    pub request_id: &'a str,
}

impl Stream<'_> {
    pub fn response(&self, answer: &Answer, ending: Ending) -> Response {
        let mut parts: Vec<(Kind, &str)> = Vec::new();
        if let Some(reasoning) = &answer.reasoning {
            parts.extend(pieces(reasoning).into_iter().map(|p| (Kind::Reasoning, p)));
        }
        parts.extend(pieces(&answer.text).into_iter().map(|p| (Kind::Text, p)));
        let shown = match ending {
            Ending::Complete => parts.len(),
            _ => parts.len().div_ceil(2),
        };
        let mut events = match self.shape {
            Shape::Compatible => self.compatible(answer, &parts[..shown], &ending),
            Shape::Native => self.native(answer, &parts[..shown], &ending),
        };
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            events.drain(..).map(|e| Ok(Bytes::from(e))).collect();
        let body = if matches!(ending, Ending::Drop) {
            // The break must come after what was sent has left: hyper flushes its buffer
            // when the body is pending, so the stream yields once before failing (an error
            // polled together with the data would abort before the headers were written).
            let broken = futures::stream::once(async {
                tokio::task::yield_now().await;
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "emulated dropped stream",
                ))
            });
            Body::from_stream(futures::stream::iter(chunks).chain(broken))
        } else {
            Body::from_stream(futures::stream::iter(chunks))
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    fn compat_chunk(&self, choices: Value, usage: Option<Value>) -> String {
        let mut chunk = json!({
            "id": format!("chatcmpl-{}", self.request_id),
            "choices": choices,
            "object": "chat.completion.chunk",
            "created": self.created,
            "system_fingerprint": null,
            "model": self.model,
        });
        if self.options.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        format!("data: {chunk}\n\n")
    }

    fn compatible(&self, answer: &Answer, parts: &[(Kind, &str)], ending: &Ending) -> Vec<String> {
        let choice = |delta: Value, finish: Value| json!([{"delta": delta, "finish_reason": finish, "index": 0, "logprobs": null}]);
        let thinking = answer.reasoning.is_some();
        let mut events = vec![self.compat_chunk(
            choice(json!({"content": "", "role": "assistant"}), Value::Null),
            None,
        )];
        for (kind, piece) in parts {
            let delta = match kind {
                Kind::Reasoning => json!({"content": null, "reasoning_content": piece}),
                Kind::Text if thinking => json!({"content": piece, "reasoning_content": null}),
                Kind::Text => json!({"content": piece}),
            };
            events.push(self.compat_chunk(choice(delta, Value::Null), None));
        }
        match ending {
            Ending::Complete => {
                events.push(self.compat_chunk(choice(json!({"content": ""}), json!("stop")), None));
                if self.options.include_usage {
                    events.push(self.compat_chunk(json!([]), Some(compat_usage(answer.usage))));
                }
                events.push("data: [DONE]\n\n".to_owned());
            }
            Ending::Error(err) => events.push(format!("data: {}\n\n", err.compat_stream_data())),
            Ending::Cut | Ending::Drop => {}
        }
        events
    }

    fn native_frame(&self, id: usize, event: &str, status: u16, data: &Value) -> String {
        format!("id:{id}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{data}\n\n")
    }

    fn native(&self, answer: &Answer, parts: &[(Kind, &str)], ending: &Ending) -> Vec<String> {
        let complete = matches!(ending, Ending::Complete);
        let thinking = answer.reasoning.is_some();
        let mut events = Vec::with_capacity(parts.len() + 1);
        let (mut text_so_far, mut reasoning_so_far) = (String::new(), String::new());
        let mut generated = 0;
        for (i, (kind, piece)) in parts.iter().enumerate() {
            generated += piece.chars().count();
            match kind {
                Kind::Reasoning => reasoning_so_far.push_str(piece),
                Kind::Text => text_so_far.push_str(piece),
            }
            let last = complete && i + 1 == parts.len();
            let (text, reasoning) = if self.options.incremental {
                match kind {
                    Kind::Reasoning => ("", *piece),
                    Kind::Text => (*piece, ""),
                }
            } else {
                (text_so_far.as_str(), reasoning_so_far.as_str())
            };
            let content = if text.is_empty() {
                json!([])
            } else {
                json!([{"text": text}])
            };
            let mut message = json!({"content": content, "role": "assistant"});
            if thinking {
                message["reasoning_content"] = json!(reasoning);
            }
            let finish = if last { "stop" } else { "null" };
            let data = json!({
                "output": {"choices": [{"message": message, "finish_reason": finish}]},
                "usage": native_usage(answer.usage, output_tokens(generated)),
                "request_id": self.request_id,
            });
            events.push(self.native_frame(i + 1, "result", 200, &data));
        }
        if let Ending::Error(err) = ending {
            let data = err.native_json(self.request_id);
            events.push(self.native_frame(parts.len() + 1, "error", err.status.as_u16(), &data));
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_join_back_exactly() {
        for text in [
            "",
            "one",
            "a b c d e f g h i",
            "line one\nline two  x\n",
            "é ü ß ∑ 日本 語",
        ] {
            let p = pieces(text);
            assert_eq!(p.concat(), text);
            assert!(p.iter().all(|piece| !piece.is_empty()));
        }
        assert_eq!(pieces("a b c d e f").len(), 2);
    }
}
