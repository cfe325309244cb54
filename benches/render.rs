//! Render benchmarks: model → ruleset for 1k, 10k and 50k services × 10 endpoints
//! (target: 50k in under 1 s), plus model building and text printing for scale.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kproxy::testutil::{synthetic_cluster, synthetic_settings};
use kproxy::{model, nft, render};

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    g.sample_size(10);
    for n in [1_000usize, 10_000, 50_000] {
        let objects = synthetic_cluster(n, 10, true);
        let (m, warnings) = model::build(&objects, &synthetic_settings());
        assert!(
            warnings.is_empty(),
            "{:?}",
            &warnings[..warnings.len().min(3)]
        );
        g.bench_with_input(BenchmarkId::new("model_to_ruleset", n), &m, |b, m| {
            b.iter_with_large_drop(|| render::render(m))
        });
        g.bench_with_input(BenchmarkId::new("build_model", n), &objects, |b, o| {
            b.iter(|| model::build(o, &synthetic_settings()))
        });
        let rs = render::render(&m);
        g.bench_with_input(BenchmarkId::new("print_nft_text", n), &rs, |b, rs| {
            b.iter(|| nft::text::ruleset(rs))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
