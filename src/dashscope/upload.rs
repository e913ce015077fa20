//! The OSS PostObject upload: one multipart form per attempt, the file either streamed from
//! disk ([`Client::upload`]) or sent from memory ([`Client::upload_bytes`], for small files the
//! caller has already read to hash them).
//!
//! Owns the form: every policy field echoed back verbatim (OSS refuses a form that leaves out
//! one the policy names, e.g. `x-oss-forbid-overwrite`), in the order the official Python SDK
//! sends, `file` last (OSS ignores fields after the file). Both entry points build the form in
//! one place, so they cannot drift apart. A streamed file has a known length, so memory stays
//! flat for a 1 GB file and the request still carries a `Content-Length` (OSS PostObject does
//! not take chunked bodies).
//!
//! Deliberately not here: choosing the key (see [`super::policy::Policy::object_key`]),
//! retrying (a streamed body cannot be replayed, so the caller calls `upload` again, which
//! reopens the file and rebuilds the form), deciding which files are small enough to hold in
//! memory, and deciding what a 409 means.

use std::path::Path;

use bytes::Bytes;
use reqwest::Body;
use reqwest::multipart::{Form, Part};
use tokio_util::io::ReaderStream;

use super::body::BodyLimit;
use super::client::Client;
use super::error::{ApiError, ErrorKind};
use super::policy::Policy;

impl Client {
    /// One attempt at uploading `file` to `policy.upload_host` under `object_key`, streamed.
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
        check_size(policy, len, || file.display().to_string())?;
        let body = Body::wrap_stream(ReaderStream::new(handle));
        self.post_form(policy, object_key, content_type, body, len)
            .await
    }

    /// One attempt at uploading `content` (a whole file already in memory) under `object_key`.
    ///
    /// The form is the one [`Client::upload`] sends for a file with these bytes, field for
    /// field; only the body's source differs. `Bytes` clones share the buffer, so a retry
    /// costs no copy. Over the policy's size limit is `Rejected`/`file_too_large`, as there.
    pub async fn upload_bytes(
        &self,
        policy: &Policy,
        object_key: &str,
        content: Bytes,
        content_type: &str,
    ) -> Result<(), ApiError> {
        let len = content.len() as u64;
        check_size(policy, len, || object_key.to_owned())?;
        self.post_form(policy, object_key, content_type, Body::from(content), len)
            .await
    }

    async fn post_form(
        &self,
        policy: &Policy,
        object_key: &str,
        content_type: &str,
        body: Body,
        len: u64,
    ) -> Result<(), ApiError> {
        let form = build_form(policy, object_key, content_type, body, len)?;
        // The documented value is a full URL; a bare host name gets the https it implies.
        let host = if policy.upload_host.contains("://") {
            policy.upload_host.clone()
        } else {
            format!("https://{}", policy.upload_host)
        };
        let request = self
            .inner
            .http
            .post(host)
            .multipart(form)
            .timeout(self.inner.config.upload_timeout);
        // Any 2xx: we ask for 200, and 204 (OSS's default) also means the object is stored.
        self.send(request, BodyLimit::Upload).await.map(|_| ())
    }
}

/// `file_too_large` before any request; `shown` names the file in the message.
fn check_size(policy: &Policy, len: u64, shown: impl FnOnce() -> String) -> Result<(), ApiError> {
    if len > policy.max_file_size_bytes() {
        return Err(ApiError::local(
            ErrorKind::Rejected,
            "file_too_large",
            format!(
                "{} is {len} bytes; model limit is {} MB; shrink or split the file, or give \
                 the model a public http(s):// URL of it instead",
                shown(),
                policy.max_file_size_mb
            ),
        ));
    }
    Ok(())
}

/// The form, in the official SDK's field order with `file` last.
fn build_form(
    policy: &Policy,
    object_key: &str,
    content_type: &str,
    body: Body,
    len: u64,
) -> Result<Form, ApiError> {
    // The key's last segment is already sanitized ASCII, so the filename parameter needs no
    // escaping games; OSS stores the object under `key`, not under this name.
    let file_name = object_key
        .rsplit('/')
        .next()
        .unwrap_or(object_key)
        .to_owned();
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

#[cfg(test)]
mod tests;
