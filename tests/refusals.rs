//! Refusals that no retry fixes (issue 11), in both APIs, through the real binary against a
//! scripted DashScope on 127.0.0.1:0: an account that falls into arrears mid-run (the run
//! stops, exit 2, and a rerun finishes), refused and missing models among good ones (at most C
//! calls each, the others go on, exit 1), a getPolicy that refuses a model name, and moderated
//! rows (exactly one call each).
//!
//! Not the project's emulator: the emulator's limits and refusals are built on another branch;
//! these few lines show exactly the service each test needs.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use assert_cmd::Command;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use common::*;
use serde_json::json;

const CONCURRENCY: u64 = 6;
/// The prompt marker the scripted service moderates.
const MODERATED: &str = "[moderate-me]";

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

#[derive(Clone, Default)]
struct Service {
    root: Arc<Mutex<String>>,
    /// Requests by `route model`.
    hits: Arc<Mutex<HashMap<String, u64>>>,
    /// Model calls answered so far; past `arrears_after`, every call is `Arrearage`.
    calls: Arc<AtomicU64>,
    arrears_after: Arc<AtomicU64>,
    /// The account's bill is paid: no more `Arrearage`.
    paid: Arc<AtomicBool>,
}

impl Service {
    fn hit(&self, what: String) {
        *self.hits.lock().unwrap().entry(what).or_default() += 1;
    }

    fn hits(&self, what: &str) -> u64 {
        self.hits.lock().unwrap().get(what).copied().unwrap_or(0)
    }

    fn root(&self) -> String {
        self.root.lock().unwrap().clone()
    }
}

/// An error in the shape of the API that was called (protocol notes, section 6).
fn refusal(native: bool, status: u16, code: &str, message: &str) -> Response {
    let body = if native {
        json!({"code": code, "message": message, "request_id": "r-1"})
    } else {
        json!({"error": {"message": message, "type": code, "param": null, "code": code},
            "request_id": "r-1"})
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn model_call(s: Service, native: bool, body: Bytes) -> Response {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let model = json["model"].as_str().unwrap_or_default().to_owned();
    s.hit(format!("model {model}"));
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    if n >= s.arrears_after.load(Ordering::SeqCst) && !s.paid.load(Ordering::SeqCst) {
        let message = "Access denied, please make sure your account is in good standing.";
        return refusal(native, 400, "Arrearage", message);
    }
    match model.as_str() {
        "denied" => return refusal(native, 403, "Model.AccessDenied", "Model access denied."),
        "missing" if native => return refusal(native, 404, "ModelNotFound", "Model not found"),
        "missing" => {
            return refusal(native, 404, "model_not_found", "The model does not exist.");
        }
        _ => {}
    }
    if body
        .windows(MODERATED.len())
        .any(|w| w == MODERATED.as_bytes())
    {
        let message = "Input data may contain inappropriate content.";
        let code = if native {
            "DataInspectionFailed"
        } else {
            "data_inspection_failed"
        };
        return refusal(native, 400, code, message);
    }
    // A model call's latency, so that C calls are in flight at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let usage = json!({"input_tokens": 3, "output_tokens": 2, "total_tokens": 5,
        "prompt_tokens": 3, "completion_tokens": 2});
    if native {
        axum::Json(
            json!({"request_id": "r", "usage": usage, "output": {"choices": [
            {"finish_reason": "stop", "message": {"role": "assistant",
                "content": [{"text": "fine"}]}}]}}),
        )
        .into_response()
    } else {
        axum::Json(json!({"id": "c", "usage": usage, "choices": [
            {"finish_reason": "stop", "message": {"role": "assistant", "content": "fine"}}]}))
        .into_response()
    }
}

