//! Incremental rendering is exact: after any sequence of service changes applied through
//! `Renderer::update`, (1) the fake kernel, which validates every operation, holds exactly
//! `renderer.ruleset()`, and (2) that equals a full render of the same model with the same
//! slot ranges, so incremental and full syncs can never drift apart; (3) rendering the model
//! in chunks (as full syncs do) gives the same ruleset and state as rendering it whole.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use kproxy::backend::fake::FakeBackend;
use kproxy::backend::Backend;
use kproxy::diff::{diff, diff_lazy, DiffOptions};
use kproxy::model::build::Objects;
use kproxy::model::{self, Model, ServiceKey};
use kproxy::render::Renderer;
use kproxy::testutil::fixtures::{conditions, ep, slice, svc};
use kproxy::testutil::{synthetic_cluster, synthetic_cluster_mix, synthetic_settings};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Change {
    AddEndpoint(usize),
    RemoveEndpoint(usize),
    DeleteService(usize),
    AddService(usize),
    ToggleLocalPolicy(usize),
    ToggleAffinity(usize),
    AllNotReady(usize),
    /// Several Services claiming one externalIP and port: a key with competing elements.
    ClaimExternalIp(usize),
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..40).prop_map(Change::AddEndpoint),
        (0usize..40).prop_map(Change::RemoveEndpoint),
        (0usize..40).prop_map(Change::DeleteService),
        (0usize..40).prop_map(Change::AddService),
        (0usize..40).prop_map(Change::ToggleLocalPolicy),
        (0usize..40).prop_map(Change::ToggleAffinity),
        (0usize..40).prop_map(Change::AllNotReady),
        (0usize..40).prop_map(Change::ClaimExternalIp),
    ]
}

