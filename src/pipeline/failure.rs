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
}

impl Failure {
    /// A failure found on our side, before or without any request.
    pub fn local(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            request_id: None,
            kind: None,
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
        let hint = if stage == "upload credential" && err.status == Some(400) {
            " (hint: check the model column: the model must exist in Model Studio and take \
             files)"
        } else {
            ""
        };
        Self {
            message: format!("{stage}: {status}{}{hint}", err.message),
            code: err.code,
            request_id: err.request_id,
            kind: Some(err.kind),
        }
    }

    pub fn is_throttled(&self) -> bool {
        self.kind == Some(ErrorKind::Throttled)
    }
}
