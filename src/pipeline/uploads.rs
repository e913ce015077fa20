//! Getting a row's file into temporary storage: content hashing, per-run de-duplication and
//! the upload itself with its policy-expiry handling.
//!
//! The same (model, content) is uploaded once per run. Rows that need it while the upload is
//! in flight wait for it (single-flight through a `OnceCell` per key) and then share its URL.
//! Keys are content-addressed, so two different files with one name never collide and a 409
//! on our own key means the object is already there.
//!
//! What is uploaded is what was hashed. A file is opened without blocking and judged by its
//! handle ([`file`]), read and hashed on the blocking pool, and the bytes read must be exactly
//! as many as the handle's size. A small file goes up from the very buffer that was hashed; a
//! large one is hashed again as it is sent ([`dashscope::Client::upload`]). When the bytes are
//! not the ones hashed (the file is being rewritten, or grew), that attempt stores nothing,
//! its credential is dropped, and the row reads the file afresh and uploads under the new
//! hash; only a verified upload is recorded in the cache. A file that keeps changing fails its
//! row as `file_changed`.
//!
//! Per-row CPU is the budget here (a run of small files is CPU-bound on the client). So a
//! file's hash is computed once per run (see [`HashCache`]), a small file is read and hashed
//! in one step on the blocking pool and uploaded from those bytes, and only large files take
//! the streamed path. A file is checked against the model's size limit before it is hashed.

mod file;
mod hashes;

use std::collections::HashMap;
use std::fs::Metadata;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use self::file::{Hashed, Opened, ReadError};
use self::hashes::{HashCache, Stamp};
use super::checks;
use super::failure::Failure;
use crate::dashscope::{self, ApiError, Client, Credentials, ErrorKind, Policy, RetryPolicy, Sent};
use crate::failure::FailureCode;
use crate::output::UploadOutcome;
use crate::shared::{Claim, Lost, SharedUploads};
use crate::upload_cache::{UploadCache, unix_now};

/// How many fresh policies one upload may go through after "Policy expired" answers.
/// One expiry is normal (the policy ran out in flight); three in a row means the clocks or the
/// service disagree with us, and retrying forever would only burn credential quota.
const POLICY_ROUNDS: u32 = 3;

/// Files up to this size are read whole, hashed from memory and uploaded from those bytes;
/// larger ones are hashed and uploaded as streams and never held whole. 1 MiB keeps the
/// bytes held at once small (see [`Uploads::reads`]) while covering typical images.
pub const SMALL_FILE: u64 = 1 << 20;

/// Reads of one row's file, the first included, that may find it changing (its bytes are
/// not the ones its size or hash promised) before the row fails as `file_changed`. A file
/// rewritten once during the run settles after one more read; one that never settles is
/// being written by something else, and uploading it would send a torn file.
const READS: u32 = 3;

/// One model's single-flight cells, by content hash.
type Cells = HashMap<[u8; 32], Arc<OnceCell<String>>>;

pub struct Uploads {
    client: Client,
    credentials: Credentials,
    /// Uploads of earlier runs, still young enough to use.
    cache: Arc<UploadCache>,
    /// The second level, with `--redis`: other processes' uploads, and the lock that lets
    /// one of them upload a file while the others wait. Asked only when `cache` misses.
    shared: Option<SharedUploads>,
    retry: RetryPolicy,
    /// Bounds uploads in flight separately from rows in flight.
    slots: Semaphore,
    /// Bounds the small files held in memory between hashing and upload. A separate
    /// semaphore, not `slots`: a row holding bytes may wait on another row's upload of the
    /// same content (single-flight), and that upload may need a slot, so holding a slot while
    /// waiting could deadlock. Slot holders never wait for a read permit, so no cycle. Small
    /// files in memory: at most `upload_slots` here plus `upload_slots` read inside a slot
    /// (rows whose hash was cached), i.e. 2 × upload slots × 1 MiB.
    reads: Semaphore,
    /// One cell per (model, content hash) seen in this run. Entries are small (a hash and a
    /// URL); their number is bounded by the distinct files of the manifest. Keyed by model
    /// first so that a lookup borrows the row's model name instead of allocating a key.
    cells: Mutex<HashMap<Arc<str>, Cells>>,
    hashes: HashCache,
}

/// A row's file, hashed, and its bytes while they are still needed for an upload.
pub struct Content<'a> {
    pub sha256: [u8; 32],
    pub size: u64,
    /// A small file's bytes read to hash it, with the permit that bounds them. Taken by the
    /// first `ensure`, which drops them once the upload is done or not needed.
    held: Option<Held<'a>>,
}

struct Held<'a> {
    bytes: Bytes,
    _permit: SemaphorePermit<'a>,
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