fn svc_key(s: &Service) -> ServiceKey {
    ServiceKey::new(
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

/// Applies a change to the objects; returns the service it touched.
fn mutate(o: &mut Objects, c: &Change, counter: &mut u32) -> Option<ServiceKey> {
    let n = o.services.len();
    match c {
        Change::AddService(i) => {
            *counter += 1;
            let name = format!("new-{counter}");
            let ns = format!("ns-{}", i % 3);
            let svc = svc(&ns, &name)
                .type_("NodePort")
                .cluster_ip(&format!("172.31.{}.{}", *counter / 250, *counter % 250 + 1))
                .port("http", 80, "TCP")
                .target_port(8080)
                .build();
            let slice = slice(&ns, &format!("{name}-x"), &name)
                .port("http", 8080, "TCP")
                // Endpoint IPs shared with existing services: exercises shared hairpin keys.
                .endpoint(ep(&format!("10.128.0.{}", i + 1)).node("node-a"))
                .endpoint(ep(&format!("10.128.0.{}", i + 2)).node("node-b"))
                .build();
            o.services.push(svc.clone());
            o.slices.push(slice);
            Some(svc_key(&svc))
        }
        _ if n == 0 => None,
        Change::DeleteService(i) => {
            let svc = o.services.remove(i % n);
            Some(svc_key(&svc))
        }
        Change::ToggleLocalPolicy(i) => {
            let svc = &mut o.services[i % n];
            let spec = svc.spec.as_mut().unwrap();
            spec.external_traffic_policy = match spec.external_traffic_policy.as_deref() {
                Some("Local") => Some("Cluster".into()),
                _ => Some("Local".into()),
            };
            Some(svc_key(svc))
        }
        Change::ClaimExternalIp(i) => {
            let svc = &mut o.services[i % n];
            let spec = svc.spec.as_mut().unwrap();
            spec.external_ips = match spec.external_ips {
                Some(_) => None,
                None => Some(vec!["198.51.100.1".into()]),
            };
            Some(svc_key(svc))
        }
        Change::ToggleAffinity(i) => {
            let svc = &mut o.services[i % n];
            let spec = svc.spec.as_mut().unwrap();
            spec.session_affinity = match spec.session_affinity.as_deref() {
                Some("ClientIP") => Some("None".into()),
                _ => Some("ClientIP".into()),
            };
            Some(svc_key(svc))
        }
        Change::AddEndpoint(i) | Change::RemoveEndpoint(i) | Change::AllNotReady(i) => {
            let key = svc_key(&o.services[i % n]);
            let slice = o.slices.iter_mut().find(|s| {
                s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        == Some(&key.name)
            })?;
            let endpoints = slice.endpoints.get_or_insert_with(Vec::new);
            match c {
                Change::AddEndpoint(_) => {
                    *counter += 1;
                    let addr = format!("10.200.{}.{}", *counter / 250, *counter % 250 + 1);
                    let node = if counter.is_multiple_of(2) {
                        "node-a"
                    } else {
                        "node-c"
                    };
                    endpoints.push(ep(&addr).node(node).build());
                }
                Change::RemoveEndpoint(_) => {
                    endpoints.pop();
                }
                _ => {
                    for ep in endpoints.iter_mut() {
                        ep.conditions = Some(conditions(false, true, true));
                    }
                }
            }
            Some(key)
        }
    }
}

fn build(o: &Objects) -> Model {
    model::build(o, &synthetic_settings()).0
}

/// The model cut into `parts` consecutive runs of service ports (the full sync renders
/// the model in chunks like these, dropping each once rendered).
fn split(m: &Model, parts: usize) -> Vec<Model> {
    (0..parts)
        .map(|i| {
            let mut c = m.clone();
            for fm in &mut c.families {
                let n = fm.services.len();
                fm.services = fm.services[n * i / parts..n * (i + 1) / parts].to_vec();
            }
            c
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn incremental_updates_equal_full_renders(
        changes in prop::collection::vec(prop::collection::vec(change_strategy(), 1..4), 1..8),
        colliding in any::<bool>(),
        chunks in 1usize..5,
    ) {
        let mut objects = synthetic_cluster(40, 3, true);
        // Half the cases keep 2 bits of the shared-element hashes: constant collisions.
        let mut renderer = if colliding {
            Renderer::with_colliding_key_hashes(2)
        } else {
            Renderer::new()
        };
        // The first render comes in `chunks` pieces, as the daemon's full sync does.
        let first = renderer.full_chunked(split(&build(&objects), chunks));
        let mut kernel = FakeBackend::new();
        kernel.apply(&diff(&Default::default(), &first, &DiffOptions::default()).tx).unwrap();
        let mut counter = 0;
        for batch in changes {
            let mut changed = BTreeSet::new();
            for c in &batch {
                if let Some(k) = mutate(&mut objects, c, &mut counter) {
                    changed.insert(k);
                }
            }
            let m = build(&objects);
            let d = renderer.update(&m, &changed).map(|p| diff(&p.before, &p.after, &DiffOptions::default())).expect("settings unchanged");
            kernel.apply(&d.tx).map_err(|e| TestCaseError::fail(format!("{e}\n{}", kproxy::nft::text::transaction(&d.tx))))?;
            let held = kernel.dump().unwrap();
            let incremental = renderer.ruleset();
            prop_assert_eq!(&held, &incremental, "kernel differs from the renderer's state");
            let full = renderer.clone().full(&m);
            prop_assert_eq!(&incremental, &full, "incremental state differs from a full render");
            let chunked = renderer.clone().full_chunked(split(&m, chunks));
            prop_assert_eq!(&full, &chunked, "a render in chunks differs from one in one piece");
        }
    }

    /// The resync's diff, which reads the kernel's declarations first and each set's
    /// elements only when it compares that set, is the diff against the whole dump; it
    /// never asks for a dynamic (affinity) set's runtime elements.
    #[test]
    fn a_diff_reading_elements_set_by_set_equals_one_over_the_whole_dump(
        changes in prop::collection::vec(change_strategy(), 1..6),
        fresh in any::<bool>(),
    ) {
        let mut objects = synthetic_cluster_mix(40, 3, 4);
        let mut renderer = Renderer::new();
        let prev = renderer.full(&build(&objects));
        let mut counter = 0;
        for c in &changes {
            mutate(&mut objects, c, &mut counter);
        }
        // A fresh renderer may place lists elsewhere: sets and chains change too.
        let next = if fresh { Renderer::new() } else { renderer }.full(&build(&objects));
        let opts = DiffOptions::default();
        let whole = diff(&prev, &next, &opts);
        let declarations = prev.clone().without_elements();
        let mut asked = BTreeSet::new();
        let lazy = diff_lazy(&declarations, next, &opts, &mut |table, set| {
            assert!(!set.flags.dynamic, "asked for the runtime elements of {}", set.name);
            assert!(asked.insert((table.clone(), set.name.clone())), "asked twice for {}", set.name);
            let t = prev.tables.iter().find(|t| t.family == table.family && t.name == table.name)?;
            Some(t.sets[&set.name].elements.clone())
        });
        prop_assert_eq!(&whole, &lazy);
        prop_assert!(!asked.is_empty());
    }
}

#[test]
fn one_endpoint_change_is_elements_only() {
    let mut objects = synthetic_cluster(1_000, 10, false);
    let mut renderer = Renderer::new();
    renderer.full(&build(&objects));
    let mut counter = 0;
    let key = mutate(&mut objects, &Change::AddEndpoint(7), &mut counter).unwrap();
    let d = renderer
        .update(&build(&objects), &[key].into())
        .map(|p| diff(&p.before, &p.after, &DiffOptions::default()))
        .unwrap();
    let stats = d.tx.stats();
    // Elements only: the list's 10 ranges replaced by 11, no rule or chain operation
    // (the new endpoint is on node-c, so it cannot hairpin through this node).
    assert_eq!(
        stats.chains_flushed,
        0,
        "{}",
        kproxy::nft::text::transaction(&d.tx)
    );
    assert_eq!(stats.rules, 0);
    assert_eq!(stats.elements_added, 11);
    assert_eq!(stats.elements_deleted, 10);
    assert_eq!(stats.chains_added + stats.chains_deleted, 0);
    assert!(d.tx.ops.iter().all(|op| matches!(
        op,
        kproxy::nft::tx::Op::AddElements { .. } | kproxy::nft::tx::Op::DeleteElements { .. }
    )));
}

#[test]
fn one_endpoint_change_in_an_affinity_service_is_elements_only() {
    // svc-50 has ClientIP affinity (every 50th service does): adding or removing one of
    // its endpoints changes its picks and its live endpoints only. The affinity rules
    // never change: rewriting them would rebind the shard's affinity map, which walks
    // every client entry it holds (docs/measurements/affinity-layouts.md).
    let mut objects = synthetic_cluster(1_000, 10, true);
    let mut renderer = Renderer::new();
    renderer.full(&build(&objects));
    let mut counter = 0;
    for (change, added, deleted) in [
        // 10 ranges replaced by 11, one live endpoint more.
        (Change::AddEndpoint(50), 12, 10),
        // Back to 10 ranges, the endpoint's id gone from the live map.
        (Change::RemoveEndpoint(50), 10, 12),
    ] {
        let key = mutate(&mut objects, &change, &mut counter).unwrap();
        assert_eq!(key.name, "svc-50");
        let d = renderer
            .update(&build(&objects), &[key].into())
            .map(|p| diff(&p.before, &p.after, &DiffOptions::default()))
            .unwrap();
        let stats = d.tx.stats();
        let text = kproxy::nft::text::transaction(&d.tx);
        assert_eq!(stats.rules, 0, "{change:?}: {text}");
        assert_eq!(stats.chains_flushed, 0, "{change:?}: {text}");
        assert_eq!(stats.chains_added + stats.chains_deleted, 0, "{text}");
        assert_eq!(
            (stats.elements_added, stats.elements_deleted),
            (added, deleted),
            "{text}"
        );
        for op in &d.tx.ops {
            let set = match op {
                kproxy::nft::tx::Op::AddElements { set, .. }
                | kproxy::nft::tx::Op::DeleteElements { set, .. } => set,
                op => panic!("{change:?}: not an element operation: {op:?}"),
            };
            assert!(
                set.starts_with("affinity-pick-") || set.starts_with("affinity-endpoints-"),
                "{change:?}: {set}"
            );
        }
    }
}

/// The affinity part of a table: chains with affinity rules, and the pick and live maps.
fn affinity_part(t: &kproxy::nft::Table) -> (Vec<&kproxy::nft::Chain>, Vec<&kproxy::nft::Set>) {
    let chains = t
        .chains
        .values()
        .filter(|c| {
            c.rules
                .iter()
                .flat_map(|r| &r.stmts)
                .any(|s| matches!(s, kproxy::nft::Stmt::DnatAffinity { .. }))
        })
        .collect();
    let sets = t
        .sets
        .values()
        .filter(|s| s.name.starts_with("affinity-"))
        .collect();
    (chains, sets)
}

#[test]
fn a_restarted_renderer_adopts_the_kernels_affinity_lists() {
    // A daemon's history: affinity services (every 50th), then churn that a fresh
    // numbering would not reproduce: endpoints replaced, a service deleted, new ones.
    let mut objects = synthetic_cluster(400, 10, true);
    let mut running = Renderer::new();
    running.full(&build(&objects));
    let mut counter = 0;
    for change in [
        Change::AddEndpoint(50),
        Change::RemoveEndpoint(100),
        Change::AddEndpoint(100),
        Change::DeleteService(150),
        Change::AddService(0),
        Change::ToggleAffinity(7),
    ] {
        let key = mutate(&mut objects, &change, &mut counter).unwrap();
        running.update(&build(&objects), &[key].into()).unwrap();
    }
    let kernel = running.ruleset();
    let want = affinity_part(kernel.table(kproxy::nft::Family::V4).unwrap());
    assert!(want.0.len() >= 8, "affinity lists: {}", want.0.len());
    // A fresh numbering differs (else this test proves nothing) …
    let fresh = Renderer::new().full(&build(&objects));
    assert_ne!(
        affinity_part(fresh.table(kproxy::nft::Family::V4).unwrap()),
        want
    );
    // … the restarted renderer that adopted the kernel's table renders it as it is.
    let mut restarted = Renderer::new();
    restarted.adopt(&kernel);
    let now = restarted.full(&build(&objects));
    assert_eq!(
        affinity_part(now.table(kproxy::nft::Family::V4).unwrap()),
        want
    );
    // And it goes on numbering above what it adopted: a new endpoint gets a fresh id.
    let key = mutate(&mut objects, &Change::AddEndpoint(50), &mut counter).unwrap();
    let p = restarted.update(&build(&objects), &[key].into()).unwrap();
    let d = diff(&p.before, &p.after, &DiffOptions::default());
    assert_eq!(d.tx.stats().rules, 0);
}

#[test]
fn node_level_changes_ask_for_a_full_render() {
    let objects = synthetic_cluster(10, 2, false);
    let mut renderer = Renderer::new();
    renderer.full(&build(&objects));
    let mut settings = synthetic_settings();
    settings.masquerade_all = true;
    let (m, _) = model::build(&objects, &settings);
    assert!(renderer.update(&m, &BTreeSet::new()).is_none());
}
