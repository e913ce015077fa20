use super::*;

const NOW: i64 = 1_800_000_000;

#[test]
fn records_survive_a_reopen_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let sha = [7u8; 32];
    let cache = UploadCache::open(dir.path(), "acct1", NOW);
    cache.record("m", &sha, "oss://d/x.png", NOW);
    drop(cache);
    let cache = UploadCache::open(dir.path(), "acct1", NOW + 60);
    assert_eq!(
        cache.lookup("m", &sha, NOW + 60).as_deref(),
        Some("oss://d/x.png")
    );
    assert_eq!(cache.lookup("other-model", &sha, NOW + 60), None);
    let late = NOW + (OSS_LIFETIME - REUSE_MARGIN).as_secs() as i64;
    assert_eq!(
        cache.lookup("m", &sha, late),
        None,
        "too close to the 48 h end"
    );
    let other = UploadCache::open(dir.path(), "acct2", NOW);
    assert_eq!(other.lookup("m", &sha, NOW), None, "bound to the account");
}

#[test]
fn corrupt_and_truncated_lines_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let sha = [1u8; 32];
    let cache = UploadCache::open(dir.path(), "a", NOW);
    cache.record("m", &sha, "oss://d/1.png", NOW);
    drop(cache);
    let path = dir.path().join(FILE_NAME);
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"garbage\n\xff\xfe\n{\"account\":\"a\",\"mod");
    std::fs::write(&path, text).unwrap();
    let cache = UploadCache::open(dir.path(), "a", NOW);
    assert!(cache.lookup("m", &sha, NOW).is_some());
    cache.compact(NOW).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
}

#[test]
fn a_record_after_a_crash_mid_append_is_not_glued_to_the_partial_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let cache = UploadCache::open(dir.path(), "a", NOW);
    cache.record("m", &[1; 32], "oss://d/1.png", NOW);
    drop(cache);
    let mut text = std::fs::read(&path).unwrap();
    text.extend_from_slice(b"{\"account\":\"a\",\"mod");
    std::fs::write(&path, text).unwrap();

    let cache = UploadCache::open(dir.path(), "a", NOW);
    cache.record("m", &[2; 32], "oss://d/2.png", NOW);
    drop(cache);
    let cache = UploadCache::open(dir.path(), "a", NOW);
    assert!(cache.lookup("m", &[1; 32], NOW).is_some());
    assert_eq!(
        cache.lookup("m", &[2; 32], NOW).as_deref(),
        Some("oss://d/2.png"),
        "the record after the partial line"
    );
}

/// Lines of the cache file that parse.
fn records(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
    text.lines()
        .filter(|l| parse(l.as_bytes()).is_some())
        .map(|l| serde_json::from_str::<Record>(l).unwrap().url)
        .collect()
}

#[test]
fn compaction_waits_for_the_last_run_sharing_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let expired = NOW - OSS_LIFETIME.as_secs() as i64;
    let old = UploadCache::open(dir.path(), "a", expired);
    old.record("m", &[9; 32], "oss://d/expired.png", expired);
    drop(old);

    // Two runs with different results files, one state folder.
    let a = UploadCache::open(dir.path(), "a", NOW);
    let b = UploadCache::open(dir.path(), "b", NOW);
    a.record("m", &[1; 32], "oss://d/a1.png", NOW);
    b.record("m", &[2; 32], "oss://d/b1.png", NOW);
    a.compact(NOW).unwrap();
    assert!(
        records(dir.path()).contains(&"oss://d/expired.png".to_owned()),
        "skipped while b has the cache open"
    );
    // Had a replaced the file, this would go to a deleted inode.
    b.record("m", &[3; 32], "oss://d/b2.png", NOW);
    drop(b);

    // Alone now: a compacts, and keeps appending to the new file.
    a.compact(NOW).unwrap();
    a.record("m", &[4; 32], "oss://d/a2.png", NOW);
    drop(a);
    // Sorted: each run's records are in its order, but two runs' appender threads
    // interleave as they please.
    let mut kept = records(dir.path());
    kept.sort();
    assert_eq!(
        kept,
        [
            "oss://d/a1.png",
            "oss://d/a2.png",
            "oss://d/b1.png",
            "oss://d/b2.png"
        ]
    );
}

#[test]
fn a_stale_compaction_temp_file_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join(".uploads.jsonl.dashbatch-Ab12Cd.tmp");
    std::fs::write(&stale, "half").unwrap();
    let cache = UploadCache::open(dir.path(), "a", NOW);
    assert!(!stale.exists());
    drop(cache);
}

#[test]
fn forget_only_drops_the_url_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let sha = [2u8; 32];
    let cache = UploadCache::open(dir.path(), "a", NOW);
    cache.record("m", &sha, "oss://new", NOW);
    cache.forget("m", &sha, "oss://old");
    assert!(cache.lookup("m", &sha, NOW).is_some());
    cache.forget("m", &sha, "oss://new");
    assert!(cache.lookup("m", &sha, NOW).is_none());
}
