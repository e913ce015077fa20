//! Why a row failed, in the form a results line records it.

use crate::dashscope::{ApiError, ErrorKind};

/// The code of a row the run stopped before it finished (or before it started).
pub const NOT_ATTEMPTED: &str = "not_attempted";

/// A row's failure: a stable code for scripts and a message for people.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    /// Set when the failure came from the service, to tell a 401 or a 429 apart.
    pub kind: Option<ErrorKind>,
}

impl Failure {
    /// A failure found on our side, before or without any request.
    pub fn local(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
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

    pub fn is_unauthorized(&self) -> bool {
        self.kind == Some(ErrorKind::Unauthorized)
    }

    pub fn is_throttled(&self) -> bool {
        self.kind == Some(ErrorKind::Throttled)
    }
}

/// Checks a local file before anything is sent, so the message can say what to fix.
/// Returns the metadata, so that the hash cache can use its size and mtime without a second
/// stat.
pub fn check_local_file(path: &std::path::Path) -> Result<std::fs::Metadata, Failure> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Failure::local(
            "not_a_file",
            format!("{shown} is a folder; the file column must name a file"),
        )),
        Ok(meta) if !meta.is_file() => Err(Failure::local(
            "not_a_file",
            format!("{shown} is not a regular file"),
        )),
        Ok(meta) => Ok(meta),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(Failure::local(
            "file_not_found",
            format!("{shown} does not exist; paths are relative to the manifest's folder"),
        )),
        Err(err) => Err(Failure::local(
            "unreadable_file",
            format!("cannot read {shown}: {err}"),
        )),
    }
}
