use super::*;
use crate::dashscope::model::{Api, ModelRequest};
use crate::dashscope::policy::tests::sample_policy;
use crate::dashscope::testing::{client, serve, serve_raw};
use crate::dashscope::{ApiError, Client, ErrorKind};
use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use std::convert::Infallible;

#[test]
fn a_cut_key_is_dropped_from_the_end() {
    let cut = |s: &'static str| drop_partial_secret(Bytes::from_static(s.as_bytes()), "sk-abc");
    assert_eq!(cut("xx sk-ab"), "xx ");
    assert_eq!(cut("xx s"), "xx ");
    // A whole key is left for the redaction to replace; other endings are kept.
    assert_eq!(cut("xx sk-abc"), "xx sk-abc");
    assert_eq!(cut("xx sk-x"), "xx sk-x");
    assert_eq!(cut(""), "");
    assert_eq!(drop_partial_secret(Bytes::from_static(b"ab"), ""), "ab");
}

#[test]
fn human_sizes() {
    assert_eq!(human(POLICY_BODY_LIMIT as u64), "64 KiB");
    assert_eq!(human(MODEL_BODY_LIMIT as u64), "16 MiB");
    assert_eq!(human(1 << 40), "1024 GiB");
    assert_eq!(human(1536), "1.5 KiB");
    assert_eq!(human(12), "12 bytes");
}

fn request() -> ModelRequest {
    ModelRequest {
        model: "m".into(),
        prompt: "p".into(),
        system: None,
        media: vec![],
        params: Default::default(),
    }
}

/// One attempt at each of the three calls against `root` (the upload goes to `root` too).
async fn all_three(c: &Client, root: &str) -> [(BodyLimit, ApiError); 3] {
    let mut policy = sample_policy();
    policy.upload_host = format!("{root}/oss");
    [
        (BodyLimit::Policy, c.get_policy("m").await.unwrap_err()),
        (
            BodyLimit::Upload,
            c.upload_bytes(&policy, "d/k_a.png", Bytes::from_static(b"a"), "image/png")
                .await
                .unwrap_err(),
        ),
        (
            BodyLimit::Model,
            c.call_model(Api::Compatible, &request()).await.unwrap_err(),
        ),
    ]
}

fn assert_too_large(limit: BodyLimit, e: &ApiError, read: &str) {
    assert_eq!(
        (e.kind, e.code.as_str(), e.status),
        (ErrorKind::BodyTooLarge, "response_too_large", Some(200)),
        "{limit:?}: {e}"
    );
    assert!(!e.is_retryable());
    assert!(e.message.contains(limit.what()), "{e}");
    assert!(e.message.contains(&human(limit.bytes() as u64)), "{e}");
    assert!(e.message.contains(read), "{e}");
}

/// Finding 2 of issue 8: an endless 200 body on getPolicy, on the upload host and on a model
/// call stops at each call's cap with `response_too_large` (the test finishing at all is the
/// proof that memory stayed bounded: the old client read on until the machine gave out).
#[tokio::test]
async fn an_endless_body_stops_at_the_cap() {
    async fn endless(_request: Bytes) -> Response {
        let chunk = Bytes::from(vec![b'{'; 64 * 1024]);
        let stream = futures::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
        Body::from_stream(stream).into_response()
    }
    let root = serve(Router::new().fallback(any(endless))).await;
    for (limit, e) in all_three(&client(&root), &root).await {
        assert_too_large(limit, &e, "went on past the");
    }
}

/// A Content-Length over the cap fails before reading: this server announces a terabyte and
/// hangs up, so a client that started reading would see a cut body (`network`) instead.
#[tokio::test]
async fn a_content_length_over_the_cap_fails_before_reading() {
    let root = serve_raw("HTTP/1.1 200 OK\r\ncontent-length: 1099511627776\r\n\r\n").await;
    for (limit, e) in all_three(&client(&root), &root).await {
        assert_too_large(limit, &e, "announces 1024 GiB, over the");
    }
}

/// The caps are exact: a valid getPolicy answer of exactly 64 KiB is read, one byte more is
/// refused (chunked, so no Content-Length gives it away first).
#[tokio::test]
async fn the_policy_cap_is_exact() {
    fn answer(len: usize) -> String {
        let data = r#"{"policy":"p","signature":"s","upload_dir":"d","upload_host":"http://h","expire_in_seconds":300,"oss_access_key_id":"k"}"#;
        let bare = format!(r#"{{"pad":"","data":{data}}}"#);
        format!(
            r#"{{"pad":"{}","data":{data}}}"#,
            " ".repeat(len - bare.len())
        )
    }
    for (len, ok) in [(POLICY_BODY_LIMIT, true), (POLICY_BODY_LIMIT + 1, false)] {
        let text = answer(len);
        assert_eq!(text.len(), len);
        let app = Router::new().fallback(any(move || {
            let text = text.clone();
            async move {
                let stream = futures::stream::iter(
                    text.into_bytes()
                        .chunks(1000)
                        .map(|c| Ok::<_, Infallible>(Bytes::copy_from_slice(c)))
                        .collect::<Vec<_>>(),
                );
                Body::from_stream(stream).into_response()
            }
        }));
        let root = serve(app).await;
        let result = client(&root).get_policy("m").await;
        assert_eq!(result.is_ok(), ok, "{len}: {result:?}");
    }
}

/// An error status with an endless body is still classified by its status (a 503 is worth
/// another attempt, however long its page), from the start of the body.
#[tokio::test]
async fn an_endless_error_body_is_classified_from_its_start() {
    async fn endless_503() -> Response {
        let start = Bytes::from_static(b"<html>Service Unavailable, try later");
        let rest = futures::stream::repeat_with(|| {
            Ok::<_, Infallible>(Bytes::from(vec![b' '; 64 * 1024]))
        });
        let stream = futures::StreamExt::chain(
            futures::stream::once(async move { Ok::<_, Infallible>(start) }),
            rest,
        );
        (StatusCode::SERVICE_UNAVAILABLE, Body::from_stream(stream)).into_response()
    }
    let root = serve(Router::new().fallback(any(endless_503))).await;
    let e = client(&root).get_policy("m").await.unwrap_err();
    assert_eq!((e.kind, e.code.as_str()), (ErrorKind::Server, "http_503"));
    assert!(e.message.starts_with("<html>Service Unavailable"), "{e}");
    assert!(e.is_retryable());
}
