//! What a run says when it ends (issue 12): a short summary a person reads at a glance, none
//! under `-qq`, and `validate`'s counts in words that agree with their number.

mod common;

use assert_cmd::Command;
use common::*;
use predicates::prelude::*;

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

fn two_rows() -> Job {
    let mut job = Job::new();
    let a = job.file("a.png", b"one");
    job.row(&format!("a,qwen-vl-plus,{a},p"));
    job.row("b,qwen-vl-plus,https://example.com/b.png,p");
    job
}

#[test]
fn the_summary_is_a_few_short_lines() {
    let job = two_rows();
    let out = dashbatch()
        .args(["run", "--emulator"])
        .arg(job.manifest())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("ok, 0 failed, 0 skipped of 2 rows\n"),
        "{stderr}"
    );
    assert!(stderr.contains("\n  uploads 1 new"), "{stderr}");
    for line in stderr.lines().filter(|l| !l.contains(" INFO ")) {
        assert!(line.chars().count() <= 100, "a long line: {line}");
    }
}

#[test]
fn minus_qq_prints_no_summary() {
    let job = two_rows();
    dashbatch()
        .args(["-qq", "run", "--emulator"])
        .arg(job.manifest())
        .assert()
        .success()
        .stderr(predicate::str::is_empty());
    assert_eq!(results(&job.output()).len(), 2, "the run still ran");
}

#[test]
fn validate_counts_one_url_row_in_the_singular() {
    let job = two_rows();
    dashbatch()
        .arg("validate")
        .arg(job.manifest())
        .assert()
        .stdout(predicate::str::contains("; 1 row uses a URL\n"));
}
