//! The end of a run: rewrite the results file in manifest order with exactly one line per
//! manifest row. Rows with no line yet (never dispatched, or in flight when the run was
//! stopped) get a `not_attempted` line, so the file always accounts for every row and a rerun
//! knows what is left. A row's `ok` line is its own only while it answers what the row asks
//! now; every other `ok` line (its row left the manifest, or asks something else) goes to the
//! side file beside the results, so no paid answer is dropped, and a manifest that changed
//! during the run is reported. With a shard (`--shard K/N`), only that shard's rows are
//! written: the rows of other shards are other processes' lines, joined by `dashbatch merge`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::manifest::{Entry, Manifest, Shard};
use crate::output::results::format::{Format, starts_with_bom};
use crate::output::results::resume::{self, LineIndex, Lines, id_key, row_digests};
use crate::output::{ResultsWriter, Stats};
use crate::spill::{self, Spill};

use super::checks::{Repeats, duplicate};
use super::not_attempted;
use super::worker::bad_row_result;

/// Manifest rows per window: the line index of one window stays near 1 MiB, whatever the
/// length of the manifest. A manifest that fits one window is compacted in one pass.
pub const WINDOW: usize = spill::PER_PASS;

/// Lines written, by kind.
#[derive(Debug, Default, Clone)]
pub struct Compacted {
    pub rows: u64,
    pub not_attempted: u64,
    /// `ok` lines no row took, kept in `side`.
    pub orphaned: u64,
    pub side: PathBuf,
    /// The manifest was replaced or rewritten between the start of the run and compaction.
    pub manifest_changed: bool,
}

impl Compacted {
    /// Puts what compaction found into the run's figures.
    pub fn record(&self, stats: &mut Stats) {
        stats.rows_total = self.rows;
        stats.rows_not_attempted += self.not_attempted;
        stats.rows_orphaned = self.orphaned;
        stats.orphans_file = if self.orphaned > 0 {
            self.side.display().to_string()
        } else {
            String::new()
        };
        stats.manifest_changed = self.manifest_changed;
    }
}

/// Which file a manifest path named, and its size and modification time: a generator that
/// rewrites the manifest in place changes the last two, one that renames a new file over it
/// changes the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestStamp(Option<(u64, u64, u64, Option<SystemTime>)>);

impl ManifestStamp {
    pub fn of(path: &Path) -> Self {
        Self(std::fs::metadata(path).ok().map(|m| {
            #[cfg(unix)]
            let (dev, ino) = {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            };
            #[cfg(not(unix))]
            let (dev, ino) = (0, 0);
            (dev, ino, m.len(), m.modified().ok())
        }))
    }
}

