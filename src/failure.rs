//! The vocabulary of failures: every code dashbatch itself writes to a results line's
//! `error_code` column ([`FailureCode`]), and the column's value, ours or the service's
//! ([`ErrorCode`]).
//!
//! A new failure code is a new [`FailureCode`] variant here plus its line in the README's
//! `error_code` row (a test compares the two). Deliberately not here: when a code applies
//! (the client classifies answers, the pipeline and `validate` check rows) and the
//! service's own codes, which stay the strings the service sent. The client
//! ([`crate::dashscope`]) uses this module; the emulator does not, since it speaks only the
//! service's vocabulary.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// Declares [`FailureCode`], its column spelling and [`FailureCode::ALL`] from one list, so
/// that a variant cannot be added without its spelling or be left out of `ALL`.
macro_rules! failure_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// A failure code of ours. Its spelling ([`FailureCode::as_str`]) is what scripts
        /// match on, so it never changes once released.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum FailureCode {
            $($(#[$doc])* $variant,)*
        }

        impl FailureCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [FailureCode] = &[$(FailureCode::$variant,)*];

            /// The spelling in the `error_code` column.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(FailureCode::$variant => $text,)*
                }
            }
        }
    };
}

failure_codes! {
    /// A manifest record that does not parse or misses a required value.
    BadRow = "bad_row",
    /// A manifest field that is not UTF-8.
    BadEncoding = "bad_encoding",
    /// A second row with an id an earlier row has.
    DuplicateId = "duplicate_id",
    FileNotFound = "file_not_found",
    /// A folder, FIFO, device or socket where a file was expected.
    NotAFile = "not_a_file",
    UnreadableFile = "unreadable_file",
    /// An extension that names no image, video or audio kind.
    UnsupportedMedia = "unsupported_media",
    FileTooLarge = "file_too_large",
    /// The file kept changing while it was read and uploaded.
    FileChanged = "file_changed",
    UploadStalled = "upload_stalled",
    UploadTimeout = "upload_timeout",
    /// The run stopped before the row finished (a signal, a rejected key, an outage).
    NotAttempted = "not_attempted",
    /// An answer over its size cap.
    ResponseTooLarge = "response_too_large",
    /// A credential whose upload host is not an http(s) URL.
    InvalidUploadHost = "invalid_upload_host",
    /// A credential that quotes the API key in a field sent on to the upload host.
    PolicyQuotesKey = "policy_quotes_key",
    /// A MIME type the upload form cannot carry.
    InvalidContentType = "invalid_content_type",
    /// A request that got no answer in time.
    Timeout = "timeout",
    /// A connection that could not be made.
    Connect = "connect",
    /// An answer whose body broke off while it was read.
    Body = "body",
    /// Any other transport failure.
    Network = "network",
    /// A 2xx answer whose body is not the expected shape.
    InvalidBody = "invalid_body",
    /// A fault of dashbatch itself (a task that stopped); worth a bug report.
    Internal = "internal",
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value of the `error_code` column: one of ours, or the code the service answered
/// with (`InvalidParameter`, `Throttling.RateQuota`, ..., or `http_<status>` for an
/// answer without one), kept as the service spelled it.
///
/// Compared, hashed and ordered by its spelling, as the column holds it, so statistics
/// keyed by it count and sort as the results file reads.
#[derive(Debug, Clone)]
pub enum ErrorCode {
    Ours(FailureCode),
    Service(String),
}

impl ErrorCode {
    /// The code of an answer from the service.
    pub fn service(code: impl Into<String>) -> ErrorCode {
        ErrorCode::Service(code.into())
    }

    /// The spelling in the `error_code` column.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Ours(code) => code.as_str(),
            ErrorCode::Service(code) => code,
        }
    }

    /// The code, if it is one of ours.
    pub fn ours(&self) -> Option<FailureCode> {
        match self {
            ErrorCode::Ours(code) => Some(*code),
            ErrorCode::Service(_) => None,
        }
    }
}

impl From<FailureCode> for ErrorCode {
    fn from(code: FailureCode) -> Self {
        ErrorCode::Ours(code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for ErrorCode {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ErrorCode {}

impl Hash for ErrorCode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for ErrorCode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ErrorCode {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<FailureCode> for ErrorCode {
    fn eq(&self, other: &FailureCode) -> bool {
        self.ours() == Some(*other)
    }
}

/// For the service's codes, which are strings (`e.code == "InvalidApiKey"`).
impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The message of `file_too_large`, wherever the size is checked. `limit` names whose
/// limit it is (`model qwen-vl-plus`, `--max-file-size-mb`).
pub fn too_large_message(file: impl fmt::Display, size: u64, limit_mb: u64, limit: &str) -> String {
    format!(
        "{file} is {size} bytes, over the {limit_mb} MB limit of {limit}; shrink or split the \
         file, or give the model a public http(s):// URL of it instead"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The README's `error_code` row lists our codes after "or ours:"; it must name every
    /// code we write and no other.
    #[test]
    fn the_readme_lists_every_failure_code_and_no_other() {
        let readme = include_str!("../README.md");
        let row = readme
            .lines()
            .find(|l| l.starts_with("| `error_code` |"))
            .expect("the README has an error_code row in its results table");
        let (_, ours) = row
            .split_once("or ours:")
            .expect("the error_code row lists our codes after \"or ours:\"");
        // Backticked names that start a list item; a name quoted inside an item's
        // explanation (a flag such as `--outage-timeout-s`) follows a parenthesis.
        let documented: BTreeSet<&str> = ours
            .split([',', ':'])
            .filter_map(|item| item.trim().strip_prefix('`')?.split('`').next())
            .collect();
        let ours: BTreeSet<&str> = FailureCode::ALL.iter().map(|c| c.as_str()).collect();
        let undocumented: Vec<_> = ours.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&ours).collect();
        assert!(
            undocumented.is_empty() && unknown.is_empty(),
            "codes we write but the README does not list: {undocumented:?}; codes the README \
             lists that we never write: {unknown:?}"
        );
    }

    #[test]
    fn spellings_are_unique_snake_case_and_compare_with_the_column() {
        let spellings: BTreeSet<&str> = FailureCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(spellings.len(), FailureCode::ALL.len());
        assert!(
            spellings
                .iter()
                .all(|s| s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        let ours = ErrorCode::from(FailureCode::UnreadableFile);
        assert_eq!(ours, FailureCode::UnreadableFile);
        assert_eq!(ours, "unreadable_file");
        assert_eq!(ours.to_string(), "unreadable_file");
        assert_ne!(ErrorCode::service("InvalidParameter"), ours);
        assert_eq!(
            serde_json::to_string(&ErrorCode::service("Throttling.RateQuota")).unwrap(),
            "\"Throttling.RateQuota\""
        );
    }
}