/// Why an upload step gave no URL.
enum Miss {
    /// The row fails with this.
    Failed(Failure),
    /// The file's bytes were not the ones hashed; the text says how. Read it again.
    Changed(String),
}

impl From<Failure> for Miss {
    fn from(f: Failure) -> Self {
        Miss::Failed(f)
    }
}

/// Where an upload's bytes come from.
enum Source {
    /// A small file, hashed from this very buffer.
    Bytes(Bytes),
    /// A large file, streamed and hashed again as it is sent.
    File(Arc<std::fs::File>),
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
            shared: None,
            retry,
            slots: Semaphore::new(upload_slots.max(1)),
            reads: Semaphore::new(upload_slots.max(1)),
            cells: Mutex::new(HashMap::new()),
            hashes: HashCache::default(),
        }
    }

    /// The same, with `shared` as the upload cache's second level (`--redis`).
    pub fn with_shared(self, shared: SharedUploads) -> Self {
        Self {
            shared: Some(shared),
            ..self
        }
    }

    /// Hashes the file at `path`, whose `metadata` the row has just checked, for `model`. A
    /// file already hashed in this run with the same size and mtime is not read again. A
    /// small file is read whole in one step, and its bytes are kept for [`Uploads::ensure`]
    /// to upload. A large one is first checked against `model`'s size limit, so a file the
    /// model would refuse is never read.
    pub async fn content(
        &self,
        model: &str,
        path: &Path,
        metadata: &Metadata,
    ) -> Result<Content<'_>, Failure> {
        let size = metadata.len();
        // No mtime (a filesystem that does not keep one): hash every time rather than trust
        // the size alone.
        if let Some(sha256) = metadata
            .modified()
            .ok()
            .and_then(|m| self.hashes.get(path, size, m))
        {
            return Ok(Content {
                sha256,
                size,
                held: None,
            });
        }
        self.read_content(model, path, size <= SMALL_FILE).await
    }

    /// Opens and hashes the file afresh, reading it again (up to [`READS`] times) while what
    /// is read disagrees with the size its handle reports. `small` (from the row's stat)
    /// takes a read permit first, since the bytes may be kept.
    async fn read_content(
        &self,
        model: &str,
        path: &Path,
        small: bool,
    ) -> Result<Content<'_>, Failure> {
        let permit = if small {
            Some(self.reads.acquire().await.map_err(|_| closed())?)
        } else {
            None
        };
        let mut reads = 0;
        let hashed = loop {
            reads += 1;
            match self.read_once(model, path, permit.is_some()).await {
                Ok(hashed) => break hashed,
                Err(Miss::Changed(why)) if reads >= READS => return Err(changed(path, &why)),
                Err(Miss::Changed(_)) => {}
                Err(Miss::Failed(f)) => return Err(f),
            }
        };
        // The stamp is the handle's, from before the read: if the file changed since, the
        // next row's stat differs and it hashes again.
        if let Some(mtime) = hashed.mtime {
            self.hashes.insert(
                path,
                Stamp {
                    size: hashed.size,
                    mtime,
                    sha256: hashed.sha256,
                },
            );
        }
        let held = hashed
            .bytes
            .zip(permit)
            .map(|(bytes, _permit)| Held { bytes, _permit });
        Ok(Content {
            sha256: hashed.sha256,
            size: hashed.size,
            held,
        })
    }

    /// One open and read. With `keep`, a file of at most [`SMALL_FILE`] is read whole and
    /// its bytes returned; anything larger is size-checked, then hashed as a stream.
    async fn read_once(&self, model: &str, path: &Path, keep: bool) -> Result<Hashed, Miss> {
        enum Step {
            Hashed(Hashed),
            Large(Opened),
        }
        let owned = path.to_owned();
        let step = blocking(path, move || {
            let opened = file::open(&owned)?;
            if keep && opened.size <= SMALL_FILE {
                file::hash(opened, true).map(Step::Hashed)
            } else {
                Ok(Step::Large(opened))
            }
        })
        .await?;
        let opened = match step {
            Step::Hashed(hashed) => return Ok(hashed),
            Step::Large(opened) => opened,
        };
        // Before the hash: hashing a file the model refuses costs a whole read for nothing
        // (a 20 GB sparse file took about a minute). The policy is the one the upload needs.
        let policy = self.policy(model).await?;
        too_large(path, model, opened.size, &policy)?;
        blocking(path, move || file::hash(opened, false)).await
    }

    /// Returns a URL for `content` (the file at `path`) bound to `model`, uploading it unless
    /// this run already did. With `replace`, a URL the model rejected is dropped first (if it
    /// is still the current one) so that exactly one fresh upload replaces it. The bytes that
    /// `content` holds are released when this returns. If the file's bytes turn out not to be
    /// the hashed ones, `content` is read afresh (it then names the new bytes) and the upload
    /// starts over under the new hash.
    pub async fn ensure<'s>(
        &'s self,
        model: &str,
        path: &Path,
        content: &mut Content<'s>,
        replace: Option<&str>,
        log: &mut RowLog,
    ) -> Result<Uploaded, Failure> {
        let mut replace = replace;
        let mut reads = 1;
        loop {
            match self.ensure_once(model, path, content, replace, log).await {
                Ok(uploaded) => return Ok(uploaded),
                Err(Miss::Failed(f)) => return Err(f),
                Err(Miss::Changed(why)) => {
                    log.retries.push(FailureCode::FileChanged.as_str());
                    self.hashes.forget(path);
                    if reads >= READS {
                        return Err(changed(path, &why));
                    }
                    reads += 1;
                    // The rejected URL belonged to the old bytes.
                    replace = None;
                    *content = self
                        .read_content(model, path, content.size <= SMALL_FILE)
                        .await?;
                }
            }
        }
    }

    async fn ensure_once(
        &self,
        model: &str,
        path: &Path,
        content: &mut Content<'_>,
        replace: Option<&str>,
        log: &mut RowLog,
    ) -> Result<Uploaded, Miss> {
        let sha256 = content.sha256;
        let (size, held) = (content.size, content.held.take());
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            let per_model = match cells.get_mut(model) {
                Some(m) => m,
                None => cells.entry(Arc::from(model)).or_default(),
            };
            let entry = per_model.entry(sha256).or_default();
            if let Some(stale) = replace
                && entry.get().map(String::as_str) == Some(stale)
            {
                *entry = Arc::new(OnceCell::new());
            }
            Arc::clone(entry)
        };
        if let Some(stale) = replace {
            self.cache.forget(model, &sha256, stale);
            if let Some(shared) = &self.shared {
                shared
                    .forget(model, &sha256, stale)
                    .await
                    .map_err(not_attempted)?;
            }
        }
        // Set by whichever row initialises the cell; rows that find it set reuse its URL.
        let mut outcome = UploadOutcome::Reused;
        let url = cell
            .get_or_try_init(|| async {
                if let Some(url) = self.cache.lookup(model, &sha256, unix_now()) {
                    outcome = UploadOutcome::Cached;
                    return Ok::<_, Miss>(url);
                }
                // Second level: another process's upload, or the lock to upload it ourselves
                // while the others wait.
                let lock = match &self.shared {
                    None => None,
                    Some(shared) => match shared.claim(model, &sha256).await {
                        Ok(Claim::Found { url, at }) => {
                            self.cache.record(model, &sha256, &url, at);
                            outcome = UploadOutcome::Cached;
                            return Ok(url);
                        }
                        Ok(Claim::Upload(lock)) => Some((shared, lock)),
                        Err(lost) => return Err(not_attempted(lost).into()),
                    },
                };
                outcome = UploadOutcome::New;
                let uploading = self.upload(model, path, size, &sha256, held, log);
                let uploaded = match &lock {
                    Some((shared, lock)) => shared.holding(lock, uploading).await,
                    None => uploading.await,
                };
                let url = match (uploaded, lock) {
                    (Ok(url), lock) => {
                        // Only here, after a verified upload: neither cache ever names bytes
                        // nobody checked.
                        let at = unix_now();
                        self.cache.record(model, &sha256, &url, at);
                        // Redis lost: the run is stopping, but this URL is good for this row.
                        if let Some((shared, lock)) = lock {
                            let _ = shared.publish(lock, &url, at).await;
                        }
                        url
                    }
                    (Err(miss), lock) => {
                        if let Some((shared, lock)) = lock {
                            let _ = shared.release(lock).await;
                        }
                        return Err(miss);
                    }
                };
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
        held: Option<Held<'_>>,
        log: &mut RowLog,
    ) -> Result<String, Miss> {
        // Held for the whole upload, including waits for a policy: it bounds open files and
        // concurrent request bodies, which is what the limit is for.
        let _slot = self.slots.acquire().await.map_err(|_| closed())?;
        let sha_hex = hex::encode(sha256);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".to_owned());
        let content_type = dashscope::content_type_for(path);
        // A small file goes up from memory: the bytes hashed a moment ago, or (its hash came
        // from the cache) read and checked against that hash now, inside the slot, which
        // bounds them. A large file is opened once here and streamed by every attempt.
        let source = match held {
            Some(h) => Source::Bytes(h.bytes),
            None => self.source(path, size, sha256).await?,
        };
        let mut last_expired = None;
        for _ in 0..POLICY_ROUNDS {
            let policy = self.policy(model).await?;
            too_large(path, model, size, &policy)?;
            let key = policy.object_key(&sha_hex, &name);
            let (result, attempts) = dashscope::retry(
                &self.retry,
                || async {
                    match &source {
                        Source::Bytes(b) => {
                            let b = b.clone();
                            self.client
                                .upload_bytes(&policy, &key, b, content_type)
                                .await
                        }
                        Source::File(f) => {
                            let f = Arc::clone(f);
                            self.client
                                .upload(&policy, &key, f, size, sha256, content_type)
                                .await
                        }
                    }
                },
                |err, _| log.on_retry(err),
            )
            .await;
            log.attempts += attempts;
            match result {
                Ok(Sent::Verified) => return Ok(dashscope::oss_url(&key)),
                Ok(Sent::Unverified(why)) => {
                    // The bytes sent were not whole or not the hashed ones, so the host
                    // never had a complete body for this key. Still, this key is never
                    // tried again: dropping the credential gives the next attempt a fresh
                    // folder, where no 409 can meet whatever this one left behind.
                    self.credentials.invalidate(model, &policy);
                    return Err(Miss::Changed(why));
                }
                // Our key is derived from the content, and every upload is verified before
                // its last byte leaves, so whoever stored an object under it stored these
                // bytes.
                Err(e) if e.kind == ErrorKind::AlreadyExists => {
                    return Ok(dashscope::oss_url(&key));
                }
                Err(e) if e.kind == ErrorKind::PolicyExpired => {
                    log.retries.push(ErrorKind::PolicyExpired.as_str());
                    self.credentials.invalidate(model, &policy);
                    last_expired = Some(e);
                }
                Err(e) => return Err(Failure::api("upload", e).into()),
            }
        }
        let err = last_expired.map_or_else(
            || Failure::local(FailureCode::Internal, "no policy round ran"),
            |e| Failure::api("upload (policy kept expiring; check the system clock)", e),
        );
        Err(err.into())
    }

    /// The bytes or the open handle an upload sends, for a file whose hash is known.
    async fn source(&self, path: &Path, size: u64, sha256: &[u8; 32]) -> Result<Source, Miss> {
        let (owned, sha256) = (path.to_owned(), *sha256);
        blocking(path, move || {
            let opened = file::open(&owned)?;
            if size <= SMALL_FILE {
                file::read_expected(opened, size, &sha256).map(Source::Bytes)
            } else if opened.size != size {
                Err(ReadError::Changed(format!(
                    "its size is {} bytes, not the {size} it had when it was hashed",
                    opened.size
                )))
            } else {
                Ok(Source::File(Arc::new(opened.file)))
            }
        })
        .await
    }

    async fn policy(&self, model: &str) -> Result<Arc<Policy>, Failure> {
        self.credentials
            .get(model)
            .await
            .map_err(|e| Failure::api(super::failure::CREDENTIAL_STAGE, e))
    }
}

