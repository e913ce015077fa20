//! The upload credential: `GET /api/v1/uploads?action=getPolicy&model=M`, its reply, and the
//! object keys we build under it.
//!
//! Owns parsing the policy leniently (the documentation types every field as a string while
//! the service sends numbers: both are accepted) and content-addressed object keys:
//! `<upload_dir>/<16 hex of sha256>_<sanitized basename>`, so that two different files with
//! one basename never collide (the official SDKs use the bare basename and get a 409).
//!
//! Also owns distrust of the reply: a lifetime is clamped before it meets a clock, an upload
//! host that is not an http(s) URL is refused, and a reply that quotes the API key back is
//! refused too (its fields are sent on to the upload host and end in `oss://` URLs).
//!
//! Deliberately not here: caching, refreshing and rate limiting policies
//! ([`super::credentials`]), and hashing files (the caller passes the hex digest).

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Deserializer};

use super::auth::scrub;
use super::body::BodyLimit;
use super::client::Client;
use super::error::{ApiError, ErrorKind, truncate};
use crate::failure::FailureCode;

/// One upload credential. Holds nothing secret about the account: the OSS signature only
/// authorises uploads under `upload_dir` until the policy expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub policy: String,
    pub signature: String,
    pub upload_dir: String,
    pub upload_host: String,
    /// As the service said, clamped to [`MAX_LIFETIME_S`].
    pub expire_in_seconds: u64,
    pub max_file_size_mb: u64,
    pub capacity_limit_mb: Option<u64>,
    pub oss_access_key_id: String,
    pub x_oss_object_acl: String,
    pub x_oss_forbid_overwrite: String,
    pub request_id: String,
    /// When the getPolicy request was *sent*: expiry counted from here is conservative.
    pub fetched_at: Instant,
}

/// Longest sanitized basename in an object key. OSS allows 1023 bytes per key; the
/// upload_dir takes ~100, and a short name keeps result files readable.
const MAX_NAME_LEN: usize = 96;
/// Hex characters of the content hash in a key: 64 bits, collision-free for any real batch.
const HASH_PREFIX_LEN: usize = 16;
/// The longest lifetime believed, in seconds. The reply we saw says 300; a number large
/// enough to overflow a clock (`u64::MAX`) must not panic the run, and a long lifetime gains
/// nothing: refetching once an hour per model costs one request of the 100 QPS. If the
/// service really lets a policy lapse sooner, OSS says "Policy expired" and the pipeline
/// fetches a new one.
pub const MAX_LIFETIME_S: u64 = 3600;

impl Policy {
    /// `max_file_size_mb` in bytes. The decoded policy's `content-length-range` (1073741824
    /// for 1024) shows that "MB" means MiB.
    pub fn max_file_size_bytes(&self) -> u64 {
        self.max_file_size_mb.saturating_mul(1024 * 1024)
    }

    /// `<upload_dir>/<first 16 hex of sha256>_<sanitized basename>`.
    ///
    /// The basename keeps only `[A-Za-z0-9._-]` (anything else becomes `_`), is capped at
    /// 96 characters with the extension kept (the model service may look at
    /// it), and is never empty.
    pub fn object_key(&self, sha256_hex: &str, file_name: &str) -> String {
        let hash: String = sha256_hex
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(HASH_PREFIX_LEN)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let dir = self.upload_dir.trim_end_matches('/');
        format!("{dir}/{hash}_{}", sanitize_name(file_name))
    }

    /// When OSS stops accepting this policy.
    pub fn expires_at(&self) -> Instant {
        self.after_fetch(self.lifetime())
    }

    /// The lifetime, clamped again here because the fields are public: whoever built this
    /// policy, no service-given number reaches `Instant` arithmetic unbounded.
    fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expire_in_seconds.min(MAX_LIFETIME_S))
    }

    /// `fetched_at + span`; if even that overflowed, the fetch time itself (the policy
    /// counts as expired and is fetched again, never a panic).
    fn after_fetch(&self, span: Duration) -> Instant {
        self.fetched_at.checked_add(span).unwrap_or(self.fetched_at)
    }

    /// Until when it is safe to hand out: `expire_in_seconds - margin` after the fetch, the
    /// margin capped at a quarter of the lifetime. Without the cap, a short-lived policy
    /// (a lifetime at or under the margin) would never be reused and every upload would
    /// spend a getPolicy call of the 100 QPS; a quarter of the lifetime still leaves the
    /// upload that time to reach OSS, and a late one gets "Policy expired", which is retried.
    pub fn reusable_until(&self, margin: Duration) -> Instant {
        let lifetime = self.lifetime();
        self.after_fetch(lifetime.saturating_sub(margin.min(lifetime / 4)))
    }
}

