use super::hashes::HASH_CACHE_MAX;
use super::*;
use crate::dashscope::{ApiKey, ClientConfig, CredentialOptions};
use std::time::Duration;
use std::time::SystemTime;

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
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

const M: &str = "qwen-vl-plus";

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

    let first = up.content(M, &path, &meta).await.unwrap();
    assert_eq!((first.sha256, first.size), (sha(b"first"), 5));
    // A small file's bytes come with its hash, ready for the upload.
    assert_eq!(first.held.as_ref().unwrap().bytes.as_ref(), b"first");
    drop(first);

    // Same stamp: answered from the cache, so the file is not even opened.
    let renamed = dir.path().join("moved.png");
    std::fs::rename(&path, &renamed).unwrap();
    let again = up.content(M, &path, &meta).await.unwrap();
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
    let changed = up.content(M, &path, &meta2).await.unwrap();
    assert_eq!(changed.sha256, sha(b"FIRST"));

    // New size, same mtime: hashed again.
    std::fs::write(&path, b"second!").unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(meta2.modified().unwrap()).unwrap();
    drop(file);
    let meta3 = std::fs::metadata(&path).unwrap();
    let grown = up.content(M, &path, &meta3).await.unwrap();
    assert_eq!((grown.sha256, grown.size), (sha(b"second!"), 7));
}

#[tokio::test]
async fn large_files_are_hashed_as_streams_and_never_held() {
    let dir = tempfile::tempdir().unwrap();
    // A large file is checked against the model's limit first: that needs a credential.
    let (double, _) = Double::start(1024, false).await;
    let up = double.uploads(dir.path(), 4);
    let path = dir.path().join("big.mp4");
    let contents: Vec<u8> = (0..SMALL_FILE + 1).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &contents).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let content = up.content(M, &path, &meta).await.unwrap();
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
    let first = up.content(M, &a, &meta_a).await.unwrap();
    let second = up.content(M, &b, &meta_b);
    tokio::pin!(second);
    // One slot, and `first` holds its bytes: `b` must not be read yet.
    assert!(futures::poll!(&mut second).is_pending());
    drop(first);
    let second = second.await.unwrap();
    assert_eq!(second.held.as_ref().unwrap().bytes.as_ref(), b"bbb");
    // A file whose hash is cached needs no permit: it holds no bytes.
    let cached = up.content(M, &a, &meta_a).await.unwrap();
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
    let err = up.content(M, &path, &meta).await.err().unwrap();
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
    let mut content = uploads.content(M, &path, &metadata).await.unwrap();
    let mut log = RowLog::default();
    let up = uploads
        .ensure(M, &path, &mut content, None, &mut log)
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

/// A test double of the service's upload side: getPolicy hands out a fresh folder per call,
/// and the upload host stores (key → SHA-256 of the file part) only for a body that arrived
/// whole, refusing an existing key with 409 as `x-oss-forbid-overwrite` does. With `pause`,
/// the first upload stops after its first piece until the test says go.
#[derive(Clone)]
struct Double {
    root: String,
    policies: Arc<std::sync::atomic::AtomicU32>,
    objects: Arc<Mutex<HashMap<String, [u8; 32]>>>,
    started: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
    go: Arc<tokio::sync::Notify>,
    max_mb: u64,
}

impl Double {
    async fn start(max_mb: u64, pause: bool) -> (Double, tokio::sync::oneshot::Receiver<()>) {
        use axum::routing::{get, post};
        // A small receive window: the kernel cannot swallow a test file while the host pauses.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(64).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let double = Double {
            root: format!("http://{}", listener.local_addr().unwrap()),
            policies: Arc::default(),
            objects: Arc::default(),
            started: Arc::new(Mutex::new(pause.then_some(tx))),
            go: Arc::default(),
            max_mb,
        };
        let app = axum::Router::new()
            .route("/api/v1/uploads", get(Double::policy))
            .route("/oss", post(Double::oss))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(double.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (double, rx)
    }

    fn uploads(&self, dir: &Path, slots: usize) -> Uploads {
        let client = Client::new(
            ApiKey::new("sk-unit-test-key-0123456789").unwrap(),
            ClientConfig {
                base_url: self.root.clone(),
                ..ClientConfig::default()
            },
        )
        .unwrap();
        let credentials = Credentials::new(client.clone(), CredentialOptions::default());
        let cache = Arc::new(UploadCache::open(dir, "test", 0));
        Uploads::new(client, credentials, cache, RetryPolicy::default(), slots)
    }

