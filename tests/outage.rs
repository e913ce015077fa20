//! Runs against a service that is down, through the real binary: a closed port, a model that
//! answers only 429, an outage that ends before `--outage-timeout`, and the retry count.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use dashbatch::emulator::{self, EmulatorConfig};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Never in any output: the message names the URL, not the key.
const KEY: &str = "sk-outage.KEYCANARY42";

/// The exit code of a run stopped by an outage (`dashbatch::exit::UNAVAILABLE`).
const UNAVAILABLE: i32 = dashbatch::exit::UNAVAILABLE as i32;

fn dashbatch(base_url: &str, manifest: &Path) -> Command {
    sealed_run(KEY, base_url, manifest)
}

/// A URL at which nothing listens: a port the kernel just handed out and took back.
fn closed_port() -> (String, std::net::SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    (format!("http://{addr}"), addr)
}

fn job(rows: u64) -> Job {
    let mut job = Job::new();
    for i in 0..rows {
        let f = job.file(&format!("m/{i}.png"), &bytes(i, 32));
        job.row(&format!("r{i},qwen-vl-plus,{f},prompt {i}"));
    }
    job
}

/// Runs to the end (a generous bound turns a hang into a failure) and returns
/// (exit code, stderr, elapsed).
async fn finish(cmd: &mut Command) -> (i32, String, Duration) {
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the run ends within 120 s")
        .expect("dashbatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).expect("summary written")).unwrap()
}

/// Every manifest row has a line; returns how many are `not_attempted`.
fn not_attempted(job: &Job, rows: usize) -> usize {
    let lines = results(&job.output());
    assert_eq!(lines.len(), rows, "one line per manifest row");
    lines
        .iter()
        .filter(|r| r["error_code"] == "not_attempted")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_answers_nothing_stops_the_run_with_its_own_exit_code() {
    let (url, _) = closed_port();
    let job = job(200);
    let report = job.dir.path().join("summary.json");
    let (code, stderr, elapsed) = finish(
        dashbatch(&url, &job.manifest())
            .args(["--outage-timeout", "2", "--summary-json"])
            .arg(&report),
    )
    .await;
    assert_eq!(code, UNAVAILABLE, "{stderr}");
    assert!(
        stderr.contains(&format!("the service at {url}")) && stderr.contains("--outage-timeout"),
        "the message names the URL and the flag: {stderr}"
    );
    assert!(!stderr.contains("KEYCANARY42"), "{stderr}");
    let held = not_attempted(&job, 200);
    assert!(held >= 150, "most rows not attempted, got {held}");
    let s = summary(&report);
    assert_eq!(s["exit_code"], UNAVAILABLE);
    assert_eq!(s["rows_not_attempted"], held);
    let calls = s["credential_calls"].as_u64().unwrap();
    assert!(calls < 30, "{calls} connection attempts for 200 rows");
    // Before: every row failed after its own retries; 4,000 rows took 13 minutes.
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_answers_only_429_stops_the_run_naming_the_model() {
    let em = start(EmulatorConfig {
        model_rps: Some(0),
        ..EmulatorConfig::default()
    })
    .await;
    let job = job(200);
    let (code, stderr, elapsed) =
        finish(dashbatch(&em.base_url(), &job.manifest()).args(["--outage-timeout", "2"])).await;
    assert_eq!(code, UNAVAILABLE, "{stderr}");
    assert!(
        stderr.contains("model qwen-vl-plus has answered only 429"),
        "{stderr}"
    );
    let held = not_attempted(&job, 200);
    assert!(held >= 150, "most rows not attempted, got {held}");
    let calls = stats(&em).await["chat_errors"]["limit_requests"]
        .as_u64()
        .unwrap();
    assert!(calls < 100, "{calls} model calls refused for 200 rows");
    // Before: 5 rows a minute, 40 minutes for these 200.
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shorter_than_the_timeout_pauses_the_run_which_then_finishes() {
    let (url, addr) = closed_port();
    let job = job(20);
    // A pause comes after a quarter of the timeout (2 s); the run would give up at 8 s.
    // Enough attempts that no row runs out of them before the pause.
    let mut child = dashbatch(&url, &job.manifest())
        .args(["--outage-timeout", "8", "--max-attempts", "12"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let paused = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
            if line.contains("holding its requests") {
                return;
            }
        }
        panic!("the run ended without pausing:\n{log}");
    })
    .await;
    assert!(paused.is_ok(), "no pause within 60 s:\n{log}");

    // The service comes back at the same address.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(emulator::serve(
        listener,
        EmulatorConfig::default(),
        async move {
            let _ = stopped.await;
        },
    ));

    let rest = async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            log.push_str(&line);
            log.push('\n');
        }
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(60), rest)
        .await
        .expect("the run ends within 60 s");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("answers again"), "{log}");
    let lines = results(&job.output());
    assert_eq!(lines.len(), 20);
    assert!(lines.iter().all(|r| r["status"] == "ok"), "{lines:?}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// getPolicy's retries were never counted: a run whose every request failed said `0 retries`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_every_retry_sent() {
    let (url, _) = closed_port();
    let job = job(1);
    let report = job.dir.path().join("summary.json");
    let (code, stderr, _) = finish(
        dashbatch(&url, &job.manifest())
            .args(["--max-attempts", "3", "--summary-json"])
            .arg(&report),
    )
    .await;
    assert_eq!(code, 1, "too few failures for an outage: {stderr}");
    let s = summary(&report);
    assert_eq!(s["credential_calls"], 3, "{s}");
    assert_eq!(s["retries"], serde_json::json!({"network": 2}), "{s}");
    assert!(stderr.contains("2 retries (network 2)"), "{stderr}");
}
