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

fn sha(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Opens, sizes and hashes `path`, as the pipeline does before it calls `upload`.
fn opened(path: &std::path::Path) -> (Arc<std::fs::File>, u64, [u8; 32]) {
    let bytes = std::fs::read(path).unwrap();
    let file = std::fs::File::open(path).unwrap();
    (Arc::new(file), bytes.len() as u64, sha(&bytes))
}

async fn upload_path(
    c: &Client,
    policy: &Policy,
    key: &str,
    path: &std::path::Path,
    content_type: &str,
) -> Result<Sent, ApiError> {
    let (file, len, sha256) = opened(path);
    c.upload(policy, key, file, len, &sha256, content_type)
        .await
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
    let sent = upload_path(
        &client("http://127.0.0.1:9"),
        &policy,
        &key,
        &path,
        "image/png",
    )
    .await
    .unwrap();
    assert_eq!(sent, Sent::Verified);

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
    let sent = upload_path(&c, &policy, &key, &path, "audio/mpeg").await;
    assert_eq!(sent.unwrap(), Sent::Verified);
    let sent = c
        .upload_bytes(&policy, &key, Bytes::from(contents.clone()), "audio/mpeg")
        .await;
    assert_eq!(sent.unwrap(), Sent::Verified);

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
    let up = || upload_path(&c, &policy, "dir/k_a.mp3", &path, "audio/mpeg");

    let e = up().await.unwrap_err();
    assert_eq!(
        (e.kind, e.status, e.request_id.as_deref()),
        (ErrorKind::PolicyExpired, Some(403), Some("R1"))
    );
    let e = up().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    let e = up().await.unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Server, "http_503"));
    assert_eq!(up().await.unwrap(), Sent::Verified);

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
    let e = upload_path(&c, &policy, "d/k", &big, "image/png")
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code.as_str(), e.status),
        (ErrorKind::Rejected, "file_too_large", None)
    );
    assert!(!e.is_retryable());

    // The file is no longer the size it was hashed at: nothing is sent.
    let (_dir, path) = temp_file(b"twelve bytes", "a.png");
    let (file, len, sha256) = opened(&path);
    std::fs::write(&path, b"now thirteen!").unwrap();
    let sent = c
        .upload(&policy, "d/k", file, len, &sha256, "image/png")
        .await
        .unwrap();
    assert!(
        matches!(&sent, Sent::Unverified(why) if why.contains("13 bytes")),
        "{sent:?}"
    );

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
    let e = upload_path(
        &client("http://127.0.0.1:9"),
        &policy,
        "d/k",
        &path,
        "image/png",
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network);
    assert!(e.is_retryable());
    assert!(!e.to_string().contains(TEST_KEY));
}

/// A loopback listener whose accepted sockets keep a small receive buffer: the kernel then
/// cannot swallow a whole test file (loopback autotuning allows tens of MB), so a server
/// that pauses really holds the client back.
fn small_window_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(16).unwrap()
}

