//! OSS PostObject: success statuses, every check in OSS's order, and the XML errors.

mod emulator_support;

use dashbatch::emulator::EmulatorConfig;
use emulator_support::*;
use serde_json::{Value, json};

const BYTES: &[u8] = b"\x89PNG not really a png";

/// A policy, the key the SDK would use, and its form fields.
async fn prepared(emu: &Emu) -> (Value, String, Vec<(String, String)>) {
    let policy = emu.policy("sk-demo", MODEL).await;
    let key = format!("{}/cat.png", s(&policy, "upload_dir"));
    let fields = sdk_fields(&policy, &key);
    (policy, key, fields)
}

async fn post(emu: &Emu, policy: &Value, fields: &[(String, String)]) -> Answer {
    emu.post_form(
        s(policy, "upload_host"),
        fields,
        &[("file", BYTES.to_vec())],
        &[],
    )
    .await
}

async fn expect_error(
    emu: &Emu,
    policy: &Value,
    fields: &[(String, String)],
    status: u16,
    code: &str,
) -> OssError {
    let answer = post(emu, policy, fields).await;
    assert_eq!(answer.status, status, "{}", answer.body);
    let error = answer.oss_error();
    assert_eq!(error.code, code, "{}", answer.body);
    assert!(!error.request_id.is_empty());
    assert!(!error.host_id.is_empty());
    error
}

#[tokio::test]
async fn sdk_form_is_stored_and_counted() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    let answer = post(&emu, &policy, &fields).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.is_empty());
    let stats = emu.stats().await;
    assert_eq!(stats["uploads"], 1);
    assert_eq!(stats["upload_bytes"], BYTES.len() as u64);
}

#[tokio::test]
async fn success_action_status_variants() {
    let emu = start_default().await;
    for (value, status) in [
        (Some("200"), 200),
        (Some("204"), 204),
        (None, 204),
        (Some("302"), 204),
        (Some("x"), 204),
    ] {
        let (policy, _, fields) = prepared(&emu).await;
        let fields = with_field(&fields, "success_action_status", value);
        let answer = post(&emu, &policy, &fields).await;
        assert_eq!(answer.status, status, "{value:?}: {}", answer.body);
        assert!(answer.body.is_empty(), "{value:?}");
    }
    let (policy, key, fields) = prepared(&emu).await;
    let answer = post(
        &emu,
        &policy,
        &with_field(&fields, "success_action_status", Some("201")),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.content_type(), "application/xml");
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct PostResponse {
        bucket: String,
        key: String,
        location: String,
        #[serde(rename = "ETag")]
        etag: String,
    }
    let reply: PostResponse = quick_xml::de::from_str(&answer.body).expect("PostResponse XML");
    assert_eq!(reply.bucket, "dashscope-file-mgr");
    assert_eq!(reply.key, key);
    assert!(reply.location.ends_with(&key));
    assert!(!reply.etag.is_empty());
}

#[tokio::test]
async fn field_names_are_case_insensitive_and_extra_oss_fields_are_accepted() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    let mut fields: Vec<(String, String)> = fields
        .into_iter()
        .map(|(k, v)| (k.to_ascii_uppercase(), v))
        .collect();
    fields.push(("x-oss-meta-owner".into(), "me".into()));
    fields.push(("Content-Type".into(), "image/png".into()));
    let answer = post(&emu, &policy, &fields).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn a_colliding_key_gets_409_file_already_exists() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    assert_eq!(post(&emu, &policy, &fields).await.status, 200);
    let error = expect_error(&emu, &policy, &fields, 409, "FileAlreadyExists").await;
    assert_eq!(
        error.message,
        "The object you specified already exists and can not be overwritten."
    );
    // Another name under the same credential is fine.
    let key = format!("{}/dog.png", s(&policy, "upload_dir"));
    let answer = post(&emu, &policy, &sdk_fields(&policy, &key)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let stats = emu.stats().await;
    assert_eq!(stats["uploads"], 2);
    assert_eq!(counts(&stats["upload_errors"])["FileAlreadyExists"], 1);
}

