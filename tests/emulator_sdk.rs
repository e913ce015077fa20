//! The official OpenAI and DashScope Python SDKs consume the emulator's streams unchanged
//! (tests/sdk/stream_sdks.py). Runs only where `python3` can import both packages
//! (`pip install openai dashscope`); elsewhere it prints why it skipped and passes.

mod emulator_support;

use std::time::Duration;

use emulator_support::*;

/// A generous bound on the script: it makes a dozen calls to a local emulator.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdks_consume_the_streams() {
    let importable = tokio::process::Command::new("python3")
        .args(["-c", "import openai, dashscope"])
        .output()
        .await;
    match importable {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            eprintln!(
                "skipped: python3 cannot import openai and dashscope ({})",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            return;
        }
        Err(err) => {
            eprintln!("skipped: no python3 ({err})");
            return;
        }
    }
    let emu = start_default().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/stream_sdks.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .arg(emu.running.base_url())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the SDK script finishes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("openai: ok") && stdout.contains("dashscope: ok"),
        "{stdout}"
    );
}
