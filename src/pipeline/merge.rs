//! `dashbatch merge`: the results files of several shards (or runs) of one manifest joined
//! into one results file, in manifest order, one line per row.
//!
//! No second join: the inputs are concatenated (data lines only, oldest file first) into a
//! temporary results file beside the output, and [`compact`](super::compact) turns that into
//! one line per row, as at the end of a run. So a row keeps the line a run would keep: its
//! latest `ok` line that answers what it asks now, else its latest failed line; "latest" is
//! the last in file order, which (inputs ordered by modification time) is the newest. A row
//! no input holds is `not_attempted`. Memory stays that of compaction, flat at any size.
//!
//! An input from another manifest is refused: compaction leaves every `ok` line that no row
//! takes (an id the manifest does not have, or a row that now asks something else) aside, and
//! any such line stops the merge, naming the input, its line and the id. The output is only
//! written when nothing was refused, with the same atomic write as compaction.

use std::fs::File;
use std::io::{BufReader, Seek};
use std::path::{Path, PathBuf};

use crate::manifest::{Manifest, scan_ids};
use crate::output::ResultsWriter;
use crate::output::atomic::atomic_rewrite;
use crate::output::results::format::{Format, RecordReader};
use crate::output::results::{COLUMNS, col, resume};

use super::compact::{self, CompactError, ManifestStamp};

/// What a merge wrote.
#[derive(Debug, Default)]
pub struct Merged {
    pub rows: u64,
    pub not_attempted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error("{path}: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error(
        "{path}: its columns are not those a run of manifest {manifest} writes; it is the \
         results file of another manifest (or of an older dashbatch: run the manifest once \
         against it to bring it up to date)"
    )]
    Columns { path: PathBuf, manifest: PathBuf },
    #[error(
        "{path}, line {line}: id `{id}` {what} of manifest {manifest}: this file holds \
         results of another manifest (or of an older version of it); merge only the results \
         files of runs of this manifest"
    )]
    Foreign {
        path: PathBuf,
        line: u64,
        id: String,
        what: &'static str,
        manifest: PathBuf,
    },
    #[error(
        "{0} line(s) of the inputs answer no row of manifest {1}: they are from another manifest"
    )]
    ForeignLines(u64, PathBuf),
    #[error(transparent)]
    Compact(#[from] CompactError),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Joins `inputs`, results files of runs of `manifest`, into `out` (see the module docs).
pub fn merge(manifest: &Path, inputs: &[PathBuf], out: &Path) -> Result<Merged, MergeError> {
    let extra = Manifest::open(manifest)?.extra_columns();
    let header: Vec<&str> = COLUMNS
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect();
    // Oldest first: compaction keeps the last line of a row, which is then the newest.
    let mut inputs = inputs.to_vec();
    inputs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());

    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| MergeError::Io { path, source }
    };
    // In OUT's format, which compaction keeps: inputs of either format are read by their own
    // names and written down in it.
    let suffix = format!(".{}", Format::of(out).extension());
    let joined = tempfile::Builder::new()
        .prefix(".dashbatch-merge-")
        .suffix(&suffix)
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    let side = resume::side_path(joined.path());
    let result = join_and_compact(manifest, &inputs, &extra, &header, joined.path(), out);
    let _ = std::fs::remove_file(&side);
    result
}

fn join_and_compact(
    manifest: &Path,
    inputs: &[PathBuf],
    extra: &[String],
    header: &[&str],
    joined: &Path,
    out: &Path,
) -> Result<Merged, MergeError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| MergeError::Io { path, source }
    };
    {
        let file = File::create(joined).map_err(io_err(joined))?;
        let format = Format::of(joined);
        let mut writer =
            ResultsWriter::with_format(std::io::BufWriter::new(file), extra, true, format, false)
                .map_err(|source| csv_err(joined, source))?;
        for input in inputs {
            let mut reader = resume_reader(input)?;
            let columns = reader
                .header()
                .map_err(|source| csv_err(input, source))?
                .unwrap_or_default();
            if columns.iter().ne(header.iter()) {
                return Err(MergeError::Columns {
                    path: input.clone(),
                    manifest: manifest.to_owned(),
                });
            }
            let mut record = csv::ByteRecord::new();
            while reader
                .read(&mut record)
                .map_err(|source| csv_err(input, source))?
            {
                // A line of another width (a hand edit) is one compaction would skip.
                if record.len() != header.len() {
                    continue;
                }
                writer
                    .write_raw(&record)
                    .map_err(|source| csv_err(joined, source))?;
            }
        }
        writer.flush().map_err(io_err(joined))?;
    }
    let duplicates = scan_ids(manifest)?.duplicates;
    let counts = compact::compact(
        manifest,
        joined,
        extra,
        "no results file given to merge holds this row",
        &duplicates,
        &ManifestStamp::of(manifest),
        compact::WINDOW,
        None,
    )?;
    if counts.orphaned > 0 {
        return Err(name_foreign(manifest, inputs, &counts.side).unwrap_or(
            MergeError::ForeignLines(counts.orphaned, manifest.to_owned()),
        ));
    }
    let mut merged = File::open(joined).map_err(io_err(joined))?;
    atomic_rewrite(out, |file| {
        merged.rewind()?;
        std::io::copy(&mut BufReader::new(&mut merged), file).map(drop)
    })
    .map_err(io_err(out))?;
    Ok(Merged {
        rows: counts.rows,
        not_attempted: counts.not_attempted,
    })
}

/// The first line compaction left aside, found back in its input for the error message.
fn name_foreign(manifest: &Path, inputs: &[PathBuf], side: &Path) -> Option<MergeError> {
    let mut aside = resume_reader(side).ok()?;
    aside.header().ok()?;
    let mut first = csv::ByteRecord::new();
    aside.read(&mut first).ok()?.then_some(())?;
    let (id, digest) = (&first[col::ID], &first[col::INPUT_DIGEST]);
    let known = scan_manifest_id(manifest, std::str::from_utf8(id).ok()?);
    for input in inputs.iter().rev() {
        let mut reader = resume_reader(input).ok()?;
        reader.header().ok()?;
        let mut record = csv::ByteRecord::new();
        while reader.read(&mut record).ok()? {
            if record.len() <= col::INPUT_DIGEST {
                continue;
            }
            if &record[col::ID] == id && &record[col::INPUT_DIGEST] == digest {
                return Some(MergeError::Foreign {
                    path: input.clone(),
                    line: record.position().map_or(0, |p| p.line()),
                    id: String::from_utf8_lossy(id).into_owned(),
                    what: if known {
                        "answers another question than the row of that id"
                    } else {
                        "is no row"
                    },
                    manifest: manifest.to_owned(),
                });
            }
        }
    }
    None
}

/// Whether the manifest has a row with id `id`.
fn scan_manifest_id(manifest: &Path, id: &str) -> bool {
    Manifest::open(manifest).is_ok_and(|mut rows| rows.any(|e| e.id() == id))
}

/// A reader of results file `path`, in the format its name says.
fn resume_reader(path: &Path) -> Result<RecordReader, MergeError> {
    RecordReader::open(path).map_err(|source| MergeError::Io {
        path: path.to_owned(),
        source,
    })
}

fn csv_err(path: &Path, source: csv::Error) -> MergeError {
    MergeError::Csv {
        path: path.to_owned(),
        source,
    }
}
