//! Splitting work: `run --shard K/N` in several processes against one emulator, then
//! `dashbatch merge`, through the real binary.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use dashbatch::emulator::EmulatorConfig;
use tokio::process::Command;

const ROWS: usize = 30;

fn dashbatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dashbatch"));
    // A sealed environment: only what the test sets.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    cmd
}

async fn finish(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().await.expect("dashbatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn job() -> Job {
    let mut job = Job::new();
    for i in 0..ROWS {
        let f = job.file(&format!("m/{i}.png"), &bytes(i as u64, 32));
        job.row(&format!("r{i},qwen-vl-plus,{f},prompt {i}"));
    }
    job
}

fn ids(path: &Path) -> Vec<String> {
    results(path).into_iter().map(|r| r["id"].clone()).collect()
}

/// Runs the three shards of `job` at once against one emulator; returns their results files.
async fn run_three_shards(job: &Job) -> Vec<PathBuf> {
    let em = start(EmulatorConfig::default()).await;
    let manifest = job.manifest();
    let outs: Vec<PathBuf> = (1..=3)
        .map(|k| job.dir.path().join(format!("shard-{k}.csv")))
        .collect();
    let runs = outs.iter().enumerate().map(|(k, out)| {
        let mut cmd = dashbatch();
        cmd.arg("run")
            .arg(&manifest)
            .args(["--base-url", &em.base_url(), "--concurrency", "4"])
            .args(["--shard", &format!("{}/3", k + 1)])
            .arg("-o")
            .arg(out)
            .arg("--state-dir")
            .arg(job.dir.path().join(format!(".state-{k}")))
            .env("DASHSCOPE_API_KEY", "sk-acme");
        async move { finish(&mut cmd).await }
    });
    for (code, _, stderr) in futures::future::join_all(runs).await {
        assert_eq!(code, 0, "{stderr}");
    }
    outs
}

fn merge(manifest: &Path, inputs: &[PathBuf], out: &Path) -> Command {
    let mut cmd = dashbatch();
    cmd.arg("merge")
        .arg(manifest)
        .args(inputs)
        .arg("-o")
        .arg(out);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_split_the_rows_and_merge_gives_one_ok_line_per_row_in_order() {
    let job = job();
    let outs = run_three_shards(&job).await;
    let all: Vec<String> = (0..ROWS).map(|i| format!("r{i}")).collect();

    // Each shard's file holds only its own rows, all ok: no line for another shard's rows.
    let mut seen = HashSet::new();
    for out in &outs {
        let rows = results(out);
        assert!(!rows.is_empty(), "{}", out.display());
        assert!(
            rows.iter().all(|r| r["status"] == "ok"),
            "{}",
            out.display()
        );
        for r in rows {
            assert!(seen.insert(r["id"].clone()), "{} in two shards", r["id"]);
        }
    }
    assert_eq!(seen.len(), ROWS, "every row in exactly one shard");

    let merged = job.dir.path().join("merged.csv");
    let (code, stdout, stderr) = finish(&mut merge(&job.manifest(), &outs, &merged)).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("30 rows, 0 not attempted"), "{stdout}");
    let rows = results(&merged);
    assert_eq!(ids(&merged), all, "manifest order, one line per row");
    assert!(rows.iter().all(|r| r["status"] == "ok"));
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["line"], (i + 2).to_string(), "the manifest's line");
    }

    // Without shard 3's file, its rows are in no input: not_attempted, exit 1.
    let partial = job.dir.path().join("partial.csv");
    let (code, stdout, stderr) = finish(&mut merge(&job.manifest(), &outs[..2], &partial)).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let missing: HashSet<String> = ids(&outs[2]).into_iter().collect();
    let rows = results(&partial);
    assert_eq!(ids(&partial), all);
    for r in &rows {
        let want = if missing.contains(&r["id"]) {
            "not_attempted"
        } else {
            "ok"
        };
        let got = if r["status"] == "ok" {
            "ok"
        } else {
            r["error_code"].as_str()
        };
        assert_eq!(got, want, "{}", r["id"]);
    }
}

/// `path` with each line changed by `edit` (on its fields), written to `to`.
fn rewrite(path: &Path, to: &Path, edit: impl Fn(&mut Vec<String>)) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let mut writer = csv::Writer::from_path(to).unwrap();
    writer.write_record(reader.headers().unwrap()).unwrap();
    for record in reader.records() {
        let mut fields: Vec<String> = record.unwrap().iter().map(String::from).collect();
        edit(&mut fields);
        writer.write_record(&fields).unwrap();
    }
    writer.flush().unwrap();
}

fn column(path: &Path, name: &str) -> usize {
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_in_several_inputs_keeps_ok_over_failed_then_the_newest_and_foreign_inputs_are_refused()
 {
    let job = job();
    let outs = run_three_shards(&job).await;
    let manifest = job.manifest();
    let dir = job.dir.path();
    let (status, response) = (column(&outs[0], "status"), column(&outs[0], "response"));

    // Newer copies of shard 1: one where every row failed, one with other answers.
    let failed = dir.join("failed-later.csv");
    rewrite(&outs[0], &failed, |f| {
        f[status] = "failed".into();
        f[response] = String::new();
    });
    let newer = dir.join("newer.csv");
    rewrite(&outs[0], &newer, |f| {
        f[response] = format!("newer {}", f[response])
    });
    let merged = dir.join("merged.csv");
    // Newest last, by modification time and in the given order alike (a file system with
    // coarse times may give all three the same one).
    let inputs = [
        outs[0].clone(),
        outs[1].clone(),
        outs[2].clone(),
        failed.clone(),
        newer.clone(),
    ];
    let (code, _, stderr) = finish(&mut merge(&manifest, &inputs, &merged)).await;
    assert_eq!(code, 0, "{stderr}");
    let shard1: HashSet<String> = ids(&outs[0]).into_iter().collect();
    let rows = results(&merged);
    assert_eq!(rows.len(), ROWS);
    for r in &rows {
        assert_eq!(r["status"], "ok", "ok beats a later failure: {}", r["id"]);
        assert_eq!(
            r["response"].starts_with("newer "),
            shard1.contains(&r["id"]),
            "the newest ok line: {}",
            r["id"]
        );
    }

    // Another manifest: the same ids asking something else, and one without shard 1's
    // first row. Refused, naming the input, its line and the id; nothing written.
    let text = std::fs::read_to_string(&manifest).unwrap();
    let other = dir.join("other.csv");
    std::fs::write(&other, text.replace("prompt ", "another prompt ")).unwrap();
    let refused = dir.join("refused.csv");
    let (code, _, stderr) = finish(&mut merge(&other, &outs, &refused)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("answers another question"), "{stderr}");
    assert!(stderr.contains("shard-"), "names the input: {stderr}");
    assert!(stderr.contains("line "), "{stderr}");
    assert!(!refused.exists());

    let first = ids(&outs[0]).remove(0);
    let fewer = dir.join("fewer.csv");
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{first},")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&fewer, kept).unwrap();
    let (code, _, stderr) = finish(&mut merge(&fewer, &outs, &refused)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("id `{first}` is no row")),
        "{stderr}"
    );
    assert!(stderr.contains("shard-1.csv, line 2"), "{stderr}");
    assert!(!refused.exists());
    // No temporary file is left beside the output.
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".dashbatch-merge")
        })
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
