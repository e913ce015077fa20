//! The model APIs: OpenAI-compatible chat completions and DashScope's native multimodal
//! generation. Both parse into one [`Conversation`], share the checks and the answer, and
//! differ only in their request and reply shapes.
//!
//! The "model" is a mirror: its deterministic answer lists the system prompt, the user
//! prompt verbatim and, for each `oss://` file, `sha256=<hex>` of the bytes that were
//! uploaded, so a test can see exactly what reached the model. Inline media
//! (`data:<mime>;base64,<payload>`, which DashScope accepts in every media field) are
//! decoded and shown the same way. `http(s)://` media are accepted as-is, never downloaded.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::accounts::Account;
use super::errors::{ApiError, Shape};
use super::state::State;

/// Header that lets the service resolve `oss://` URLs.
const OSS_RESOLVE_HEADER: &str = "x-dashscope-ossresourceresolve";
/// Deterministic token cost of one media item.
const MEDIA_TOKENS: u64 = 256;

#[derive(Debug, Default)]
struct Conversation {
    model: String,
    system: Vec<String>,
    prompt: Vec<String>,
    media: Vec<Media>,
}

#[derive(Debug)]
struct Media {
    kind: &'static str,
    url: String,
}

pub async fn compatible(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&state, &headers, &body, Shape::Compatible)
}

pub async fn native(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&state, &headers, &body, Shape::Native)
}

fn handle(state: &State, headers: &HeaderMap, body: &[u8], shape: Shape) -> Response {
    let request_id = State::request_id().to_string();
    match answer(state, headers, body, shape) {
        Ok((conversation, text)) => {
            state.stats.chat_ok();
            reply(state, &conversation, &text, shape, &request_id)
        }
        Err(err) => {
            state.stats.chat_error(err.code_in(shape));
            err.response(shape, &request_id)
        }
    }
}

fn answer(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
    shape: Shape,
) -> Result<(Conversation, String), ApiError> {
    let account = Account::from_headers(headers)?;
    let request: Value = serde_json::from_slice(body).map_err(|err| {
        ApiError::invalid_parameter(format!("The request body is not valid JSON: {err}"))
    })?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| ApiError::invalid_parameter("Required parameter model missing."))?;
    let model_index = state
        .config
        .model_index(model)
        .ok_or_else(|| ApiError::model_not_found(model, shape))?;
    if state
        .model_window
        .as_ref()
        .is_some_and(|window| !window.hit(&account.name, model, Instant::now()).allowed)
    {
        return Err(ApiError::throttled());
    }
    let conversation = match shape {
        Shape::Compatible => parse_compatible(&request),
        Shape::Native => parse_native(&request),
    }?;
    let conversation = Conversation {
        model: model.to_owned(),
        ..conversation
    };

    let wants_oss = conversation
        .media
        .iter()
        .any(|m| m.url.starts_with("oss://"));
    let resolve = headers
        .get(OSS_RESOLVE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("enable"));
    if wants_oss && !resolve {
        return Err(ApiError::data_inspection());
    }

    let now_ms = state.clock.now().timestamp_millis();
    let mut text = format!("Emulated answer from {model}.\n");
    if !conversation.system.is_empty() {
        let _ = writeln!(text, "System: {}", conversation.system.join("\n"));
    }
    let _ = writeln!(text, "Prompt: {}", conversation.prompt.join("\n"));
    for media in &conversation.media {
        if let Some(key) = media.url.strip_prefix("oss://") {
            let object = state
                .objects
                .get(key, now_ms)
                .filter(|o| o.account == account.id && o.model == model_index)
                .ok_or_else(ApiError::invalid_url)?;
            let _ = writeln!(
                text,
                "{} {} sha256={} size={}",
                media.kind,
                media.url,
                hex::encode(object.sha256),
                object.size
            );
        } else if let Some(data_url) = media.url.strip_prefix("data:") {
            let (mime, bytes) = decode_data_url(data_url)?;
            let _ = writeln!(
                text,
                "{} data:{mime} sha256={} size={}",
                media.kind,
                hex::encode(Sha256::digest(&bytes)),
                bytes.len()
            );
        } else if media.url.starts_with("http://") || media.url.starts_with("https://") {
            let _ = writeln!(text, "{} {} (remote, not fetched)", media.kind, media.url);
        } else {
            return Err(ApiError::invalid_url());
        }
    }
    Ok((conversation, text))
}

/// The part of a `data:` URL after the scheme: `<mime>[;param..];base64,<payload>` →
/// (mime, decoded bytes). The mime may be empty (DashScope's own audio examples send
/// `data:;base64,..`). A data URL that is not base64, or whose payload does not decode, is
/// an invalid parameter.
fn decode_data_url(data_url: &str) -> Result<(&str, Vec<u8>), ApiError> {
    let (meta, payload) = data_url
        .split_once(',')
        .filter(|(meta, _)| {
            meta.rsplit_once(';')
                .is_some_and(|(_, enc)| enc.eq_ignore_ascii_case("base64"))
        })
        .ok_or_else(|| {
            bad("A data URL must have the form data:<mime type>;base64,<base64 payload>.")
        })?;
    let mime = meta.split(';').next().unwrap_or_default();
    let bytes = STANDARD.decode(payload.trim()).map_err(|err| {
        bad(&format!(
            "The base64 payload of a data URL does not decode: {err}."
        ))
    })?;
    Ok((mime, bytes))
}

