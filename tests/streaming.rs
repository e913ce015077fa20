//! Streamed model calls against the emulator on loopback, in both APIs: streaming-only
//! models under each `--stream` setting, learning a model from the service's refusal, a
//! stream cut or failing half way, usage and reasoning from the stream, and the request
//! timeout applied to silences.

mod common;

use std::time::Duration;

use assert_cmd::Command;
use common::*;
use dashbatch::dashscope::{Api, ApiKey, Client, ClientConfig, ErrorKind, ModelRequest, Streaming};
use dashbatch::emulator::{CUT_STREAM, DROP_STREAM, EmulatorConfig, MODERATE_OUTPUT};
use dashbatch::pipeline;
use tokio_util::sync::CancellationToken;

const APIS: [Api; 2] = [Api::Compatible, Api::Native];

fn streaming_client(base_url: String, stream: Streaming) -> Client {
    Client::new(
        ApiKey::new("sk-acme").unwrap(),
        ClientConfig {
            base_url,
            stream,
            ..ClientConfig::default()
        },
    )
    .unwrap()
}

fn request(model: &str, prompt: &str) -> ModelRequest {
    ModelRequest {
        model: model.to_owned(),
        prompt: prompt.to_owned(),
        system: None,
        media: Vec::new(),
        params: serde_json::Map::new(),
    }
}