/// Rewrites `out` in manifest order, reading `window` manifest rows at a time (see
/// [`WINDOW`]), and its side file ([`resume::side_path`]) with the `ok` lines no row took.
/// `started` is the manifest's stamp when the run began. With a `shard`, rows of other shards
/// are left out, and their lines in `out` go to the side file like any line no row takes.
#[allow(clippy::too_many_arguments)]
pub fn compact(
    manifest: &Path,
    out: &Path,
    extra: &[String],
    stop_reason: &str,
    duplicates: &HashSet<u64>,
    started: &ManifestStamp,
    window: usize,
    shard: Option<Shard>,
) -> Result<Compacted, CompactError> {
    let before = ManifestStamp::of(manifest);
    let side = resume::side_path(out);
    let side_now = side.exists().then_some(side.as_path());
    let in_memory = spill::IN_MEMORY.min(window);
    let mut all_lines = resume::index_lines(out, side_now, in_memory)?;
    let mut lines = Lines::open(out, side_now)?;
    // `(id key, digest)` of every ok line written to `out`: a line of the same pair is the
    // same answer, not an orphan.
    let mut taken = Spill::<2>::new(in_memory);
    // Two readers of the manifest: `ahead` takes the ids of the next window of rows, for
    // which the line index is built; `entries` then writes that window's rows.
    let ours = move |entry: &Entry| shard.is_none_or(|shard| shard.owns(entry.id()));
    let mut ahead = Manifest::open(manifest)?.filter(ours);
    let entries = Manifest::open(manifest)?.filter(ours);
    let mut counts = Compacted {
        side: side.clone(),
        ..Compacted::default()
    };
    let mut repeats = Repeats::new(duplicates);
    // The file's format is its name's; a BOM it starts with (`--excel-bom`) is kept, and the
    // side file gets one too.
    let (format, bom) = (Format::of(out), starts_with_bom(out));
    crate::output::atomic::atomic_rewrite(out, |file| {
        let mut writer = ResultsWriter::with_format(file, extra, true, format, bom)
            .map_err(std::io::Error::other)?;
        let mut index = LineIndex::default();
        let mut left_in_window = 0usize;
        for entry in entries {
            if left_in_window == 0 {
                let mut keys = Vec::with_capacity(window);
                keys.extend(ahead.by_ref().take(window).map(|e| id_key(e.id())));
                keys.sort_unstable();
                left_in_window = keys.len();
                index = all_lines.index(&keys).map_err(std::io::Error::other)?;
            }
            left_in_window = left_in_window.saturating_sub(1);
            counts.rows += 1;
            let key = id_key(entry.id());
            let line = entry.line();
            if let Some(earlier) = repeats.seen_before(key, &entry) {
                let bad = duplicate(entry, manifest, earlier);
                writer
                    .write(&bad_row_result(bad, std::time::Instant::now()))
                    .map_err(std::io::Error::other)?;
                continue;
            }
            // A row that does not parse now is failed now, whatever an earlier line says.
            let row = match entry {
                Entry::Bad(bad) => {
                    writer
                        .write(&bad_row_result(bad, std::time::Instant::now()))
                        .map_err(std::io::Error::other)?;
                    continue;
                }
                Entry::Row(row) => row,
            };
            let copied = match index.choose(key, row_digests(&row)) {
                Some([digest, value]) => {
                    let record = lines
                        .read(value, Some(line))
                        .map_err(std::io::Error::other)?;
                    if record.is_some() && Lines::is_ok(value) {
                        taken.push([key, digest]).map_err(std::io::Error::other)?;
                    }
                    record
                }
                None => None,
            };
            match copied {
                Some(record) => writer.write_raw(&record).map_err(std::io::Error::other)?,
                None => {
                    counts.not_attempted += 1;
                    let result = not_attempted(Entry::Row(row), stop_reason);
                    writer.write(&result).map_err(std::io::Error::other)?;
                }
            }
        }
        writer.flush()?;
        // The side file is replaced before the new results file replaces the old one: a
        // crash in between leaves a line in both files, never in neither.
        crate::output::atomic::atomic_rewrite(&side, |file| {
            let mut writer = ResultsWriter::with_format(file, extra, true, format, bom)
                .map_err(std::io::Error::other)?;
            counts.orphaned =
                all_lines.orphans(&mut taken, spill::PER_PASS, |value| {
                    match lines.read(value, None).map_err(std::io::Error::other)? {
                        Some(record) => writer.write_raw(&record).map_err(std::io::Error::other),
                        None => Ok(()),
                    }
                })?;
            writer.flush()
        })
    })
    .map_err(CompactError::Io)?;
    if counts.orphaned == 0 {
        // Only now that the results file holds every line it had.
        if let Err(err) = std::fs::remove_file(&side) {
            tracing::warn!("cannot remove {}: {err}", side.display());
        }
    } else {
        tracing::warn!(
            "{} finished row(s) that no row of manifest {} asks for now (removed or changed \
             rows) are kept in {}; a run whose manifest asks for them again takes them from \
             there",
            counts.orphaned,
            manifest.display(),
            side.display()
        );
    }
    counts.manifest_changed = &before != started || ManifestStamp::of(manifest) != before;
    if counts.manifest_changed {
        tracing::warn!(
            "manifest {} changed during the run: the results now follow the manifest as it is \
             ({} rows); every finished row is kept, in {} or in {}",
            manifest.display(),
            counts.rows,
            out.display(),
            side.display()
        );
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::results::{RowResult, Status};

    fn result(id: &str, status: Status, response: &str) -> RowResult {
        RowResult {
            id: id.into(),
            model: "m".into(),
            file: "f.png".into(),
            prompt: "p".into(),
            status,
            response: response.into(),
            ..RowResult::default()
        }
    }

    /// Compacts a copy of `results` against `manifest` in windows of `window` rows and
    /// returns (id, status, response) per line.
    fn compacted(
        dir: &Path,
        window: usize,
        results: &[RowResult],
    ) -> Vec<(String, String, String)> {
        let out = dir.join(format!("out-{window}.csv"));
        let (mut writer, _) = resume::open_for_append(&out, &[], true, false).unwrap();
        for r in results {
            writer.write(r).unwrap();
        }
        writer.flush().unwrap();
        drop(writer);
        let duplicates = crate::manifest::scan_ids(&dir.join("m.csv"))
            .unwrap()
            .duplicates;
        let counts = compact(
            &dir.join("m.csv"),
            &out,
            &[],
            "stopped",
            &duplicates,
            &ManifestStamp::of(&dir.join("m.csv")),
            window,
            None,
        )
        .unwrap();
        assert_eq!(counts.rows, 8);
        let mut reader = csv::Reader::from_path(&out).unwrap();
        reader
            .records()
            .map(|r| {
                let r = r.unwrap();
                (r[0].to_owned(), r[5].to_owned(), r[6].to_owned())
            })
            .collect()
    }

    #[test]
    fn windows_of_any_size_give_one_line_per_row_in_manifest_order() {
        let dir = tempfile::tempdir().unwrap();
        let rows: String = ["a", "b", "c", "d", "e", "b", "g", "h"]
            .iter()
            .map(|id| format!("{id},m,f.png,p\n"))
            .collect();
        std::fs::write(
            dir.path().join("m.csv"),
            format!("id,model,file,prompt\n{rows}"),
        )
        .unwrap();
        // Lines in completion order, across several runs: h's ok line before its later
        // failure, a failed then ok, and no line at all for d and g.
        let results = [
            result("h", Status::Ok, "h ok"),
            result("c", Status::Ok, "c ok"),
            result("a", Status::Failed, "a failed"),
            result("e", Status::Ok, "e ok"),
            result("b", Status::Ok, "b ok"),
            result("a", Status::Ok, "a ok"),
            result("h", Status::Failed, "h failed later"),
        ];
        let want: Vec<(String, String, String)> = [
            ("a", "ok", "a ok"),
            ("b", "ok", "b ok"),
            ("c", "ok", "c ok"),
            ("d", "failed", ""),
            ("e", "ok", "e ok"),
            ("b", "failed", ""),
            ("g", "failed", ""),
            ("h", "ok", "h ok"),
        ]
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
        // One window; windows of three rows with the line list spilled to a temp file; and
        // windows of one row.
        for window in [1000, 3, 1] {
            assert_eq!(
                compacted(dir.path(), window, &results),
                want,
                "window {window}"
            );
        }
    }
}