fn bad(message: &str) -> ApiError {
    ApiError::invalid_parameter(message)
}

fn messages(value: Option<&Value>) -> Result<&Vec<Value>, ApiError> {
    value
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("Required parameter messages missing or empty."))
}

/// Adds one message's text to the system or user side of the conversation.
fn push_text(conversation: &mut Conversation, role: &str, text: &str) {
    match role {
        "system" => conversation.system.push(text.to_owned()),
        "user" => conversation.prompt.push(text.to_owned()),
        // Earlier assistant turns are context, not the prompt.
        _ => {}
    }
}

/// Adds a media URL, or a list of them (a video given as frames).
fn push_media(
    conversation: &mut Conversation,
    kind: &'static str,
    value: &Value,
) -> Result<(), ApiError> {
    let urls: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    };
    for url in urls {
        let url = url
            .as_str()
            .ok_or_else(|| bad("A media URL must be a string."))?;
        conversation.media.push(Media {
            kind,
            url: url.to_owned(),
        });
    }
    Ok(())
}

/// `{"model", "messages": [{"role", "content": "text" | [{"type": ..}, ..]}]}`.
fn parse_compatible(request: &Value) -> Result<Conversation, ApiError> {
    let mut conversation = Conversation::default();
    for message in messages(request.get("messages"))? {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        match message.get("content") {
            Some(Value::String(text)) => push_text(&mut conversation, role, text),
            Some(Value::Array(parts)) => {
                for part in parts {
                    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                    let url_of = |field: &str| {
                        part.get(field)
                            .map(|v| v.get("url").unwrap_or(v))
                            .ok_or_else(|| bad("A content part is missing its URL."))
                    };
                    match kind {
                        "text" => {
                            let text = part.get("text").and_then(Value::as_str).unwrap_or("");
                            push_text(&mut conversation, role, text);
                        }
                        "image_url" => {
                            push_media(&mut conversation, "image", url_of("image_url")?)?
                        }
                        "video_url" => {
                            push_media(&mut conversation, "video", url_of("video_url")?)?
                        }
                        "video" => push_media(&mut conversation, "video", url_of("video")?)?,
                        "input_audio" => {
                            let audio = part
                                .get("input_audio")
                                .and_then(|a| a.get("data"))
                                .ok_or_else(|| bad("input_audio needs data."))?;
                            push_media(&mut conversation, "audio", audio)?;
                        }
                        other => return Err(bad(&format!("Unsupported content type: {other:?}."))),
                    }
                }
            }
            // OpenAI-shaped clients replay earlier assistant turns with `"content": null`
            // (e.g. turns that only made tool calls); they carry no prompt.
            Some(Value::Null) | None if role == "assistant" => {}
            _ => return Err(bad("A message needs content.")),
        }
    }
    Ok(conversation)
}

/// `{"model", "input": {"messages": [{"role", "content": [{"text"} | {"image"} | ..]}]}}`.
fn parse_native(request: &Value) -> Result<Conversation, ApiError> {
    let mut conversation = Conversation::default();
    let input = request
        .get("input")
        .ok_or_else(|| bad("Required parameter input missing."))?;
    for message in messages(input.get("messages"))? {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        match message.get("content") {
            Some(Value::String(text)) => push_text(&mut conversation, role, text),
            Some(Value::Array(items)) => {
                for item in items {
                    if let Some(text) = item.get("text").and_then(Value::as_str) {
                        push_text(&mut conversation, role, text);
                    }
                    for kind in ["image", "video", "audio"] {
                        if let Some(url) = item.get(kind) {
                            push_media(&mut conversation, kind, url)?;
                        }
                    }
                }
            }
            _ => return Err(bad("A message needs content.")),
        }
    }
    Ok(conversation)
}

/// Deterministic usage: a token per four characters, a fixed cost per media item.
fn usage(conversation: &Conversation, text: &str) -> (u64, u64, u64) {
    let chars = |parts: &[String]| parts.iter().map(|p| p.chars().count() as u64).sum::<u64>();
    let text_in = (chars(&conversation.system) + chars(&conversation.prompt)).div_ceil(4);
    let media_in = MEDIA_TOKENS * conversation.media.len() as u64;
    let output = (text.chars().count() as u64).div_ceil(4);
    (text_in + media_in, output, media_in)
}

fn reply(
    state: &State,
    conversation: &Conversation,
    text: &str,
    shape: Shape,
    request_id: &str,
) -> Response {
    let (input, output, media) = usage(conversation, text);
    let body = match shape {
        Shape::Compatible => json!({
            "choices": [{
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "index": 0,
                "logprobs": null,
            }],
            "object": "chat.completion",
            "usage": {
                "prompt_tokens": input,
                "completion_tokens": output,
                "total_tokens": input + output,
            },
            "created": state.clock.now().timestamp(),
            "system_fingerprint": null,
            "model": conversation.model,
            "id": format!("chatcmpl-{request_id}"),
        }),
        Shape::Native => json!({
            "output": {
                "choices": [{
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": [{"text": text}]},
                }],
            },
            "usage": {
                "input_tokens": input,
                "output_tokens": output,
                "total_tokens": input + output,
                "image_tokens": media,
            },
            "request_id": request_id,
        }),
    };
    axum::Json(body).into_response()
}
