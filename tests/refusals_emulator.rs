//! Refusals that no retry fixes (issue 11) against the project's emulator, through the real
//! binary, in both APIs: an account that falls into arrears mid-run (after N calls, or by the
//! control endpoint) and is settled by the control endpoint before a rerun; a billing 429;
//! a denied and an unknown model among a good one; moderated input. The scripted-server
//! twins in `refusals.rs` pin the exact call counts; these check that the client reads the
//! emulator's bodies (written separately from the notes) the same.

mod common;

use std::collections::HashMap;
use std::process::Output;

use assert_cmd::Command;
use common::*;
use dashbatch::emulator::{BillingStop, EmulatorConfig, MODERATE_INPUT, Running};

const CONCURRENCY: u64 = 6;
const ACCOUNT: &str = "refusals";

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

async fn run(job: &Job, em: &Running, api: &str) -> (i32, String) {
    let (manifest, root, api) = (job.manifest(), em.base_url(), api.to_owned());
    let out: Output = tokio::task::spawn_blocking(move || {
        dashbatch()
            .arg("run")
            .arg(&manifest)
            .args(["--base-url", &root, "--api", &api, "--max-attempts", "4"])
            .args(["--concurrency", &CONCURRENCY.to_string()])
            .env("DASHSCOPE_API_KEY", format!("sk-{ACCOUNT}"))
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

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no {name}: {stats}"))
}

/// Rows past the 20 calls the account is allowed, few enough that a rerun's 20 (the
/// emulator's count starts again once paid) finish them.
const BILLED_ROWS: usize = 36;

/// Runs [`BILLED_ROWS`] rows on an account that falls into arrears with `code` after 20
/// calls, and checks what every billing stop does: exit 2, a message with the service's code
/// and what to do, no more refused requests than the ones in flight, every row a line, and
/// every row not done `not_attempted` or refused with `code`.
async fn stopped_by_billing(
    api: &str,
    code: BillingStop,
) -> (Running, Job, Vec<HashMap<String, String>>) {
    let em = start(EmulatorConfig {
        arrears_after: Some(20),
        arrears_code: code,
        ..EmulatorConfig::default()
    })
    .await;
    let mut job = Job::new();
    for i in 0..BILLED_ROWS {
        let file = job.file(&format!("m/{i}.png"), &bytes(i as u64, 64));
        job.row(&format!("r{i},qwen-vl-plus,{file},p{i}"));
    }
    let (exit, printed) = run(&job, &em, api).await;
    let code = code.as_str();
    assert_eq!(exit, 2, "{api}: {printed}");
    assert!(
        printed.contains(code) && printed.contains("top up"),
        "{api}: {printed}"
    );
    let refused = counter(&stats(&em).await, "refused_arrears");
    // The calls in flight when the first refusal came, and as many getPolicy or uploads;
    // a billing 429 retried would be refused `--max-attempts` times each (4 × 6 here).
    assert!(
        refused <= 2 * CONCURRENCY,
        "{api}: {refused} refused requests"
    );
    let rows = results(&job.output());
    assert_eq!(rows.len(), BILLED_ROWS, "{api}");
    assert!(
        rows.iter()
            .filter(|r| r["status"] != "ok")
            .all(|r| r["error_code"] == "not_attempted" || r["error_code"] == code),
        "{api}"
    );
    (em, job, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrears_stop_the_run_with_exit_2_and_a_rerun_after_paying_finishes() {
    for api in ["native", "compatible"] {
        let (em, job, rows) = stopped_by_billing(api, BillingStop::Arrearage).await;
        let paid = reqwest::Client::new()
            .post(format!(
                "{}/__emulator/arrears?account={ACCOUNT}&paid=true",
                em.base_url()
            ))
            .send()
            .await
            .unwrap();
        assert!(paid.status().is_success());
        let left = rows.iter().filter(|r| r["status"] != "ok").count();
        assert!((1..=20).contains(&left), "{api}: {left} rows left");
        let (code, printed) = run(&job, &em, api).await;
        assert_eq!(code, 0, "{api}: {printed}");
        let rows = results(&job.output());
        assert!(rows.iter().all(|r| r["status"] == "ok"), "{api}");
    }
}

/// A billing 429 (`PrepaidBillOverdue`) is no throttle: it stops the run, unretried, as
/// `Arrearage` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_429_stops_the_run_without_a_retry() {
    for api in ["native", "compatible"] {
        let (_, _, rows) = stopped_by_billing(api, BillingStop::PrepaidBillOverdue).await;
        assert!(
            rows.iter().any(|r| r["error_code"] == "not_attempted"),
            "{api}: the unreached rows are left for the next run"
        );
    }
}

/// The control endpoint puts the account in arrears while the run goes: the run stops
/// there, whatever the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrears_set_mid_run_by_the_control_endpoint_stop_the_run() {
    const ROWS: usize = 400;
    for api in ["native", "compatible"] {
        let em = start(EmulatorConfig {
            chat_latency: std::time::Duration::from_millis(20),
            ..EmulatorConfig::default()
        })
        .await;
        let mut job = Job::new();
        for i in 0..ROWS {
            job.row(&format!(
                "r{i},qwen-vl-plus,https://example.com/img/{i}.png,p{i}"
            ));
        }
        let running = run(&job, &em, api);
        let arrears = async {
            // Once the run is under way (its calls counted), not at a fixed time.
            while counter(&stats(&em).await, "chat_calls") < 10 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            let set = reqwest::Client::new()
                .post(format!(
                    "{}/__emulator/arrears?account={ACCOUNT}",
                    em.base_url()
                ))
                .send()
                .await
                .unwrap();
            assert!(set.status().is_success());
        };
        let ((code, printed), ()) = tokio::join!(running, arrears);
        assert_eq!(code, 2, "{api}: {printed}");
        assert!(printed.contains("Arrearage"), "{api}: {printed}");
        let rows = results(&job.output());
        assert_eq!(rows.len(), ROWS, "{api}");
        let ok = rows.iter().filter(|r| r["status"] == "ok").count();
        assert!((10..ROWS).contains(&ok), "{api}: {ok} rows ok");
        let refused = counter(&stats(&em).await, "refused_arrears");
        assert!(
            refused <= 2 * CONCURRENCY,
            "{api}: {refused} refused requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_and_an_unknown_model_fail_alone_with_at_most_c_calls() {
    const EACH: usize = 40;
    for (api, not_found) in [
        ("native", "ModelNotFound"),
        ("compatible", "model_not_found"),
    ] {
        let em = start(EmulatorConfig {
            denied_models: vec!["qwen-vl-max".into()],
            ..EmulatorConfig::default()
        })
        .await;
        let mut job = Job::new();
        for i in 0..EACH {
            let file = job.file(&format!("m/{i}.png"), &bytes(i as u64, 64));
            job.row(&format!("good{i},qwen-vl-plus,{file},p"));
            job.row(&format!("denied{i},qwen-vl-max,{file},p"));
            // A URL: no getPolicy, so the model call itself meets the unknown model.
            job.row(&format!(
                "unknown{i},no-such-model,oss://dashscope-instant/x/{i}.png,p"
            ));
        }
        let (code, printed) = run(&job, &em, api).await;
        assert_eq!(code, 1, "{api}: {printed}");
        let s = stats(&em).await;
        for name in ["refused_denied", "refused_not_found"] {
            let n = counter(&s, name);
            assert!((1..=CONCURRENCY).contains(&n), "{api}: {name} {n}");
        }
        let rows = by_id(&results(&job.output()));
        for i in 0..EACH {
            assert_eq!(rows[&format!("good{i}")]["status"], "ok", "{api}");
            assert_eq!(
                rows[&format!("denied{i}")]["error_code"],
                "Model.AccessDenied",
                "{api}"
            );
            assert_eq!(
                rows[&format!("unknown{i}")]["error_code"],
                not_found,
                "{api}"
            );
        }
        assert!(printed.contains("models refused"), "{printed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderated_input_fails_its_row_after_one_call() {
    for (api, code) in [
        ("native", "DataInspectionFailed"),
        ("compatible", "data_inspection_failed"),
    ] {
        let em = start(EmulatorConfig::default()).await;
        let mut job = Job::new();
        let file = job.file("m/a.png", &bytes(1, 64));
        for i in 0..12 {
            let prompt = if i % 3 == 0 { MODERATE_INPUT } else { "fine" };
            job.row(&format!("r{i},qwen-vl-plus,{file},{prompt} {i}"));
        }
        let (exit, printed) = run(&job, &em, api).await;
        assert_eq!(exit, 1, "{api}: {printed}");
        assert_eq!(counter(&stats(&em).await, "refused_moderation"), 4, "{api}");
        let rows = results(&job.output());
        let moderated: Vec<_> = rows.iter().filter(|r| r["error_code"] == code).collect();
        // Four rows, four refused calls: one each (`attempts` counts the upload too).
        assert_eq!(moderated.len(), 4, "{api}: {rows:?}");
    }
}
