use super::*;
use crate::dashscope::policy::tests::sample_policy;
use crate::dashscope::testing::{TEST_KEY, client, serve};
use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
struct Field {
    name: String,
    file_name: Option<String>,
    content_type: Option<String>,
    data: Vec<u8>,
}

#[derive(Clone, Default)]
struct Seen {
    forms: Arc<Mutex<Vec<Vec<Field>>>>,
    headers: Arc<Mutex<Vec<HeaderMap>>>,
    /// (status, body) to answer with, in order; then 200 with an empty body.
    script: Arc<Mutex<Vec<(u16, &'static str)>>>,
}

async fn oss(State(seen): State<Seen>, headers: HeaderMap, mut form: Multipart) -> Response {
    let mut fields = Vec::new();
    while let Ok(Some(field)) = form.next_field().await {
        let name = field.name().unwrap_or_default().to_owned();
        let file_name = field.file_name().map(str::to_owned);
        let content_type = field.content_type().map(str::to_owned);
        let data = field.bytes().await.unwrap().to_vec();
        fields.push(Field {
            name,
            file_name,
            content_type,
            data,
        });
    }
    seen.forms.lock().unwrap().push(fields);
    seen.headers.lock().unwrap().push(headers);
    let next = {
        let mut s = seen.script.lock().unwrap();
        if s.is_empty() {
            None
        } else {
            Some(s.remove(0))
        }
    };
    match next {
        Some((status, body)) => (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/xml")],
            body,
        )
            .into_response(),
        None => StatusCode::OK.into_response(),
    }
}

async fn fake_oss(script: Vec<(u16, &'static str)>) -> (Seen, String) {
    let seen = Seen {
        script: Arc::new(Mutex::new(script)),
        ..Seen::default()
    };
    let app = Router::new()
        .route("/", post(oss))
        .layer(DefaultBodyLimit::disable())
        .with_state(seen.clone());
    let root = serve(app).await;
    (seen, root)
}

fn temp_file(contents: &[u8], name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

#[tokio::test]
async fn sends_every_policy_field_then_the_file_last() {
    let (seen, root) = fake_oss(vec![]).await;
    let policy = Policy {
        upload_host: root.clone(),
        ..sample_policy()
    };
    // Larger than any single read buffer, so the body really is streamed in pieces.
    let contents: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (_dir, path) = temp_file(&contents, "cat photo.png");
    let key = policy.object_key("ab12", "cat photo.png");
    client("http://127.0.0.1:9")
        .upload(&policy, &key, &path, "image/png")
        .await
        .unwrap();

    let forms = seen.forms.lock().unwrap();
    let fields = &forms[0];
    let names: Vec<_> = fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "OSSAccessKeyId",
            "Signature",
            "policy",
            "key",
            "x-oss-object-acl",
            "x-oss-forbid-overwrite",
            "success_action_status",
            "x-oss-content-type",
            "file"
        ]
    );
    let text = |name: &str| {
        String::from_utf8(fields.iter().find(|f| f.name == name).unwrap().data.clone()).unwrap()
    };
    assert_eq!(text("OSSAccessKeyId"), policy.oss_access_key_id);
    assert_eq!(text("Signature"), policy.signature);
    assert_eq!(text("policy"), policy.policy);
    assert_eq!(text("key"), key);
    assert_eq!(text("x-oss-object-acl"), "private");
    assert_eq!(text("x-oss-forbid-overwrite"), "true");
    assert_eq!(text("success_action_status"), "200");
    let file = fields.last().unwrap();
    assert_eq!(file.data, contents);
    assert_eq!(file.file_name.as_deref(), Some("ab12_cat_photo.png"));
    assert_eq!(file.content_type.as_deref(), Some("image/png"));

    let headers = &seen.headers.lock().unwrap()[0];
    // The API key never goes to OSS, and the body has a length (no chunked upload).
    assert!(headers.get("authorization").is_none());
    assert!(
        headers
            .values()
            .all(|v| !v.to_str().unwrap_or("").contains(TEST_KEY))
    );
    assert!(headers.get("content-length").is_some());
    assert!(headers.get("transfer-encoding").is_none());
}

#[tokio::test]
async fn upload_bytes_sends_the_same_form_as_upload() {
    let (seen, root) = fake_oss(vec![]).await;
    let policy = Policy {
        upload_host: root,
        ..sample_policy()
    };
    let contents: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
    let (_dir, path) = temp_file(&contents, "clip.mp3");
    let key = policy.object_key("cd34", "clip.mp3");
    let c = client("http://127.0.0.1:9");
    c.upload(&policy, &key, &path, "audio/mpeg").await.unwrap();
    c.upload_bytes(&policy, &key, Bytes::from(contents.clone()), "audio/mpeg")
        .await
        .unwrap();

    let forms = seen.forms.lock().unwrap();
    let strip = |form: &[Field]| -> Vec<_> {
        form.iter()
            .map(|f| {
                (
                    f.name.clone(),
                    f.file_name.clone(),
                    f.content_type.clone(),
                    f.data.clone(),
                )
            })
            .collect()
    };
    // Field for field, file last, in both.
    assert_eq!(strip(&forms[0]), strip(&forms[1]));
    assert_eq!(forms[1].last().unwrap().name, "file");
    assert_eq!(forms[1].last().unwrap().data, contents);
    let headers = seen.headers.lock().unwrap();
    for h in headers.iter() {
        assert!(h.get("content-length").is_some());
        assert!(h.get("transfer-encoding").is_none());
    }
    assert_eq!(
        headers[0].get("content-length"),
        headers[1].get("content-length")
    );
}

#[tokio::test]
async fn upload_bytes_over_the_limit_fails_before_any_request() {
    let (seen, root) = fake_oss(vec![]).await;
    let policy = Policy {
        upload_host: root,
        max_file_size_mb: 1,
        ..sample_policy()
    };
    let e = client("http://127.0.0.1:9")
        .upload_bytes(
            &policy,
            "d/k_big.png",
            Bytes::from(vec![0u8; 1024 * 1024 + 1]),
            "image/png",
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code.as_str(), e.status),
        (ErrorKind::Rejected, "file_too_large", None)
    );
    assert!(seen.forms.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oss_errors_are_classified_and_a_second_call_rebuilds_the_form() {
    let expired = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Invalid according to Policy: Policy expired.</Message><RequestId>R1</RequestId><HostId>h</HostId></Error>"#;
    let exists = r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>FileAlreadyExists</Code><Message>The object you specified already exists and can not be overwritten.</Message><RequestId>R2</RequestId><HostId>h</HostId></Error>"#;
    let (seen, root) = fake_oss(vec![(403, expired), (409, exists), (503, "")]).await;
    let policy = Policy {
        upload_host: root,
        ..sample_policy()
    };
    let (_dir, path) = temp_file(b"hello", "a.mp3");
    let c = client("http://127.0.0.1:9");
    let up = || c.upload(&policy, "dir/k_a.mp3", &path, "audio/mpeg");

    let e = up().await.unwrap_err();
    assert_eq!(
        (e.kind, e.status, e.request_id.as_deref()),
        (ErrorKind::PolicyExpired, Some(403), Some("R1"))
    );
    let e = up().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let e = up().await.unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Server, "http_503"));
    up().await.unwrap();

