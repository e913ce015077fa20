//! How much of a response body each call may read, and reading it under that cap.
//!
//! A body is read chunk by chunk and reading stops at the cap, so a server that answers with
//! an endless (or merely huge) body costs at most the cap in memory, never the machine. The
//! upload host is whatever getPolicy names, so this also bounds what an arbitrary host can
//! make us hold. A Content-Length above the cap fails before the first byte is read.
//!
//! Deliberately not here: what an over-cap answer means for a row. The client turns it into
//! [`super::ErrorKind::BodyTooLarge`] (a 2xx) or classifies the start of it (an error
//! status: a 503's status says all we need, however long its HTML page).

use bytes::{Bytes, BytesMut};

/// A getPolicy answer is about 1 KiB (a base64 policy document, a signature, a few names).
/// 64 times that leaves room for a longer policy and still costs nothing to hold per row.
pub const POLICY_BODY_LIMIT: usize = 64 * 1024;
/// OSS answers a PostObject with an empty body (200/204) or a short XML document.
pub const UPLOAD_BODY_LIMIT: usize = 64 * 1024;
/// The longest answers are thinking models at their output limit: ~128k tokens, a few MiB of
/// JSON even with every character `\u`-escaped. 16 MiB is several times that, and bounds a
/// run at C rows in flight to C × 16 MiB however the service misbehaves.
pub const MODEL_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The start of an error body is all classification needs (the message is cut to 500
/// characters anyway); a gateway's HTML error page can be long, so this is not an error.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Which answer a call reads: names the cap and, in messages, what was being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    Policy,
    Upload,
    Model,
}

impl BodyLimit {
    pub fn bytes(self) -> usize {
        match self {
            BodyLimit::Policy => POLICY_BODY_LIMIT,
            BodyLimit::Upload => UPLOAD_BODY_LIMIT,
            BodyLimit::Model => MODEL_BODY_LIMIT,
        }
    }

    /// What the body is, for a message: "the {what} from {host} is …".
    pub fn what(self) -> &'static str {
        match self {
            BodyLimit::Policy => "upload credential (getPolicy) answer",
            BodyLimit::Upload => "upload host's answer",
            BodyLimit::Model => "model answer",
        }
    }
}

/// A body as far as it was read.
#[derive(Debug)]
pub(super) enum Read {
    /// The whole body, within the cap.
    Whole(Bytes),
    /// The first `cap` bytes; the rest was never read.
    Cut(Bytes),
}

/// Reads `response`'s body up to `cap` bytes. Errors are reqwest's (a connection cut
/// mid-body, a timeout).
pub(super) async fn read_capped(
    response: &mut reqwest::Response,
    cap: usize,
) -> Result<Read, reqwest::Error> {
    let announced = response.content_length();
    // Content-Length is a hint for the first allocation, never trusted past the cap.
    let hint = announced.map_or(0, |n| n.min(cap as u64) as usize);
    let mut body = BytesMut::with_capacity(hint);
    while let Some(chunk) = response.chunk().await? {
        let room = cap - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok(Read::Cut(body.freeze()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Read::Whole(body.freeze()))
}

/// `body` without a trailing piece that is the start of `secret`. A cut can split a key that
/// a gateway quoted back; the full-match redaction later would no longer see it, and what is
/// left would still be most of the key.
pub(super) fn drop_partial_secret(body: Bytes, secret: &str) -> Bytes {
    let secret = secret.as_bytes();
    let longest = (1..secret.len().min(body.len() + 1))
        .rev()
        .find(|&n| body.ends_with(&secret[..n]));
    match longest {
        Some(n) => body.slice(..body.len() - n),
        None => body,
    }
}

/// A byte count as people read it: "64 KiB", "16 MiB", or bytes below 1 KiB.
pub(super) fn human(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= GIB => format!("{:.1} GiB", b as f64 / GIB as f64),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= MIB => format!("{:.1} MiB", b as f64 / MIB as f64),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b if b >= KIB => format!("{:.1} KiB", b as f64 / KIB as f64),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests;
