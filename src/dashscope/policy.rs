//! The upload credential: `GET /api/v1/uploads?action=getPolicy&model=M`, its reply, and the
//! object keys we build under it.
//!
//! Owns parsing the policy leniently (the documentation types every field as a string while
//! the service sends numbers: both are accepted) and content-addressed object keys:
//! `<upload_dir>/<16 hex of sha256>_<sanitized basename>`, so that two different files with
//! one basename never collide (the official SDKs use the bare basename and get a 409).
//!
//! Also owns distrust of the reply: a lifetime is clamped before it meets a clock, an upload
//! host that is not an http(s) URL is refused, and a reply that quotes the API key back is
//! refused too (its fields are sent on to the upload host and end in `oss://` URLs).
//!
//! Deliberately not here: caching, refreshing and rate limiting policies
//! ([`super::credentials`]), and hashing files (the caller passes the hex digest).

use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Deserializer};

use super::auth::scrub;
use super::body::BodyLimit;
use super::client::Client;
use super::error::{ApiError, ErrorKind, truncate};

/// One upload credential. Holds nothing secret about the account: the OSS signature only
/// authorises uploads under `upload_dir` until the policy expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub policy: String,
    pub signature: String,
    pub upload_dir: String,
    pub upload_host: String,
    /// As the service said, clamped to [`MAX_LIFETIME_S`].
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
/// The longest lifetime believed, in seconds. The reply we saw says 300; a number large
/// enough to overflow a clock (`u64::MAX`) must not panic the run, and a long lifetime gains
/// nothing: refetching once an hour per model costs one request of the 100 QPS. If the
/// service really lets a policy lapse sooner, OSS says "Policy expired" and the pipeline
/// fetches a new one.
pub const MAX_LIFETIME_S: u64 = 3600;

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
        self.after_fetch(self.lifetime())
    }

    /// The lifetime, clamped again here because the fields are public: whoever built this
    /// policy, no service-given number reaches `Instant` arithmetic unbounded.
    fn lifetime(&self) -> Duration {
        Duration::from_secs(self.expire_in_seconds.min(MAX_LIFETIME_S))
    }

    /// `fetched_at + span`; if even that overflowed, the fetch time itself (the policy
    /// counts as expired and is fetched again, never a panic).
    fn after_fetch(&self, span: Duration) -> Instant {
        self.fetched_at.checked_add(span).unwrap_or(self.fetched_at)
    }

    /// Until when it is safe to hand out: `expire_in_seconds - margin` after the fetch, the
    /// margin capped at a quarter of the lifetime. Without the cap, a short-lived policy
    /// (a lifetime at or under the margin) would never be reused and every upload would
    /// spend a getPolicy call of the 100 QPS; a quarter of the lifetime still leaves the
    /// upload that time to reach OSS, and a late one gets "Policy expired", which is retried.
    pub fn reusable_until(&self, margin: Duration) -> Instant {
        let lifetime = self.lifetime();
        self.after_fetch(lifetime.saturating_sub(margin.min(lifetime / 4)))
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
            // "300.0" style, and integers too large for u64 (serde reads those as floats);
            // `as` saturates, and the caller clamps. Negative or fractional values are not a
            // valid lifetime or size.
            NumOrText::Float(f) if *f >= 0.0 && f.fract() == 0.0 => Some(*f as u64),
            NumOrText::Float(_) => None,
            NumOrText::Text(s) => {
                let s = s.trim();
                // All digits but past u64: as large as it gets, like a float above.
                let huge = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                s.parse().ok().or(huge.then_some(u64::MAX))
            }
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
    if let Err(reason) = check_upload_host(&data.upload_host) {
        return Err(refused(
            "invalid_upload_host",
            format!(
                "getPolicy named the upload host {:?}, {reason}; dashbatch cannot upload \
                 there (hint: check that the service URL points at DashScope)",
                data.upload_host
            ),
            request_id,
        ));
    }
    Ok(Policy {
        policy: data.policy,
        signature: data.signature,
        upload_dir: data.upload_dir,
        upload_host: data.upload_host,
        expire_in_seconds: data.expire_in_seconds.min(MAX_LIFETIME_S),
        max_file_size_mb: data.max_file_size_mb,
        capacity_limit_mb: data.capacity_limit_mb,
        oss_access_key_id: data.oss_access_key_id,
        x_oss_object_acl: data.x_oss_object_acl,
        x_oss_forbid_overwrite: data.x_oss_forbid_overwrite,
        request_id: request_id.unwrap_or_default(),
        fetched_at,
    })
}

