//! Property tests over generated clusters (valid and malformed objects mixed):
//! - building and rendering never panic;
//! - rendering is deterministic and independent of object order (text and warnings);
//! - every name is valid for nft and within its length limit, and every reference
//!   (jump/goto, vmap element, set lookup, dynamic update, endpoint map) resolves to an
//!   object of the right kind; every regular chain is reachable from a base chain;
//! - every numgen slot a service chain can draw exists in the endpoint map;
//! - for every service port, a new connection from a pod to its ClusterIP reaches exactly
//!   the endpoints the model chose (or is rejected / dropped as the model says);
//! - a re-render after one endpoint is added changes only that service's objects.

mod common;

use std::collections::{BTreeSet, HashSet};

use k8s_openapi::api::core::v1::ServicePort;
use k8s_openapi::api::discovery::v1::EndpointConditions;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kproxy::model::build::{Objects, Settings};
use kproxy::model::{self, LocalDetect};
use kproxy::nft::*;
use kproxy::render;
use kproxy::testutil::fixtures::{ep, node, slice, svc};
use kproxy::trace::{trace, Host, Origin, Probe, TraceVerdict};
use proptest::prelude::*;

const NODE_IP: &str = "192.168.50.10";

fn ipv4(i: u32) -> String {
    format!("10.{}.{}.{}", 96 + (i >> 16) % 8, (i >> 8) & 255, i & 255)
}

/// A pool of address strings, mostly valid, sometimes not.
fn addr_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (0u32..2000).prop_map(|i| format!("10.244.{}.{}", i / 250, i % 250 + 1)),
        2 => (0u32..2000).prop_map(|i| format!("fd00:10:244::{:x}", i + 1)),
        1 => Just("10.244.0.300".to_string()),
        1 => Just("not-an-ip".to_string()),
    ]
}

fn protocol_strategy() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(Some("TCP")),
        3 => Just(Some("UDP")),
        1 => Just(Some("SCTP")),
        1 => Just(Some("ICMP")),
        1 => Just(None),
    ]
}

fn port_strategy() -> impl Strategy<Value = i32> {
    prop_oneof![10 => 1i32..65536, 1 => Just(0), 1 => Just(70000), 1 => Just(-1)]
}

#[derive(Clone, Debug)]
struct GenEndpoint {
    addr: String,
    node: Option<u8>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    zone_hint: Option<u8>,
}

