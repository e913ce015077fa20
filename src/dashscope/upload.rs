//! The OSS PostObject upload: one multipart form per attempt, the file streamed from disk.
//!
//! Owns the form: every policy field echoed back verbatim (OSS refuses a form that leaves out
//! one the policy names, e.g. `x-oss-forbid-overwrite`), in the order the official Python SDK
//! sends, `file` last (OSS ignores fields after the file). The file is read as a stream with
//! a known length, so memory stays flat for a 1 GB file and the request still carries a
//! `Content-Length` (OSS PostObject does not take chunked bodies).
//!
//! Deliberately not here: choosing the key (see [`super::policy::Policy::object_key`]),
//! retrying (a streamed body cannot be replayed, so the caller calls `upload` again, which
//! reopens the file and rebuilds the form), and deciding what a 409 means.

use std::path::Path;

use reqwest::multipart::{Form, Part};
use tokio_util::io::ReaderStream;

use super::client::Client;
use super::error::{ApiError, ErrorKind};
use super::policy::Policy;

impl Client {
    /// One attempt at uploading `file` to `policy.upload_host` under `object_key`.
    ///
    /// Local problems are reported without touching the network: an unreadable file is
    /// `Rejected`/`file_unreadable`, one over the policy's size limit `Rejected`/`file_too_large`.
    /// The API key is never sent to OSS: the form is authorised by the policy signature alone.
    pub async fn upload(
        &self,
        policy: &Policy,
        object_key: &str,
        file: &Path,
        content_type: &str,
    ) -> Result<(), ApiError> {
        let unreadable = |e: std::io::Error| {
            ApiError::local(
                ErrorKind::Rejected,
                "file_unreadable",
                format!("cannot read {}: {e}", file.display()),
            )
        };
        let handle = tokio::fs::File::open(file).await.map_err(unreadable)?;
        // The length of the handle we stream from, not of the path: same file by construction.
        let metadata = handle.metadata().await.map_err(unreadable)?;
        if !metadata.is_file() {
            return Err(unreadable(std::io::Error::other("not a regular file")));
        }
        let len = metadata.len();
        if len > policy.max_file_size_bytes() {
            return Err(ApiError::local(
                ErrorKind::Rejected,
                "file_too_large",
                format!(
                    "{} is {len} bytes; model limit is {} MB",
                    file.display(),
                    policy.max_file_size_mb
                ),
            ));
        }

        let form = build_form(policy, object_key, content_type, handle, len)?;
        let request = self
            .inner
            .http
            .post(&policy.upload_host)
            .multipart(form)
            .timeout(self.inner.config.upload_timeout);
        // Any 2xx: we ask for 200, and 204 (OSS's default) also means the object is stored.
        self.send(request).await.map(|_| ())
    }
}

/// The form, in the official SDK's field order with `file` last.
fn build_form(
    policy: &Policy,
    object_key: &str,
    content_type: &str,
    file: tokio::fs::File,
    len: u64,
) -> Result<Form, ApiError> {
    // The key's last segment is already sanitized ASCII, so the filename parameter needs no
    // escaping games; OSS stores the object under `key`, not under this name.
    let file_name = object_key
        .rsplit('/')
        .next()
        .unwrap_or(object_key)
        .to_owned();
    let body = reqwest::Body::wrap_stream(ReaderStream::new(file));
    // An unparsable MIME type from a caller degrades to octet-stream rather than failing.
    // Checked on a throwaway part: `mime_str` consumes the part it fails on.
    let mime = if Part::text("").mime_str(content_type).is_ok() {
        content_type
    } else {
        "application/octet-stream"
    };
    let part = Part::stream_with_length(body, len)
        .file_name(file_name)
        .mime_str(mime)
        .map_err(|e| ApiError::local(ErrorKind::Rejected, "invalid_content_type", e.to_string()))?;
    let form = Form::new()
        .text("OSSAccessKeyId", policy.oss_access_key_id.clone())
        .text("Signature", policy.signature.clone())
        .text("policy", policy.policy.clone())
        .text("key", object_key.to_owned());
    // Echo the x-oss-* values exactly as getPolicy gave them. Empty means the reply did not
    // carry the field, and then the policy has no condition on it either.
    let form = echo(form, "x-oss-object-acl", &policy.x_oss_object_acl);
    let form = echo(
        form,
        "x-oss-forbid-overwrite",
        &policy.x_oss_forbid_overwrite,
    );
    Ok(form
        .text("success_action_status", "200")
        // Stores the object with a real Content-Type (as the official SDK does); not a
        // policy condition, so OSS accepts it without one.
        .text("x-oss-content-type", mime.to_owned())
        .part("file", part))
}

fn echo(form: Form, name: &'static str, value: &str) -> Form {
    if value.is_empty() {
        form
    } else {
        form.text(name, value.to_owned())
    }
}