/// Whether an upload can go to `host`. Read the way the uploader reads it
/// ([`Client::upload`]): the documented value is a full URL, and a bare host name gets the
/// https it implies. Anything else (`file://`, `ftp://`, garbage) would fail every attempt
/// the same way, so it is refused here, once, instead of being retried as a network error.
fn check_upload_host(host: &str) -> Result<(), String> {
    let url = if host.contains("://") {
        host.to_owned()
    } else {
        format!("https://{host}")
    };
    match reqwest::Url::parse(&url) {
        Ok(url) if !matches!(url.scheme(), "http" | "https") => Err(format!(
            "whose scheme {:?} is not http or https",
            url.scheme()
        )),
        Ok(url) if url.host_str().is_none_or(str::is_empty) => Err("which has no host".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("which is not a URL ({e})")),
    }
}

/// A 200 getPolicy reply we will not use. Not retryable: the next reply would say the same.
fn refused(code: &str, message: String, request_id: Option<String>) -> ApiError {
    ApiError {
        kind: ErrorKind::Rejected,
        status: Some(200),
        code: code.to_owned(),
        message,
        request_id,
        retry_after: None,
    }
}

/// Refuses a policy that quotes `secret` back in a field that is sent on to the upload host
/// or ends up in an `oss://` URL (these cannot be redacted: OSS checks them verbatim), and
/// scrubs the request id, which is only ever shown.
fn vet(mut policy: Policy, secret: &str) -> Result<Policy, ApiError> {
    let request_id = truncate(&scrub(&policy.request_id, secret), 128);
    policy.request_id = request_id;
    if secret.is_empty() {
        return Ok(policy);
    }
    let sent_on = [
        ("policy", &policy.policy),
        ("signature", &policy.signature),
        ("upload_dir", &policy.upload_dir),
        ("upload_host", &policy.upload_host),
        ("oss_access_key_id", &policy.oss_access_key_id),
        ("x_oss_object_acl", &policy.x_oss_object_acl),
        ("x_oss_forbid_overwrite", &policy.x_oss_forbid_overwrite),
    ];
    if let Some((field, _)) = sent_on.iter().find(|(_, value)| value.contains(secret)) {
        return Err(refused(
            "policy_quotes_key",
            format!(
                "the upload credential quotes the API key back in its `{field}` field; \
                 dashbatch will not send it on to the upload host (hint: something between \
                 dashbatch and DashScope echoes the Authorization header)"
            ),
            Some(policy.request_id),
        ));
    }
    Ok(policy)
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
        let (_, _, body) = self.send(request, BodyLimit::Policy).await?;
        let secret = self.secret();
        parse_policy(&body, fetched_at)
            .and_then(|policy| vet(policy, secret))
            .map_err(|err| err.redact(secret))
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

    /// Finding 3 of issue 8: a lifetime that overflows `Instant` (the service's number, or
    /// the emulator's `--policy-ttl-s 18446744073709551615`) is clamped, and even a policy
    /// built by hand with one never panics.
    #[test]
    fn huge_lifetimes_are_clamped() {
        for expire in [
            "9223372036854775807",
            "18446744073709551615",
            "1.8e19",
            "1e300",
            "99999999999999999999999",
            r#""99999999999999999999999""#,
        ] {
            let body = format!(
                r#"{{"data":{{"policy":"p","signature":"s","upload_dir":"d","upload_host":"h",
                "expire_in_seconds":{expire},"oss_access_key_id":"k"}}}}"#
            );
            let p = parse_policy(body.as_bytes(), Instant::now()).unwrap();
            assert_eq!(p.expire_in_seconds, MAX_LIFETIME_S, "{expire}");
            assert_eq!(
                p.expires_at(),
                p.fetched_at + Duration::from_secs(MAX_LIFETIME_S)
            );
        }
        let p = Policy {
            expire_in_seconds: u64::MAX,
            ..sample_policy()
        };
        assert!(p.reusable_until(Duration::MAX) <= p.expires_at());
    }

    /// Low finding of issue 8: an upload host we cannot use is refused once, naming it, and
    /// not retried.
    #[test]
    fn upload_hosts_that_are_not_http_urls_are_refused() {
        let reply = |host: &str| {
            let body = serde_json::json!({"request_id": "r", "data": {"policy": "p",
                "signature": "s", "upload_dir": "d", "upload_host": host,
                "expire_in_seconds": 300, "oss_access_key_id": "k"}});
            parse_policy(body.to_string().as_bytes(), Instant::now())
        };
        for host in [
            "file:///etc/passwd",
            "ftp://h/x",
            "",
            "http://",
            "https://a b",
        ] {
            let e = reply(host).unwrap_err();
            assert_eq!(
                (e.kind, e.code.as_str(), e.status),
                (ErrorKind::Rejected, "invalid_upload_host", Some(200)),
                "{host:?}"
            );
            assert!(!e.is_retryable());
            assert!(e.message.contains(&format!("{host:?}")), "{e}");
            assert_eq!(e.request_id.as_deref(), Some("r"));
        }
        for host in [
            "https://dashscope-file-mgr.oss-cn-beijing.aliyuncs.com",
            "dashscope-file-mgr.oss-cn-beijing.aliyuncs.com",
            "http://127.0.0.1:9/oss",
        ] {
            assert!(reply(host).is_ok(), "{host:?}");
        }
    }

    /// Finding 9 of issue 8: a reply that quotes the key back is scrubbed where the field is
    /// only shown (request id) and refused where it is sent on or stored (upload dir …).
    #[test]
    fn a_reply_quoting_the_key_is_scrubbed_or_refused() {
        let key = "sk-CANARY-42";
        let p = Policy {
            request_id: format!("id Bearer {key}"),
            ..sample_policy()
        };
        assert_eq!(vet(p, key).unwrap().request_id, "id Bearer ****");
        let p = Policy {
            upload_dir: format!("dashscope-instant/{key}"),
            ..sample_policy()
        };
        let e = vet(p, key).unwrap_err();
        assert_eq!(
            (e.kind, e.code.as_str()),
            (ErrorKind::Rejected, "policy_quotes_key")
        );
        assert!(e.message.contains("`upload_dir`") && !e.message.contains("CANARY"));
    }

    /// A JSON value of any type a field could arrive as: integers of any size and sign,
    /// floats, numeric and arbitrary strings, booleans and null.
    fn any_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(|n| serde_json::Value::from(n.to_string())),
            "\\PC{0,40}".prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ]
    }

    proptest::proptest! {
        /// Whatever the service puts in a policy's fields, parsing never panics, the lifetime
        /// is clamped, and every time computed from it is an ordered, panic-free `Instant`.
        #[test]
        fn policy_fields_never_panic(
            expire in any_json(), max_mb in any_json(), capacity in any_json(),
            host in any_json(), dir in any_json(), acl in any_json(), forbid in any_json(),
            margin_s in proptest::prelude::any::<u64>(),
        ) {
            let body = serde_json::json!({"request_id": "r", "data": {
                "policy": "p", "signature": "s", "upload_dir": dir, "upload_host": host,
                "expire_in_seconds": expire, "max_file_size_mb": max_mb,
                "capacity_limit_mb": capacity, "oss_access_key_id": "k",
                "x_oss_object_acl": acl, "x_oss_forbid_overwrite": forbid}});
            let fetched_at = Instant::now();
            match parse_policy(body.to_string().as_bytes(), fetched_at) {
                Ok(p) => {
                    proptest::prop_assert!(p.expire_in_seconds <= MAX_LIFETIME_S);
                    let reusable = p.reusable_until(Duration::from_secs(margin_s));
                    proptest::prop_assert!(fetched_at <= reusable && reusable <= p.expires_at());
                    let _ = p.max_file_size_bytes();
                    let _ = p.object_key(&"a".repeat(64), "x.png");
                }
                Err(e) => proptest::prop_assert!(!e.is_retryable() || e.code == "invalid_body"),
            }
        }

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
