//! The upload cache kept across runs: which content was uploaded for which model, by which
//! account, and when. A nightly run over a growing manifest then uploads only new files.
//!
//! Stored as JSON lines in `<state dir>/uploads.jsonl`, appended as uploads finish by a
//! thread of the cache's own, so that no worker waits on the disk (see [`UploadCache::record`]).
//! The account is identified by a fingerprint of the API key (a truncated SHA-256), never by the
//! key. A line that does not parse (a crash mid-write, a hand edit) is skipped with a warning:
//! losing a cache entry costs one upload, never a run.
//!
//! Runs with different results files can share one state folder. Each holds a shared
//! `flock(2)` on `<state dir>/uploads.lock` while it has the cache open; the end-of-run
//! compaction, which replaces the file, needs the lock exclusively and is skipped when another
//! run has the cache open (that run compacts when it ends). Without this, a run appending to
//! the replaced file would write into a deleted inode and its records would be lost.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

/// Temporary files live 48 h after upload.
pub const OSS_LIFETIME: Duration = Duration::from_secs(48 * 3600);
/// A cached URL is reused only while it has this much life left, so that a model call with
/// all its retries (minutes at worst) still finds the file there.
pub const REUSE_MARGIN: Duration = Duration::from_secs(2 * 3600);

const FILE_NAME: &str = "uploads.jsonl";
const LOCK_NAME: &str = "uploads.lock";
/// Records waiting for the appender thread. An append takes microseconds and uploads tens of
/// milliseconds, so the queue fills only while the disk stalls; a record that finds it full
/// is dropped (it costs one upload in a later run) rather than make a worker wait.
const QUEUE: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    account: String,
    model: String,
    sha256: String,
    url: String,
    /// Unix seconds, by this machine's clock.
    uploaded_at: i64,
}

type Key = (String, [u8; 32]);

pub struct UploadCache {
    path: PathBuf,
    account: String,
    /// Held for one lookup or insert, never across I/O.
    entries: Mutex<HashMap<Key, (String, i64)>>,
    /// Work for the appender thread, which alone owns the file: `None` when the thread could
    /// not start. A bounded queue (see [`QUEUE`]); taken in `drop` to end the thread.
    jobs: Option<SyncSender<Job>>,
    appender: Option<JoinHandle<()>>,
    /// A record was dropped on a full queue; warned once.
    overflowed: AtomicBool,
}

/// What the appender thread does, in the order asked.
enum Job {
    Append(Vec<u8>),
    /// Compact at `now`, after every append queued before, and say how it went.
    Compact(i64, mpsc::Sender<std::io::Result<()>>),
}

/// The file side of the cache, owned by the appender thread.
struct Appender {
    path: PathBuf,
    /// `None` when the state folder cannot be written (then the cache only serves what it
    /// loaded, and says so once).
    file: Option<File>,
    /// `uploads.lock`, locked shared while `file` is open (see the module notes); `None`
    /// when it could not be locked, and then this run never compacts.
    lock: Option<File>,
}

