//! Reading the manifest: a CSV with a header naming at least `model`, `file` and `prompt`,
//! optionally `id`, `system`, `params` (a JSON object of generation parameters) and `file2`,
//! `file3`, … (more files of the row); every other column passes through to the results.
//!
//! The manifest is read as a stream, one record at a time, so a ten-million-row manifest costs
//! no more memory than a ten-row one. A problem with the file as a whole (cannot open it, no
//! header, a required column missing) is a [`ManifestError`] and stops the run before any
//! work. A problem with one record is an [`Entry::Bad`]: it fails that row only.
//!
//! Each entry carries the physical line where its record starts, as an editor shows it, for
//! any file a spreadsheet may write (`\r\n` or `\n` line ends, blank lines, a BOM, quoted
//! fields over several lines). The `lines` module counts them: the csv crate's own count is
//! off for all but `\n`-only files without blank lines.
//!
//! This module does not look at the files rows point to; the pipeline does that per row.

mod header;
mod lines;
mod params;
mod row;
mod scan;
mod shard;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::failure::FailureCode;
use crate::spill::SpillError;
use header::{Columns, parse_header};
use lines::{Lines, Unclosed};

pub use params::{Params, canonical as canonical_params};
pub use row::{BadRow, Entry, MediaRef, Row, Source, classify_source, derived_id, derived_id_with};
pub use scan::{IdScan, id_key, scan_ids, scan_ids_of};
pub use shard::Shard;

/// Columns every manifest must have.
pub const REQUIRED: [&str; 3] = ["model", "file", "prompt"];

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot open manifest {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the header of manifest {path}: {source}")]
    Header { path: PathBuf, source: csv::Error },
    #[error(
        "manifest {path} is empty: it needs a header line naming the columns model,file,prompt"
    )]
    NoHeader { path: PathBuf },
    #[error(
        "manifest {path}, line 1: missing required column(s) {missing} (found: {found}); \
         the header must name model, file and prompt (id and system are optional)"
    )]
    MissingColumns {
        path: PathBuf,
        missing: String,
        found: String,
    },
    #[error("manifest {path}, line 1: column {column:?} appears more than once")]
    DuplicateColumn { path: PathBuf, column: String },
    #[error("manifest {path}, line 1: the header is not valid UTF-8")]
    HeaderEncoding { path: PathBuf },
    #[error(
        "manifest {path}, line 1: column {column:?} would appear twice in the results; \
         rename the column; results already have a column of that name"
    )]
    ResultsColumn { path: PathBuf, column: String },
    #[error(
        "manifest {path}, line {line}: a quoted field in the header is never closed, so the \
         header runs to the end of the file; close the quote or double the \" inside the field"
    )]
    UnclosedHeader { path: PathBuf, line: u64 },
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// A streaming manifest reader. Iterate it for [`Entry`] items.
pub struct Manifest<R = File> {
    path: PathBuf,
    base_dir: PathBuf,
    reader: csv::Reader<Lines<R>>,
    columns: Columns,
    record: csv::ByteRecord,
    done: bool,
}

impl Manifest<File> {
    /// Opens `path` and reads its header. Relative `file` values resolve against the
    /// manifest's own folder, so a manifest and its media move together.
    pub fn open(path: &Path) -> Result<Self, ManifestError> {
        let file = File::open(path).map_err(|source| ManifestError::Open {
            path: path.to_owned(),
            source,
        })?;
        // An existing folder opens fine on Linux and fails on the first read; say so plainly.
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(ManifestError::Open {
                path: path.to_owned(),
                source: std::io::Error::other("it is a folder, not a CSV file"),
            });
        }
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self::from_reader(file, path, base_dir)
    }
}

impl<R: Read + Seek> Manifest<R> {
    /// Reads a manifest from any reader; `path` is used in messages only.
    pub fn from_reader(reader: R, path: &Path, base_dir: PathBuf) -> Result<Self, ManifestError> {
        let mut reader = csv::ReaderBuilder::new()
            // Rows with the wrong number of fields are reported per row, not as a stream error.
            .flexible(true)
            .has_headers(true)
            .from_reader(Lines::new(reader));
        let header = reader
            .byte_headers()
            .map_err(|source| ManifestError::Header {
                path: path.to_owned(),
                source,
            })?
            .clone();
        if header.is_empty() {
            return Err(ManifestError::NoHeader {
                path: path.to_owned(),
            });
        }
        let lines = reader.get_mut();
        if let (Some(start), Some(open)) = (lines.start_at(0), lines.unclosed())
            && open.record == start.offset
        {
            return Err(ManifestError::UnclosedHeader {
                path: path.to_owned(),
                line: open.line,
            });
        }
        let columns = parse_header(&header, path)?;
        Ok(Self {
            path: path.to_owned(),
            base_dir,
            reader,
            columns,
            record: csv::ByteRecord::new(),
            done: false,
        })
    }

