//! The credential hot path: `Credentials::get` when the policy cache already holds a usable
//! policy. Every uploading row pays this, so it must stay a lock and an `Arc` clone: no
//! limiter wait, no request. One fetch against an in-process emulator fills the cache first.

use criterion::{Criterion, Throughput};
use dashbatch::dashscope::{ApiKey, Client, ClientConfig, CredentialOptions, Credentials};
use dashbatch::emulator::{self, EmulatorConfig};

pub fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (emulator, credentials) = rt.block_on(async {
        let emulator = emulator::spawn(EmulatorConfig::default())
            .await
            .expect("emulator starts");
        let client = Client::new(
            ApiKey::new("sk-bench").expect("valid key"),
            ClientConfig {
                base_url: emulator.base_url(),
                ..ClientConfig::default()
            },
        )
        .expect("client builds");
        let credentials = Credentials::new(client, CredentialOptions::default());
        credentials.get("qwen-vl-plus").await.expect("first fetch");
        (emulator, credentials)
    });

    let mut group = c.benchmark_group("credentials");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(std::time::Duration::from_secs(3));
    group.bench_function("get_cached_policy", |b| {
        b.to_async(&rt).iter(|| async {
            std::hint::black_box(credentials.get("qwen-vl-plus").await.expect("cache hit"))
        })
    });
    group.finish();
    // The bench must have measured hits only: one getPolicy in total.
    assert_eq!(
        credentials.fetches(),
        1,
        "the policy cache missed during the bench"
    );
    rt.block_on(async { emulator.shutdown().await.expect("emulator stops") });
}
