use super::*;
use scan::scan_ids_in;
use std::io::Cursor;

fn read(text: &[u8]) -> Result<(Vec<String>, Vec<Entry>), ManifestError> {
    let m = Manifest::from_reader(
        Cursor::new(text),
        Path::new("m.csv"),
        PathBuf::from("/base"),
    )?;
    let extra = m.extra_columns();
    Ok((extra, m.collect()))
}

fn bad(entry: &Entry) -> &BadRow {
    match entry {
        Entry::Bad(b) => b,
        Entry::Row(r) => panic!("expected a bad row, got {r:?}"),
    }
}

#[test]
fn reads_rows_with_optional_and_extra_columns() {
    let (extra, rows) = read(
        b"id,model,file,prompt,system,batch\n\
          a1,qwen-vl-plus,img/cat.png,\"What, is this?\",Be brief,7\n\
          ,qwen-vl-max,oss://dashscope-instant/x/y.png,Describe,,8\n",
    )
    .unwrap();
    assert_eq!(extra, vec!["batch"]);
    let Entry::Row(first) = &rows[0] else {
        panic!("{:?}", rows[0])
    };
    assert_eq!(first.line, 2);
    assert_eq!(first.id, "a1");
    assert_eq!(first.prompt, "What, is this?");
    assert_eq!(first.system.as_deref(), Some("Be brief"));
    assert_eq!(
        first.media[0].source,
        Source::Local("/base/img/cat.png".into())
    );
    assert_eq!(first.extra, vec!["7"]);
    let Entry::Row(second) = &rows[1] else {
        panic!("{:?}", rows[1])
    };
    assert_eq!(second.line, 3);
    assert_eq!(
        second.id,
        derived_id(
            "qwen-vl-max",
            ["oss://dashscope-instant/x/y.png"],
            "Describe",
            None
        )
    );
    assert!(matches!(second.media[0].source, Source::Oss(_)));
}

#[test]
fn line_numbers_count_physical_lines_of_multiline_fields() {
    let (_, rows) = read(b"model,file,prompt\nm,a.png,\"two\nlines\"\nm,b.png,p\n").unwrap();
    assert_eq!(rows[0].line(), 2);
    assert_eq!(rows[1].line(), 4);
}

#[test]
fn line_numbers_are_physical_for_crlf_lone_cr_and_blank_lines() {
    for (text, want) in [
        // Excel's CSV: CRLF throughout.
        (
            &b"model,file,prompt\r\nm,a.png,p\r\nm,b.png,q\r\n"[..],
            &[2, 3][..],
        ),
        // Old Mac line ends.
        (b"model,file,prompt\rm,a.png,p\rm,b.png,q", &[2, 3]),
        // Blank lines before, between and after rows, in all three kinds.
        (
            b"model,file,prompt\n\nm,a.png,p\n\n\nm,b.png,q\n\n",
            &[3, 6],
        ),
        (
            b"model,file,prompt\r\n\r\nm,a.png,p\r\n\r\r\nm,b.png,q\r\n",
            &[3, 6],
        ),
        // A quoted field with CRLF and a lone CR inside, then a blank line.
        (
            b"model,file,prompt\r\nm,a.png,\"two\r\nlines\rand\r\n\"\r\n\r\nm,b.png,p\r\n",
            &[2, 7],
        ),
    ] {
        let (_, rows) = read(text).unwrap();
        let lines: Vec<u64> = rows.iter().map(Entry::line).collect();
        assert_eq!(lines, want, "{:?}", String::from_utf8_lossy(text));
        assert!(rows.iter().all(|e| matches!(e, Entry::Row(_))), "{rows:?}");
    }
}

#[test]
fn a_bom_is_dropped_however_the_file_is_read() {
    // csv-core drops a BOM only if its first read holds all three bytes. Read one byte at a
    // time, the BOM would otherwise make `"model"` an unquoted field with quotes in its name.
    let text = b"\xef\xbb\xbf\"model\",file,prompt\r\nm,a.png,p\r\n\r\nm,b.png,p\r\n";
    for size in [1, 2, 3, 4, 8192] {
        let (rows, records) = read_chunked(text, size);
        let lines: Vec<u64> = rows.iter().map(Entry::line).collect();
        assert_eq!(lines, [2, 4], "chunks of {size}");
        assert!(rows.iter().all(|e| matches!(e, Entry::Row(_))), "{rows:?}");
        assert_eq!(records, 3);
    }
}

