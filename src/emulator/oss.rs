//! OSS PostObject on `POST /`: the upload itself.
//!
//! The multipart body is parsed by multer (through axum's `Multipart`) and the file part is
//! streamed: hashed (SHA-256) and counted chunk by chunk, optionally paced to a bandwidth,
//! and never kept. Only metadata is stored.
//!
//! The checks, in OSS's order: a well-formed body; a `key`; the three auth fields
//! (all or none); the access key id; the signature; the policy's expiry (against the time
//! the request arrived); each policy condition in order; the size against
//! `content-length-range`; then the key's existence when overwriting is forbidden. The
//! form is judged when the file part starts (only fields before it count: fields after the
//! file are ignored, as OSS does), but the body is always read to the end so the client
//! receives the error instead of a reset.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::multipart::Field;
use axum::extract::{FromRequest, Multipart, Request, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::clock::service_date;
use super::conditions::{Form, PolicyDocument};
use super::errors::{OSS_HOST_ID, OssError, xml_response};
use super::faults::Arrival;
use super::policy::sign;
use super::state::State;
use super::stats::bump;
use super::store::{Grant, ObjectMeta, StoreError};

/// Text fields are short; a longer one is not a form OSS would accept.
const MAX_TEXT_FIELD: usize = 64 * 1024;
const MB: u64 = 1024 * 1024;

/// What the form before the file authorises.
#[derive(Debug)]
struct Authorized {
    key: String,
    grant: Grant,
    length_range: Option<(u64, u64)>,
    forbid_overwrite: bool,
}

#[derive(Debug)]
struct FilePart {
    size: u64,
    sha256: [u8; 32],
    content_type: Option<String>,
    verdict: Result<Authorized, OssError>,
}

pub async fn post_object(AxumState(state): AxumState<Arc<State>>, request: Request) -> Response {
    let arrived = request
        .extensions()
        .get::<Arrival>()
        .map_or_else(|| state.clock.now(), |a| a.0);
    let request_id = oss_request_id();
    match receive(&state, request, arrived).await {
        Ok((status, stored)) => success(&state, status, &stored, &request_id),
        Err(err) => {
            state.stats.upload_error(err.code);
            err.response(&request_id)
        }
    }
}

/// OSS request ids are 24 upper-case hex digits.
pub fn oss_request_id() -> String {
    let id = State::request_id()
        .simple()
        .to_string()
        .to_ascii_uppercase();
    id[..24].to_owned()
}

struct Stored {
    key: String,
    sha256: [u8; 32],
}

async fn receive(
    state: &State,
    request: Request,
    arrived: DateTime<Utc>,
) -> Result<(StatusCode, Stored), OssError> {
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|_| OssError::malformed())?;
    let mut form = Form::new();
    let mut file: Option<FilePart> = None;
    let mut extra_files = 0usize;
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(_) => return Err(OssError::malformed()),
        };
        let name = field.name().unwrap_or_default().to_ascii_lowercase();
        if file.is_some() {
            if name == "file" {
                extra_files += 1;
            }
            drain(&mut field).await?;
        } else if name == "file" {
            let verdict = authorize(state, &form, arrived);
            let content_type = form
                .get("x-oss-content-type")
                .or_else(|| form.get("content-type"))
                .cloned()
                .or_else(|| field.content_type().map(str::to_owned));
            let (size, sha256) = read_file(&mut field, state.config.upload_bandwidth_mbps).await?;
            file = Some(FilePart {
                size,
                sha256,
                content_type,
                verdict,
            });
        } else {
            let value = read_text(&mut field).await?;
            // The first occurrence of a repeated field wins.
            form.entry(name).or_insert(value);
        }
    }
    let Some(file) = file else {
        return Err(wrong_file_count());
    };
    if extra_files > 0 {
        return Err(wrong_file_count());
    }
    let auth = file.verdict?;
    if let Some((min, max)) = auth.length_range {
        if file.size > max {
            return Err(OssError::new(
                StatusCode::BAD_REQUEST,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size.",
            ));
        }
        if file.size < min {
            return Err(OssError::new(
                StatusCode::BAD_REQUEST,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed size.",
            ));
        }
    }
    let now = state.clock.now();
    let meta = ObjectMeta {
        account: auth.grant.account,
        model: auth.grant.model,
        size: file.size,
        sha256: file.sha256,
        content_type: file.content_type.map(String::into_boxed_str),
        uploaded_ms: now.timestamp_millis(),
    };
    let daily_limit = state.config.capacity_limit_mb.saturating_mul(MB);
    state
        .objects
        .insert(
            &auth.key,
            meta,
            auth.forbid_overwrite,
            service_date(now),
            daily_limit,
        )
        .map_err(|err| match err {
            StoreError::Exists => OssError::new(
                StatusCode::CONFLICT,
                "FileAlreadyExists",
                "The object you specified already exists and can not be overwritten.",
            ),
            // *Unverified*: the documentation states the daily capacity but not how an upload
            // past it fails. A 403 with its own code is what OSS does for refused writes;
            // the client must treat it as permanent for the day.
            StoreError::CapacityExceeded => OssError::new(
                StatusCode::FORBIDDEN,
                "QuotaExceeded",
                "The daily upload capacity (capacity_limit_mb) of this account is used up.",
            ),
        })?;
    bump(&state.stats.uploads);
    state
        .stats
        .upload_bytes
        .fetch_add(file.size, std::sync::atomic::Ordering::Relaxed);
    let status = match form.get("success_action_status").map(String::as_str) {
        Some("200") => StatusCode::OK,
        Some("201") => StatusCode::CREATED,
        _ => StatusCode::NO_CONTENT,
    };
    Ok((
        status,
        Stored {
            key: auth.key,
            sha256: file.sha256,
        },
    ))
}

