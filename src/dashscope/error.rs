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

/// What kind of failure this is, as far as a caller's next step is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 429 (any `Throttling*` code, `limit_requests`). Retryable.
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
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed attempt of one remote call. Never contains the API key (see
/// [`ApiError::redact`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    pub kind: ErrorKind,
    /// `None` when no HTTP response arrived (network errors, local file errors).
    pub status: Option<u16>,
    /// The service's code (`Throttling.RateQuota`, `AccessDenied`, …) or one of ours:
    /// `http_<status>`, `timeout`, `connect`, `network`, `invalid_body`, `file_unreadable`,
    /// `file_too_large`.
    pub code: String,
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

impl ApiError {
    /// Throttling, server errors and network trouble are worth another attempt; everything
    /// else needs a different request (or a different policy), not the same one again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Server | ErrorKind::Network
        )
    }

    /// An error made on our side of the wire (no HTTP status).
    pub fn local(kind: ErrorKind, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            status: None,
            code: code.to_owned(),
            message: message.into(),
            request_id: None,
            retry_after: None,
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
            code: "invalid_body".to_owned(),
            message: truncate(&format!("unexpected response body: {detail}")),
            request_id,
            retry_after: None,
        }
    }

    /// A transport failure from reqwest. Its text names the URL, which never holds the key
    /// (the key travels only in the Authorization header).
    pub fn from_transport(err: &reqwest::Error) -> ApiError {
        let code = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connect"
        } else if err.is_body() || err.is_decode() {
            "body"
        } else {
            "network"
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
            code: code.to_owned(),
            message: truncate(&message),
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
            code,
            message: truncate(&message),
            request_id,
            retry_after,
        }
    }

    /// Replaces any occurrence of `secret` in the text fields. A defence in depth: DashScope
    /// does not echo keys, but some gateways quote the Authorization header back.
    pub fn redact(mut self, secret: &str) -> ApiError {
        if !secret.is_empty() {
            self.message = self.message.replace(secret, "****");
            self.code = self.code.replace(secret, "****");
        }
        self
    }
}