    /// Names of the pass-through columns, in header order.
    pub fn extra_columns(&self) -> Vec<String> {
        self.columns.extra.iter().map(|(_, n)| n.clone()).collect()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry for the record just read, which starts at `start`; `unclosed` when it holds
    /// a quote that never closes.
    fn entry(&self, start: lines::Start, unclosed: Option<Unclosed>) -> Entry {
        let line = start.line;
        let cols = &self.columns;
        let rec = &self.record;
        let text = |i: usize| -> Result<&str, usize> {
            std::str::from_utf8(rec.get(i).unwrap_or_default()).map_err(|_| i)
        };
        // Whatever can be read is kept for the failed line, so the user can find the row.
        let lossy = |i: Option<usize>| -> String {
            i.and_then(|i| rec.get(i))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let extra: Vec<String> = cols.extra.iter().map(|(i, _)| lossy(Some(*i))).collect();
        let bad = |code: FailureCode, message: String| {
            let model = lossy(Some(cols.model));
            let files: Vec<String> = cols.media.iter().map(|&i| lossy(Some(i))).collect();
            let prompt = lossy(Some(cols.prompt));
            let system = cols.system.map(|i| lossy(Some(i)));
            let params = cols.params.map(|i| lossy(Some(i)));
            let id = match cols.id.map(|i| lossy(Some(i))).filter(|s| !s.is_empty()) {
                Some(id) => id,
                None => derived_id_with(
                    &model,
                    files.iter().map(String::as_str).filter(|f| !f.is_empty()),
                    &prompt,
                    system.as_deref(),
                    params.as_deref().map(str::trim).filter(|p| !p.is_empty()),
                ),
            };
            Entry::Bad(BadRow {
                line,
                id,
                model,
                // The results line names the first media column's cell.
                file: files.into_iter().next().unwrap_or_default(),
                prompt,
                extra: extra.clone(),
                code,
                message: format!("{}, line {line}: {message}", self.path.display()),
            })
        };

        // Checked first: the record was cut at the end of the quote's line, so its field
        // count means nothing.
        if let Some(open) = unclosed {
            let after = match open.next {
                Some(next) => format!("reading goes on at line {}", next.line),
                None => "it is the last line".to_owned(),
            };
            return bad(
                FailureCode::BadRow,
                format!(
                    "a quote opened on line {} never closes, so CSV cannot tell where this row \
                     ends; it fails and {after}. Close the quote, or double the \" if it is part \
                     of the text",
                    open.line
                ),
            );
        }
        if rec.len() != cols.width {
            return bad(
                FailureCode::BadRow,
                format!(
                    "expected {} fields as in the header, found {}; quote fields that contain commas",
                    cols.width,
                    rec.len()
                ),
            );
        }
        let mut fields = [cols.model]
            .into_iter()
            .chain(cols.media.iter().copied())
            .chain([cols.prompt])
            .chain(cols.id)
            .chain(cols.system)
            .chain(cols.params)
            .map(text);
        if let Some(Err(i)) = fields.find(Result::is_err) {
            return bad(
                FailureCode::BadEncoding,
                format!(
                    "column {} is not valid UTF-8; save the manifest as UTF-8",
                    self.column_name(i)
                ),
            );
        }
        let get = |i: usize| text(i).unwrap_or_default().to_owned();
        let model = get(cols.model).trim().to_owned();
        // A space before a URL would make it a local path; no file name starts or ends with one
        // on purpose.
        // The `file` cell is required; an empty further file cell is skipped.
        let files: Vec<String> = cols
            .media
            .iter()
            .enumerate()
            .map(|(n, &i)| (n, get(i).trim().to_owned()))
            .filter(|(n, file)| *n == 0 || !file.is_empty())
            .map(|(_, file)| file)
            .collect();
        let prompt = get(cols.prompt);
        let system = cols.system.map(get).filter(|s| !s.trim().is_empty());
        let params = match cols.params.map(get).as_deref().map(params::parse_cell) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(params))) => Some(params),
            Some(Err(problem)) => return bad(FailureCode::BadRow, problem),
        };
        let id = match cols.id.map(get).filter(|s| !s.trim().is_empty()) {
            Some(id) => id.trim().to_owned(),
            None => derived_id_with(
                &model,
                files.iter().map(String::as_str),
                &prompt,
                system.as_deref(),
                params.as_ref().map(params::canonical).as_deref(),
            ),
        };

