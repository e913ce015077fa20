//! The second level of the upload cache, shared by every process of an account through
//! Redis (`--redis`): (account, model, content hash) → the `oss://` URL an upload gave, and a
//! short lock so that one process uploads a file while the others wait for its URL.
//!
//! Owns the two keys of a file and what may be done to them:
//! - `…:upload:<account>:<sha256>:<model>`, a hash `{url, at}` (`at`: the upload's Unix
//!   seconds, for the local record). It expires when the URL stops being worth reusing: the
//!   same margin as the local cache (`upload_cache::REUSE_MARGIN` before the object's 48 h
//!   are up), so a URL found here needs no check of its age.
//! - `…:upload-lock:<account>:<sha256>:<model>`, `SET NX PX` with a token of the holder's.
//!   The holder renews it while its upload runs (a large file may take minutes) and deletes
//!   it when done, each only if the token is still its own; a holder that dies stops
//!   renewing, and the lock expires within [`LOCK_TTL`] for another to take.
//!
//! `<account>` is the local cache's account (the key's fingerprint with the service root): an
//! `oss://` URL is only valid at the service that issued it. Deliberately not here: the local
//! first level (`upload_cache`), which is asked first and records what this level finds, and
//! credentials, which stay per process (secrets; one getPolicy per policy life is cheap).
//!
//! Every command goes through [`Shared::call`]: a Redis that stays down past
//! `--redis-timeout-s` is [`Lost`], the run stops like an interrupt, and the row waiting
//! here ends `not_attempted`.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Lost, Shared};
use crate::upload_cache::{OSS_LIFETIME, REUSE_MARGIN};

/// How long a lock lasts without renewal: how long the others wait for a holder that died.
/// Renewed every third of it, so a holder alive but slow (a stall of the runtime, a slow
/// Redis answer) keeps it.
pub const LOCK_TTL: Duration = Duration::from_secs(15);

/// The longest a process waits for another's upload of the same file before it uploads the
/// file itself. A live holder renews its lock for as long as its upload runs, so this bounds
/// only a holder stuck for good; a second upload of one content is harmless (the object key
/// is the content's), only wasted bandwidth.
const MAX_WAIT: Duration = Duration::from_secs(600);

/// Polling the URL while another process holds the lock: soon at first (a small file's
/// upload takes tens of ms), then every [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(500);

/// The URL of `KEYS[1]` if there is one (`found`, url, at), else the lock `KEYS[2]` for
/// token `ARGV[1]` for `ARGV[2]` ms (`taken`), else `held`. One script, so that no upload can
/// publish its URL and release its lock between a look-up and the lock taken after it
/// (measured: as two commands, 11 uploads of 10 files by 4 processes, now and then).
const CLAIM: &str = r"
local found = redis.call('HMGET', KEYS[1], 'url', 'at')
if found[1] then
  return {'found', found[1], found[2] or ''}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'taken'}
end
return {'held'}
";

/// Deletes the URL hash `KEYS[1]` if its URL is still `ARGV[1]` (compare-and-delete).
const DELETE_IF_URL: &str = r"
if redis.call('HGET', KEYS[1], 'url') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Deletes the lock `KEYS[1]` if its token is still `ARGV[1]`.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Extends the lock `KEYS[1]` to `ARGV[2]` ms if its token is still `ARGV[1]`.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// The shared upload cache of one account (see the module notes). Cheap to clone.
#[derive(Clone, Debug)]
pub struct SharedUploads {
    shared: Shared,
    account: String,
    lock_ttl: Duration,
}

/// What [`SharedUploads::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// Another process uploaded the file: its URL, and when (Unix seconds).
    Found { url: String, at: i64 },
    /// This process holds the lock and uploads the file; [`SharedUploads::publish`] or
    /// [`SharedUploads::release`] ends the claim.
    Upload(Lock),
}

/// The lock of one file, held by this process.
#[derive(Debug)]
pub struct Lock {
    key: String,
    token: String,
}

impl SharedUploads {
    /// `account`: the local cache's account (see the module notes).
    pub fn new(shared: Shared, account: &str) -> SharedUploads {
        SharedUploads {
            shared,
            account: account.to_owned(),
            lock_ttl: LOCK_TTL,
        }
    }

    /// The same, with locks that last `ttl` without renewal (tests of a holder that dies).
    pub fn with_lock_ttl(self, ttl: Duration) -> SharedUploads {
        SharedUploads {
            lock_ttl: ttl,
            ..self
        }
    }

