//! The OSS PostObject upload: one multipart form per attempt, the file either streamed from
//! an open handle ([`Client::upload`]) or sent from memory ([`Client::upload_bytes`], for small
//! files the caller has already read to hash them).
//!
//! Owns the form: every policy field echoed back verbatim (OSS refuses a form that leaves out
//! one the policy names, e.g. `x-oss-forbid-overwrite`), in the order the official Python SDK
//! sends, `file` last (OSS ignores fields after the file). Both entry points build the form in
//! one place, so they cannot drift apart. A streamed file has a known length, so memory stays
//! flat for a 1 GB file and the request still carries a `Content-Length` (OSS PostObject does
//! not take chunked bodies).
//!
//! Also owns what an upload may cost in time, and what was sent:
//! - a streamed file is hashed as it is sent and checked against the hash its key names
//!   (see [`body`]); bytes that differ never reach the host whole, and the answer says so
//!   ([`Sent::Unverified`]) rather than pretending the object holds the expected bytes;
//! - two clocks: the whole upload ([`ClientConfig::upload_timeout`]) and the stall clock
//!   ([`ClientConfig::upload_stall_timeout`]), restarted each time the host takes a piece of
//!   the body, and running on while the answer is awaited. A slow upload that moves is cut
//!   only by the first; a host that takes nothing, or never answers, by the second.
//!
//! Deliberately not here: opening the file (the caller hands over a handle it has checked),
//! choosing the key (see [`super::policy::Policy::object_key`]), retrying (the caller calls
//! again; each call builds its form and reads the file from its start), deciding which files
//! are small enough to hold in memory, and deciding what a 409 or a mismatch means.
//!
//! [`ClientConfig::upload_timeout`]: super::ClientConfig::upload_timeout
//! [`ClientConfig::upload_stall_timeout`]: super::ClientConfig::upload_stall_timeout

mod body;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::Body;
use reqwest::multipart::{Form, Part};

use self::body::{End, Ending, Expect, Progress};
use super::body::BodyLimit;
use super::client::Client;
use super::error::{ApiError, ErrorKind};
use super::policy::Policy;
use crate::failure::{FailureCode, too_large_message};

/// How an upload attempt ended when the host did not refuse it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Sent {
    /// The host stored the object, and it was sent exactly the expected bytes.
    Verified,
    /// What the key holds cannot be vouched for: the file's bytes were not the ones hashed
    /// (it changed, grew or shrank since), or the host answered before it had them all.
    /// The text says which. Nothing was recorded; the caller must hash the file again and
    /// upload under a key no earlier attempt used (a fresh credential), and never use this one.
    Unverified(String),
}

impl Client {
    /// One attempt at uploading `file`, `len` bytes whose SHA-256 is `sha256`, to
    /// `policy.upload_host` under `object_key`, streamed and verified as it goes.
    ///
    /// `file` is a handle the caller opened and checked to be a regular file; it is read by
    /// offset, so the same handle serves every attempt. Over the policy's size limit is
    /// `Rejected`/`file_too_large`, and a file whose size is no longer `len` is
    /// [`Sent::Unverified`], both without touching the network; a read error is
    /// `Rejected`/`unreadable_file`. The API key is never sent to OSS: the form is authorised
    /// by the policy signature alone.
    pub async fn upload(
        &self,
        policy: &Policy,
        object_key: &str,
        file: Arc<File>,
        len: u64,
        sha256: &[u8; 32],
        content_type: &str,
    ) -> Result<Sent, ApiError> {
        check_size(policy, len, || object_key.to_owned())?;
        // A cheap early look: the stream checks the length again as it reads.
        if let Ok(meta) = file.metadata()
            && meta.len() != len
        {
            return Ok(Sent::Unverified(format!(
                "its size is {} bytes, not the {len} it had when it was hashed",
                meta.len()
            )));
        }
        let (progress, ending) = (Progress::new(), Ending::default());
        let expect = Expect {
            len,
            sha256: *sha256,
        };
        let stream = body::file_stream(file, expect, progress.clone(), ending.clone());
        let body = Body::wrap_stream(stream);
        self.post_form(
            policy,
            object_key,
            content_type,
            body,
            len,
            &progress,
            &ending,
        )
        .await
    }

