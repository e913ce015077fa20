//! `dashbatch emulator`: the real binary prints its address, serves with its flags applied,
//! and exits 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::prelude::*;
use predicates::prelude::*;

const DEADLINE: Duration = Duration::from_secs(20);

/// The emulator process; killed if a test fails before stopping it.
struct Emulator {
    child: Child,
    /// Everything the process writes to stdout after its first line, once stdout closes.
    rest_of_stdout: mpsc::Receiver<String>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary and waits (with a deadline) for its one line on stdout.
fn start(args: &[&str]) -> (Emulator, String) {
    let mut child = Command::cargo_bin("dashbatch")
        .expect("binary built")
        .arg("emulator")
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("emulator starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let (first_tx, first_rx) = mpsc::channel();
    let (rest_tx, rest_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = first_tx.send(line);
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        let _ = rest_tx.send(rest);
    });
    let emulator = Emulator {
        child,
        rest_of_stdout: rest_rx,
    };
    let line = first_rx
        .recv_timeout(DEADLINE)
        .expect("a listening line in time");
    let base = line
        .strip_suffix('\n')
        .and_then(|l| l.strip_prefix("listening on "))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    (emulator, base)
}

/// Sends `signal` (`TERM`, `INT`) and waits, polling with a deadline, for the process to
/// end; asserts a clean exit 0 (not death by signal) and nothing on stdout after the
/// listening line.
fn stop_with(mut emulator: Emulator, signal: &str) {
    let pid = emulator.child.id().to_string();
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = emulator.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the emulator did not stop on SIG{signal}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "SIG{signal}: exit status {status}");
    let rest = emulator
        .rest_of_stdout
        .recv_timeout(DEADLINE)
        .expect("stdout closes when the process exits");
    assert_eq!(rest, "", "stdout after the listening line");
}

fn terminate(emulator: Emulator) {
    stop_with(emulator, "TERM");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn prints_the_listening_line_serves_and_stops_on_sigterm() {
    let (emulator, base) = start(&["--listen", "127.0.0.1:0"]);
    runtime().block_on(async {
        let http = reqwest::Client::new();
        let response = http
            .get(format!(
                "{base}/api/v1/uploads?action=getPolicy&model=qwen-vl-plus"
            ))
            .bearer_auth("sk-demo")
            .send()
            .await
            .expect("answers");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(body["data"]["upload_host"], base.as_str());
        assert_eq!(body["data"]["expire_in_seconds"], 300);
    });
    terminate(emulator);
}

/// A script that signals the emulator as soon as it has read the listening line must get a
/// clean exit: the handlers are installed before the line is printed. Several rounds,
/// because the race this guards against is lost only some of the time.
#[test]
fn sigterm_right_after_the_listening_line_exits_cleanly() {
    for _ in 0..8 {
        let (emulator, _) = start(&["--listen", "127.0.0.1:0"]);
        stop_with(emulator, "TERM");
    }
}

#[test]
fn sigint_right_after_the_listening_line_exits_cleanly() {
    for _ in 0..8 {
        let (emulator, _) = start(&["--listen", "127.0.0.1:0"]);
        stop_with(emulator, "INT");
    }
}

#[test]
fn flags_reach_the_emulator() {
    let (emulator, base) = start(&[
        "--listen=127.0.0.1:0",
        "--models=m-one,m-two",
        "--policy-ttl-s=42",
        "--max-file-size-mb=5",
        "--capacity-limit-mb=7",
        "--credential-qps=1000",
        "--model-rps=50",
        "--credential-latency-ms=0",
        "--upload-latency-ms=0",
        "--chat-latency-ms=0",
        "--latency-jitter-ms=0",
        "--fault-rate=0",
        "--fault-seed=9",
        "--upload-bandwidth-mbps=1000",
    ]);
    runtime().block_on(async {
        let http = reqwest::Client::new();
        let get = |model: &str| {
            http.get(format!(
                "{base}/api/v1/uploads?action=getPolicy&model={model}"
            ))
            .bearer_auth("sk-demo")
            .send()
        };
        let response = get("m-two").await.expect("answers");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.expect("JSON");
        assert_eq!(body["data"]["expire_in_seconds"], 42);
        assert_eq!(body["data"]["max_file_size_mb"], 5);
        assert_eq!(body["data"]["capacity_limit_mb"], 7);
        assert_eq!(get("qwen-vl-plus").await.expect("answers").status(), 400);
    });
    terminate(emulator);
}

#[test]
fn help_documents_every_flag() {
    let assert = Command::cargo_bin("dashbatch")
        .expect("binary built")
        .args(["emulator", "--help"])
        .assert()
        .success();
    let mut expected = predicate::str::contains("--listen").boxed();
    for flag in [
        "--credential-latency-ms",
        "--upload-latency-ms",
        "--chat-latency-ms",
        "--latency-jitter-ms",
        "--fault-rate",
        "--fault-seed",
        "--upload-bandwidth-mbps",
        "--policy-ttl-s",
        "--credential-qps",
        "--model-rps",
        "--max-file-size-mb",
        "--models",
        "--capacity-limit-mb",
    ] {
        expected = expected.and(predicate::str::contains(flag)).boxed();
    }
    assert.stdout(expected);
}

#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [
        ["--fault-rate", "1.5"],
        ["--upload-bandwidth-mbps", "0"],
        ["--models", ","],
    ] {
        assert_cmd::Command::cargo_bin("dashbatch")
            .expect("binary built")
            .arg("emulator")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_clear()
            .timeout(DEADLINE)
            .assert()
            .failure()
            .code(2);
    }
}
