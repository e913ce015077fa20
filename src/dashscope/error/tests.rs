use super::*;
use reqwest::header::HeaderValue;

fn classify_body(status: u16, body: &str) -> ApiError {
    ApiError::from_response(
        status,
        &HeaderMap::new(),
        body.as_bytes(),
        SystemTime::now(),
    )
}

fn oss_xml(code: &str, message: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>5C3D9175B6FC201293AD4890</RequestId><HostId>dashscope-file-mgr.oss-cn-beijing.aliyuncs.com</HostId></Error>"#
    )
}

#[test]
fn native_json_bodies() {
    let e = classify_body(
        401,
        r#"{"code":"InvalidApiKey","message":"Invalid API-key provided.","request_id":"r-1"}"#,
    );
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert_eq!(e.code, "InvalidApiKey");
    assert_eq!(e.message, "Invalid API-key provided.");
    assert_eq!(e.request_id.as_deref(), Some("r-1"));
    assert!(!e.is_retryable());

    let e = classify_body(
        429,
        r#"{"code":"Throttling.RateQuota","message":"Requests rate limit exceeded, please try again later.","request_id":"r-2"}"#,
    );
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert!(e.is_retryable());

    let e = classify_body(
        400,
        r#"{"code":"InvalidParameter.DataInspection","message":"The media format is not supported or incorrect for the data inspection.","request_id":"r-3"}"#,
    );
    assert_eq!(e.kind, ErrorKind::Rejected);
    assert_eq!(e.code, "InvalidParameter.DataInspection");

    let e = classify_body(
        400,
        r#"{"code":"InvalidParameter","message":"The provided URL does not appear to be valid. Ensure it is correctly formatted.","request_id":"r-4"}"#,
    );
    assert_eq!(e.kind, ErrorKind::InvalidOssUrl);
}

#[test]
fn compatible_json_bodies() {
    let e = classify_body(
        400,
        r#"{"error":{"message":"InternalError.Algo.InvalidParameter: The provided URL does not appear to be valid. Ensure it is correctly formatted.","type":"invalid_request_error","param":null,"code":"invalid_parameter_error"},"request_id":"c-1"}"#,
    );
    assert_eq!(e.kind, ErrorKind::InvalidOssUrl);
    assert_eq!(e.code, "invalid_parameter_error");
    assert_eq!(e.request_id.as_deref(), Some("c-1"));

    let e = classify_body(
        429,
        r#"{"error":{"message":"Requests rate limit exceeded, please try again later.","type":"limit_requests","param":null,"code":"limit_requests"},"request_id":"c-2"}"#,
    );
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert_eq!(e.code, "limit_requests");

    // Code null: fall back to the type.
    let e = classify_body(
        401,
        r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":null}}"#,
    );
    assert_eq!(e.kind, ErrorKind::Unauthorized);
    assert_eq!(e.code, "invalid_request_error");

    let e = classify_body(
        404,
        r#"{"error":{"message":"The model `nope` does not exist or you do not have access to it.","type":"invalid_request_error","param":null,"code":"model_not_found"},"request_id":"c-3"}"#,
    );
    // Issue 11: a model that does not exist is refused for every row, not just this one.
    assert_eq!(e.kind, ErrorKind::ModelRefused);
    assert_eq!(e.code, "model_not_found");
}

#[test]
fn oss_xml_bodies() {
    let cases = [
        (
            403,
            "AccessDenied",
            "Invalid according to Policy: Policy expired.",
            ErrorKind::PolicyExpired,
        ),
        (
            403,
            "AccessDenied",
            r#"Invalid according to Policy: Policy Condition failed: ["starts-with", "$key", "dir/"]"#,
            ErrorKind::Rejected,
        ),
        (
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
            ErrorKind::Rejected,
        ),
        (
            403,
            "InvalidAccessKeyId",
            "The OSS Access Key Id you provided does not exist in our records.",
            ErrorKind::Rejected,
        ),
        (
            400,
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size.",
            ErrorKind::Rejected,
        ),
        (
            400,
            "InvalidArgument",
            "The bucket POST must contain the specified 'key'. If it is specified, please check the order of the fields",
            ErrorKind::Rejected,
        ),
        (
            400,
            "MalformedPOSTRequest",
            "The body of your POST request is not well-formed multipart/form-data",
            ErrorKind::Rejected,
        ),
        (
            400,
            "IncorrectNumberOfFilesInPOSTRequest",
            "POST requires exactly one file upload per request.",
            ErrorKind::Rejected,
        ),
        (
            409,
            "FileAlreadyExists",
            "The object you specified already exists and can not be overwritten.",
            ErrorKind::AlreadyExists,
        ),
        (
            503,
            "ServiceUnavailable",
            "Thread pool is almost full, please retry later.",
            ErrorKind::Server,
        ),
        (
            503,
            "TotalQpsLimitExceeded",
            "Max total qps limit is exceeded.",
            ErrorKind::Server,
        ),
    ];
    for (status, code, message, kind) in cases {
        // The XML escapes quotes only where needed; these messages have none that matter.
        let e = classify_body(status, &oss_xml(code, message));
        assert_eq!(e.kind, kind, "{code}: {message}");
        assert_eq!(e.code, code);
        assert_eq!(e.message, message);
        assert_eq!(e.request_id.as_deref(), Some("5C3D9175B6FC201293AD4890"));
    }
}

