//! Getting a row's file into temporary storage: content hashing, per-run de-duplication and
//! the upload itself with its policy-expiry handling.
//!
//! The same (model, content) is uploaded once per run. Rows that need it while the upload is
//! in flight wait for it (single-flight through a `OnceCell` per key) and then share its URL.
//! Keys are content-addressed, so two different files with one name never collide and a 409
//! on our own key means the object is already there.
//!
//! Per-row CPU is the budget here (a run of small files is CPU-bound on the client), and a
//! hand-off to tokio's blocking pool costs more in thread wake-ups than reading a small file.
//! So a file's hash is computed once per run (see [`HashCache`]), a small file is read and
//! hashed in one step and uploaded from those bytes, and only large files take the streamed
//! path, where the hand-offs are amortised over megabytes.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use super::failure::Failure;
use crate::dashscope::{self, ApiError, Client, Credentials, ErrorKind, RetryPolicy};
use crate::output::UploadOutcome;
use crate::output::state::{UploadCache, unix_now};

/// How many fresh policies one upload may go through after "Policy expired" answers.
/// One expiry is normal (the policy ran out in flight); three in a row means the clocks or the
/// service disagree with us, and retrying forever would only burn credential quota.
const POLICY_ROUNDS: u32 = 3;

/// Files up to this size are read whole, hashed from memory and uploaded from those bytes;
/// larger ones are hashed and uploaded as streams and never held whole. 1 MiB keeps the
/// bytes held at once small (see [`Uploads::reads`]) while covering typical images.
pub const SMALL_FILE: u64 = 1 << 20;

/// Files up to this size are read and hashed on the runtime thread instead of the blocking
/// pool. Reading 16 KiB from the page cache and hashing it (SHA-NI or not) takes a few tens of
/// microseconds at most, about what the hand-off to a pool thread and back costs in wake-ups;
/// a slow disk could stall the thread longer, but a slow disk stalls the pool's rows too.
const INLINE_FILE: u64 = 16 << 10;

/// Entries of the per-run hash cache before it is cleared. A manifest that reuses files
/// usually reuses a few of them; one with a distinct file per row never hits the cache, so
/// clearing (rather than evicting the oldest) costs at most one re-hash per file after a clear
/// and keeps the cache under about 3 MB (an entry is a path plus 64 bytes).
const HASH_CACHE_MAX: usize = 16_384;

/// One model's single-flight cells, by content hash.
type Cells = HashMap<[u8; 32], Arc<OnceCell<String>>>;