        let problem = if model.is_empty() {
            Some("the model column is empty; name the model, e.g. qwen-vl-plus")
        } else if files.first().is_none_or(String::is_empty) {
            Some("the file column is empty; give a path relative to the manifest, or a URL")
        } else if files.iter().any(|file| file.contains('\0')) {
            Some("the file column contains a NUL byte, which no path can hold")
        } else if prompt.trim().is_empty() {
            Some("the prompt column is empty; every row needs a prompt")
        } else {
            None
        };
        if let Some(problem) = problem {
            return bad(FailureCode::BadRow, problem.to_owned());
        }

        let media = files
            .into_iter()
            .map(|file| MediaRef {
                source: classify_source(&file, &self.base_dir),
                file,
            })
            .collect();
        Entry::Row(Row {
            line,
            id,
            model,
            media,
            prompt,
            system,
            params,
            extra,
            input_digest: None,
        })
    }

    fn column_name(&self, index: usize) -> &'static str {
        let c = &self.columns;
        match index {
            i if i == c.model => "model",
            i if c.media.first() == Some(&i) => "file",
            i if c.media.contains(&i) => "a further file column (file2, file3, …)",
            i if Some(i) == c.params => "params",
            i if i == c.prompt => "prompt",
            i if Some(i) == c.id => "id",
            _ => "system",
        }
    }
}

impl<R: Read + Seek> Manifest<R> {
    /// The entry for a record whose quote never closes. The csv reader ran that field to the
    /// end of the file; CSV cannot say where it was meant to end, so the row is cut at the end
    /// of the quote's line (its cells as far as they go, so the user can find it) and reading
    /// goes on at the next line: every later line still becomes a row of its own.
    fn unclosed_entry(&mut self, start: lines::Start, open: Unclosed) -> Entry {
        let Some(next) = open.next else {
            return self.entry(start, Some(open));
        };
        let resumed = self
            .reader
            .get_mut()
            .bytes_between(start.offset, next.offset)
            .and_then(|text| {
                let mut cut = csv::ReaderBuilder::new()
                    .flexible(true)
                    .has_headers(false)
                    .from_reader(text.trim_ascii_end());
                cut.read_byte_record(&mut self.record)?;
                let mut position = csv::Position::new();
                position.set_byte(next.offset);
                self.reader
                    .seek_raw(SeekFrom::Start(next.offset), position)?;
                self.reader.get_mut().set_line(next.line);
                Ok(())
            });
        let entry = self.entry(start, Some(open));
        match (resumed, entry) {
            (Ok(()), entry) => entry,
            // The rest of the file cannot be read again: fail this row saying so, and stop.
            (Err(err), Entry::Bad(mut bad)) => {
                self.done = true;
                bad.message = format!("{}; the manifest cannot be read on: {err}", bad.message);
                Entry::Bad(bad)
            }
            (Err(_), entry) => entry,
        }
    }
}

impl<R: Read + Seek> Iterator for Manifest<R> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.done {
            return None;
        }
        match self.reader.read_byte_record(&mut self.record) {
            Ok(true) => {
                // The csv reader began this record where its previous read stopped; the record
                // itself starts at the first start the line counter saw from there.
                let from = self.record.position().map_or(0, |p| p.byte());
                let lines = self.reader.get_mut();
                let start = lines.start_at(from);
                debug_assert!(start.is_some(), "no record start at or after byte {from}");
                let start = start.unwrap_or(lines::Start {
                    offset: from,
                    line: lines.line(),
                });
                match lines.unclosed().filter(|open| open.record == start.offset) {
                    Some(open) => Some(self.unclosed_entry(start, open)),
                    None => Some(self.entry(start, None)),
                }
            }
            Ok(false) => {
                self.done = true;
                None
            }
            Err(err) => {
                // The csv reader resynchronises after a bad record, but an I/O error means the
                // rest of the file cannot be trusted: report it on the row and stop.
                let from = self.record.position().map_or(0, |p| p.byte());
                let lines = self.reader.get_mut();
                let line = lines.start_at(from).map_or(lines.line(), |s| s.line);
                if matches!(err.kind(), csv::ErrorKind::Io(_)) {
                    self.done = true;
                }
                Some(Entry::Bad(BadRow {
                    line,
                    id: format!("line-{line}"),
                    model: String::new(),
                    file: String::new(),
                    prompt: String::new(),
                    extra: vec![String::new(); self.columns.extra.len()],
                    code: FailureCode::BadRow,
                    message: format!(
                        "{}, line {line}: cannot parse the record: {err}",
                        self.path.display()
                    ),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests;
