//! `dashbatch emulator`: the real binary prints its address, serves with its flags applied,
//! and exits 0 on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use assert_cmd::prelude::*;
use predicates::prelude::*;
use serde_json::json;

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

/// Every flag, each with a value that differs from its default, must show up in the
/// configuration the running emulator reports, and the visible ones in its answers.
#[test]
fn flags_reach_the_emulator() {
    let (emulator, base) = start(&[
        "--listen=127.0.0.1:0",
        "--public-url=http://emulator.test:9000/",
        "--models=m-one,m-two",
        "--policy-ttl-s=42",
        "--max-file-size-mb=5",
        "--capacity-limit-mb=7",
        "--credential-qps=1000",
        "--model-rps=50",
        "--credential-latency-ms=11",
        "--upload-latency-ms=12",
        "--chat-latency-ms=13",
        "--latency-jitter-ms=14",
        "--fault-rate=0.001",
        "--fault-seed=9",
        "--fault-slow-ms=15",
        "--upload-bandwidth-mbps=123.5",
        "--stream-only-models=m-two",
        "--denied-models=m-three",
        "--burst-floor=5",
        "--burst-growth=1.5",
        "--model-tpm=6000",
        "--arrears-after=10",
        "--arrears-code=PrepaidBillOverdue",
    ]);
    runtime().block_on(async {
        let http = reqwest::Client::new();
        let config: serde_json::Value = http
            .get(format!("{base}/__emulator/config"))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("JSON");
        let expected = [
            ("public_url", json!("http://emulator.test:9000/")),
            ("models", json!(["m-one", "m-two"])),
            ("policy_ttl_s", json!(42)),
            ("max_file_size_mb", json!(5)),
            ("capacity_limit_mb", json!(7)),
            ("credential_qps", json!(1000)),
            ("model_rps", json!(50)),
            ("credential_latency_ms", json!(11)),
            ("upload_latency_ms", json!(12)),
            ("chat_latency_ms", json!(13)),
            ("latency_jitter_ms", json!(14)),
            ("fault_rate", json!(0.001)),
            ("fault_seed", json!(9)),
            ("fault_slow_ms", json!(15)),
            ("upload_bandwidth_mbps", json!(123.5)),
            ("stream_only_models", json!(["m-two"])),
            ("denied_models", json!(["m-three"])),
            ("burst_floor", json!(5)),
            ("burst_growth", json!(1.5)),
            ("model_tpm", json!(6000)),
            ("arrears_after", json!(10)),
            ("arrears_code", json!("PrepaidBillOverdue")),
        ];
        for (field, value) in expected {
            assert_eq!(config[field], value, "{field} in {config}");
        }

        // With this seed and rate the first requests meet no fault.
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
        assert_eq!(body["data"]["upload_host"], "http://emulator.test:9000");
        assert_eq!(get("qwen-vl-plus").await.expect("answers").status(), 400);
    });
    terminate(emulator);
}

/// Without flags, the configuration is the documented default.
#[test]
fn defaults_reach_the_emulator() {
    let (emulator, base) = start(&["--listen=127.0.0.1:0"]);
    runtime().block_on(async {
        let config: serde_json::Value = reqwest::get(format!("{base}/__emulator/config"))
            .await
            .expect("answers")
            .json()
            .await
            .expect("JSON");
        assert_eq!(config["public_url"], base.as_str());
        assert_eq!(config["credential_qps"], 100);
        assert_eq!(config["model_rps"], serde_json::Value::Null);
        assert_eq!(config["policy_ttl_s"], 300);
        assert_eq!(config["fault_rate"], json!(0.0));
        assert_eq!(config["fault_slow_ms"], 2000);
        assert_eq!(config["upload_bandwidth_mbps"], serde_json::Value::Null);
        assert_eq!(
            config["stream_only_models"],
            json!(["qwen-omni-turbo", "qwen3-omni-flash", "qvq-max"])
        );
        for model in ["qwen-omni-turbo", "qwen3-omni-flash", "qvq-max"] {
            let models = config["models"].as_array().expect("models");
            assert!(models.contains(&json!(model)), "{model} in {config}");
        }
        assert_eq!(config["denied_models"], json!([]));
        assert_eq!(config["burst_floor"], serde_json::Value::Null);
        assert_eq!(config["model_tpm"], serde_json::Value::Null);
        assert_eq!(config["arrears_after"], serde_json::Value::Null);
        assert_eq!(config["arrears_code"], "Arrearage");
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
        "--fault-slow-ms",
        "--public-url",
        "--upload-bandwidth-mbps",
        "--policy-ttl-s",
        "--credential-qps",
        "--model-rps",
        "--max-file-size-mb",
        "--models",
        "--capacity-limit-mb",
        "--stream-only-models",
        "--denied-models",
        "--burst-floor",
        "--burst-growth",
        "--model-tpm",
        "--arrears-after",
        "--arrears-code",
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
        ["--upload-bandwidth-mbps", "1e-300"],
        ["--upload-bandwidth-mbps", "0.0009"],
        ["--upload-bandwidth-mbps", "inf"],
        ["--models", ","],
        ["--burst-growth", "2"],
        ["--model-tpm", "0"],
        ["--arrears-code", "Broke"],
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

#[test]
fn a_too_small_bandwidth_is_refused_with_its_minimum() {
    assert_cmd::Command::cargo_bin("dashbatch")
        .expect("binary built")
        .args(["emulator", "--listen", "127.0.0.1:0"])
        .args(["--upload-bandwidth-mbps", "1e-300"])
        .env_clear()
        .timeout(DEADLINE)
        .assert()
        .failure()
        .code(2)
        .stderr(predicate::str::contains("at least 0.001"));
    // The slowest allowed rate is accepted.
    let (emulator, _) = start(&["--listen=127.0.0.1:0", "--upload-bandwidth-mbps=0.001"]);
    terminate(emulator);
}
