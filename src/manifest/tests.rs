use super::*;

fn read(text: &[u8]) -> Result<(Vec<String>, Vec<Entry>), ManifestError> {
    let m = Manifest::from_reader(text, Path::new("m.csv"), PathBuf::from("/base"))?;
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
    assert_eq!(first.source, Source::Local("/base/img/cat.png".into()));
    assert_eq!(first.extra, vec!["7"]);
    let Entry::Row(second) = &rows[1] else {
        panic!("{:?}", rows[1])
    };
    assert_eq!(second.line, 3);
    assert_eq!(
        second.id,
        derived_id(
            "qwen-vl-max",
            "oss://dashscope-instant/x/y.png",
            "Describe",
            None
        )
    );
    assert!(matches!(second.source, Source::Oss(_)));
}

#[test]
fn line_numbers_count_physical_lines_of_multiline_fields() {
    let (_, rows) = read(b"model,file,prompt\nm,a.png,\"two\nlines\"\nm,b.png,p\n").unwrap();
    assert_eq!(rows[0].line(), 2);
    assert_eq!(rows[1].line(), 4);
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

proptest::proptest! {
    /// Arbitrary bytes never panic the reader, and every entry it yields names a line.
    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let mut text = b"model,file,prompt,extra\n".to_vec();
        text.extend_from_slice(&body);
        let (_, rows) = read(&text).unwrap();
        for entry in rows {
            proptest::prop_assert!(entry.line() >= 2);
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
    let derived = id_key(&derived_id("m", "x.png", "p", None));
    // In memory, and spilled to a temp file and checked in three slices: the same answer.
    for (in_memory, per_pass) in [(100, 100), (2, 100), (2, 2)] {
        let scan = scan_ids_in(&path, in_memory, per_pass).unwrap();
        assert_eq!(scan.rows, 5);
        assert_eq!(
            scan.duplicates,
            [id_key("a"), derived].into_iter().collect(),
            "in_memory {in_memory}"
        );
    }
}
