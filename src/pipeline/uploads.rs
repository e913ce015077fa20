//! Getting a row's file into temporary storage: content hashing, per-run de-duplication and
//! the upload itself with its policy-expiry handling.
//!
//! The same (model, content) is uploaded once per run. Rows that need it while the upload is
//! in flight wait for it (single-flight through a `OnceCell` per key) and then share its URL.
//! Keys are content-addressed, so two different files with one name never collide and a 409
//! on our own key means the object is already there.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore};

use super::failure::Failure;
use crate::dashscope::{self, ApiError, Client, Credentials, ErrorKind, RetryPolicy};
use crate::output::UploadOutcome;
use crate::output::state::{UploadCache, unix_now};

/// How many fresh policies one upload may go through after "Policy expired" answers.
/// One expiry is normal (the policy ran out in flight); three in a row means the clocks or the
/// service disagree with us, and retrying forever would only burn credential quota.
const POLICY_ROUNDS: u32 = 3;

type Key = (Arc<str>, [u8; 32]);

pub struct Uploads {
    client: Client,
    credentials: Credentials,
    /// Uploads of earlier runs, still young enough to use.
    cache: Arc<UploadCache>,
    retry: RetryPolicy,
    /// Bounds uploads in flight separately from rows in flight.
    slots: Semaphore,
    /// One cell per (model, content hash) seen in this run. Entries are small (a hash and a
    /// URL); their number is bounded by the distinct files of the manifest.
    cells: Mutex<HashMap<Key, Arc<OnceCell<String>>>>,
}

/// What an upload step tells the row.
pub struct Uploaded {
    pub url: String,
    pub outcome: UploadOutcome,
}

/// Per-row bookkeeping shared by the stages of one row.
#[derive(Default)]
pub struct RowLog {
    pub attempts: u32,
    pub retries: Vec<&'static str>,
    pub saw_429: u32,
}

impl RowLog {
    pub fn on_retry(&mut self, err: &ApiError) {
        self.retries.push(err.kind.as_str());
        if err.kind == ErrorKind::Throttled {
            self.saw_429 += 1;
        }
    }
}

impl Uploads {
    pub fn new(
        client: Client,
        credentials: Credentials,
        cache: Arc<UploadCache>,
        retry: RetryPolicy,
        upload_slots: usize,
    ) -> Self {
        Self {
            client,
            credentials,
            cache,
            retry,
            slots: Semaphore::new(upload_slots.max(1)),
            cells: Mutex::new(HashMap::new()),
        }
    }

    /// Returns a URL for `path`'s content bound to `model`, uploading it unless this run
    /// already did. With `replace`, a URL the model rejected is dropped first (if it is still
    /// the current one) so that exactly one fresh upload replaces it.
    pub async fn ensure(
        &self,
        model: &str,
        path: &Path,
        size: u64,
        sha256: [u8; 32],
        replace: Option<&str>,
        log: &mut RowLog,
    ) -> Result<Uploaded, Failure> {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            let key: Key = (Arc::from(model), sha256);
            let entry = cells.entry(key).or_default();
            if let Some(stale) = replace
                && entry.get().map(String::as_str) == Some(stale)
            {
                *entry = Arc::new(OnceCell::new());
            }
            Arc::clone(entry)
        };
        if let Some(stale) = replace {
            self.cache.forget(model, &sha256, stale);
        }
        // Set by whichever row initialises the cell; rows that find it set reuse its URL.
        let mut outcome = UploadOutcome::Reused;
        let url = cell
            .get_or_try_init(|| async {
                if let Some(url) = self.cache.lookup(model, &sha256, unix_now()) {
                    outcome = UploadOutcome::Cached;
                    return Ok(url);
                }
                outcome = UploadOutcome::New;
                let url = self.upload(model, path, size, &sha256, log).await?;
                self.cache.record(model, &sha256, &url, unix_now());
                Ok(url)
            })
            .await?;
        Ok(Uploaded {
            url: url.clone(),
            outcome,
        })
    }

    async fn upload(
        &self,
        model: &str,
        path: &Path,
        size: u64,
        sha256: &[u8; 32],
        log: &mut RowLog,
    ) -> Result<String, Failure> {
        // Held for the whole upload, including waits for a policy: it bounds open files and
        // concurrent request bodies, which is what the limit is for.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Failure::local("internal", "upload slots closed"))?;
        let sha_hex = hex::encode(sha256);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".to_owned());
        let content_type = dashscope::content_type_for(path);
        let mut last_expired = None;
        for _ in 0..POLICY_ROUNDS {
            let policy = self
                .credentials
                .get(model)
                .await
                .map_err(|e| Failure::api("upload credential", e))?;
            let limit = policy.max_file_size_bytes();
            if size > limit {
                return Err(Failure::local(
                    "file_too_large",
                    format!(
                        "{} is {} bytes; model {model} accepts files up to {} MB ({limit} bytes)",
                        path.display(),
                        size,
                        policy.max_file_size_mb
                    ),
                ));
            }
            let key = policy.object_key(&sha_hex, &name);
            let (result, attempts) = dashscope::retry(
                &self.retry,
                || self.client.upload(&policy, &key, path, content_type),
                |err, _| log.on_retry(err),
            )
            .await;
            log.attempts += attempts;
            match result {
                Ok(()) => return Ok(dashscope::oss_url(&key)),
                // Our key is derived from the content, so whoever wrote it wrote these bytes.
                Err(e) if e.kind == ErrorKind::AlreadyExists => {
                    return Ok(dashscope::oss_url(&key));
                }
                Err(e) if e.kind == ErrorKind::PolicyExpired => {
                    log.retries.push("policy_expired");
                    self.credentials.invalidate(model, &policy);
                    last_expired = Some(e);
                }
                Err(e) => return Err(Failure::api("upload", e)),
            }
        }
        let err = last_expired.map_or_else(
            || Failure::local("internal", "no policy round ran"),
            |e| Failure::api("upload (policy kept expiring; check the system clock)", e),
        );
        Err(err)
    }
}

/// SHA-256 of a file, read in a blocking thread so large files never stall the runtime.
pub async fn hash_file(path: &Path) -> Result<[u8; 32], Failure> {
    let owned = path.to_owned();
    let joined = tokio::task::spawn_blocking(move || -> std::io::Result<[u8; 32]> {
        let mut file = std::fs::File::open(&owned)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hasher.finalize().into())
    })
    .await;
    match joined {
        Ok(Ok(hash)) => Ok(hash),
        Ok(Err(err)) => Err(Failure::local(
            "unreadable_file",
            format!("cannot read {}: {err}", path.display()),
        )),
        Err(err) => Err(Failure::local(
            "internal",
            format!("hashing {} stopped: {err}", path.display()),
        )),
    }
}