/// `oss://` + key: the URL a model call takes.
pub fn oss_url(object_key: &str) -> String {
    format!("oss://{object_key}")
}

fn sanitize_name(file_name: &str) -> String {
    // Accept a path as well as a bare name; either separator, whatever the platform.
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Everything is ASCII now, so byte slicing is char slicing.
    let clean = if clean.len() > MAX_NAME_LEN {
        match clean.rfind('.') {
            Some(dot) if clean.len() - dot <= 16 && dot > 0 => {
                let ext = &clean[dot..];
                format!("{}{ext}", &clean[..MAX_NAME_LEN - ext.len()])
            }
            _ => clean[..MAX_NAME_LEN].to_owned(),
        }
    } else {
        clean
    };
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        "file".to_owned()
    } else {
        clean
    }
}

/// The wire shape. Numbers and strings are both accepted for numeric fields, and strings,
/// numbers or booleans for the `x_oss_*` values (echoed back verbatim as text).
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    request_id: Option<String>,
    data: Option<PolicyData>,
}

#[derive(Deserialize)]
struct PolicyData {
    policy: String,
    signature: String,
    upload_dir: String,
    upload_host: String,
    #[serde(deserialize_with = "flexible_u64")]
    expire_in_seconds: u64,
    /// Documented on every reply; if a reply ever lacks it, assume the documented 1 GB cap and
    /// let OSS's content-length-range have the final word.
    #[serde(default = "default_max_mb", deserialize_with = "flexible_u64")]
    max_file_size_mb: u64,
    #[serde(default, deserialize_with = "flexible_opt_u64")]
    capacity_limit_mb: Option<u64>,
    oss_access_key_id: String,
    #[serde(default, deserialize_with = "flexible_string")]
    x_oss_object_acl: String,
    #[serde(default, deserialize_with = "flexible_string")]
    x_oss_forbid_overwrite: String,
}

fn default_max_mb() -> u64 {
    1024
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Float(f64),
    Text(String),
}

impl NumOrText {
    fn to_u64(&self) -> Option<u64> {
        match self {
            NumOrText::Num(n) => Some(*n),
            // "300.0" style, and integers too large for u64 (serde reads those as floats);
            // `as` saturates, and the caller clamps. Negative or fractional values are not a
            // valid lifetime or size.
            NumOrText::Float(f) if *f >= 0.0 && f.fract() == 0.0 => Some(*f as u64),
            NumOrText::Float(_) => None,
            NumOrText::Text(s) => {
                let s = s.trim();
                // All digits but past u64: as large as it gets, like a float above.
                let huge = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                s.parse().ok().or(huge.then_some(u64::MAX))
            }
        }
    }
}

fn flexible_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = NumOrText::deserialize(d)?;
    value.to_u64().ok_or_else(|| {
        serde::de::Error::custom("expected a non-negative integer or a string holding one")
    })
}

fn flexible_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    // Optional and informational: null or garbage just means "unknown".
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }))
}

fn flexible_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    })
}

