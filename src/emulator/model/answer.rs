//! The "model": a deterministic answer that shows what it was given.
//!
//! The text lists the system prompt, the user prompt verbatim, the parameters (a line
//! `params: {..}` with sorted keys) and, for each medium in order, `sha256=<hex>` of the
//! bytes behind an `oss://` URL or a `data:` URL (`http(s)://` media are named, never
//! fetched). With `response_format: json_object` the same information is one JSON object.
//! Thinking models add a reasoning text. Usage is a token per four characters and a fixed
//! cost per medium.

use std::fmt::Write as _;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::params::{Asks, echo};
use super::parse::{Conversation, decode_data_url};
use crate::emulator::accounts::Account;
use crate::emulator::errors::ApiError;
use crate::emulator::state::State;

/// Deterministic token cost of one medium.
const MEDIA_TOKENS: u64 = 256;

#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    /// A thinking model's reasoning.
    pub reasoning: Option<String>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub media: u64,
}

impl Usage {
    pub fn total(self) -> u64 {
        self.input + self.output
    }
}

/// Output tokens of `chars` characters of generated text.
pub fn output_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// Describes each medium, resolving `oss://` objects of this account and model.
fn media_lines(
    state: &State,
    account: &Account,
    model_index: u16,
    conversation: &Conversation,
) -> Result<Vec<String>, ApiError> {
    let now_ms = state.clock.now().timestamp_millis();
    let mut lines = Vec::with_capacity(conversation.media.len());
    for media in &conversation.media {
        let label = media.label();
        let line = if let Some(key) = media.url.strip_prefix("oss://") {
            let object = state
                .objects
                .get(key, now_ms)
                .filter(|o| o.account == account.id && o.model == model_index)
                .ok_or_else(ApiError::invalid_url)?;
            format!(
                "{label} {} sha256={} size={}",
                media.url,
                hex::encode(object.sha256),
                object.size
            )
        } else if let Some(data_url) = media.url.strip_prefix("data:") {
            let (mime, bytes) = decode_data_url(data_url)?;
            format!(
                "{label} data:{mime} sha256={} size={}",
                hex::encode(Sha256::digest(&bytes)),
                bytes.len()
            )
        } else if media.url.starts_with("http://") || media.url.starts_with("https://") {
            format!("{label} {} (remote, not fetched)", media.url)
        } else {
            return Err(ApiError::invalid_url());
        };
        lines.push(line);
    }
    Ok(lines)
}

pub fn answer(
    state: &State,
    account: &Account,
    model_index: u16,
    conversation: &Conversation,
    asks: Asks,
    thinking: bool,
) -> Result<Answer, ApiError> {
    let model = &conversation.model;
    let media = media_lines(state, account, model_index, conversation)?;
    let text = if asks.json_object {
        let mut object = json!({
            "model": model,
            "prompt": conversation.prompt.join("\n"),
            "media": media,
            "params": Value::Object(conversation.params.clone()),
        });
        if !conversation.system.is_empty() {
            object["system"] = json!(conversation.system.join("\n"));
        }
        object.to_string()
    } else {
        let mut text = format!("Emulated answer from {model}.\n");
        if !conversation.system.is_empty() {
            let _ = writeln!(text, "System: {}", conversation.system.join("\n"));
        }
        let _ = writeln!(text, "Prompt: {}", conversation.prompt.join("\n"));
        if !conversation.params.is_empty() {
            let _ = writeln!(text, "params: {}", echo(&conversation.params));
        }
        for line in &media {
            let _ = writeln!(text, "{line}");
        }
        text
    };
    let reasoning = thinking.then(|| {
        format!(
            "Reasoning of {model}: the user asks \"{}\" about {} medi{}; answer by listing \
             what was given.",
            conversation.prompt.join(" "),
            media.len(),
            if media.len() == 1 { "um" } else { "a" }
        )
    });
    let chars = |parts: &[String]| parts.iter().map(|p| p.chars().count()).sum::<usize>();
    let media_in = MEDIA_TOKENS * conversation.media.len() as u64;
    let generated = text.chars().count() + reasoning.as_ref().map_or(0, |r| r.chars().count());
    let usage = Usage {
        input: output_tokens(chars(&conversation.system) + chars(&conversation.prompt)) + media_in,
        output: output_tokens(generated),
        media: media_in,
    };
    Ok(Answer {
        text,
        reasoning,
        usage,
    })
}
