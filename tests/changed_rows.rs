//! What resume counts as done: a row is skipped only while what it asks is unchanged (model,
//! file, prompt, system, and the local file's size and modification time), and a finished line
//! is never dropped, even when its row leaves the manifest (issue 8, findings 7 and 8).

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use dashbatch::dashscope::Api;
use dashbatch::emulator::{EmulatorConfig, Running};
use dashbatch::pipeline::{self, Outcome};
use tokio_util::sync::CancellationToken;

async fn run(job: &Job, em: &Running) -> Outcome {
    let config = job.config(Api::Compatible, 4);
    pipeline::run(&config, client(em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap()
}

async fn chat_calls(em: &Running) -> u64 {
    stats(em).await["chat_calls"].as_u64().unwrap()
}

fn orphans(job: &Job) -> std::path::PathBuf {
    job.dir.path().join("manifest.results.csv.orphans.csv")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_prompt_changed_runs_again_and_is_counted() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let cars = job.file("street.png", b"a street with cars");
    job.row(&format!("1,qwen-vl-plus,{cars},Count the cars"));
    job.row(&format!("2,qwen-vl-plus,{cars},Describe the weather"));
    run(&job, &em).await;
    assert_eq!(chat_calls(&em).await, 2);

    // Night 2: the same id asks another question.
    let mut job2 = Job::new();
    std::mem::swap(&mut job2.dir, &mut job.dir);
    job2.row(&format!("1,qwen-vl-plus,{cars},Count the bicycles"));
    job2.row(&format!("2,qwen-vl-plus,{cars},Describe the weather"));
    let outcome = run(&job2, &em).await;
    assert_eq!(chat_calls(&em).await, 3, "only the changed row is called");
    assert_eq!(outcome.stats.rows_ok, 1);
    assert_eq!(outcome.stats.rows_skipped, 1);
    let summary = outcome.stats.summary_line();
    assert!(summary.contains("1 changed row run again"), "{summary}");
    let rows = by_id(&results(&job2.output()));
    assert_eq!(rows["1"]["prompt"], "Count the bicycles");
    assert!(rows["1"]["response"].contains("Prompt: Count the bicycles"));
    assert!(rows["2"]["response"].contains("Prompt: Describe the weather"));
    // The earlier answer was paid for: it is kept beside the results, not lost.
    let kept = results(&orphans(&job2));
    assert_eq!(kept.len(), 1);
    assert!(kept[0]["response"].contains("Prompt: Count the cars"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_at_the_same_path_runs_again() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let file = job.file("photo.png", b"night one: cars!!");
    job.row(&format!("1,qwen-vl-plus,{file},Count the vehicles"));
    run(&job, &em).await;
    assert_eq!(chat_calls(&em).await, 1);

    // Unchanged: skipped.
    let outcome = run(&job, &em).await;
    assert_eq!(chat_calls(&em).await, 1, "{}", outcome.stats.summary_line());
    assert_eq!(outcome.stats.rows_skipped, 1);

    // The same size, new bytes; the modification time set apart explicitly, so the test
    // does not depend on the file system's timestamp granularity.
    let path = job.dir.path().join(&file);
    let new_bytes = b"night two: bikes!";
    std::fs::write(&path, new_bytes).unwrap();
    let handle = std::fs::File::options().write(true).open(&path).unwrap();
    handle
        .set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    drop(handle);
    let outcome = run(&job, &em).await;
    assert_eq!(chat_calls(&em).await, 2, "{}", outcome.stats.summary_line());
    let rows = results(&job.output());
    assert_eq!(rows.len(), 1);
    assert!(
        rows[0]["response"].contains(&sha256_hex(new_bytes)),
        "{:?}",
        rows[0]
    );
    assert!(
        outcome
            .stats
            .summary_line()
            .contains("1 changed row run again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_gone_from_the_manifest_are_kept_beside_out_and_found_again() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let file = job.file("a.png", b"some image");
    let all: Vec<String> = (0..5)
        .map(|i| format!("r{i},qwen-vl-plus,{file},Question {i}"))
        .collect();
    for row in &all {
        job.row(row);
    }
    run(&job, &em).await;
    assert_eq!(chat_calls(&em).await, 5);

    // A shorter manifest: three finished rows are no longer in it.
    let mut short = Job::new();
    std::mem::swap(&mut short.dir, &mut job.dir);
    short.row(&all[0]).row(&all[4]);
    let outcome = run(&short, &em).await;
    assert_eq!(chat_calls(&em).await, 5);
    let summary = outcome.stats.summary_line();
    assert!(
        summary.contains("3 finished rows no longer in the manifest kept in"),
        "{summary}"
    );
    assert_eq!(results(&short.output()).len(), 2);
    let mut kept: Vec<String> = results(&orphans(&short))
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    kept.sort();
    assert_eq!(kept, ["r1", "r2", "r3"]);

    // The full manifest again: every row is found done, in OUT or beside it.
    std::mem::swap(&mut short.dir, &mut job.dir);
    let outcome = run(&job, &em).await;
    assert_eq!(chat_calls(&em).await, 5, "{}", outcome.stats.summary_line());
    assert_eq!(outcome.stats.rows_skipped, 5);
    let rows = results(&job.output());
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str()).collect();
    assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
    assert!(rows.iter().all(|r| r["status"] == "ok"));
    assert!(rows[2]["response"].contains("Prompt: Question 2"));
    assert!(
        !orphans(&job).exists() || results(&orphans(&job)).is_empty(),
        "lines taken back into OUT leave the side file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_rewritten_during_the_run_loses_no_finished_line() {
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_millis(40),
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    let file = job.file("a.png", b"some image");
    for i in 0..200 {
        job.row(&format!("r{i},qwen-vl-plus,{file},Question {i}"));
    }
    let config = job.config(Api::Compatible, 4);
    let manifest = config.manifest.clone();
    let client = client(&em, "sk-acme");
    let running =
        tokio::spawn(async move { pipeline::run(&config, client, CancellationToken::new()).await });
    // Wait (with a deadline) until some rows are finished, then rewrite the manifest in
    // place, as a nightly generator overlapping a long run would.
    let deadline = Instant::now() + Duration::from_secs(30);
    while chat_calls(&em).await < 12 {
        assert!(Instant::now() < deadline, "no model calls within 30 s");
        tokio::task::yield_now().await;
    }
    let short = format!(
        "id,model,file,prompt\n{}",
        (0..3)
            .map(|i| format!("r{i},qwen-vl-plus,{file},Question {i}\n"))
            .collect::<String>()
    );
    std::fs::write(&manifest, short).unwrap();
    let outcome = running.await.unwrap().unwrap();

    let summary = outcome.stats.summary_line();
    assert!(
        summary.contains("the manifest changed during the run"),
        "{summary}"
    );
    assert!(!summary.contains("of 3 rows"), "{summary}");
    let out = results(&job.output());
    assert_eq!(out.len(), 3);
    let ok_lines = |rows: &[std::collections::HashMap<String, String>]| {
        rows.iter().filter(|r| r["status"] == "ok").count() as u64
    };
    let beside = if orphans(&job).exists() {
        results(&orphans(&job))
    } else {
        Vec::new()
    };
    assert_eq!(
        ok_lines(&out) + ok_lines(&beside),
        outcome.stats.rows_ok,
        "every finished row is kept: {summary}"
    );
}

/// Copies the committed fixture (a manifest, its media and a results file as the version
/// before `input_digest` wrote it) into a temp folder.
fn v1_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resume-v1");
    for name in ["manifest.csv", "a.png", "b.png"] {
        std::fs::copy(from.join(name), dir.path().join(name)).unwrap();
    }
    std::fs::copy(
        from.join("results-v1.csv"),
        dir.path().join("manifest.results.csv"),
    )
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_from_before_input_digest_still_resumes() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::with_header("id,model,file,prompt,note");
    job.dir = v1_fixture();
    let before = by_id(&results(&job.output()));
    let manifest = std::fs::read_to_string(job.dir.path().join("manifest.csv")).unwrap();
    for line in manifest.lines().skip(1) {
        job.row(line);
    }
    let outcome = run(&job, &em).await;
    // Rows 1-3 were ok: skipped, no call. Row 4's file is missing: it fails again, locally.
    assert_eq!(chat_calls(&em).await, 0, "{}", outcome.stats.summary_line());
    assert_eq!(outcome.stats.rows_skipped, 3);
    let after = by_id(&results(&job.output()));
    assert_eq!(after.len(), 4);
    for id in ["1", "2", "3"] {
        assert_eq!(after[id]["status"], "ok");
        assert_eq!(after[id]["response"], before[id]["response"]);
        assert_eq!(after[id]["note"], before[id]["note"]);
    }
    assert_eq!(after["4"]["error_code"], "file_not_found");

    // Such a line is compared by its model, file and prompt columns: a changed prompt runs.
    let mut job2 = Job::with_header("id,model,file,prompt,note");
    std::mem::swap(&mut job2.dir, &mut job.dir);
    for line in manifest.lines().skip(1) {
        job2.row(&line.replace("Count the cars", "Count the bicycles"));
    }
    let outcome = run(&job2, &em).await;
    assert_eq!(chat_calls(&em).await, 1, "{}", outcome.stats.summary_line());
    let after = by_id(&results(&job2.output()));
    assert!(after["1"]["response"].contains("Prompt: Count the bicycles"));
    assert_eq!(after["2"]["response"], before["2"]["response"]);
}