#[test]
fn a_quote_never_closed_fails_its_row_instead_of_swallowing_the_rest() {
    let (_, rows) = read(
        b"id,model,file,prompt\n\
          z,m,w.png,\"fine\"\n\
          a,m,x.png,\"Say \"\"hi\n\
          b,m,y.png,p\n\
          c,m,z.png,p\n",
    )
    .unwrap();
    // Issue 12: the two rows after the stray quote used to vanish into its field.
    let lines: Vec<u64> = rows.iter().map(Entry::line).collect();
    assert_eq!(lines, [2, 3, 4, 5], "{rows:?}");
    assert!(matches!(rows[0], Entry::Row(_)), "{:?}", rows[0]);
    let b = bad(&rows[1]);
    // The failed row keeps its cells as far as its own line goes.
    assert_eq!(
        (
            b.line,
            b.code,
            b.id.as_str(),
            b.file.as_str(),
            b.prompt.as_str()
        ),
        (3, FailureCode::BadRow, "a", "x.png", "Say \"hi")
    );
    assert_eq!(
        b.message,
        "m.csv, line 3: a quote opened on line 3 never closes, so CSV cannot tell where this \
         row ends; it fails and reading goes on at line 4. Close the quote, or double the \" \
         if it is part of the text"
    );
    for (entry, id) in rows[2..].iter().zip(["b", "c"]) {
        let Entry::Row(row) = entry else {
            panic!("{entry:?}")
        };
        assert_eq!((row.id.as_str(), row.prompt.as_str()), (id, "p"));
    }

    // The quote that opens may sit on a later line than the record's start; CRLF, a BOM and
    // any chunking give the same rows. (A second stray quote would close the first: CSV
    // cannot tell those apart from one field over several lines.)
    for size in [1, 2, 3, 7, 64] {
        let text = b"\xef\xbb\xbfmodel,file,prompt\r\nm,\"x\r\ny.png\",\"Say\r\nm,y.png,p\r\n\r\nm,w.png,r";
        let (rows, _) = read_chunked(text, size);
        let lines: Vec<u64> = rows.iter().map(Entry::line).collect();
        assert_eq!(lines, [2, 4, 6], "chunks of {size}: {rows:?}");
        let b = bad(&rows[0]);
        assert!(b.message.contains("opened on line 3"), "{}", b.message);
        assert!(b.message.contains("goes on at line 4"), "{}", b.message);
        assert!(
            rows[1..].iter().all(|e| matches!(e, Entry::Row(_))),
            "{rows:?}"
        );
    }

    // A quote opened on the last line: nothing to read on.
    let (_, rows) = read(b"model,file,prompt\nm,a.png,\"p\n").unwrap();
    assert_eq!(rows.len(), 1);
    assert!(bad(&rows[0]).message.contains("it is the last line"));

    // Closed at the very end, with no line end after it: a good row.
    let (_, rows) = read(b"model,file,prompt\nm,a.png,\"p \"\"q\"\"\"").unwrap();
    let Entry::Row(row) = &rows[0] else {
        panic!("{:?}", rows[0])
    };
    assert_eq!(row.prompt, "p \"q\"");
}

