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
