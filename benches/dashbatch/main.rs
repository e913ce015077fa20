//! Criterion benches of dashbatch's per-row costs, one `criterion_main!` for all of them.
//!
//! - [`manifest`]: parsing manifest rows (rows/s).
//! - [`credentials`]: the credential limiter and policy cache on a hit (ns per row).
//! - [`results`]: writing results lines (rows/s).
//! - [`pipeline`]: a whole run against the in-process emulator at zero latency (rows/s).
//!
//! Run with `cargo bench --bench dashbatch`; plots land in `target/criterion/report/index.html`.
//! Measurement times are short on purpose, so the whole set finishes in a few minutes on a
//! 2-core machine. The load harness with real latencies is `examples/load.rs`.

use criterion::{criterion_group, criterion_main};

mod credentials;
mod fixtures;
mod manifest;
mod pipeline;
mod results;

criterion_group!(
    benches,
    manifest::bench,
    credentials::bench,
    results::bench,
    pipeline::bench
);
criterion_main!(benches);
