use super::*;
use crate::output::atomic::atomic_rewrite;
use crate::output::results::{RowResult, Status};
use std::io::Write;

fn row(id: &str, status: Status) -> RowResult {
    RowResult {
        id: id.into(),
        line: 2,
        model: "m".into(),
        file: "f.png".into(),
        prompt: "multi\nline, \"quoted\"".into(),
        status,
        response: "r".into(),
        attempts: 1,
        latency_ms: 1,
        finished_at: chrono::Utc::now(),
        ..RowResult::default()
    }
}

/// Whether `previous` holds an ok line for `id` (of any digest).
fn has_ok(previous: &Previous, id: &str) -> bool {
    previous.done.0.iter().any(|&(k, _)| k == id_key(id))
}

/// What the lines of [`row`] answer: they carry no digest, so the legacy one.
fn row_digest() -> [u64; 2] {
    let d = InputDigest::legacy("m", "f.png", "multi\nline, \"quoted\"").0;
    [d, d]
}

fn write(out: &Path, rows: &[RowResult]) {
    let (mut w, _) = open_for_append(out, &[], false, false).unwrap();
    for r in rows {
        w.write(r).unwrap();
    }
    w.flush().unwrap();
}

#[test]
fn ok_ids_are_remembered_and_a_cut_off_tail_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    write(&out, &[row("a", Status::Ok), row("b", Status::Failed)]);
    let good_len = std::fs::metadata(&out).unwrap().len();
    write(&out, &[row("c", Status::Ok)]);
    // A crash in the middle of writing c's line.
    let full = std::fs::read(&out).unwrap();
    std::fs::write(&out, &full[..full.len() - 5]).unwrap();

    let (_, previous) = open_for_append(&out, &[], false, false).unwrap();
    assert_eq!(previous.lines, 2);
    assert!(has_ok(&previous, "a"));
    assert!(!has_ok(&previous, "b"));
    assert!(!has_ok(&previous, "c"), "a cut-off line is not done");
    assert_eq!(std::fs::metadata(&out).unwrap().len(), good_len);
}

#[test]
fn a_results_file_with_other_columns_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    write(&out, &[row("a", Status::Ok)]);
    let Err(err) = open_for_append(&out, &["extra".into()], false, false) else {
        panic!("accepted a file with other columns")
    };
    assert!(err.to_string().contains("--fresh"), "{err}");
}

#[test]
fn fresh_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    write(&out, &[row("a", Status::Ok)]);
    let (_, previous) = open_for_append(&out, &[], true, false).unwrap();
    assert!(previous.done.is_empty());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 1);
}

#[test]
fn the_index_prefers_ok_lines_then_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    let mut ok_a = row("a", Status::Ok);
    ok_a.response = "the ok one".into();
    let mut late_b = row("b", Status::Failed);
    late_b.error_message = "later".into();
    write(
        &out,
        &[
            row("a", Status::Failed),
            ok_a,
            row("a", Status::Failed),
            row("b", Status::Failed),
            late_b,
        ],
    );
    // In memory, and spilled to a temp file after two lines: the same index.
    let mut keys = vec![id_key("a"), id_key("b")];
    keys.sort_unstable();
    let index = index_lines(&out, None, 100).unwrap().index(&keys).unwrap();
    let spilled = index_lines(&out, None, 2).unwrap().index(&keys).unwrap();
    assert_eq!(format!("{index:?}"), format!("{spilled:?}"));
    let only_b = index_lines(&out, None, 2)
        .unwrap()
        .index(&[id_key("b")])
        .unwrap();
    assert_eq!(only_b.len(), 2);
    assert_eq!(only_b.choose(id_key("a"), row_digest()), None);
    let mut lines = Lines::open(&out, None).unwrap();
    let [_, first_a] = index.choose(id_key("a"), row_digest()).unwrap();
    let first = lines.read(first_a, None).unwrap().unwrap();
    assert_eq!(&first[0], b"a", "the first data line is not the header");
    let a = lines.read(first_a, Some(7)).unwrap().unwrap();
    assert_eq!(&a[6], b"the ok one");
    assert_eq!(&a[1], b"7", "line column is rewritten");
    let [_, b] = index.choose(id_key("b"), row_digest()).unwrap();
    let b = lines.read(b, Some(3)).unwrap().unwrap();
    assert_eq!(&b[15], b"later");
    // An ok line that answers another question is not the row's: its last failed line is.
    let [_, other] = index.choose(id_key("a"), [1, 2]).unwrap();
    let other = lines.read(other, None).unwrap().unwrap();
    assert_eq!(&other[5], b"failed");
}

#[test]
fn atomic_rewrite_replaces_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    std::fs::write(&out, "old").unwrap();
    atomic_rewrite(&out, |f| f.write_all(b"new")).unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "new");
    let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(leftovers, 1, "no temp file left behind");
}

