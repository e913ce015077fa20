//! `--redis` through the real binary: a Redis unreachable at the start, a Redis killed
//! mid-run, and eight processes sharing one account's credential limit. Each test starts its
//! own redis-server on a unix socket (skipped with a printed reason where it is missing).

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;
use dashbatch::emulator::EmulatorConfig;
use tokio::process::Command;

const KEY: &str = "sk-redis.KEYCANARY99";
const PASSWORD: &str = "PWCANARY31";

fn dashbatch(base_url: &str, manifest: &Path) -> Command {
    sealed_run(KEY, base_url, manifest)
}

fn job(prefix: &str, rows: u64) -> Job {
    let mut job = Job::new();
    for i in 0..rows {
        // Content of its own per prefix: processes with the same files would share their
        // uploads (the shared upload cache), and so their getPolicy requests.
        let seed = prefix.bytes().fold(1000, |h, b| h * 31 + u64::from(b));
        let f = job.file(&format!("m/{prefix}{i}.png"), &bytes(seed + i, 32));
        job.row(&format!("{prefix}{i},qwen-vl-plus,{f},prompt {i}"));
    }
    job
}

/// Runs to the end, bounded so that a hang fails; returns (exit code, stderr).
async fn finish(cmd: &mut Command) -> (i32, String) {
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the run ends within 120 s")
        .expect("dashbatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A URL at which nothing listens: a port the kernel just handed out and took back.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_run_before_any_request_and_never_shows_its_password() {
    let em = start(EmulatorConfig::default()).await;
    let job = job("u", 3);
    let manifest = job.manifest();

    // A socket that does not exist.
    let socket: PathBuf = job.dir.path().join("nowhere").join("redis.sock");
    let url = format!("redis+unix://{}", socket.display());
    let (code, stderr) = finish(dashbatch(&em.base_url(), &manifest).args(["--redis", &url])).await;
    assert_eq!(code, i32::from(dashbatch::exit::USAGE), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(stderr.contains("run without --redis"), "{stderr}");

    // A password, given as the flag and as DASHBATCH_REDIS_URL, with every report and the
    // debug log on: it is in none of them.
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/0", closed_port());
    let shown = url.replace(PASSWORD, "***");
    let summary = job.dir.path().join("summary.json");
    let metrics = job.dir.path().join("metrics.prom");
    for by_env in [false, true] {
        let mut cmd = dashbatch(&em.base_url(), &manifest);
        cmd.arg("-v")
            .arg("--summary-json")
            .arg(&summary)
            .arg("--metrics-textfile")
            .arg(&metrics);
        if by_env {
            cmd.env("DASHBATCH_REDIS_URL", &url);
        } else {
            cmd.args(["--redis", &url]);
        }
        let (code, stderr) = finish(&mut cmd).await;
        assert_eq!(code, i32::from(dashbatch::exit::USAGE), "{stderr}");
        assert!(stderr.contains(&shown), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
        for report in [&summary, &metrics] {
            let text = std::fs::read_to_string(report).expect("report written");
            assert!(!text.contains(PASSWORD), "{}: {text}", report.display());
        }
    }
    // `--help` names the variable but never shows its value.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_dashbatch"))
        .env_clear()
        .env("DASHBATCH_REDIS_URL", &url)
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("DASHBATCH_REDIS_URL") && !help.contains(PASSWORD),
        "{help}"
    );

    let s = stats(&em).await;
    assert_eq!(s["credential_calls"], 0, "{s}");
    assert_eq!(s["chat_calls"], 0, "{s}");
    assert!(
        !job.output().exists() || results(&job.output()).iter().all(|r| r["status"] != "ok"),
        "no row ran"
    );
}

#[tokio::test]
async fn redis_killed_mid_run_stops_it_like_an_interrupt_and_a_rerun_completes() {
    let Some(mut server) = RedisServer::start("redis_killed_mid_run") else {
        return;
    };
    // Calls take 100 ms: the run is still going when Redis dies. Policies last 1 s, so
    // that getPolicy (through the shared limiter too) is fetched again mid-run.
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_millis(100),
        policy_ttl_s: 1,
        ..EmulatorConfig::default()
    })
    .await;
    const ROWS: usize = 80;
    let job = job("k", ROWS as u64);
    let manifest = job.manifest();
    let url = server.url();
    let run = |em: &str| {
        let mut cmd = dashbatch(em, &manifest);
        // A known rate, so that every call asks the shared limiter.
        cmd.args(["--redis", &url, "--redis-timeout-s", "2", "-q"])
            .args(["--model-rps", "50", "--concurrency", "2"])
            // Longer than the test waits: a row held for a grant must be refused when the
            // run stops, not waited out.
            .args(["--drain-timeout-s", "600"]);
        cmd
    };
    let child = run(&em.base_url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Wait for the results file to grow (a few rows finished), then kill Redis.
    let deadline = Instant::now() + Duration::from_secs(60);
    while finished_ids(&job.output()).len() < 3 {
        assert!(Instant::now() < deadline, "no row finished within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
    let done_before = finished_ids(&job.output());

    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the run ends within 60 s of Redis dying")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(dashbatch::exit::UNAVAILABLE)),
        "{stderr}"
    );
    assert!(
        stderr.contains(&url) && stderr.contains("--redis-timeout-s"),
        "{stderr}"
    );

    let lines = results(&job.output());
    assert_eq!(lines.len(), ROWS, "one line per manifest row");
    let ok: Vec<&String> = lines
        .iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| &r["id"])
        .collect();
    // No finished row lost: every row ok when Redis died is ok in the compacted file.
    for id in &done_before {
        assert!(ok.contains(&id), "{id} was finished before, lost after");
    }
    let held = lines
        .iter()
        .filter(|r| r["error_code"] == "not_attempted")
        .count();
    assert_eq!(ok.len() + held, ROWS, "rows are ok or not_attempted");
    assert!(held > 0, "the run stopped before the end");

    // Redis back (empty: the script is loaded again by EVAL): the rerun does the rest.
    server.restart();
    let (code, stderr) = finish(&mut run(&em.base_url())).await;
    assert_eq!(code, 0, "{stderr}");
    let lines = results(&job.output());
    assert_eq!(lines.len(), ROWS);
    assert!(lines.iter().all(|r| r["status"] == "ok"));
}

/// Issue 13's check: 8 processes starting together, one account, an emulator that allows 5
/// getPolicy a second and hands out 1 s policies; each client at `--credential-qps 4` on
/// one Redis. Together they stay under the limit: no getPolicy is throttled.
#[tokio::test]
async fn eight_processes_on_one_redis_share_the_credential_limit() {
    let Some(server) = RedisServer::start("eight_processes_credentials") else {
        return;
    };
    let em = start(EmulatorConfig {
        credential_qps: 5,
        policy_ttl_s: 1,
        ..EmulatorConfig::default()
    })
    .await;
    let jobs: Vec<Job> = (0..8).map(|p| job(&format!("p{p}r"), 4)).collect();
    let mut children = Vec::new();
    for job in &jobs {
        let mut cmd = dashbatch(&em.base_url(), &job.manifest());
        cmd.args(["--redis", &server.url(), "--credential-qps", "4", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .expect("each run ends within 120 s")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
    for job in &jobs {
        assert!(results(&job.output()).iter().all(|r| r["status"] == "ok"));
    }
    let s = stats(&em).await;
    assert!(s["credential_calls"].as_u64().unwrap() >= 8, "{s}");
    assert_eq!(s["credential_throttled"], 0, "{s}");
}