/// `file_too_large` when `size` is over what `model` accepts.
fn too_large(path: &Path, model: &str, size: u64, policy: &Policy) -> Result<(), Failure> {
    checks::size(
        path,
        size,
        policy.max_file_size_mb,
        &format!("model {model}"),
    )
}

/// Runs file I/O on the blocking pool, so that neither a large or slow file nor one that
/// is not what it seemed ever stalls a runtime thread.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T, ReadError> + Send + 'static,
) -> Result<T, Miss> {
    let shown = path.display();
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(ReadError::Changed(why))) => Err(Miss::Changed(why)),
        Ok(Err(ReadError::NotAFile(what))) => Err(Miss::Failed(checks::not_a_file(path, what))),
        Ok(Err(ReadError::Io(err))) => Err(Miss::Failed(checks::unreadable(path, &err))),
        Err(err) => Err(Miss::Failed(Failure::local(
            FailureCode::Internal,
            format!("reading {shown} stopped: {err}"),
        ))),
    }
}

fn changed(path: &Path, why: &str) -> Failure {
    Failure::local(
        FailureCode::FileChanged,
        format!(
            "{} kept changing while it was read and uploaded ({why}, {READS} times); make \
             sure nothing writes to it during the run, or give dashbatch a copy. A file whose \
             size is not its length (e.g. under /proc) cannot be uploaded",
            path.display()
        ),
    )
}

/// A row whose upload needed Redis after it was lost: the run is stopping, and the next run
/// does the row.
fn not_attempted(lost: Lost) -> Failure {
    Failure::local(FailureCode::NotAttempted, format!("not attempted: {lost}"))
}

fn closed() -> Failure {
    Failure::local(FailureCode::Internal, "upload slots closed")
}

#[cfg(test)]
mod tests;
