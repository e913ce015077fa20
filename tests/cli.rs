//! The binary's behaviour on bad input and with secrets, in a sealed environment.

mod common;

use std::path::Path;

use assert_cmd::Command;
use common::*;
use dashbatch::emulator::EmulatorConfig;
use predicates::prelude::*;

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

#[test]
fn a_missing_manifest_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.csv");
    dashbatch()
        .args(["run", "--emulator"])
        .arg(&missing)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("nope.csv"));
}

#[test]
fn a_manifest_missing_a_column_exits_2_before_any_work() {
    let mut job = Job::with_header("model,path,prompt");
    job.row("qwen-vl-plus,a.png,p");
    let metrics = job.dir.path().join("m.prom");
    dashbatch()
        .args(["run", "--emulator"])
        .arg(job.manifest())
        .arg("--metrics-textfile")
        .arg(&metrics)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing required column(s) file"));
    assert!(
        !job.output().exists(),
        "no results file for a refused manifest"
    );
    // Cron's watcher still learns that last night's run failed.
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&text, "dashbatch_last_run_success"), "0", "{text}");
    assert_eq!(metric(&text, "dashbatch_last_run_exit_code"), "2", "{text}");
    dashbatch()
        .arg("validate")
        .arg(job.manifest())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("missing required column(s) file"));
}

/// The value of the first sample of `name` in a Prometheus text file.
fn metric(text: &str, name: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .to_owned()
}