fn dashbatch() -> Command {
    let mut cmd = Command::cargo_bin("dashbatch").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_gives_the_answer_usage_and_reasoning() {
    let em = start(EmulatorConfig::default()).await;
    for api in APIS {
        let client = streaming_client(em.base_url(), Streaming::Auto);
        // An ordinary model: the streamed answer is the whole answer, joined.
        let whole = client
            .call_model(api, &request("qwen-vl-plus", "Describe it."))
            .await
            .unwrap();
        let streamed = client
            .call_model_streamed(api, &request("qwen-vl-plus", "Describe it."))
            .await
            .unwrap();
        assert_eq!(streamed.text, whole.text, "{api:?}");
        assert_eq!(streamed.usage, whole.usage, "{api:?}");
        assert_eq!(streamed.finish_reason.as_deref(), Some("stop"), "{api:?}");
        assert!(streamed.request_id.is_some(), "{api:?}");
        assert_eq!(streamed.reasoning, None, "{api:?}");
        // A thinking model: its reasoning kept apart from the answer, usage from the end.
        let reply = client
            .call_model_streamed(api, &request("qvq-max", "Why?"))
            .await
            .unwrap();
        let reasoning = reply.reasoning.as_deref().unwrap_or_default();
        assert!(reasoning.contains("qvq-max"), "{api:?}: {reply:?}");
        assert!(!reply.text.is_empty() && !reply.text.contains(reasoning));
        assert!(reply.usage.completion_tokens > 0, "{api:?}: {reply:?}");
        assert_eq!(
            reply.usage.total_tokens,
            reply.usage.prompt_tokens + reply.usage.completion_tokens
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_inside_a_stream_is_classified_as_its_status_would_be() {
    let em = start(EmulatorConfig::default()).await;
    let client = streaming_client(em.base_url(), Streaming::Auto);
    for api in APIS {
        let prompt = format!("Describe it. {MODERATE_OUTPUT}");
        let e = client
            .call_model_streamed(api, &request("qwen-vl-plus", &prompt))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::ContentRefused, "{api:?}: {e:?}");
        let code = e.code.as_str().to_ascii_lowercase().replace('_', "");
        assert_eq!(code, "datainspectionfailed", "{api:?}: {e:?}");
        assert!(e.message.contains("inappropriate"), "{e:?}");
        assert!(!e.is_retryable());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_early_is_a_network_error_never_an_answer() {
    let em = start(EmulatorConfig::default()).await;
    let client = streaming_client(em.base_url(), Streaming::Auto);
    for api in APIS {
        for marker in [CUT_STREAM, DROP_STREAM] {
            let prompt = format!("Describe it. {marker}");
            let e = client
                .call_model_streamed(api, &request("qwen-vl-plus", &prompt))
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Network, "{api:?} {marker}: {e:?}");
            assert!(e.is_retryable());
        }
    }
}

/// Rows of every kind through the pipeline: the streaming-only models answer under `auto`,
/// a cut stream is retried and then fails without an answer, an error mid-stream fails its
/// row at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_streams_what_it_must_and_records_only_whole_answers() {
    for api in APIS {
        let em = start(EmulatorConfig::default()).await;
        let mut job = Job::new();
        job.row("omni,qwen3-omni-flash,https://example.com/a.png,Describe it.")
            .row("qvq,qvq-max,https://example.com/a.png,Why?")
            .row(&format!(
                "cut,qvq-max,https://example.com/a.png,x {CUT_STREAM}"
            ))
            .row(&format!(
                "bad,qvq-max,https://example.com/a.png,x {MODERATE_OUTPUT}"
            ))
            .row("plain,qwen-vl-plus,https://example.com/a.png,Describe it.");
        let mut config = job.config(api, 4);
        config.retry = fast_retry(3);
        let client = streaming_client(em.base_url(), Streaming::Auto);
        pipeline::run(&config, client, CancellationToken::new())
            .await
            .unwrap();
        let rows = by_id(&results(&config.output));
        for id in ["omni", "qvq", "plain"] {
            assert_eq!(rows[id]["status"], "ok", "{api:?} {id}: {:?}", rows[id]);
            assert_eq!(rows[id]["attempts"], "1", "{api:?} {id}");
            assert!(!rows[id]["response"].is_empty());
            assert!(
                rows[id]["total_tokens"].parse::<u64>().unwrap() > 0,
                "{api:?} {id}"
            );
        }
        // A thinking model's streamed reasoning lands in its own column; others have none.
        assert!(
            rows["qvq"]["reasoning"].contains("Why?"),
            "{api:?}: {:?}",
            rows["qvq"]
        );
        assert_eq!(rows["plain"]["reasoning"], "", "{api:?}");
        assert_eq!(
            rows["bad"]["error_code"]
                .to_ascii_lowercase()
                .replace('_', ""),
            "datainspectionfailed",
            "{api:?}"
        );
        assert_eq!(rows["cut"]["status"], "failed", "{api:?}");
        assert_eq!(
            rows["cut"]["error_code"], "body",
            "{api:?}: {:?}",
            rows["cut"]
        );
        assert_eq!(rows["cut"]["attempts"], "3", "{api:?}: retried");
        assert_eq!(rows["cut"]["response"], "", "{api:?}: never recorded");
        assert_eq!(rows["bad"]["status"], "failed", "{api:?}");
        assert_eq!(rows["bad"]["attempts"], "1", "{api:?}: not retried");
        assert_eq!(rows["bad"]["response"], "");
        let stats = stats(&em).await;
        assert_eq!(
            stats["refused_stream_only"], 0,
            "{api:?}: known models stream at once"
        );
    }
}

/// A model the built-in list does not name is learnt from the service's refusal, once per
/// run, and its refused row goes again as a stream without counting the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_learns_a_streaming_only_model_from_its_refusal_once() {
    for api in APIS {
        let em = start(EmulatorConfig {
            stream_only_models: vec!["qwen2.5-vl-72b-instruct".to_owned()],
            ..EmulatorConfig::default()
        })
        .await;
        let mut job = Job::new();
        for i in 0..4 {
            job.row(&format!(
                "r{i},qwen2.5-vl-72b-instruct,https://example.com/a.png,Describe {i}."
            ));
        }
        // One row at a time: the refusal of the first teaches the rest.
        let config = job.config(api, 1);
        let client = streaming_client(em.base_url(), Streaming::Auto);
        let outcome = pipeline::run(&config, client, CancellationToken::new())
            .await
            .unwrap();
        assert!(outcome.stats.retries.is_empty(), "{api:?}: nor a retry");
        let rows = results(&config.output);
        assert_eq!(rows.len(), 4);
        for row in &rows {
            assert_eq!(row["status"], "ok", "{api:?}: {row:?}");
            assert_eq!(
                row["attempts"], "1",
                "{api:?}: the refusal is not an attempt"
            );
        }
        let stats = stats(&em).await;
        assert_eq!(stats["refused_stream_only"], 1, "{api:?}: learnt once");
        assert_eq!(stats["streams"], 4, "{api:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_streams_every_call_and_never_streams_none() {
    for api in APIS {
        for (mode, streams) in [(Streaming::Always, 2), (Streaming::Never, 0)] {
            let em = start(EmulatorConfig::default()).await;
            let mut job = Job::new();
            job.row("a,qwen-vl-plus,https://example.com/a.png,Describe it.")
                .row("b,qwen-vl-max,https://example.com/a.png,Describe it.");
            let config = job.config(api, 2);
            let client = streaming_client(em.base_url(), mode);
            pipeline::run(&config, client, CancellationToken::new())
                .await
                .unwrap();
            for row in results(&config.output) {
                assert_eq!(row["status"], "ok", "{api:?} {mode:?}: {row:?}");
            }
            assert_eq!(stats(&em).await["streams"], streams, "{api:?} {mode:?}");
        }
    }
}

/// The binary with default flags answers the streaming-only models; `--stream never` fails
/// them with the service's own refusal.
#[test]
fn the_cli_streams_streaming_only_models_unless_told_never() {
    for api in ["compatible", "native"] {
        let mut job = Job::new();
        job.row("omni,qwen3-omni-flash,https://example.com/a.png,Describe it.")
            .row("qvq,qvq-max,https://example.com/a.png,Why?");
        dashbatch()
            .args(["run", "--emulator", "--api", api])
            .arg(job.manifest())
            .assert()
            .success();
        for row in results(&job.output()) {
            assert_eq!(row["status"], "ok", "{api}: {row:?}");
        }
        let out = dashbatch()
            .args([
                "run",
                "--emulator",
                "--fresh",
                "--stream",
                "never",
                "--api",
                api,
            ])
            .arg(job.manifest())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{api}");
        for row in results(&job.output()) {
            assert_eq!(row["status"], "failed", "{api}: {row:?}");
            assert!(
                row["error_message"].contains("only support"),
                "{api}: {row:?}"
            );
            assert_eq!(row["attempts"], "1", "{api}: a refusal is not retried");
        }
    }
}

/// The request timeout is the longest silence in a stream: a stream that opens and then
/// says nothing fails as a timeout (a whole-request timeout would have cut long answers).
#[tokio::test]
async fn a_silent_stream_times_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = socket.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                        transfer-encoding: chunked\r\n\r\n";
            let event = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(chunk.as_bytes()).await;
            // Kept open and silent.
            let _ = held_tx.send(socket);
        }
    });
    let client = Client::new(
        ApiKey::new("sk-acme").unwrap(),
        ClientConfig {
            base_url: format!("http://{addr}"),
            request_timeout: Duration::from_millis(300),
            ..ClientConfig::default()
        },
    )
    .unwrap();
    let e = client
        .call_model_streamed(Api::Compatible, &request("qwen-vl-plus", "x"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind, e.code.as_str()),
        (ErrorKind::Network, "timeout"),
        "{e:?}"
    );
    assert!(e.message.contains("between two events"), "{e:?}");
    assert!(held_rx.recv().await.is_some());
}
