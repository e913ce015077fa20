//! The upload credential: `GET /api/v1/uploads?action=getPolicy&model=M`, its reply, and the
//! object keys we build under it.
//!
//! Owns parsing the policy leniently (the documentation types every field as a string while
//! the service sends numbers: both are accepted) and content-addressed object keys:
//! `<upload_dir>/<16 hex of sha256>_<sanitized basename>`, so that two different files with
//! one basename never collide (the official SDKs use the bare basename and get a 409).
//!
//! Deliberately not here: caching, refreshing and rate limiting policies
//! ([`super::credentials`]), and hashing files (the caller passes the hex digest).

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Deserializer};

use super::client::Client;
use super::error::ApiError;

/// One upload credential. Holds nothing secret about the account: the OSS signature only
/// authorises uploads under `upload_dir` until the policy expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub policy: String,
    pub signature: String,
    pub upload_dir: String,
    pub upload_host: String,
    pub expire_in_seconds: u64,
    pub max_file_size_mb: u64,
    pub capacity_limit_mb: Option<u64>,
    pub oss_access_key_id: String,
    pub x_oss_object_acl: String,
    pub x_oss_forbid_overwrite: String,
    pub request_id: String,
    /// When the getPolicy request was *sent*: expiry counted from here is conservative.
    pub fetched_at: Instant,
}

/// Longest sanitized basename in an object key. OSS allows 1023 bytes per key; the
/// upload_dir takes ~100, and a short name keeps result files readable.
const MAX_NAME_LEN: usize = 96;
/// Hex characters of the content hash in a key: 64 bits, collision-free for any real batch.
const HASH_PREFIX_LEN: usize = 16;

impl Policy {
    /// `max_file_size_mb` in bytes. The decoded policy's `content-length-range` (1073741824
    /// for 1024) shows that "MB" means MiB.
    pub fn max_file_size_bytes(&self) -> u64 {
        self.max_file_size_mb.saturating_mul(1024 * 1024)
    }

    /// `<upload_dir>/<first 16 hex of sha256>_<sanitized basename>`.
    ///
    /// The basename keeps only `[A-Za-z0-9._-]` (anything else becomes `_`), is capped at
    /// 96 characters with the extension kept (the model service may look at
    /// it), and is never empty.
    pub fn object_key(&self, sha256_hex: &str, file_name: &str) -> String {
        let hash: String = sha256_hex
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(HASH_PREFIX_LEN)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let dir = self.upload_dir.trim_end_matches('/');
        format!("{dir}/{hash}_{}", sanitize_name(file_name))
    }

    /// When OSS stops accepting this policy.
    pub fn expires_at(&self) -> Instant {
        self.fetched_at + Duration::from_secs(self.expire_in_seconds)
    }

    /// Until when it is safe to hand out: `expire_in_seconds - margin` after the fetch, the
    /// margin capped at a quarter of the lifetime. Without the cap, a short-lived policy
    /// (a lifetime at or under the margin) would never be reused and every upload would
    /// spend a getPolicy call of the 100 QPS; a quarter of the lifetime still leaves the
    /// upload that time to reach OSS, and a late one gets "Policy expired", which is retried.
    pub fn reusable_until(&self, margin: Duration) -> Instant {
        let lifetime = Duration::from_secs(self.expire_in_seconds);
        self.fetched_at + lifetime.saturating_sub(margin.min(lifetime / 4))
    }
}

/// `oss://` + key: the URL a model call takes.
pub fn oss_url(object_key: &str) -> String {
    format!("oss://{object_key}")
}

fn sanitize_name(file_name: &str) -> String {
    // Accept a path as well as a bare name; either separator, whatever the platform.
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let clean: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Everything is ASCII now, so byte slicing is char slicing.
    let clean = if clean.len() > MAX_NAME_LEN {
        match clean.rfind('.') {
            Some(dot) if clean.len() - dot <= 16 && dot > 0 => {
                let ext = &clean[dot..];
                format!("{}{ext}", &clean[..MAX_NAME_LEN - ext.len()])
            }
            _ => clean[..MAX_NAME_LEN].to_owned(),
        }
    } else {
        clean
    };
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        "file".to_owned()
    } else {
        clean
    }
}

/// The wire shape. Numbers and strings are both accepted for numeric fields, and strings,
/// numbers or booleans for the `x_oss_*` values (echoed back verbatim as text).
#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    request_id: Option<String>,
    data: Option<PolicyData>,
}

#[derive(Deserialize)]
struct PolicyData {
    policy: String,
    signature: String,
    upload_dir: String,
    upload_host: String,
    #[serde(deserialize_with = "flexible_u64")]
    expire_in_seconds: u64,
    /// Documented on every reply; if a reply ever lacks it, assume the documented 1 GB cap and
    /// let OSS's content-length-range have the final word.
    #[serde(default = "default_max_mb", deserialize_with = "flexible_u64")]
    max_file_size_mb: u64,
    #[serde(default, deserialize_with = "flexible_opt_u64")]
    capacity_limit_mb: Option<u64>,
    oss_access_key_id: String,
    #[serde(default, deserialize_with = "flexible_string")]
    x_oss_object_acl: String,
    #[serde(default, deserialize_with = "flexible_string")]
    x_oss_forbid_overwrite: String,
}