/// Finding 4: a file rewritten in place while it streams. The host reads the first piece,
/// the test rewrites every byte of the file, the host reads on. The bytes sent are then not
/// the hashed ones: the client must say so, and must never let the host have a whole body.
#[tokio::test]
async fn a_file_rewritten_mid_upload_is_unverified_and_never_stored_whole() {
    use tokio::sync::{Notify, oneshot};
    #[derive(Clone)]
    struct Gate {
        started: Arc<Mutex<Option<oneshot::Sender<()>>>>,
        go: Arc<Notify>,
        /// Every form that arrived whole: the SHA-256 of its file part.
        stored: Arc<Mutex<Vec<[u8; 32]>>>,
    }
    async fn pausing_oss(State(gate): State<Gate>, mut form: Multipart) -> Response {
        use sha2::Digest;
        let mut stored = None;
        loop {
            let mut field = match form.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(_) => return StatusCode::BAD_REQUEST.into_response(),
            };
            if field.name() != Some("file") {
                let _ = field.bytes().await;
                continue;
            }
            let mut hasher = sha2::Sha256::new();
            let mut first = true;
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => hasher.update(&chunk),
                    Ok(None) => break,
                    Err(_) => return StatusCode::BAD_REQUEST.into_response(),
                }
                if std::mem::take(&mut first) {
                    if let Some(tx) = gate.started.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                    gate.go.notified().await;
                }
            }
            stored = Some(<[u8; 32]>::from(hasher.finalize()));
        }
        if let Some(sha256) = stored {
            gate.stored.lock().unwrap().push(sha256);
        }
        StatusCode::OK.into_response()
    }

    let (tx, started) = oneshot::channel();
    let gate = Gate {
        started: Arc::new(Mutex::new(Some(tx))),
        go: Arc::new(Notify::new()),
        stored: Arc::default(),
    };
    let app = Router::new()
        .route("/", post(pausing_oss))
        .layer(DefaultBodyLimit::disable())
        .with_state(gate.clone());
    let listener = small_window_listener();
    let root = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let policy = Policy {
        upload_host: root,
        ..sample_policy()
    };
    // 16 MiB: far more than the socket buffers can hold while the host pauses.
    let before: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let (_dir, path) = temp_file(&before, "clip.mp4");
    let (file, len, sha256) = opened(&path);
    let c = client("http://127.0.0.1:9");
    let upload = c.upload(&policy, "d/k_clip.mp4", file, len, &sha256, "video/mp4");
    tokio::pin!(upload);
    tokio::select! {
        _ = &mut upload => panic!("the upload ended before the host had read its first piece"),
        _ = started => {}
    }
    // Rewritten in place, same length, every byte different.
    let after: Vec<u8> = before.iter().map(|b| b.wrapping_add(1)).collect();
    std::fs::write(&path, &after).unwrap();
    gate.go.notify_one();

    let sent = upload.await;
    assert!(
        matches!(&sent, Ok(Sent::Unverified(why)) if why.contains("no longer")),
        "{sent:?}"
    );
    assert!(
        gate.stored.lock().unwrap().is_empty(),
        "the host must never receive a whole body of torn bytes"
    );
}

/// Finding 10: a host that accepts the connection and reads nothing. The stall clock cuts
/// the attempt (a retryable network error that names the flag); the whole-upload clock,
/// set far longer, is not what ends it.
#[tokio::test]
async fn a_host_that_takes_nothing_stalls_out() {
    let listener = small_window_listener();
    let root = format!("http://{}", listener.local_addr().unwrap());
    // Accepts and holds every connection without reading from it.
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            keep.lock().unwrap().push(socket);
        }
    });
    let policy = Policy {
        upload_host: root,
        ..sample_policy()
    };
    let c = Client::new(
        crate::dashscope::ApiKey::new(TEST_KEY).unwrap(),
        crate::dashscope::ClientConfig {
            base_url: "http://127.0.0.1:9".to_owned(),
            upload_timeout: std::time::Duration::from_secs(3600),
            upload_stall_timeout: std::time::Duration::from_secs(1),
            ..crate::dashscope::ClientConfig::default()
        },
    )
    .unwrap();
    // A streamed file larger than the buffers, and a small one sent from memory: the first
    // stalls mid-body, the second waits for an answer that never comes.
    let big: Vec<u8> = (0..8u32 << 20).map(|i| (i % 241) as u8).collect();
    let (_dir, path) = temp_file(&big, "big.mp4");
    let e = upload_path(&c, &policy, "d/k_big.mp4", &path, "video/mp4")
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code.as_str()),
        (ErrorKind::Network, "upload_stalled")
    );
    assert!(e.message.contains("--upload-stall-timeout-s"), "{e}");
    assert!(e.is_retryable());
    let e = c
        .upload_bytes(
            &policy,
            "d/k_a.png",
            Bytes::from_static(b"small"),
            "image/png",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "upload_stalled");
    assert!(!held.lock().unwrap().is_empty());
}
