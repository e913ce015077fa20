use super::*;
use crate::dashscope::{ApiKey, ClientConfig, CredentialOptions};
use std::time::Duration;

/// An `Uploads` that never reaches the network: these tests stop before any upload.
fn uploads(dir: &Path, slots: usize) -> Uploads {
    let client = Client::new(
        ApiKey::new("sk-unit-test-key-0123456789").unwrap(),
        ClientConfig {
            base_url: "http://127.0.0.1:9".to_owned(),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let credentials = Credentials::new(client.clone(), CredentialOptions::default());
    let cache = Arc::new(UploadCache::open(dir, "test", 0));
    Uploads::new(client, credentials, cache, RetryPolicy::default(), slots)
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[test]
fn hash_cache_needs_path_size_and_mtime_to_match() {
    let cache = HashCache::default();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let p = Path::new("img/a.png");
    cache.insert(
        p,
        Stamp {
            size: 10,
            mtime: t,
            sha256: [7; 32],
        },
    );
    assert_eq!(cache.get(p, 10, t), Some([7; 32]));
    assert_eq!(cache.get(p, 11, t), None);
    assert_eq!(cache.get(p, 10, t + Duration::from_nanos(1)), None);
    assert_eq!(cache.get(Path::new("img/b.png"), 10, t), None);
}

#[test]
fn hash_cache_is_cleared_when_full() {
    let cache = HashCache::default();
    let stamp = Stamp {
        size: 1,
        mtime: SystemTime::UNIX_EPOCH,
        sha256: [0; 32],
    };
    for i in 0..HASH_CACHE_MAX {
        cache.insert(Path::new(&i.to_string()), stamp);
    }
    // Updating a present path never clears.
    cache.insert(Path::new("0"), stamp);
    assert_eq!(cache.map.lock().unwrap().len(), HASH_CACHE_MAX);
    cache.insert(Path::new("new"), stamp);
    let map = cache.map.lock().unwrap();
    assert_eq!(map.len(), 1);
    assert!(map.contains_key(Path::new("new")));
}

#[tokio::test]
async fn a_file_is_hashed_once_until_its_size_or_mtime_changes() {
    let dir = tempfile::tempdir().unwrap();
    let up = uploads(dir.path(), 4);
    let path = dir.path().join("a.png");
    std::fs::write(&path, b"first").unwrap();
    let meta = std::fs::metadata(&path).unwrap();

    let first = up.content(&path, &meta).await.unwrap();
    assert_eq!((first.sha256, first.size), (sha(b"first"), 5));
    // A small file's bytes come with its hash, ready for the upload.
    assert_eq!(first.held.as_ref().unwrap().bytes.as_ref(), b"first");
    drop(first);

    // Same stamp: answered from the cache, so the file is not even opened.
    let renamed = dir.path().join("moved.png");
    std::fs::rename(&path, &renamed).unwrap();
    let again = up.content(&path, &meta).await.unwrap();
    assert_eq!(again.sha256, sha(b"first"));
    assert!(again.held.is_none());
    std::fs::rename(&renamed, &path).unwrap();

    // Same size, new content and mtime: hashed again.
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut &file, b"FIRST").unwrap();
    file.set_modified(meta.modified().unwrap() + Duration::from_secs(5))
        .unwrap();
    drop(file);
    let meta2 = std::fs::metadata(&path).unwrap();
    assert_eq!(meta2.len(), 5);
    let changed = up.content(&path, &meta2).await.unwrap();
    assert_eq!(changed.sha256, sha(b"FIRST"));

    // New size, same mtime: hashed again.
    std::fs::write(&path, b"second!").unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(meta2.modified().unwrap()).unwrap();
    drop(file);
    let meta3 = std::fs::metadata(&path).unwrap();
    let grown = up.content(&path, &meta3).await.unwrap();
    assert_eq!((grown.sha256, grown.size), (sha(b"second!"), 7));
}

#[tokio::test]
async fn large_files_are_hashed_as_streams_and_never_held() {
    let dir = tempfile::tempdir().unwrap();
    let up = uploads(dir.path(), 4);
    let path = dir.path().join("big.mp4");
    let contents: Vec<u8> = (0..SMALL_FILE + 1).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &contents).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let content = up.content(&path, &meta).await.unwrap();
    assert_eq!(content.sha256, sha(&contents));
    assert!(content.held.is_none());
    // No read permit is kept for it either.
    assert_eq!(up.reads.available_permits(), 4);
}

#[tokio::test]
async fn held_bytes_are_bounded_by_the_upload_slots() {
    let dir = tempfile::tempdir().unwrap();
    let up = uploads(dir.path(), 1);
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    std::fs::write(&a, b"aaa").unwrap();
    std::fs::write(&b, b"bbb").unwrap();
    let (meta_a, meta_b) = (
        std::fs::metadata(&a).unwrap(),
        std::fs::metadata(&b).unwrap(),
    );
    let first = up.content(&a, &meta_a).await.unwrap();
    let second = up.content(&b, &meta_b);
    tokio::pin!(second);
    // One slot, and `first` holds its bytes: `b` must not be read yet.
    assert!(futures::poll!(&mut second).is_pending());
    drop(first);
    let second = second.await.unwrap();
    assert_eq!(second.held.as_ref().unwrap().bytes.as_ref(), b"bbb");
    // A file whose hash is cached needs no permit: it holds no bytes.
    let cached = up.content(&a, &meta_a).await.unwrap();
    assert!(cached.held.is_none());
}

#[tokio::test]
async fn unreadable_files_are_row_failures() {
    let dir = tempfile::tempdir().unwrap();
    let up = uploads(dir.path(), 1);
    let path = dir.path().join("gone.png");
    std::fs::write(&path, b"x").unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = up.content(&path, &meta).await.err().unwrap();
    assert_eq!(err.code, "unreadable_file");
    // The permit taken for the read is given back.
    assert_eq!(up.reads.available_permits(), 1);
}

/// A 409 FileAlreadyExists on our own content-addressed key means the bytes are already
/// there (an earlier attempt landed but its answer was lost): the row goes on with the URL.
#[tokio::test]
async fn a_409_on_our_own_key_is_success() {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    let upload_host = format!("{root}/oss");
    // A test double: one getPolicy answer, and an OSS host where every key already exists.
    let app = axum::Router::new()
        .route(
            "/api/v1/uploads",
            get(move || {
                let upload_host = upload_host.clone();
                async move {
                    axum::Json(serde_json::json!({"request_id": "r1", "data": {
                        "policy": "cG9saWN5", "signature": "c2ln",
                        "upload_dir": "dashscope-instant/t/2026-11-26/r1",
                        "upload_host": upload_host, "expire_in_seconds": 300,
                        "max_file_size_mb": 1024, "capacity_limit_mb": 999999999,
                        "oss_access_key_id": "LTAI", "x_oss_object_acl": "private",
                        "x_oss_forbid_overwrite": "true"}}))
                }
            }),
        )
        .route(
            "/oss",
            post(|| async {
                (
                    axum::http::StatusCode::CONFLICT,
                    [("content-type", "application/xml")],
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>FileAlreadyExists</Code>\
                     <Message>The object you specified already exists and can not be overwritten.\
                     </Message><RequestId>R</RequestId><HostId>h</HostId></Error>",
                )
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(
        ApiKey::new("sk-unit-test-key-0123456789").unwrap(),
        ClientConfig {
            base_url: root,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let credentials = Credentials::new(client.clone(), CredentialOptions::default());
    let cache = Arc::new(UploadCache::open(dir.path(), "test", 0));
    let uploads = Uploads::new(client, credentials, cache, RetryPolicy::default(), 4);
    let path = dir.path().join("cat.png");
    std::fs::write(&path, b"the same bytes as before").unwrap();
    let metadata = std::fs::metadata(&path).unwrap();
    let mut content = uploads.content(&path, &metadata).await.unwrap();
    let mut log = RowLog::default();
    let up = uploads
        .ensure("qwen-vl-plus", &path, &mut content, None, &mut log)
        .await
        .unwrap_or_else(|f| panic!("{}: {}", f.code, f.message));
    let hex = hex::encode(sha(b"the same bytes as before"));
    assert!(
        up.url
            .starts_with("oss://dashscope-instant/t/2026-11-26/r1/")
            && up.url.contains(&hex[..8])
            && up.url.ends_with("_cat.png"),
        "{}",
        up.url
    );
    assert_eq!(log.attempts, 1, "a 409 is not retried");
}
