//! Results formats (issue 12, item 9): `--format jsonl` (or a `.jsonl` OUT) and `--excel-bom`,
//! through the real binary against its in-process emulator: resume after a partial run,
//! compaction, the orphans file and `merge`, in JSONL as in CSV.

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::*;
use serde_json::Value;

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

fn job(rows: usize) -> Job {
    let mut job = Job::new();
    for i in 1..=rows {
        let file = job.file(&format!("f{i}.png"), format!("png {i}").as_bytes());
        job.row(&format!("r{i},qwen-vl-plus,{file},what is {i}?"));
    }
    job
}

/// Every line of a JSONL file as an object; panics on a line that is not one.
fn jsonl(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            _ => panic!("not a JSON object: {line}"),
        })
        .collect()
}

fn field<'a>(rows: &'a [serde_json::Map<String, Value>], id: &str, key: &str) -> &'a Value {
    &rows.iter().find(|r| r["id"] == id).expect(id)[key]
}

#[test]
fn a_jsonl_run_resumes_after_a_partial_run_and_a_torn_line() {
    let job = job(5);
    let manifest = job.manifest();
    let out = job.dir.path().join("manifest.results.jsonl");
    let run = |flags: &[&str]| {
        dashbatch()
            .args(["run", "--emulator", "-q", "--limit", "2"])
            .args(flags)
            .arg(&manifest)
            .assert()
            .code(0);
        jsonl(&out)
    };
    // --format picks the default OUT name.
    let first = run(&["--format", "jsonl"]);
    assert_eq!(first.len(), 5, "one line per row");
    // Keys in column order (serde_json's map, above, sorts them: read the text).
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.starts_with("{\"id\":\"r1\",\"line\":2,\"model\":\"qwen-vl-plus\",\"file\":"),
        "{text}"
    );
    let ok = &first[0];
    assert_eq!(
        (ok["id"].as_str(), ok["status"].as_str()),
        (Some("r1"), Some("ok"))
    );
    assert_eq!(ok["line"], 2, "numbers are numbers");
    assert!(
        ok["total_tokens"].is_u64() && ok["latency_ms"].is_u64(),
        "{ok:?}"
    );
    assert!(ok["input_digest"].as_str().is_some_and(|d| d.len() == 16));
    let left = &first[4];
    assert_eq!(left["error_code"], "not_attempted");
    assert!(
        left["total_tokens"].is_null(),
        "an empty number is null: {left:?}"
    );

    // A crash mid-line: the torn tail is cut, and r1, r2 are not asked again.
    let mut text = std::fs::read(&out).unwrap();
    text.extend_from_slice(b"{\"id\":\"r3\",\"line\":4,\"sta");
    std::fs::write(&out, text).unwrap();
    // No flag now: the extension says JSONL.
    dashbatch()
        .args(["run", "--emulator", "-q", "--limit", "2", "-o"])
        .arg(&out)
        .arg(&manifest)
        .assert()
        .code(0);
    let second = jsonl(&out);
    assert_eq!(second.len(), 5);
    let status: Vec<&str> = second
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(status, ["ok", "ok", "ok", "ok", "failed"]);
    for id in ["r1", "r2"] {
        assert_eq!(
            field(&second, id, "finished_at"),
            field(&first, id, "finished_at"),
            "{id} was resumed, not run again"
        );
    }

    // A row taken out of the manifest: its paid answer goes to the JSONL orphans file.
    let mut fewer = Job::new();
    for i in 2..=5 {
        let file = fewer.file(&format!("f{i}.png"), format!("png {i}").as_bytes());
        fewer.row(&format!("r{i},qwen-vl-plus,{file},what is {i}?"));
    }
    let fewer_manifest = fewer.manifest();
    std::fs::copy(&fewer_manifest, &manifest).unwrap();
    dashbatch()
        .args(["run", "--emulator", "-q", "-o"])
        .arg(&out)
        .arg(&manifest)
        .assert()
        .code(0);
    let orphans = jsonl(&job.dir.path().join("manifest.results.jsonl.orphans.jsonl"));
    assert_eq!(orphans.len(), 1);
    assert_eq!(orphans[0]["id"], "r1");
    assert_eq!(jsonl(&out).len(), 4);
}

#[test]
fn jsonl_shards_merge_into_jsonl_or_csv() {
    let job = job(6);
    let manifest = job.manifest();
    let shards: Vec<_> = (1..=2)
        .map(|k| {
            let out = job.dir.path().join(format!("shard-{k}.ndjson"));
            dashbatch()
                .args([
                    "run",
                    "--emulator",
                    "-q",
                    "--shard",
                    &format!("{k}/2"),
                    "-o",
                ])
                .arg(&out)
                .arg("--state-dir")
                .arg(job.dir.path().join(format!(".state-{k}")))
                .arg(&manifest)
                .assert()
                .code(0);
            out
        })
        .collect();
    let merged = job.dir.path().join("merged.jsonl");
    dashbatch()
        .arg("merge")
        .arg(&manifest)
        .args(&shards)
        .arg("-o")
        .arg(&merged)
        .assert()
        .code(0);
    let rows = jsonl(&merged);
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["r1", "r2", "r3", "r4", "r5", "r6"]);
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");

    let as_csv = job.dir.path().join("merged.csv");
    dashbatch()
        .arg("merge")
        .arg(&manifest)
        .args(&shards)
        .arg("-o")
        .arg(&as_csv)
        .assert()
        .code(0);
    let rows = results(&as_csv);
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
}

#[test]
fn excel_bom_starts_the_csv_once_and_resume_compaction_and_merge_read_past_it() {
    let job = job(3);
    let manifest = job.manifest();
    let out = job.output();
    let run = || {
        dashbatch()
            .args(["run", "--emulator", "-q", "--excel-bom", "--limit", "2"])
            .arg(&manifest)
            .assert()
            .code(0);
        std::fs::read(&out).unwrap()
    };
    let first = run();
    assert!(
        first.starts_with(b"\xef\xbb\xbfid,line,"),
        "{:?}",
        &first[..12]
    );
    let second = run();
    assert!(second.starts_with(b"\xef\xbb\xbfid,line,"));
    assert!(
        !second[3..].windows(3).any(|w| w == b"\xef\xbb\xbf"),
        "one BOM"
    );
    let rows = results(&out);
    let status: Vec<&str> = rows.iter().map(|r| r["status"].as_str()).collect();
    assert_eq!(
        status,
        ["ok", "ok", "ok"],
        "the second run resumed past the BOM"
    );

    let merged = job.dir.path().join("merged.csv");
    dashbatch()
        .arg("merge")
        .arg(&manifest)
        .arg(&out)
        .arg("-o")
        .arg(&merged)
        .assert()
        .code(0);
    assert_eq!(results(&merged).len(), 3);
}

#[test]
fn a_format_that_contradicts_out_or_a_bom_on_jsonl_is_refused() {
    let job = job(1);
    let manifest = job.manifest();
    for (flags, says) in [
        (
            &["--format", "jsonl", "-o", "out.csv"][..],
            "--format jsonl but OUT",
        ),
        (
            &["--format", "csv", "-o", "out.jsonl"][..],
            "--format csv but OUT",
        ),
        (
            &["--excel-bom", "-o", "out.jsonl"][..],
            "--excel-bom is for CSV",
        ),
    ] {
        let output = dashbatch()
            .args(["run", "--emulator", "-q"])
            .args(flags)
            .arg(&manifest)
            .current_dir(job.dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
    }
    assert!(!job.dir.path().join("out.csv").exists());
    assert!(!job.dir.path().join("out.jsonl").exists());
}
