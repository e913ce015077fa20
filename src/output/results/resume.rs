//! Resuming from an earlier run's results file, and compacting it at the end.
//!
//! During a run, result lines are only ever appended, so a crash can at worst cut the last
//! line short, possibly just after a newline inside a quoted field. On start the file is read
//! once: the ids of `ok` lines are remembered with what each line answered (its
//! [`InputDigest`]; both as 64-bit hashes, to keep memory small on huge manifests), a cut-off
//! tail is trimmed, and a malformed line elsewhere (a hand edit) is skipped with a warning
//! rather than trusted or cut. A row is done only while a line's digest matches what the row
//! asks now. At the end, the file is rewritten in manifest order with exactly one line per
//! manifest row, through a temp file in the same folder that is fsynced and renamed over the
//! old one, so a crash during compaction leaves either the old file or the new one (and a temp
//! file the next run removes), never a mix. `ok` lines that no manifest row takes (the row was
//! removed, or asks something else now) go to a side file beside it ([`side_path`]), which the
//! next run reads too: a paid answer is never dropped.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::{self, Format, RecordReader};
use super::{COLUMNS, ResultsWriter};
use crate::output::atomic::remove_stale_temps;
use crate::spill::SpillError;

pub use crate::manifest::id_key;
pub use digest::{InputDigest, line_digest, row_digests};
pub use done::{Done, Resumed};
pub use index::{LineIndex, LineOffsets, LineReader, Lines, index_lines};
use upgrade::{is_earlier, upgrade_columns};

mod digest;
mod done;
mod index;
mod upgrade;

/// The side file of results file `out`: `ok` lines no manifest row took at the last
/// compaction, in the same columns and format, named `OUT.orphans.csv` (or
/// `OUT.orphans.jsonl`).
pub fn side_path(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".orphans.");
    name.push(Format::of(out).extension());
    PathBuf::from(name)
}

/// What an earlier results file holds.
#[derive(Debug, Default)]
pub struct Previous {
    /// `ok` lines, of the results file and of its side file.
    pub done: Done,
    /// Complete lines read (all statuses).
    pub lines: u64,
    /// The file has the columns of an earlier version (before `input_digest`, or before
    /// `reasoning`); [`open_for_append`] upgrades it.
    pub legacy: bool,
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

fn expected_header(columns: &[&str], extra: &[String]) -> Vec<String> {
    columns
        .iter()
        .map(|c| c.to_string())
        .chain(extra.iter().cloned())
        .collect()
}

/// Opens `out` for appending this run's lines, creating it (with a header) when absent, when
/// it holds no complete header line, or when `fresh`. Returns what the earlier file and its
/// side file ([`side_path`]) held; `fresh` starts both over. A last line cut short by a crash
/// is trimmed first, temp files an interrupted compaction of `out` left behind are removed,
/// and a file written before the `input_digest` column existed is rewritten with the column
/// (empty on its lines), so that every line this run appends has the header's width.
///
/// Call it while holding `out`'s run lock: the temp files it removes would otherwise belong
/// to a compaction that is still running.
/// The file's format is its name's ([`Format::of`]); `bom` starts a new CSV file with a
/// UTF-8 BOM (`--excel-bom`).
pub fn open_for_append(
    out: &Path,
    extra: &[String],
    fresh: bool,
    bom: bool,
) -> Result<(ResultsWriter<File>, Previous), ResumeError> {
    let format = Format::of(out);
    let io = |source| ResumeError::Io {
        path: out.to_owned(),
        source,
    };
    let csv_err = |source| ResumeError::Csv {
        path: out.to_owned(),
        source,
    };
    let side = side_path(out);
    for file in [out, side.as_path()] {
        if let Err(err) = remove_stale_temps(file) {
            tracing::warn!(
                "cannot remove temp files an interrupted run left beside {}: {err}",
                file.display()
            );
        }
    }
    if fresh {
        match std::fs::remove_file(&side) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(ResumeError::Io {
                    path: side,
                    source: err,
                });
            }
            _ => {}
        }
    }
    let aside = if !fresh && side.exists() {
        let (aside, _) = scan(&side, extra)?;
        if aside.legacy {
            // Its lines are read the same either way; the upgrade keeps its width that of the
            // lines compaction adds.
            upgrade_columns(&side, extra).map_err(|source| ResumeError::Io {
                path: side.clone(),
                source,
            })?;
        }
        aside.done.0
    } else {
        Vec::new()
    };
    let exists = std::fs::metadata(out).map(|m| m.len() > 0).unwrap_or(false);
    let earlier = if fresh || !exists {
        None
    } else {
        Some(scan(out, extra)?).filter(|&(_, valid_len)| valid_len > 0)
    };
    // O_APPEND: each line lands at the end of the file as it is then, so a second writer
    // that got past the lock (another host on a network folder) adds lines, never
    // overwrites them.
    let append = || OpenOptions::new().append(true).create(true).open(out);
    let Some((mut previous, valid_len)) = earlier else {
        let file = append().map_err(io)?;
        file.set_len(0).map_err(io)?;
        let writer = ResultsWriter::with_format(file, extra, true, format, bom).map_err(csv_err)?;
        let previous = Previous {
            done: Done::from_unsorted(aside),
            ..Previous::default()
        };
        return Ok((writer, previous));
    };
    if !aside.is_empty() {
        let mut all = std::mem::take(&mut previous.done).0;
        all.extend(aside);
        previous.done = Done::from_unsorted(all);
    }
    // A torn last line is cut off; appends then go on from the end of what is left.
    let mut file = append().map_err(io)?;
    file.set_len(valid_len).map_err(io)?;
    if previous.legacy {
        drop(file);
        upgrade_columns(out, extra).map_err(io)?;
        tracing::info!(
            "results file {}: written by an earlier version; added the columns it lacked \
             (empty on its earlier lines)",
            out.display()
        );
        file = append().map_err(io)?;
    }
    let writer = ResultsWriter::with_format(file, extra, false, format, bom).map_err(csv_err)?;
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
    /// What it answered ([`line_digest`]).
    digest: u64,
}

