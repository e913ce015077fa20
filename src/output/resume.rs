//! Resuming from an earlier run's results file, and compacting it at the end.
//!
//! During a run, result lines are only ever appended, so a crash can at worst cut the last
//! line short, possibly just after a newline inside a quoted field. On start the file is read
//! once: the ids of `ok` lines are remembered (as 64-bit hashes, to keep memory small on huge
//! manifests), a cut-off tail is trimmed, and a malformed line elsewhere (a hand edit) is
//! skipped with a warning rather than trusted or cut. At the end, the file is rewritten in
//! manifest order with exactly one line per manifest row, through a temp file in the same
//! folder that is fsynced and renamed over the old one, so a crash during compaction leaves
//! either the old file or the new one (and a temp file the next run removes), never a mix.

use std::ffi::{OsStr, OsString};
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

/// Opens `out` for appending this run's lines, creating it (with a header) when absent, when
/// it holds no complete header line, or when `fresh`. Returns what the earlier file held. A
/// last line cut short by a crash is trimmed first, and temp files an interrupted compaction
/// of `out` left behind are removed.
///
/// Call it while holding `out`'s run lock: the temp files it removes would otherwise belong
/// to a compaction that is still running.
pub fn open_for_append(
    out: &Path,
    extra: &[String],
    fresh: bool,
) -> Result<(ResultsWriter<File>, Previous), ResumeError> {
    let io = |source| ResumeError::Io {
        path: out.to_owned(),
        source,
    };
    let csv_err = |source| ResumeError::Csv {
        path: out.to_owned(),
        source,
    };
    if let Err(err) = remove_stale_temps(out) {
        tracing::warn!(
            "cannot remove temp files an interrupted run left beside {}: {err}",
            out.display()
        );
    }
    let exists = std::fs::metadata(out).map(|m| m.len() > 0).unwrap_or(false);
    let earlier = if fresh || !exists {
        None
    } else {
        Some(scan(out, extra)?).filter(|&(_, valid_len)| valid_len > 0)
    };
    let Some((previous, valid_len)) = earlier else {
        let file = File::create(out).map_err(io)?;
        let writer = ResultsWriter::new(file, extra, true).map_err(csv_err)?;
        return Ok((writer, Previous::default()));
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(out)
        .map_err(io)?;
    file.set_len(valid_len).map_err(io)?;
    file.seek(SeekFrom::End(0)).map_err(io)?;
    let writer = ResultsWriter::new(file, extra, false).map_err(csv_err)?;
    Ok((writer, previous))
}

/// One data line of a results file, as [`scan`] holds it until it knows whether the line is
/// complete.
struct ScannedLine {
    /// Byte offset of its start.
    start: u64,
    /// 1-based line number of its start, for messages.
    line: u64,
    fields: usize,
    ok: bool,
    key: u64,
}

/// Reads ok ids and finds where the last complete line ends, without changing the file.
/// The returned length is 0 when the file holds no complete header line (a crash while it
/// was being created): the caller then starts the file over.
///
/// Only the last line can have been cut short by a crash, since lines are only ever
/// appended; it is left out of the length. A line in the middle with the wrong number of
/// fields (a hand edit) is skipped with a warning, and the lines after it still count.
pub fn scan(out: &Path, extra: &[String]) -> Result<(Previous, u64), ResumeError> {
    scan_with(out, extra, &mut |warning| tracing::warn!("{warning}"))
}

/// [`scan`], with its warnings going to `warn`.
fn scan_with(
    out: &Path,
    extra: &[String],
    warn: &mut dyn FnMut(String),
) -> Result<(Previous, u64), ResumeError> {
    let io = |source| ResumeError::Io {
        path: out.to_owned(),
        source,
    };
    let csv_err = |source| ResumeError::Csv {
        path: out.to_owned(),
        source,
    };
    let bytes_len = std::fs::metadata(out).map_err(io)?.len();
    let header = header_line(extra);
    if bytes_len < header.len() as u64 {
        let bytes = std::fs::read(out).map_err(io)?;
        if header.starts_with(&bytes) {
            return Ok((Previous::default(), 0));
        }
    }
    let mut reader = reader_builder().from_path(out).map_err(csv_err)?;
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
    let mut kept = Kept::default();
    // A line is known to be complete once another one follows it; the last one is checked
    // against the end of the file below.
    let mut last: Option<ScannedLine> = None;
    loop {
        let position = reader.position().clone();
        if !reader.read_byte_record(&mut record).map_err(csv_err)? {
            break;
        }
        if let Some(done) = last.take() {
            kept.settle(out, done, want.len(), warn);
        }
        let fields = record.len();
        let whole = fields == want.len();
        last = Some(ScannedLine {
            start: position.byte(),
            line: position.line(),
            fields,
            ok: whole && &record[5] == b"ok",
            key: if whole {
                id_key(std::str::from_utf8(&record[0]).unwrap_or_default())
            } else {
                0
            },
        });
    }
    let mut valid_len = bytes_len;
    if let Some(last) = last {
        let tail = read_from(out, last.start).map_err(io)?;
        if ends_a_record(&tail) {
            kept.settle(out, last, want.len(), warn);
        } else {
            warn(format!(
                "results file {}, line {}: the last line was cut short (by a crash of an \
                 earlier run?); it is ignored and its row will run again",
                out.display(),
                last.line
            ));
            valid_len = last.start;
        }
    }
    if kept.skipped > WARN_EACH {
        warn(format!(
            "results file {}: {} more line(s) with the wrong number of fields skipped",
            out.display(),
            kept.skipped - WARN_EACH
        ));
    }
    let previous = Previous {
        ok: IdSet::from_unsorted(kept.ok_keys),
        lines: kept.lines,
    };
    Ok((previous, valid_len))
}

/// What [`scan`] has counted so far.
#[derive(Default)]
struct Kept {
    lines: u64,
    ok_keys: Vec<u64>,
    skipped: u64,
}

/// Malformed lines warned about one by one; past that, one summary (see [`scan`]).
const WARN_EACH: u64 = 10;

impl Kept {
    /// Counts a complete line, or warns about one with the wrong number of fields.
    fn settle(&mut self, out: &Path, line: ScannedLine, want: usize, warn: &mut dyn FnMut(String)) {
        if line.fields != want {
            self.skipped += 1;
            if self.skipped <= WARN_EACH {
                warn(format!(
                    "results file {}, line {} (byte {}): {} field(s) where {want} were \
                     expected; the line is skipped (hint: fix or delete it; the next \
                     compaction drops it)",
                    out.display(),
                    line.line,
                    line.start,
                    line.fields
                ));
            }
            return;
        }
        self.lines += 1;
        if line.ok {
            self.ok_keys.push(line.key);
        }
    }
}

/// The settings every reader of a results file uses: fields are counted, not enforced, so
/// that a line with the wrong count is seen rather than an error.
fn reader_builder() -> csv::ReaderBuilder {
    let mut builder = csv::ReaderBuilder::new();
    builder.flexible(true).has_headers(false);
    builder
}

/// The header line exactly as [`ResultsWriter`] writes it.
fn header_line(extra: &[String]) -> Vec<u8> {
    ResultsWriter::new(Vec::new(), extra, true)
        .ok()
        .and_then(|writer| writer.into_inner().ok())
        .unwrap_or_default()
}

/// Whether `tail`, one record from its start to the end of the file, ends with the record's
/// terminator, rather than after a newline inside a quoted field (a crash can cut a line
/// there; the field count can then still be right).
///
/// Asked of the csv parser itself, so that any quoting it accepts is judged the same way: a
/// line `x` is put after the tail. If the tail ended outside quotes, `x` is a record of its
/// own; if the tail ended inside a quoted field, `x` is swallowed into that field.
fn ends_a_record(tail: &[u8]) -> bool {
    const PROBE: &[u8] = b"dashbatch-probe\n";
    if !tail.ends_with(b"\n") {
        return false;
    }
    let mut text = Vec::with_capacity(tail.len() + PROBE.len());
    text.extend_from_slice(tail);
    text.extend_from_slice(PROBE);
    let mut reader = reader_builder().from_reader(text.as_slice());
    let mut record = csv::ByteRecord::new();
    let mut records = Vec::new();
    while let Ok(true) = reader.read_byte_record(&mut record) {
        records.push(record.clone());
    }
    records.len() == 2 && records[1].len() == 1 && records[1][0] == PROBE[..PROBE.len() - 1]
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
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
/// and lines with another field count than the header are left out. Up to `in_memory` lines are held in memory, the rest spill.
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
    Ok(Lines(lines))
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

/// Temp files of [`atomic_rewrite`] are named `.{target file name}.dashbatch-XXXXXX.tmp`, so
/// that the ones an interrupted run left can be told apart per target
/// ([`remove_stale_temps`]).
const TEMP_INFIX: &str = ".dashbatch-";
const TEMP_SUFFIX: &str = ".tmp";
/// Random characters in a temp file name (tempfile's alphanumerics).
const TEMP_RANDOM: usize = 6;

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn temp_prefix(target: &Path) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(target.file_name().unwrap_or_default());
    prefix.push(TEMP_INFIX);
    prefix
}

/// Replaces `out` with `write`'s output atomically: temp file in the same folder, fsync,
/// rename, fsync the folder. The new file gets the permissions of the one it replaces, or
/// when there is none those of a newly created file (0666 less the umask): tempfile's own
/// 0600 would lock out readers such as a node_exporter running as another user.
pub fn atomic_rewrite(
    out: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = parent_dir(out);
    let mut tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(out))
        .suffix(TEMP_SUFFIX)
        .rand_bytes(TEMP_RANDOM)
        .tempfile_in(dir)?;
    #[cfg(unix)]
    tmp.as_file().set_permissions(permissions_for(out)?)?;
    write(tmp.as_file_mut())?;
    tmp.as_file_mut().flush()?;
    tmp.as_file().sync_all()?;
    tmp.persist(out).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

/// The permissions `target`'s replacement gets: its own, or a new file's.
#[cfg(unix)]
fn permissions_for(target: &Path) -> std::io::Result<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match std::fs::metadata(target) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0o666 & !umask(),
        Err(err) => return Err(err),
    };
    Ok(std::fs::Permissions::from_mode(mode))
}

