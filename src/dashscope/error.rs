//! Classified errors of every remote call.
//!
//! Owns the mapping from (HTTP status, body, headers) to an [`ErrorKind`], for all three body
//! shapes the service uses: native JSON `{"code","message","request_id"}`, compatible-mode JSON
//! `{"error":{"message","type","param","code"},"request_id"}` and OSS XML `<Error>…</Error>`,
//! plus bodies that are none of these. Also owns `Retry-After` parsing.
//!
//! It deliberately does not decide what to do about an error (retry, refresh, fail the row):
//! [`ErrorKind`] names the situation, [`ApiError::is_retryable`] is the one policy bit shared by
//! every caller, and the rest is the pipeline's.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use super::auth::scrub;
use crate::failure::{ErrorCode, FailureCode};

/// What kind of failure this is, as far as a caller's next step is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 429 (any `Throttling*` code, `limit_requests`). Retryable. Which limit it reports:
    /// [`ApiError::throttle_scope`].
    Throttled,
    /// 5xx and 408. Retryable.
    Server,
    /// Connect error, timeout, reset, or a body that is truncated or not the expected shape.
    /// Retryable.
    Network,
    /// 401: the key is wrong. The caller stops the whole run.
    Unauthorized,
    /// 403 `AccessDenied` "Invalid according to Policy: Policy expired": refresh, re-upload.
    PolicyExpired,
    /// 409 `FileAlreadyExists`. With content-addressed keys this means the object is there.
    AlreadyExists,
    /// 400 for an invalid or expired `oss://` URL: the caller re-uploads once.
    InvalidOssUrl,
    /// Every other 4xx (and anything else unexpected): fail the row with code and message.
    Rejected,
    /// A 2xx whose body is larger than the call may read ([`super::body::BodyLimit`]). Not
    /// retryable: the same request to the same server would only do it again.
    BodyTooLarge,
    /// The account may not call anything until a bill is paid or a product bought
    /// (`Arrearage`, `CommodityNotPurchased`, `PrepaidBillOverdue`, `PostpaidBillOverdue`,
    /// whatever the status). The caller stops the whole run, as for a 401.
    AccountStopped,
    /// This account may not use this model, or it does not exist (`Model.AccessDenied`,
    /// `AllocationQuota.FreeTierOnly`, `ModelNotFound`, `model_not_found`,
    /// `model_not_supported`). Every call to the model would get the same answer.
    ModelRefused,
    /// The input or the output was refused by moderation (`DataInspectionFailed`,
    /// `data_inspection_failed`): the same row would be refused again.
    ContentRefused,
}

impl ErrorKind {
    /// A short stable name for statistics and result files.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Throttled => "throttled",
            ErrorKind::Server => "server",
            ErrorKind::Network => "network",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::PolicyExpired => "policy_expired",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidOssUrl => "invalid_oss_url",
            ErrorKind::Rejected => "rejected",
            ErrorKind::BodyTooLarge => FailureCode::ResponseTooLarge.as_str(),
            ErrorKind::AccountStopped => "account_stopped",
            ErrorKind::ModelRefused => "model_refused",
            ErrorKind::ContentRefused => "content_refused",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed attempt of one remote call. Never contains the API key once it leaves the
/// client: [`super::Client`] passes every error through [`ApiError::redact`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// `None` when no HTTP response arrived (network errors, local file errors).
    pub status: Option<u16>,
    /// The service's code (`Throttling.RateQuota`, `AccessDenied`, …, `http_<status>` for
    /// an answer without one) or one of ours ([`FailureCode`]: `timeout`, `connect`, …).
    pub code: ErrorCode,
    pub message: String,
    pub request_id: Option<String>,
    pub retry_after: Option<Duration>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (", self.code, self.message)?;
        match self.status {
            Some(status) => write!(f, "HTTP {status}")?,
            None => f.write_str("no HTTP response")?,
        }
        if let Some(id) = &self.request_id {
            write!(f, ", request {id}")?;
        }
        f.write_str(")")
    }
}

/// Bodies can be large HTML pages; a result row only needs the start.
const MAX_MESSAGE_CHARS: usize = 500;
/// Codes and request ids are short names (a request id is a UUID or 24 hex digits); a
/// server that sends a page instead gets it cut here.
const MAX_ID_CHARS: usize = 128;

