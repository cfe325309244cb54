//! Render benchmarks: model → ruleset for 1k, 10k and 50k services × 10 endpoints
//! (target: 50k in under 1 s), plus model building and text printing for scale.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// The binary's allocator, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use kproxy::testutil::{synthetic_cluster, synthetic_settings};
use std::collections::BTreeSet;

use kproxy::diff::DiffOptions;
use kproxy::model::EndpointAddr;
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
        g.bench_with_input(BenchmarkId::new("renderer_full", n), &m, |b, m| {
            b.iter_with_large_drop(|| {
                let mut r = render::Renderer::new();
                let rs = r.full(m);
                (r, rs)
            })
        });
        g.bench_with_input(BenchmarkId::new("build_model", n), &objects, |b, o| {
            b.iter(|| model::build(o, &synthetic_settings()))
        });
        let rs = render::render(&m);
        let full_load = kproxy::diff::diff(&Default::default(), &rs, &DiffOptions::default()).tx;
        g.bench_with_input(
            BenchmarkId::new("encode_full_load", n),
            &full_load,
            |b, tx| {
                b.iter_with_large_drop(|| kproxy::backend::netlink::encode(tx).expect("encode"))
            },
        );
        g.bench_with_input(BenchmarkId::new("print_nft_text", n), &rs, |b, rs| {
            b.iter(|| nft::text::ruleset(rs))
        });
    }
    g.finish();
}

/// With 50k services × 10 endpoints held by the incremental renderer, one endpoint added
/// to (then removed from) one service: re-render that service and diff it.
fn incremental(c: &mut Criterion) {
    let mut g = c.benchmark_group("render");
    let objects = synthetic_cluster(50_000, 10, true);
    let (mut m, _) = model::build(&objects, &synthetic_settings());
    let mut r = render::Renderer::new();
    r.full(&m);
    let idx = 12_345;
    let name = m.families[0].services[idx].name.clone();
    let key: BTreeSet<model::ServiceKey> =
        [model::ServiceKey::new(&name.namespace, &name.name)].into();
    let extra = EndpointAddr {
        ip: "10.250.0.1".parse().unwrap(),
        port: 8080,
    };
    let mut added = false;
    g.bench_function("one_endpoint_update_and_diff/50000", |b| {
        b.iter(|| {
            let sp = &mut m.families[0].services[idx];
            if added {
                sp.cluster_endpoints.retain(|e| *e != extra);
            } else {
                sp.cluster_endpoints.push(extra);
            }
            added = !added;
            let p = r.update(&m, &key).expect("incremental");
            let d = kproxy::diff::diff(&p.before, &p.after, &DiffOptions::default());
            assert!(!d.tx.is_empty());
            d
        })
    });
    g.finish();
}

criterion_group!(benches, bench, incremental);
criterion_main!(benches);