fn default_max_mb() -> u64 {
    1024
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Float(f64),
    Text(String),
}

impl NumOrText {
    fn to_u64(&self) -> Option<u64> {
        match self {
            NumOrText::Num(n) => Some(*n),
            // "300.0" style; negative or fractional values are not a valid lifetime.
            NumOrText::Float(f) if *f >= 0.0 && f.fract() == 0.0 && *f < 1.8e19 => Some(*f as u64),
            NumOrText::Float(_) => None,
            NumOrText::Text(s) => s.trim().parse().ok(),
        }
    }
}

fn flexible_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = NumOrText::deserialize(d)?;
    value.to_u64().ok_or_else(|| {
        serde::de::Error::custom("expected a non-negative integer or a string holding one")
    })
}

fn flexible_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    // Optional and informational: null or garbage just means "unknown".
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }))
}

fn flexible_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match value {
        serde_json::Value::String(s) => s,
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => String::new(),
    })
}

/// Parses a 200 getPolicy body. A body that is not this shape is `Network` (retryable): the
/// realistic cause is a truncated reply.
pub(super) fn parse_policy(body: &[u8], fetched_at: Instant) -> Result<Policy, ApiError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| ApiError::invalid_body(200, None, e))?;
    let request_id = envelope.request_id;
    let Some(data) = envelope.data else {
        return Err(ApiError::invalid_body(200, request_id, "no `data` object"));
    };
    Ok(Policy {
        policy: data.policy,
        signature: data.signature,
        upload_dir: data.upload_dir,
        upload_host: data.upload_host,
        expire_in_seconds: data.expire_in_seconds,
        max_file_size_mb: data.max_file_size_mb,
        capacity_limit_mb: data.capacity_limit_mb,
        oss_access_key_id: data.oss_access_key_id,
        x_oss_object_acl: data.x_oss_object_acl,
        x_oss_forbid_overwrite: data.x_oss_forbid_overwrite,
        request_id: request_id.unwrap_or_default(),
        fetched_at,
    })
}

impl Client {
    /// One attempt at `GET {root}/api/v1/uploads?action=getPolicy&model=M`.
    pub async fn get_policy(&self, model: &str) -> Result<Policy, ApiError> {
        let fetched_at = Instant::now();
        let request = self
            .inner
            .http
            .get(self.url("/api/v1/uploads"))
            .query(&[("action", "getPolicy"), ("model", model)])
            .header(AUTHORIZATION, self.inner.auth.clone())
            // The documentation lists it as required even on this GET; it costs nothing.
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.inner.config.request_timeout);
        let (_, _, body) = self.send(request).await?;
        parse_policy(&body, fetched_at)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_policy() -> Policy {
        Policy {
            policy: "eyJl".into(),
            signature: "sig=".into(),
            upload_dir: "dashscope-instant/abc/2024-07-18/uuid".into(),
            upload_host: "https://dashscope-file-mgr.oss-cn-beijing.aliyuncs.com".into(),
            expire_in_seconds: 300,
            max_file_size_mb: 1024,
            capacity_limit_mb: Some(999_999_999),
            oss_access_key_id: "LTAI".into(),
            x_oss_object_acl: "private".into(),
            x_oss_forbid_overwrite: "true".into(),
            request_id: "uuid".into(),
            fetched_at: Instant::now(),
        }
    }