/// The process umask, read without changing it: `umask(2)` can only be read by setting it,
/// which would race with files other threads create meanwhile. Linux shows it in
/// `/proc/self/status`; elsewhere the common default 022 is assumed.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Removes the temp files [`atomic_rewrite`] of `target` left behind when the process was
/// killed before the rename. Only names with `target`'s own prefix and exactly the random
/// part tempfile adds are touched, so temp files of other files in the folder are not.
///
/// Call it only while no rewrite of `target` can be running (under its lock).
pub fn remove_stale_temps(target: &Path) -> std::io::Result<()> {
    let prefix = temp_prefix(target);
    let entries = match std::fs::read_dir(parent_dir(target)) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        entries => entries?,
    };
    for entry in entries {
        let entry = entry?;
        if !is_temp_of(&entry.file_name(), &prefix) || !entry.file_type()?.is_file() {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => tracing::info!(
                "removed {}, left by an interrupted run",
                entry.path().display()
            ),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

fn is_temp_of(name: &OsStr, prefix: &OsStr) -> bool {
    name.as_encoded_bytes()
        .strip_prefix(prefix.as_encoded_bytes())
        .and_then(|rest| rest.strip_suffix(TEMP_SUFFIX.as_bytes()))
        .is_some_and(|random| {
            random.len() == TEMP_RANDOM && random.iter().all(u8::is_ascii_alphanumeric)
        })
}

#[cfg(test)]
mod tests;