#[test]
fn a_results_folder_that_cannot_be_created_is_a_usage_error_naming_the_folder() {
    let mut job = Job::new();
    let a = job.file("a.png", b"img");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    // A regular file where the folder would go.
    job.file("blocker", b"not a folder");
    dashbatch()
        .args(["run", "--emulator"])
        .arg(job.manifest())
        .arg("-o")
        .arg(job.dir.path().join("blocker/out.csv"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot create the results folder"))
        .stderr(predicate::str::contains("blocker"))
        .stderr(predicate::str::contains("lock file").not());
}

#[test]
fn an_empty_manifest_has_nothing_to_do() {
    for text in ["", "model,file,prompt\n"] {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("m.csv");
        std::fs::write(&manifest, text).unwrap();
        let metrics = dir.path().join("m.prom");
        dashbatch()
            .args(["run", "--emulator"])
            .arg(&manifest)
            .arg("--metrics-textfile")
            .arg(&metrics)
            .assert()
            .code(0)
            .stderr(predicate::str::contains("nothing to do"));
        let metrics = std::fs::read_to_string(&metrics).unwrap();
        assert_eq!(metric(&metrics, "dashbatch_last_run_success"), "1");
        dashbatch().arg("validate").arg(&manifest).assert().code(0);
    }
}

#[test]
fn no_key_without_the_emulator_is_a_usage_error() {
    let mut job = Job::new();
    job.row("a,qwen-vl-plus,a.png,p");
    dashbatch()
        .arg("run")
        .arg(job.manifest())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("DASHSCOPE_API_KEY"));
}

#[test]
fn each_bad_row_fails_alone_with_its_line_and_the_rest_run() {
    let mut job = Job::new();
    let ok = job.file("ok.png", b"fine");
    let locked = job.file("locked.png", b"secret");
    std::fs::create_dir_all(job.dir.path().join("dir.png")).unwrap();
    job.file("notes.txt", b"text");
    job.row(&format!("ok,qwen-vl-plus,{ok},p")); // line 2
    job.row("unparseable,qwen-vl-plus"); // 3
    job.row(&format!("empty-prompt,qwen-vl-plus,{ok},")); // 4
    job.row("missing,qwen-vl-plus,gone.png,p"); // 5
    job.row("folder,qwen-vl-plus,dir.png,p"); // 6
    job.row(&format!("unreadable,qwen-vl-plus,{locked},p")); // 7
    job.row("unknown-ext,qwen-vl-plus,notes.txt,p"); // 8
    job.row("nul,qwen-vl-plus,\"a\0b.png\",p"); // 9
    job.row(&format!("ok,qwen-vl-plus,{ok},again")); // 10: duplicate id
    job.row(&format!("ok2,qwen-vl-plus,{ok},fine")); // 11
    let manifest = job.manifest();
    // Line 12: not UTF-8.
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes.extend_from_slice(b"latin1,qwen-vl-plus,ok.png,caf\xe9\n");
    // Line 13: a file that exists but cannot be opened, even by root: a symlink loop.
    bytes.extend_from_slice(b"loop,qwen-vl-plus,loop.png,p\n");
    std::fs::write(&manifest, bytes).unwrap();
    std::os::unix::fs::symlink("loop.png", job.dir.path().join("loop.png")).unwrap();
    let locked_path = job.dir.path().join(&locked);
    set_mode(&locked_path, 0o000);
    // Root reads any file; then "unreadable" cannot be staged and that row simply succeeds.
    let can_stage_unreadable = std::fs::File::open(&locked_path).is_err();

    dashbatch()
        .args(["run", "--emulator"])
        .arg(&manifest)
        .assert()
        .code(1)
        // The summary says which kinds of failure to look for.
        .stderr(predicate::str::contains("file_not_found 1"))
        .stderr(predicate::str::contains("bad_row 3"));
    let rows = results(&job.output());
    assert_eq!(rows.len(), 12, "one line per manifest row");
    let at = |line: u32| rows.iter().find(|r| r["line"] == line.to_string()).unwrap();
    assert_eq!(at(2)["status"], "ok");
    assert_eq!(at(11)["status"], "ok");
    for (line, code) in [
        (3, "bad_row"),
        (4, "bad_row"),
        (5, "file_not_found"),
        (6, "not_a_file"),
        (8, "unsupported_media"),
        (9, "bad_row"),
        (10, "duplicate_id"),
        (12, "bad_encoding"),
        (13, "unreadable_file"),
    ] {
        let r = at(line);
        assert_eq!(r["status"], "failed", "line {line}: {r:?}");
        assert_eq!(r["error_code"], code, "line {line}: {r:?}");
        assert!(!r["error_message"].is_empty());
    }
    for line in [3, 4, 5, 6, 8, 9, 10, 12, 13] {
        let msg = &at(line)["error_message"];
        assert!(msg.contains(&format!("manifest.csv, line {line}")), "{msg}");
    }
    if can_stage_unreadable {
        assert_eq!(at(7)["error_code"], "unreadable_file");
    }
    set_mode(&locked_path, 0o644);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn validate_prints_a_plan_and_fails_on_problems() {
    let mut job = Job::new();
    let a = job.file("a/x.png", b"one");
    let b = job.file("b/x.png", b"two!");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    job.row(&format!("2,qwen-vl-max,{b},p"));
    job.row(&format!("3,qwen-vl-max,{a},q"));
    dashbatch()
        .arg("validate")
        .arg(job.manifest())
        .assert()
        .code(0)
        .stdout(predicate::str::contains("rows: 3 (0 invalid"))
        .stdout(predicate::str::contains("files: 2 distinct, 7 bytes"))
        .stdout(predicate::str::contains("qwen-vl-max (2)"));
    job.row("3,qwen-vl-plus,missing.png,p");
    dashbatch()
        .arg("validate")
        .arg(job.manifest())
        .assert()
        .code(1)
        .stdout(predicate::str::contains("line 5"))
        .stdout(predicate::str::contains("already used"));
}

#[test]
fn a_job_file_names_the_manifest_and_flags_override_it() {
    let mut job = Job::new();
    let a = job.file("x.png", b"one");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    job.manifest();
    let toml = job.dir.path().join("nightly.toml");
    std::fs::write(
        &toml,
        "manifest = \"manifest.csv\"\noutput = \"from-job.csv\"\nemulator = true\napi = \"native\"\n",
    )
    .unwrap();
    dashbatch().arg("run").arg(&toml).assert().code(0);
    assert_eq!(results(&job.dir.path().join("from-job.csv")).len(), 1);
    let flag_out = job.dir.path().join("from-flag.csv");
    dashbatch()
        .arg("run")
        .arg(&toml)
        .arg("-o")
        .arg(&flag_out)
        .assert()
        .code(0);
    assert_eq!(results(&flag_out)[0]["status"], "ok");
}

/// The key must not appear in any output or any file dashbatch writes, at trace level, on
/// success and on failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_never_leaks() {
    const CANARY: &str = "CANARY7f3a9c";
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::with_header("id,model,file,prompt");
    let a = job.file("a.png", b"img");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    job.row("2,qwen-vl-plus,missing.png,p");
    let manifest = job.manifest();
    let key_file = job.dir.path().join("key.txt");
    std::fs::write(&key_file, format!("sk-acct.{CANARY}\n")).unwrap();
    let mut outputs = Vec::new();
    let base = em.base_url();
    let cases: Vec<(Vec<String>, Option<String>)> = vec![
        // Success (and one failed row) through the in-process emulator.
        (vec!["--emulator".into()], Some(format!("sk-acct.{CANARY}"))),
        // Key from a file, against an external emulator.
        (
            vec![
                "--base-url".into(),
                base.clone(),
                "--api-key-file".into(),
                key_file.display().to_string(),
                "--fresh".into(),
            ],
            None,
        ),
        // A key the service rejects: 401 path.
        (
            vec!["--base-url".into(), base.clone(), "--fresh".into()],
            Some(format!("sk-.{CANARY}")),
        ),
    ];
    for (case, (args, key)) in cases.into_iter().enumerate() {
        let manifest = manifest.clone();
        // Each case keeps its own reports, so every one of them is searched below.
        let summary = job.dir.path().join(format!("summary-{case}.json"));
        let metrics = job.dir.path().join(format!("metrics-{case}.prom"));
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = dashbatch();
            cmd.args(["-vvv", "run"])
                .arg(&manifest)
                .args(&args)
                .arg("--summary-json")
                .arg(&summary)
                .arg("--metrics-textfile")
                .arg(&metrics)
                .env("RUST_LOG", "trace");
            if let Some(key) = key {
                cmd.env("DASHSCOPE_API_KEY", key);
            }
            cmd.output().unwrap()
        })
        .await
        .unwrap();
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    assert!(
        outputs[5].contains("API key") || outputs[5].contains("InvalidApiKey"),
        "the 401 run explains itself: {}",
        outputs[5]
    );
    for text in &outputs {
        assert!(!text.contains(CANARY), "leaked in output: {text}");
    }
    for case in 0..3 {
        assert!(job.dir.path().join(format!("metrics-{case}.prom")).exists());
        assert!(job.dir.path().join(format!("summary-{case}.json")).exists());
    }
    for entry in walk(job.dir.path()) {
        if entry == key_file {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(CANARY),
            "leaked in {}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The official SDK's variable names the service as `<root>/api/v1`; a rejected key stops
/// the run with exit 2; the metrics file carries the cron-watching figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_base_url_variable_401_exit_code_and_metrics_file() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let a = job.file("a.png", b"img");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    let manifest = job.manifest();
    let metrics = job.dir.path().join("dashbatch.prom");
    let sdk_base = format!("{}/api/v1/", em.base_url());
    let run = |key: &'static str, fresh: bool| {
        let (manifest, metrics, sdk_base) = (manifest.clone(), metrics.clone(), sdk_base.clone());
        tokio::task::spawn_blocking(move || {
            let mut cmd = dashbatch();
            cmd.arg("run")
                .arg(&manifest)
                .arg("--metrics-textfile")
                .arg(&metrics)
                .env("DASHSCOPE_HTTP_BASE_URL", sdk_base)
                .env("DASHSCOPE_API_KEY", key);
            if fresh {
                cmd.arg("--fresh");
            }
            cmd.output().unwrap()
        })
    };
    let ok = run("sk-acme", false).await.unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains("dashbatch_last_run_success{manifest="),
        "{text}"
    );
    assert_eq!(metric(&text, "dashbatch_last_run_success"), "1", "{text}");
    assert!(text.contains("dashbatch_last_run_end_timestamp_seconds"));

    let rejected = run("sk-", true).await.unwrap();
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert_eq!(rejected.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("API key was rejected"), "{stderr}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("dashbatch_last_run_success{") && l.ends_with(" 0")),
        "{text}"
    );
}

/// A `--base-url` flag beats the job file's `emulator = true`, as flags beat job files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_flag_overrides_a_job_files_emulator() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::new();
    let a = job.file("x.png", b"one");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    job.manifest();
    let toml = job.dir.path().join("nightly.toml");
    std::fs::write(&toml, "manifest = \"manifest.csv\"\nemulator = true\n").unwrap();
    let base = em.base_url();
    let out = tokio::task::spawn_blocking(move || {
        dashbatch()
            .arg("run")
            .arg(&toml)
            .args(["--base-url", &base])
            .env("DASHSCOPE_API_KEY", "sk-acme")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stats(&em).await["chat_calls"],
        1,
        "the row reached this emulator"
    );
}

#[test]
fn validate_reports_a_results_file_that_run_would_refuse() {
    let mut job = Job::new();
    let a = job.file("a.png", b"one");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    std::fs::write(job.output(), "some,other,columns\n1,2,3\n").unwrap();
    dashbatch()
        .arg("validate")
        .arg(job.manifest())
        .assert()
        .code(1)
        .stdout(predicate::str::contains("different columns"));
}

/// Issue 12: the cause of an unreadable job file is said once, not twice.
#[test]
fn a_missing_job_file_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dashbatch()
        .arg("run")
        .arg(dir.path().join("nosuch.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot read job file"), "{stderr}");
    assert!(stderr.contains("nosuch.toml"), "{stderr}");
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
}

