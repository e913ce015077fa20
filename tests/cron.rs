//! Cron-grade operation through the real binary: crash and resume, locking, graceful
//! shutdown, the upload cache across runs, bad input and secrets.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dashbatch::emulator::EmulatorConfig;
use tokio::process::{Child, Command};

fn dashbatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dashbatch"));
    // A sealed environment: only what the test sets.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    cmd
}

fn run_cmd(em_url: &str, manifest: &Path, key: &str) -> Command {
    let mut cmd = dashbatch();
    cmd.arg("run")
        .arg(manifest)
        .args(["--base-url", em_url, "--concurrency", "8"])
        .env("DASHSCOPE_API_KEY", key);
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

/// Complete result lines of a file being written (a cut-off last line is not counted).
fn complete_lines(path: &Path) -> Vec<std::collections::HashMap<String, String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let cut = if text.ends_with('\n') {
        text.len()
    } else {
        text.rfind('\n').map_or(0, |i| i + 1)
    };
    let mut reader = csv::Reader::from_reader(&text.as_bytes()[..cut]);
    let Ok(header) = reader.headers().cloned() else {
        return Vec::new();
    };
    reader
        .records()
        .filter_map(Result::ok)
        .filter(|r| r.len() == header.len())
        .map(|r| {
            header
                .iter()
                .map(String::from)
                .zip(r.iter().map(String::from))
                .collect()
        })
        .collect()
}

async fn wait_for_lines(path: &Path, n: usize, child: &mut Child) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while complete_lines(path).len() < n {
        assert!(
            child.try_wait().unwrap().is_none(),
            "dashbatch ended before writing {n} lines"
        );
        assert!(tokio::time::Instant::now() < deadline, "too slow");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval, with a deadline
    }
}

fn slow_job(rows: u64) -> Job {
    let mut job = Job::new();
    for i in 0..rows {
        let f = job.file(&format!("m/{i}.png"), &bytes(i, 32));
        job.row(&format!("r{i},qwen-vl-plus,{f},prompt {i}"));
    }
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_rerun_completes_without_calling_finished_rows_again() {
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_millis(30),
        ..EmulatorConfig::default()
    })
    .await;
    let job = slow_job(120);
    let manifest = job.manifest();
    let out = job.output();
    let mut child = run_cmd(&em.base_url(), &manifest, "sk-acme")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lines(&out, 20, &mut child).await;
    child.kill().await.unwrap(); // SIGKILL
    let at_kill: Vec<_> = complete_lines(&out)
        .into_iter()
        .filter(|r| r["status"] == "ok")
        .collect();
    assert!(!at_kill.is_empty());

    let (code, _, stderr) = finish(&mut run_cmd(&em.base_url(), &manifest, "sk-acme")).await;
    assert_eq!(code, 0, "{stderr}");
    let rows = results(&out);
    assert_eq!(rows.len(), 120, "exactly one line per row");
    let final_by_id = by_id(&rows);
    assert_eq!(final_by_id.len(), 120, "no duplicate lines");
    assert!(rows.iter().all(|r| r["status"] == "ok"));
    for r in &at_kill {
        // Same request id: the line was kept, the model was not called again.
        assert_eq!(final_by_id[&r["id"]]["request_id"], r["request_id"]);
    }
    assert!(
        stderr.contains(&format!("{} skipped", at_kill.len())),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_output_exits_3_naming_the_lock_and_pid() {
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_millis(30),
        ..EmulatorConfig::default()
    })
    .await;
    let job = slow_job(60);
    let manifest = job.manifest();
    let mut first = run_cmd(&em.base_url(), &manifest, "sk-acme")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_lines(&job.output(), 1, &mut first).await;
    let (code, _, stderr) = finish(&mut run_cmd(&em.base_url(), &manifest, "sk-acme")).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("manifest.results.csv.lock"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.id().unwrap())),
        "{stderr}"
    );
    let status = first.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    assert_eq!(results(&job.output()).len(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_compacts_and_exits_130_then_a_rerun_finishes() {
    // Model calls slow enough that rows are always in flight when the signal comes.
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_millis(150),
        ..EmulatorConfig::default()
    })
    .await;
    let job = slow_job(200);
    let manifest = job.manifest();
    let out = job.output();
    let mut child = run_cmd(&em.base_url(), &manifest, "sk-acme")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_lines(&out, 10, &mut child).await;
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let rows = results(&out);
    assert_eq!(rows.len(), 200, "compacted to one line per row");
    let ok = rows.iter().filter(|r| r["status"] == "ok").count();
    let not_attempted = rows
        .iter()
        .filter(|r| r["error_code"] == "not_attempted")
        .count();
    assert!(
        ok >= 10 && not_attempted > 0,
        "ok {ok}, not attempted {not_attempted}"
    );
    assert_eq!(ok + not_attempted, 200);
    // Drained: every call the service answered became an ok line; none was in flight and
    // dropped at exit.
    assert_eq!(stats(&em).await["chat_calls"], ok as u64, "{stderr}");
    assert!(stderr.contains("stopping: no new rows"), "{stderr}");
    assert!(stderr.contains(&format!("{ok} ok, ")), "summary: {stderr}");
    // Compaction keeps manifest order.
    let lines: Vec<u64> = rows.iter().map(|r| r["line"].parse().unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]));

    let (code, _, stderr) = finish(&mut run_cmd(&em.base_url(), &manifest, "sk-acme")).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(results(&out).iter().all(|r| r["status"] == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_reused_across_runs_until_they_expire() {
    let em = start(EmulatorConfig::default()).await;
    let job = slow_job(12);
    let manifest = job.manifest();
    let summary = job.dir.path().join("summary.json");
    let run = |fresh: bool| {
        let mut cmd = run_cmd(&em.base_url(), &manifest, "sk-acme.key1");
        cmd.arg("--summary-json").arg(&summary);
        if fresh {
            cmd.arg("--fresh");
        }
        cmd
    };
    let read_summary = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap()
    };
    assert_eq!(finish(&mut run(false)).await.0, 0);
    assert_eq!(read_summary()["uploads_new"], 12);
    assert_eq!(stats(&em).await["uploads"], 12);

    // Another key of the same account would share files at the service, but the cache is
    // keyed by key fingerprint, so it is this key that reuses them.
    assert_eq!(finish(&mut run(true)).await.0, 0);
    assert_eq!(read_summary()["uploads_cached"], 12);
    assert_eq!(read_summary()["uploads_new"], 0);
    assert_eq!(stats(&em).await["uploads"], 12, "nothing uploaded again");
    let state = std::fs::read_to_string(job.dir.path().join(".dashbatch/uploads.jsonl")).unwrap();
    assert!(!state.contains("sk-acme"), "the key is never stored");

    // 48 h later the service has deleted the files: the model rejects the cached URLs and
    // each row uploads its file again.
    advance_clock(&em, 48 * 3600).await;
    let (code, _, stderr) = finish(&mut run(true)).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stats(&em).await["uploads"], 24, "{stderr}");
    assert!(results(&job.output()).iter().all(|r| r["status"] == "ok"));
}

