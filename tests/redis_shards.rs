//! Several processes of the real binary on one Redis and one emulator, each on its own shard
//! of one manifest (issue 13's "Done means"): files repeated across shards are uploaded once
//! between them, `merge` gives one ok line per row in manifest order, and a process killed
//! with SIGKILL (after a Redis restart) loses no finished row and its rerun completes.
//! Skipped with a printed reason where redis-server is not installed.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use dashbatch::emulator::EmulatorConfig;
use tokio::process::{Child, Command};

const KEY: &str = "sk-redis.KEYCANARY42";

fn dashbatch() -> Command {
    sealed(KEY)
}

/// `rows` rows over `files` distinct files (row i uses file i mod files).
fn job(rows: usize, files: usize) -> Job {
    let mut job = Job::new();
    for i in 0..files {
        job.file(&format!("m/{i}.png"), &bytes(i as u64 + 77, 48));
    }
    for i in 0..rows {
        job.row(&format!("r{i},qwen-vl-plus,m/{}.png,prompt {i}", i % files));
    }
    job
}

/// `run --shard K/N`, its own results file and state folder, on `redis`.
fn shard(job: &Job, em: &str, redis: &str, k: usize, n: usize) -> (Command, PathBuf) {
    let out = job.dir.path().join(format!("shard-{k}.csv"));
    let mut cmd = dashbatch();
    cmd.arg("run")
        .arg(job.manifest())
        .args(["--base-url", em, "--redis", redis, "-q"])
        .args(["--shard", &format!("{k}/{n}")])
        .arg("-o")
        .arg(&out)
        .arg("--state-dir")
        .arg(job.dir.path().join(format!(".state-{k}")));
    (cmd, out)
}

async fn wait(child: Child) -> (i32, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the run ends within 120 s")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Merges `inputs` for `job`; asserts one ok line per manifest row, in manifest order.
async fn merge_all_ok(job: &Job, inputs: &[PathBuf], rows: usize) {
    let merged = job.dir.path().join("merged.csv");
    let out = dashbatch()
        .arg("merge")
        .arg(job.manifest())
        .args(inputs)
        .arg("-o")
        .arg(&merged)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = results(&merged);
    let ids: Vec<&str> = lines.iter().map(|r| r["id"].as_str()).collect();
    let want: Vec<String> = (0..rows).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, want, "one line per row, in manifest order");
    assert!(lines.iter().all(|r| r["status"] == "ok"), "every line ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_on_one_redis_upload_each_file_once_and_merge_in_order() {
    let Some(server) = RedisServer::start("four_shards_one_redis") else {
        return;
    };
    // Uploads take a while, so that several shards want a file at once.
    let em = start(EmulatorConfig {
        upload_latency: Duration::from_millis(100),
        ..EmulatorConfig::default()
    })
    .await;
    const ROWS: usize = 120;
    const FILES: usize = 10;
    let job = job(ROWS, FILES);
    let mut children = Vec::new();
    let mut outs = Vec::new();
    for k in 1..=4 {
        let (mut cmd, out) = shard(&job, &em.base_url(), &server.url(), k, 4);
        children.push(spawn(cmd.args(["--concurrency", "8"])));
        outs.push(out);
    }
    for child in children {
        let (code, stderr) = wait(child).await;
        assert_eq!(code, 0, "{stderr}");
    }
    let s = stats(&em).await;
    assert_eq!(
        s["uploads"], FILES,
        "each distinct file once across processes: {s}"
    );
    let mut seen = HashSet::new();
    for out in &outs {
        for r in results(out) {
            assert!(seen.insert(r["id"].clone()), "{} in two shards", r["id"]);
        }
    }
    assert_eq!(seen.len(), ROWS);
    merge_all_ok(&job, &outs, ROWS).await;
}

async fn until_finished(path: &Path, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished_ids(path).len() < at_least {
        assert!(Instant::now() < deadline, "{} stalled", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis is killed and started again (empty) while two shards run; the processes wait for it
/// and go on. Then one of them is killed with SIGKILL: no row it had finished is lost, and a
/// rerun of its shard completes; the other shard finishes on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_killed_after_a_redis_restart_loses_no_finished_row_and_its_rerun_completes() {
    let Some(mut server) = RedisServer::start("shard_kill_9") else {
        return;
    };
    // Calls take 100 ms at a known 20/s: the runs last a few seconds.
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_millis(100),
        ..EmulatorConfig::default()
    })
    .await;
    const ROWS: usize = 120;
    let job = job(ROWS, 15);
    let args = [
        "--model-rps",
        "20",
        "--concurrency",
        "4",
        "--redis-timeout-s",
        "30",
    ];
    let (mut first, out1) = shard(&job, &em.base_url(), &server.url(), 1, 2);
    let (mut second, out2) = shard(&job, &em.base_url(), &server.url(), 2, 2);
    let mut victim = spawn(first.args(args));
    let survivor = spawn(second.args(args));

    until_finished(&out1, 3).await;
    server.restart();
    // Both go on with the new Redis: more rows finish after the restart.
    let after_restart = finished_ids(&out1).len() + 3;
    until_finished(&out1, after_restart).await;
    victim.start_kill().unwrap();
    let status = victim.wait().await.unwrap();
    assert!(!status.success(), "killed");
    let done_before: HashSet<String> = finished_ids(&out1).into_iter().collect();
    assert!(done_before.len() < ROWS / 2, "killed mid-run");

    let (code, stderr) = wait(survivor).await;
    assert_eq!(code, 0, "the other shard finishes: {stderr}");

    // The rerun of the killed shard keeps what was done and does the rest.
    let (mut rerun, _) = shard(&job, &em.base_url(), &server.url(), 1, 2);
    let (code, stderr) = wait(spawn(rerun.args(args))).await;
    assert_eq!(code, 0, "{stderr}");
    let after = results(&out1);
    let ok: HashSet<&str> = after
        .iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| r["id"].as_str())
        .collect();
    for id in &done_before {
        assert!(
            ok.contains(id.as_str()),
            "{id} was finished before the kill, lost after"
        );
    }
    assert_eq!(ok.len(), after.len(), "every line of the shard ok");
    merge_all_ok(&job, &[out1, out2], ROWS).await;
}