/// Issue 12: the README's first command prints the run's summary first, not a timestamped
/// log line about the in-process emulator's address.
#[test]
fn a_run_against_the_in_process_emulator_starts_with_no_log_line() {
    let mut job = Job::new();
    let file = job.file("a.png", b"png");
    job.row(&format!("r1,qwen-vl-plus,{file},what is it?"));
    let out = dashbatch()
        .args(["run", "--emulator"])
        .arg(job.manifest())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(" INFO "), "{stderr}");
    assert!(!stderr.contains("emulator listening"), "{stderr}");
}

/// Issue 12: `--limit N` does the first N rows still to do and leaves the rest
/// `not_attempted` for the next run, exiting 0 when those N are ok; a second run with the
/// same limit does the next N (rows already ok do not count).
#[test]
fn limit_runs_the_first_n_rows_still_to_do_and_leaves_the_rest() {
    let mut job = Job::new();
    for i in 1..=5 {
        let file = job.file(&format!("f{i}.png"), format!("png {i}").as_bytes());
        job.row(&format!("r{i},qwen-vl-plus,{file},what is {i}?"));
    }
    let manifest = job.manifest();
    let run = || {
        dashbatch()
            .args(["run", "--emulator", "-q", "--limit", "2"])
            .arg(&manifest)
            .assert()
            .code(0);
        let rows = results(&job.output());
        assert_eq!(rows.len(), 5, "every manifest row has a line");
        rows.iter()
            .map(|r| {
                (
                    r["id"].clone(),
                    r["status"].clone(),
                    r["error_code"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let ok = |id: &str| (id.to_owned(), "ok".to_owned(), String::new());
    let left = |id: &str| {
        (
            id.to_owned(),
            "failed".to_owned(),
            "not_attempted".to_owned(),
        )
    };
    assert_eq!(
        run(),
        [ok("r1"), ok("r2"), left("r3"), left("r4"), left("r5")]
    );
    assert_eq!(run(), [ok("r1"), ok("r2"), ok("r3"), ok("r4"), left("r5")]);
    dashbatch()
        .args(["run", "--emulator", "--limit", "0"])
        .arg(&manifest)
        .assert()
        .code(2);
}

/// Issue 12: `-o` into a folder that does not exist creates it, as most tools do.
#[test]
fn output_into_a_missing_folder_creates_it() {
    let mut job = Job::new();
    let file = job.file("a.png", b"png");
    job.row(&format!("r1,qwen-vl-plus,{file},what is it?"));
    let out = job.dir.path().join("new/deeper/out.csv");
    dashbatch()
        .args(["run", "--emulator", "-q"])
        .arg(job.manifest())
        .arg("-o")
        .arg(&out)
        .assert()
        .code(0);
    assert_eq!(results(&out).len(), 1);
}

/// Issue 12: a job file's `../manifest.csv` reached the Prometheus label as
/// `jobs/../manifest.csv`; paths are normalised against the job file's folder.
#[test]
fn job_file_paths_reach_labels_and_messages_normalised() {
    let mut job = Job::new();
    let a = job.file("x.png", b"one");
    job.row(&format!("1,qwen-vl-plus,{a},p"));
    job.manifest();
    std::fs::create_dir(job.dir.path().join("jobs")).unwrap();
    let toml = job.dir.path().join("jobs/nightly.toml");
    std::fs::write(
        &toml,
        "manifest = \"../manifest.csv\"\nemulator = true\nmetrics_textfile = \"./m/../run.prom\"\n",
    )
    .unwrap();
    dashbatch().arg("run").arg(&toml).arg("-q").assert().code(0);
    let text = std::fs::read_to_string(job.dir.path().join("jobs/run.prom")).unwrap();
    let label = format!(
        "manifest=\"{}\"",
        job.dir.path().join("manifest.csv").display()
    );
    assert!(text.contains(&label) && !text.contains(".."), "{text}");
}
