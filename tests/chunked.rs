//! Building and rendering in runs of services (`Objects::into_chunks` +
//! `render::render_chunked`, what `kproxy render -o nft` and `kproxy apply` do) gives
//! exactly the ruleset and the warnings of one build and one render of everything.

use kproxy::model::build::{build, Objects};
use kproxy::render::{render, render_chunked};
use kproxy::testutil::fixtures::{ep, slice, svc};
use kproxy::testutil::{synthetic_cluster, synthetic_settings};

/// A synthetic cluster with the awkward cases added: a slice naming no Service, a slice
/// without the service-name label, an ExternalName Service with a slice, the same Service
/// twice, and objects out of order.
fn cluster() -> Objects {
    let mut o = synthetic_cluster(300, 4, true);
    o.slices.push(
        slice("ns-3", "ghost-abcde", "ghost")
            .endpoint(ep("10.200.0.1"))
            .build(),
    );
    let mut unlabelled = slice("ns-4", "bare-abcde", "bare")
        .endpoint(ep("10.200.0.2"))
        .build();
    unlabelled.metadata.labels = None;
    o.slices.push(unlabelled);
    o.services
        .push(svc("ns-5", "outside").external_name("example.com").build());
    o.slices.push(
        slice("ns-5", "outside-abcde", "outside")
            .endpoint(ep("10.200.0.3"))
            .build(),
    );
    let twice = o.services[17].clone();
    o.services.push(twice);
    o.services.reverse();
    o.slices.rotate_left(123);
    o
}

#[test]
fn chunked_build_and_render_equal_the_whole() {
    let settings = synthetic_settings();
    let (model, mut warnings) = build(&cluster(), &settings);
    let whole = render(&model);
    warnings.sort();
    assert!(
        warnings.len() >= 3,
        "the awkward objects warn: {warnings:?}"
    );
    for size in [1, 7, 64, 299, 300, 1000] {
        let mut chunk_warnings = Vec::new();
        let chunks: Vec<Objects> = cluster().into_chunks(size).collect();
        // 301 distinct Services (300 + ExternalName; the duplicate shares its key).
        assert_eq!(chunks.len(), 301usize.div_ceil(size), "size {size}: runs");
        let ruleset = render_chunked(chunks.into_iter().map(|o| {
            let (m, w) = build(&o, &settings);
            chunk_warnings.extend(w);
            m
        }));
        chunk_warnings.sort();
        chunk_warnings.dedup();
        assert_eq!(chunk_warnings, warnings, "size {size}: warnings");
        assert!(ruleset == whole, "size {size}: the chunked ruleset differs");
    }
}