    async fn policy(
        axum::extract::State(d): axum::extract::State<Double>,
    ) -> axum::Json<serde_json::Value> {
        let n = d.policies.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        axum::Json(serde_json::json!({"request_id": format!("r{n}"), "data": {
            "policy": "cG9saWN5", "signature": "c2ln",
            "upload_dir": format!("dashscope-instant/t/2026-11-26/r{n}"),
            "upload_host": format!("{}/oss", d.root), "expire_in_seconds": 300,
            "max_file_size_mb": d.max_mb, "capacity_limit_mb": 999999999,
            "oss_access_key_id": "LTAI", "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true"}}))
    }

    async fn oss(
        axum::extract::State(d): axum::extract::State<Double>,
        mut form: axum::extract::Multipart,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        use sha2::Digest;
        let bad = || axum::http::StatusCode::BAD_REQUEST.into_response();
        let (mut key, mut stored) = (None, None);
        loop {
            let mut field = match form.next_field().await {
                Ok(Some(field)) => field,
                Ok(None) => break,
                Err(_) => return bad(),
            };
            if field.name() != Some("file") {
                let name = field.name().map(str::to_owned);
                let text = field.text().await.unwrap_or_default();
                if name.as_deref() == Some("key") {
                    key = Some(text);
                }
                continue;
            }
            let mut hasher = sha2::Sha256::new();
            loop {
                match field.chunk().await {
                    Ok(Some(chunk)) => hasher.update(&chunk),
                    Ok(None) => break,
                    Err(_) => return bad(),
                }
                let started = d.started.lock().unwrap().take();
                if let Some(tx) = started {
                    let _ = tx.send(());
                    d.go.notified().await;
                }
            }
            stored = Some(<[u8; 32]>::from(hasher.finalize()));
        }
        let (Some(key), Some(sha256)) = (key, stored) else {
            return bad();
        };
        let mut objects = d.objects.lock().unwrap();
        if objects.contains_key(&key) {
            return (
                axum::http::StatusCode::CONFLICT,
                [("content-type", "application/xml")],
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>FileAlreadyExists</Code>\
                 <Message>exists</Message><RequestId>R</RequestId><HostId>h</HostId></Error>",
            )
                .into_response();
        }
        objects.insert(key, sha256);
        axum::http::StatusCode::OK.into_response()
    }

    /// What the host holds under the key of an `oss://` URL.
    fn stored(&self, url: &str) -> Option<[u8; 32]> {
        let key = url.strip_prefix("oss://").unwrap();
        self.objects.lock().unwrap().get(key).copied()
    }
}

/// Finding 4: a large file rewritten in place while it uploads. The torn attempt stores
/// nothing; the row reads the file again and uploads the new bytes under their own hash, in
/// a fresh credential's folder; the cache names only what the host really holds.
#[tokio::test]
async fn a_file_rewritten_during_its_upload_is_read_again_and_recorded_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (double, started) = Double::start(1024, true).await;
    let up = double.uploads(dir.path(), 4);
    let path = dir.path().join("clip.mp4");
    let before: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    let after: Vec<u8> = before.iter().map(|b| b.wrapping_add(7)).collect();
    std::fs::write(&path, &before).unwrap();
    let meta = std::fs::metadata(&path).unwrap();

    let mut content = up.content(M, &path, &meta).await.unwrap();
    assert_eq!(content.sha256, sha(&before));
    let mut log = RowLog::default();
    let uploaded = {
        let ensure = up.ensure(M, &path, &mut content, None, &mut log);
        tokio::pin!(ensure);
        tokio::select! {
            r = &mut ensure => panic!("ended before the host read its first piece: {:?}", r.err()),
            _ = started => {}
        }
        // In place: same inode, same length, every byte different.
        std::fs::write(&path, &after).unwrap();
        double.go.notify_one();
        ensure.await
    }
    .unwrap_or_else(|f| panic!("{}: {}", f.code, f.message));

    assert_eq!(
        content.sha256,
        sha(&after),
        "the row now names the new bytes"
    );
    assert_eq!(double.stored(&uploaded.url), Some(sha(&after)));
    assert!(
        uploaded.url.contains(&hex::encode(sha(&after))[..16]),
        "{}",
        uploaded.url
    );
    // Nothing torn was stored anywhere.
    let objects = double.objects.lock().unwrap().clone();
    assert_eq!(objects.len(), 1, "{objects:?}");
    // The cache records the bytes sent, never the hash taken before the rewrite.
    assert_eq!(up.cache.lookup(M, &sha(&before), unix_now()), None);
    assert_eq!(
        up.cache.lookup(M, &sha(&after), unix_now()),
        Some(uploaded.url.clone())
    );
    assert!(log.retries.contains(&"file_changed"), "{:?}", log.retries);
    assert_eq!(
        double.policies.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the retry uses a fresh credential (a fresh folder)"
    );
}