#[test]
fn a_quote_never_closed_in_the_header_is_a_manifest_error() {
    let err = read(b"model,file,\"prompt\nm,a.png,p\n").unwrap_err();
    assert!(
        matches!(err, ManifestError::UnclosedHeader { line: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("m.csv, line 1"), "{err}");
}

#[test]
fn a_pass_through_column_named_like_a_results_column_is_refused() {
    for (header, column) in [
        ("model,file,prompt,status\n", "status"),
        ("id,model,file,prompt,batch,Line\n", "Line"),
    ] {
        let err = read(header.as_bytes()).unwrap_err();
        assert!(matches!(err, ManifestError::ResultsColumn { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("manifest m.csv, line 1: column {column:?}"))
                && msg.contains("rename the column"),
            "{msg}"
        );
    }
    // The manifest's own columns share names with results columns, and are no pass-through.
    let (extra, _) = read(b"id,Model,file,prompt,system,batch\n").unwrap();
    assert_eq!(extra, ["batch"]);
}

#[test]
fn the_file_column_is_trimmed() {
    let (_, rows) = read(
        b"model,file,prompt\n\
          m, a.jpg ,p\n\
          m,\" https://example.com/a.png\",p\n\
          m,\" \t\",p\n",
    )
    .unwrap();
    let Entry::Row(local) = &rows[0] else {
        panic!("{:?}", rows[0])
    };
    assert_eq!(local.file(), "a.jpg");
    assert_eq!(local.media[0].source, Source::Local("/base/a.jpg".into()));
    assert_eq!(local.id, derived_id("m", ["a.jpg"], "p", None));
    let Entry::Row(url) = &rows[1] else {
        panic!("{:?}", rows[1])
    };
    assert_eq!(
        url.media[0].source,
        Source::Http("https://example.com/a.png".into())
    );
    assert!(bad(&rows[2]).message.contains("file column is empty"));
}

#[test]
fn missing_required_column_is_a_manifest_error() {
    let err = read(b"model,path,prompt\nm,a.png,p\n").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("m.csv") && msg.contains("file"), "{msg}");
}

#[test]
fn empty_manifest_has_no_header() {
    assert!(matches!(read(b""), Err(ManifestError::NoHeader { .. })));
}

#[test]
fn header_only_manifest_has_no_rows() {
    let (_, rows) = read(b"model,file,prompt\n").unwrap();
    assert!(rows.is_empty());
}

#[test]
fn bad_rows_fail_alone_and_name_their_line() {
    let (_, rows) = read(
        b"model,file,prompt\n\
          m,a.png,ok\n\
          m,a.png\n\
          m,b.png,\n\
          ,c.png,p\n\
          m,\"d\0.png\",p\n\
          m,\xff.png,p\n\
          m,e.png,fine\n",
    )
    .unwrap();
    assert_eq!(rows.len(), 7);
    assert!(matches!(rows[0], Entry::Row(_)));
    for (entry, line, needle) in [
        (&rows[1], 3, "expected 3 fields"),
        (&rows[2], 4, "prompt column is empty"),
        (&rows[3], 5, "model column is empty"),
        (&rows[4], 6, "NUL"),
        (&rows[5], 7, "not valid UTF-8"),
    ] {
        let b = bad(entry);
        assert_eq!(b.line, line);
        assert!(
            b.message.contains(&format!("m.csv, line {line}")),
            "{}",
            b.message
        );
        assert!(b.message.contains(needle), "{}", b.message);
    }
    assert!(matches!(rows[6], Entry::Row(_)));
}

#[test]
fn header_names_are_case_insensitive_and_bom_tolerant() {
    let (_, rows) = read(b"\xef\xbb\xbfModel,FILE,Prompt\nm,a.png,p\n").unwrap();
    assert!(matches!(rows[0], Entry::Row(_)));
}

#[test]
fn duplicate_header_column_is_rejected() {
    assert!(matches!(
        read(b"model,file,prompt,file\n"),
        Err(ManifestError::DuplicateColumn { .. })
    ));
}

#[test]
fn a_header_of_100k_columns_opens_in_linear_time() {
    // The check used to compare each name with every one before it: 5e9 comparisons here,
    // minutes in a debug build. Linear, it takes a fraction of a second; the bound is a
    // hundred times that, so only the quadratic check can miss it.
    let mut header = String::from("model,file,prompt");
    for i in 0..100_000 {
        header.push_str(&format!(",c{i}"));
    }
    let duplicated = format!("{header},C99999\n");
    header.push('\n');
    let started = std::time::Instant::now();
    let (extra, _) = read(header.as_bytes()).unwrap();
    assert_eq!(extra.len(), 100_000);
    let err = read(duplicated.as_bytes()).unwrap_err();
    assert!(matches!(&err, ManifestError::DuplicateColumn { column, .. } if column == "C99999"));
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");
}

/// A reader that hands out at most `size` bytes per read, as a pipe or a slow disk may.
struct Chunked<'a> {
    data: Cursor<&'a [u8]>,
    size: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.size);
        self.data.read(&mut buf[..n])
    }
}