/// Reads ok lines and finds where the last complete line ends, without changing the file.
/// The returned length is 0 when the file holds no complete header line (a crash while it
/// was being created): the caller then starts the file over. A file with the columns of the
/// version before `input_digest` or `reasoning` is read too ([`Previous::legacy`]).
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
    let format = Format::of(out);
    let header = header_line(extra);
    if format == Format::Csv && bytes_len < (format::BOM.len() + header.len()) as u64 {
        // A header cut short, with or without (some of) a BOM before it.
        let bytes = std::fs::read(out).map_err(io)?;
        let with_bom = [format::BOM, &header].concat();
        if header.starts_with(&bytes) || with_bom.starts_with(&bytes) {
            return Ok((Previous::default(), 0));
        }
    }
    let mut reader = RecordReader::open(out).map_err(io)?;
    let mut record = csv::ByteRecord::new();
    let want = expected_header(&COLUMNS, extra);
    let Some(found) = reader.header().map_err(csv_err)? else {
        return Ok((Previous::default(), 0));
    };
    let legacy = format == Format::Csv && found != want && is_earlier(&found, extra);
    if found != want && !legacy {
        return Err(ResumeError::Header {
            path: out.to_owned(),
            found: found.join(","),
        });
    }
    let width = found.len();
    // Read by name: an earlier version's file may lack a column, or have them elsewhere.
    let at = |name: &str| found.iter().position(|f| f == name);
    let digest_at = at("input_digest");
    let (Some(id_at), Some(status_at), Some(model_at), Some(file_at), Some(prompt_at)) = (
        at("id"),
        at("status"),
        at("model"),
        at("file"),
        at("prompt"),
    ) else {
        return Err(ResumeError::Header {
            path: out.to_owned(),
            found: found.join(","),
        });
    };
    let mut kept = Kept::default();
    // A line is known to be complete once another one follows it; the last one is checked
    // against the end of the file below.
    let mut last: Option<ScannedLine> = None;
    loop {
        let (start, line) = reader.position();
        if !reader.read(&mut record).map_err(csv_err)? {
            break;
        }
        if let Some(done) = last.take() {
            kept.settle(out, done, width, warn);
        }
        let fields = record.len();
        let whole = fields == width;
        last = Some(ScannedLine {
            start,
            line,
            fields,
            ok: whole && &record[status_at] == b"ok",
            key: if whole {
                id_key(std::str::from_utf8(&record[id_at]).unwrap_or_default())
            } else {
                0
            },
            digest: if whole {
                line_digest(
                    digest_at.map(|i| &record[i]),
                    &record[model_at],
                    &record[file_at],
                    &record[prompt_at],
                )
            } else {
                0
            },
        });
    }
    let mut valid_len = bytes_len;
    if let Some(last) = last {
        let tail = read_from(out, last.start).map_err(io)?;
        let complete = match format {
            Format::Csv => ends_a_record(&tail),
            Format::Jsonl => format::jsonl_line_complete(&tail),
        };
        if complete {
            kept.settle(out, last, width, warn);
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
        done: Done::from_unsorted(kept.ok),
        lines: kept.lines,
        legacy,
    };
    Ok((previous, valid_len))
}

/// What [`scan`] has counted so far.
#[derive(Default)]
struct Kept {
    lines: u64,
    /// `(id key, digest)` of ok lines.
    ok: Vec<(u64, u64)>,
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
            self.ok.push((line.key, line.digest));
        }
    }
}

/// The settings every reader of a results file uses: fields are counted, not enforced, so
/// that a line with the wrong count is seen rather than an error.
pub(super) fn reader_builder() -> csv::ReaderBuilder {
    let mut builder = csv::ReaderBuilder::new();
    builder.flexible(true).has_headers(false);
    builder
}

/// The CSV header line exactly as [`ResultsWriter`] writes it (without a BOM).
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

#[cfg(test)]
mod tests;
