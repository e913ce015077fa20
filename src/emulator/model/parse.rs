//! Request bodies of both APIs → one [`Conversation`]: who said what, which media in which
//! order, and the generation parameters. Nothing here looks at state or limits.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::emulator::errors::ApiError;

#[derive(Debug, Default)]
pub struct Conversation {
    pub model: String,
    pub system: Vec<String>,
    pub prompt: Vec<String>,
    /// In the order the messages give them.
    pub media: Vec<Media>,
    /// The generation parameters as sent: the compatible body's top level less the keys
    /// that are the request itself, or native `parameters` less `incremental_output`.
    pub params: Map<String, Value>,
}

#[derive(Debug)]
pub struct Media {
    pub kind: &'static str,
    pub url: String,
    /// `(k, n)` for the k-th of n frames of a video given as a list of images.
    pub frame: Option<(usize, usize)>,
}

impl Media {
    /// `image`, `video`, `audio`, or `video frame 2/4`.
    pub fn label(&self) -> String {
        match self.frame {
            Some((k, n)) => format!("{} frame {k}/{n}", self.kind),
            None => self.kind.to_owned(),
        }
    }
}

/// Compatible-mode keys that are the request, not generation parameters.
const COMPAT_REQUEST_KEYS: &[&str] = &["model", "messages", "stream", "stream_options"];
/// Native `parameters` that choose the transport, not the generation.
const NATIVE_TRANSPORT_KEYS: &[&str] = &["incremental_output"];

/// Every text of the conversation, system and user, for the markers and the "json" check.
pub fn all_text(conversation: &Conversation) -> impl Iterator<Item = &str> {
    conversation
        .system
        .iter()
        .chain(&conversation.prompt)
        .map(String::as_str)
}

fn params_of(object: Option<&Map<String, Value>>, skip: &[&str]) -> Map<String, Value> {
    object
        .into_iter()
        .flatten()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The part of a `data:` URL after the scheme: `<mime>[;param..];base64,<payload>` →
/// (mime, decoded bytes). The mime may be empty (DashScope's own audio examples send
/// `data:;base64,..`). A data URL that is not base64, or whose payload does not decode, is
/// an invalid parameter.
pub fn decode_data_url(data_url: &str) -> Result<(&str, Vec<u8>), ApiError> {
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

/// Adds a media URL, or a video given as a list of frame images (each frame is shown, in
/// order, as `k/n`).
fn push_media(
    conversation: &mut Conversation,
    kind: &'static str,
    value: &Value,
) -> Result<(), ApiError> {
    let as_url = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| bad("A media URL must be a string."))
    };
    match value {
        Value::Array(frames) => {
            if frames.is_empty() {
                return Err(bad("A video given as frames needs at least one frame."));
            }
            for (i, frame) in frames.iter().enumerate() {
                conversation.media.push(Media {
                    kind,
                    url: as_url(frame)?,
                    frame: Some((i + 1, frames.len())),
                });
            }
        }
        single => conversation.media.push(Media {
            kind,
            url: as_url(single)?,
            frame: None,
        }),
    }
    Ok(())
}

/// `{"model", "messages": [{"role", "content": "text" | [{"type": ..}, ..]}]}`.
pub fn parse_compatible(request: &Value) -> Result<Conversation, ApiError> {
    let mut conversation = Conversation {
        params: params_of(request.as_object(), COMPAT_REQUEST_KEYS),
        ..Conversation::default()
    };
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
pub fn parse_native(request: &Value) -> Result<Conversation, ApiError> {
    let parameters = match request.get("parameters") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return Err(bad("parameters must be a JSON object.")),
    };
    let mut conversation = Conversation {
        params: params_of(parameters, NATIVE_TRANSPORT_KEYS),
        ..Conversation::default()
    };
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
