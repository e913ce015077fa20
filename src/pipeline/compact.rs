//! The end of a run: rewrite the results file in manifest order with exactly one line per
//! manifest row. Rows with no line yet (never dispatched, or in flight when the run was
//! stopped) get a `not_attempted` line, so the file always accounts for every row and a rerun
//! knows what is left.

use std::collections::HashSet;
use std::path::Path;

use crate::manifest::{Entry, Manifest};
use crate::output::ResultsWriter;
use crate::output::resume::{self, LineReader, id_key};

use super::not_attempted;
use super::reader::{Repeats, duplicate};
use super::worker::bad_row_result;

/// Lines written, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Compacted {
    pub rows: u64,
    pub not_attempted: u64,
}

pub fn compact(
    manifest: &Path,
    out: &Path,
    extra: &[String],
    stop_reason: &str,
    duplicates: &HashSet<u64>,
    expected_lines: usize,
) -> Result<Compacted, CompactError> {
    let index = resume::index_lines(out, expected_lines)?;
    let mut lines = LineReader::open(out)?;
    let entries = Manifest::open(manifest)?;
    let mut counts = Compacted::default();
    let mut repeats = Repeats::new(duplicates);
    resume::atomic_rewrite(out, |file| {
        let mut writer = ResultsWriter::new(file, extra, true).map_err(std::io::Error::other)?;
        for entry in entries {
            counts.rows += 1;
            let key = id_key(entry.id());
            let line = entry.line();
            if repeats.seen_before(key) {
                let bad = duplicate(entry, manifest);
                writer
                    .write(&bad_row_result(bad, std::time::Instant::now()))
                    .map_err(std::io::Error::other)?;
                continue;
            }
            let copied = match index.get(&key) {
                Some(&offset) => lines.read_at(offset, line).map_err(std::io::Error::other)?,
                None => None,
            };
            match copied {
                Some(record) => writer.write_raw(&record).map_err(std::io::Error::other)?,
                None => {
                    let result = match entry {
                        Entry::Bad(bad) => bad_row_result(bad, std::time::Instant::now()),
                        row => {
                            counts.not_attempted += 1;
                            not_attempted(row, stop_reason)
                        }
                    };
                    writer.write(&result).map_err(std::io::Error::other)?;
                }
            }
        }
        writer.flush()
    })
    .map_err(CompactError::Io)?;
    Ok(counts)
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error(transparent)]
    Resume(#[from] resume::ResumeError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("cannot rewrite the results file: {0}")]
    Io(std::io::Error),
}
