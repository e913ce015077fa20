//! The upload cache kept across runs: which content was uploaded for which model, by which
//! account, and when. A nightly run over a growing manifest then uploads only new files.
//!
//! Stored as JSON lines in `<state dir>/uploads.jsonl`, appended as uploads finish. The
//! account is identified by a fingerprint of the API key (a truncated SHA-256), never by the
//! key. A line that does not parse (a crash mid-write, a hand edit) is skipped with a warning:
//! losing a cache entry costs one upload, never a run.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Temporary files live 48 h after upload.
pub const OSS_LIFETIME: Duration = Duration::from_secs(48 * 3600);
/// A cached URL is reused only while it has this much life left, so that a model call with
/// all its retries (minutes at worst) still finds the file there.
pub const REUSE_MARGIN: Duration = Duration::from_secs(2 * 3600);

const FILE_NAME: &str = "uploads.jsonl";

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
    entries: Mutex<HashMap<Key, (String, i64)>>,
    /// Append handle; `None` when the state folder cannot be written (then the cache only
    /// serves what it loaded, and says so once).
    file: Mutex<Option<File>>,
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
    pub fn open(dir: &Path, account: &str, now: i64) -> Self {
        let path = dir.join(FILE_NAME);
        let mut entries = HashMap::new();
        let mut corrupt = 0u64;
        if let Ok(file) = File::open(&path) {
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
        let file = std::fs::create_dir_all(dir)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path));
        let file = match file {
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
        Self {
            path,
            account: account.to_owned(),
            entries: Mutex::new(entries),
            file: Mutex::new(file),
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

    /// Remembers an upload. Written at once, so a crash after it still saves the upload.
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
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = file.as_mut()
            && let Err(err) = f.write_all(&line)
        {
            tracing::warn!("upload cache {}: cannot append: {err}", self.path.display());
            *file = None;
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

    /// Rewrites the file without expired or unreadable lines (of any account), atomically.
    pub fn compact(&self, now: i64) -> std::io::Result<()> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = file.as_mut() {
            f.sync_data()?;
        } else {
            return Ok(());
        }
        let Ok(source) = File::open(&self.path) else {
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
        super::resume::atomic_rewrite(&self.path, |f| f.write_all(&kept))?;
        *file = OpenOptions::new().append(true).open(&self.path).ok();
        Ok(())
    }
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
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn records_survive_a_reopen_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let sha = [7u8; 32];
        let cache = UploadCache::open(dir.path(), "acct1", NOW);
        cache.record("m", &sha, "oss://d/x.png", NOW);
        drop(cache);
        let cache = UploadCache::open(dir.path(), "acct1", NOW + 60);
        assert_eq!(
            cache.lookup("m", &sha, NOW + 60).as_deref(),
            Some("oss://d/x.png")
        );
        assert_eq!(cache.lookup("other-model", &sha, NOW + 60), None);
        let late = NOW + (OSS_LIFETIME - REUSE_MARGIN).as_secs() as i64;
        assert_eq!(
            cache.lookup("m", &sha, late),
            None,
            "too close to the 48 h end"
        );
        let other = UploadCache::open(dir.path(), "acct2", NOW);
        assert_eq!(other.lookup("m", &sha, NOW), None, "bound to the account");
    }

    #[test]
    fn corrupt_and_truncated_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let sha = [1u8; 32];
        let cache = UploadCache::open(dir.path(), "a", NOW);
        cache.record("m", &sha, "oss://d/1.png", NOW);
        drop(cache);
        let path = dir.path().join(FILE_NAME);
        let mut text = std::fs::read(&path).unwrap();
        text.extend_from_slice(b"garbage\n\xff\xfe\n{\"account\":\"a\",\"mod");
        std::fs::write(&path, text).unwrap();
        let cache = UploadCache::open(dir.path(), "a", NOW);
        assert!(cache.lookup("m", &sha, NOW).is_some());
        cache.compact(NOW).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn forget_only_drops_the_url_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let sha = [2u8; 32];
        let cache = UploadCache::open(dir.path(), "a", NOW);
        cache.record("m", &sha, "oss://new", NOW);
        cache.forget("m", &sha, "oss://old");
        assert!(cache.lookup("m", &sha, NOW).is_some());
        cache.forget("m", &sha, "oss://new");
        assert!(cache.lookup("m", &sha, NOW).is_none());
    }
}