/// Spawns a run of `rows` rows against an emulator whose model calls hang for a minute,
/// and returns once some rows are waiting on their model call.
async fn run_with_rows_stuck_in_flight(
    em: &dashbatch::emulator::Running,
    job: &Job,
    extra_args: &[&str],
) -> Child {
    let mut child = run_cmd(&em.base_url(), &job.manifest(), "sk-acme")
        .args(extra_args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Uploads come before model calls: once files are stored, their rows are calling.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats(em).await["uploads"].as_u64().unwrap_or(0) < 4 {
        assert!(child.try_wait().unwrap().is_none(), "dashbatch ended early");
        assert!(tokio::time::Instant::now() < deadline, "no uploads");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval, with a deadline
    }
    child
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_at_drain_timeout_and_rows_still_in_flight_are_not_attempted() {
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await;
    let job = slow_job(20);
    let child = run_with_rows_stuck_in_flight(&em, &job, &["--drain-timeout", "1"]).await;
    sigterm(&child);
    // Far longer than the 1 s drain, far shorter than the 60 s model call.
    let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("the drain stops at --drain-timeout")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let rows = results(&job.output());
    assert_eq!(rows.len(), 20, "compacted to one line per row");
    assert!(
        rows.iter().all(|r| r["error_code"] == "not_attempted"),
        "{rows:?}"
    );
}

/// Issue 12: Ctrl-C (a real SIGINT) says "stopping" once, however the run then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_prints_the_stopping_message_once() {
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await;
    let job = slow_job(20);
    let child = run_with_rows_stuck_in_flight(&em, &job, &["--drain-timeout", "1"]).await;
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    let output = tokio::time::timeout(Duration::from_secs(40), child.wait_with_output())
        .await
        .expect("the drain stops at --drain-timeout")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    let stopping = stderr.lines().filter(|l| l.contains("stopping")).count();
    assert_eq!(stopping, 1, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_the_next_run_finishes() {
    use tokio::io::AsyncBufReadExt;
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await;
    let job = slow_job(20);
    let mut child = run_with_rows_stuck_in_flight(&em, &job, &[]).await;
    sigterm(&child);
    // The second signal goes once the first has been taken.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Some(line) = stderr.next_line().await.unwrap() {
        let first_taken = line.contains("stopping: no new rows");
        seen.push(line);
        if first_taken {
            break;
        }
    }
    sigterm(&child);
    while let Some(line) = stderr.next_line().await.unwrap() {
        seen.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("a second signal does not wait for the 60 s calls")
        .unwrap();
    assert_eq!(status.code(), Some(130), "{seen:?}");
    assert!(seen.iter().any(|l| l.contains("aborted")), "{seen:?}");

    // As after a crash: the next run (with a quick service) does every row.
    let quick = start(EmulatorConfig::default()).await;
    let (code, _, stderr) =
        finish(&mut run_cmd(&quick.base_url(), &job.manifest(), "sk-acme")).await;
    assert_eq!(code, 0, "{stderr}");
    let rows = results(&job.output());
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r["status"] == "ok"));
}
