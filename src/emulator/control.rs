//! The control endpoints under `/__emulator/`, for tests and tools: statistics, the
//! configuration in effect, the clock, and accounts' standing (arrears). Not part of the emulated service, so faults and latency never touch them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::clock::iso_millis;
use super::errors::with_allow;
use super::state::State;

/// `GET /__emulator/stats`.
pub async fn stats(AxumState(state): AxumState<Arc<State>>) -> Response {
    Json(
        state
            .stats
            .snapshot(state.credential_window.max_in_window()),
    )
    .into_response()
}

/// `GET /__emulator/config`: the knobs in effect (see [`super::EmulatorConfig::describe`]).
pub async fn config(AxumState(state): AxumState<Arc<State>>) -> Response {
    Json(state.config.describe()).into_response()
}

/// `POST /__emulator/clock?advance_s=N`: moves the emulator's clock N seconds forward;
/// 400 if that would pass the end of year 9999 (see [`super::clock::latest`]).
pub async fn advance_clock(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(seconds) = query.get("advance_s").and_then(|s| s.parse::<u64>().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "advance_s must be a whole number of seconds >= 0"})),
        )
            .into_response();
    };
    match state.clock.advance(seconds) {
        Ok(now) => Json(json!({"now": iso_millis(now)})).into_response(),
        Err(err) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": err.to_string()})),
        )
            .into_response(),
    }
}

/// `POST /__emulator/arrears?account=NAME`: the account falls into arrears now;
/// `&paid=true` settles it (and starts its `--arrears-after` count again).
pub async fn arrears(
    AxumState(state): AxumState<Arc<State>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(account) = query.get("account").filter(|a| !a.is_empty()) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "account=NAME is required (the part of sk-NAME before any dot)"})),
        )
            .into_response();
    };
    let paid = match query.get("paid").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("paid must be true or false, not {other:?}")})),
            )
                .into_response();
        }
    };
    state.billing.set(account, !paid);
    Json(json!({"account": account, "arrears": !paid})).into_response()
}

/// 405 on a control endpoint, in the control endpoints' own `{"error": ..}` shape.
pub async fn wrong_method(allow: &'static str) -> Response {
    let response = (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"error": format!("this endpoint takes only {allow}")})),
    )
        .into_response();
    with_allow(response, allow)
}

/// Anything else: a native-shaped 404, as the service's gateway would answer.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "code": "NotFound",
            "message": "The requested resource does not exist.",
            "request_id": State::request_id().to_string(),
        })),
    )
        .into_response()
}
