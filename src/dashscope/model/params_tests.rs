//! Generation parameters in both body shapes, and the reasoning of thinking models read back.

use serde_json::json;

use super::compatible::Compatible;
use super::native::Native;
use super::{Mapping, ModelRequest, check_param_name};

fn request(params: serde_json::Value) -> ModelRequest {
    ModelRequest {
        model: "qwen-plus".into(),
        prompt: "Say json.".into(),
        system: None,
        media: vec![],
        params: params.as_object().cloned().unwrap_or_default(),
    }
}

#[test]
fn parameters_go_where_each_api_wants_them() {
    let params = json!({"temperature": 0.2, "max_tokens": 64,
        "response_format": {"type": "json_object"}, "enable_thinking": true});
    let body = Compatible.body(&request(params.clone()));
    assert_eq!(body["temperature"], json!(0.2));
    assert_eq!(body["max_tokens"], json!(64));
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(body["enable_thinking"], json!(true));
    assert_eq!(body["model"], json!("qwen-plus"));
    assert!(body.get("parameters").is_none());

    let body = Native.body(&request(params.clone()));
    assert_eq!(body["parameters"], params);
    assert!(body.get("temperature").is_none(), "{body}");

    // Without parameters the native body keeps its empty object.
    assert_eq!(Native.body(&request(json!({})))["parameters"], json!({}));
}

#[test]
fn the_names_dashbatch_sets_are_refused() {
    for name in [
        "model",
        "messages",
        "input",
        "stream",
        "stream_options",
        "incremental_output",
    ] {
        let err = check_param_name(name).unwrap_err();
        assert!(
            err.contains(name) && err.contains("set by dashbatch"),
            "{err}"
        );
    }
    assert!(check_param_name("").is_err());
    for name in ["temperature", "top_p", "seed", "vl_high_resolution_images"] {
        assert!(check_param_name(name).is_ok(), "{name}");
    }
}

#[test]
fn a_thinking_models_reasoning_is_read_in_both_apis() {
    let compatible = br#"{"choices":[{"message":{"role":"assistant","content":"42",
        "reasoning_content":"Six times seven."},"finish_reason":"stop"}]}"#;
    let reply = Compatible.parse(compatible, 200, None).unwrap();
    assert_eq!(reply.text, "42");
    assert_eq!(reply.reasoning.as_deref(), Some("Six times seven."));

    let native = br#"{"output":{"choices":[{"finish_reason":"stop","message":{"role":"assistant",
        "content":[{"text":"42"}],"reasoning_content":"Six times seven."}}]}}"#;
    let reply = Native.parse(native, 200, None).unwrap();
    assert_eq!(reply.reasoning.as_deref(), Some("Six times seven."));

    let plain = br#"{"choices":[{"message":{"content":"hi","reasoning_content":null}}]}"#;
    assert_eq!(Compatible.parse(plain, 200, None).unwrap().reasoning, None);
}