impl Seek for Chunked<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.data.seek(pos)
    }
}

/// Reads `text` in chunks of `size` bytes; also returns how many records (header included)
/// the line counter saw, which must agree with the csv reader.
fn read_chunked(text: &[u8], size: usize) -> (Vec<Entry>, u64) {
    let reader = Chunked {
        data: Cursor::new(text),
        size,
    };
    let mut m = Manifest::from_reader(reader, Path::new("m.csv"), PathBuf::from("/base")).unwrap();
    let entries: Vec<Entry> = m.by_ref().collect();
    (entries, m.reader.get_ref().records())
}

/// Line ends a manifest may use; a lone `\r` ends a record for the csv reader too.
const ENDS: [&str; 3] = ["\n", "\r\n", "\r"];

/// Appends line end `kind` to `text` and counts it. A `\n` right after a `\r` would merge
/// with it into one `\r\n`, so there it is written as `\r\n`: still one more line.
fn push_end(text: &mut Vec<u8>, kind: usize, line: &mut u64) {
    let end = if ENDS[kind] == "\n" && text.last() == Some(&b'\r') {
        "\r\n"
    } else {
        ENDS[kind]
    };
    text.extend_from_slice(end.as_bytes());
    *line += 1;
}

/// A field: pieces of text, or (with `Err(kind)`) line ends inside it.
type Field = Vec<Result<String, usize>>;

fn field() -> impl proptest::strategy::Strategy<Value = (Field, bool)> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        3 => "[a-z ,\"]{0,4}".prop_map(Ok),
        1 => (0..3usize).prop_map(Err),
    ];
    (proptest::collection::vec(piece, 0..4), any::<bool>())
}

proptest::proptest! {
    /// Arbitrary bytes never panic the reader; every entry names a line after the header's,
    /// later than the one before; and the line counter finds the records the csv reader finds.
    #[test]
    fn arbitrary_bytes_never_panic(
        body in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(b"\",\r\n\"a".to_vec()),
            ],
            0..512,
        ),
        size in 1..64usize,
    ) {
        let mut text = b"model,file,prompt,extra\n".to_vec();
        text.extend_from_slice(&body);
        let (rows, records) = read_chunked(&text, size);
        let mut last = 1;
        for entry in &rows {
            proptest::prop_assert!(entry.line() > last, "{} after {last}", entry.line());
            last = entry.line();
        }
        proptest::prop_assert_eq!(records, rows.len() as u64 + 1);
    }

    /// A manifest built from random rows, with random line ends, blank lines, quoted fields
    /// spanning lines and a BOM, read in random chunk sizes: every entry names the line its
    /// row starts on, counted while building the file.
    #[test]
    fn every_entry_names_the_line_its_row_starts_on(
        bom in proptest::bool::ANY,
        header_end in 0..3usize,
        rows in proptest::collection::vec(
            (
                proptest::collection::vec(0..3usize, 0..3),
                [field(), field(), field()],
                0..3usize,
            ),
            0..12,
        ),
        last_end in proptest::bool::ANY,
        size in 1..64usize,
    ) {
        let mut text = Vec::new();
        if bom {
            text.extend_from_slice(b"\xef\xbb\xbf");
        }
        let mut line = 1;
        text.extend_from_slice(b"model,file,prompt");
        push_end(&mut text, header_end, &mut line);
        let mut expected = Vec::new();
        for (i, (blanks, fields, end)) in rows.iter().enumerate() {
            for &blank in blanks {
                push_end(&mut text, blank, &mut line);
            }
            expected.push(line);
            for (f, (pieces, quote)) in fields.iter().enumerate() {
                if f > 0 {
                    text.push(b',');
                }
                let special = pieces.iter().any(|p| match p {
                    Ok(s) => s.contains([',', '"']),
                    Err(_) => true,
                });
                let quote = *quote || special;
                if quote {
                    text.push(b'"');
                }
                for piece in pieces {
                    match piece {
                        Ok(s) => text.extend_from_slice(s.replace('"', "\"\"").as_bytes()),
                        Err(kind) => push_end(&mut text, *kind, &mut line),
                    }
                }
                if quote {
                    text.push(b'"');
                }
            }
            if i + 1 < rows.len() || last_end {
                push_end(&mut text, *end, &mut line);
            }
        }
        let (entries, _) = read_chunked(&text, size);
        let lines: Vec<u64> = entries.iter().map(Entry::line).collect();
        proptest::prop_assert_eq!(lines, expected, "{:?}", String::from_utf8_lossy(&text));
        for entry in &entries {
            if let Entry::Bad(b) = entry {
                proptest::prop_assert!(!b.message.contains("never closes"), "{}", b.message);
            }
        }
    }
}

