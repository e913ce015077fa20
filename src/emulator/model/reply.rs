//! Non-stream answers in each API's shape (protocol notes §3).

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::answer::{Answer, Usage};
use crate::emulator::errors::Shape;

/// Compatible-mode `usage`.
pub fn compat_usage(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.total(),
    })
}

/// Native `usage`, with `output` standing for the output tokens so far (streams report a
/// running total).
pub fn native_usage(usage: Usage, output: u64) -> Value {
    json!({
        "input_tokens": usage.input,
        "output_tokens": output,
        "total_tokens": usage.input + output,
        "image_tokens": usage.media,
    })
}

pub fn reply(
    answer: &Answer,
    model: &str,
    created: i64,
    shape: Shape,
    request_id: &str,
) -> Response {
    let body = match shape {
        Shape::Compatible => {
            let mut message = json!({"role": "assistant", "content": answer.text});
            if let Some(reasoning) = &answer.reasoning {
                message["reasoning_content"] = json!(reasoning);
            }
            json!({
                "choices": [{
                    "message": message,
                    "finish_reason": "stop",
                    "index": 0,
                    "logprobs": null,
                }],
                "object": "chat.completion",
                "usage": compat_usage(answer.usage),
                "created": created,
                "system_fingerprint": null,
                "model": model,
                "id": format!("chatcmpl-{request_id}"),
            })
        }
        Shape::Native => {
            let mut message = json!({"role": "assistant", "content": [{"text": answer.text}]});
            if let Some(reasoning) = &answer.reasoning {
                message["reasoning_content"] = json!(reasoning);
            }
            json!({
                "output": {
                    "choices": [{"finish_reason": "stop", "message": message}],
                },
                "usage": native_usage(answer.usage, answer.usage.output),
                "request_id": request_id,
            })
        }
    };
    axum::Json(body).into_response()
}
