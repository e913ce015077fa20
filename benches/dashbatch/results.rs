//! The results writer: one line per finished row, as the reporter writes them. Into a `Vec`
//! (the CSV formatting cost) and into a temp file through the writer's own buffer (adds the
//! `write(2)` calls; the per-second fsync is the reporter's and not measured here).

use criterion::{BatchSize, Criterion, Throughput};
use dashbatch::output::{ResultsWriter, RowResult};

use super::fixtures::sample_result;

const ROWS: u64 = 10_000;

fn write_all<W: std::io::Write>(sink: W, rows: &[RowResult]) -> W {
    let mut w = ResultsWriter::new(sink, &["batch".to_owned()], true).expect("header");
    for r in rows {
        w.write(r).expect("row written");
    }
    w.into_inner().expect("flushed")
}

pub fn bench(c: &mut Criterion) {
    let rows: Vec<RowResult> = (0..ROWS).map(sample_result).collect();
    let mut group = c.benchmark_group("results");
    group.throughput(Throughput::Elements(ROWS));
    group.measurement_time(std::time::Duration::from_secs(3));
    group.bench_function("write_10k_rows_vec", |b| {
        b.iter(|| std::hint::black_box(write_all(Vec::with_capacity(8 << 20), &rows).len()))
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bench.results.csv");
    group.bench_function("write_10k_rows_file", |b| {
        b.iter_batched(
            || std::fs::File::create(&path).expect("temp file"),
            |file| write_all(file, &rows),
            BatchSize::PerIteration,
        )
    });
    group.finish();
}
