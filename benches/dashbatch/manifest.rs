//! Manifest reading: parse rows out of an in-memory manifest, so the figure is the parser's
//! and not the disk's. Every row derives nothing (an `id` column is present) and resolves a
//! relative path, as in a real run.

use std::path::{Path, PathBuf};

use criterion::{Criterion, Throughput};
use dashbatch::manifest::{Entry, Manifest};

use super::fixtures::manifest_text;

pub fn bench(c: &mut Criterion) {
    const ROWS: usize = 10_000;
    let text = manifest_text(ROWS, 16);
    let mut group = c.benchmark_group("manifest");
    group.throughput(Throughput::Elements(ROWS as u64));
    group.measurement_time(std::time::Duration::from_secs(3));
    group.bench_function("read_10k_rows", |b| {
        b.iter(|| {
            let manifest = Manifest::from_reader(
                std::io::Cursor::new(text.as_bytes()),
                Path::new("bench.csv"),
                PathBuf::from("/jobs"),
            )
            .expect("header parses");
            let rows = manifest.filter(|e| matches!(e, Entry::Row(_))).count();
            assert_eq!(rows, ROWS);
        })
    });
    group.finish();
}
