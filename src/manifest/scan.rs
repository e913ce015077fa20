//! The first pass over a manifest: how many rows (of a shard), and which ids occur twice,
//! in memory that stays flat at any manifest size.

use std::path::Path;

use super::{Manifest, ManifestError, Shard};
use crate::spill::{self, Spill};

/// A stable-within-this-process hash of a row id, the form in which run-wide id sets keep
/// ids. A collision between two ids of one manifest (odds about 1 in 10^7 at ten million
/// rows) would at worst skip or mis-file one row.
pub fn id_key(id: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

/// What a first pass over the manifest finds: how many rows, and which ids occur twice.
#[derive(Debug, Default)]
pub struct IdScan {
    pub rows: u64,
    /// Rows of the shard asked for ([`scan_ids_of`]); all rows without one.
    pub owned: u64,
    /// Keys of ids used by more than one row (usually none).
    pub duplicates: std::collections::HashSet<u64>,
}

/// Reads every row once to count them and find repeated ids. The keys go to a
/// [`Spill`](crate::spill::Spill), then are sorted one slice of the key space at a time
/// ([`spill::PER_PASS`] keys or so each), so this pass
/// costs the same memory at ten million rows as at a hundred thousand. Nothing per row
/// outlives the pass.
pub fn scan_ids(path: &Path) -> Result<IdScan, ManifestError> {
    scan_ids_of(path, None)
}

/// [`scan_ids`], also counting the rows of `shard` (`--shard K/N`) in [`IdScan::owned`], for
/// the progress bar's total.
pub fn scan_ids_of(path: &Path, shard: Option<Shard>) -> Result<IdScan, ManifestError> {
    scan_ids_in(path, shard, spill::IN_MEMORY, spill::PER_PASS)
}

/// [`scan_ids_of`] with `in_memory` keys held before they spill and `per_pass` keys sorted
/// at a time.
pub(super) fn scan_ids_in(
    path: &Path,
    shard: Option<Shard>,
    in_memory: usize,
    per_pass: usize,
) -> Result<IdScan, ManifestError> {
    let mut keys = Spill::<1>::new(in_memory);
    let mut owned = 0;
    for entry in Manifest::open(path)? {
        if shard.is_none_or(|shard| shard.owns(entry.id())) {
            owned += 1;
        }
        keys.push([id_key(entry.id())])?;
    }
    // Keys are uniform 64-bit hashes, so `key % slices` splits them evenly.
    let slices = keys.slices(per_pass);
    let mut duplicates = std::collections::HashSet::new();
    let mut slice = Vec::new();
    for s in 0..slices {
        slice.clear();
        keys.for_each(|[key]| {
            if key % slices == s {
                slice.push(key);
            }
        })?;
        slice.sort_unstable();
        duplicates.extend(
            slice
                .windows(2)
                .filter(|pair| pair[0] == pair[1])
                .map(|pair| pair[0]),
        );
    }
    Ok(IdScan {
        rows: keys.len(),
        owned,
        duplicates,
    })
}
