//! The DashScope client: everything that talks to Alibaba Cloud Model Studio.
//!
//! Written from the service's public documentation alone. It never imports the
//! emulator, and the emulator never imports it, so a misreading in one shows up as a failure
//! against the other.
//!
//! # Layout
//! - [`auth`]: the API key ([`ApiKey`]): validation, redaction, a non-reversible fingerprint.
//! - [`client`]: [`ClientConfig`] and [`Client`], the shared HTTP plumbing (one attempt per
//!   call, every non-2xx turned into an [`ApiError`]).
//! - [`body`]: how much of each answer a call may read ([`BodyLimit`]), and reading it
//!   under that cap.
//! - [`policy`]: the upload credential (`getPolicy`) and content-addressed object keys.
//! - [`upload`]: the streamed OSS PostObject form, verified against the file's hash as it is
//!   sent, and its two clocks (whole upload, stall).
//! - [`model`]: model calls. The compatible-mode and native APIs are two implementations of
//!   one request/reply mapping (`model/compatible.rs`, `model/native.rs`); a new model API
//!   parameter is a change to those two files. Streamed answers (server-sent events, read as
//!   they arrive) are `model/stream.rs` and `model/sse.rs`.
//! - [`media`]: which file extensions are images, videos or audio, and their MIME types.
//! - [`error`]: [`ApiError`], [`ErrorKind`] and the classification of all three error shapes.
//! - [`credentials`]: the per-model policy cache, its single-flight refresh and rate limiter.
//! - [`retry`](mod@retry): exponential backoff with full jitter on top of `backon`.
//!
//! What this module deliberately does not do: decide what a failure means for a manifest row,
//! dedupe uploads across rows, or count statistics. Those belong to the pipeline; the client
//! only reports precise, classified errors and makes single attempts (except [`Credentials`],
//! which owns getPolicy end to end and so also owns its retries).

pub mod auth;
pub mod body;
pub mod client;
pub mod credentials;
pub mod error;
pub mod media;
pub mod model;
pub mod policy;
pub mod retry;
pub mod upload;

#[cfg(test)]
mod testing;

pub use auth::{ApiKey, InvalidApiKey};
pub use body::BodyLimit;
pub use client::{Client, ClientConfig, ClientError};
pub use credentials::{CredentialOptions, Credentials};
pub use error::{ApiError, ErrorKind};
pub use media::{Media, MediaKind, content_type_for};
pub use model::{
    Api, ModelReply, ModelRequest, RESERVED_PARAMS, Streaming, Usage, check_param_name,
};
pub use policy::{Policy, oss_url};
pub use retry::{RetryPolicy, retry};
pub use upload::Sent;
