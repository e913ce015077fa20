//! `validate` and `run` judge rows with one implementation of each check: on the same
//! manifest, the rows `validate` lists as problems are exactly the rows `run` fails before any
//! request, and each problem is worded as the row's `error_message`.

mod common;

use std::collections::BTreeMap;

use assert_cmd::Command;
use common::*;

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

#[test]
fn validate_lists_exactly_the_rows_run_fails_in_the_same_words() {
    let mut job = Job::new();
    let ok = job.file("ok.png", b"fine");
    job.file("notes.txt", b"text");
    // A folder with no extension: "is a folder" comes before "unknown media kind".
    std::fs::create_dir_all(job.dir.path().join("media")).unwrap();
    job.row(&format!("ok,qwen-vl-plus,{ok},p")); // line 2
    job.row("folder,qwen-vl-plus,media,p"); // 3
    job.row("missing,qwen-vl-plus,gone.png,p"); // 4
    job.row("unknown-ext,qwen-vl-plus,notes.txt,p"); // 5
    job.row("url-no-kind,qwen-vl-plus,https://example.com/page?x=a.png,p"); // 6
    job.row("unparseable,qwen-vl-plus"); // 7
    job.row(&format!("ok,qwen-vl-plus,{ok},again")); // 8: a repeated id
    // A scheme in capitals is still https, and the query is not part of the file name.
    job.row("caps,qwen-vl-plus,HTTPS://EXAMPLE.COM/B.PNG,p"); // 9
    job.row("query,qwen-vl-plus,https://example.com/v/c.mp4?sig=x.txt#t=1,p"); // 10
    let manifest = job.manifest();

    let checked = dashbatch().arg("validate").arg(&manifest).output().unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(1), "{stdout}");
    let problems: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("problem: "))
        .collect();

    let ran = dashbatch()
        .args(["run", "--emulator", "-q"])
        .arg(&manifest)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(1), "{stderr}");
    let rows = results(&job.output());
    let failed: BTreeMap<u64, (String, String)> = rows
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| {
            let line = r["line"].parse().unwrap();
            (line, (r["error_code"].clone(), r["error_message"].clone()))
        })
        .collect();

    let codes: Vec<(u64, &str)> = failed.iter().map(|(l, (c, _))| (*l, c.as_str())).collect();
    assert_eq!(
        codes,
        [
            (3, "not_a_file"),
            (4, "file_not_found"),
            (5, "unsupported_media"),
            (6, "unsupported_media"),
            (7, "bad_row"),
            (8, "duplicate_id"),
        ],
        "{rows:?}"
    );
    let messages: Vec<&str> = failed.values().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        problems, messages,
        "validate words each problem as run does"
    );
    assert!(messages[0].contains("media is a folder"), "{}", messages[0]);
}

/// Issue 12: a quote that never closes fails its own row; the rows after it still run, in
/// `validate` and in `run` (before, both saw 3 rows and lines 4 and 5 vanished).
#[test]
fn a_quote_never_closed_fails_its_row_and_the_rows_after_it_run() {
    let mut job = Job::new();
    let ok = job.file("ok.png", b"fine");
    job.row(&format!("a,qwen-vl-plus,{ok},p")); // line 2
    job.row(&format!("b,qwen-vl-plus,{ok},q")); // 3
    job.row(&format!("c,qwen-vl-plus,{ok},\"Say \"\"hi")); // 4: the quote never closes
    job.row(&format!("d,qwen-vl-plus,{ok},r")); // 5
    job.row(&format!("e,qwen-vl-plus,{ok},s")); // 6
    let manifest = job.manifest();

    let checked = dashbatch().arg("validate").arg(&manifest).output().unwrap();
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("rows: 5 (1 invalid"), "{stdout}");
    assert!(
        stdout.contains("manifest.csv, line 4: a quote opened on line 4 never closes"),
        "{stdout}"
    );

    let ran = dashbatch()
        .args(["run", "--emulator", "-q"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(
        ran.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let rows = results(&job.output());
    let mut seen: Vec<(u64, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r["line"].parse().unwrap(),
                r["id"].as_str(),
                r["status"].as_str(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (2, "a", "ok"),
            (3, "b", "ok"),
            (4, "c", "failed"),
            (5, "d", "ok"),
            (6, "e", "ok"),
        ]
    );
}
