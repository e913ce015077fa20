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

/// 429s by kind reach all three reports: the summary's line, `--summary-json` and the
/// metrics file, each with the count the emulator refused (here, a request limit of 15 a
/// second that the client is not told).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_count_429s_by_the_limit_they_report() {
    use dashbatch::emulator::EmulatorConfig;
    let em = start(EmulatorConfig {
        model_rps: Some(15),
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    for i in 0..90 {
        job.row(&format!(
            "r{i},qwen-vl-plus,https://example.com/{i}.png,p{i}"
        ));
    }
    let (summary, metrics) = (
        job.dir.path().join("summary.json"),
        job.dir.path().join("dashbatch.prom"),
    );
    let (manifest, root) = (job.manifest(), em.base_url());
    let (summary_arg, metrics_arg) = (summary.clone(), metrics.clone());
    let out = tokio::task::spawn_blocking(move || {
        dashbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--base-url", &root, "--concurrency", "16"])
            .args(["--max-attempts", "20"])
            .arg("--summary-json")
            .arg(&summary_arg)
            .arg("--metrics-textfile")
            .arg(&metrics_arg)
            .env("DASHSCOPE_API_KEY", "sk-kinds")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let refused = stats(&em).await["chat_throttled_rate"].as_u64().unwrap();
    assert!(refused > 0, "the limit was met: {stderr}");
    assert!(
        stderr.contains(&format!("{refused} 429s (requests {refused})")),
        "{stderr}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(json["throttled_seen"], refused, "{json}");
    assert_eq!(json["throttled_by_kind"]["requests"], refused, "{json}");
    assert!(json["throttled_by_kind"].get("burst").is_none(), "{json}");
    let prom = std::fs::read_to_string(&metrics).unwrap();
    for (kind, n) in [("requests", refused), ("burst", 0), ("tokens", 0)] {
        let series = prom
            .lines()
            .find(|l| {
                l.starts_with("dashbatch_last_run_throttled_by_kind{")
                    && l.contains(&format!("kind=\"{kind}\""))
            })
            .unwrap_or_else(|| panic!("no {kind} series: {prom}"));
        assert!(series.ends_with(&format!("}} {n}")), "{series}");
    }
}