    /// One attempt at uploading `content` (a whole file already in memory, which the caller
    /// hashed from this very buffer) under `object_key`.
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
    ) -> Result<Sent, ApiError> {
        let len = content.len() as u64;
        check_size(policy, len, || object_key.to_owned())?;
        let (progress, ending) = (Progress::new(), Ending::default());
        let body = Body::wrap_stream(body::bytes_stream(
            content,
            progress.clone(),
            ending.clone(),
        ));
        self.post_form(
            policy,
            object_key,
            content_type,
            body,
            len,
            &progress,
            &ending,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn post_form(
        &self,
        policy: &Policy,
        object_key: &str,
        content_type: &str,
        body: Body,
        len: u64,
        progress: &Progress,
        ending: &Ending,
    ) -> Result<Sent, ApiError> {
        let form = build_form(policy, object_key, content_type, body, len)?;
        // The documented value is a full URL; a bare host name gets the https it implies.
        let host = if policy.upload_host.contains("://") {
            policy.upload_host.clone()
        } else {
            format!("https://{}", policy.upload_host)
        };
        let config = &self.inner.config;
        let request = self.inner.http.post(&host).multipart(form);
        // Both clocks are ours rather than reqwest's `timeout`, so that each failure says
        // which limit it hit and which flag sets it. Losing the race drops the request,
        // which closes its connection: the host never sees the rest of the body.
        let answer = tokio::select! {
            // Any 2xx: we ask for 200, and 204 (OSS's default) also means the object is stored.
            answer = self.send(request, BodyLimit::Upload) => answer.map(|_| ()),
            () = progress.stalled(config.upload_stall_timeout) => Err(ApiError::local(
                ErrorKind::Network,
                FailureCode::UploadStalled,
                format!(
                    "upload to {host}: no progress for {} s (the host took no more of the \
                     file and gave no answer); raise --upload-stall-timeout-s on a very slow \
                     link",
                    config.upload_stall_timeout.as_secs()
                ),
            )),
            () = tokio::time::sleep(config.upload_timeout) => Err(ApiError::local(
                ErrorKind::Network,
                FailureCode::UploadTimeout,
                format!(
                    "upload to {host} did not finish within {} s; raise --upload-timeout-s \
                     for large files on a slow link",
                    config.upload_timeout.as_secs()
                ),
            )),
        };
        // What the body saw comes first: a mismatch also cuts the request short, and the
        // transport error that follows is only its echo.
        match (ending.take(), answer) {
            (Some(End::Mismatch(why)), _) => Ok(Sent::Unverified(why)),
            (Some(End::Unreadable(err)), _) => Err(ApiError::local(
                ErrorKind::Rejected,
                FailureCode::UnreadableFile,
                format!("cannot read the file for {object_key}: {err}"),
            )),
            (_, Err(err)) => Err(err),
            (Some(End::Complete), Ok(())) => Ok(Sent::Verified),
            (None, Ok(())) => Ok(Sent::Unverified(
                "the upload host answered before it had received the whole file".to_owned(),
            )),
        }
    }
}

/// `file_too_large` before any request; `shown` names the file in the message.
fn check_size(policy: &Policy, len: u64, shown: impl FnOnce() -> String) -> Result<(), ApiError> {
    if len > policy.max_file_size_bytes() {
        return Err(ApiError::local(
            ErrorKind::Rejected,
            FailureCode::FileTooLarge,
            too_large_message(
                shown(),
                len,
                policy.max_file_size_mb,
                "its upload credential",
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
        .map_err(|e| {
            ApiError::local(
                ErrorKind::Rejected,
                FailureCode::InvalidContentType,
                e.to_string(),
            )
        })?;
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
