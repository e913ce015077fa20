//! What the emulator remembers: issued upload credentials, stored objects' metadata, and
//! each account's bytes uploaded per day.
//!
//! File bytes are never kept. An object is ~100 bytes of metadata keyed by a 128-bit digest
//! of its key, so a million uploads cost about 100 MB, and entries past their lifetime are
//! swept out as the maps grow. Every map is sharded behind short `std` mutexes that are
//! never held across an await.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use super::accounts::AccountId;

/// Files are deleted 48 h after upload.
pub const OBJECT_LIFETIME_MS: i64 = 48 * 3600 * 1000;
const SHARDS: usize = 16;
/// Sweep a shard once it has doubled since its last sweep (and holds at least this many).
const MIN_SWEEP_LEN: usize = 1024;

/// A map that drops dead entries when it grows: amortised O(1) per insert.
#[derive(Debug)]
struct Swept<K, V> {
    map: HashMap<K, V>,
    sweep_at: usize,
}

impl<K: Eq + Hash, V> Default for Swept<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: MIN_SWEEP_LEN,
        }
    }
}

impl<K: Eq + Hash, V> Swept<K, V> {
    fn insert(&mut self, key: K, value: V, alive: impl Fn(&V) -> bool) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, v| alive(v));
            self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP_LEN);
        }
        self.map.insert(key, value);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn shards<T: Default>() -> Box<[Mutex<T>]> {
    (0..SHARDS).map(|_| Mutex::default()).collect()
}

/// What getPolicy handed out: whose upload directory it is, for which model, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub account: AccountId,
    /// Index into the configured model list.
    pub model: u16,
    pub expires_ms: i64,
}

/// Grants by request id (the last segment of `upload_dir`). Kept until they expire: an
/// upload under an expired policy fails on expiry before the grant is consulted.
#[derive(Debug)]
pub struct Grants {
    shards: Box<[Mutex<Swept<u128, Grant>>]>,
}

impl Default for Grants {
    fn default() -> Self {
        Self { shards: shards() }
    }
}

impl Grants {
    pub fn insert(&self, request_id: uuid::Uuid, grant: Grant, now_ms: i64) {
        let id = request_id.as_u128();
        lock(&self.shards[id as usize % SHARDS]).insert(id, grant, |g| g.expires_ms > now_ms);
    }

    pub fn get(&self, request_id: uuid::Uuid) -> Option<Grant> {
        let id = request_id.as_u128();
        lock(&self.shards[id as usize % SHARDS])
            .map
            .get(&id)
            .copied()
    }
}

/// The metadata of one stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub account: AccountId,
    pub model: u16,
    pub size: u64,
    pub sha256: [u8; 32],
    pub content_type: Option<Box<str>>,
    pub uploaded_ms: i64,
}

impl ObjectMeta {
    pub fn alive_at(&self, now_ms: i64) -> bool {
        now_ms - self.uploaded_ms < OBJECT_LIFETIME_MS
    }
}

/// Why an object was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the key exists and overwriting is forbidden")]
    Exists,
    #[error("the account's daily upload capacity is used up")]
    CapacityExceeded,
}

type ObjectDigest = [u8; 16];
type DailyBytes = HashMap<(AccountId, NaiveDate), u64>;

fn digest_key(key: &str) -> ObjectDigest {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

#[derive(Debug)]
pub struct Objects {
    shards: Box<[Mutex<Swept<ObjectDigest, ObjectMeta>>]>,
    /// Bytes stored per account per service day, sharded by account so that uploads of
    /// different accounts never queue on one lock. Locked after an object shard (never the
    /// other way round), so the existence check, the capacity charge and the insert are one
    /// atomic step and two racing uploads of one key cannot both succeed.
    daily: Box<[Mutex<DailyBytes>]>,
}

impl Default for Objects {
    fn default() -> Self {
        Self {
            shards: shards(),
            daily: shards(),
        }
    }
}

impl Objects {
    fn shard(&self, digest: &ObjectDigest) -> &Mutex<Swept<ObjectDigest, ObjectMeta>> {
        &self.shards[digest[0] as usize % SHARDS]
    }

    /// Stores `meta` under `key` unless the key holds a live object and `forbid_overwrite`,
    /// or the account would exceed `daily_limit` bytes on `day`.
    pub fn insert(
        &self,
        key: &str,
        meta: ObjectMeta,
        forbid_overwrite: bool,
        day: NaiveDate,
        daily_limit: u64,
    ) -> Result<(), StoreError> {
        let digest = digest_key(key);
        let now_ms = meta.uploaded_ms;
        let mut shard = lock(self.shard(&digest));
        let exists = shard.map.get(&digest).is_some_and(|m| m.alive_at(now_ms));
        if exists && forbid_overwrite {
            return Err(StoreError::Exists);
        }
        {
            // An account id is a digest, so its first byte spreads accounts evenly.
            let mut daily = lock(&self.daily[meta.account[0] as usize % SHARDS]);
            let used = daily.entry((meta.account, day)).or_default();
            if used.saturating_add(meta.size) > daily_limit {
                return Err(StoreError::CapacityExceeded);
            }
            *used += meta.size;
            // Yesterday's totals no longer matter; the map stays one entry per active account.
            if daily.len() > MIN_SWEEP_LEN {
                daily.retain(|(_, d), _| *d >= day);
            }
        }
        shard.insert(digest, meta, |m| m.alive_at(now_ms));
        Ok(())
    }

    /// The live object under `key`, if any.
    pub fn get(&self, key: &str, now_ms: i64) -> Option<ObjectMeta> {
        let digest = digest_key(key);
        let shard = lock(self.shard(&digest));
        shard
            .map
            .get(&digest)
            .filter(|m| m.alive_at(now_ms))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64, uploaded_ms: i64) -> ObjectMeta {
        ObjectMeta {
            account: [1; 16],
            model: 0,
            size,
            sha256: [0; 32],
            content_type: None,
            uploaded_ms,
        }
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2025, 1, 1).expect("valid date")
    }

    #[test]
    fn forbid_overwrite_refuses_a_live_key_only() {
        let objects = Objects::default();
        assert_eq!(
            objects.insert("k", meta(1, 0), true, day(), u64::MAX),
            Ok(())
        );
        assert_eq!(
            objects.insert("k", meta(1, 1), true, day(), u64::MAX),
            Err(StoreError::Exists)
        );
        assert_eq!(
            objects.insert("k", meta(1, 2), false, day(), u64::MAX),
            Ok(())
        );
        let later = OBJECT_LIFETIME_MS + 10;
        assert_eq!(
            objects.insert("k", meta(1, later), true, day(), u64::MAX),
            Ok(())
        );
    }

    #[test]
    fn objects_expire_after_48_hours() {
        let objects = Objects::default();
        objects
            .insert("k", meta(1, 0), true, day(), u64::MAX)
            .expect("stored");
        assert!(objects.get("k", OBJECT_LIFETIME_MS - 1).is_some());
        assert!(objects.get("k", OBJECT_LIFETIME_MS).is_none());
        assert!(objects.get("other", 0).is_none());
    }

    #[test]
    fn daily_capacity_is_per_day() {
        let objects = Objects::default();
        assert_eq!(objects.insert("a", meta(6, 0), true, day(), 10), Ok(()));
        assert_eq!(
            objects.insert("b", meta(5, 0), true, day(), 10),
            Err(StoreError::CapacityExceeded)
        );
        let tomorrow = day().succ_opt().expect("valid date");
        assert_eq!(objects.insert("b", meta(5, 0), true, tomorrow, 10), Ok(()));
    }
}
