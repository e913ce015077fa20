//! OSS PostObject errors: XML `<Error><Code/><Message/><RequestId/><HostId/></Error>` with
//! `Content-Type: application/xml`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The OSS host part of `HostId` in error bodies, as the real bucket's endpoint.
pub const OSS_HOST_ID: &str = "dashscope-file-mgr.oss-cn-beijing.aliyuncs.com";

/// An OSS PostObject failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct OssError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl OssError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn malformed() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MalformedPOSTRequest",
            "The body of your POST request is not well-formed multipart/form-data",
        )
    }

    pub fn policy_expired() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Invalid according to Policy: Policy expired.",
        )
    }

    /// `echo` is the failing condition as OSS prints it, e.g. `["starts-with", "$key", "dir/"]`.
    pub fn condition_failed(echo: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!("Invalid according to Policy: Policy Condition failed: {echo}"),
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "Thread pool is almost full, please retry later.",
        )
    }

    /// OSS has no 429: it sheds load with 503 `TotalQpsLimitExceeded`.
    pub fn qps_exceeded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TotalQpsLimitExceeded",
            "Max total qps limit is exceeded.",
        )
    }

    /// A method the upload host does not serve (it takes only `POST /`).
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "The specified method is not allowed against this resource.",
        )
    }

    pub fn response(&self, request_id: &str) -> Response {
        #[derive(Serialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
            request_id: &'a str,
            host_id: &'a str,
        }
        let body = Body {
            code: self.code,
            message: &self.message,
            request_id,
            host_id: OSS_HOST_ID,
        };
        let xml = match quick_xml::se::to_string_with_root("Error", &body) {
            Ok(xml) => xml,
            // Only strings go in, so serialising cannot fail; answer something valid anyway.
            Err(_) => "<Error><Code>InternalError</Code></Error>".to_owned(),
        };
        xml_response(self.status, request_id, xml)
    }
}

/// An XML answer from the OSS host, with the declaration and `x-oss-request-id`.
pub fn xml_response(status: StatusCode, request_id: &str, xml: String) -> Response {
    let body = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{xml}");
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-oss-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn oss_error_is_the_documented_xml() {
        let response = OssError::policy_expired().response("RID");
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/xml");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert_eq!(
            text,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code>\
             <Message>Invalid according to Policy: Policy expired.</Message>\
             <RequestId>RID</RequestId><HostId>dashscope-file-mgr.oss-cn-beijing.aliyuncs.com</HostId></Error>"
        );
    }
}
