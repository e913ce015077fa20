//! What a row asks the model beyond its prompt (issue 10, items 2-4): generation parameters
//! from `--param`, a job file's `[params]` and the manifest's `params` column, in both body
//! shapes; several files per row, in order; the `reasoning` column, and the resume of a
//! results file written before it.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use axum::Router;
use axum::extract::State;
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use common::*;
use dashbatch::dashscope::Api;
use dashbatch::emulator::{EmulatorConfig, Running};
use dashbatch::pipeline::{self, Outcome};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

type Bodies = Arc<Mutex<Vec<(String, Value)>>>;

/// A model service that records each request body and answers as a thinking model would,
/// its reasoning naming the prompt.
async fn recording_service() -> (Bodies, String) {
    async fn answer(State(seen): State<Bodies>, uri: Uri, body: String) -> Response {
        let json: Value = serde_json::from_str(&body).unwrap_or_default();
        seen.lock()
            .unwrap()
            .push((uri.path().to_owned(), json.clone()));
        let text = |content: &Value| -> String {
            match content {
                Value::String(s) => s.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text")?.as_str())
                    .collect(),
                _ => String::new(),
            }
        };
        if uri.path().starts_with("/compatible-mode") {
            let prompt = text(&json["messages"][0]["content"]);
            axum::Json(
                json!({"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant",
                "content": "done", "reasoning_content": format!("thought about {prompt}")},
                "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
            )
            .into_response()
        } else {
            let prompt = text(&json["input"]["messages"][0]["content"]);
            axum::Json(
                json!({"request_id": "n-1", "output": {"choices": [{"finish_reason": "stop",
                "message": {"role": "assistant", "content": [{"text": "done"}],
                "reasoning_content": format!("thought about {prompt}")}}]},
                "usage": {"input_tokens": 1, "output_tokens": 1}}),
            )
            .into_response()
        }
    }
    let seen = Bodies::default();
    let app = Router::new()
        .fallback(post(answer))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, root)
}