/// Parses a 200 getPolicy body. A body that is not this shape is `Network` (retryable): the
/// realistic cause is a truncated reply.
pub(super) fn parse_policy(body: &[u8], fetched_at: Instant) -> Result<Policy, ApiError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid_body(200, None, e))?;
    let request_id = envelope.request_id;
    let Some(data) = envelope.data else {
        return Err(ApiError::invalid_body(200, request_id, "no `data` object"));
    };
    if let Err(reason) = check_upload_host(&data.upload_host) {
        return Err(refused(
            FailureCode::InvalidUploadHost,
            format!(
                "getPolicy named the upload host {:?}, {reason}; dashbatch cannot upload \
                 there (hint: check that the service URL points at DashScope)",
                data.upload_host
            ),
            request_id,
        ));
    }
    Ok(Policy {
        policy: data.policy,
        signature: data.signature,
        upload_dir: data.upload_dir,
        upload_host: data.upload_host,
        expire_in_seconds: data.expire_in_seconds.min(MAX_LIFETIME_S),
        max_file_size_mb: data.max_file_size_mb,
        capacity_limit_mb: data.capacity_limit_mb,
        oss_access_key_id: data.oss_access_key_id,
        x_oss_object_acl: data.x_oss_object_acl,
        x_oss_forbid_overwrite: data.x_oss_forbid_overwrite,
        request_id: request_id.unwrap_or_default(),
        fetched_at,
    })
}

/// Whether an upload can go to `host`. Read the way the uploader reads it
/// ([`Client::upload`]): the documented value is a full URL, and a bare host name gets the
/// https it implies. Anything else (`file://`, `ftp://`, garbage) would fail every attempt
/// the same way, so it is refused here, once, instead of being retried as a network error.
fn check_upload_host(host: &str) -> Result<(), String> {
    let url = if host.contains("://") {
        host.to_owned()
    } else {
        format!("https://{host}")
    };
    match reqwest::Url::parse(&url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => Err(format!(
            "whose scheme {:?} is not http or https",
            url.scheme()
        )),
        Ok(url) if url.host_str().is_none_or(str::is_empty) => Err("which has no host".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("which is not a URL ({e})")),
    }
}

/// A 200 getPolicy reply we will not use. Not retryable: the next reply would say the same.
fn refused(code: FailureCode, message: String, request_id: Option<String>) -> ApiError {
    ApiError {
        kind: ErrorKind::Rejected,
        status: Some(200),
        code: code.into(),
        message,
        request_id,
        retry_after: None,
    }
}

/// Refuses a policy that quotes `secret` back in a field that is sent on to the upload host
/// or ends up in an `oss://` URL (these cannot be redacted: OSS checks them verbatim), and
/// scrubs the request id, which is only ever shown.
fn vet(mut policy: Policy, secret: &str) -> Result<Policy, ApiError> {
    let request_id = truncate(&scrub(&policy.request_id, secret), 128);
    policy.request_id = request_id;
    if secret.is_empty() {
        return Ok(policy);
    }
    let sent_on = [
        ("policy", &policy.policy),
        ("signature", &policy.signature),
        ("upload_dir", &policy.upload_dir),
        ("upload_host", &policy.upload_host),
        ("oss_access_key_id", &policy.oss_access_key_id),
        ("x_oss_object_acl", &policy.x_oss_object_acl),
        ("x_oss_forbid_overwrite", &policy.x_oss_forbid_overwrite),
    ];
    if let Some((field, _)) = sent_on.iter().find(|(_, value)| value.contains(secret)) {
        return Err(refused(
            FailureCode::PolicyQuotesKey,
            format!(
                "the upload credential quotes the API key back in its `{field}` field; \
                 dashbatch will not send it on to the upload host (hint: something between \
                 dashbatch and DashScope echoes the Authorization header)"
            ),
            Some(policy.request_id),
        ));
    }
    Ok(policy)
}

impl Client {
    /// One attempt at `GET {root}/api/v1/uploads?action=getPolicy&model=M`.
    pub async fn get_policy(&self, model: &str) -> Result<Policy, ApiError> {
        let fetched_at = Instant::now();
        let request = self
            .inner
            .http
            .get(self.url("/api/v1/uploads"))
            .query(&[("action", "getPolicy"), ("model", model)])
            .header(AUTHORIZATION, self.inner.auth.clone())
            // The documentation lists it as required even on this GET; it costs nothing.
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.inner.config.request_timeout);
        let (_, _, body) = self.send(request, BodyLimit::Policy).await?;
        let secret = self.secret();
        parse_policy(&body, fetched_at)
            .and_then(|policy| vet(policy, secret))
            .map_err(|err| err.redact(secret))
    }
}

#[cfg(test)]
pub(crate) mod tests;
