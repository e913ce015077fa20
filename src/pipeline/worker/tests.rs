//! A row holding several media, run by a real [`Worker`] against the emulator on loopback.
//! No manifest column gives a row a second file yet, so these build the row by hand; the
//! end-to-end tests in `tests/` cover one-file rows through `pipeline::run`.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::dashscope::{ApiKey, ClientConfig, CredentialOptions, Credentials};
use crate::emulator::{self, EmulatorConfig, Running};
use crate::manifest::{MediaRef, classify_source};
use crate::output::UploadOutcome;
use crate::upload_cache::{UploadCache, unix_now};

const MODEL: &str = "qwen-vl-plus";

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base: Duration::from_millis(2),
        cap: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

/// A worker wired as `pipeline::run` wires one, against `em`, with its state under `dir`.
fn worker(em: &Running, dir: &Path) -> Worker {
    let client = Client::new(
        ApiKey::new("sk-worker-test-0123456789").unwrap(),
        ClientConfig {
            base_url: em.base_url(),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let credentials = Credentials::new(
        client.clone(),
        CredentialOptions {
            retry: fast_retry(),
            ..CredentialOptions::default()
        },
    );
    let cache = Arc::new(UploadCache::open(&dir.join(".state"), "test", unix_now()));
    let stop = Arc::new(Stop::new(&CancellationToken::new()));
    let gate = Gate::new(&em.base_url(), Duration::from_secs(300), Arc::clone(&stop));
    Worker {
        refusals: Arc::default(),
        manifest: dir.join("manifest.csv"),
        uploads: Uploads::new(client.clone(), credentials, cache, fast_retry(), 4),
        client,
        api: Api::Compatible,
        params: Default::default(),
        retry: fast_retry(),
        pacing: Arc::new(Pacing::new(None, None)),
        stop,
        gate,
        model_retry: Mutex::new(HashMap::new()),
        streamed: Mutex::default(),
    }
}

/// A row of `files` (paths relative to `dir`, or URLs), as the manifest reader builds one.
fn row(dir: &Path, files: &[&str]) -> Row {
    Row {
        line: 2,
        id: "r1".into(),
        model: MODEL.into(),
        media: files
            .iter()
            .map(|file| MediaRef {
                file: (*file).to_owned(),
                source: classify_source(file, dir),
            })
            .collect(),
        prompt: "Compare them.".into(),
        system: None,
        params: None,
        extra: vec![],
        input_digest: None,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn uploads(em: &Running) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("{}/__emulator/stats", em.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["uploads"].as_u64().unwrap()
}

/// Every item is prepared and the model sees all of them; the results line describes the
/// `file` column's item.
#[tokio::test]
async fn a_row_of_two_files_and_a_url_gives_the_model_all_three() {
    let em = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), b"first image").unwrap();
    std::fs::write(dir.path().join("b.wav"), b"some audio").unwrap();
    let worker = worker(&em, dir.path());

    let row = row(dir.path(), &["a.png", "b.wav", "https://example.com/c.jpg"]);
    let result = worker.process(Entry::Row(row)).await;
    assert_eq!(result.status, Status::Ok, "{}", result.error_message);
    // The emulator's answer names the bytes behind every oss:// file it was given.
    for bytes in [&b"first image"[..], b"some audio"] {
        let sha = sha256_hex(bytes);
        assert!(result.response.contains(&sha), "{}", result.response);
    }
    assert!(
        result.response.contains("https://example.com/c.jpg"),
        "{}",
        result.response
    );
    assert_eq!(uploads(&em).await, 2);
    assert_eq!(result.file, "a.png");
    // One URL per file, in order; `-` for the URL the row gave.
    let urls: Vec<&str> = result.oss_url.split(' ').collect();
    assert_eq!(urls.len(), 3, "{}", result.oss_url);
    assert!(
        urls[0].starts_with("oss://") && urls[0].ends_with("a.png"),
        "{urls:?}"
    );
    assert!(
        urls[1].starts_with("oss://") && urls[1].ends_with("b.wav"),
        "{urls:?}"
    );
    assert_eq!(urls[2], "-");
    assert_eq!(result.upload, UploadOutcome::New);
}

/// The model does not say which URL it calls invalid, so every uploaded item goes up once
/// more, and the row makes one more call; a URL the row gave is not touched.
#[tokio::test]
async fn every_uploaded_item_goes_up_again_once_when_the_model_calls_a_url_invalid() {
    let em = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.png"), b"first image").unwrap();
    std::fs::write(dir.path().join("b.mp4"), b"some video").unwrap();
    let worker = worker(&em, dir.path());
    let files = ["a.png", "https://example.com/c.jpg", "b.mp4"];

    let first = worker.process(Entry::Row(row(dir.path(), &files))).await;
    assert_eq!(first.status, Status::Ok, "{}", first.error_message);
    assert_eq!(uploads(&em).await, 2);

    // Past the 48 hours temporary storage keeps a file: this run's URLs are now invalid.
    let advanced = reqwest::Client::new()
        .post(format!(
            "{}/__emulator/clock?advance_s={}",
            em.base_url(),
            48 * 3600 + 1
        ))
        .send()
        .await
        .unwrap();
    assert!(advanced.status().is_success());

    let again = worker.process(Entry::Row(row(dir.path(), &files))).await;
    assert_eq!(again.status, Status::Ok, "{}", again.error_message);
    assert_eq!(uploads(&em).await, 4, "each local file once more");
    assert_eq!(
        again
            .retries
            .iter()
            .filter(|r| **r == "invalid_oss_url")
            .count(),
        1
    );
    assert_eq!(again.upload, UploadOutcome::New);
    assert_ne!(
        again.oss_url, first.oss_url,
        "a fresh URL in place of the old"
    );
    for bytes in [&b"first image"[..], b"some video"] {
        assert!(again.response.contains(&sha256_hex(bytes)));
    }
}