impl std::fmt::Debug for UploadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadCache")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl UploadCache {
    /// Loads the records of `account` (a key fingerprint) from `dir`, creating the folder.
    /// Problems are warnings, logged here, never errors.
    ///
    /// Waits while another run compacts the cache (a read and a rewrite of a small file).
    pub fn open(dir: &Path, account: &str, now: i64) -> Self {
        let path = dir.join(FILE_NAME);
        let lock = std::fs::create_dir_all(dir).and_then(|()| lock_shared(&dir.join(LOCK_NAME)));
        if lock.is_ok() {
            // No compaction can be running while we hold the shared lock, so a temp file of
            // one is left from a run that was killed.
            if let Err(err) = crate::output::atomic::remove_stale_temps(&path) {
                tracing::debug!("upload cache {}: {err}", path.display());
            }
        }
        let entries = load(&path, account, now);
        let file = match open_append(&path) {
            Ok(f) => Some(f),
            Err(err) => {
                tracing::warn!(
                    "upload cache {}: cannot write ({err}); uploads of this run will not be \
                     remembered",
                    path.display()
                );
                None
            }
        };
        let lock = match lock {
            Ok(lock) => Some(lock),
            Err(err) => {
                if file.is_some() {
                    tracing::warn!(
                        "upload cache {}: cannot lock {LOCK_NAME} ({err}); this run will not \
                         tidy the cache",
                        path.display()
                    );
                }
                None
            }
        };
        let appender = Appender {
            path: path.clone(),
            file,
            lock,
        };
        let (jobs, queue) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("upload-cache".into())
            .spawn(move || appender.serve(queue));
        let (jobs, appender) = match thread {
            Ok(thread) => (Some(jobs), Some(thread)),
            Err(err) => {
                tracing::warn!(
                    "upload cache {}: cannot start its writer ({err}); uploads of this run \
                     will not be remembered",
                    path.display()
                );
                (None, None)
            }
        };
        Self {
            path,
            account: account.to_owned(),
            entries: Mutex::new(entries),
            jobs,
            appender,
            overflowed: AtomicBool::new(false),
        }
    }

    /// A URL for this content and model that still has enough life left.
    pub fn lookup(&self, model: &str, sha256: &[u8; 32], now: i64) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(model.to_owned(), *sha256))
            .filter(|(_, at)| fresh(*at, now))
            .map(|(url, _)| url.clone())
    }

    /// Remembers an upload. Never waits on the disk: the line goes to the appender thread,
    /// which writes it within microseconds, so a crash after that still saves the upload; a
    /// crash before it, or a disk too slow for the queue, costs one upload in a later run.
    pub fn record(&self, model: &str, sha256: &[u8; 32], url: &str, now: i64) {
        let rec = Record {
            account: self.account.clone(),
            model: model.to_owned(),
            sha256: hex::encode(sha256),
            url: url.to_owned(),
            uploaded_at: now,
        };
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((rec.model.clone(), *sha256), (rec.url.clone(), now));
        let Ok(mut line) = serde_json::to_vec(&rec) else {
            return;
        };
        line.push(b'\n');
        let Some(jobs) = &self.jobs else {
            return;
        };
        if let Err(TrySendError::Full(_)) = jobs.try_send(Job::Append(line))
            && !self.overflowed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "upload cache {}: the disk is not keeping up; some uploads of this run will \
                 not be remembered",
                self.path.display()
            );
        }
    }

    /// Drops a URL the service no longer accepts, if it is still the one remembered.
    pub fn forget(&self, model: &str, sha256: &[u8; 32], url: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (model.to_owned(), *sha256);
        if entries.get(&key).is_some_and(|(u, _)| u == url) {
            entries.remove(&key);
        }
    }

    /// Rewrites the file without expired or unreadable lines (of any account), atomically,
    /// after the records already queued. Skipped when another run has the cache open: that
    /// run compacts when it ends. Blocks: call it from a blocking thread.
    pub fn compact(&self, now: i64) -> std::io::Result<()> {
        let Some(jobs) = &self.jobs else {
            return Ok(());
        };
        let (done, result) = mpsc::channel();
        if jobs.send(Job::Compact(now, done)).is_err() {
            return Ok(());
        }
        // No answer: the thread is gone, and with it the file; nothing to tidy.
        result.recv().unwrap_or(Ok(()))
    }
}

impl Drop for UploadCache {
    /// Ends the appender thread once it has written every queued record.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.appender.take() {
            let _ = thread.join();
        }
    }
}

impl Appender {
    /// The appender thread: runs jobs until the cache is dropped.
    fn serve(mut self, jobs: Receiver<Job>) {
        for job in jobs {
            match job {
                Job::Append(line) => self.append(&line),
                Job::Compact(now, done) => {
                    let _ = done.send(self.compact(now));
                }
            }
        }
    }

    fn append(&mut self, line: &[u8]) {
        if let Some(f) = self.file.as_mut()
            && let Err(err) = f.write_all(line)
        {
            tracing::warn!("upload cache {}: cannot append: {err}", self.path.display());
            self.file = None;
        }
    }

