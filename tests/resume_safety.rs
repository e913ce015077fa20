//! What a crash or a reader outside dashbatch sees of the files it rewrites: a results file
//! cut at any byte resumes from exactly the lines written in full, and atomic rewrites keep
//! the file mode readers rely on.

use std::path::Path;

use dashbatch::output::atomic::atomic_rewrite;
use dashbatch::output::results::resume::open_for_append;
use dashbatch::output::{RowResult, Status};

fn row(id: &str, prompt: &str, note: &str) -> RowResult {
    RowResult {
        id: id.into(),
        line: 2,
        model: "m".into(),
        file: "f.png".into(),
        prompt: prompt.into(),
        status: Status::Ok,
        response: "r".into(),
        attempts: 1,
        latency_ms: 1,
        finished_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        extra: vec![note.into()],
        ..RowResult::default()
    }
}

fn len(path: &Path) -> usize {
    std::fs::metadata(path).unwrap().len() as usize
}

/// (id, note) of every line, read by a strict csv reader (every line has the header's
/// field count), or as JSON objects with every key.
fn read_back(path: &Path) -> Vec<(String, String)> {
    if path.extension().is_some_and(|e| e == "jsonl") {
        let text = std::fs::read_to_string(path).unwrap();
        return text
            .lines()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{}: {e}: {line}", path.display()));
                assert_eq!(
                    v.as_object().unwrap().len(),
                    dashbatch::output::COLUMNS.len() + 1
                );
                (
                    v["id"].as_str().unwrap().into(),
                    v["note"].as_str().unwrap().into(),
                )
            })
            .collect();
    }
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .records()
        .map(|r| {
            let r = r.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // The pass-through column follows the fixed ones.
            let note = dashbatch::output::COLUMNS.len();
            (r[0].to_owned(), r[note].to_owned())
        })
        .collect()
}

/// In each format: CSV, CSV with a BOM (`--excel-bom`), JSONL (issue 12).
#[test]
fn a_results_file_cut_at_any_byte_resumes_from_the_lines_written_in_full() {
    for (name, bom) in [("csv", false), ("csv", true), ("jsonl", false)] {
        cut_at_any_byte(name, bom);
    }
}

fn cut_at_any_byte(extension: &str, bom: bool) {
    let dir = tempfile::tempdir().unwrap();
    let extra = vec!["note".to_owned()];
    // Newlines inside quoted fields, in the middle column `prompt` and in the last one, where
    // a cut just after the newline leaves a line with the right field count.
    let rows = [
        row("a", "one\nline", "a\nb"),
        row("b", "p", "ends in a newline\n"),
        row("c", "q \"quoted\"\r\nx", "\n"),
        row("d", "p", "plain"),
        row("e", "p", "two\n\nnewlines and \"\"\n"),
    ];
    let full = dir.path().join(format!("full.{extension}"));
    let (mut writer, _) = open_for_append(&full, &extra, true, bom).unwrap();
    writer.flush().unwrap();
    // Where the header and each line end.
    let mut ends = vec![len(&full)];
    for r in &rows {
        writer.write(r).unwrap();
        writer.flush().unwrap();
        ends.push(len(&full));
    }
    drop(writer);
    let bytes = std::fs::read(&full).unwrap();

    let out = dir.path().join(format!("r.{extension}"));
    for cut in 0..=bytes.len() {
        std::fs::write(&out, &bytes[..cut]).unwrap();
        let (mut writer, previous) = open_for_append(&out, &extra, false, bom)
            .unwrap_or_else(|e| panic!("{extension} (BOM: {bom}), cut at byte {cut}: {e}"));
        // A new header is only written out on the first flush.
        writer.flush().unwrap();
        // A cut inside the header starts the file over with a whole header.
        let kept = ends.iter().copied().filter(|&e| e <= cut).max();
        let kept = kept.unwrap_or(ends[0]);
        let whole_lines = ends.iter().filter(|&&e| e <= cut).count().saturating_sub(1);
        assert_eq!(
            String::from_utf8_lossy(&std::fs::read(&out).unwrap()),
            String::from_utf8_lossy(&bytes[..kept]),
            "{extension} (BOM: {bom}), cut at byte {cut}: the file keeps exactly the lines \
             written in full"
        );
        assert_eq!(
            previous.lines, whole_lines as u64,
            "{extension} (BOM: {bom}), cut at byte {cut}"
        );

        writer.write(&row("new", "p", "after\nthe cut")).unwrap();
        writer.flush().unwrap();
        drop(writer);
        let mut want: Vec<(String, String)> = rows[..whole_lines]
            .iter()
            .map(|r| (r.id.clone(), r.extra[0].clone()))
            .collect();
        want.push(("new".into(), "after\nthe cut".into()));
        assert_eq!(
            read_back(&out),
            want,
            "{extension} (BOM: {bom}), cut at byte {cut}, then one line appended"
        );
    }
}

#[cfg(unix)]
mod modes {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn an_atomic_rewrite_keeps_the_mode_of_the_file_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("metrics.prom");
        std::fs::write(&out, "old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
        atomic_rewrite(&out, |f| f.write_all(b"new")).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
        assert_eq!(mode(&out), 0o640);
    }

    #[test]
    fn an_atomic_rewrite_creates_a_file_with_the_mode_of_any_new_file() {
        let dir = tempfile::tempdir().unwrap();
        // What the umask makes of a new file, seen through a file created the plain way.
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let out = dir.path().join("summary.json");
        atomic_rewrite(&out, |f| f.write_all(b"{}")).unwrap();
        assert_eq!(mode(&out), mode(&plain));
    }
}
