//! Resuming from an earlier run's results file, and compacting it at the end.
//!
//! During a run, result lines are only ever appended, so a crash can at worst cut the last
//! line short. On start the file is read once: the ids of `ok` lines are remembered (as 64-bit
//! hashes, to keep memory small on huge manifests) and a cut-off tail is trimmed. At the end,
//! the file is rewritten in manifest order with exactly one line per manifest row, through a
//! temp file in the same folder that is fsynced and renamed over the old one, so a crash
//! during compaction leaves either the old file or the new one, never a mix.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::results::{COLUMNS, ResultsWriter};
use crate::spill::{Spill, SpillError};

pub use crate::manifest::id_key;

/// A set of id keys as a sorted `Vec`: 8 bytes an id, where a hash set takes two to three
/// times that (buckets, control bytes, and both tables while it grows).
#[derive(Debug, Default, Clone)]
pub struct IdSet(Vec<u64>);

impl IdSet {
    /// Builds the set from keys in any order.
    pub fn from_unsorted(mut keys: Vec<u64>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        keys.shrink_to_fit();
        Self(keys)
    }

    pub fn contains(&self, key: &u64) -> bool {
        self.0.binary_search(key).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What an earlier results file holds.
#[derive(Debug, Default)]
pub struct Previous {
    /// Ids with an `ok` line.
    pub ok: IdSet,
    /// Complete lines read (all statuses).
    pub lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    #[error("cannot read results file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse results file {path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error(
        "results file {path} has different columns than this manifest would write \
         (found {found:?}); pass --fresh to start it over, or -o to write elsewhere"
    )]
    Header { path: PathBuf, found: String },
    #[error(transparent)]
    Spill(#[from] SpillError),
}

fn expected_header(extra: &[String]) -> Vec<String> {
    COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

/// Opens `out` for appending this run's lines, creating it (with a header) when absent or
/// when `fresh`. Returns what the earlier file held. A cut-off last line is trimmed first.
pub fn open_for_append(
    out: &Path,
    extra: &[String],
    fresh: bool,
) -> Result<(ResultsWriter<File>, Previous), ResumeError> {
    let io = |source| ResumeError::Io {
        path: out.to_owned(),
        source,
    };
    let exists = std::fs::metadata(out).map(|m| m.len() > 0).unwrap_or(false);
    if fresh || !exists {
        let file = File::create(out).map_err(io)?;
        let writer = ResultsWriter::new(file, extra, true).map_err(|source| ResumeError::Csv {
            path: out.to_owned(),
            source,
        })?;
        return Ok((writer, Previous::default()));
    }
    let (previous, valid_len) = scan(out, extra)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .map_err(io)?;
    file.set_len(valid_len).map_err(io)?;
    file.seek(SeekFrom::End(0)).map_err(io)?;
    let writer = ResultsWriter::new(file, extra, false).map_err(|source| ResumeError::Csv {
        path: out.to_owned(),
        source,
    })?;
    Ok((writer, previous))
}

/// Reads ok ids and finds where the last complete line ends, without changing the file.
pub fn scan(out: &Path, extra: &[String]) -> Result<(Previous, u64), ResumeError> {
    let csv_err = |source| ResumeError::Csv {
        path: out.to_owned(),
        source,
    };
    let bytes_len = std::fs::metadata(out)
        .map_err(|source| ResumeError::Io {
            path: out.to_owned(),
            source,
        })?
        .len();
    let ends_with_newline = last_byte(out).map_err(|source| ResumeError::Io {
        path: out.to_owned(),
        source,
    })? == Some(b'\n');
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .has_headers(false)
        .from_path(out)
        .map_err(csv_err)?;
    let mut record = csv::ByteRecord::new();
    let want = expected_header(extra);
    if !reader.read_byte_record(&mut record).map_err(csv_err)? {
        return Ok((Previous::default(), 0));
    }
    let found: Vec<String> = record
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    if found != want {
        return Err(ResumeError::Header {
            path: out.to_owned(),
            found: found.join(","),
        });
    }
    let mut lines = 0u64;
    let mut ok_keys = Vec::new();
    let mut valid_len = bytes_len;
    let mut pending: Option<(u64, bool, u64)> = None; // (start, is_ok, key) of the last record
    loop {
        let start = reader.position().byte();
        match reader.read_byte_record(&mut record) {
            Ok(true) => {
                if let Some((_, ok, key)) = pending.take() {
                    commit(&mut lines, &mut ok_keys, ok, key);
                }
                if record.len() != want.len() {
                    // Only the last line can be cut short; anything after it is not ours.
                    valid_len = start;
                    break;
                }
                let id = std::str::from_utf8(&record[0]).unwrap_or_default();
                pending = Some((start, &record[5] == b"ok", id_key(id)));
            }
            Ok(false) => break,
            Err(_) => {
                valid_len = start;
                pending = None;
                break;
            }
        }
    }
    if let Some((start, ok, key)) = pending {
        if ends_with_newline {
            commit(&mut lines, &mut ok_keys, ok, key);
        } else {
            valid_len = start; // written partly when the process died
        }
    }
    let previous = Previous {
        ok: IdSet::from_unsorted(ok_keys),
        lines,
    };
    Ok((previous, valid_len))
}

fn commit(lines: &mut u64, ok_keys: &mut Vec<u64>, ok: bool, key: u64) {
    *lines += 1;
    if ok {
        ok_keys.push(key);
    }
}

fn last_byte(path: &Path) -> std::io::Result<Option<u8>> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut b = [0u8];
    f.read_exact(&mut b)?;
    Ok(Some(b[0]))
}

/// The top bit of a [`LineIndex`] value: the line is `ok`. The rest is its byte offset.
const OK: u64 = 1 << 63;

/// Where the line that best represents each id sits: an `ok` line beats a failed one, and a
/// later line beats an earlier one of the same status. The top bit of the value marks `ok`.
///
/// A sorted `Vec` of `(id key, offset)` pairs rather than a `HashMap`: 16 bytes a line, with
/// no table slack and no resize doubling. Compaction builds one per window of manifest rows
/// ([`Lines::index`]) and looks ids up in manifest order, one binary search each.
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
    fn from_lines(mut lines: Vec<(u64, u64)>) -> Self {
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
pub struct Lines(Spill<2>);

impl Lines {
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

/// Reads the lines of results file `out` for [`Lines::index`]. Lines marked `duplicate_id`
/// and short lines are left out. Up to `in_memory` lines are held in memory, the rest spill.
pub fn index_lines(out: &Path, in_memory: usize) -> Result<Lines, ResumeError> {
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
    reader.byte_headers().map_err(csv_err)?;
    let mut record = csv::ByteRecord::new();
    let mut lines = Spill::new(in_memory);
    loop {
        let start = reader.position().byte();
        if !reader.read_byte_record(&mut record).map_err(csv_err)? {
            break;
        }
        if record.len() < COLUMNS.len() || &record[14] == b"duplicate_id" {
            continue;
        }
        let ok = &record[5] == b"ok";
        let key = id_key(std::str::from_utf8(&record[0]).unwrap_or_default());
        lines.push([key, start | if ok { OK } else { 0 }])?;
    }
    Ok(Lines(lines))
}

/// Reads the line starting at `offset` and returns it, its `line` column set to `line`.
pub struct LineReader {
    reader: csv::Reader<File>,
    record: csv::ByteRecord,
}

impl LineReader {
    pub fn open(out: &Path) -> Result<Self, ResumeError> {
        let reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(false)
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

/// Replaces `out` with `write`'s output atomically: temp file in the same folder, fsync,
/// rename, fsync the folder.
pub fn atomic_rewrite(
    out: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".dashbatch-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(out).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