    fn compact(&mut self, now: i64) -> std::io::Result<()> {
        let Appender { path, file, lock } = self;
        let (Some(f), Some(lock_file)) = (file.as_mut(), lock.as_ref()) else {
            return Ok(());
        };
        f.sync_data()?;
        // flock cannot turn a shared lock into an exclusive one atomically: let go of ours,
        // then take the exclusive one only if no other run holds the shared one.
        FileExt::unlock(lock_file)?;
        let exclusive = FileExt::try_lock_exclusive(lock_file);
        let result = match exclusive {
            Ok(true) => rewrite(path, now),
            Ok(false) => {
                tracing::debug!(
                    "upload cache {}: another run has it open and will tidy it",
                    path.display()
                );
                Ok(())
            }
            Err(err) => Err(err),
        };
        // Shared again (a downgrade, or a wait while another run that took the exclusive
        // lock meanwhile compacts), and then a handle on the file now at the path: while we
        // held no lock, it may have been replaced.
        if let Err(err) = FileExt::lock_shared(lock_file) {
            *lock = None;
            return Err(err);
        }
        *file = open_append(path).ok();
        result
    }
}

/// The compaction itself, under the exclusive lock.
fn rewrite(path: &Path, now: i64) -> std::io::Result<()> {
    let Ok(source) = File::open(path) else {
        return Ok(());
    };
    let mut kept = Vec::new();
    for line in BufReader::new(source).split(b'\n').map_while(Result::ok) {
        if let Some((rec, _)) = parse(&line)
            && fresh(rec.uploaded_at, now)
        {
            kept.extend_from_slice(&line);
            kept.push(b'\n');
        }
    }
    crate::output::atomic::atomic_rewrite(path, |f| f.write_all(&kept))
}

/// The records of `account` in `path` that are still fresh at `now`.
fn load(path: &Path, account: &str, now: i64) -> HashMap<Key, (String, i64)> {
    let mut entries = HashMap::new();
    let mut corrupt = 0u64;
    if let Ok(file) = File::open(path) {
        for line in BufReader::new(file).split(b'\n') {
            let Ok(line) = line else {
                corrupt += 1;
                break;
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse(&line) {
                Some((rec, sha)) if rec.account == account => {
                    if fresh(rec.uploaded_at, now) {
                        entries.insert((rec.model, sha), (rec.url, rec.uploaded_at));
                    }
                }
                Some(_) => {}
                None => corrupt += 1,
            }
        }
    }
    if corrupt > 0 {
        tracing::warn!(
            "upload cache {}: skipped {corrupt} unreadable line(s); those files will be \
             uploaded again",
            path.display()
        );
    }
    entries
}

/// `uploads.lock`, locked shared. Blocks while another run holds it exclusively (compacts).
fn lock_shared(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // Called through the trait: std's inherent `File::lock_shared` is newer than our MSRV.
    FileExt::lock_shared(&file)?;
    Ok(file)
}

/// The append handle. A crash mid-append leaves a last line without its newline; one is
/// added, so that the next record starts a line of its own instead of being glued to the
/// partial one (and lost with it). Adding a newline rather than trimming the partial line
/// cannot cut into a line another run is appending at the same moment.
fn open_append(path: &Path) -> std::io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
        }
    }
    Ok(file)
}

fn parse(line: &[u8]) -> Option<(Record, [u8; 32])> {
    let rec: Record = serde_json::from_slice(line).ok()?;
    let mut sha = [0u8; 32];
    hex::decode_to_slice(&rec.sha256, &mut sha).ok()?;
    rec.url.starts_with("oss://").then_some((rec, sha))
}

fn fresh(uploaded_at: i64, now: i64) -> bool {
    let usable = (OSS_LIFETIME - REUSE_MARGIN).as_secs() as i64;
    now.saturating_sub(uploaded_at) < usable && uploaded_at <= now + 300
}

/// Unix seconds now, by this machine's clock.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests;
