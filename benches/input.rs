//! Input benchmarks: the manifests a user gives `kproxy render -f` / `apply -f` read into
//! objects (multi-document YAML, a JSON List), and read and built into the model, for
//! 1k services × 10 endpoints (small enough for `cargo test --benches`; the 10k × 10
//! files of issue #10 come from `tests/review_cluster.rs`'s `write_synthetic_10k`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// The binary's allocator, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kproxy::k8s::manifests;
use kproxy::model;
use kproxy::testutil::manifests::{synthetic_json, synthetic_yaml};
use kproxy::testutil::{synthetic_cluster, synthetic_settings};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("input");
    g.sample_size(10);
    let n = 1_000usize;
    let objects = synthetic_cluster(n, 10, false);
    let files = [
        ("yaml", "cluster.yaml", synthetic_yaml(&objects)),
        ("json", "cluster.json", synthetic_json(&objects)),
    ];
    for (format, name, text) in &files {
        let loaded = manifests::load_str(name, text);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.objects.services.len(), n);
        g.bench_with_input(
            BenchmarkId::new(format!("load_{format}"), n),
            text,
            |b, t| b.iter_with_large_drop(|| manifests::load_str(name, t)),
        );
        g.bench_with_input(
            BenchmarkId::new(format!("load_and_build_{format}"), n),
            text,
            |b, t| {
                b.iter_with_large_drop(|| {
                    let loaded = manifests::load_str(name, t);
                    model::build(&loaded.objects, &synthetic_settings())
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
