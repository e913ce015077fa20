//! API keys and the accounts they belong to.
//!
//! The emulator has no key database: `sk-<account>` or `sk-<account>.<anything>` belongs to
//! `<account>`, so tests can mint several keys of one account (`sk-alice.key1`,
//! `sk-alice.key2`) and keys of other accounts (`sk-bob`). Files are bound to the account,
//! never to the key, as the documentation says.

use axum::http::{HeaderMap, header};
use sha2::{Digest, Sha256};

use super::errors::ApiError;

/// An account, identified by name and by the 16-byte id that appears (as 32 hex digits) in
/// `upload_dir` and is stored with each object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub id: AccountId,
}

pub type AccountId = [u8; 16];

impl Account {
    pub fn new(name: &str) -> Self {
        let digest = Sha256::digest(format!("dashbatch-emulator-account:{name}"));
        let mut id = [0; 16];
        id.copy_from_slice(&digest[..16]);
        Self {
            name: name.to_owned(),
            id,
        }
    }

    pub fn hex_id(&self) -> String {
        hex::encode(self.id)
    }

    /// The account of the `Authorization: Bearer sk-...` header, or 401 `InvalidApiKey`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::invalid_api_key)?;
        let (scheme, key) = value
            .trim()
            .split_once(' ')
            .ok_or_else(ApiError::invalid_api_key)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::invalid_api_key());
        }
        account_of_key(key.trim())
            .map(Self::new)
            .ok_or_else(ApiError::invalid_api_key)
    }
}

/// `sk-alice` and `sk-alice.k2` -> `alice`; anything else -> `None`.
pub fn account_of_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("sk-")?;
    let account = rest.split_once('.').map_or(rest, |(account, _)| account);
    let valid = !account.is_empty()
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then_some(account)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_accounts() {
        assert_eq!(account_of_key("sk-demo"), Some("demo"));
        assert_eq!(account_of_key("sk-alice.key1"), Some("alice"));
        assert_eq!(account_of_key("sk-alice.key.2"), Some("alice"));
        assert_eq!(account_of_key("sk-a_b-c"), Some("a_b-c"));
        assert_eq!(account_of_key("sk-"), None);
        assert_eq!(account_of_key("sk-.x"), None);
        assert_eq!(account_of_key("sk-a b"), None);
        assert_eq!(account_of_key("pk-alice"), None);
        assert_eq!(account_of_key(""), None);
    }

    #[test]
    fn account_id_is_stable_and_distinct() {
        assert_eq!(Account::new("alice").id, Account::new("alice").id);
        assert_ne!(Account::new("alice").id, Account::new("bob").id);
        assert_eq!(Account::new("alice").hex_id().len(), 32);
    }
}
