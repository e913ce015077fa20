//! `dashbatch validate`: checks a manifest without touching the network and says what a run
//! would do. Every problem a run would hit before its first request is found here: the
//! header, rows that do not parse, files that are missing, unreadable, of an unknown media
//! kind or too large, and repeated ids.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::dashscope::MediaKind;
use crate::manifest::{Entry, Manifest, ManifestError, Source};
use crate::output::resume::{self, ResumeError, id_key};

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
    let limit = max_file_size_mb.saturating_mul(1024 * 1024);
    let mut seen_ids = HashSet::new();
    let mut seen_files: HashSet<PathBuf> = HashSet::new();
    let shown = manifest.display().to_string();
    for entry in entries {
        plan.rows += 1;
        let line = entry.line();
        if !seen_ids.insert(id_key(entry.id())) {
            plan.problem(format!(
                "{shown}, line {line}: id {:?} is already used by an earlier row",
                entry.id()
            ));
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
        let at = format!("{shown}, line {line}");
        for media in &row.media {
            match &media.source {
                Source::Local(path) => {
                    if let Err(problem) = check_file(path, limit, max_file_size_mb) {
                        plan.problem(format!("{at}: {problem}"));
                        continue;
                    }
                    let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
                    if let Ok(meta) = std::fs::metadata(&canonical)
                        && seen_files.insert(canonical)
                    {
                        plan.distinct_files += 1;
                        plan.bytes += meta.len();
                    }
                }
                Source::Oss(url) | Source::Http(url) => {
                    plan.urls += 1;
                    let path = url.split(['?', '#']).next().unwrap_or(url);
                    if MediaKind::from_path(Path::new(path)).is_none() {
                        plan.problem(format!(
                            "{at}: cannot tell the media kind of {url:?} from its extension"
                        ));
                    }
                }
            }
        }
    }
    Ok(plan)
}

fn check_file(path: &Path, limit: u64, limit_mb: u64) -> Result<(), String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            format!("{shown} does not exist; paths are relative to the manifest's folder")
        }
        _ => format!("cannot read {shown}: {e}"),
    })?;
    if meta.is_dir() {
        return Err(format!(
            "{shown} is a folder; the file column must name a file"
        ));
    }
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    if MediaKind::from_path(path).is_none() {
        return Err(format!(
            "cannot tell the media kind of {shown} from its extension; use an image, video \
             or audio file"
        ));
    }
    if meta.len() > limit {
        return Err(format!(
            "{shown} is {} bytes, over the {limit_mb} MB upload limit",
            meta.len()
        ));
    }
    Ok(())
}
