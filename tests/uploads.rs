//! What a run uploads and how long it may take, end to end: upload clocks against a stalled
//! and a slow upload host, and files that are not what they seem (a FIFO, an oversized
//! sparse file), through the real binary where the flag or the row is what matters.

mod common;

use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::*;
use dashbatch::dashscope::{Api, ApiKey, Client, ClientConfig};
use dashbatch::emulator::{self, EmulatorConfig};
use dashbatch::pipeline;
use tokio_util::sync::CancellationToken;

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

/// A loopback listener whose accepted sockets keep a small receive buffer, so the kernel
/// cannot take in a whole test file ahead of the server reading it (loopback autotuning
/// allows tens of MB): what the client sees as progress is then what the server read.
fn small_window_listener() -> tokio::net::TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(64).unwrap()
}

fn client_with_stall(base_url: String, stall: Duration) -> Client {
    Client::new(
        ApiKey::new("sk-acme").unwrap(),
        ClientConfig {
            base_url,
            upload_timeout: Duration::from_secs(3600),
            upload_stall_timeout: stall,
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

/// Finding 10: the upload host accepts the connection and reads nothing. With one attempt
/// and a 1 s stall clock the row fails as `upload_stalled`, instead of holding its upload
/// slot for the 15-minute whole-upload limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_host_fails_the_row_on_the_stall_clock() {
    let hole = small_window_listener();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            held.push(socket);
        }
    });
    // The emulator's credentials name the black hole as their upload host.
    let em = start(EmulatorConfig {
        public_base_url: Some(hole_url),
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    let big = job.file("big.mp4", &bytes(1, 8 << 20));
    let small = job.file("small.png", &bytes(2, 1000));
    job.row(&format!("big,qwen-vl-plus,{big},p"));
    job.row(&format!("small,qwen-vl-plus,{small},p"));
    let mut config = job.config(Api::Compatible, 2);
    config.retry.max_attempts = 1;
    // `base_url()` is the public URL (the black hole): the service itself is at `addr()`.
    let client = client_with_stall(format!("http://{}", em.addr()), Duration::from_secs(1));
    let outcome = pipeline::run(&config, client, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.stats.rows_failed, 2);
    let rows = by_id(&results(&config.output));
    for id in ["big", "small"] {
        let r = &rows[id];
        assert_eq!(r["error_code"], "upload_stalled", "{r:?}");
        assert!(
            r["error_message"].contains("--upload-stall-timeout-s"),
            "{r:?}"
        );
    }
}

/// Finding 10, the other half: an upload that is slow but keeps moving is not cut by the
/// stall clock, though it takes longer than that clock in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_that_moves_outlives_the_stall_clock() {
    let listener = small_window_listener();
    let config = EmulatorConfig {
        // 8 MB/s: 24 MB take at least 3 s, while the client's send buffer (at most a few
        // MB) drains in well under the 2 s stall clock.
        upload_bandwidth_mbps: Some(64.0),
        ..EmulatorConfig::default()
    };
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(emulator::serve(listener, config, std::future::pending()));
    let content = bytes(3, 24 << 20);
    let mut job = Job::new();
    let f = job.file("slow.mp4", &content);
    job.row(&format!("slow,qwen-vl-plus,{f},p"));
    let config = job.config(Api::Compatible, 1);
    let stall = Duration::from_secs(2);
    let started = Instant::now();
    let outcome = pipeline::run(
        &config,
        client_with_stall(base_url, stall),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let rows = by_id(&results(&config.output));
    let r = &rows["slow"];
    assert_eq!(r["status"], "ok", "{r:?}");
    assert!(r["response"].contains(&sha256_hex(&content)), "{r:?}");
    assert_eq!(r["attempts"], "2", "one upload and one model call: {r:?}");
    assert_eq!(outcome.stats.rows_ok, 1);
    // Not a timing threshold: the emulator's pacing guarantees this; it shows the upload
    // really did last longer than the stall clock.
    assert!(started.elapsed() > stall);
}

/// Finding 11: a row naming a FIFO (no writer) fails as `not_a_file`, and the run finishes.
#[test]
fn a_fifo_row_fails_not_a_file_and_the_run_finishes() {
    let mut job = Job::new();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        job.dir.path().join("pipe.png"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let ok = job.file("ok.png", b"a real image");
    job.row("pipe,qwen-vl-plus,pipe.png,p");
    job.row(&format!("ok,qwen-vl-plus,{ok},p"));
    dashbatch()
        .args(["run", "--emulator", "-q"])
        .arg(job.manifest())
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1);
    let rows = by_id(&results(&job.output()));
    assert_eq!(rows["pipe"]["error_code"], "not_a_file", "{rows:?}");
    assert_eq!(rows["ok"]["status"], "ok", "{rows:?}");
}

/// Low finding: a sparse file over the model's 1024 MB limit fails `file_too_large` at once,
/// without being read (hashing it took about 90 s in a debug build before).
#[test]
fn an_oversized_sparse_file_fails_file_too_large_without_being_read() {
    let mut job = Job::new();
    let file = std::fs::File::create(job.dir.path().join("huge.mp4")).unwrap();
    file.set_len((1024 << 20) + 1).unwrap();
    drop(file);
    job.row("huge,qwen-vl-plus,huge.mp4,p");
    dashbatch()
        .args(["run", "--emulator", "-q"])
        .arg(job.manifest())
        .timeout(Duration::from_secs(120))
        .assert()
        .code(1);
    let rows = by_id(&results(&job.output()));
    let r = &rows["huge"];
    assert_eq!(r["error_code"], "file_too_large", "{r:?}");
    assert!(r["error_message"].contains("huge.mp4"), "{r:?}");
}

#[test]
fn upload_clock_flags_are_range_checked() {
    let mut job = Job::new();
    job.row("a,qwen-vl-plus,a.png,p");
    for flag in ["--upload-timeout-s", "--upload-stall-timeout-s"] {
        dashbatch()
            .args(["run", "--emulator", flag, "0"])
            .arg(job.manifest())
            .assert()
            .code(2)
            .stderr(predicates::str::contains(flag));
    }
}