#[tokio::test]
async fn tampered_signature_policy_or_access_key_is_refused() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    let signature = s(&policy, "signature");
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{flipped}{}", &signature[1..]);
    let error = expect_error(
        &emu,
        &policy,
        &with_field(&fields, "Signature", Some(&tampered)),
        403,
        "SignatureDoesNotMatch",
    )
    .await;
    assert_eq!(
        error.message,
        "The request signature we calculated does not match the signature you provided. Check your key and signing method."
    );

    // A policy edited to allow a bigger file, with the original signature.
    let mut doc = decode_policy(s(&policy, "policy"));
    doc["conditions"][0] = json!(["content-length-range", 0, u64::MAX]);
    let edited = encode_policy(&doc);
    expect_error(
        &emu,
        &policy,
        &with_field(&fields, "policy", Some(&edited)),
        403,
        "SignatureDoesNotMatch",
    )
    .await;

    let error = expect_error(
        &emu,
        &policy,
        &with_field(&fields, "OSSAccessKeyId", Some("LTAIsomeoneelse")),
        403,
        "InvalidAccessKeyId",
    )
    .await;
    assert_eq!(
        error.message,
        "The OSS Access Key Id you provided does not exist in our records."
    );
}

#[tokio::test]
async fn auth_fields_come_all_or_none() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    for missing in ["OSSAccessKeyId", "Signature", "policy"] {
        expect_error(
            &emu,
            &policy,
            &with_field(&fields, missing, None),
            400,
            "InvalidArgument",
        )
        .await;
    }
    let anonymous = with_field(
        &with_field(
            &with_field(&fields, "OSSAccessKeyId", None),
            "Signature",
            None,
        ),
        "policy",
        None,
    );
    expect_error(&emu, &policy, &anonymous, 403, "AccessDenied").await;
}

#[tokio::test]
async fn an_expired_policy_is_refused_before_its_conditions() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    emu.advance_clock(301).await;
    let error = expect_error(&emu, &policy, &fields, 403, "AccessDenied").await;
    assert_eq!(
        error.message,
        "Invalid according to Policy: Policy expired."
    );
    // A key outside the directory would fail a condition, but expiry is checked first.
    let fields = with_field(&fields, "key", Some("elsewhere/cat.png"));
    let error = expect_error(&emu, &policy, &fields, 403, "AccessDenied").await;
    assert_eq!(
        error.message,
        "Invalid according to Policy: Policy expired."
    );
    // A fresh credential works again.
    let (policy, _, fields) = prepared(&emu).await;
    assert_eq!(post(&emu, &policy, &fields).await.status, 200);
}

#[tokio::test]
async fn a_policy_just_before_expiry_still_works() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    emu.advance_clock(290).await;
    assert_eq!(post(&emu, &policy, &fields).await.status, 200);
}

