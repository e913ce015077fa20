//! Shared helpers of the pipeline tests: a temp job folder, an emulator on 127.0.0.1:0, and
//! results-file reading.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dashbatch::config::RunConfig;
use dashbatch::dashscope::{Api, ApiKey, Client, ClientConfig, CredentialOptions, RetryPolicy};
use dashbatch::emulator::{self, EmulatorConfig, Running};
use sha2::{Digest, Sha256};

pub mod redis;

/// A temp folder holding a manifest and its media.
pub struct Job {
    pub dir: tempfile::TempDir,
    rows: Vec<String>,
    header: String,
}

impl Job {
    pub fn new() -> Self {
        Self::with_header("id,model,file,prompt")
    }

    pub fn with_header(header: &str) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            rows: Vec::new(),
            header: header.to_owned(),
        }
    }

    /// Writes a media file under the job folder and returns its relative path.
    pub fn file(&self, rel: &str, bytes: &[u8]) -> String {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        rel.to_owned()
    }

    /// Adds a raw CSV line (the caller quotes as needed).
    pub fn row(&mut self, line: &str) -> &mut Self {
        self.rows.push(line.to_owned());
        self
    }

    pub fn manifest(&self) -> PathBuf {
        let path = self.dir.path().join("manifest.csv");
        let mut text = self.header.clone();
        text.push('\n');
        for r in &self.rows {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn output(&self) -> PathBuf {
        self.dir.path().join("manifest.results.csv")
    }

    /// A run configuration with fast retries, so fault tests finish quickly.
    pub fn config(&self, api: Api, concurrency: usize) -> RunConfig {
        let retry = fast_retry(8);
        RunConfig {
            manifest: self.manifest(),
            output: self.output(),
            api,
            concurrency,
            upload_concurrency: 16,
            credentials: CredentialOptions {
                retry: retry.clone(),
                ..CredentialOptions::default()
            },
            retry,
            model_rps: None,
            model_tpm: None,
            quiet: true,
            fresh: false,
            state_dir: self.dir.path().join(".dashbatch"),
            drain_timeout: Duration::from_secs(30),
            outage_timeout: Duration::from_secs(300),
            params: Default::default(),
            shard: None,
            limit: None,
            redis: None,
            excel_bom: false,
        }
    }
}

pub fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base: Duration::from_millis(2),
        cap: Duration::from_millis(40),
        retry_after_ceiling: Duration::from_millis(200),
        watch: None,
    }
}

pub async fn start(config: EmulatorConfig) -> Running {
    emulator::spawn(config).await.expect("emulator starts")
}

pub fn client(em: &Running, key: &str) -> Client {
    Client::new(
        ApiKey::new(key).unwrap(),
        ClientConfig {
            base_url: em.base_url(),
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads a results file into one map per line, keyed by column name.
pub fn results(path: &Path) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_path(path).expect("results file exists");
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    reader
        .records()
        .map(|r| {
            let r = r.expect("results line parses");
            header
                .iter()
                .cloned()
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect()
}

pub fn by_id(rows: &[HashMap<String, String>]) -> HashMap<String, HashMap<String, String>> {
    rows.iter().map(|r| (r["id"].clone(), r.clone())).collect()
}

pub async fn stats(em: &Running) -> serde_json::Value {
    reqwest::get(format!("{}/__emulator/stats", em.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

pub async fn advance_clock(em: &Running, seconds: u64) {
    let status = reqwest::Client::new()
        .post(format!(
            "{}/__emulator/clock?advance_s={seconds}",
            em.base_url()
        ))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "clock advance answered {status}");
}

/// Deterministic pseudo-random bytes, distinct per seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The real binary with a sealed environment (only `PATH` and `key` as `DASHSCOPE_API_KEY`),
/// no standard input, killed when dropped.
pub fn sealed(key: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dashbatch"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DASHSCOPE_API_KEY", key)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `dashbatch run MANIFEST --base-url URL`, sealed as [`sealed`].
pub fn sealed_run(key: &str, base_url: &str, manifest: &Path) -> tokio::process::Command {
    let mut cmd = sealed(key);
    cmd.arg("run").arg(manifest).args(["--base-url", base_url]);
    cmd
}

/// The ids of the rows `ok` in a CSV results file so far, a torn last line left out: what
/// a run in progress has finished.
pub fn finished_ids(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
    let mut reader = csv::Reader::from_reader(whole.as_bytes());
    let header = reader.headers().cloned().unwrap_or_default();
    let column = |name: &str| header.iter().position(|h| h == name);
    let (Some(id), Some(status)) = (column("id"), column("status")) else {
        return Vec::new();
    };
    reader
        .records()
        .map(|r| r.expect("a whole line parses"))
        .filter(|r| &r[status] == "ok")
        .map(|r| r[id].to_owned())
        .collect()
}
