//! Compaction's view of a results file: every line's id and offset ([`LineOffsets`]), the line
//! kept per id for one window of manifest rows ([`LineIndex`]), and reading a kept line back
//! ([`LineReader`]).

use std::fs::File;
use std::path::Path;

use super::{ResumeError, reader_builder};
use crate::manifest::id_key;
use crate::output::results::COLUMNS;
use crate::spill::{Spill, SpillError};

/// The top bit of a [`LineIndex`] value: the line is `ok`. The rest is its byte offset.
const OK: u64 = 1 << 63;

/// Where the line that best represents each id sits: an `ok` line beats a failed one, and a
/// later line beats an earlier one of the same status. The top bit of the value marks `ok`.
///
/// A sorted `Vec` of `(id key, offset)` pairs rather than a `HashMap`: 16 bytes a line, with
/// no table slack and no resize doubling. Compaction builds one per window of manifest rows
/// ([`LineOffsets::index`]) and looks ids up in manifest order, one binary search each.
#[derive(Debug, Default)]
pub struct LineIndex {
    /// Sorted by key, one entry per key.
    entries: Vec<(u64, u64)>,
}

impl LineIndex {
    /// The offset (with the `ok` bit) of the line kept for `key`.
    pub fn get(&self, key: &u64) -> Option<&u64> {
        self.entries
            .binary_search_by_key(key, |&(k, _)| k)
            .ok()
            .map(|i| &self.entries[i].1)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Builds the index from `(key, offset | OK?)` pairs in file order.
    pub(super) fn from_lines(mut lines: Vec<(u64, u64)>) -> Self {
        // Offsets grow with file order, so sorting by (key, offset without the ok bit) keeps
        // each id's lines in file order. Unstable sort: in place, no n/2 merge buffer.
        lines.sort_unstable_by_key(|&(k, v)| (k, v & !OK));
        // Keep, per key, the last ok line if there is one, else the last line: walking in
        // file order, a line replaces the kept one when it is ok or the kept one is not.
        lines.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            if later.1 & OK != 0 || kept.1 & OK == 0 {
                kept.1 = later.1;
            }
            true
        });
        Self { entries: lines }
    }
}

impl std::ops::Index<&u64> for LineIndex {
    type Output = u64;

    fn index(&self, key: &u64) -> &u64 {
        self.get(key).expect("id key present in the line index")
    }
}

/// Every line of a results file as `(id key, offset | OK?)`, in file order, from which
/// compaction builds a [`LineIndex`] for one window of manifest rows at a time. Held in a
/// [`Spill`], so a results file of any length costs the same memory.
#[derive(Debug)]
pub struct LineOffsets(Spill<2>);

impl LineOffsets {
    /// The index of the lines whose id key is in `keys` (sorted).
    pub fn index(&mut self, keys: &[u64]) -> Result<LineIndex, SpillError> {
        let mut lines = Vec::with_capacity(keys.len());
        self.0.for_each(|[key, value]| {
            if keys.binary_search(&key).is_ok() {
                lines.push((key, value));
            }
        })?;
        Ok(LineIndex::from_lines(lines))
    }
}

/// Reads the lines of results file `out` for [`LineOffsets::index`]. Lines marked `duplicate_id`
/// and lines with another field count than the header are left out. Up to `in_memory` lines are held in memory, the rest spill.
pub fn index_lines(out: &Path, in_memory: usize) -> Result<LineOffsets, ResumeError> {
    let csv_err = |source| ResumeError::Csv {
        path: out.to_owned(),
        source,
    };
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(true)
        .from_path(out)
        .map_err(csv_err)?;
    // Read the header now, so that the position taken before each read below is the start
    // of a data record and never of the header.
    let fields = reader.byte_headers().map_err(csv_err)?.len();
    let mut record = csv::ByteRecord::new();
    let mut lines = Spill::new(in_memory);
    loop {
        let start = reader.position().byte();
        if !reader.read_byte_record(&mut record).map_err(csv_err)? {
            break;
        }
        // A line with another field count than the header (a hand edit) cannot be copied:
        // the writer refuses it, which would fail the whole compaction.
        if record.len() != fields || fields < COLUMNS.len() || &record[14] == b"duplicate_id" {
            continue;
        }
        let ok = &record[5] == b"ok";
        let key = id_key(std::str::from_utf8(&record[0]).unwrap_or_default());
        lines.push([key, start | if ok { OK } else { 0 }])?;
    }
    Ok(LineOffsets(lines))
}

/// Reads the line starting at `offset` and returns it, its `line` column set to `line`.
pub struct LineReader {
    reader: csv::Reader<File>,
    record: csv::ByteRecord,
}

impl LineReader {
    pub fn open(out: &Path) -> Result<Self, ResumeError> {
        let reader = reader_builder()
            .from_path(out)
            .map_err(|source| ResumeError::Csv {
                path: out.to_owned(),
                source,
            })?;
        Ok(Self {
            reader,
            record: csv::ByteRecord::new(),
        })
    }

    pub fn read_at(&mut self, offset: u64, line: u64) -> csv::Result<Option<csv::ByteRecord>> {
        const OFFSET_MASK: u64 = !(1 << 63);
        let mut pos = csv::Position::new();
        pos.set_byte(offset & OFFSET_MASK);
        self.reader.seek(pos)?;
        if !self.reader.read_byte_record(&mut self.record)? {
            return Ok(None);
        }
        let mut out = csv::ByteRecord::new();
        for (i, field) in self.record.iter().enumerate() {
            if i == 1 {
                out.push_field(itoa::Buffer::new().format(line).as_bytes());
            } else {
                out.push_field(field);
            }
        }
        Ok(Some(out))
    }
}