    #[test]
    fn parses_numbers_as_numbers() {
        let body = br#"{"request_id":"52f4383a","data":{"policy":"eyJl...1ZSJ=","signature":"eWy...=",
            "upload_dir":"dashscope-instant/xxx/2024-07-18/xxx","upload_host":"https://dashscope-file-xxx.oss-cn-beijing.aliyuncs.com",
            "expire_in_seconds":300,"max_file_size_mb":100,"capacity_limit_mb":999999999,"oss_access_key_id":"LTA...",
            "x_oss_object_acl":"private","x_oss_forbid_overwrite":"true"}}"#;
        let p = parse_policy(body, Instant::now()).unwrap();
        assert_eq!(p.expire_in_seconds, 300);
        assert_eq!(p.max_file_size_mb, 100);
        assert_eq!(p.max_file_size_bytes(), 100 * 1024 * 1024);
        assert_eq!(p.capacity_limit_mb, Some(999_999_999));
        assert_eq!(p.request_id, "52f4383a");
        assert_eq!(p.x_oss_forbid_overwrite, "true");
    }

    #[test]
    fn parses_numbers_as_strings_and_booleans_as_text() {
        let body = br#"{"request_id":"r","data":{"policy":"p","signature":"s","upload_dir":"d/","upload_host":"http://h",
            "expire_in_seconds":" 300 ","max_file_size_mb":"1024","capacity_limit_mb":null,"oss_access_key_id":"k",
            "x_oss_object_acl":"private","x_oss_forbid_overwrite":true}}"#;
        let p = parse_policy(body, Instant::now()).unwrap();
        assert_eq!(p.expire_in_seconds, 300);
        assert_eq!(p.max_file_size_bytes(), 1 << 30);
        assert_eq!(p.capacity_limit_mb, None);
        assert_eq!(p.x_oss_forbid_overwrite, "true");
        assert_eq!(p.object_key("ab", "x.png"), "d/ab_x.png");
    }

    #[test]
    fn bad_bodies_are_retryable_network_errors() {
        for body in [
            &br#"{"request_id":"r","data":{"policy":"p""#[..],
            br#"{"request_id":"r"}"#,
            br#"{"request_id":"r","data":{"policy":"p","signature":"s","upload_dir":"d","upload_host":"h","expire_in_seconds":"soon","oss_access_key_id":"k"}}"#,
            b"",
        ] {
            let err = parse_policy(body, Instant::now()).unwrap_err();
            assert_eq!(err.kind, crate::dashscope::ErrorKind::Network);
            assert_eq!(err.code, "invalid_body");
            assert!(err.is_retryable());
        }
    }

    #[test]
    fn object_keys_are_content_addressed() {
        let p = sample_policy();
        let a = p.object_key(&"a".repeat(64), "cat.png");
        let b = p.object_key(&"b".repeat(64), "cat.png");
        assert_ne!(a, b, "same basename, different content");
        assert_eq!(a, format!("{}/{}_cat.png", p.upload_dir, "a".repeat(16)));
        assert_eq!(oss_url(&a), format!("oss://{a}"));
        // Same content, same name: same key (so a 409 on it means "already there").
        assert_eq!(a, p.object_key(&"A".repeat(64), "dir/other/cat.png"));
    }

    #[test]
    fn object_key_names_are_sanitized() {
        let p = sample_policy();
        let name = |n: &str| {
            let key = p.object_key("0123456789abcdef", n);
            key.rsplit('/').next().unwrap().to_owned()
        };
        assert_eq!(name("my cat (1).JPG"), "0123456789abcdef_my_cat__1_.JPG");
        assert_eq!(name("猫.png"), "0123456789abcdef__.png");
        assert_eq!(name("a/b\\c.png"), "0123456789abcdef_c.png");
        assert_eq!(name(""), "0123456789abcdef_file");
        assert_eq!(name(".."), "0123456789abcdef_file");
        assert_eq!(name("dir/"), "0123456789abcdef_file");
        assert_eq!(name("x?y#z%20&.mp3"), "0123456789abcdef_x_y_z_20_.mp3");

        let long = format!("{}.jpeg", "n".repeat(500));
        let short = name(&long);
        assert!(short.ends_with(".jpeg"));
        assert_eq!(short.len(), HASH_PREFIX_LEN + 1 + MAX_NAME_LEN);
        let long_ext = format!("a.{}", "e".repeat(300));
        assert_eq!(name(&long_ext).len(), HASH_PREFIX_LEN + 1 + MAX_NAME_LEN);
        for n in [&long, "a b", "ü", "../../etc/passwd", "\u{0}"] {
            let seg = name(n);
            assert!(
                seg.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)),
                "{seg}"
            );
        }
    }

    #[test]
    fn expiry_and_reuse_window() {
        let p = sample_policy();
        assert_eq!(p.expires_at(), p.fetched_at + Duration::from_secs(300));
        assert_eq!(
            p.reusable_until(Duration::from_secs(60)),
            p.fetched_at + Duration::from_secs(240)
        );
        // A margin longer than the lifetime is capped at a quarter of it (300 s / 4).
        assert_eq!(
            p.reusable_until(Duration::from_secs(900)),
            p.fetched_at + Duration::from_secs(225)
        );
    }

    proptest::proptest! {
        /// Whatever the name, the key is `<dir>/<hash>_<segment>` with a safe, bounded,
        /// non-empty segment, and different hashes never give the same key.
        #[test]
        fn object_key_is_always_safe(name in "\\PC{0,300}", h1 in "[0-9a-f]{64}", h2 in "[0-9a-f]{64}") {
            let p = sample_policy();
            let key = p.object_key(&h1, &name);
            let prefix = format!("{}/{}_", p.upload_dir, &h1[..16]);
            proptest::prop_assert!(key.starts_with(&prefix));
            let segment = &key[prefix.len()..];
            proptest::prop_assert!(!segment.is_empty() && segment.len() <= MAX_NAME_LEN);
            proptest::prop_assert!(segment.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
            if h1[..16] != h2[..16] {
                proptest::prop_assert_ne!(key, p.object_key(&h2, &name));
            }
        }
    }
}
