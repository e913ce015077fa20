//! What the client reads from the network, when the network is hostile: endless bodies, a
//! credential naming an upload host we cannot use, a gateway that quotes the key back, and a
//! policy lifetime too large for any clock. Each runs the real binary in a sealed environment
//! against a scripted server on 127.0.0.1:0 (or the emulator).

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::*;
use dashbatch::emulator::EmulatorConfig;
use serde_json::json;

const KEY: &str = "sk-acct.CANARY9b2e41d7";

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

/// A scripted DashScope whose behaviour is chosen by the model name. Counts requests per
/// (route, model) so a test can tell a refused answer from a retried one.
#[derive(Clone)]
struct Hostile {
    root: String,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

impl Hostile {
    fn hit(&self, what: &str) {
        *self
            .hits
            .lock()
            .unwrap()
            .entry(what.to_owned())
            .or_default() += 1;
    }

    fn hits(&self, what: &str) -> u32 {
        self.hits.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

/// A 200 whose chunked body never ends. The stream stops only when the client hangs up.
fn endless() -> Response {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let stream = futures::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
    (
        [("content-type", "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn auth(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn get_policy(
    State(s): State<Hostile>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let model = q.get("model").cloned().unwrap_or_default();
    s.hit(&format!("policy {model}"));
    let upload_host = match model.as_str() {
        "endless-policy" => return endless(),
        "file-host" => "file:///etc/passwd".to_owned(),
        "endless-upload" => format!("{}/oss/endless", s.root),
        _ => format!("{}/oss/ok", s.root),
    };
    let request_id = if model.starts_with("echo") {
        format!("req {}", auth(&headers))
    } else {
        "req-1".to_owned()
    };
    axum::Json(json!({"request_id": request_id, "data": {
        "policy": "cG9saWN5", "signature": "c2ln", "upload_dir": format!("dir/{model}"),
        "upload_host": upload_host, "expire_in_seconds": 300, "max_file_size_mb": 1024,
        "oss_access_key_id": "LTAI", "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true"}}))
    .into_response()
}

async fn oss_endless(State(s): State<Hostile>, _form: Bytes) -> Response {
    s.hit("upload endless");
    endless()
}

async fn oss_ok(State(s): State<Hostile>, _form: Bytes) -> Response {
    s.hit("upload ok");
    StatusCode::NO_CONTENT.into_response()
}

async fn model_call(State(s): State<Hostile>, headers: HeaderMap, body: Bytes) -> Response {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = json["model"].as_str().unwrap_or_default().to_owned();
    s.hit(&format!("model {model}"));
    let key = auth(&headers);
    match model.as_str() {
        "endless-answer" => endless(),
        "echo-ok" => (
            [("x-request-id", key.clone())],
            axum::Json(json!({"request_id": key, "choices": [{
                "message": {"role": "assistant", "content": format!("you sent {key}")},
                "finish_reason": key}]})),
        )
            .into_response(),
        // The key straddles the 500-character cut of the message.
        "echo-error" => (
            StatusCode::BAD_REQUEST,
            [("x-request-id", key.clone())],
            axum::Json(json!({"code": "InvalidParameter",
                "message": format!("{}{key}", "x".repeat(490))})),
        )
            .into_response(),
        _ => axum::Json(json!({"choices": [{"message": {"content": "fine"},
            "finish_reason": "stop"}]}))
        .into_response(),
    }
}

async fn hostile() -> Hostile {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let state = Hostile {
        root: format!("http://{}", listener.local_addr().unwrap()),
        hits: Arc::default(),
    };
    let app = Router::new()
        .route("/api/v1/uploads", get(get_policy))
        .route("/oss/endless", post(oss_endless))
        .route("/oss/ok", post(oss_ok))
        .route("/compatible-mode/v1/chat/completions", post(model_call))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    state
}

/// Runs `dashbatch -vvv run MANIFEST --base-url ROOT` at trace level; returns the exit code
/// and everything it printed.
async fn run(job: &Job, root: &str, extra: &[&str]) -> (i32, String) {
    let manifest = job.manifest();
    let summary = job.dir.path().join("summary.json");
    let mut args: Vec<String> = vec!["--base-url".into(), root.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        dashbatch()
            .args(["-vvv", "run"])
            .arg(&manifest)
            .args(&args)
            .arg("--summary-json")
            .arg(&summary)
            .env("DASHSCOPE_API_KEY", KEY)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), printed)
}

/// Finding 2: an endless body on getPolicy, on the upload host's answer and on a model answer
/// fails its row with `response_too_large`, once, not retried; and the run ends (a client
/// that read on would grow without bound and never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_bodies_fail_their_rows_with_response_too_large() {
    let server = hostile().await;
    let mut job = Job::new();
    let a = job.file("a.png", b"a");
    let b = job.file("b.png", b"b");
    job.row(&format!("1,endless-policy,{a},p"));
    job.row(&format!("2,endless-upload,{b},p"));
    job.row("3,endless-answer,https://example.invalid/c.png,p");
    let (code, printed) = run(&job, &server.root, &["--max-attempts", "3"]).await;
    assert_eq!(code, 1, "{printed}");
    let rows = by_id(&results(&job.output()));
    for (id, what, cap) in [
        ("1", "upload credential (getPolicy) answer", "64 KiB"),
        ("2", "upload host's answer", "64 KiB"),
        ("3", "model answer", "16 MiB"),
    ] {
        let row = &rows[id];
        assert_eq!(row["status"], "failed", "{row:?}");
        assert_eq!(row["error_code"], "response_too_large", "{row:?}");
        let message = &row["error_message"];
        assert!(message.contains(what) && message.contains(cap), "{message}");
        assert!(message.contains(&server.root), "names the host: {message}");
    }
    assert_eq!(server.hits("policy endless-policy"), 1, "not retried");
    assert_eq!(server.hits("upload endless"), 1, "not retried");
    assert_eq!(server.hits("model endless-answer"), 1, "not retried");
}

/// Low finding: a credential that names a `file://` upload host fails at once, naming the
/// host, instead of being retried as a network error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_upload_host_fails_at_once_naming_it() {
    let server = hostile().await;
    let mut job = Job::new();
    let a = job.file("a.png", b"a");
    job.row(&format!("1,file-host,{a},p"));
    let (code, printed) = run(&job, &server.root, &["--max-attempts", "4"]).await;
    assert_eq!(code, 1, "{printed}");
    let row = &results(&job.output())[0];
    assert_eq!(row["error_code"], "invalid_upload_host", "{row:?}");
    assert!(
        row["error_message"].contains("file:///etc/passwd"),
        "{row:?}"
    );
    assert_eq!(server.hits("policy file-host"), 1, "not retried");
}

/// Finding 9: a gateway that quotes the Authorization header back, in every field it can (a
/// policy's request id, an answer's text, finish reason and request id, a header, an error
/// message where the key straddles the 500-character cut), leaks the key nowhere: not in the
/// results, the summary or the trace-level log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_echoes_the_key_leaks_it_nowhere() {
    let server = hostile().await;
    let mut job = Job::new();
    let a = job.file("a.png", b"a");
    job.row(&format!("1,echo-ok,{a},p"));
    job.row("2,echo-ok,https://example.invalid/b.png,p");
    job.row("3,echo-error,https://example.invalid/c.png,p");
    let (code, printed) = run(&job, &server.root, &["--max-attempts", "1"]).await;
    assert_eq!(code, 1, "{printed}");
    let secret = &KEY[KEY.find("CANARY").unwrap()..][..6];
    assert!(!printed.contains(secret), "leaked in the log: {printed}");
    let rows = by_id(&results(&job.output()));
    assert_eq!(rows["1"]["status"], "ok", "{:?}", rows["1"]);
    assert_eq!(rows["1"]["response"], "you sent Bearer ****");
    assert_eq!(rows["3"]["error_code"], "InvalidParameter");
    for name in ["manifest.results.csv", "summary.json"] {
        let text = std::fs::read_to_string(job.dir.path().join(name)).unwrap();
        assert!(!text.contains(secret), "leaked in {name}: {text}");
    }
}

/// Finding 3: a policy lifetime of u64::MAX seconds (the emulator's own `--policy-ttl-s
/// 18446744073709551615`) is clamped, not added to a clock: every row ends ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_policy_lifetime_does_not_panic_the_run() {
    let em = start(EmulatorConfig {
        policy_ttl_s: u64::MAX,
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    for i in 0..3 {
        let f = job.file(&format!("{i}.png"), &bytes(i, 64));
        job.row(&format!("{i},qwen-vl-plus,{f},p"));
    }
    let (code, printed) = run(&job, &em.base_url(), &[]).await;
    assert_eq!(code, 0, "{printed}");
    let rows = results(&job.output());
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
}
