//! getPolicy: `GET /api/v1/uploads?action=getPolicy&model=M`, the upload credential.
//!
//! Issues a signed OSS POST policy that pins the upload to
//! `dashscope-instant/<account hex>/<date>/<request_id>`, and remembers who asked for which
//! model ([`Grant`]) so the stored object can be bound to both. Owns the signing rule too,
//! because the PostObject check must be its exact inverse.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::TimeDelta;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha1::Sha1;

use super::accounts::Account;
use super::clock::{add_capped, iso_millis, service_date};
use super::errors::{ApiError, Shape};
use super::state::State;
use super::stats::{Refused, bump};
use super::store::Grant;

const MB: u64 = 1024 * 1024;

/// OSS signature V1 for POST: `base64(HMAC-SHA1(secret, base64_policy))`.
pub fn sign(secret: &str, policy_b64: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(policy_b64.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The policy JSON, fields in the order OSS writes them.
#[derive(Serialize)]
struct PolicyJson {
    expiration: String,
    conditions: [Value; 5],
}

pub async fn get_policy(
    AxumState(state): AxumState<Arc<State>>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let request_id = State::request_id();
    match issue(&state, &headers, query.ok().map(|q| q.0), request_id) {
        Ok(body) => {
            bump(&state.stats.credential_calls);
            axum::Json(body).into_response()
        }
        Err(err) => err.response(Shape::Native, &request_id.to_string()),
    }
}

/// The checks that come before the rate window: a valid key, `action=getPolicy`, and a
/// model that exists. Returns the account, the model and its index.
fn requester<'q>(
    state: &State,
    headers: &HeaderMap,
    query: &'q HashMap<String, String>,
) -> Result<(Account, &'q str, u16), ApiError> {
    let account = Account::from_headers(headers)?;
    if query.get("action").map(String::as_str) != Some("getPolicy") {
        return Err(ApiError::invalid_parameter(
            "The parameter action is invalid, it must be getPolicy.",
        ));
    }
    let model = match query.get("model").map(|m| m.trim()) {
        Some(m) if !m.is_empty() => m,
        _ => {
            return Err(ApiError::invalid_parameter(
                "Required parameter model missing.",
            ));
        }
    };
    let model_index = state
        .config
        .model_index(model)
        .ok_or_else(|| ApiError::invalid_parameter(format!("Model not exist: {model}.")))?;
    Ok((account, model, model_index))
}

/// Records in the credential window a getPolicy request that an injected fault answers
/// before [`get_policy`] runs, so `credential_max_in_window` counts requests of every
/// outcome, faults included. Only a request the handler would itself have counted (valid
/// key, action and model) is recorded; the fault's answer stands whatever the window says.
pub fn record_faulted(state: &State, headers: &HeaderMap, uri: &Uri) {
    let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(uri) else {
        return;
    };
    if let Ok((account, model, _)) = requester(state, headers, &query) {
        state
            .credential_window
            .hit(&account.name, model, Instant::now());
    }
}

fn issue(
    state: &State,
    headers: &HeaderMap,
    query: Option<HashMap<String, String>>,
    request_id: uuid::Uuid,
) -> Result<Value, ApiError> {
    let query = query.unwrap_or_default();
    let (account, model, model_index) = requester(state, headers, &query)?;
    if let Err(err) = state.billing.check(&account.name) {
        state.stats.refused(Refused::Arrears);
        return Err(err);
    }
    // Counted once the account and the model are known to exist (so made-up names cannot
    // grow the window's map), and before the limit is applied: every request of a real
    // account and model fills the window, refused ones included.
    let hit = state
        .credential_window
        .hit(&account.name, model, Instant::now());
    if !hit.allowed {
        bump(&state.stats.credential_throttled);
        return Err(ApiError::throttled());
    }
    let config = &state.config;

    let now = state.clock.now();
    let ttl_s = config.policy_ttl_s;
    let expires = add_capped(
        now,
        TimeDelta::try_seconds(i64::try_from(ttl_s).unwrap_or(i64::MAX)),
    );
    let upload_dir = format!(
        "dashscope-instant/{}/{}/{}",
        account.hex_id(),
        service_date(now),
        request_id
    );
    let max_file_size_mb = config.max_file_size_mb_for(model);
    let doc = PolicyJson {
        expiration: iso_millis(expires),
        conditions: [
            json!([
                "content-length-range",
                0,
                max_file_size_mb.saturating_mul(MB)
            ]),
            json!(["starts-with", "$key", upload_dir]),
            json!({"bucket": config.bucket}),
            json!({"x-oss-object-acl": "private"}),
            json!({"x-oss-forbid-overwrite": "true"}),
        ],
    };
    let policy = STANDARD.encode(serde_json::to_vec(&doc).unwrap_or_default());
    let signature = sign(&config.oss_access_key_secret, &policy);
    state.grants.insert(
        request_id,
        Grant {
            account: account.id,
            model: model_index,
            expires_ms: expires.timestamp_millis(),
        },
        now.timestamp_millis(),
    );
    Ok(json!({
        "request_id": request_id.to_string(),
        "data": {
            "policy": policy,
            "signature": signature,
            "upload_dir": upload_dir,
            "upload_host": upload_host(state, headers),
            "expire_in_seconds": ttl_s,
            "max_file_size_mb": max_file_size_mb,
            "capacity_limit_mb": config.capacity_limit_mb,
            "oss_access_key_id": config.oss_access_key_id,
            "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true",
        }
    }))
}

/// The configured base URL, else the host this request was addressed to.
fn upload_host(state: &State, headers: &HeaderMap) -> String {
    if let Some(url) = &state.config.public_base_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha1_base64() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let expected =
            STANDARD.encode(hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").expect("hex"));
        assert_eq!(sign("Jefe", "what do ya want for nothing?"), expected);
    }
}