fn wrong_file_count() -> OssError {
    OssError::new(
        StatusCode::BAD_REQUEST,
        "IncorrectNumberOfFilesInPOSTRequest",
        "POST requires exactly one file upload per request.",
    )
}

/// Judges the fields that came before the file, in OSS's order.
fn authorize(state: &State, form: &Form, arrived: DateTime<Utc>) -> Result<Authorized, OssError> {
    let config = &state.config;
    let key = form.get("key").ok_or_else(|| {
        OssError::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "The bucket POST must contain the specified 'key'. If it is specified, please check \
             the order of the fields",
        )
    })?;
    let auth = ["ossaccesskeyid", "policy", "signature"].map(|name| form.get(name));
    let [access_key_id, policy, signature] = match auth {
        [Some(a), Some(p), Some(s)] => [a, p, s],
        // The bucket is private: an anonymous POST may not write.
        [None, None, None] => {
            return Err(OssError::new(
                StatusCode::FORBIDDEN,
                "AccessDenied",
                "You have no right to access this object because of bucket acl.",
            ));
        }
        // *Unverified* wording; the rule (all three or none) is documented.
        _ => {
            return Err(OssError::new(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "Bucket POST must contain the fields OSSAccessKeyId, policy and Signature together.",
            ));
        }
    };
    if access_key_id != &config.oss_access_key_id {
        return Err(OssError::new(
            StatusCode::FORBIDDEN,
            "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
        ));
    }
    if sign(&config.oss_access_key_secret, policy) != *signature {
        return Err(OssError::new(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. \
             Check your key and signing method.",
        ));
    }
    let doc = PolicyDocument::decode(policy).map_err(|err| {
        OssError::new(
            StatusCode::BAD_REQUEST,
            "InvalidPolicyDocument",
            format!("Invalid Policy: {}", err.0),
        )
    })?;
    if doc.expiration <= arrived {
        return Err(OssError::policy_expired());
    }
    if let Some(failed) = doc
        .conditions
        .iter()
        .find(|c| !c.holds(form, &config.bucket))
    {
        return Err(OssError::condition_failed(&failed.echo));
    }
    let grant = grant_for(state, key)?;
    Ok(Authorized {
        key: key.clone(),
        grant,
        length_range: doc.length_range(),
        forbid_overwrite: form
            .get("x-oss-forbid-overwrite")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    })
}

