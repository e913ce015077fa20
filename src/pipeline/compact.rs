//! The end of a run: rewrite the results file in manifest order with exactly one line per
//! manifest row. Rows with no line yet (never dispatched, or in flight when the run was
//! stopped) get a `not_attempted` line, so the file always accounts for every row and a rerun
//! knows what is left.

use std::collections::HashSet;
use std::path::Path;

use crate::manifest::{Entry, Manifest};
use crate::output::ResultsWriter;
use crate::output::resume::{self, LineIndex, LineReader, id_key};
use crate::spill;

use super::not_attempted;
use super::reader::{Repeats, duplicate};
use super::worker::bad_row_result;

/// Manifest rows per window: the line index of one window stays near 1 MiB, whatever the
/// length of the manifest. A manifest that fits one window is compacted in one pass.
pub const WINDOW: usize = spill::PER_PASS;

/// Lines written, by kind.
#[derive(Debug, Default, Clone, Copy)]
pub struct Compacted {
    pub rows: u64,
    pub not_attempted: u64,
}

/// Rewrites `out` in manifest order, reading `window` manifest rows at a time (see
/// [`WINDOW`]).
pub fn compact(
    manifest: &Path,
    out: &Path,
    extra: &[String],
    stop_reason: &str,
    duplicates: &HashSet<u64>,
    window: usize,
) -> Result<Compacted, CompactError> {
    let mut all_lines = resume::index_lines(out, spill::IN_MEMORY.min(window))?;
    let mut lines = LineReader::open(out)?;
    // Two readers of the manifest: `ahead` takes the ids of the next window of rows, for
    // which the line index is built; `entries` then writes that window's rows.
    let mut ahead = Manifest::open(manifest)?;
    let entries = Manifest::open(manifest)?;
    let mut counts = Compacted::default();
    let mut repeats = Repeats::new(duplicates);
    crate::output::atomic::atomic_rewrite(out, |file| {
        let mut writer = ResultsWriter::new(file, extra, true).map_err(std::io::Error::other)?;
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
            left_in_window -= 1;
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
        let (mut writer, _) = resume::open_for_append(&out, &[], true).unwrap();
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
            window,
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
