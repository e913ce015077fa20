//! Generation parameters: the service's checks, and what they change in the answer.
//!
//! Checked as the real service words it (protocol notes §7, messages as the service prints
//! them): temperature in [0, 2), top_p in (0, 1], max_tokens in [1, 8192], seed in
//! [0, 2^31 - 1], and `response_format: {"type": "json_object"}` only when the messages say
//! "json". Other names pass unchecked, as the service ignores names it does not know.

use serde_json::{Map, Value};

use super::parse::{Conversation, all_text};
use crate::emulator::errors::ApiError;

/// The ceiling in the service's max_tokens message for most models (some larger models
/// allow more; a batch test has no need of more).
const MAX_TOKENS: u64 = 8192;
const MAX_SEED: u64 = (1 << 31) - 1;

/// What the parameters ask of the answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Asks {
    /// `response_format: {"type": "json_object"}`: the whole answer is one JSON object.
    pub json_object: bool,
    /// `enable_thinking: true`.
    pub thinking: bool,
}

/// Checks the parameters of `conversation` and returns what they ask of the answer.
pub fn check(conversation: &Conversation) -> Result<Asks, ApiError> {
    let params = &conversation.params;
    // A value that is present must pass; an absent one is the model's default.
    let require = |name: &str, ok: &dyn Fn(&Value) -> bool, detail: &str| match params.get(name) {
        Some(value) if !ok(value) => Err(ApiError::algo_parameter(detail)),
        _ => Ok(()),
    };
    // The temperature message is the one a live probe of compatible mode returned (2.0
    // itself is refused); max_tokens' and top_p's are the service's as users quote them; the
    // native API shares the algorithm layer, so it says the same.
    require(
        "temperature",
        &|t| t.as_f64().is_some_and(|t| (0.0..2.0).contains(&t)),
        "Temperature should be in [0.0, 2.0)",
    )?;
    require(
        "top_p",
        &|p| p.as_f64().is_some_and(|p| p > 0.0 && p <= 1.0),
        "Range of top_p should be (0.0, 1.0]",
    )?;
    require(
        "max_tokens",
        &|n| n.as_u64().is_some_and(|n| (1..=MAX_TOKENS).contains(&n)),
        &format!("Range of max_tokens should be [1, {MAX_TOKENS}]"),
    )?;
    // *Unverified* wording, in the style of the messages above.
    require(
        "seed",
        &|s| s.as_u64().is_some_and(|s| s <= MAX_SEED),
        &format!("Range of seed should be [0, {MAX_SEED}]"),
    )?;
    let json_object = match params.get("response_format") {
        None | Some(Value::Null) => false,
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("json_object") => true,
            Some("text") => false,
            // *Unverified* wording; json_schema is not emulated.
            _ => {
                return Err(ApiError::algo_parameter(
                    "response_format.type should be text or json_object",
                ));
            }
        },
    };
    if json_object && !all_text(conversation).any(|text| text.to_ascii_lowercase().contains("json"))
    {
        return Err(ApiError::algo_parameter(
            "'messages' must contain the word 'json' in some form, to use 'response_format' \
             of type 'json_object'.",
        ));
    }
    let thinking = params.get("enable_thinking") == Some(&Value::Bool(true));
    Ok(Asks {
        json_object,
        thinking,
    })
}

/// The parameters as one line of JSON with sorted keys, whatever order they came in (and
/// whether or not serde_json keeps insertion order in this build).
pub fn echo(params: &Map<String, Value>) -> String {
    let sorted: std::collections::BTreeMap<&String, &Value> = params.iter().collect();
    serde_json::to_string(&sorted).unwrap_or_default()
}

/// Thinking models: the `*-thinking` editions and the QVQ and QwQ families always reason.
pub fn is_thinking_model(model: &str) -> bool {
    model.ends_with("-thinking") || model.starts_with("qvq-") || model.starts_with("qwq-")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with(params: Value, prompt: &str) -> Conversation {
        Conversation {
            prompt: vec![prompt.to_owned()],
            params: params.as_object().cloned().unwrap_or_default(),
            ..Conversation::default()
        }
    }

    #[test]
    fn ranges_follow_the_service() {
        for ok in [json!({"temperature": 0}), json!({"temperature": 1.99})] {
            assert!(check(&with(ok, "")).is_ok());
        }
        for bad in [
            json!({"temperature": 2}),
            json!({"temperature": -0.1}),
            json!({"temperature": "hot"}),
            json!({"max_tokens": 0}),
            json!({"max_tokens": 8193}),
            json!({"top_p": 0}),
            json!({"seed": -1}),
        ] {
            let err = check(&with(bad.clone(), "")).expect_err("refused");
            assert_eq!(err.code, "InvalidParameter", "{bad}");
            assert!(err.message.starts_with("<400> InternalError.Algo"), "{bad}");
        }
    }

    #[test]
    fn json_object_needs_the_word_json() {
        let format = json!({"response_format": {"type": "json_object"}});
        assert!(check(&with(format.clone(), "Describe.")).is_err());
        let asks = check(&with(format, "Answer in JSON.")).expect("ok");
        assert!(asks.json_object);
    }

    #[test]
    fn echo_sorts_keys() {
        let params = json!({"top_p": 0.5, "seed": 1, "max_tokens": 9});
        let echoed = echo(params.as_object().expect("object"));
        assert_eq!(echoed, r#"{"max_tokens":9,"seed":1,"top_p":0.5}"#);
    }
}