#[test]
fn a_malformed_line_in_the_middle_is_skipped_and_the_lines_after_it_count() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    let extra = vec!["note".to_owned()];
    let with_note = |id: &str, status| RowResult {
        extra: vec!["n".into()],
        ..row(id, status)
    };
    let (mut w, _) = open_for_append(&out, &extra, false, false).unwrap();
    w.write(&with_note("a", Status::Ok)).unwrap();
    w.flush().unwrap();
    drop(w);
    // Hand edits: a note line, and a line of x without the pass-through column.
    let mut bytes = std::fs::read(&out).unwrap();
    let note_at = bytes.len();
    bytes.extend_from_slice(b"checked by hand, b to redo\n");
    let mut short = ResultsWriter::new(Vec::new(), &[], false).unwrap();
    short.write(&row("x", Status::Ok)).unwrap();
    bytes.extend(short.into_inner().unwrap());
    std::fs::write(&out, bytes).unwrap();
    let (mut w, _) = open_for_append(&out, &extra, false, false).unwrap();
    w.write(&with_note("c", Status::Ok)).unwrap();
    w.write(&with_note("d", Status::Failed)).unwrap();
    w.flush().unwrap();
    drop(w);
    let len = std::fs::metadata(&out).unwrap().len();

    let mut warnings = Vec::new();
    let (previous, valid_len) = scan_with(&out, &extra, &mut |w| warnings.push(w)).unwrap();
    assert_eq!(valid_len, len, "nothing trimmed");
    assert_eq!(previous.lines, 3, "a, c and d");
    for id in ["a", "c"] {
        assert!(has_ok(&previous, id), "{id} after the bad lines");
    }
    assert!(!has_ok(&previous, "x"), "a short line is not done");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    // Physical lines: a's prompt spans lines 2 and 3.
    let at = format!("r.csv, line 4 (byte {note_at}): 2 field(s) where 22 were expected");
    assert!(warnings[0].contains(&at), "{warnings:?}");
    assert!(warnings[1].contains("r.csv, line 5 (byte "), "{warnings:?}");
    open_for_append(&out, &extra, false, false).unwrap();
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        len,
        "nothing trimmed"
    );

    // Compaction could not copy x's 20 fields under a 21-column header.
    let mut keys = vec![id_key("a"), id_key("x"), id_key("c")];
    keys.sort_unstable();
    let index = index_lines(&out, None, 100).unwrap().index(&keys).unwrap();
    assert_eq!(index.choose(id_key("x"), row_digest()), None);
    assert_eq!(index.len(), 2);
}

#[test]
fn a_complete_malformed_last_line_is_kept_but_a_cut_one_is_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    write(&out, &[row("a", Status::Ok)]);
    let good_len = std::fs::metadata(&out).unwrap().len();
    let mut bytes = std::fs::read(&out).unwrap();
    bytes.extend_from_slice(b"a note\n");
    std::fs::write(&out, &bytes).unwrap();
    let (_, previous) = open_for_append(&out, &[], false, false).unwrap();
    assert_eq!(previous.lines, 1);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        bytes,
        "a whole line is not a crash"
    );
    // The same line cut inside a quoted field, right after a newline in it.
    bytes.truncate(good_len as usize);
    bytes.extend_from_slice(b"b,2,m,f.png,\"multi\n");
    std::fs::write(&out, &bytes).unwrap();
    let (_, previous) = open_for_append(&out, &[], false, false).unwrap();
    assert_eq!(previous.lines, 1);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), good_len);
}

#[test]
fn stale_temp_files_of_this_output_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.csv");
    // The name atomic_rewrite uses is the one open_for_append looks for.
    let mut temp_name = None;
    atomic_rewrite(&out, |_| {
        for entry in std::fs::read_dir(dir.path())? {
            temp_name = Some(entry?.file_name());
        }
        Ok(())
    })
    .unwrap();
    let temp_name = temp_name.unwrap().into_string().unwrap();
    assert!(temp_name.starts_with(".r.csv.dashbatch-"), "{temp_name}");
    let stale = [temp_name.as_str(), ".r.csv.dashbatch-Zz09aB.tmp"];
    let others = [
        ".s.csv.dashbatch-Zz09aB.tmp",
        // The temp file of an output named `r.csv.dashbatch-x`.
        ".r.csv.dashbatch-x.dashbatch-Zz09aB.tmp",
        ".dashbatch-Zz09aB.tmp",
        "r.csv.dashbatch-Zz09aB.tmp",
    ];
    for name in stale.iter().chain(&others) {
        std::fs::write(dir.path().join(name), "half a file").unwrap();
    }
    open_for_append(&out, &[], false, false).unwrap();
    for name in stale {
        assert!(!dir.path().join(name).exists(), "{name} left");
    }
    for name in others {
        assert!(dir.path().join(name).exists(), "{name} removed");
    }
}