    // Every attempt carried the whole file.
    let forms = seen.forms.lock().unwrap();
    assert_eq!(forms.len(), 4);
    assert!(forms.iter().all(|f| f.last().unwrap().data == b"hello"));
}

#[tokio::test]
async fn local_problems_fail_before_any_request() {
    let (seen, root) = fake_oss(vec![]).await;
    let policy = Policy {
        upload_host: root,
        max_file_size_mb: 1,
        ..sample_policy()
    };
    let c = client("http://127.0.0.1:9");

    let (_dir, big) = temp_file(&vec![0u8; 1024 * 1024 + 1], "big.png");
    let e = c
        .upload(&policy, "d/k", &big, "image/png")
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code.as_str(), e.status),
        (ErrorKind::Rejected, "file_too_large", None)
    );

    let e = c
        .upload(
            &policy,
            "d/k",
            std::path::Path::new("/definitely/not/here.png"),
            "image/png",
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code.as_str()),
        (ErrorKind::Rejected, "file_unreadable")
    );
    assert!(!e.is_retryable());

    let dir = tempfile::tempdir().unwrap();
    let e = c
        .upload(&policy, "d/k", dir.path(), "image/png")
        .await
        .unwrap_err();
    assert_eq!(e.code, "file_unreadable");

    assert!(seen.forms.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unreachable_host_is_a_retryable_network_error() {
    // Bind then drop: nothing listens on this port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let policy = Policy {
        upload_host: format!("http://127.0.0.1:{port}"),
        ..sample_policy()
    };
    let (_dir, path) = temp_file(b"x", "a.png");
    let e = client("http://127.0.0.1:9")
        .upload(&policy, "d/k", &path, "image/png")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network);
    assert!(e.is_retryable());
    assert!(!e.to_string().contains(TEST_KEY));
}