/// Finding 4, small files: a hash known from earlier in the run (same size and mtime) is
/// checked against the bytes read for the upload, not trusted.
#[tokio::test]
async fn a_small_file_whose_cached_hash_is_stale_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let (double, _) = Double::start(1024, false).await;
    let up = double.uploads(dir.path(), 4);
    let path = dir.path().join("cat.png");
    std::fs::write(&path, b"old cat").unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    drop(up.content(M, &path, &meta).await.unwrap());
    // Same size, mtime put back (as `cp -p` or `rsync -t` would): the stamp still matches.
    std::fs::write(&path, b"new cat").unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(meta.modified().unwrap()).unwrap();
    drop(file);

    let mut content = up.content(M, &path, &meta).await.unwrap();
    assert_eq!(
        content.sha256,
        sha(b"old cat"),
        "answered from the hash cache"
    );
    let mut log = RowLog::default();
    let uploaded = up
        .ensure(M, &path, &mut content, None, &mut log)
        .await
        .unwrap_or_else(|f| panic!("{}: {}", f.code, f.message));
    assert_eq!(double.stored(&uploaded.url), Some(sha(b"new cat")));
    assert_eq!(up.cache.lookup(M, &sha(b"old cat"), unix_now()), None);
}

/// Finding 4: a pseudo-file whose size (0) is not its length is not uploaded: it would send
/// the process's environment, and no hash of it could be trusted.
#[tokio::test]
async fn a_file_longer_than_its_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = uploads(dir.path(), 1);
    let path = Path::new("/proc/self/environ");
    let Ok(meta) = std::fs::metadata(path) else {
        return; // not Linux
    };
    assert_eq!(meta.len(), 0);
    let err = up.content(M, path, &meta).await.err().expect("refused");
    assert_eq!(err.code, "file_changed", "{}", err.message);
    assert!(
        err.message.contains("/proc/self/environ"),
        "{}",
        err.message
    );
    assert_eq!(up.reads.available_permits(), 1);
}

/// Finding 11: the path was a regular file when the row checked it and is a FIFO when it is
/// opened. Nothing may block (the open, a read, or a runtime thread): the row fails as
/// `not_a_file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_swapped_in_after_the_check_is_not_a_file_and_blocks_nothing() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let regular = dir.path().join("was-a-file.png");
    std::fs::write(&regular, b"x").unwrap();
    let meta = std::fs::metadata(&regular).unwrap();
    let fifo = dir.path().join("fifo.png");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let up = Arc::new(uploads(dir.path(), 1));
    let (task_up, task_fifo) = (Arc::clone(&up), fifo.clone());
    let mut task = tokio::spawn(async move {
        task_up
            .content(M, &task_fifo, &meta)
            .await
            .err()
            .map(|f| (f.code, f.message))
    });
    // Only a guard against a hang: on a pass the answer comes at once.
    let answer = match tokio::time::timeout(Duration::from_secs(30), &mut task).await {
        Ok(answer) => answer.unwrap(),
        Err(_) => {
            // Release the blocked reader (a writer that opens and closes) so the test ends.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                .open(&fifo);
            let _ = task.await;
            panic!("content() blocked on a FIFO");
        }
    };
    let (code, message) = answer.expect("a FIFO is refused");
    assert_eq!(code, "not_a_file");
    assert!(
        message.contains("fifo.png") && message.contains("FIFO"),
        "{message}"
    );
    assert_eq!(up.reads.available_permits(), 1);
}

/// Low finding: a file over the model's limit is refused from its handle's size before a
/// byte of it is hashed (a sparse file, so the test costs no disk; hashing it whole would
/// take a minute or more).
#[tokio::test]
async fn an_oversized_file_is_refused_before_it_is_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let (double, _) = Double::start(1024, false).await;
    let up = double.uploads(dir.path(), 1);
    let path = dir.path().join("huge.mp4");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len((1024 << 20) + 1).unwrap();
    drop(file);
    let meta = std::fs::metadata(&path).unwrap();
    let err = up.content(M, &path, &meta).await.err().expect("refused");
    assert_eq!(err.code, "file_too_large", "{}", err.message);
    assert!(err.message.contains("1024 MB"), "{}", err.message);
}
