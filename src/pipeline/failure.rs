//! Why a row failed, in the form a results line records it. The row checks that produce
//! most local failures are in [`super::checks`].

use crate::dashscope::{ApiError, ErrorKind};
use crate::failure::{ErrorCode, FailureCode};

/// A row's failure: a stable code for scripts and a message for people.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: Option<String>,
    /// Set when the failure came from the service, to tell a 401 or a 429 apart.
    pub kind: Option<ErrorKind>,
    /// Every call to this row's model would get the same answer (see
    /// [`Failure::refuses_model`]).
    model_refused: bool,
}

/// The stage name of getPolicy's failures.
pub const CREDENTIAL_STAGE: &str = "upload credential";

impl Failure {
    /// A failure found on our side, before or without any request.
    pub fn local(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            request_id: None,
            kind: None,
            model_refused: false,
        }
    }

    /// A failure the service answered. `stage` says which request it was.
    pub fn api(stage: &str, err: ApiError) -> Self {
        let status = err
            .status
            .map(|s| format!("HTTP {s}, "))
            .unwrap_or_default();
        // A 400 to getPolicy is almost always the model name (the service says only
        // "Model not exist" or the like): say where to look.
        let hint = if stage == CREDENTIAL_STAGE && err.status == Some(400) {
            " (hint: check the model column: the model must exist in Model Studio and take \
             files)"
        } else {
            ""
        };
        // getPolicy takes nothing but the model name: a 4xx refusal of it (today's
        // `InvalidParameter` "Model not exist") refuses the model, as the model's own 403 or
        // 404 does. A 401 or a throttle is neither (their kinds are not `Rejected`).
        let credential_refusal = stage == CREDENTIAL_STAGE
            && err.kind == ErrorKind::Rejected
            && err.status.is_some_and(|s| (400..500).contains(&s));
        Self {
            model_refused: err.kind == ErrorKind::ModelRefused || credential_refusal,
            message: format!("{stage}: {status}{}{hint}", err.message),
            code: err.code,
            request_id: err.request_id,
            kind: Some(err.kind),
        }
    }

    /// The service refused the row's model for good: every row of it would fail the same.
    pub fn refuses_model(&self) -> bool {
        self.model_refused
    }

    pub fn is_throttled(&self) -> bool {
        self.kind == Some(ErrorKind::Throttled)
    }
}
