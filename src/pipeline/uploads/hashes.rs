//! The per-run cache of file hashes, so that a file many rows share is read and hashed once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Entries of the per-run hash cache before it is cleared. A manifest that reuses files
/// usually reuses a few of them; one with a distinct file per row never hits the cache, so
/// clearing (rather than evicting the oldest) costs at most one re-hash per file after a clear
/// and keeps the cache under about 3 MB (an entry is a path plus 64 bytes).
pub(super) const HASH_CACHE_MAX: usize = 16_384;

/// Per-run cache of file hashes, keyed by path and checked against (size, mtime): the stamp
/// `make` and `rsync` trust, so a file edited during the run is hashed again. Holds hashes
/// only, never bytes.
#[derive(Default)]
pub(super) struct HashCache {
    pub(super) map: Mutex<HashMap<PathBuf, Stamp>>,
}

#[derive(Clone, Copy)]
pub(super) struct Stamp {
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    pub(super) sha256: [u8; 32],
}

impl HashCache {
    pub(super) fn get(&self, path: &Path, size: u64, mtime: SystemTime) -> Option<[u8; 32]> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(path)
            .filter(|s| s.size == size && s.mtime == mtime)
            .map(|s| s.sha256)
    }

    pub(super) fn insert(&self, path: &Path, stamp: Stamp) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= HASH_CACHE_MAX && !map.contains_key(path) {
            map.clear();
        }
        map.insert(path.to_owned(), stamp);
    }

    /// Drops the entry of a file whose bytes turned out not to be the ones its stamp vouched
    /// for (rewritten within the mtime's granularity, or with its mtime put back).
    pub(super) fn forget(&self, path: &Path) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(path);
    }
}