#[test]
fn policy_expired_needs_code_and_prefix() {
    let other_code = classify_body(
        403,
        &oss_xml("Forbidden", "Invalid according to Policy: Policy expired."),
    );
    assert_eq!(other_code.kind, ErrorKind::Rejected);
    let other_status = classify_body(
        400,
        &oss_xml(
            "AccessDenied",
            "Invalid according to Policy: Policy expired.",
        ),
    );
    assert_eq!(other_status.kind, ErrorKind::Rejected);
}

#[test]
fn empty_and_non_json_bodies() {
    let e = classify_body(502, "");
    assert_eq!(e.kind, ErrorKind::Server);
    assert_eq!(e.code, "http_502");
    assert_eq!(e.message, "Bad Gateway");

    let e = classify_body(500, "<html><body>\n  oops  </body></html>");
    assert_eq!(e.code, "http_500");
    assert_eq!(e.kind, ErrorKind::Server);

    let e = classify_body(418, "not json at all");
    assert_eq!(e.kind, ErrorKind::Rejected);
    assert_eq!(e.code, "http_418");
    assert_eq!(e.message, "not json at all");

    let e = classify_body(408, "{}");
    assert_eq!(e.kind, ErrorKind::Server);
    assert_eq!(e.code, "http_408");

    // The message is bounded by `redact`, which every error leaving the client goes through.
    let long = "x".repeat(5000);
    let e = classify_body(400, &long).redact("");
    assert_eq!(e.message.chars().count(), MAX_MESSAGE_CHARS + 1);
}

#[test]
fn throttling_codes_on_other_statuses() {
    let e = classify_body(
        400,
        r#"{"code":"Throttling.AllocationQuota","message":"Allocated quota exceeded, please increase your quota limit.","request_id":"x"}"#,
    );
    assert_eq!(e.kind, ErrorKind::Throttled);
}

#[test]
fn request_id_from_headers_when_body_has_none() {
    let mut headers = HeaderMap::new();
    headers.insert("x-oss-request-id", HeaderValue::from_static("OSS-1"));
    let e = ApiError::from_response(500, &headers, b"", SystemTime::now());
    assert_eq!(e.request_id.as_deref(), Some("OSS-1"));
}

#[test]
fn retry_after_seconds_and_dates() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00 UTC
    assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("-3", now), None);
    assert_eq!(parse_retry_after("soon", now), None);

    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, HeaderValue::from_static("12"));
    let e = ApiError::from_response(429, &headers, b"", now);
    assert_eq!(e.retry_after, Some(Duration::from_secs(12)));
}