#[test]
fn the_id_scan_counts_rows_and_finds_repeated_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.csv");
    std::fs::write(
        &path,
        "id,model,file,prompt\na,m,x.png,p\nb,m,y.png,p\na,m,z.png,q\n,m,x.png,p\n,m,x.png,p\n",
    )
    .unwrap();
    let derived = id_key(&derived_id("m", ["x.png"], "p", None));
    // In memory, and spilled to a temp file and checked in three slices: the same answer.
    for (in_memory, per_pass) in [(100, 100), (2, 100), (2, 2)] {
        let scan = scan_ids_in(&path, None, in_memory, per_pass).unwrap();
        assert_eq!((scan.rows, scan.owned), (5, 5));
        assert_eq!(
            scan.duplicates,
            [id_key("a"), derived].into_iter().collect(),
            "in_memory {in_memory}"
        );
    }
}

/// Issue 12: under `--shard K/N` the bar's total is the shard's rows, not the manifest's.
#[test]
fn the_id_scan_counts_the_rows_of_a_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.csv");
    let mut text = String::from("id,model,file,prompt\n");
    for i in 0..60 {
        text.push_str(&format!("r{i},m,x.png,p\n"));
    }
    std::fs::write(&path, text).unwrap();
    let owned: Vec<u64> = (1..=3)
        .map(|k| {
            let shard: Shard = format!("{k}/3").parse().unwrap();
            let scan = scan_ids_of(&path, Some(shard)).unwrap();
            assert_eq!(scan.rows, 60);
            let by_hand = (0..60).filter(|i| shard.owns(&format!("r{i}"))).count();
            assert_eq!(scan.owned, by_hand as u64);
            scan.owned
        })
        .collect();
    assert_eq!(owned.iter().sum::<u64>(), 60);
    assert!(owned.iter().all(|&n| n < 60), "{owned:?}");
}

proptest::proptest! {
    /// Wholly arbitrary bytes, header included, read in arbitrary chunks: the reader either
    /// refuses the file with a `ManifestError` or yields entries, and never panics. Headers
    /// that name the required columns are common enough to reach the rows.
    #[test]
    fn arbitrary_files_are_refused_or_read_never_panic(
        head in proptest::sample::select(vec![&b""[..], b"model,file,prompt", b"id,prompt,file,model,x"]),
        body in proptest::collection::vec(
            proptest::prop_oneof![
                proptest::num::u8::ANY,
                proptest::sample::select(b"\",\r\n\xef\xbb\xbfmodel".to_vec()),
            ],
            0..512,
        ),
        size in 1..64usize,
    ) {
        let mut text = head.to_vec();
        text.extend_from_slice(&body);
        let reader = Chunked { data: Cursor::new(&text), size };
        if let Ok(manifest) = Manifest::from_reader(reader, Path::new("m.csv"), PathBuf::from("/b")) {
            for entry in manifest {
                proptest::prop_assert!(entry.line() >= 2);
            }
        }
    }
}