/// getPolicy refuses the model `no-such-model` as the service does, with a 400.
async fn get_policy(
    State(s): State<Service>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let model = q.get("model").cloned().unwrap_or_default();
    s.hit(format!("policy {model}"));
    if model == "no-such-model" {
        let body = json!({"code": "InvalidParameter",
            "message": format!("Model not exist: {model}."), "request_id": "p-1"});
        return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    axum::Json(json!({"request_id": "p", "data": {
        "policy": "cG9saWN5", "signature": "c2ln", "upload_dir": format!("dir/{model}"),
        "upload_host": format!("{}/oss", s.root()), "expire_in_seconds": 300,
        "max_file_size_mb": 1024, "oss_access_key_id": "LTAI", "x_oss_object_acl": "private",
        "x_oss_forbid_overwrite": "true"}}))
    .into_response()
}

async fn service(arrears_after: u64) -> Service {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = Service {
        arrears_after: Arc::new(AtomicU64::new(arrears_after)),
        ..Service::default()
    };
    *s.root.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
    let (native, compatible) = (s.clone(), s.clone());
    let app = Router::new()
        .route(
            "/api/v1/services/aigc/multimodal-generation/generation",
            post(move |body: Bytes| model_call(native.clone(), true, body)),
        )
        .route(
            "/compatible-mode/v1/chat/completions",
            post(move |body: Bytes| model_call(compatible.clone(), false, body)),
        )
        .route("/api/v1/uploads", get(get_policy))
        // Reads the whole form before it answers, as OSS does: an answer before the body is
        // taken can break the upload's connection mid-write (and the client only trusts an
        // upload the host took whole).
        .route(
            "/oss",
            post(|body: axum::body::Bytes| async move {
                drop(body);
                StatusCode::NO_CONTENT
            }),
        )
        .with_state(s.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    s
}

/// Runs the binary on `job`; returns the exit code, what it printed and the summary JSON.
async fn run(job: &Job, s: &Service, api: &str) -> (i32, String, serde_json::Value) {
    let manifest = job.manifest();
    let summary = job.dir.path().join("summary.json");
    let (root, summary_arg, api) = (s.root(), summary.clone(), api.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        dashbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--base-url", &root, "--api", &api, "--max-attempts", "4"])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .arg("--summary-json")
            .arg(&summary_arg)
            .env("DASHSCOPE_API_KEY", "sk-refusals-test")
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
    let summary = std::fs::read_to_string(&summary).unwrap_or_default();
    let summary = serde_json::from_str(&summary).unwrap_or_default();
    (out.status.code().unwrap_or(-1), printed, summary)
}

fn count(rows: &[HashMap<String, String>], column: &str, value: &str) -> usize {
    rows.iter().filter(|r| r[column] == value).count()
}

/// Finding "overdue account": arrears after 20 calls stop the run at once (not one refused
/// call per row), exit 2 with what the service said and what to do, the rows not done are
/// left for the next run, and the next run, once the bill is paid, finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrears_mid_run_stop_the_run_and_a_rerun_finishes() {
    const ROWS: usize = 200;
    const AFTER: u64 = 20;
    for api in ["native", "compatible"] {
        let s = service(AFTER).await;
        let mut job = Job::new();
        for i in 0..ROWS {
            job.row(&format!("r{i},good,https://example.invalid/{i}.png,p{i}"));
        }
        let (code, printed, _) = run(&job, &s, api).await;
        assert_eq!(code, 2, "{api}: {printed}");
        assert!(
            printed.contains("Arrearage"),
            "says what the service said: {printed}"
        );
        assert!(printed.contains("top up"), "says what to do: {printed}");
        let calls = s.calls.load(Ordering::SeqCst);
        assert!(
            calls <= AFTER + CONCURRENCY,
            "{api}: {calls} calls; at most the {CONCURRENCY} in flight after the first refusal"
        );
        let rows = results(&job.output());
        assert_eq!(rows.len(), ROWS, "every row has a line");
        let ok = count(&rows, "status", "ok");
        assert_eq!(ok as u64, AFTER, "{api}");
        let not_attempted = count(&rows, "error_code", "not_attempted");
        let arrears = count(&rows, "error_code", "Arrearage");
        assert_eq!(ok + not_attempted + arrears, ROWS, "{api}");
        assert!(
            arrears as u64 <= CONCURRENCY,
            "{api}: {arrears} rows refused"
        );

        s.paid.store(true, Ordering::SeqCst);
        let before = s.calls.load(Ordering::SeqCst);
        let (code, printed, _) = run(&job, &s, api).await;
        assert_eq!(code, 0, "{api}: {printed}");
        let rows = results(&job.output());
        assert_eq!(count(&rows, "status", "ok"), ROWS, "{api}");
        assert_eq!(
            (s.calls.load(Ordering::SeqCst) - before) as usize,
            ROWS - ok,
            "{api}: the rerun calls only the rows not done"
        );
    }
}

/// Finding "refused model": a denied and a missing model among a good one cost at most C
/// calls each, not one per row; their rows fail with the service's code, the good model's
/// rows all finish, the run exits 1 and the summary names the refused models and why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_models_fail_their_rows_without_calls_and_the_others_go_on() {
    const EACH: usize = 60;
    for (api, missing_code) in [
        ("native", "ModelNotFound"),
        ("compatible", "model_not_found"),
    ] {
        let s = service(u64::MAX).await;
        let mut job = Job::new();
        for i in 0..EACH {
            for model in ["good", "denied", "missing"] {
                job.row(&format!(
                    "{model}{i},{model},https://example.invalid/{i}.png,p"
                ));
            }
        }
        let (code, printed, summary) = run(&job, &s, api).await;
        assert_eq!(code, 1, "{api}: {printed}");
        for model in ["denied", "missing"] {
            let calls = s.hits(&format!("model {model}"));
            assert!(calls <= CONCURRENCY, "{api}: {calls} calls to {model}");
        }
        let rows = results(&job.output());
        let of = |model: &str| -> Vec<_> { rows.iter().filter(|r| r["model"] == model).collect() };
        assert!(of("good").iter().all(|r| r["status"] == "ok"), "{api}");
        for (model, code) in [("denied", "Model.AccessDenied"), ("missing", missing_code)] {
            let rows = of(model);
            assert_eq!(rows.len(), EACH);
            for r in rows {
                assert_eq!(
                    (r["status"].as_str(), r["error_code"].as_str()),
                    ("failed", code)
                );
            }
        }
        let refused = &summary["models_refused"];
        assert!(
            refused["denied"]
                .as_str()
                .unwrap()
                .contains("Model.AccessDenied"),
            "{summary}"
        );
        assert!(
            refused["missing"].as_str().unwrap().contains(missing_code),
            "{summary}"
        );
        assert!(printed.contains("models refused: denied"), "{printed}");
    }
}

/// A getPolicy refusal of a model name is a model refusal too: its rows fail with the
/// service's code and message after at most C getPolicy calls; the other model goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_policy_refusal_fails_only_that_models_rows() {
    const EACH: usize = 40;
    // getPolicy is one endpoint whatever the model API; the good rows' calls go through
    // each API's own shape.
    for api in ["native", "compatible"] {
        let s = service(u64::MAX).await;
        let mut job = Job::new();
        for i in 0..EACH {
            let file = job.file(&format!("m/{i}.png"), format!("img {i}").as_bytes());
            job.row(&format!("bad{i},no-such-model,{file},p"));
            job.row(&format!("good{i},good,{file},p"));
        }
        let (code, printed, summary) = run(&job, &s, api).await;
        assert_eq!(code, 1, "{api}: {printed}");
        let calls = s.hits("policy no-such-model");
        assert!(calls <= CONCURRENCY, "{api}: {calls} getPolicy calls");
        assert_eq!(s.hits("model no-such-model"), 0, "{api}");
        let rows = results(&job.output());
        for r in &rows {
            if r["model"] == "good" {
                assert_eq!(r["status"], "ok", "{api}: {r:?}");
            } else {
                assert_eq!(r["error_code"], "InvalidParameter", "{api}: {r:?}");
                assert!(
                    r["error_message"].contains("Model not exist"),
                    "{api}: {r:?}"
                );
            }
        }
        assert!(
            summary["models_refused"]["no-such-model"].is_string(),
            "{api}: {summary}"
        );
    }
}

/// Finding "content refusal": a moderated row fails after exactly one call, never retried;
/// the other rows of the same model go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderated_rows_fail_after_exactly_one_call() {
    for (api, code) in [
        ("native", "DataInspectionFailed"),
        ("compatible", "data_inspection_failed"),
    ] {
        let s = service(u64::MAX).await;
        let mut job = Job::new();
        for i in 0..30 {
            let prompt = if i % 3 == 0 { MODERATED } else { "fine" };
            job.row(&format!(
                "r{i},good,https://example.invalid/{i}.png,{prompt} {i}"
            ));
        }
        let (exit, printed, _) = run(&job, &s, api).await;
        assert_eq!(exit, 1, "{api}: {printed}");
        assert_eq!(s.calls.load(Ordering::SeqCst), 30, "{api}: one call a row");
        let rows = results(&job.output());
        assert_eq!(count(&rows, "error_code", code), 10, "{api}");
        assert_eq!(count(&rows, "status", "ok"), 20, "{api}");
        for r in rows.iter().filter(|r| r["error_code"] == code) {
            assert_eq!(r["attempts"], "1", "{r:?}");
        }
    }
}
