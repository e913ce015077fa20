//! The error bodies, one shape per API, so handlers only choose a code.
//!
//! - OSS (the upload host): XML, in [`oss`].
//! - DashScope native: `{"code","message","request_id"}`.
//! - OpenAI-compatible mode: `{"error":{"message","type","param","code"},"request_id"}`.
//! - Inside a stream that already answered 200: native `event:error` frames carry the native
//!   body; compatible mode sends `data: {"error":{"message","type","code"}}` (protocol notes §5).
//!
//! [`ApiError`] carries both the native and the compatible spelling of one failure, and is
//! rendered in whichever shape the endpoint speaks. Where the notes give a body that differs
//! from the usual compatible shape (the stream-only refusals), [`CompatBody`] says so.

mod oss;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use oss::{OSS_HOST_ID, OssError, xml_response};

/// The wording the algorithm layer gives its parameter errors, as the real service prints
/// them (e.g. `<400> InternalError.Algo.InvalidParameter: Range of max_tokens should be [1, 8192]`).
const ALGO_PARAM: &str = "<400> InternalError.Algo.InvalidParameter: ";

/// Which JSON error shape an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Native,
    Compatible,
}

/// How the compatible-mode body of an error is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatBody {
    /// `{"error":{"message","type","param":null,"code"},"request_id"}`.
    Standard,
    /// The stream-only refusal exactly as the notes show it:
    /// `{"error":{"code","message","type"},"id":"chatcmpl-…","request_id"}` (no `param`).
    WithId,
    /// The Omni stream-only refusal exactly as the notes show it:
    /// `{"error":{"code":null,"message","type"}}` (no code, no ids).
    Bare,
}