pub struct Uploads {
    client: Client,
    credentials: Credentials,
    /// Uploads of earlier runs, still young enough to use.
    cache: Arc<UploadCache>,
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

/// Per-run cache of file hashes, keyed by path and checked against (size, mtime): the stamp
/// `make` and `rsync` trust, so a file edited during the run is hashed again. Holds hashes
/// only, never bytes.
#[derive(Default)]
struct HashCache {
    map: Mutex<HashMap<PathBuf, Stamp>>,
}

#[derive(Clone, Copy)]
struct Stamp {
    size: u64,
    mtime: SystemTime,
    sha256: [u8; 32],
}

impl HashCache {
    fn get(&self, path: &Path, size: u64, mtime: SystemTime) -> Option<[u8; 32]> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path)
            .filter(|s| s.size == size && s.mtime == mtime)
            .map(|s| s.sha256)
    }

    fn insert(&self, path: &Path, stamp: Stamp) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= HASH_CACHE_MAX && !map.contains_key(path) {
            map.clear();
        }
        map.insert(path.to_owned(), stamp);
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
            reads: Semaphore::new(upload_slots.max(1)),
            cells: Mutex::new(HashMap::new()),
            hashes: HashCache::default(),
        }
    }

    /// Hashes the file at `path`, whose `metadata` the row has just checked. A file already
    /// hashed in this run with the same size and mtime is not read again. A small file is read
    /// whole in one step, and its bytes are kept for [`Uploads::ensure`] to upload.
    pub async fn content(&self, path: &Path, metadata: &Metadata) -> Result<Content<'_>, Failure> {
        let size = metadata.len();
        // No mtime (a filesystem that does not keep one): hash every time rather than trust
        // the size alone.
        let mtime = metadata.modified().ok();
        if let Some(sha256) = mtime.and_then(|m| self.hashes.get(path, size, m)) {
            return Ok(Content {
                sha256,
                size,
                held: None,
            });
        }
        let permit = if size <= SMALL_FILE {
            Some(self.reads.acquire().await.map_err(|_| closed())?)
        } else {
            None
        };
        let (sha256, bytes) = if size <= INLINE_FILE {
            read_and_hash(path, size).map_err(|e| unreadable(path, e))?
        } else {
            let owned = path.to_owned();
            blocking(path, move || read_and_hash(&owned, size)).await?
        };
        // The stamp is the stat from before the read: if the file changed in between, the
        // next row's stat differs and it hashes again. If only the length differs, the
        // stamp would be wrong for these bytes, so it is not recorded.
        let read_size = bytes.as_ref().map_or(size, |b| b.len() as u64);
        if let Some(mtime) = mtime
            && read_size == size
        {
            self.hashes.insert(
                path,
                Stamp {
                    size,
                    mtime,
                    sha256,
                },
            );
        }
        let held = bytes
            .zip(permit)
            .map(|(bytes, _permit)| Held { bytes, _permit });
        Ok(Content {
            sha256,
            size: read_size,
            held,
        })
    }

    /// Returns a URL for `content` (the file at `path`) bound to `model`, uploading it unless
    /// this run already did. With `replace`, a URL the model rejected is dropped first (if it
    /// is still the current one) so that exactly one fresh upload replaces it. The bytes that
    /// `content` holds are released when this returns.
    pub async fn ensure(
        &self,
        model: &str,
        path: &Path,
        content: &mut Content<'_>,
        replace: Option<&str>,
        log: &mut RowLog,
    ) -> Result<Uploaded, Failure> {
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
                let url = self.upload(model, path, size, &sha256, held, log).await?;
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
        held: Option<Held<'_>>,
        log: &mut RowLog,
    ) -> Result<String, Failure> {
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
        // from the cache) read now, inside the slot, which bounds them. Large files stream.
        let mut bytes = held.map(|h| h.bytes);
        let mut read_once = false;
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
                        "{} is {} bytes; model {model} accepts files up to {} MB ({limit} \
                         bytes); shrink or split the file, or give the model a public \
                         http(s):// URL of it instead",
                        path.display(),
                        size,
                        policy.max_file_size_mb
                    ),
                ));
            }
            if bytes.is_none() && size <= SMALL_FILE && !read_once {
                bytes = read_small(path, size).await?;
                read_once = true;
            }
            let key = policy.object_key(&sha_hex, &name);
            let (result, attempts) = dashscope::retry(
                &self.retry,
                || async {
                    match &bytes {
                        Some(b) => {
                            let b = b.clone();
                            self.client
                                .upload_bytes(&policy, &key, b, content_type)
                                .await
                        }
                        None => self.client.upload(&policy, &key, path, content_type).await,
                    }
                },
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

/// Reads a small file whose hash is already known, for its upload. Not re-hashed: as for a
/// streamed upload, the key names the content the row hashed. `None` when the file has grown
/// past [`SMALL_FILE`] since the stat: then it is streamed like any large file.
async fn read_small(path: &Path, size: u64) -> Result<Option<Bytes>, Failure> {
    let read = move |p: &Path| -> std::io::Result<Option<Bytes>> {
        let mut buf = Vec::with_capacity(size as usize + 1);
        std::fs::File::open(p)?
            .take(SMALL_FILE + 1)
            .read_to_end(&mut buf)?;
        Ok((buf.len() as u64 <= SMALL_FILE).then(|| buf.into()))
    };
    if size <= INLINE_FILE {
        read(path).map_err(|e| unreadable(path, e))
    } else {
        let owned = path.to_owned();
        blocking(path, move || read(&owned)).await
    }
}

/// SHA-256 of the file at `path`, stat'ed at `size` bytes. Up to [`SMALL_FILE`] it is read
/// whole, and the bytes come back with the hash; a larger file (or one that grew past the
/// limit since the stat) is hashed as a stream and never held whole.
fn read_and_hash(path: &Path, size: u64) -> std::io::Result<([u8; 32], Option<Bytes>)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    if size <= SMALL_FILE {
        let mut buf = Vec::with_capacity(size as usize + 1);
        (&mut file).take(SMALL_FILE + 1).read_to_end(&mut buf)?;
        hasher.update(&buf);
        if buf.len() as u64 <= SMALL_FILE {
            return Ok((hasher.finalize().into(), Some(buf.into())));
        }
    }
    std::io::copy(&mut file, &mut hasher)?;
    Ok((hasher.finalize().into(), None))
}

/// Runs file I/O on the blocking pool so a large or slow file never stalls the runtime.
async fn blocking<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(unreadable(path, err)),
        Err(err) => Err(Failure::local(
            "internal",
            format!("reading {} stopped: {err}", path.display()),
        )),
    }
}

fn unreadable(path: &Path, err: std::io::Error) -> Failure {
    Failure::local(
        "unreadable_file",
        format!("cannot read {}: {err}", path.display()),
    )
}

fn closed() -> Failure {
    Failure::local("internal", "upload slots closed")
}

#[cfg(test)]
mod tests;
