//! The DashScope API key.
//!
//! Owns validation and redaction of the key. The raw key leaves this type in exactly one place:
//! `ApiKey::expose`, used by the client to build its (sensitive-marked) `Authorization`
//! header. It is never logged, never in an error message and never in `Debug`/`Display`.
//! Where the key came from (environment, flag) is the CLI's business, not this module's.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// A validated API key. `Debug` and `Display` print `ApiKey(****)`.
#[derive(Clone)]
pub struct ApiKey(SecretString);

/// Why a key was refused. The messages describe the problem without quoting the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidApiKey {
    #[error("the API key is empty (hint: set DASHSCOPE_API_KEY to a Model Studio key)")]
    Empty,
    #[error(
        "the API key has a character that is not visible ASCII at position {position} \
         (hint: look for quotes, spaces or a line break pasted with the key)"
    )]
    InvalidCharacter { position: usize },
}

impl ApiKey {
    /// Trims surrounding whitespace, then accepts only visible ASCII (`!`..=`~`): the key goes
    /// into an HTTP header, and a stray quote or newline is the usual copy-paste accident.
    pub fn new(raw: impl Into<String>) -> Result<ApiKey, InvalidApiKey> {
        let raw: String = raw.into();
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidApiKey::Empty);
        }
        if let Some((position, _)) = trimmed.char_indices().find(|(_, c)| !c.is_ascii_graphic()) {
            return Err(InvalidApiKey::InvalidCharacter { position });
        }
        Ok(ApiKey(SecretString::from(trimmed.to_owned())))
    }

    /// 16 hex characters of sha256(key): a stable identity for caches and state files that
    /// cannot be turned back into the key (64 bits is plenty to tell a few accounts apart).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.expose_secret().as_bytes());
        hex::encode(&digest[..8])
    }

    /// The raw key. Crate-private on purpose: only the client's header builder needs it.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// What the key is replaced with wherever a response quotes it back.
pub(crate) const REDACTED: &str = "****";

/// `text` with every occurrence of `secret` replaced by [`REDACTED`]. Applied to every text a
/// response gives us, *before* it is cut to length: a cut first could leave most of a key
/// that no longer matches in full. An empty secret changes nothing.
pub(crate) fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, REDACTED)
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(****)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = "sk-0123456789abcdef0123456789abcdef";

    #[test]
    fn trims_and_accepts_a_normal_key() {
        let key = ApiKey::new(format!("  {RAW}\n")).unwrap();
        assert_eq!(key.expose(), RAW);
    }

    #[test]
    fn debug_and_display_never_show_the_key() {
        let key = ApiKey::new(RAW).unwrap();
        for shown in [format!("{key:?}"), format!("{key}"), format!("{:#?}", key)] {
            assert_eq!(shown, "ApiKey(****)");
            assert!(!shown.contains("sk-"));
        }
    }

    #[test]
    fn rejects_empty_and_whitespace() {
        assert_eq!(ApiKey::new("").unwrap_err(), InvalidApiKey::Empty);
        assert_eq!(ApiKey::new(" \t\n").unwrap_err(), InvalidApiKey::Empty);
    }

    #[test]
    fn rejects_invisible_or_non_ascii_and_does_not_quote_the_key() {
        for bad in ["sk-abc def", "sk-\"abc\u{7f}", "sk-abcé", "sk-ab\ncd"] {
            let err = ApiKey::new(bad).unwrap_err();
            assert!(
                matches!(err, InvalidApiKey::InvalidCharacter { .. }),
                "{bad:?}"
            );
            let msg = err.to_string();
            assert!(!msg.contains("sk-ab"), "{msg}");
            assert!(!format!("{err:?}").contains("sk-ab"));
        }
    }

    #[test]
    fn scrub_replaces_every_occurrence() {
        assert_eq!(scrub("a sk-x b sk-x", "sk-x"), "a **** b ****");
        assert_eq!(scrub("nothing", ""), "nothing");
    }

    #[test]
    fn fingerprint_is_stable_short_hex_and_not_the_key() {
        let a = ApiKey::new(RAW).unwrap();
        let b = ApiKey::new(format!(" {RAW} ")).unwrap();
        let c = ApiKey::new("sk-other").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert!(a.fingerprint().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!RAW.contains(&a.fingerprint()));
    }
}
