//! `dashbatch validate`: checks a manifest without touching the network and says what a run
//! would do. Every problem a run would hit before its first request is found here: the
//! header, rows that do not parse, files that are missing, unreadable, of an unknown media
//! kind or too large, and repeated ids.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::manifest::{self, Entry, Manifest, ManifestError, MediaRef, Source};
use crate::output::results::resume::{self, ResumeError, id_key};
use crate::pipeline::Failure;
use crate::pipeline::checks::{self, Repeats};

/// How many problems are listed one by one; the rest are counted.
const SHOWN_PROBLEMS: usize = 50;

#[derive(Debug, Default)]
pub struct Plan {
    pub rows: u64,
    pub invalid: u64,
    /// Rows whose id is already `ok` in the results file (a run would skip them).
    pub done: u64,
    pub distinct_files: u64,
    pub bytes: u64,
    pub urls: u64,
    /// Rows per model.
    pub models: BTreeMap<String, u64>,
    /// The first problems, each naming the file and line.
    pub problems: Vec<String>,
}

impl Plan {
    pub fn is_valid(&self) -> bool {
        self.invalid == 0
    }

    fn problem(&mut self, message: String) {
        self.invalid += 1;
        if self.problems.len() < SHOWN_PROBLEMS {
            self.problems.push(message);
        }
    }
}

/// Checks `manifest`; `output` is read (never written) to count rows already done.
pub fn validate(
    manifest: &Path,
    output: &Path,
    max_file_size_mb: u64,
) -> Result<Plan, ManifestError> {
    let entries = Manifest::open(manifest)?;
    let extra = entries.extra_columns();
    let mut plan = Plan::default();
    // A results file that `run` would refuse is a problem now, not a surprise at night.
    let done = match resume::scan(output, &extra) {
        Ok((previous, _)) => previous.done,
        Err(ResumeError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Default::default()
        }
        Err(err) => {
            plan.problem(err.to_string());
            Default::default()
        }
    };
    // The pass `run` makes before its first row: which ids repeat, in flat memory.
    let ids = manifest::scan_ids(manifest)?;
    let mut repeats = Repeats::new(&ids.duplicates);
    let mut seen_files: HashSet<PathBuf> = HashSet::new();
    let shown = manifest.display().to_string();
    for entry in entries {
        plan.rows += 1;
        if let Some(earlier) = repeats.seen_before(id_key(entry.id()), &entry) {
            plan.problem(checks::duplicate(entry, manifest, earlier).message);
            continue;
        }
        let row = match entry {
            Entry::Bad(bad) => {
                plan.problem(bad.message);
                continue;
            }
            Entry::Row(row) => row,
        };
        if done.check(id_key(&row.id), resume::row_digests(&row)) == resume::Resumed::Done {
            plan.done += 1;
        }
        *plan.models.entry(row.model.clone()).or_default() += 1;
        for item in &row.media {
            if !matches!(item.source, Source::Local(_)) {
                plan.urls += 1;
            }
            // Worded as `run` words the row's `error_message`.
            if let Err(failure) = check(item, max_file_size_mb) {
                plan.problem(format!("{shown}, line {}: {}", row.line, failure.message));
                continue;
            }
            if let Source::Local(path) = &item.source {
                let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
                if let Ok(meta) = std::fs::metadata(&canonical)
                    && seen_files.insert(canonical)
                {
                    plan.distinct_files += 1;
                    plan.bytes += meta.len();
                }
            }
        }
    }
    Ok(plan)
}

/// The checks `run` makes before a row's first request, in its order, with the size limit
/// of the flag in place of the model's (which only its upload credential states).
fn check(item: &MediaRef, max_file_size_mb: u64) -> Result<(), Failure> {
    let Source::Local(path) = &item.source else {
        return checks::media_kind(&item.source, &item.file).map(drop);
    };
    let meta = checks::local_file(path)?;
    checks::media_kind(&item.source, &item.file)?;
    // `run` opens the file to upload it: one it cannot open fails there.
    std::fs::File::open(path).map_err(|err| checks::unreadable(path, &err))?;
    checks::size(path, meta.len(), max_file_size_mb, "--max-file-size-mb")
}