#[derive(Clone, Debug)]
struct GenService {
    kind: u8,
    ports: Vec<(Option<String>, i32, Option<&'static str>, i32)>,
    etp_local: bool,
    itp_local: bool,
    affinity: Option<Option<i32>>,
    external_ips: Vec<String>,
    lb_ips: Vec<String>,
    source_ranges: Vec<String>,
    endpoints: Vec<GenEndpoint>,
    slice_port_names: Vec<Option<String>>,
    slice_protocol_v6: bool,
    orphan_slice: bool,
}

fn endpoint_strategy() -> impl Strategy<Value = GenEndpoint> {
    (
        addr_strategy(),
        prop::option::of(0u8..3),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::option::of(0u8..2),
    )
        .prop_map(
            |(addr, node, ready, serving, terminating, zone_hint)| GenEndpoint {
                addr,
                node,
                ready,
                serving,
                terminating,
                zone_hint,
            },
        )
}

fn service_strategy() -> impl Strategy<Value = GenService> {
    (
        0u8..4,
        prop::collection::vec(
            (
                prop::option::of(prop_oneof![
                    Just("http".to_string()),
                    Just("dns".to_string()),
                    Just("a".to_string())
                ]),
                port_strategy(),
                protocol_strategy(),
                prop_oneof![5 => 30000i32..32768, 5 => Just(0)],
            ),
            1..4,
        ),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(prop::option::of(prop_oneof![1i32..100000, Just(-5)])),
        prop::collection::vec(addr_strategy(), 0..2),
        prop::collection::vec(
            prop_oneof![
                (0u8..50).prop_map(|i| format!("203.0.113.{i}")),
                Just("300.1.1.1".to_string())
            ],
            0..2,
        ),
        prop::collection::vec(
            prop_oneof![
                Just("198.51.100.0/24".to_string()),
                Just("192.168.50.0/24".to_string()),
                Just("10.0.0.0/33".to_string())
            ],
            0..2,
        ),
        prop::collection::vec(endpoint_strategy(), 0..6),
        (
            prop::collection::vec(
                prop::option::of(prop_oneof![
                    Just("http".to_string()),
                    Just("dns".to_string()),
                    Just("a".to_string())
                ]),
                1..3,
            ),
            any::<bool>(),
            prop::bool::weighted(0.1),
        ),
    )
        .prop_map(
            |(
                kind,
                ports,
                etp_local,
                itp_local,
                affinity,
                external_ips,
                lb_ips,
                source_ranges,
                endpoints,
                (slice_port_names, slice_protocol_v6, orphan_slice),
            )| GenService {
                kind,
                ports,
                etp_local,
                itp_local,
                affinity,
                external_ips,
                lb_ips,
                source_ranges,
                endpoints,
                slice_port_names,
                slice_protocol_v6,
                orphan_slice,
            },
        )
}

/// Turns generated services into k8s objects (ClusterIPs unique by index).
fn objects(gen: &[GenService]) -> Objects {
    let mut o = Objects::default();
    let node = node("node-a")
        .zone("zone-0")
        .pod_cidrs(&["10.244.0.0/24"])
        .internal_ip(NODE_IP);
    o.nodes.push(node.build());
    for (i, g) in gen.iter().enumerate() {
        let name = format!("svc{i}");
        let kind = ["ClusterIP", "NodePort", "LoadBalancer", "ClusterIP"][g.kind as usize];
        let mut s = svc("ns", &name)
            .type_(kind)
            .cluster_ip(&ipv4(i as u32 + 1))
            .external_ips(&g.external_ips)
            .source_ranges(&g.source_ranges)
            .lb_ingresses(&g.lb_ips);
        for (n, p, proto, np) in &g.ports {
            s = s.raw_port(ServicePort {
                name: n.clone(),
                port: *p,
                protocol: proto.map(Into::into),
                target_port: Some(IntOrString::Int(*p)),
                node_port: (*np != 0 && kind != "ClusterIP").then_some(*np),
                ..ServicePort::default()
            });
        }
        if g.etp_local && kind != "ClusterIP" {
            s = s.etp_local();
        }
        if g.itp_local {
            s = s.itp_local();
        }
        if let Some(t) = g.affinity {
            s = s.affinity(t);
        }
        o.services.push(s.build());
        let eps = g.endpoints.iter().map(|e| {
            let mut b = ep(&e.addr).with(|x| {
                x.conditions = Some(EndpointConditions {
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                })
            });
            if let Some(n) = e.node {
                b = b.node(&format!("node-{}", ["a", "b", "c"][n as usize]));
            }
            if let Some(z) = e.zone_hint {
                b = b.zone_hints(&[&format!("zone-{z}")]);
            }
            b
        });
        let target = if g.orphan_slice {
            format!("gone{i}")
        } else {
            name.clone()
        };
        let mut sl = slice("ns", &format!("{name}-x"), &target)
            .address_type(if g.slice_protocol_v6 { "IPv6" } else { "IPv4" })
            .endpoints(eps);
        for (n, (_, p, proto, _)) in g.slice_port_names.iter().zip(&g.ports) {
            let n = n.clone().unwrap_or_default();
            sl = sl.port(&n, *p, proto.unwrap_or("TCP"));
        }
        o.slices.push(sl.build());
    }
    o
}

fn settings() -> Settings {
    Settings {
        hostname: "node-a".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Settings::default()
    }
}

/// Every reference in a table resolves, names are valid, every per-service chain is
/// reachable.
fn check_table(t: &Table) {
    for name in t.chains.keys().chain(t.sets.keys()) {
        assert!(valid_name(name), "invalid name {name:?}");
        assert!(name.len() <= NAME_MAX);
    }
    let chain_exists = |c: &str| assert!(t.chains.contains_key(c), "missing chain {c}");
    let map_of = |s: &str, want_map: bool| {
        let set = t.sets.get(s).unwrap_or_else(|| panic!("missing set {s}"));
        assert_eq!(set.is_map(), want_map, "set {s} kind");
        set
    };
    let mut edges: Vec<(String, String)> = Vec::new();
    for s in t.sets.values() {
        for e in &s.elements {
            assert_eq!(e.key.len(), s.key.len(), "{}: key arity", s.name);
            match (&s.data, &e.data) {
                (SetData::None, ElementData::None) => {}
                (SetData::Verdict, ElementData::Verdict(v)) => {
                    if let Some(c) = v.target() {
                        chain_exists(c);
                        edges.push((format!("@{}", s.name), c.to_string()));
                    }
                }
                (SetData::Values(ts), ElementData::Values(vs)) => assert_eq!(ts.len(), vs.len()),
                _ => panic!("{}: element data does not match the set", s.name),
            }
        }
    }
    for c in t.chains.values() {
        for r in &c.rules {
            for s in &r.stmts {
                match s {
                    Stmt::Verdict(v) => {
                        if let Some(target) = v.target() {
                            chain_exists(target);
                            edges.push((c.name.clone(), target.to_string()));
                        }
                    }
                    Stmt::Vmap { map, .. } => {
                        map_of(map, true);
                        edges.push((c.name.clone(), format!("@{map}")));
                    }
                    Stmt::Lookup { set, .. } | Stmt::Update { set, .. } => {
                        map_of(set, false);
                    }
                    Stmt::DnatPick { offset, map, .. } => {
                        let m = map_of(map, true);
                        // The list's ranges tile its block exactly: every pick lands on
                        // an endpoint.
                        let (first, last) = (*offset as u64, *offset as u64 + 65535);
                        let mut next = first;
                        for e in &m.elements {
                            let [Value::Range(lo, hi)] = e.key.as_slice() else {
                                panic!("{}: not a range key", m.name);
                            };
                            let (lo, hi) = (*lo as u64, *hi as u64);
                            if hi < first || lo > last {
                                continue;
                            }
                            assert_eq!(lo, next, "{}: gap or overlap at {lo}", c.name);
                            assert!(hi <= last, "{}: range crosses its block", c.name);
                            next = hi + 1;
                        }
                        assert_eq!(next, last + 1, "{}: block not covered", c.name);
                    }
                    _ => {}
                }
            }
        }
    }
    // Reachability from base chains.
    let mut seen: HashSet<String> = t
        .chains
        .values()
        .filter(|c| c.base.is_some())
        .map(|c| c.name.clone())
        .collect();
    let mut todo: Vec<String> = seen.iter().cloned().collect();
    while let Some(n) = todo.pop() {
        for (from, to) in &edges {
            if *from == n && seen.insert(to.clone()) {
                todo.push(to.clone());
            }
        }
    }
    // Per-service chains (their names carry namespace/name) are never left behind; the
    // fixed skeleton (e.g. reject-chain, used only by map elements) always exists.
    for c in t.chains.keys().filter(|c| c.contains('/')) {
        assert!(seen.contains(c), "chain {c} is unreachable");
    }
}

/// Different rules never share a block of an endpoint map.
fn check_slots_disjoint(t: &Table) {
    let mut used: BTreeSet<(String, u32)> = BTreeSet::new();
    for c in t.chains.values() {
        for r in &c.rules {
            for s in &r.stmts {
                if let Stmt::DnatPick { offset, map, .. } = s {
                    assert_eq!(offset % 65536, 0, "{}: block not aligned", c.name);
                    assert!(used.insert((map.clone(), *offset)), "block used twice");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn render_is_total_deterministic_and_order_independent(
        gen in prop::collection::vec(service_strategy(), 0..12),
        seed in any::<u64>(),
    ) {
        let objs = objects(&gen);
        let (m1, w1) = model::build(&objs, &settings());
        let r1 = render::render(&m1);
        let t1 = text::ruleset(&r1);
        // Same input again.
        let (m2, w2) = model::build(&objs, &settings());
        prop_assert_eq!(&t1, &text::ruleset(&render::render(&m2)));
        prop_assert_eq!(&w1, &w2);
        // Shuffled object order.
        let mut shuffled = objs.clone();
        let n = shuffled.services.len().max(1);
        shuffled.services.rotate_left((seed as usize) % n);
        shuffled.slices.reverse();
        let (m3, w3) = model::build(&shuffled, &settings());
        prop_assert_eq!(&t1, &text::ruleset(&render::render(&m3)));
        prop_assert_eq!(&w1, &w3);
        for t in &r1.tables {
            check_table(t);
            check_slots_disjoint(t);
        }
    }

    #[test]
    fn clusterip_traffic_reaches_exactly_the_models_endpoints(
        gen in prop::collection::vec(service_strategy(), 1..8),
    ) {
        let objs = objects(&gen);
        let mut s = settings();
        s.detect_local_mode = model::build::DetectLocalMode::ClusterCidr;
        let (m, _) = model::build(&objs, &s);
        let rs = render::render(&m);
        let fm = m.family(Family::V4).unwrap();
        prop_assert!(matches!(fm.settings.local_detect, LocalDetect::SourceCidrs(_)));
        let host = Host { local_addrs: vec![NODE_IP.parse().unwrap()] };
        for sp in &fm.services {
            let t = trace(&rs, &host, &Probe {
                origin: Origin::Pod { iifname: "cni0".into() },
                src: "10.244.0.99".parse().unwrap(),
                dst: sp.cluster_ip,
                proto: sp.name.protocol,
                port: sp.port,
            });
            if !sp.has_endpoints {
                prop_assert_eq!(t.verdict, TraceVerdict::Reject, "{}", sp.name);
            } else if sp.internal_endpoints().is_empty() {
                prop_assert_eq!(t.verdict, TraceVerdict::Drop, "{}", sp.name);
            } else {
                prop_assert_eq!(t.verdict, TraceVerdict::Dnat, "{}", sp.name);
                let want: BTreeSet<_> = sp.internal_endpoints().iter().copied().collect();
                let got: BTreeSet<_> = t.endpoints.iter().copied().collect();
                prop_assert_eq!(got, want, "{}", sp.name);
            }
        }
    }
}

#[test]
fn adding_one_endpoint_changes_only_that_lists_ranges() {
    let gen: Vec<GenService> = (0..20)
        .map(|i| GenService {
            kind: 1,
            ports: vec![(Some("http".into()), 80, Some("TCP"), 30000 + i)],
            etp_local: false,
            itp_local: false,
            affinity: None,
            external_ips: vec![],
            lb_ips: vec![],
            source_ranges: vec![],
            endpoints: (0..3)
                .map(|e| GenEndpoint {
                    addr: format!("10.244.{i}.{}", e + 1),
                    node: Some(1),
                    ready: None,
                    serving: None,
                    terminating: None,
                    zone_hint: None,
                })
                .collect(),
            slice_port_names: vec![Some("http".into())],
            slice_protocol_v6: false,
            orphan_slice: false,
        })
        .collect();
    let (m1, _) = model::build(&objects(&gen), &settings());
    let before = render::render(&m1);
    let mut gen2 = gen.clone();
    gen2[7].endpoints.push(GenEndpoint {
        addr: "10.244.7.99".into(),
        node: Some(2),
        ready: None,
        serving: None,
        terminating: None,
        zone_hint: None,
    });
    let (m2, _) = model::build(&objects(&gen2), &settings());
    let after = render::render(&m2);
    let (a, b) = (
        before.table(Family::V4).unwrap(),
        after.table(Family::V4).unwrap(),
    );
    let changed: Vec<&String> = a
        .chains
        .keys()
        .filter(|k| a.chains.get(*k) != b.chains.get(*k))
        .collect();
    assert!(changed.is_empty(), "no chain changes: {changed:?}");
    // 20 services fit in one endpoint-map shard.
    let ea = &a.sets["endpoints-0"].elements;
    let eb = &b.sets["endpoints-0"].elements;
    let added: Vec<_> = eb.iter().filter(|e| ea.get(&e.key) != Some(*e)).collect();
    let removed: Vec<_> = ea.keys().filter(|k| !eb.contains_key(k)).collect();
    // svc7's three ranges are replaced by four; nothing else in the map moves.
    assert_eq!(
        (added.len(), removed.len()),
        (4, 3),
        "endpoint map elements changed"
    );
    assert!(added
        .iter()
        .all(|e| e.comment.as_deref() == Some("ns/svc7:http cluster")));
    // The new endpoint is on node-c: it cannot hairpin through this node.
    assert_eq!(
        b.sets["hairpin-endpoints"].elements,
        a.sets["hairpin-endpoints"].elements
    );
}

/// The picks of one list, drawn with a fixed seed (xorshift64*), split evenly over its
/// endpoints: for N = 1 … 100 the tracer reports every endpoint, the ranges differ in
/// size by at most one key, and 200k draws pass a χ² test against an even split.
#[test]
fn picks_split_evenly_over_n_endpoints() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut draw = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 48) as u32 // 16 bits
    };
    for n in [1usize, 2, 3, 7, 10, 64, 100] {
        let objects = kproxy::testutil::synthetic_cluster(1, n, false);
        let (m, w) = model::build(&objects, &kproxy::testutil::synthetic_settings());
        assert!(w.is_empty(), "{w:?}");
        let rs = render::render(&m);
        let probe = Probe {
            origin: Origin::Pod {
                iifname: "veth0".into(),
            },
            src: "10.128.0.77".parse().unwrap(),
            dst: "172.16.0.1".parse().unwrap(),
            proto: Protocol::Tcp,
            port: 80,
        };
        let tr = trace(&rs, &Host::default(), &probe);
        assert_eq!(tr.verdict, TraceVerdict::Dnat);
        assert_eq!(tr.endpoints.len(), n, "every endpoint is reported");
        let t = rs.table(Family::V4).unwrap();
        let (offset, map) = t
            .chains
            .values()
            .filter(|c| c.name.starts_with("service-"))
            .flat_map(|c| c.rules.iter().flat_map(|r| &r.stmts))
            .find_map(|s| match s {
                Stmt::DnatPick { offset, map, .. } => Some((*offset, map.clone())),
                _ => None,
            })
            .expect("the Cluster list's pick rule");
        let ranges: Vec<(u32, u32)> = t.sets[&map]
            .elements
            .iter()
            .filter_map(|e| match e.key[..] {
                [Value::Range(lo, hi)] if lo >= offset && hi - offset < PICK_SPACE => {
                    Some((lo - offset, hi - offset))
                }
                _ => None,
            })
            .collect();
        assert_eq!(ranges.len(), n);
        let sizes: Vec<u32> = ranges.iter().map(|(lo, hi)| hi - lo + 1).collect();
        assert_eq!(sizes.iter().sum::<u32>(), PICK_SPACE);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        let draws = 200_000;
        let mut counts = vec![0u64; n];
        for _ in 0..draws {
            let k = draw();
            counts[ranges.partition_point(|(_, hi)| *hi < k)] += 1;
        }
        if n > 1 {
            let expected = draws as f64 / n as f64;
            let chi2: f64 = counts
                .iter()
                .map(|&c| (c as f64 - expected).powi(2) / expected)
                .sum();
            // Critical value at p = 10⁻⁶ (Wilson–Hilferty).
            let dof = (n - 1) as f64;
            let crit = dof * (1.0 - 2.0 / (9.0 * dof) + 4.75 * (2.0 / (9.0 * dof)).sqrt()).powi(3);
            assert!(chi2 < crit, "N = {n}: χ² {chi2:.1} ≥ {crit:.1}: {counts:?}");
        }
    }
}