impl ApiError {
    /// Throttling, server errors and network trouble are worth another attempt; everything
    /// else needs a different request (or a different policy), not the same one again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Server | ErrorKind::Network
        )
    }

    /// No answer at all: the connection failed or the request timed out. (A reply cut off
    /// mid-body is `Network` too, but something answered.)
    pub fn is_no_answer(&self) -> bool {
        self.kind == ErrorKind::Network
            && (self.code == FailureCode::Connect || self.code == FailureCode::Timeout)
    }

    /// An error made on our side of the wire (no HTTP status).
    pub fn local(kind: ErrorKind, code: FailureCode, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            status: None,
            code: code.into(),
            message: message.into(),
            request_id: None,
            retry_after: None,
        }
    }

    /// An error with the service's `code`, as a test needs one without a response.
    #[cfg(test)]
    pub(crate) fn service(kind: ErrorKind, code: &str, message: &str) -> ApiError {
        ApiError {
            code: ErrorCode::service(code),
            ..ApiError::local(kind, FailureCode::Internal, message)
        }
    }

    /// A 2xx whose body is truncated or not the JSON we expect. Classified `Network`: the
    /// usual cause is a connection cut mid-body, and another attempt is the right answer.
    pub fn invalid_body(
        status: u16,
        request_id: Option<String>,
        detail: impl fmt::Display,
    ) -> ApiError {
        ApiError {
            kind: ErrorKind::Network,
            status: Some(status),
            code: FailureCode::InvalidBody.into(),
            message: format!("unexpected response body: {detail}"),
            request_id,
            retry_after: None,
        }
    }

    /// A transport failure from reqwest. Its text names the URL, which never holds the key
    /// (the key travels only in the Authorization header).
    pub fn from_transport(err: &reqwest::Error) -> ApiError {
        let code = if err.is_timeout() {
            FailureCode::Timeout
        } else if err.is_connect() {
            FailureCode::Connect
        } else if err.is_body() || err.is_decode() {
            FailureCode::Body
        } else {
            FailureCode::Network
        };
        // Include the source chain: reqwest's own text is often just "error sending request".
        let mut message = err.to_string();
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        ApiError {
            kind: ErrorKind::Network,
            status: err.status().map(|s| s.as_u16()),
            code: code.into(),
            message,
            request_id: None,
            retry_after: None,
        }
    }

    /// Classifies a non-2xx response from any of the three services.
    pub fn from_response(
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> ApiError {
        let parsed = parse_body(body);
        let code = parsed
            .code
            .filter(|c| !c.trim().is_empty())
            .unwrap_or_else(|| format!("http_{status}"));
        let message = parsed
            .message
            .filter(|m| !m.trim().is_empty())
            .unwrap_or_else(|| fallback_message(status, body));
        let request_id = parsed.request_id.or_else(|| header_request_id(headers));
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now));
        ApiError {
            kind: classify(status, &code, &message),
            status: Some(status),
            code: ErrorCode::service(code),
            message,
            request_id,
            retry_after,
        }
    }

    /// A 2xx body over the call's cap; `message` says which answer, from where, and how far
    /// it was read. The request id comes from the headers, the body being unread.
    pub fn body_too_large(status: u16, headers: &HeaderMap, message: String) -> ApiError {
        ApiError {
            kind: ErrorKind::BodyTooLarge,
            status: Some(status),
            code: FailureCode::ResponseTooLarge.into(),
            message,
            request_id: header_request_id(headers),
            retry_after: None,
        }
    }

    /// Replaces any occurrence of `secret` in every text field taken from a response (code,
    /// message, request id), then cuts each to its length, in that order: a cut first could
    /// leave most of a key that no longer matches in full. A defence in depth: DashScope
    /// does not echo keys, but some gateways quote the Authorization header back. Every
    /// error leaving [`super::Client`] has been through this.
    pub fn redact(mut self, secret: &str) -> ApiError {
        // Only the service's codes are text from an answer; ours are fixed names.
        if let ErrorCode::Service(code) = &self.code {
            self.code = ErrorCode::service(truncate(&scrub(code, secret), MAX_ID_CHARS));
        }
        self.message = truncate(&scrub(&self.message, secret), MAX_MESSAGE_CHARS);
        self.request_id = self
            .request_id
            .map(|id| truncate(&scrub(&id, secret), MAX_ID_CHARS));
        self
    }
}