/// A Retry-After is the service's number: dates at either end of what RFC 2822 can say and
/// delay-seconds up to u64::MAX parse without panicking (the retry layer clamps the wait).
#[test]
fn extreme_retry_after_values_do_not_panic() {
    let now = SystemTime::now();
    assert_eq!(
        parse_retry_after("18446744073709551615", now),
        Some(Duration::from_secs(u64::MAX))
    );
    assert_eq!(
        parse_retry_after("Mon, 01 Jan 0001 00:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    assert!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now).is_some());
    assert_eq!(parse_retry_after("99999999999999999999999", now), None);
}

#[test]
fn display_format_and_redaction() {
    let e = classify_body(
        401,
        r#"{"code":"InvalidApiKey","message":"Invalid API-key provided: sk-secret123","request_id":"r-9"}"#,
    )
    .redact("sk-secret123");
    assert_eq!(
        e.to_string(),
        "InvalidApiKey: Invalid API-key provided: **** (HTTP 401, request r-9)"
    );
    let local = ApiError::local(ErrorKind::Rejected, FailureCode::UnreadableFile, "gone");
    assert_eq!(
        local.to_string(),
        "unreadable_file: gone (no HTTP response)"
    );
}

/// Finding 9 of issue 8: the key is scrubbed from every field a response fills (code,
/// message, request id from the body or a header), and before the message is cut, so a key
/// straddling the cut leaves nothing of itself.
#[test]
fn redaction_covers_every_field_before_the_cut() {
    const KEY: &str = "sk-CANARY-0123456789abcdef";
    let scrubbed = |e: &ApiError| {
        for text in [
            e.code.as_str(),
            &e.message,
            e.request_id.as_deref().unwrap_or(""),
        ] {
            assert!(!text.contains("CANARY"), "{e:?}");
        }
    };
    let body = format!(r#"{{"code":"Bad {KEY}","message":"m","request_id":"Bearer {KEY}"}}"#);
    let e = classify_body(400, &body).redact(KEY);
    scrubbed(&e);
    assert_eq!(e.request_id.as_deref(), Some("Bearer ****"));
    assert_eq!(e.code, "Bad ****");

    let mut headers = HeaderMap::new();
    headers.insert(
        "x-request-id",
        HeaderValue::from_str(&format!("Bearer {KEY}")).unwrap(),
    );
    let e = ApiError::from_response(502, &headers, b"", SystemTime::now()).redact(KEY);
    scrubbed(&e);
    assert_eq!(e.request_id.as_deref(), Some("Bearer ****"));

    // 490 characters, then the key: a cut at 500 before redaction kept "sk-CANARY-".
    for body in [
        format!("{}{KEY} and more", "x".repeat(490)),
        format!(r#"{{"message":"{}{KEY}"}}"#, "y".repeat(490)),
        oss_xml("AccessDenied", &format!("{}{KEY}", "z".repeat(490))),
    ] {
        let e = classify_body(403, &body).redact(KEY);
        scrubbed(&e);
        assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert!(e.to_string().len() < 700, "{e}");
    }

    // A server that sends a page as its request id gets it cut.
    let e = classify_body(400, &format!(r#"{{"request_id":"{}"}}"#, "r".repeat(5000))).redact(KEY);
    assert_eq!(e.request_id.unwrap().chars().count(), MAX_ID_CHARS + 1);
}

#[test]
fn kind_names() {
    assert_eq!(ErrorKind::BodyTooLarge.as_str(), "response_too_large");
    assert_eq!(ErrorKind::Throttled.as_str(), "throttled");
    assert_eq!(ErrorKind::InvalidOssUrl.as_str(), "invalid_oss_url");
}

/// Every refusal of the protocol notes' table, in both APIs' shapes, under the status the
/// service gives it, and under another: the code decides, never the status or the message.
#[test]
fn refusals_are_classified_by_code_in_both_apis() {
    let native = |code: &str| format!(r#"{{"code":"{code}","message":"m","request_id":"r"}}"#);
    let compatible = |code: &str| {
        format!(
            r#"{{"error":{{"message":"m","type":"{code}","param":null,"code":"{code}"}},"request_id":"r"}}"#
        )
    };
    use ErrorKind::*;
    for (status, code, kind) in [
        (400, "Arrearage", AccountStopped),
        (429, "CommodityNotPurchased", AccountStopped),
        (429, "PrepaidBillOverdue", AccountStopped),
        (429, "PostpaidBillOverdue", AccountStopped),
        (403, "Model.AccessDenied", ModelRefused),
        (403, "AllocationQuota.FreeTierOnly", ModelRefused),
        (404, "ModelNotFound", ModelRefused),
        (404, "model_not_found", ModelRefused),
        (404, "model_not_supported", ModelRefused),
        (400, "DataInspectionFailed", ContentRefused),
        (400, "data_inspection_failed", ContentRefused),
    ] {
        for body in [native(code), compatible(code)] {
            for status in [status, 400, 429, 403] {
                let e = classify_body(status, &body);
                assert_eq!(e.kind, kind, "{status} {body}");
                assert!(!e.is_retryable(), "{status} {code} is final");
                assert_eq!(e.code.as_str(), code, "the service's code is kept");
                assert_eq!(e.throttle_scope(), None, "{code} is no throttle");
            }
        }
    }
    // A message that names a refusal does not make one; a 401 stays a rejected key.
    let e = classify_body(
        400,
        &native("InvalidParameter").replace("\"m\"", "\"Arrearage\""),
    );
    assert_eq!(e.kind, Rejected);
    assert_eq!(classify_body(401, &native("Arrearage")).kind, Unauthorized);
    // The policy's own 403 is not a model refusal.
    let e = classify_body(
        403,
        &oss_xml(
            "AccessDenied",
            "Invalid according to Policy: Policy expired.",
        ),
    );
    assert_eq!(e.kind, PolicyExpired);
}
