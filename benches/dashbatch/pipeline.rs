//! A whole run, `dashbatch::pipeline::run`, against the in-process emulator with no added
//! latency: what the client and emulator together cost per row on this machine, with every
//! stage real (manifest, hashing, credentials, upload, model call over HTTP, results,
//! compaction). Sixteen small files are reused, so 16 rows upload and the rest reuse.
//! Both run on one 2-core runtime, so this is a CPU figure, not a latency one.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use dashbatch::config::RunConfig;
use dashbatch::dashscope::{Api, ApiKey, Client, ClientConfig, CredentialOptions, RetryPolicy};
use dashbatch::emulator::{self, EmulatorConfig};
use tokio_util::sync::CancellationToken;

use super::fixtures::manifest_text;

const ROWS: usize = 2_000;
const FILES: usize = 16;

pub fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let emulator = rt.block_on(async {
        emulator::spawn(EmulatorConfig::default())
            .await
            .expect("emulator starts")
    });
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("img")).expect("img dir");
    for f in 0..FILES {
        // Distinct small "images": the emulator does not decode them.
        let bytes: Vec<u8> = (0..2048u32).map(|b| (b as u8) ^ (f as u8)).collect();
        std::fs::write(dir.path().join(format!("img/{f}.png")), bytes).expect("media file");
    }
    let manifest = dir.path().join("manifest.csv");
    std::fs::write(&manifest, manifest_text(ROWS, FILES)).expect("manifest");
    let config = RunConfig {
        manifest,
        output: dir.path().join("manifest.results.csv"),
        api: Api::Compatible,
        concurrency: 64,
        upload_concurrency: 16,
        credentials: CredentialOptions::default(),
        retry: RetryPolicy::default(),
        model_rps: None,
        model_tpm: None,
        quiet: true,
        // Every iteration starts over, so each one does all the rows.
        fresh: true,
        state_dir: dir.path().join(".dashbatch"),
        drain_timeout: Duration::from_secs(30),
        outage_timeout: Duration::from_secs(300),
        params: Default::default(),
        shard: None,
        limit: None,
        redis: None,
        excel_bom: false,
    };
    let client = Client::new(
        ApiKey::new("sk-bench").expect("valid key"),
        ClientConfig {
            base_url: emulator.base_url(),
            ..ClientConfig::default()
        },
    )
    .expect("client builds");

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));
    group.bench_function("run_2k_rows_zero_latency", |b| {
        b.to_async(&rt).iter_batched(
            || {
                // The upload cache would turn every upload after the first iteration into
                // `cached`; remove it so each iteration measures the same run.
                let _ = std::fs::remove_dir_all(&config.state_dir);
                client.clone()
            },
            |client| async {
                let outcome = dashbatch::pipeline::run(&config, client, CancellationToken::new())
                    .await
                    .expect("run completes");
                assert_eq!(outcome.stats.rows_ok, ROWS as u64, "every row ok");
                outcome
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    rt.block_on(async { emulator.shutdown().await.expect("emulator stops") });
}
