//! The files a run reads and writes, through the real binary: OUT that is the manifest by
//! another name, a piped manifest, special files, symlinked outputs, and reports on every
//! exit (issue 8, findings 1, 5, 6, 13 and 14).

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dashbatch::emulator::EmulatorConfig;
use tokio::process::Command;

fn dashbatch() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dashbatch"));
    // A sealed environment: only what the test sets.
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    cmd
}

async fn finish(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().await.expect("dashbatch runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a file.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

fn is_fifo(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .unwrap()
        .file_type()
        .is_fifo()
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("summary written")).unwrap()
}

/// A job of `rows` rows with a small file each.
fn job(rows: u64) -> Job {
    let mut job = Job::new();
    for i in 0..rows {
        let f = job.file(&format!("m/{i}.png"), &bytes(i, 32));
        job.row(&format!("r{i},qwen-vl-plus,{f},prompt {i}"));
    }
    job
}

#[tokio::test]
async fn an_output_that_is_the_manifest_or_the_job_file_is_refused_and_nothing_is_lost() {
    let job = job(2);
    let dir = job.dir.path();
    let manifest = job.manifest();
    let text = std::fs::read(&manifest).unwrap();
    std::os::unix::fs::symlink("manifest.csv", dir.join("link.csv")).unwrap();
    std::fs::hard_link(&manifest, dir.join("hard.csv")).unwrap();
    let summary_path = dir.join("summary.json");
    for out in ["manifest.csv", "link.csv", "hard.csv"] {
        let (code, stderr) = finish(
            dashbatch()
                .args(["run", "--emulator", "--fresh", "-o"])
                .arg(dir.join(out))
                .arg(&manifest)
                .arg("--summary-json")
                .arg(&summary_path),
        )
        .await;
        assert_eq!(code, 2, "{out}: {stderr}");
        assert!(stderr.contains("same file as the manifest"), "{stderr}");
        assert!(
            !stderr.contains("--fresh"),
            "never suggest --fresh: {stderr}"
        );
        assert_eq!(std::fs::read(&manifest).unwrap(), text, "{out}");
        assert_eq!(summary(&summary_path)["exit_code"], 2);
    }
    // A report aimed at the manifest is refused too, and not written over it.
    let (code, stderr) = finish(
        dashbatch()
            .args(["run", "--emulator"])
            .arg(&manifest)
            .arg("--summary-json")
            .arg(&manifest),
    )
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(std::fs::read(&manifest).unwrap(), text);

    let job_file = dir.join("job.toml");
    let job_text = "manifest = \"manifest.csv\"\noutput = \"job.toml\"\nemulator = true\n";
    std::fs::write(&job_file, job_text).unwrap();
    let (code, stderr) = finish(dashbatch().args(["run", "--fresh"]).arg(&job_file)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("same file as the job file"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&job_file).unwrap(), job_text);
}

#[tokio::test]
async fn a_piped_manifest_is_refused_with_a_report_that_says_so() {
    let job = job(5);
    let text = std::fs::read(job.manifest()).unwrap();
    let summary_path = job.dir.path().join("summary.json");
    let mut child = dashbatch()
        .args(["run", "--emulator", "/dev/stdin", "-o"])
        .arg(job.dir.path().join("out.csv"))
        .arg("--summary-json")
        .arg(&summary_path)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The refusal may come before the pipe is read: a broken pipe here is fine.
    let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, &text).await;
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert!(stderr.contains("write it to a file first"), "{stderr}");
    let summary = summary(&summary_path);
    assert_eq!(summary["success"], false, "{summary}");
    assert_eq!(summary["exit_code"], 2, "{summary}");

    // `validate` refuses it too, without opening it (a FIFO nobody writes would block).
    let fifo = job.dir.path().join("m.fifo");
    mkfifo(&fifo);
    let (code, stderr) = finish(dashbatch().arg("validate").arg(&fifo)).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_special_output_is_refused_before_any_call_and_left_as_it_was() {
    let em = start(EmulatorConfig::default()).await;
    let job = job(3);
    let fifo = job.dir.path().join("out.fifo");
    mkfifo(&fifo);
    let mut cmd = dashbatch();
    cmd.arg("run")
        .arg(job.manifest())
        .args(["--base-url", &em.base_url(), "-o"])
        .arg(&fifo)
        .env("DASHSCOPE_API_KEY", "sk-acme");
    let run = finish(&mut cmd);
    // Before the check, opening the FIFO to write results waited for a reader forever.
    let (code, stderr) = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("refused at once, not blocked on the FIFO");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
    assert!(is_fifo(&fifo));
    assert!(!job.dir.path().join("out.fifo.lock").exists());
    assert!(!job.dir.path().join(".dashbatch").exists());
    assert_eq!(stats(&em).await["chat_calls"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_to_a_fifo_is_written_into_it_not_over_it() {
    let em = start(EmulatorConfig::default()).await;
    let job = job(2);
    let fifo = job.dir.path().join("summary.fifo");
    mkfifo(&fifo);
    // A reader, so that the run has someone to write to; non-blocking so that opening it
    // does not wait for the writer.
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let (code, stderr) = finish(
        dashbatch()
            .arg("run")
            .arg(job.manifest())
            .args(["--base-url", &em.base_url(), "--summary-json"])
            .arg(&fifo)
            .env("DASHSCOPE_API_KEY", "sk-acme"),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(is_fifo(&fifo), "the FIFO was replaced by a file");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut reader, &mut text).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["rows_ok"], 2, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_to_the_results_shares_its_lock_and_stays_a_link() {
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_millis(30),
        ..EmulatorConfig::default()
    })
    .await;
    let job = job(60);
    let out = job.output();
    let alias = job.dir.path().join("alias.csv");
    std::os::unix::fs::symlink("manifest.results.csv", &alias).unwrap();
    let run = |o: &Path| {
        let mut cmd = dashbatch();
        cmd.arg("run")
            .arg(job.manifest())
            .args(["--base-url", &em.base_url(), "--concurrency", "8", "-o"])
            .arg(o)
            .env("DASHSCOPE_API_KEY", "sk-acme");
        cmd
    };
    let mut first = run(&alias).stderr(Stdio::null()).spawn().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while results_so_far(&out) < 1 {
        assert!(first.try_wait().unwrap().is_none(), "ended before a line");
        assert!(tokio::time::Instant::now() < deadline, "no line written");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval, with a deadline
    }
    let (code, stderr) = finish(&mut run(&out)).await;
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("manifest.results.csv.lock"), "{stderr}");
    assert_eq!(first.wait().await.unwrap().code(), Some(0));
    assert!(
        std::fs::symlink_metadata(&alias)
            .unwrap()
            .file_type()
            .is_symlink(),
        "compaction replaced the link, not its target"
    );
    assert_eq!(results(&out).len(), 60);
    assert_eq!(
        stats(&em).await["chat_calls"],
        60,
        "no row was called twice"
    );
}

/// Complete lines in a results file being written (its header not counted).
fn results_so_far(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.matches('\n').count().saturating_sub(1))
        .unwrap_or(0)
}

#[tokio::test]
async fn reports_are_written_when_the_key_or_the_base_url_is_unusable() {
    let job = job(1);
    let dir = job.dir.path();
    let summary_path = dir.join("summary.json");
    let metrics_path = dir.join("m.prom");
    std::fs::write(
        dir.join("job.toml"),
        "manifest = \"manifest.csv\"\napi_key_file = \"missing.key\"\n\
         summary_json = \"summary.json\"\nmetrics_textfile = \"m.prom\"\n",
    )
    .unwrap();
    job.manifest();
    let with_reports = |cmd: &mut Command| {
        cmd.arg("--summary-json")
            .arg(&summary_path)
            .arg("--metrics-textfile")
            .arg(&metrics_path);
    };
    let mut cases: Vec<(&str, Command)> = Vec::new();
    let mut cmd = dashbatch();
    cmd.arg("run").arg(dir.join("job.toml"));
    cases.push(("missing key file", cmd));
    let mut cmd = dashbatch();
    cmd.arg("run").arg(job.manifest());
    with_reports(&mut cmd);
    cases.push(("no key", cmd));
    let mut cmd = dashbatch();
    cmd.arg("run")
        .arg(job.manifest())
        .args(["--base-url", "ftp://x"])
        .env("DASHSCOPE_API_KEY", "sk-acme");
    with_reports(&mut cmd);
    cases.push(("ftp base url", cmd));
    for (name, mut cmd) in cases {
        // Last night's reports said success: they must not stay in place.
        std::fs::write(&summary_path, "{\"success\": true}").unwrap();
        std::fs::write(&metrics_path, "stale").unwrap();
        let (code, stderr) = finish(&mut cmd).await;
        assert_eq!(code, 2, "{name}: {stderr}");
        let summary = summary(&summary_path);
        assert_eq!(summary["success"], false, "{name}: {summary}");
        assert_eq!(summary["exit_code"], 2, "{name}: {summary}");
        let metrics = std::fs::read_to_string(&metrics_path).unwrap();
        assert!(
            metrics.contains("dashbatch_last_run_exit_code{"),
            "{name}: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stderr_neither_panics_the_run_nor_loses_its_reports() {
    let em = start(EmulatorConfig::default()).await;
    let job = job(3);
    let summary_path = job.dir.path().join("summary.json");
    // The read end is closed before the run starts, so every write to stderr fails (EPIPE),
    // as under `2>&1 | head -1` once head has exited.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // spawn, not output(): tokio's output() replaces stderr with a pipe of its own.
    let status = dashbatch()
        .arg("run")
        .arg(job.manifest())
        .args(["--base-url", &em.base_url(), "-v", "--summary-json"])
        .arg(&summary_path)
        .env("DASHSCOPE_API_KEY", "sk-acme")
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    assert_eq!(summary(&summary_path)["rows_ok"], 3);
    let rows = results(&job.output());
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["status"] == "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once_and_still_leaves_a_report() {
    use tokio::io::AsyncBufReadExt;
    let em = start(EmulatorConfig {
        chat_latency: Duration::from_secs(60),
        ..EmulatorConfig::default()
    })
    .await;
    let job = job(8);
    let summary_path = job.dir.path().join("summary.json");
    std::fs::write(&summary_path, "{\"success\": true}").unwrap();
    let mut child = dashbatch()
        .arg("run")
        .arg(job.manifest())
        .args(["--base-url", &em.base_url(), "--summary-json"])
        .arg(&summary_path)
        .env("DASHSCOPE_API_KEY", "sk-acme")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Uploads come before model calls: once a file is stored, its row is calling.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats(&em).await["uploads"].as_u64().unwrap_or(0) < 1 {
        assert!(child.try_wait().unwrap().is_none(), "dashbatch ended early");
        assert!(tokio::time::Instant::now() < deadline, "no uploads");
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval, with a deadline
    }
    let sigterm = |child: &tokio::process::Child| {
        let pid = child.id().unwrap().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    sigterm(&child);
    // The second signal goes once the first has been taken.
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    while let Some(line) = stderr.next_line().await.unwrap() {
        if line.contains("stopping: no new rows") {
            break;
        }
    }
    sigterm(&child);
    while stderr.next_line().await.unwrap().is_some() {}
    let status = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .expect("a second signal does not wait for the 60 s calls")
        .unwrap();
    assert_eq!(status.code(), Some(130));
    let summary = summary(&summary_path);
    assert_eq!(summary["exit_code"], 130, "{summary}");
    assert_eq!(summary["success"], false, "{summary}");
}