    /// The Redis keys (URL, lock) of a file.
    pub fn keys(&self, model: &str, sha256: &[u8; 32]) -> (String, String) {
        let name = format!("{}:{}:{model}", self.account, hex::encode(sha256));
        (
            self.shared.key("upload", &name),
            self.shared.key("upload-lock", &name),
        )
    }

    /// The URL another process stored for this file, or the lock to upload it. Waits while
    /// another process holds the lock (at most [`MAX_WAIT`], then uploads anyway).
    pub async fn claim(&self, model: &str, sha256: &[u8; 32]) -> Result<Claim, Lost> {
        let (url_key, lock_key) = self.keys(model, sha256);
        let token = token();
        let ttl_ms = millis(self.lock_ttl);
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        let mut poll = POLL_MIN;
        static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(CLAIM));
        loop {
            let answer: Vec<String> = self
                .shared
                .call(|mut conn| {
                    let mut call = SCRIPT.key(&url_key);
                    call.key(&lock_key).arg(&token).arg(ttl_ms);
                    async move { call.invoke_async(&mut conn).await }
                })
                .await?;
            if let [found, url, at] = answer.as_slice()
                && found == "found"
            {
                let at = at
                    .parse()
                    .unwrap_or_else(|_| crate::upload_cache::unix_now());
                return Ok(Claim::Found {
                    url: url.clone(),
                    at,
                });
            }
            // Taken; or held by another process, whose URL is awaited up to the deadline.
            let taken = answer.first().is_some_and(|a| a == "taken");
            if taken || tokio::time::Instant::now() >= deadline {
                return Ok(Claim::Upload(Lock {
                    key: lock_key,
                    token,
                }));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    /// Keeps `lock` while `work` runs (renewing it every third of its life), then returns
    /// what `work` returned. The lock is neither published nor released here.
    pub async fn holding<T>(&self, lock: &Lock, work: impl Future<Output = T>) -> T {
        let renew = async {
            let script = Script::new(RENEW);
            loop {
                tokio::time::sleep(self.lock_ttl / 3).await;
                let renewed = self
                    .shared
                    .call(|mut conn| {
                        let mut call = script.key(&lock.key);
                        call.arg(&lock.token).arg(millis(self.lock_ttl));
                        async move { call.invoke_async::<i64>(&mut conn).await }
                    })
                    .await;
                // Lost: the run is stopping; the upload may still finish and be used here.
                if renewed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            out = work => out,
            () = renew => unreachable!("renewing never ends"),
        }
    }

    /// Stores the URL an upload gave (at `at`, Unix seconds) for the others, then releases
    /// the lock. The URL expires when it is no longer worth reusing.
    pub async fn publish(&self, lock: Lock, url: &str, at: i64) -> Result<(), Lost> {
        let url_key = lock.key.replacen(":upload-lock:", ":upload:", 1);
        let age = crate::upload_cache::unix_now().saturating_sub(at).max(0) as u64;
        let life = (OSS_LIFETIME - REUSE_MARGIN).saturating_sub(Duration::from_secs(age));
        if !life.is_zero() {
            self.shared
                .call(|mut conn| {
                    let key = url_key.clone();
                    let (url, ttl) = (url.to_owned(), millis(life) as i64);
                    async move {
                        redis::pipe()
                            .atomic()
                            .hset_multiple(&key, &[("url", url), ("at", at.to_string())])
                            .pexpire(&key, ttl)
                            .query_async::<()>(&mut conn)
                            .await
                    }
                })
                .await?;
        }
        self.release(lock).await
    }

    /// Lets go of `lock` without a URL (the upload failed): the next process to ask takes it.
    pub async fn release(&self, lock: Lock) -> Result<(), Lost> {
        let script = Script::new(UNLOCK);
        self.shared
            .call(|mut conn| {
                let mut call = script.key(&lock.key);
                call.arg(&lock.token);
                async move { call.invoke_async::<i64>(&mut conn).await }
            })
            .await
            .map(drop)
    }

    /// Drops the URL of this file if it is still `stale` (a URL the model rejected): a URL
    /// another process has stored since, for a fresh upload, stays.
    pub async fn forget(&self, model: &str, sha256: &[u8; 32], stale: &str) -> Result<(), Lost> {
        let (url_key, _) = self.keys(model, sha256);
        let script = Script::new(DELETE_IF_URL);
        self.shared
            .call(|mut conn| {
                let mut call = script.key(&url_key);
                call.arg(stale);
                async move { call.invoke_async::<i64>(&mut conn).await }
            })
            .await
            .map(drop)
    }
}

/// A lock's token: unique per claim across hosts (random), so that no process deletes or
/// renews a lock another has taken since its own expired.
fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