#[tokio::test]
async fn each_failed_condition_is_echoed() {
    let emu = start_default().await;
    let (policy, _, fields) = prepared(&emu).await;
    let dir = s(&policy, "upload_dir").to_owned();
    let cases = [
        (
            with_field(&fields, "key", Some("dashscope-instant/other/cat.png")),
            format!(r#"["starts-with", "$key", "{dir}"]"#),
        ),
        (
            with_field(&fields, "x-oss-object-acl", Some("public-read")),
            r#"{"x-oss-object-acl": "private"}"#.to_owned(),
        ),
        (
            with_field(&fields, "x-oss-object-acl", None),
            r#"{"x-oss-object-acl": "private"}"#.to_owned(),
        ),
        (
            with_field(&fields, "x-oss-forbid-overwrite", Some("false")),
            r#"{"x-oss-forbid-overwrite": "true"}"#.to_owned(),
        ),
        // Leaving the field out is refused too.
        (
            with_field(&fields, "x-oss-forbid-overwrite", None),
            r#"{"x-oss-forbid-overwrite": "true"}"#.to_owned(),
        ),
    ];
    for (fields, echo) in cases {
        let error = expect_error(&emu, &policy, &fields, 403, "AccessDenied").await;
        assert_eq!(
            error.message,
            format!("Invalid according to Policy: Policy Condition failed: {echo}")
        );
    }
    assert_eq!(
        counts(&emu.stats().await["upload_errors"])["AccessDenied"],
        5
    );
}

#[tokio::test]
async fn every_condition_kind_is_enforced_in_order() {
    let config = EmulatorConfig::default();
    let secret = config.oss_access_key_secret.clone();
    let emu = start(config).await;
    let (policy, key, fields) = prepared(&emu).await;
    let dir = s(&policy, "upload_dir").to_owned();
    let expiration = decode_policy(s(&policy, "policy"))["expiration"].clone();
    // A policy of the emulator's own signing with every condition form.
    let resign = |conditions: Value| {
        let encoded = encode_policy(&json!({"expiration": expiration, "conditions": conditions}));
        let signature = sign(&secret, &encoded);
        with_field(
            &with_field(&fields, "policy", Some(&encoded)),
            "Signature",
            Some(&signature),
        )
    };
    let cases = [
        (json!([["eq", "$key", "nope"]]), r#"["eq", "$key", "nope"]"#),
        (
            json!([{"bucket": "another-bucket"}]),
            r#"{"bucket": "another-bucket"}"#,
        ),
        (
            json!([["in", "$success_action_status", ["201", "204"]]]),
            r#"["in", "$success_action_status", ["201", "204"]]"#,
        ),
        (
            json!([["not-in", "$x-oss-content-type", ["image/png"]]]),
            r#"["not-in", "$x-oss-content-type", ["image/png"]]"#,
        ),
        // The first failing condition is the one reported.
        (
            json!([
                ["starts-with", "$key", dir],
                ["eq", "$x-oss-object-acl", "public-read"],
                ["eq", "$key", "nope"]
            ]),
            r#"["eq", "$x-oss-object-acl", "public-read"]"#,
        ),
    ];
    for (conditions, echo) in cases {
        let error = expect_error(&emu, &policy, &resign(conditions), 403, "AccessDenied").await;
        assert_eq!(
            error.message,
            format!("Invalid according to Policy: Policy Condition failed: {echo}")
        );
    }
    let passing = json!([["eq", "$key", key], ["in", "$success_action_status", ["200"]], {"bucket": "dashscope-file-mgr"}]);
    let answer = post(&emu, &policy, &resign(passing)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn a_file_above_the_limit_is_entity_too_large() {
    let mut config = EmulatorConfig::default();
    config.max_file_size_mb_per_model.insert(MODEL.into(), 1);
    let emu = start(config).await;
    let (policy, _, fields) = prepared(&emu).await;
    let host = s(&policy, "upload_host");
    let too_big = vec![7u8; 1024 * 1024 + 1];
    let answer = emu
        .post_form(host, &fields, &[("file", too_big)], &[])
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let error = answer.oss_error();
    assert_eq!(error.code, "EntityTooLarge");
    assert_eq!(
        error.message,
        "Your proposed upload exceeds the maximum allowed size."
    );
    // Exactly the limit is fine.
    let answer = emu
        .post_form(host, &fields, &[("file", vec![7u8; 1024 * 1024])], &[])
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn the_file_must_be_last_and_alone() {
    let emu = start_default().await;
    let (policy, key, fields) = prepared(&emu).await;
    let host = s(&policy, "upload_host").to_owned();

    // `key` after the file is ignored, so the form has no key.
    let before = with_field(&fields, "key", None);
    let after = vec![("key".to_owned(), key.clone())];
    let answer = emu
        .post_form(&host, &before, &[("file", BYTES.to_vec())], &after)
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let error = answer.oss_error();
    assert_eq!(error.code, "InvalidArgument");
    assert!(
        error
            .message
            .starts_with("The bucket POST must contain the specified 'key'")
    );

    // Fields after the file are ignored, not judged.
    let junk = vec![("x-oss-object-acl".to_owned(), "public-read".to_owned())];
    let answer = emu
        .post_form(&host, &fields, &[("file", BYTES.to_vec())], &junk)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let (policy, _, fields) = prepared(&emu).await;
    let two = [("file", BYTES.to_vec()), ("file", BYTES.to_vec())];
    let answer = emu
        .post_form(s(&policy, "upload_host"), &fields, &two, &[])
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(
        answer.oss_error().code,
        "IncorrectNumberOfFilesInPOSTRequest"
    );

    let answer = emu
        .post_form(s(&policy, "upload_host"), &fields, &[], &[])
        .await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(
        answer.oss_error().code,
        "IncorrectNumberOfFilesInPOSTRequest"
    );
}

#[tokio::test]
async fn a_malformed_body_is_refused() {
    let emu = start_default().await;
    let host = emu.running.base_url();
    let bodies = [
        (
            "multipart/form-data; boundary=XYZ",
            "--XYZ\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\nabc",
        ),
        ("multipart/form-data", "no boundary at all"),
        ("application/x-www-form-urlencoded", "key=a&file=b"),
    ];
    for (content_type, body) in bodies {
        let response = emu
            .http
            .post(&host)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("sent");
        let answer = Answer::read(response).await;
        assert_eq!(answer.status, 400, "{content_type}: {}", answer.body);
        let error = answer.oss_error();
        assert_eq!(error.code, "MalformedPOSTRequest");
        assert_eq!(
            error.message,
            "The body of your POST request is not well-formed multipart/form-data"
        );
    }
}

#[tokio::test]
async fn the_daily_capacity_is_enforced_and_renews_the_next_day() {
    let emu = start(EmulatorConfig {
        capacity_limit_mb: 1,
        ..EmulatorConfig::default()
    })
    .await;
    let half = vec![1u8; 600 * 1024];
    let policy = emu.policy("sk-frank", MODEL).await;
    assert_eq!(policy["capacity_limit_mb"], 1);
    let (answer, _) = emu.upload(&policy, "a.bin", &half).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (answer, _) = emu.upload(&policy, "b.bin", &half).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(answer.oss_error().code, "QuotaExceeded");
    // Another account has its own capacity.
    emu.upload_ok("sk-grace", MODEL, "a.bin", &half).await;
    emu.advance_clock(24 * 3600).await;
    emu.upload_ok("sk-frank", MODEL, "b.bin", &half).await;
}

#[tokio::test]
async fn bandwidth_throttled_uploads_still_arrive_whole() {
    let emu = start(EmulatorConfig {
        upload_bandwidth_mbps: Some(1000.0),
        ..EmulatorConfig::default()
    })
    .await;
    emu.upload_ok("sk-demo", MODEL, "a.bin", &vec![3u8; 200 * 1024])
        .await;
    assert_eq!(emu.stats().await["upload_bytes"], 200 * 1024);
}

/// Well past axum's default 2 MiB body limit: the upload route must have none of its own.
#[tokio::test]
async fn a_5_mib_upload_is_stored_whole_with_its_hash() {
    let emu = start_default().await;
    let bytes: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let url = emu.upload_ok("sk-demo", MODEL, "big.bin", &bytes).await;
    assert_eq!(emu.stats().await["upload_bytes"], bytes.len() as u64);
    let body = json!({
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [{"image": url}, {"text": "?"}]}]},
    });
    let text = native_text(&emu.native("sk-demo", true, &body).await);
    assert!(
        text.contains(&format!(
            "sha256={} size={}",
            sha256_hex(&bytes),
            bytes.len()
        )),
        "{text}"
    );
}

/// The official Python SDK's request: its fields in its order, a `Date` header, and the
/// file part named `File` (field names are case-insensitive).
#[tokio::test]
async fn the_python_sdk_form_with_a_date_header_and_a_capitalised_file_part_is_accepted() {
    let emu = start_default().await;
    let (policy, key, fields) = prepared(&emu).await;
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields {
        form = form.text(name, value);
    }
    form = form.part(
        "File",
        reqwest::multipart::Part::bytes(BYTES.to_vec()).file_name("cat.png"),
    );
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let response = emu
        .http
        .post(s(&policy, "upload_host"))
        .header("Date", date)
        .multipart(form)
        .send()
        .await
        .expect("sent");
    let answer = Answer::read(response).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body = json!({
        "model": MODEL,
        "input": {"messages": [{"role": "user", "content": [
            {"image": format!("oss://{key}")}, {"text": "?"},
        ]}]},
    });
    let text = native_text(&emu.native("sk-demo", true, &body).await);
    assert!(text.contains(&sha256_hex(BYTES)), "{text}");
}