/// The kind for a response status and the service's code and message.
fn classify(status: u16, code: &str, message: &str) -> ErrorKind {
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

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_MESSAGE_CHARS) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn classify_body(status: u16, body: &str) -> ApiError {
        ApiError::from_response(
            status,
            &HeaderMap::new(),
            body.as_bytes(),
            SystemTime::now(),
        )
    }

    fn oss_xml(code: &str, message: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>5C3D9175B6FC201293AD4890</RequestId><HostId>dashscope-file-mgr.oss-cn-beijing.aliyuncs.com</HostId></Error>"#
        )
    }

    #[test]
    fn native_json_bodies() {
        let e = classify_body(
            401,
            r#"{"code":"InvalidApiKey","message":"Invalid API-key provided.","request_id":"r-1"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        assert_eq!(e.code, "InvalidApiKey");
        assert_eq!(e.message, "Invalid API-key provided.");
        assert_eq!(e.request_id.as_deref(), Some("r-1"));
        assert!(!e.is_retryable());

        let e = classify_body(
            429,
            r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later.","request_id":"r-2"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert!(e.is_retryable());

        let e = classify_body(
            400,
            r#"{"code":"InvalidParameter.DataInspection","message":"The media format is not supported or incorrect for the data inspection.","request_id":"r-3"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert_eq!(e.code, "InvalidParameter.DataInspection");

        let e = classify_body(
            400,
            r#"{"code":"InvalidParameter","message":"The provided URL does not appear to be valid. Ensure it is correctly formatted.","request_id":"r-4"}"#,
        );
        assert_eq!(e.kind, ErrorKind::InvalidOssUrl);
    }

    #[test]
    fn compatible_json_bodies() {
        let e = classify_body(
            400,
            r#"{"error":{"message":"InternalError.Algo.InvalidParameter: The provided URL does not appear to be valid. Ensure it is correctly formatted.","type":"invalid_request_error","param":null,"code":"invalid_parameter_error"},"request_id":"c-1"}"#,
        );
        assert_eq!(e.kind, ErrorKind::InvalidOssUrl);
        assert_eq!(e.code, "invalid_parameter_error");
        assert_eq!(e.request_id.as_deref(), Some("c-1"));

        let e = classify_body(
            429,
            r#"{"error":{"message":"Requests rate limit exceeded, please try again later.","type":"limit_requests","param":null,"code":"limit_requests"},"request_id":"c-2"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Throttled);
        assert_eq!(e.code, "limit_requests");

        // Code null: fall back to the type.
        let e = classify_body(
            401,
            r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":null}}"#,
        );
        assert_eq!(e.kind, ErrorKind::Unauthorized);
        assert_eq!(e.code, "invalid_request_error");

        let e = classify_body(
            404,
            r#"{"error":{"message":"The model `nope` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"},"request_id":"c-3"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert_eq!(e.code, "model_not_found");
    }

    #[test]
    fn oss_xml_bodies() {
        let cases = [
            (
                403,
                "AccessDenied",
                "Invalid according to Policy: Policy expired.",
                ErrorKind::PolicyExpired,
            ),
            (
                403,
                "AccessDenied",
                r#"Invalid according to Policy: Policy Condition failed: ["starts-with", "$key", "dir/"]"#,
                ErrorKind::Rejected,
            ),
            (
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
                ErrorKind::Rejected,
            ),
            (
                403,
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                ErrorKind::Rejected,
            ),
            (
                400,
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size.",
                ErrorKind::Rejected,
            ),
            (
                400,
                "InvalidArgument",
                "The bucket POST must contain the specified 'key'. If it is specified, please check the order of the fields",
                ErrorKind::Rejected,
            ),
            (
                400,
                "MalformedPOSTRequest",
                "The body of your POST request is not well-formed multipart/form-data",
                ErrorKind::Rejected,
            ),
            (
                400,
                "IncorrectNumberOfFilesInPOSTRequest",
                "POST requires exactly one file upload per request.",
                ErrorKind::Rejected,
            ),
            (
                409,
                "FileAlreadyExists",
                "The object you specified already exists and can not be overwritten.",
                ErrorKind::AlreadyExists,
            ),
            (
                503,
                "ServiceUnavailable",
                "Thread pool is almost full, please retry later.",
                ErrorKind::Server,
            ),
            (
                503,
                "TotalQpsLimitExceeded",
                "Max total qps limit is exceeded.",
                ErrorKind::Server,
            ),
        ];
        for (status, code, message, kind) in cases {
            // The XML escapes quotes only where needed; these messages have none that matter.
            let e = classify_body(status, &oss_xml(code, message));
            assert_eq!(e.kind, kind, "{code}: {message}");
            assert_eq!(e.code, code);
            assert_eq!(e.message, message);
            assert_eq!(e.request_id.as_deref(), Some("5C3D9175B6FC201293AD4890"));
        }
    }

    #[test]
    fn policy_expired_needs_code_and_prefix() {
        let other_code = classify_body(
            403,
            &oss_xml("Forbidden", "Invalid according to Policy: Policy expired."),
        );
        assert_eq!(other_code.kind, ErrorKind::Rejected);
        let other_status = classify_body(
            400,
            &oss_xml(
                "AccessDenied",
                "Invalid according to Policy: Policy expired.",
            ),
        );
        assert_eq!(other_status.kind, ErrorKind::Rejected);
    }

    #[test]
    fn empty_and_non_json_bodies() {
        let e = classify_body(502, "");
        assert_eq!(e.kind, ErrorKind::Server);
        assert_eq!(e.code, "http_502");
        assert_eq!(e.message, "Bad Gateway");

        let e = classify_body(500, "<html><body>\n  oops  </body></html>");
        assert_eq!(e.code, "http_500");
        assert_eq!(e.kind, ErrorKind::Server);

        let e = classify_body(418, "not json at all");
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert_eq!(e.code, "http_418");
        assert_eq!(e.message, "not json at all");

        let e = classify_body(408, "{}");
        assert_eq!(e.kind, ErrorKind::Server);
        assert_eq!(e.code, "http_408");

        let long = "x".repeat(5000);
        assert!(classify_body(400, &long).message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn throttling_codes_on_other_statuses() {
        let e = classify_body(
            400,
            r#"{"code":"Throttling.AllocationQuota","message":"Allocated quota exceeded, please increase your quota limit.","request_id":"x"}"#,
        );
        assert_eq!(e.kind, ErrorKind::Throttled);
    }

    #[test]
    fn request_id_from_headers_when_body_has_none() {
        let mut headers = HeaderMap::new();
        headers.insert("x-oss-request-id", HeaderValue::from_static("OSS-1"));
        let e = ApiError::from_response(500, &headers, b"", SystemTime::now());
        assert_eq!(e.request_id.as_deref(), Some("OSS-1"));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 UTC
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("soon", now), None);

        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("12"));
        let e = ApiError::from_response(429, &headers, b"", now);
        assert_eq!(e.retry_after, Some(Duration::from_secs(12)));
    }

    #[test]
    fn display_format_and_redaction() {
        let e = classify_body(
            401,
            r#"{"code":"InvalidApiKey","message":"Invalid API-key provided: sk-secret123","request_id":"r-9"}"#,
        )
        .redact("sk-secret123");
        assert_eq!(
            e.to_string(),
            "InvalidApiKey: Invalid API-key provided: **** (HTTP 401, request r-9)"
        );
        let local = ApiError::local(ErrorKind::Rejected, "file_unreadable", "gone");
        assert_eq!(
            local.to_string(),
            "file_unreadable: gone (no HTTP response)"
        );
    }

    #[test]
    fn kind_names() {
        assert_eq!(ErrorKind::Throttled.as_str(), "throttled");
        assert_eq!(ErrorKind::InvalidOssUrl.as_str(), "invalid_oss_url");
    }
}
