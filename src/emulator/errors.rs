//! The error bodies, one shape per API, so handlers only choose a code.
//!
//! - OSS (the upload host): XML `<Error><Code/><Message/><RequestId/><HostId/></Error>` with
//!   `Content-Type: application/xml`.
//! - DashScope native: `{"code","message","request_id"}`.
//! - OpenAI-compatible mode: `{"error":{"message","type","param","code"},"request_id"}`.
//!
//! [`ApiError`] carries both the native and the compatible spelling of one failure, and is
//! rendered in whichever shape the endpoint speaks.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

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

/// Which JSON error shape an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Native,
    Compatible,
}

/// A DashScope API failure in both spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Native `code`.
    pub code: &'static str,
    pub message: String,
    /// Compatible-mode `error.code` and `error.type`.
    pub compat_code: &'static str,
    pub compat_type: &'static str,
}

impl ApiError {
    fn new(
        status: StatusCode,
        code: &'static str,
        compat_code: &'static str,
        compat_type: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            compat_code,
            compat_type,
        }
    }

    pub fn invalid_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "InvalidApiKey",
            "invalid_api_key",
            "invalid_request_error",
            "Invalid API-key provided.",
        )
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "invalid_parameter_error",
            "invalid_request_error",
            message,
        )
    }

    /// An unknown model. *Unverified*: the native API is reported to answer 400
    /// `InvalidParameter` "Model not exist."; compatible mode follows OpenAI with 404
    /// `model_not_found`. A native 404 would also be plausible; either way a client must
    /// treat it as permanent.
    pub fn model_not_found(model: &str, shape: Shape) -> Self {
        match shape {
            Shape::Native => Self::invalid_parameter("Model not exist."),
            Shape::Compatible => Self::new(
                StatusCode::NOT_FOUND,
                "ModelNotFound",
                "model_not_found",
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            ),
        }
    }

    pub fn throttled() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttling.RateQuota",
            "limit_requests",
            "limit_requests",
            "Requests rate limit exceeded, please try again later.",
        )
    }

    /// An `oss://` URL sent without `X-DashScope-OssResourceResolve: enable`.
    pub fn data_inspection() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameter.DataInspection",
            "InvalidParameter.DataInspection",
            "invalid_request_error",
            "The media format is not supported or incorrect for the data inspection.",
        )
    }

    /// A malformed, unknown, foreign or expired `oss://` URL. The documentation gives the
    /// code `invalid_parameter_error` (the compatible spelling); the native spelling
    /// `InvalidParameter` is *unverified*. The message is the documented one in both.
    pub fn invalid_url() -> Self {
        Self::invalid_parameter(
            "InternalError.Algo.InvalidParameter: The provided URL does not appear to be valid. \
             Ensure it is correctly formatted.",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "internal_error",
            "internal_error",
            "An internal error has occured, please try again later or contact service support.",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "service_unavailable",
            "service_unavailable",
            "The service is temporarily unavailable, please try again later.",
        )
    }

    /// A method the endpoint does not serve. *Unverified*: no documented body; this follows
    /// the API's error shape with a self-explanatory code.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "method_not_allowed",
            "invalid_request_error",
            "The HTTP method is not allowed for this resource.",
        )
    }

    /// The code a statistic or a log should use for this error in `shape`.
    pub fn code_in(&self, shape: Shape) -> &'static str {
        match shape {
            Shape::Native => self.code,
            Shape::Compatible => self.compat_code,
        }
    }

    pub fn response(&self, shape: Shape, request_id: &str) -> Response {
        let body = match shape {
            Shape::Native => json!({
                "code": self.code,
                "message": self.message,
                "request_id": request_id,
            }),
            Shape::Compatible => json!({
                "error": {
                    "message": self.message,
                    "type": self.compat_type,
                    "param": null,
                    "code": self.compat_code,
                },
                "request_id": request_id,
            }),
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// Adds `Allow: <methods>` to a 405 answer, as HTTP asks.
pub fn with_allow(mut response: Response, methods: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(methods));
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
