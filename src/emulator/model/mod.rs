//! The model APIs: OpenAI-compatible chat completions and DashScope's native multimodal
//! generation. Both parse into one [`parse::Conversation`], go through the same checks and
//! limits, get the same [`answer::Answer`], and differ only in their request and reply
//! shapes; streaming is a transport under both ([`stream`]).
//!
//! The checks come in the order a gateway would apply them: the key, the body, the model
//! (404 unknown), the account's standing (arrears), the model's access (403), the rate,
//! growth and token limits (429), then the request itself: stream-only models, parameters,
//! input moderation, `oss://` resolution.
//!
//! # Markers
//! A prompt (system or user text) may hold markers that make the emulator show a behaviour
//! a client must handle; they are documented in the README:
//! - [`MODERATE_INPUT`]: 400 `DataInspectionFailed` "Input data may contain inappropriate
//!   content." before any output.
//! - [`MODERATE_OUTPUT`]: the output moderation: a stream stops half way with the error
//!   event; a non-stream call gets 400 "Output data may contain inappropriate content.".
//! - [`CUT_STREAM`]: a stream ends half way with a clean end of the body but without its
//!   final chunk or frame. No effect without a stream.
//! - [`DROP_STREAM`]: a stream's connection breaks half way. No effect without a stream.

mod answer;
mod params;
mod parse;
mod reply;
mod stream;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State as AxumState;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::accounts::Account;
use super::errors::{ApiError, Shape};
use super::limits::Refusal;
use super::state::State;
use super::stats::Refused;
use parse::{Conversation, all_text};
use stream::{Ending, Options, Stream};

pub const MODERATE_INPUT: &str = "[[emulator:moderate-input]]";
pub const MODERATE_OUTPUT: &str = "[[emulator:moderate-output]]";
pub const CUT_STREAM: &str = "[[emulator:cut-stream]]";
pub const DROP_STREAM: &str = "[[emulator:drop-stream]]";

/// Header that lets the service resolve `oss://` URLs.
const OSS_RESOLVE_HEADER: &str = "x-dashscope-ossresourceresolve";
/// Header that asks the native API for a stream.
const SSE_HEADER: &str = "x-dashscope-sse";

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

/// A call that passed every check, with its answer.
struct Call {
    account: Account,
    conversation: Conversation,
    answer: answer::Answer,
    stream: Option<Options>,
}

fn handle(state: &State, headers: &HeaderMap, body: &[u8], shape: Shape) -> Response {
    let request_id = State::request_id().to_string();
    match prepare(state, headers, body, shape) {
        Ok(call) => deliver(state, call, shape, &request_id),
        Err((err, refused)) => {
            state.stats.chat_error(err.code_in(shape));
            if let Some(refused) = refused {
                state.stats.refused(refused);
            }
            err.response(shape, &request_id)
        }
    }
}

fn header_is(headers: &HeaderMap, name: &str, value: &str) -> bool {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
}

fn has_marker(conversation: &Conversation, marker: &str) -> bool {
    all_text(conversation).any(|text| text.contains(marker))
}

type Refusing = (ApiError, Option<Refused>);

fn plain(err: ApiError) -> Refusing {
    (err, None)
}