/// The kind of a definitive refusal, by the service's code alone (protocol notes, section
/// 6): no retry changes these answers, whatever status a gateway puts on them. Billing codes
/// arrive as 429 too, and must not be taken for a throttle.
fn refusal(code: &str) -> Option<ErrorKind> {
    match code {
        "Arrearage" | "CommodityNotPurchased" | "PrepaidBillOverdue" | "PostpaidBillOverdue" => {
            Some(ErrorKind::AccountStopped)
        }
        "Model.AccessDenied"
        | "AllocationQuota.FreeTierOnly"
        | "ModelNotFound"
        | "model_not_found"
        | "model_not_supported" => Some(ErrorKind::ModelRefused),
        "DataInspectionFailed" | "data_inspection_failed" => Some(ErrorKind::ContentRefused),
        _ => None,
    }
}

/// The kind for a response status and the service's code and message.
fn classify(status: u16, code: &str, message: &str) -> ErrorKind {
    if status != 401
        && let Some(kind) = refusal(code)
    {
        return kind;
    }
    // Throttling codes win over the status: `Throttling.AllocationQuota` and friends clear on
    // their own, whatever status a gateway puts on them.
    let throttle_code = code.starts_with("Throttling") || code == "limit_requests";
    match status {
        401 => ErrorKind::Unauthorized,
        429 => ErrorKind::Throttled,
        408 | 500..=599 => ErrorKind::Server,
        _ if throttle_code => ErrorKind::Throttled,
        // "Other 403s are not expiry": only this exact code and message prefix.
        403 if code == "AccessDenied"
            && message.starts_with("Invalid according to Policy: Policy expired") =>
        {
            ErrorKind::PolicyExpired
        }
        409 if code == "FileAlreadyExists" => ErrorKind::AlreadyExists,
        // Native and compatible mode word the code differently (`InvalidParameter`,
        // `invalid_parameter_error`, `InternalError.Algo.InvalidParameter` inside the message);
        // the message sentence is the common part.
        400 if message
            .to_ascii_lowercase()
            .contains("url does not appear to be valid") =>
        {
            ErrorKind::InvalidOssUrl
        }
        _ => ErrorKind::Rejected,
    }
}

#[derive(Default)]
struct ParsedBody {
    code: Option<String>,
    message: Option<String>,
    request_id: Option<String>,
}

fn parse_body(body: &[u8]) -> ParsedBody {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start();
    if trimmed.starts_with('<') {
        return parse_xml(trimmed).unwrap_or_default();
    }
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Ok(value) => parse_json(&value),
        Err(_) => ParsedBody::default(),
    }
}

fn parse_json(value: &serde_json::Value) -> ParsedBody {
    let top_request_id =
        json_string(value.get("request_id")).or_else(|| json_string(value.get("requestId")));
    if let Some(error) = value.get("error").filter(|e| e.is_object()) {
        // Compatible mode. `code` can be null; `type` is the next most specific name.
        return ParsedBody {
            code: json_string(error.get("code")).or_else(|| json_string(error.get("type"))),
            message: json_string(error.get("message")),
            request_id: top_request_id.or_else(|| json_string(error.get("request_id"))),
        };
    }
    ParsedBody {
        code: json_string(value.get("code")),
        message: json_string(value.get("message")),
        request_id: top_request_id,
    }
}

/// Strings as they are; numbers (some gateways send numeric codes) as their text.
fn json_string(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// OSS `<Error>` body. Field names are OSS's own.
#[derive(Deserialize)]
struct OssErrorXml {
    #[serde(rename = "Code")]
    code: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "RequestId")]
    request_id: Option<String>,
}

fn parse_xml(text: &str) -> Option<ParsedBody> {
    let error: OssErrorXml = quick_xml::de::from_str(text).ok()?;
    Some(ParsedBody {
        code: error.code,
        message: error.message,
        request_id: error.request_id,
    })
}

fn header_request_id(headers: &HeaderMap) -> Option<String> {
    ["x-oss-request-id", "x-request-id", "x-dashscope-request-id"]
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .map(str::to_owned)
}

/// For an empty or unparseable body: a short snippet of it, or the status's reason phrase.
fn fallback_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let snippet: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if snippet.is_empty() {
        reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("no response body")
            .to_owned()
    } else {
        snippet
    }
}

/// `text` cut to `max` characters, with an ellipsis when something was cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date (IMF-fixdate, the only form senders may
/// generate; chrono's RFC 2822 parser reads it). A date in the past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at: SystemTime = date.into();
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

mod throttle;
pub use throttle::ThrottleScope;

#[cfg(test)]
mod tests;
