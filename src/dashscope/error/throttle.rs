//! What a 429 is about: the scope of the limit it reports, read from the service's code.
//!
//! Classified by code only, never by message text: messages are prose that changes
//! between API versions and languages, codes are the contract (see the table of 429s in
//! the protocol notes). Native and compatible mode name the same limit differently.

use super::{ApiError, ErrorKind};

/// Which limit a 429 reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThrottleScope {
    /// Requests per second or minute: `Throttling.RateQuota`, `limit_requests`.
    Requests,
    /// The request rate grew too fast: `Throttling.BurstRate`, `limit_burst_rate`.
    Burst,
    /// Tokens per second or minute: `Throttling.AllocationQuota`, `insufficient_quota`
    /// (OpenAI's billing word, but here a token-rate throttle that clears on its own).
    Tokens,
    /// `Throttling`, a bare `http_429`, or any code we do not know.
    Unknown,
}

impl ThrottleScope {
    /// The scope named by a service code.
    pub fn from_code(code: &str) -> ThrottleScope {
        match code {
            "Throttling.RateQuota" | "limit_requests" => ThrottleScope::Requests,
            "Throttling.BurstRate" | "limit_burst_rate" => ThrottleScope::Burst,
            "Throttling.AllocationQuota" | "insufficient_quota" => ThrottleScope::Tokens,
            _ => ThrottleScope::Unknown,
        }
    }

    /// A short stable name for logs and statistics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ThrottleScope::Requests => "requests",
            ThrottleScope::Burst => "burst",
            ThrottleScope::Tokens => "tokens",
            ThrottleScope::Unknown => "unknown",
        }
    }
}

impl ApiError {
    /// The scope of the limit, if this is a throttle ([`ErrorKind::Throttled`]).
    pub fn throttle_scope(&self) -> Option<ThrottleScope> {
        (self.kind == ErrorKind::Throttled).then(|| ThrottleScope::from_code(self.code.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderMap;
    use std::time::SystemTime;

    fn scope(status: u16, body: &str) -> Option<ThrottleScope> {
        ApiError::from_response(
            status,
            &HeaderMap::new(),
            body.as_bytes(),
            SystemTime::now(),
        )
        .throttle_scope()
    }

    fn native(code: &str, message: &str) -> String {
        format!(r#"{{"code":"{code}","message":"{message}","request_id":"r"}}"#)
    }

    fn compatible(code: &str, message: &str) -> String {
        format!(
            r#"{{"error":{{"message":"{message}","type":"{code}","param":null,"code":"{code}"}},"request_id":"r"}}"#
        )
    }

    #[test]
    fn both_apis_name_each_scope() {
        use ThrottleScope::*;
        for (code, expected) in [
            ("Throttling.RateQuota", Requests),
            ("limit_requests", Requests),
            ("Throttling.BurstRate", Burst),
            ("limit_burst_rate", Burst),
            ("Throttling.AllocationQuota", Tokens),
            ("insufficient_quota", Tokens),
            ("Throttling", Unknown),
            ("SomethingNew", Unknown),
        ] {
            assert_eq!(scope(429, &native(code, "x")), Some(expected), "{code}");
            assert_eq!(scope(429, &compatible(code, "x")), Some(expected), "{code}");
        }
        // No body at all: a throttle of unknown scope.
        assert_eq!(scope(429, ""), Some(Unknown));
    }

    #[test]
    fn the_message_never_decides_the_scope() {
        // A message that names another limit does not override the code.
        let body = native("Throttling.RateQuota", "Request rate increased too quickly");
        assert_eq!(scope(429, &body), Some(ThrottleScope::Requests));
        let body = native("Throttling", "Allocated quota exceeded, tokens per minute");
        assert_eq!(scope(429, &body), Some(ThrottleScope::Unknown));
    }

    #[test]
    fn only_throttles_have_a_scope() {
        assert_eq!(scope(500, &native("InternalError", "x")), None);
        assert_eq!(scope(400, &native("InvalidParameter", "x")), None);
        // A throttling code under another status is still a throttle.
        assert_eq!(
            scope(403, &native("Throttling.AllocationQuota", "x")),
            Some(ThrottleScope::Tokens)
        );
    }
}