fn prepare(
    state: &State,
    headers: &HeaderMap,
    body: &[u8],
    shape: Shape,
) -> Result<Call, Refusing> {
    let config = &state.config;
    let account = Account::from_headers(headers).map_err(plain)?;
    let request: Value = serde_json::from_slice(body).map_err(|err| {
        plain(ApiError::invalid_parameter(format!(
            "The request body is not valid JSON: {err}"
        )))
    })?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| {
            plain(ApiError::invalid_parameter(
                "Required parameter model missing.",
            ))
        })?;
    let model_index = config
        .model_index(model)
        .ok_or_else(|| (ApiError::model_not_found(model), Some(Refused::NotFound)))?;
    state
        .billing
        .charge(&account.name)
        .map_err(|err| (err, Some(Refused::Arrears)))?;
    if config.denied_models.iter().any(|m| m == model) {
        return Err((ApiError::model_access_denied(), Some(Refused::Denied)));
    }
    let now = Instant::now();
    if !state.model_window.hit(&account.name, model, now).allowed {
        return Err((ApiError::throttled(), Some(Refused::RateLimited)));
    }
    match state.limits.admit(&account.name, model, now) {
        Ok(()) => {}
        Err(Refusal::Burst) => return Err((ApiError::burst_rate(), Some(Refused::Burst))),
        Err(Refusal::Tokens) => return Err((ApiError::token_quota(), Some(Refused::Tokens))),
    }

    let mut conversation = match shape {
        Shape::Compatible => parse::parse_compatible(&request),
        Shape::Native => parse::parse_native(&request),
    }
    .map_err(plain)?;
    conversation.model = model.to_owned();

    let stream = match shape {
        Shape::Compatible => (request.get("stream") == Some(&Value::Bool(true))).then(|| Options {
            include_usage: request.pointer("/stream_options/include_usage")
                == Some(&Value::Bool(true)),
            incremental: true,
        }),
        Shape::Native => header_is(headers, SSE_HEADER, "enable").then(|| Options {
            include_usage: true,
            incremental: request.pointer("/parameters/incremental_output")
                == Some(&Value::Bool(true)),
        }),
    };
    if stream.is_none() && config.stream_only_models.iter().any(|m| m == model) {
        return Err((ApiError::stream_only(model), Some(Refused::StreamOnly)));
    }
    let asks = params::check(&conversation).map_err(plain)?;
    if has_marker(&conversation, MODERATE_INPUT) {
        return Err((ApiError::input_inspection(), Some(Refused::Moderation)));
    }
    let wants_oss = conversation
        .media
        .iter()
        .any(|m| m.url.starts_with("oss://"));
    if wants_oss && !header_is(headers, OSS_RESOLVE_HEADER, "enable") {
        return Err(plain(ApiError::data_inspection()));
    }
    let thinking = asks.thinking || params::is_thinking_model(model);
    let answer = answer::answer(state, &account, model_index, &conversation, asks, thinking)
        .map_err(plain)?;
    Ok(Call {
        account,
        conversation,
        answer,
        stream,
    })
}

fn deliver(state: &State, call: Call, shape: Shape, request_id: &str) -> Response {
    let model = call.conversation.model.as_str();
    let over_tokens = state.limits.spend(
        &call.account.name,
        model,
        Instant::now(),
        call.answer.usage.total(),
    );
    let moderated = has_marker(&call.conversation, MODERATE_OUTPUT);
    let created = state.clock.now().timestamp();
    let Some(options) = call.stream else {
        if moderated {
            let err = ApiError::output_inspection();
            state.stats.chat_error(err.code_in(shape));
            state.stats.refused(Refused::Moderation);
            return err.response(shape, request_id);
        }
        // A non-stream call that crosses the token limit is still answered: the tokens
        // were spent; the next call is refused.
        state.stats.chat_ok();
        return reply::reply(&call.answer, model, created, shape, request_id);
    };
    state.stats.stream_opened();
    let ending = if moderated {
        state.stats.refused(Refused::Moderation);
        Ending::Error(ApiError::output_inspection())
    } else if over_tokens {
        state.stats.refused(Refused::Tokens);
        Ending::Error(ApiError::token_quota())
    } else if has_marker(&call.conversation, CUT_STREAM) {
        Ending::Cut
    } else if has_marker(&call.conversation, DROP_STREAM) {
        Ending::Drop
    } else {
        state.stats.chat_ok();
        Ending::Complete
    };
    if let Ending::Error(err) = &ending {
        state.stats.chat_error(err.code_in(shape));
    }
    let stream = Stream {
        shape,
        options,
        model,
        created,
        request_id,
    };
    stream.response(&call.answer, ending)
}