/// A DashScope API failure in both spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Native `code`.
    pub code: &'static str,
    /// Native `message`, and the compatible one unless `compat_message` is set.
    pub message: String,
    /// Compatible-mode `error.code` and `error.type`.
    pub compat_code: &'static str,
    pub compat_type: &'static str,
    /// Where compatible mode words the same failure differently.
    pub compat_message: Option<String>,
    pub compat_body: CompatBody,
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
            compat_message: None,
            compat_body: CompatBody::Standard,
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

    /// A generation parameter out of range, in the algorithm layer's wording.
    pub fn algo_parameter(detail: &str) -> Self {
        Self::invalid_parameter(format!("{ALGO_PARAM}{detail}"))
    }

    /// An unknown model: 404 `ModelNotFound` / `model_not_found` (protocol notes §6). The
    /// message is *unverified*: OpenAI's wording, which compatible mode follows.
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "ModelNotFound",
            "model_not_found",
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
    }

    /// A model this account may not use. The notes give only the native code; compatible
    /// mode passes DashScope's own code through, as it does for `Arrearage` (*unverified*).
    pub fn model_access_denied() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "Model.AccessDenied",
            "Model.AccessDenied",
            "invalid_request_error",
            "Model access denied.",
        )
    }

    /// A non-stream call to a model that answers only as a stream. Compatible mode: the two
    /// bodies of the notes, Omni's and everyone else's. Native: the notes give no body, so
    /// this is the documented-looking reading, the same 400 `InvalidParameter` with the same
    /// message in the native shape.
    pub fn stream_only(model: &str) -> Self {
        let omni = model.contains("omni");
        let message = if omni {
            format!("{model} only support with stream=true")
        } else {
            // The trailing space is the service's own.
            "This model only support stream mode, please enable the stream parameter to \
             access the model. "
                .to_owned()
        };
        Self {
            compat_body: if omni {
                CompatBody::Bare
            } else {
                CompatBody::WithId
            },
            ..Self::invalid_parameter(message)
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

    /// The growth-rate ("traffic burst") limit. The notes quote the start of the message
    /// ("Request rate increased too quickly…"); the rest is the documented-looking advice.
    pub fn burst_rate() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Throttling.BurstRate",
            "limit_burst_rate",
            "limit_burst_rate",
            "Request rate increased too quickly. To ensure system stability, please adjust \
             your client logic to scale requests more smoothly over time.",
        )
    }

    /// The tokens-per-second/minute throttle. Compatible mode reports it with OpenAI's
    /// billing code and wording, though it is transient (protocol notes §6). Both messages
    /// are *unverified* readings.
    pub fn token_quota() -> Self {
        Self {
            compat_message: Some(
                "You exceeded your current quota, please check your plan and billing details."
                    .to_owned(),
            ),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Throttling.AllocationQuota",
                "insufficient_quota",
                "insufficient_quota",
                "Allocated quota exceeded, please increase your quota limit.",
            )
        }
    }

    /// An account stop (`billing` is one of [`BillingStop`]'s codes).
    pub fn billing(stop: BillingStop) -> Self {
        let (status, message) = match stop {
            BillingStop::Arrearage => (
                StatusCode::BAD_REQUEST,
                "Access denied, please make sure your account is in good standing.",
            ),
            // The notes name these 429 codes but give no message: documented-looking ones.
            BillingStop::CommodityNotPurchased => (
                StatusCode::TOO_MANY_REQUESTS,
                "Commodity has not purchased yet.",
            ),
            BillingStop::PrepaidBillOverdue => (
                StatusCode::TOO_MANY_REQUESTS,
                "The prepaid bill is overdue.",
            ),
            BillingStop::PostpaidBillOverdue => (
                StatusCode::TOO_MANY_REQUESTS,
                "The postpaid bill is overdue.",
            ),
        };
        let code = stop.as_str();
        Self::new(status, code, code, code, message)
    }

    /// Content moderation of the input.
    pub fn input_inspection() -> Self {
        Self::inspection("Input data may contain inappropriate content.")
    }

    /// Content moderation of the output (also sent inside a stream).
    pub fn output_inspection() -> Self {
        Self::inspection("Output data may contain inappropriate content.")
    }

    fn inspection(message: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "DataInspectionFailed",
            "data_inspection_failed",
            "data_inspection_failed",
            message,
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

    fn compat_message(&self) -> &str {
        self.compat_message.as_deref().unwrap_or(&self.message)
    }

    /// The native body, also the `data:` of a native `event:error` frame.
    pub fn native_json(&self, request_id: &str) -> Value {
        json!({
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        })
    }

    /// The compatible-mode `data:` of an error inside a stream, byte for byte as the notes
    /// show it (keys in the order message, type, code, which `json!` would sort).
    pub fn compat_stream_data(&self) -> String {
        let s = |v: &str| Value::from(v).to_string();
        format!(
            r#"{{"error":{{"message":{},"type":{},"code":{}}}}}"#,
            s(self.compat_message()),
            s(self.compat_type),
            s(self.compat_code)
        )
    }

    pub fn body(&self, shape: Shape, request_id: &str) -> Value {
        match (shape, self.compat_body) {
            (Shape::Native, _) => self.native_json(request_id),
            (Shape::Compatible, CompatBody::Standard) => json!({
                "error": {
                    "message": self.compat_message(),
                    "type": self.compat_type,
                    "param": null,
                    "code": self.compat_code,
                },
                "request_id": request_id,
            }),
            (Shape::Compatible, CompatBody::WithId) => json!({
                "error": {
                    "code": self.compat_code,
                    "message": self.compat_message(),
                    "type": self.compat_type,
                },
                "id": format!("chatcmpl-{request_id}"),
                "request_id": request_id,
            }),
            (Shape::Compatible, CompatBody::Bare) => json!({
                "error": {
                    "code": null,
                    "message": self.compat_message(),
                    "type": self.compat_type,
                },
            }),
        }
    }

    pub fn response(&self, shape: Shape, request_id: &str) -> Response {
        (self.status, axum::Json(self.body(shape, request_id))).into_response()
    }
}

/// The codes that stop a whole account (protocol notes §6): `Arrearage` (400) and the
/// billing 429s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BillingStop {
    #[default]
    Arrearage,
    CommodityNotPurchased,
    PrepaidBillOverdue,
    PostpaidBillOverdue,
}

impl BillingStop {
    pub const ALL: [Self; 4] = [
        Self::Arrearage,
        Self::CommodityNotPurchased,
        Self::PrepaidBillOverdue,
        Self::PostpaidBillOverdue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Arrearage => "Arrearage",
            Self::CommodityNotPurchased => "CommodityNotPurchased",
            Self::PrepaidBillOverdue => "PrepaidBillOverdue",
            Self::PostpaidBillOverdue => "PostpaidBillOverdue",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }
}

/// Adds `Allow: <methods>` to a 405 answer, as HTTP asks.
pub fn with_allow(mut response: Response, methods: &'static str) -> Response {
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(methods));
    response
}