/// The credential whose `upload_dir` holds `key`:
/// `dashscope-instant/<account hex>/<date>/<request_id>/...`. A correctly signed policy for a
/// directory the emulator never issued (only possible with its secret) may not write.
fn grant_for(state: &State, key: &str) -> Result<Grant, OssError> {
    let mut segments = key.split('/');
    let account_hex = segments.nth(1);
    let grant = segments
        .nth(1)
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .and_then(|id| state.grants.get(id))
        .filter(|g| account_hex == Some(hex::encode(g.account).as_str()));
    grant.ok_or_else(|| {
        OssError::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "You have no right to access this object because of bucket acl.",
        )
    })
}

async fn read_text(field: &mut Field<'_>) -> Result<String, OssError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|_| OssError::malformed())? {
        if bytes.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(OssError::malformed());
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| OssError::malformed())
}

async fn drain(field: &mut Field<'_>) -> Result<(), OssError> {
    while field
        .chunk()
        .await
        .map_err(|_| OssError::malformed())?
        .is_some()
    {}
    Ok(())
}

/// Hashes and counts the file part without keeping it. With a bandwidth, each chunk is
/// released no earlier than the time the link would have needed for all bytes so far.
async fn read_file(
    field: &mut Field<'_>,
    bandwidth_mbps: Option<f64>,
) -> Result<(u64, [u8; 32]), OssError> {
    let started = tokio::time::Instant::now();
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = field.chunk().await.map_err(|_| OssError::malformed())? {
        size += chunk.len() as u64;
        hasher.update(&chunk);
        if let Some(mbps) = bandwidth_mbps {
            tokio::time::sleep_until(started + transfer_time(size, mbps)).await;
        }
    }
    Ok((size, hasher.finalize().into()))
}

/// The longest the pacing ever waits: far beyond any real use, yet small enough for
/// `Instant` arithmetic and tokio's timer.
const MAX_TRANSFER_TIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long `bytes` take on a link of `mbps` megabits per second. A rate so small (or a
/// value so odd: zero, negative, NaN) that the time is not representable is capped at
/// [`MAX_TRANSFER_TIME`] instead of panicking; the CLI refuses such rates up front.
fn transfer_time(bytes: u64, mbps: f64) -> Duration {
    if mbps.is_nan() || mbps <= 0.0 {
        return MAX_TRANSFER_TIME;
    }
    Duration::try_from_secs_f64(bytes as f64 * 8.0 / (mbps * 1e6))
        .map_or(MAX_TRANSFER_TIME, |t| t.min(MAX_TRANSFER_TIME))
}

fn success(state: &State, status: StatusCode, stored: &Stored, request_id: &str) -> Response {
    // *Unverified*: OSS's ETag is the MD5 of the content; the emulator only computes SHA-256,
    // so it reports the first 16 bytes of that in the same shape.
    let etag = format!("\"{}\"", hex::encode_upper(&stored.sha256[..16]));
    let mut response = if status == StatusCode::CREATED {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct PostResponse<'a> {
            bucket: &'a str,
            location: String,
            key: &'a str,
            #[serde(rename = "ETag")]
            etag: &'a str,
        }
        let body = PostResponse {
            bucket: &state.config.bucket,
            location: format!("http://{OSS_HOST_ID}/{}", stored.key),
            key: &stored.key,
            etag: &etag,
        };
        let xml = quick_xml::se::to_string_with_root("PostResponse", &body).unwrap_or_default();
        xml_response(status, request_id, xml)
    } else {
        let mut response = status.into_response();
        if let Ok(value) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert("x-oss-request-id", value);
        }
        response
    };
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_time_follows_the_rate_and_never_panics() {
        assert_eq!(transfer_time(1_000_000, 8.0), Duration::from_secs(1));
        assert_eq!(transfer_time(0, 1e-300), Duration::ZERO);
        assert_eq!(transfer_time(u64::MAX, f64::MAX), Duration::ZERO);
        for mbps in [1e-300, f64::MIN_POSITIVE, 5e-324, 0.0, -1.0, f64::NAN] {
            assert_eq!(transfer_time(1, mbps), MAX_TRANSFER_TIME, "{mbps}");
        }
        assert_eq!(transfer_time(u64::MAX, 1.0), MAX_TRANSFER_TIME);
        // The cap keeps the deadline computable.
        let _ = tokio::time::Instant::now() + transfer_time(1, 1e-300);
    }
}