/// Runs the binary on `job_file` with `args`, off the test's runtime.
async fn run_cli(job_file: &Path, args: &[&str]) -> std::process::Output {
    let (job_file, args): (_, Vec<String>) = (
        job_file.to_owned(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        dashbatch()
            .arg("run")
            .arg(&job_file)
            .args(&args)
            .env("DASHSCOPE_API_KEY", "sk-test-params")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The job file's `[params]`, then each `--param` over them, then a row's `params` cell over
/// both, key by key; at the top level of a compatible body, under `parameters` in a native
/// one. The reasoning of the answer lands in the `reasoning` column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_from_flag_job_file_and_column_merge_in_both_body_shapes() {
    for (api, path) in [
        ("compatible", "/compatible-mode/v1/chat/completions"),
        (
            "native",
            "/api/v1/services/aigc/multimodal-generation/generation",
        ),
    ] {
        let (seen, root) = recording_service().await;
        let mut job = Job::with_header("id,model,file,prompt,params");
        job.row(
            r#"1,qwen-vl-plus,https://example.com/a.png,first,"{""seed"": 7, ""top_p"": 0.5}""#,
        );
        job.row("2,qwen-vl-plus,https://example.com/b.png,second,");
        job.manifest();
        let job_file = job.dir.path().join("job.toml");
        std::fs::write(
            &job_file,
            format!(
                "manifest = \"manifest.csv\"\nbase_url = \"{root}\"\napi = \"{api}\"\n\
                 [params]\ntemperature = 0.5\nmax_tokens = 100\nseed = 1\n"
            ),
        )
        .unwrap();
        let out = run_cli(
            &job_file,
            &[
                "--param",
                "max_tokens=200",
                "--param",
                r#"response_format={"type":"json_object"}"#,
                "--param",
                "stop=END",
            ],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{api}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{api}");
        let params_of = |prompt: &str| -> Value {
            let (at, body) = seen
                .iter()
                .find(|(_, b)| b.to_string().contains(prompt))
                .unwrap_or_else(|| panic!("{api}: no call for {prompt}"));
            assert_eq!(at, path);
            match api {
                "compatible" => {
                    assert!(body.get("parameters").is_none(), "{body}");
                    let mut top = body.as_object().unwrap().clone();
                    top.remove("model");
                    top.remove("messages");
                    Value::Object(top)
                }
                _ => {
                    assert!(body.get("temperature").is_none(), "{body}");
                    body["parameters"].clone()
                }
            }
        };
        let common = json!({"temperature": 0.5, "max_tokens": 200,
            "response_format": {"type": "json_object"}, "stop": "END"});
        let mut first = common.clone();
        first["seed"] = json!(7);
        first["top_p"] = json!(0.5);
        assert_eq!(params_of("first"), first, "{api}");
        let mut second = common;
        second["seed"] = json!(1);
        assert_eq!(params_of("second"), second, "{api}");

        let lines = by_id(&results(&job.output()));
        assert_eq!(lines["1"]["status"], "ok", "{api}");
        assert_eq!(lines["1"]["reasoning"], "thought about first", "{api}");
        assert_eq!(lines["2"]["reasoning"], "thought about second", "{api}");
    }
}

/// A `params` cell that is not a JSON object fails its row alone, naming the line, and
/// `validate` finds it before a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_params_cell_that_is_not_an_object_fails_its_row_naming_the_line() {
    let mut job = Job::with_header("id,model,file,prompt,params");
    job.row("1,qwen-vl-plus,https://example.com/a.png,fine,");
    job.row("2,qwen-vl-plus,https://example.com/b.png,list,\"[1, 2]\"");
    job.row("3,qwen-vl-plus,https://example.com/c.png,text,temperature=0.2");
    job.row(r#"4,qwen-vl-plus,https://example.com/d.png,own,"{""messages"": []}""#);
    let manifest = job.manifest();
    let validate = dashbatch().arg("validate").arg(&manifest).output().unwrap();
    let stdout = String::from_utf8_lossy(&validate.stdout);
    assert_eq!(validate.status.code(), Some(1), "{stdout}");
    for needle in [
        "line 3",
        "line 4",
        "line 5",
        "not a JSON object",
        "not valid JSON",
    ] {
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }

    let out = tokio::task::spawn_blocking(move || {
        dashbatch()
            .arg("run")
            .arg(&manifest)
            .arg("--emulator")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let lines = by_id(&results(&job.output()));
    assert_eq!(lines.len(), 4, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(lines["1"]["status"], "ok");
    for (id, line, why) in [
        ("2", "line 3", "not a JSON object"),
        ("3", "line 4", "not valid JSON"),
        ("4", "line 5", "set by dashbatch"),
    ] {
        let msg = &lines[id]["error_message"];
        assert_eq!(lines[id]["error_code"], "bad_row", "{id}: {msg}");
        assert!(msg.contains(line) && msg.contains(why), "{id}: {msg}");
    }
}

/// The names dashbatch sets itself are refused as a flag (a usage error) and as a job file's
/// key (naming the file), before any work.
#[test]
fn names_dashbatch_sets_are_refused_as_flags_and_job_keys() {
    let mut job = Job::new();
    job.row("1,qwen-vl-plus,https://example.com/a.png,p");
    let manifest = job.manifest();
    for name in [
        "model",
        "messages",
        "input",
        "stream",
        "stream_options",
        "incremental_output",
    ] {
        let out = dashbatch()
            .args(["run", "--emulator", "--param", &format!("{name}=1")])
            .arg(&manifest)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains("set by dashbatch"), "{name}: {stderr}");
    }
    let job_file = job.dir.path().join("job.toml");
    std::fs::write(
        &job_file,
        "manifest = \"manifest.csv\"\nemulator = true\n[params]\nstream = true\n",
    )
    .unwrap();
    let out = dashbatch().arg("run").arg(&job_file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("job.toml") && stderr.contains("\"stream\""),
        "{stderr}"
    );
    assert!(!job.output().exists(), "no work was done");
}

async fn run(job: &Job, em: &Running, api: Api) -> Outcome {
    let config = job.config(api, 4);
    pipeline::run(&config, client(em, "sk-acme"), CancellationToken::new())
        .await
        .unwrap()
}

/// Rows with one, two and three files (and an empty further cell, skipped): every file is
/// uploaded and given to the model in the order of its column's number, whatever the
/// header's order; the results line lists their URLs in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_with_one_two_and_three_files_reach_the_model_in_order() {
    let em = start(EmulatorConfig::default()).await;
    for api in [Api::Compatible, Api::Native] {
        let mut job = Job::with_header("id,model,file3,file,prompt,file2");
        let contents: Vec<Vec<u8>> = (0..3).map(|i| bytes(i, 64 + i as usize)).collect();
        let [a, b, c] = ["a.png", "b.png", "c.png"].map(|name| name.to_owned());
        for (name, content) in [&a, &b, &c].into_iter().zip(&contents) {
            job.file(name, content);
        }
        job.row(&format!(",qwen-vl-plus,,{a},one,"));
        job.row(&format!(",qwen-vl-plus,,{a},two,{b}"));
        job.row(&format!(",qwen-vl-plus,{c},{a},three,{b}"));
        job.row(&format!(",qwen-vl-plus,{c},{a},gap,"));
        let outcome = run(&job, &em, api).await;
        assert_eq!(outcome.stats.rows_ok, 4, "{}", outcome.stats.summary_line());
        let lines = results(&job.output());
        let sums: Vec<String> = contents.iter().map(|c| sha256_hex(c)).collect();
        for (prompt, want) in [
            ("one", vec![0]),
            ("two", vec![0, 1]),
            ("three", vec![0, 1, 2]),
            ("gap", vec![0, 2]),
        ] {
            let line = lines.iter().find(|l| l["prompt"] == prompt).unwrap();
            let response = &line["response"];
            let found: Vec<&str> = response
                .split("sha256=")
                .skip(1)
                .map(|rest| &rest[..64])
                .collect();
            let want_sums: Vec<&str> = want.iter().map(|&i| sums[i].as_str()).collect();
            assert_eq!(found, want_sums, "{api:?} {prompt}: {response}");
            let urls: Vec<&str> = line["oss_url"].split(' ').collect();
            assert_eq!(urls.len(), want.len(), "{api:?} {prompt}: {line:?}");
            assert!(urls.iter().all(|u| u.starts_with("oss://")), "{line:?}");
            assert_eq!(line["file"], a, "the file column names the first file");
            assert_eq!(line["reasoning"], "", "not a thinking model");
        }
        // One id per row, each covering all its files.
        let ids: std::collections::HashSet<&str> = lines.iter().map(|l| l["id"].as_str()).collect();
        assert_eq!(ids.len(), 4);
    }
}

/// A results file written before the `reasoning` column (committed as the version before it
/// wrote it) resumes: its ok rows are skipped, its failed row runs, and the file gets the
/// column, the old values kept under their names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_file_from_before_reasoning_still_resumes() {
    let em = start(EmulatorConfig::default()).await;
    let mut job = Job::with_header("id,model,file,prompt,note");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resume-v2");
    std::fs::copy(from.join("results-v2.csv"), job.output()).unwrap();
    let before = by_id(&results(&job.output()));
    assert!(!before["1"].contains_key("reasoning"));
    let manifest = std::fs::read_to_string(from.join("manifest.csv")).unwrap();
    for line in manifest.lines().skip(1) {
        job.row(line);
    }
    let outcome = run(&job, &em, Api::Compatible).await;
    assert_eq!(
        outcome.stats.rows_skipped,
        2,
        "{}",
        outcome.stats.summary_line()
    );
    assert_eq!(
        stats(&em).await["chat_calls"],
        1,
        "only the failed row runs"
    );
    let text = std::fs::read_to_string(job.output()).unwrap();
    let header = text.lines().next().unwrap();
    assert!(header.ends_with(",input_digest,reasoning,note"), "{header}");
    let after = by_id(&results(&job.output()));
    assert_eq!(after.len(), 3);
    for id in ["1", "2"] {
        for column in [
            "response",
            "input_digest",
            "request_id",
            "finished_at",
            "note",
        ] {
            assert_eq!(after[id][column], before[id][column], "{id} {column}");
        }
        assert_eq!(after[id]["reasoning"], "");
    }
    assert_eq!(after["3"]["status"], "ok");
    assert_eq!(after["3"]["note"], "third");
}
